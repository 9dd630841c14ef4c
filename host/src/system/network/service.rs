//! The network subsystem as the daemon runs it: the stored configuration, changes through
//! the confirm/rollback driver ([`super::confirm`]), each applied by [`super::apply`], and
//! the live state for `GET`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::apply::{self, Context};
use super::confirm::{self, Changes};
use super::model::{
    self, SystemNetworkConfig, SystemNetworkInterfaceState, SystemNetworkInterfaceStats,
    SystemNetworkRoute, SystemNetworkState,
};
use crate::platform::network::NetworkOs;
use crate::platform::Platform;
use crate::state::Store;

/// A configuration as the driver handles it (`None`: none was ever applied).
pub type Config = Option<SystemNetworkConfig>;

/// How long `wg show` may take.
const WG_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies configurations and keeps them in the state document.
#[derive(Clone)]
pub struct Keeper {
    store: Arc<Mutex<Store>>,
    ctx: Context,
}

impl Keeper {
    fn stored(&self) -> Config {
        self.store
            .lock()
            .unwrap()
            .doc()
            .system
            .network
            .config
            .clone()
    }

    /// Applies `config` and stores it in the same step (a failed save undoes the apply).
    pub fn apply_now(&self, config: SystemNetworkConfig, timeout: Duration) -> Result<(), String> {
        let old = self.stored();
        let store = self.store.clone();
        let save = move |c: &SystemNetworkConfig| {
            store
                .lock()
                .unwrap()
                .update(|d| d.system.network.config = Some(c.clone()))
                .map_err(|e| format!("cannot save the network configuration: {e}"))
        };
        apply::apply(&self.ctx, old.as_ref(), config, timeout, &save).map(drop)
    }
}

impl confirm::Apply<Config> for Keeper {
    async fn apply(&self, config: Config, timeout: Duration) -> Result<(), String> {
        let Some(config) = config else {
            return Err("there is no network configuration to go back to".into());
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.apply_now(config, timeout))
            .await
            .map_err(|e| format!("network change: {e}"))?
    }
}

impl confirm::Persist<Config> for Keeper {
    fn current(&self) -> Config {
        self.stored()
    }

    fn save_prior(&self, prior: Option<Config>) -> Result<(), String> {
        self.store
            .lock()
            .unwrap()
            .update(|d| d.system.network.prior_config = prior.flatten())
            .map_err(|e| e.to_string())
    }
}

/// The network subsystem of one daemon.
#[derive(Clone)]
pub struct Network {
    pub changes: Changes<Config, Keeper, Keeper>,
    keeper: Keeper,
}

impl Network {
    pub fn new(root: &Path, platform: &Platform, store: Arc<Mutex<Store>>) -> Network {
        let ctx = Context {
            host: crate::system::host::handle(root, platform, &apply::SUBSYSTEM),
            os: platform.network.clone(),
            allow_partial: false,
        };
        let keeper = Keeper { store, ctx };
        Network {
            changes: Changes::new(keeper.clone(), keeper.clone()),
            keeper,
        }
    }

    pub fn os(&self) -> &Arc<dyn NetworkOs> {
        &self.keeper.ctx.os
    }

    /// The stored configuration.
    pub fn config(&self) -> Config {
        self.keeper.stored()
    }

