//! One network change, start to end: upstream's apply sequence with every step journaled,
//! so a change that fails half way puts the files, units, firewall, hostname and time zone
//! back and brings networkd up on the previous files (the configuration is stored only
//! once everything succeeded).
//!
//! The order is upstream's: time zone; validation (lenient, interface names resolved to
//! MACs, strict); devices that went away or changed deleted; WireGuard keys generated;
//! hostname; proxy; the networkd files, `/etc/hosts` and `timesyncd.conf`; the firewall;
//! networkd restarted; every required device online with a routable address; DNS
//! answering; time synchronised (not fatal).

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_api::sdk::Host;
use plugin_api::Undo;

use super::files::{self, NETWORKD_DIR};
use super::model::SystemNetworkConfig;
use super::{firewall, proxy, validate};
use crate::platform::network::NetworkOs;
use crate::system::host::Subsystem;

pub const NETWORKD: &str = "systemd-networkd.service";
pub const TIMESYNCD: &str = "systemd-timesyncd.service";

/// The files a network change writes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "network",
    writable: &[
        NETWORKD_DIR,
        files::TIMESYNCD_CONF,
        files::ETC_HOSTS,
        proxy::ENVIRONMENT,
        proxy::KPX_CONF,
    ],
};

/// The name resolved to check that DNS works (an answer of "no such name" counts).
pub const DNS_PROBE: &str = "linuxcontainers.org";
/// How long time synchronisation is waited for.
pub const TIME_SYNC_WAIT: Duration = Duration::from_secs(30);

/// What an apply needs besides the configuration.
#[derive(Clone)]
pub struct Context {
    pub host: Host,
    pub os: Arc<dyn NetworkOs>,
    /// At boot a DNS that does not answer is only a warning (upstream's partial mode).
    pub allow_partial: bool,
}

fn os_err(e: crate::platform::PlatformError) -> String {
    e.0
}

/// The L3 device networkd configures for a device entry: the host-side veth of an
/// interface's or bond's bridge, the VLAN itself.
fn l3_name(name: &str, bridged: bool) -> String {
    if bridged {
        super::model::host_veth(name)
    } else {
        name.to_string()
    }
}

/// The devices that must be online after a change: those with addresses, unless they
/// are not required for online; and whether IPv6 is required somewhere (DAD delay).
pub fn required_online(c: &SystemNetworkConfig) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut ipv6 = false;
    let mut add = |name: &str, bridged: bool, addresses: &[String], rfo: &str| {
        if addresses.is_empty() || rfo == "no" {
            return;
        }
        ipv6 |= matches!(rfo, "ipv6" | "both");
        out.push(l3_name(name, bridged));
    };
    for i in &c.interfaces {
        add(&i.name, true, &i.addresses, &i.required_for_online);
    }
    for b in &c.bonds {
        add(&b.name, true, &b.addresses, &b.required_for_online);
    }
    for v in &c.vlans {
        add(&v.name, false, &v.addresses, &v.required_for_online);
    }
    (out, ipv6)
}

fn json<T: serde::Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap_or_default()
}

/// The links networkd creates for a configuration: each interface's and bond's bridge and
/// host-side veth, each bond's bond device, each VLAN and WireGuard device.
pub fn expected_links(c: &SystemNetworkConfig) -> Vec<String> {
    let mut out = Vec::new();
    for name in c
        .interfaces
        .iter()
        .map(|i| &i.name)
        .chain(c.bonds.iter().map(|b| &b.name))
    {
        out.push(name.clone());
        out.push(super::model::host_veth(name));
    }
    for b in &c.bonds {
        out.push(super::model::bond_device(&b.name));
    }
    out.extend(c.vlans.iter().map(|v| v.name.clone()));
    out.extend(c.wireguard.iter().map(|w| w.name.clone()));
    out
}

