//! What the network subsystem asks of the OS: link state and link changes over rtnetlink
//! ([`netlink`]), and systemd-networkd, hostnamed, timedated, resolved and timesyncd over
//! D-Bus. No `ip`, `networkctl`, `hostnamectl`, `timedatectl` or `resolvectl` output is
//! parsed (see docs/network-platform.md).

pub mod dbus;
pub mod fake;
pub mod lldp;
pub mod netlink;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::kernel::KernelFiles;
use super::{Mode, PlatformError};

/// The network OS for the daemon: live when `mode` is [`Mode::Live`] (netlink in the
/// daemon's own namespace, the services on `bus`, or on the system bus when `None`, files
/// under `root`), else [`fake::Unavailable`] with the offline reason; also `Unavailable`,
/// with the cause logged, when the bus or netlink cannot be reached. Call it inside a
/// tokio runtime.
pub async fn connect(
    mode: &Mode,
    root: &Path,
    bus: Option<&str>,
    kernel: KernelFiles,
) -> Arc<dyn NetworkOs> {
    if let Mode::Offline(why) = mode {
        return Arc::new(fake::Unavailable::new(why));
    }
    let live = async {
        let nl = netlink::Netlink::connect(kernel)?;
        dbus::DbusNetwork::connect(bus, nl, root).await
    };
    match live.await {
        Ok(n) => Arc::new(n),
        Err(e) => {
            tracing::warn!(error = %e, "the network services are not reachable");
            Arc::new(fake::Unavailable::new(&e.0))
        }
    }
}

/// The OS calls of the network subsystem. The live implementation is
/// [`dbus::DbusNetwork`]; the subsystem's own tests use a fake. Calls are synchronous and
/// may block (D-Bus calls, waits): call them from blocking threads, never from an async
/// task.
pub trait NetworkOs: Send + Sync {
    /// Every link of the machine with addresses, routes, counters and speed (netlink).
    fn links(&self) -> Result<Vec<LinkState>, PlatformError>;
    /// Sets a link's MAC address (`aa:bb:cc:dd:ee:ff`): used to put a NIC's permanent
    /// address back before power-off or suspend, so Wake-on-LAN packets match it.
    fn set_mac(&self, link: &str, mac: &str) -> Result<(), PlatformError>;
    /// Sets a link administratively up.
    fn set_link_up(&self, link: &str) -> Result<(), PlatformError>;
    /// Renames a link (taken down for it, as the kernel requires, and left down: networkd
    /// brings up what it manages).
    fn rename_link(&self, link: &str, new_name: &str) -> Result<(), PlatformError>;
    /// Deletes a virtual link (bridge, veth, bond, vlan, ...) as `networkctl delete`
    /// does; `Ok(false)` when there is none of that name.
    fn delete_link(&self, link: &str) -> Result<bool, PlatformError>;
    /// Restarts systemd-networkd (through systemd) and waits for the restart job.
    fn restart_networkd(&self) -> Result<(), PlatformError>;
    /// Asks systemd-networkd to re-read its configuration (`Reload`).
    fn reload_networkd(&self) -> Result<(), PlatformError>;
    /// networkd's view of a link (online, address and operational state); `None` when
    /// networkd does not know it.
    fn link_status(&self, link: &str) -> Result<Option<LinkStatus>, PlatformError>;
    /// LLDP neighbours networkd heard on a link.
    fn lldp_neighbors(&self, link: &str) -> Result<Vec<LldpNeighbor>, PlatformError>;
    /// Waits until each of `links` is online for networkd and has a routable
    /// (non-link-local) address; an error naming the links still waiting after `timeout`.
    fn wait_online(&self, links: &[String], timeout: Duration) -> Result<(), PlatformError>;
    /// Sets the static and the transient hostname (hostnamed).
    fn set_hostname(&self, name: &str) -> Result<(), PlatformError>;
    /// The hostname in use (hostnamed).
    fn hostname(&self) -> Result<String, PlatformError>;
    /// Sets the time zone, an IANA name (timedated); an unknown zone is an error.
    fn set_timezone(&self, tz: &str) -> Result<(), PlatformError>;
    /// The time zone (timedated).
    fn timezone(&self) -> Result<String, PlatformError>;
    /// Empties resolved's caches (`:flush-dns`).
    fn flush_dns_caches(&self) -> Result<(), PlatformError>;
    /// Resolves `name` through resolved until a server answers, for at most `timeout`;
    /// "no such name" and "refused" count as answers.
    fn check_dns(&self, name: &str, timeout: Duration) -> Result<(), PlatformError>;
    /// Restarts systemd-timesyncd and waits up to `timeout` for its first NTP reply;
    /// `Ok(false)` when none came (time sync is not fatal to a network change).
    fn restart_timesyncd_and_wait(&self, timeout: Duration) -> Result<bool, PlatformError>;
}