    /// At start-up: a trial change that was neither confirmed nor rolled back before the
    /// machine went down is rolled back (its prior configuration put back); otherwise the
    /// stored configuration is applied again, or, on a machine never configured, the
    /// `network` seed (`seed`, given on first start) or every NIC on DHCP (see
    /// [`crate::system::seed::apply::first_network`]). Failures are logged: the daemon
    /// starts regardless (upstream's partial mode: DNS that does not answer is only a
    /// warning here).
    pub fn start(&self, seed: Option<SystemNetworkConfig>) {
        let (config, prior) = {
            let store = self.keeper.store.lock().unwrap();
            let n = &store.doc().system.network;
            (n.config.clone(), n.prior_config.clone())
        };
        let mut boot = self.keeper.clone();
        boot.ctx.allow_partial = true;
        let chosen = if let Some(prior) = prior {
            tracing::warn!("an unconfirmed network change survived a restart: putting the prior configuration back");
            Some(prior)
        } else if let Some(config) = config {
            Some(config)
        } else {
            let nics: Vec<(String, String)> = match self.os().links() {
                Ok(links) => links
                    .into_iter()
                    .filter(|l| l.kind.is_none() && l.name != "lo" && !l.name.starts_with('_'))
                    .filter_map(|l| {
                        let mac = l.permanent_mac.or(l.mac)?;
                        Some((l.name, mac))
                    })
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "no network to configure");
                    Vec::new()
                }
            };
            crate::system::seed::apply::first_network(seed, &nics)
        };
        if let Some(config) = chosen {
            if let Err(e) = boot.apply_now(config, confirm::APPLY_TIMEOUT) {
                tracing::error!(error = %e, "cannot apply the network configuration at start-up");
            }
        }
        if let Err(e) = self
            .keeper
            .store
            .lock()
            .unwrap()
            .update(|d| d.system.network.prior_config = None)
        {
            tracing::error!(error = %e, "cannot clear the prior network configuration");
        }
    }

    /// Before power-off or suspend: NICs with Wake-on-LAN get their permanent MAC back
    /// (they run with a random one), so a magic packet finds them. Failures are logged.
    pub fn restore_wake_on_lan_macs(&self) {
        let Some(config) = self.config() else {
            return;
        };
        for (port, mac) in config.wake_on_lan_macs() {
            match self.os().set_mac(&port, &mac) {
                Ok(()) => {
                    tracing::info!(link = %port, mac = %mac, "permanent MAC restored for Wake-on-LAN")
                }
                Err(e) => {
                    tracing::warn!(link = %port, error = %e, "cannot restore the permanent MAC for Wake-on-LAN")
                }
            }
        }
    }

    /// LLDP neighbours heard on a link (none when they cannot be read).
    fn lldp(&self, link: &str) -> Vec<model::SystemNetworkLldpState> {
        match self.os().lldp_neighbors(link) {
            Ok(list) => list
                .into_iter()
                .map(|n| model::SystemNetworkLldpState {
                    chassis_id: n.chassis_id,
                    name: n.name,
                    port_id: n.port_id,
                    port: n.port_description,
                })
                .collect(),
            Err(e) => {
                tracing::debug!(link, error = %e, "no LLDP neighbours");
                Vec::new()
            }
        }
    }

    /// A WireGuard device's keys, port and peers (`wg show <device> dump`); none when they
    /// cannot be read.
    fn wireguard(&self, name: &str) -> Option<model::SystemNetworkWireguardState> {
        let read = self
            .keeper
            .ctx
            .host
            .run_ok(&["wg", "show", name, "dump"], WG_TIMEOUT)
            .map_err(|e| e.message)
            .and_then(|dump| super::wgdump::parse(&dump, chrono::Utc::now().timestamp()));
        match read {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(device = name, error = %e, "cannot read the WireGuard state");
                None
            }
        }
    }

    /// The live state of every device: the configured ones (by their L3 side), then the
    /// physical NICs nothing configures.
    pub fn state(&self) -> Result<SystemNetworkState, String> {
        let links = self.os().links().map_err(|e| e.0)?;
        let config = self.config().unwrap_or_default();
        let mut interfaces = BTreeMap::new();
        let find = |name: &str| links.iter().find(|l| l.name == name);
        let mut shown = |name: &str, kind: &str, l3: &str, hwaddr: &str, roles: &[String]| {
            let mut s = SystemNetworkInterfaceState {
                kind: kind.to_string(),
                hwaddr: hwaddr.to_string(),
                roles: roles.to_vec(),
                ..Default::default()
            };
            if let Some(l) = find(l3) {
                fill(&mut s, l);
                if let Ok(Some(st)) = self.os().link_status(l3) {
                    s.state = st.operational_state;
                }
            }
            interfaces.insert(name.to_string(), s);
        };
        for i in &config.interfaces {
            shown(
                &i.name,
                "interface",
                &model::host_veth(&i.name),
                &i.hwaddr,
                &i.roles,
            );
        }
        for b in &config.bonds {
            shown(
                &b.name,
                "bond",
                &model::host_veth(&b.name),
                b.effective_hwaddr(),
                &b.roles,
            );
        }
        for v in &config.vlans {
            shown(&v.name, "vlan", &v.name, "", &v.roles);
        }
        for w in &config.wireguard {
            shown(&w.name, "wireguard", &w.name, "", &w.roles);
        }
        for w in &config.wireguard {
            if let Some(s) = interfaces.get_mut(&w.name) {
                if find(&w.name).is_some() {
                    s.wireguard = self.wireguard(&w.name);
                }
            }
        }
        // LLDP is heard on the physical ports; a bond's members are listed under it.
        for i in &config.interfaces {
            let lldp = self.lldp(&model::physical_port(&i.hwaddr));
            if let Some(s) = interfaces.get_mut(&i.name) {
                s.lldp = lldp;
            }
        }
        for b in &config.bonds {
            let mut members = BTreeMap::new();
            for mac in &b.members {
                let port = model::physical_port(mac);
                let mut m = SystemNetworkInterfaceState {
                    kind: model::device_type::BOND_MEMBER.into(),
                    hwaddr: mac.clone(),
                    ..Default::default()
                };
                // Upstream's `lacp` of a member: the address the bond gave it and the
                // NIC's own (permanent) one.
                let mut lacp = model::SystemNetworkLacpState::default();
                if let Some(l) = find(&port) {
                    fill(&mut m, l);
                    m.state = l.operstate.clone();
                    lacp.local_mac = l.mac.clone().unwrap_or_default();
                    lacp.remote_mac = l.permanent_mac.clone().unwrap_or_default();
                }
                m.lacp = Some(lacp);
                m.lldp = self.lldp(&port);
                members.insert(port, m);
            }
            if let Some(s) = interfaces.get_mut(&b.name) {
                s.members = members;
            }
        }
        // NICs nothing configures.
        let used: Vec<String> = config
            .interfaces
            .iter()
            .map(|i| i.hwaddr.to_lowercase())
            .chain(
                config
                    .bonds
                    .iter()
                    .flat_map(|b| b.members.iter().map(|m| m.to_lowercase())),
            )
            .collect();
        for l in &links {
            let mac = l
                .permanent_mac
                .clone()
                .or(l.mac.clone())
                .unwrap_or_default();
            if l.kind.is_some()
                || l.name == "lo"
                || l.name.starts_with('_')
                || used.contains(&mac.to_lowercase())
            {
                continue;
            }
            let mut s = SystemNetworkInterfaceState {
                kind: model::device_type::PHYSICAL.into(),
                hwaddr: mac,
                ..Default::default()
            };
            fill(&mut s, l);
            s.state = l.operstate.clone();
            interfaces.insert(l.name.clone(), s);
        }
        let mut state = SystemNetworkState {
            interfaces,
            configuration_in_process: self.changes.phase().in_process(),
        };
        state.apply_role_defaults();
        Ok(state)
    }
}

/// The kernel's facts about a link, in the state's form: addresses without their prefix
/// length, routes as destination and gateway.
fn fill(s: &mut SystemNetworkInterfaceState, l: &crate::platform::network::LinkState) {
    s.addresses = l
        .addresses
        .iter()
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    s.mtu = i64::from(l.mtu);
    s.speed = l.speed.clone().unwrap_or_default();
    s.stats = SystemNetworkInterfaceStats {
        rx_bytes: l.stats.rx_bytes,
        rx_errors: l.stats.rx_errors,
        tx_bytes: l.stats.tx_bytes,
        tx_errors: l.stats.tx_errors,
    };
    s.routes = l
        .routes
        .iter()
        .map(|r| SystemNetworkRoute {
            to: r.to.clone(),
            via: r.via.clone().unwrap_or_default(),
        })
        .collect();
}