/// The device entries of a configuration by name, as JSON (to compare old and new).
fn devices(c: &SystemNetworkConfig) -> Vec<(String, serde_json::Value)> {
    let interfaces = c.interfaces.iter().map(|i| (i.name.clone(), json(i)));
    let bonds = c.bonds.iter().map(|b| (b.name.clone(), json(b)));
    let vlans = c.vlans.iter().map(|v| (v.name.clone(), json(v)));
    let wireguard = c.wireguard.iter().map(|w| (w.name.clone(), json(w)));
    interfaces
        .chain(bonds)
        .chain(vlans)
        .chain(wireguard)
        .collect()
}

/// The devices of `old` that are gone from `new` or changed: their links are deleted so
/// networkd creates them afresh.
pub fn stale_devices(old: &SystemNetworkConfig, new: &SystemNetworkConfig) -> Vec<String> {
    let new = devices(new);
    devices(old)
        .into_iter()
        .filter(|(name, v)| !new.iter().any(|(n, nv)| n == name && nv == v))
        .map(|(name, _)| name)
        .collect()
}

/// Applies `config` (already parsed; its `confirmation_timeout` is ignored) within
/// `timeout`, then `save`s it as it is to be stored (names resolved to MACs, WireGuard
/// keys generated), and returns that. On error, a failed save included, everything is
/// put back.
pub fn apply(
    ctx: &Context,
    old: Option<&SystemNetworkConfig>,
    mut config: SystemNetworkConfig,
    timeout: Duration,
    save: &dyn Fn(&SystemNetworkConfig) -> Result<(), String>,
) -> Result<SystemNetworkConfig, String> {
    let deadline = Instant::now() + timeout;
    let mut undo = Undo::new(&ctx.host);
    let result = steps(ctx, &mut undo, old, &mut config, deadline).and_then(|()| save(&config));
    match result {
        Ok(()) => {
            undo.commit();
            Ok(config)
        }
        Err(e) => {
            tracing::warn!(error = %e, "network change failed: putting the previous configuration back");
            undo.rollback();
            Err(e)
        }
    }
}