/// networkd's state of one link (from its `Describe` JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// `online`, `partial`, `offline`; `None` when the link is not required for online
    /// or networkd does not manage it.
    pub online_state: Option<String>,
    /// `off`, `no-carrier`, `dormant`, `degraded-carrier`, `carrier`, `degraded`,
    /// `enslaved`, `routable`.
    pub operational_state: String,
    /// `off`, `degraded`, `routable`.
    pub address_state: String,
    /// `pending`, `initialized`, `configuring`, `configured`, `unmanaged`, `failed`,
    /// `linger`.
    pub setup_state: String,
}

impl LinkStatus {
    /// From networkd's link description (a JSON object).
    pub fn from_json(json: &str) -> Result<LinkStatus, PlatformError> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| PlatformError(format!("networkd's link description: {e}")))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Ok(LinkStatus {
            online_state: field("OnlineState"),
            operational_state: field("OperationalState").unwrap_or_default(),
            address_state: field("AddressState").unwrap_or_default(),
            // `AdministrativeState` in systemd 252's JSON.
            setup_state: field("SetupState")
                .or_else(|| field("AdministrativeState"))
                .unwrap_or_default(),
        })
    }
}

/// One LLDP neighbour of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LldpNeighbor {
    pub chassis_id: String,
    pub port_id: String,
    /// The neighbour's system name, if it sent one.
    pub name: String,
    /// The neighbour's port description, if it sent one.
    pub port_description: String,
}

impl LldpNeighbor {
    /// From networkd's `GetLLDPNeighbors` reply parameters (`{"Neighbors": [...]}`).
    pub fn from_varlink(reply: &serde_json::Value) -> Vec<LldpNeighbor> {
        let list = reply
            .get("Neighbors")
            .and_then(|n| n.as_array())
            .cloned()
            .unwrap_or_default();
        list.iter()
            .map(|n| {
                let f = |k: &str| {
                    n.get(k)
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                LldpNeighbor {
                    chassis_id: f("ChassisID"),
                    port_id: f("PortID"),
                    name: f("SystemName"),
                    port_description: f("PortDescription"),
                }
            })
            .collect()
    }
}

/// One network link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    pub name: String,
    /// The link kind (`veth`, `bridge`, `bond`, `vlan`, `wireguard`, ...); `None` for a
    /// physical NIC and for `lo`.
    pub kind: Option<String>,
    pub mtu: u32,
    /// The largest MTU the device accepts, when the driver says.
    pub max_mtu: Option<u32>,
    /// Current MAC address (`aa:bb:cc:dd:ee:ff`), if the link has one.
    pub mac: Option<String>,
    /// The hardware's own (permanent) MAC address, when the driver reports one (physical
    /// NICs; not veth or bridges).
    pub permanent_mac: Option<String>,
    /// The kernel's operational state: `up`, `down`, `lowerlayerdown`, `dormant`,
    /// `unknown`, ...
    pub operstate: String,
    pub stats: LinkStats,
    /// The bridge or bond this link is a port of.
    pub master: Option<String>,
    /// Addresses as `addr/prefix`, link-local ones (`fe80::/10`, `169.254/16`) left out.
    pub addresses: Vec<String>,
    /// Unicast routes of the main table leaving through this link (link-local
    /// destinations left out).
    pub routes: Vec<Route>,
    /// Speed in Mb/s from `/sys/class/net/<dev>/speed`; `None` when there is none.
    pub speed: Option<String>,
}

/// Counters of a link since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// A route: destination (`default` or `addr/prefix`) and gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub to: String,
    pub via: Option<String>,
    pub ipv6: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_offline_daemon_gets_a_network_that_refuses_with_the_reason() {
        let root = Path::new("/tmp/dev-root");
        let os = connect(
            &Mode::Offline("offline: dev root".into()),
            root,
            None,
            KernelFiles::under(root),
        )
        .await;
        let e = std::thread::scope(|s| s.spawn(|| os.links()).join().unwrap()).unwrap_err();
        assert_eq!(
            e.0,
            "cannot list network links: the network is not reachable (offline: dev root)"
        );
    }

    #[test]
    fn link_status_reads_networkds_description_of_either_version() {
        let newer = r#"{"OnlineState":"online","OperationalState":"routable","AddressState":"routable","SetupState":"configured"}"#;
        let v252 = r#"{"OperationalState":"no-carrier","AddressState":"off","AdministrativeState":"configuring"}"#;
        assert_eq!(
            LinkStatus::from_json(newer).unwrap(),
            LinkStatus {
                online_state: Some("online".into()),
                operational_state: "routable".into(),
                address_state: "routable".into(),
                setup_state: "configured".into(),
            }
        );
        let old = LinkStatus::from_json(v252).unwrap();
        assert_eq!(old.online_state, None);
        assert_eq!(old.setup_state, "configuring");
        assert!(LinkStatus::from_json("not json").is_err());
    }
}