fn steps(
    ctx: &Context,
    undo: &mut Undo,
    old: Option<&SystemNetworkConfig>,
    config: &mut SystemNetworkConfig,
    deadline: Instant,
) -> Result<(), String> {
    let os = &ctx.os;
    config.confirmation_timeout.clear();

    // Time zone first, as upstream.
    if let Some(tz) = config.time.as_ref().map(|t| t.timezone.clone()) {
        if !tz.is_empty() {
            let before = os.timezone().map_err(os_err)?;
            if before != tz {
                os.set_timezone(&tz).map_err(os_err)?;
                let os2 = os.clone();
                undo.on_rollback("time zone", move |_| {
                    os2.set_timezone(&before)
                        .map_err(|e| plugin_api::sdk::Error::internal(e.0))
                });
            }
        }
    }

    // Validation, with interface names looked up among the links.
    let links = os.links().map_err(os_err)?;
    validate::prepare(config, |name| {
        links
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.permanent_mac.clone().or_else(|| l.mac.clone()))
            .ok_or_else(|| format!("no interface named '{name}'"))
    })?;

    // Devices gone or changed: deleted (networkd recreates the rest). A bridge that still
    // carries ports this daemon did not make (instances) is kept.
    if let Some(old) = old {
        for name in stale_devices(old, config) {
            for link in [
                super::model::host_veth(&name),
                name.clone(),
                super::model::bond_device(&name),
            ] {
                let foreign = links.iter().any(|l| {
                    l.master.as_deref() == Some(link.as_str()) && !l.name.starts_with('_')
                });
                if foreign {
                    continue;
                }
                os.delete_link(&link).map_err(os_err)?;
            }
        }
    }

    files::ensure_wireguard_keys(config, files::random_private_key)?;

    // Everything generated before the first write: a config that cannot be rendered
    // changes nothing.
    let max_mtu = |mac: &str| {
        links
            .iter()
            .find(|l| l.permanent_mac.as_deref() == Some(mac) || l.mac.as_deref() == Some(mac))
            .and_then(|l| l.max_mtu.map(i64::from))
    };
    let generated = files::networkd_files(config, max_mtu)?;
    let ruleset = firewall::ruleset(config)?;
    let old_ruleset = firewall::ruleset(old.unwrap_or(&SystemNetworkConfig::default()))?;
    let proxy_setup = proxy::setup(config.proxy.as_ref())?;

    // Hostname.
    if let Some(name) = files::configured_hostname(config) {
        let before = os.hostname().map_err(os_err)?;
        if before != name {
            os.set_hostname(&name).map_err(os_err)?;
            let os2 = os.clone();
            undo.on_rollback("hostname", move |_| {
                os2.set_hostname(&before)
                    .map_err(|e| plugin_api::sdk::Error::internal(e.0))
            });
        }
        undo.write_file(files::ETC_HOSTS, files::etc_hosts(&name).as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
    }

    // Proxy.
    match proxy_setup {
        proxy::ProxySetup::Off => {
            undo.remove(proxy::ENVIRONMENT).map_err(|e| e.to_string())?;
            undo.remove(proxy::KPX_CONF).map_err(|e| e.to_string())?;
            if ctx
                .host
                .unit(plugin_api::abi::UnitOp::ActiveState, proxy::KPX_UNIT)
                .is_ok_and(|s| matches!(s.as_str(), "active" | "activating" | "reloading"))
            {
                undo.stop_unit(proxy::KPX_UNIT).map_err(|e| e.to_string())?;
            }
        }
        proxy::ProxySetup::Local {
            environment,
            kpx_yaml,
        } => {
            undo.write_file(proxy::ENVIRONMENT, environment.as_bytes(), 0o644)
                .map_err(|e| e.to_string())?;
            undo.write_file(proxy::KPX_CONF, kpx_yaml.as_bytes(), 0o644)
                .map_err(|e| e.to_string())?;
            undo.restart_unit(proxy::KPX_UNIT)
                .map_err(|e| e.to_string())?;
        }
    }

    // networkd's files: the directory holds exactly the generated set.
    let keep: Vec<&str> = generated.iter().map(|f| f.name.as_str()).collect();
    let existing = ctx
        .host
        .list_dir(NETWORKD_DIR)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    for name in existing.iter().filter(|n| !keep.contains(&n.as_str())) {
        undo.remove(&format!("{NETWORKD_DIR}/{name}"))
            .map_err(|e| e.to_string())?;
    }
    for f in &generated {
        undo.write_file(
            &format!("{NETWORKD_DIR}/{}", f.name),
            f.contents.as_bytes(),
            0o644,
        )
        .map_err(|e| e.to_string())?;
    }
    match files::timesyncd_conf(config) {
        Some(text) => undo.write_file(files::TIMESYNCD_CONF, text.as_bytes(), 0o644),
        None => undo.remove(files::TIMESYNCD_CONF),
    }
    .map_err(|e| e.to_string())?;

    rename_nics(ctx, config)?;

    // Firewall: one transaction; on rollback the previous configuration's rules.
    nft(&ctx.host, &ruleset)?;
    undo.on_rollback("firewall rules", move |h| {
        nft(h, &old_ruleset).map_err(plugin_api::sdk::Error::internal)
    });

    // networkd on the new files (on rollback, restarted again on the old ones).
    undo.restart_unit(NETWORKD).map_err(|e| e.to_string())?;
    let (required, ipv6) = required_online(config);
    let left = deadline.saturating_duration_since(Instant::now());
    os.wait_online(&required, left).map_err(os_err)?;
    if ipv6 {
        // networkd may call a device online while IPv6 duplicate address detection runs.
        std::thread::sleep(Duration::from_secs(3));
    }
    // A device networkd could not create (a bond without the bonding driver, a WireGuard
    // device without WireGuard) does not stop the others from coming online: it is looked
    // for by name.
    let links = os.links().map_err(os_err)?;
    let absent: Vec<String> = expected_links(config)
        .into_iter()
        .filter(|name| !links.iter().any(|l| &l.name == name))
        .collect();
    if !absent.is_empty() {
        return Err(format!(
            "systemd-networkd did not create {} (see its log)",
            absent.join(", ")
        ));
    }

    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = os.check_dns(DNS_PROBE, left) {
        if !ctx.allow_partial {
            return Err(e.0);
        }
        tracing::warn!(error = %e, "DNS check failed, the system may have trouble resolving names");
    }

    match os.restart_timesyncd_and_wait(TIME_SYNC_WAIT) {
        Ok(true) => {}
        Ok(false) => tracing::warn!("no time synchronisation yet: the system time may be wrong"),
        Err(e) => tracing::warn!(error = %e, "cannot restart time synchronisation"),
    }
    Ok(())
}

/// How long udev gets to rename the NICs after their "add" events are replayed.
const UDEV_RENAME_WAIT: Duration = Duration::from_secs(5);

/// Gives every configured NIC its `_p<m>` name. udev does it from the `.link` files (which
/// also set the NIC's MAC policy, MTU and offloads) when it runs: its "add" events are
/// replayed and the renames waited for. A NIC still under another name after that (no
/// udev, as in a container) is renamed over netlink, so networkd finds it, and given a
/// random MAC as the `.link` file asks (the MTU and offload settings then stay as they
/// are).
fn rename_nics(ctx: &Context, config: &SystemNetworkConfig) -> Result<(), String> {
    let wanted: Vec<(String, String)> = config
        .interfaces
        .iter()
        .map(|i| i.hwaddr.to_lowercase())
        .chain(
            config
                .bonds
                .iter()
                .flat_map(|b| b.members.iter().map(|m| m.to_lowercase())),
        )
        .map(|mac| (super::model::physical_port(&mac), mac))
        .collect();
    let missing = |links: &[crate::platform::network::LinkState]| -> Vec<(String, String)> {
        wanted
            .iter()
            .filter(|(port, _)| !links.iter().any(|l| &l.name == port))
            .cloned()
            .collect()
    };
    let links = ctx.os.links().map_err(os_err)?;
    if missing(&links).is_empty() {
        return Ok(());
    }
    let udev = ctx
        .host
        .run(
            &[
                "udevadm",
                "trigger",
                "--action=add",
                "--subsystem-match=net",
            ],
            Duration::from_secs(10),
        )
        .is_ok_and(|o| o.status == 0);
    let mut links = links;
    if udev {
        let _ = ctx.host.run(&["udevadm", "settle"], UDEV_RENAME_WAIT);
        let until = Instant::now() + UDEV_RENAME_WAIT;
        while !missing(&links).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            links = ctx.os.links().map_err(os_err)?;
        }
    }
    for (port, mac) in missing(&links) {
        let nic = links.iter().find(|l| {
            let own = l.permanent_mac.as_deref().or(l.mac.as_deref());
            own.is_some_and(|m| m.eq_ignore_ascii_case(&mac))
                && !l.name.starts_with('_')
                && !matches!(
                    l.kind.as_deref(),
                    Some("bridge" | "bond" | "vlan" | "wireguard")
                )
        });
        match nic {
            Some(l) => {
                // What the `.link` file would have had udev do: the name, and a random
                // MAC (the configured one is the host side's, on the same bridge).
                let random = random_mac()?;
                tracing::info!(nic = %l.name, name = %port, mac = %random, "renaming the NIC");
                ctx.os.rename_link(&l.name, &port).map_err(os_err)?;
                ctx.os.set_mac(&port, &random).map_err(os_err)?;
            }
            None => return Err(format!("no network interface has the MAC address {mac}")),
        }
    }
    Ok(())
}

/// A random unicast, locally administered MAC (`MACAddressPolicy=random`).
fn random_mac() -> Result<String, String> {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).map_err(|e| format!("cannot make a MAC address: {e}"))?;
    b[0] = (b[0] & 0xfe) | 0x02;
    Ok(b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Loads an `nft -f` script.
fn nft(host: &Host, script: &str) -> Result<(), String> {
    let out = host
        .run_with_input(
            &["nft", "-f", "-"],
            script.as_bytes(),
            Duration::from_secs(30),
        )
        .map_err(|e| format!("cannot apply the firewall rules: {e}"))?;
    if out.status != 0 {
        return Err(format!(
            "cannot apply the firewall rules: {}",
            out.stderr.trim()
        ));
    }
    Ok(())
}
