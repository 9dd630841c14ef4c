//! The JSON model of `/1.0/system/network`, wire-compatible with upstream's `SystemNetwork*`
//! types: the same keys, in the same order, left out when empty exactly where upstream leaves
//! them out.
//!
//! Decoding follows Go's `encoding/json` as upstream uses it: a missing key or a `null` is
//! the field's zero value, and **unknown keys are ignored** (no `deny_unknown_fields`).
//! Upstream's PUT is called "strict" only because an empty body fails (`EOF`) instead of
//! counting as `{}`; its decoder never refuses an unknown key, so neither does this one.
//! Integers are signed (`i64`) where a client can send a negative value, so that the value
//! reaches validation and gets upstream's message instead of a decoding error.
//!
//! Two deliberate departures, invisible to Go clients (which decode both forms alike): a
//! list upstream always writes (`allowed_ips` of a peer) is written `[]` when empty where Go
//! would write `null` for a list it never set; and `confirmation_timeout` is read but never
//! written back, since upstream clears it before storing the config.
//!
//! The naming helpers at the end ([`mac_suffix`], [`physical_port`], ...) are the one place
//! the generated device names are built; files, firewall and state all use them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::system::update::config::null_as_default as nd;

/// Role: where the host is managed from (and where the primary application listens).
pub const ROLE_MANAGEMENT: &str = "management";
/// Role: cluster traffic.
pub const ROLE_CLUSTER: &str = "cluster";
/// Role: instance networks.
pub const ROLE_INSTANCES: &str = "instances";
/// Role: storage traffic.
pub const ROLE_STORAGE: &str = "storage";
/// Every role, in upstream's order.
pub const ROLES: [&str; 4] = [ROLE_MANAGEMENT, ROLE_CLUSTER, ROLE_INSTANCES, ROLE_STORAGE];

/// The networkd operational state that earns a device the automatic `management` role.
pub const STATE_ROUTABLE: &str = "routable";

/// `GET /1.0/system/network`: `config` is `null` until a configuration was ever set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetwork {
    #[serde(default)]
    pub config: Option<SystemNetworkConfig>,
    #[serde(default, deserialize_with = "nd")]
    pub state: SystemNetworkState,
}

/// The user's network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkConfig {
    /// A Go duration (`"45s"`); input only: never written back.
    #[serde(default, deserialize_with = "nd", skip_serializing)]
    pub confirmation_timeout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<SystemNetworkDns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<SystemNetworkTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<SystemNetworkProxy>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub interfaces: Vec<SystemNetworkInterface>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub bonds: Vec<SystemNetworkBond>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vlans: Vec<SystemNetworkVlan>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub wireguard: Vec<SystemNetworkWireguard>,
}

/// The time zone a `GET` shows when none is configured.
pub const DEFAULT_TIMEZONE: &str = "UTC";

impl SystemNetworkConfig {
    /// The configuration of a machine without a network seed: every NIC (name and MAC, in
    /// the order given) on DHCPv4 and SLAAC, not required for online, time zone UTC.
    pub fn default_for_nics<'a>(nics: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        SystemNetworkConfig {
            time: Some(SystemNetworkTime {
                timezone: DEFAULT_TIMEZONE.into(),
                ..Default::default()
            }),
            interfaces: nics
                .into_iter()
                .map(|(name, mac)| SystemNetworkInterface {
                    name: name.into(),
                    hwaddr: mac.into(),
                    addresses: vec!["dhcp4".into(), "slaac".into()],
                    required_for_online: "no".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Whether the configuration defines a device a PUT may consist of: an interface, a
    /// bond or a VLAN (WireGuard alone does not count, as upstream).
    pub fn has_devices(&self) -> bool {
        !(self.interfaces.is_empty() && self.bonds.is_empty() && self.vlans.is_empty())
    }

    /// Fills in [`DEFAULT_TIMEZONE`] when no time zone is set, as a `GET` shows it.
    pub fn fill_default_timezone(&mut self) {
        let time = self.time.get_or_insert_with(Default::default);
        if time.timezone.is_empty() {
            time.timezone = DEFAULT_TIMEZONE.into();
        }
    }

    /// The NICs whose permanent MAC must be put back before poweroff or suspend so a
    /// Wake-on-LAN magic packet finds them (they run with a random MAC otherwise):
    /// `(_p<m>, MAC)` for each interface, and each member of each bond, with `wakeonlan`.
    pub fn wake_on_lan_macs(&self) -> Vec<(String, String)> {
        let wol = |e: &Option<SystemNetworkEthernet>| e.as_ref().is_some_and(|e| e.wakeonlan);
        let interfaces = self
            .interfaces
            .iter()
            .filter(|i| wol(&i.ethernet))
            .map(|i| &i.hwaddr);
        let members = self
            .bonds
            .iter()
            .filter(|b| wol(&b.ethernet))
            .flat_map(|b| &b.members);
        interfaces
            .chain(members)
            .map(|mac| (physical_port(mac), mac.clone()))
            .collect()
    }
}

/// A physical interface: becomes a bridge named `name` with the NIC as a port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkInterface {
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethernet: Option<SystemNetworkEthernet>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub firewall_rules: Vec<SystemNetworkFirewallRule>,
    /// A MAC, or an interface name resolved to its MAC when applied.
    #[serde(default, deserialize_with = "nd")]
    pub hwaddr: String,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub lldp: bool,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub mtu: i64,
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub required_for_online: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<SystemNetworkRoute>,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub strict_hwaddr: bool,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vlan_tags: Vec<i64>,
}

/// A bond of physical interfaces (`members`), bridged like an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkBond {
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethernet: Option<SystemNetworkEthernet>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub firewall_rules: Vec<SystemNetworkFirewallRule>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub hwaddr: String,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub lldp: bool,
    /// MACs, or interface names resolved to MACs when applied.
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub members: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub mode: String,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub mtu: i64,
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub required_for_online: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<SystemNetworkRoute>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vlan_tags: Vec<i64>,
}

impl SystemNetworkBond {
    /// The MAC the bond shows to the network: its own `hwaddr`, else its first member's.
    pub fn effective_hwaddr(&self) -> &str {
        if self.hwaddr.is_empty() {
            self.members.first().map_or("", String::as_str)
        } else {
            &self.hwaddr
        }
    }
}

/// A VLAN on top of an interface or a bond.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkVlan {
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub firewall_rules: Vec<SystemNetworkFirewallRule>,
    #[serde(default, deserialize_with = "nd")]
    pub id: i64,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub mtu: i64,
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub parent: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub required_for_online: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<SystemNetworkRoute>,
}

/// Offload, energy-efficiency and Wake-on-LAN settings of a NIC (or of every bond member).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkEthernet {
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub disable_energy_efficient: bool,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub disable_gro: bool,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub disable_gso: bool,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub disable_ipv4_tso: bool,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub disable_ipv6_tso: bool,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub wakeonlan: bool,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub wakeonlan_modes: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub wakeonlan_password: String,
}

/// One input rule of a device's firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkFirewallRule {
    #[serde(default, deserialize_with = "nd")]
    pub action: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub source: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub protocol: String,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub port: i64,
}

/// A WireGuard tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkWireguard {
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub firewall_rules: Vec<SystemNetworkFirewallRule>,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub mtu: i64,
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers: Vec<SystemNetworkWireguardPeer>,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub port: i64,
    /// Base64; generated when the config is applied if empty.
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub private_key: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub required_for_online: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<SystemNetworkRoute>,
}

/// A WireGuard peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkWireguardPeer {
    #[serde(default, deserialize_with = "nd")]
    pub allowed_ips: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub endpoint: String,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub persistent_keepalive: i64,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub preshared_key: String,
    #[serde(default, deserialize_with = "nd")]
    pub public_key: String,
}

/// A route: `to` is a CIDR, `via` an IP or `dhcp4`/`slaac` (the gateway those provide).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkRoute {
    #[serde(default, deserialize_with = "nd")]
    pub to: String,
    #[serde(default, deserialize_with = "nd")]
    pub via: String,
}

/// Host name, domain and resolver settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkDns {
    #[serde(default, deserialize_with = "nd")]
    pub domain: String,
    #[serde(default, deserialize_with = "nd")]
    pub hostname: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search_domains: Vec<String>,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_false")]
    pub dns_over_tls: bool,
}

/// NTP servers and time zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkTime {
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ntp_servers: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub timezone: String,
}

/// Outgoing HTTP(S) proxying through the local `kpx` daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkProxy {
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub rules: Vec<SystemNetworkProxyRule>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub servers: BTreeMap<String, SystemNetworkProxyServer>,
}

/// An upstream proxy server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkProxyServer {
    /// `anonymous`, `basic` or `kerberos`.
    #[serde(default, deserialize_with = "nd")]
    pub auth: String,
    /// `host`, `host:port` or a URL with an `http://`/`https://` scheme.
    #[serde(default, deserialize_with = "nd")]
    pub host: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub password: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub realm: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub username: String,
    #[serde(default, deserialize_with = "nd")]
    pub use_tls: bool,
}

/// Which proxy (a server name, `direct` or `none`) serves which destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkProxyRule {
    #[serde(default, deserialize_with = "nd")]
    pub destination: String,
    #[serde(default, deserialize_with = "nd")]
    pub target: String,
}

/// The live network state (never persisted, rebuilt on every `GET`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkState {
    #[serde(default, deserialize_with = "nd")]
    pub interfaces: BTreeMap<String, SystemNetworkInterfaceState>,
    #[serde(default, deserialize_with = "nd")]
    pub configuration_in_process: bool,
}

/// Device types of [`SystemNetworkInterfaceState::kind`] (the JSON `type`).
pub mod device_type {
    pub const INTERFACE: &str = "interface";
    pub const BOND: &str = "bond";
    pub const BOND_MEMBER: &str = "bond_member";
    pub const VLAN: &str = "vlan";
    pub const WIREGUARD: &str = "wireguard";
    /// A NIC the configuration does not mention.
    pub const PHYSICAL: &str = "physical";
}

/// One device's live state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkInterfaceState {
    /// Without link-local addresses, bare (no prefix length).
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub hwaddr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp: Option<SystemNetworkLacpState>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub lldp: Vec<SystemNetworkLldpState>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub members: BTreeMap<String, SystemNetworkInterfaceState>,
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub mtu: i64,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<SystemNetworkRoute>,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub speed: String,
    /// networkd's operational state (`routable`, `degraded`, `no-carrier`, ...).
    #[serde(default, deserialize_with = "nd")]
    pub state: String,
    #[serde(default, deserialize_with = "nd")]
    pub stats: SystemNetworkInterfaceStats,
    /// One of [`device_type`].
    #[serde(
        rename = "type",
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<SystemNetworkWireguardState>,
}

/// Byte and error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkInterfaceStats {
    #[serde(default, deserialize_with = "nd")]
    pub rx_bytes: u64,
    #[serde(default, deserialize_with = "nd")]
    pub rx_errors: u64,
    #[serde(default, deserialize_with = "nd")]
    pub tx_bytes: u64,
    #[serde(default, deserialize_with = "nd")]
    pub tx_errors: u64,
}

/// An LLDP neighbour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkLldpState {
    #[serde(default, deserialize_with = "nd")]
    pub chassis_id: String,
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub port_id: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub port: String,
}

/// A bond member's LACP partner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkLacpState {
    #[serde(default, deserialize_with = "nd")]
    pub local_mac: String,
    #[serde(default, deserialize_with = "nd")]
    pub remote_mac: String,
}

/// A WireGuard device's live state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkWireguardState {
    #[serde(default, deserialize_with = "nd", skip_serializing_if = "is_zero")]
    pub listening_port: i64,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers: Vec<SystemNetworkWireguardPeerState>,
    #[serde(default, deserialize_with = "nd")]
    pub public_key: String,
}

/// A WireGuard peer's live state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemNetworkWireguardPeerState {
    #[serde(default, deserialize_with = "nd")]
    pub allowed_ips: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub endpoint: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub latest_handshake: String,
    #[serde(
        default,
        deserialize_with = "nd",
        skip_serializing_if = "String::is_empty"
    )]
    pub persistent_keepalive: String,
    #[serde(default, deserialize_with = "nd")]
    pub public_key: String,
    #[serde(default, deserialize_with = "nd")]
    pub stats: SystemNetworkInterfaceStats,
}

impl SystemNetworkState {
    /// Gives devices their automatic roles, as upstream does after reading the live state
    /// (whose `roles` are the configured ones): when no device has `management`, every
    /// `routable` one gets it; then, when no device has `cluster`, every device with
    /// `management` also gets `cluster`. NICs outside the configuration (type `physical`)
    /// neither count nor get roles.
    pub fn apply_role_defaults(&mut self) {
        apply_role_defaults(&mut self.interfaces);
    }

    /// Names of the devices that have `role`, sorted.
    pub fn interface_names_by_role(&self, role: &str) -> Vec<String> {
        self.interfaces
            .iter()
            .filter(|(_, s)| s.roles.iter().any(|r| r == role))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The address to advertise for `role`: the first IPv6 address of a device with that
    /// role (devices in name order), else the first IPv4 one; `None` when there is none.
    pub fn address_by_role(&self, role: &str) -> Option<IpAddr> {
        let mut v4 = None;
        for state in self.interfaces.values() {
            if !state.roles.iter().any(|r| r == role) {
                continue;
            }
            for address in &state.addresses {
                match address.parse::<IpAddr>() {
                    Ok(ip @ IpAddr::V6(_)) => return Some(ip),
                    Ok(ip @ IpAddr::V4(_)) if v4.is_none() => v4 = Some(ip),
                    _ => {}
                }
            }
        }
        v4
    }
}

/// [`SystemNetworkState::apply_role_defaults`] over a bare map.
pub fn apply_role_defaults(interfaces: &mut BTreeMap<String, SystemNetworkInterfaceState>) {
    let managed = |s: &SystemNetworkInterfaceState| s.kind != device_type::PHYSICAL;
    let has = |interfaces: &BTreeMap<String, SystemNetworkInterfaceState>, role: &str| {
        interfaces
            .values()
            .filter(|s| managed(s))
            .any(|s| s.roles.iter().any(|r| r == role))
    };
    let management_found = has(interfaces, ROLE_MANAGEMENT);
    let cluster_found = has(interfaces, ROLE_CLUSTER);
    for state in interfaces.values_mut().filter(|s| managed(s)) {
        if !management_found && state.state == STATE_ROUTABLE {
            state.roles.push(ROLE_MANAGEMENT.to_string());
        }
        if !cluster_found && state.roles.iter().any(|r| r == ROLE_MANAGEMENT) {
            state.roles.push(ROLE_CLUSTER.to_string());
        }
    }
}

/// `<m>` of the generated names: the MAC in lower case without its colons
/// (`10:66:6A:7C:8C:B0` -> `10666a7c8cb0`).
pub fn mac_suffix(mac: &str) -> String {
    mac.replace(':', "").to_lowercase()
}

/// The renamed physical NIC: `_p<m>`.
pub fn physical_port(mac: &str) -> String {
    format!("_p{}", mac_suffix(mac))
}

/// The bridge side of a device's veth pair: `_i<m>`.
pub fn bridge_port(mac: &str) -> String {
    format!("_i{}", mac_suffix(mac))
}

/// The host side of a device's veth pair, where its addresses live: `_v<name>`.
pub fn host_veth(name: &str) -> String {
    format!("_v{name}")
}

/// A bond's kernel device: `_b<name>`.
pub fn bond_device(name: &str) -> String {
    format!("_b{name}")
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_config_round_trips_with_upstreams_keys_and_omissions() {
        let body = json!({
            "confirmation_timeout": "45s",
            "dns": {"hostname": "host", "domain": "example.org", "nameservers": ["1.1.1.1"],
                    "search_domains": ["example.org"], "dns_over_tls": true},
            "time": {"ntp_servers": ["pool.ntp.org"], "timezone": "Europe/Paris"},
            "proxy": {"servers": {"corp": {"auth": "basic", "host": "p:3128", "username": "u",
                      "password": "p", "use_tls": true}},
                      "rules": [{"destination": "*", "target": "corp"}]},
            "interfaces": [{"name": "eth0", "hwaddr": "00:11:22:33:44:55",
                "addresses": ["dhcp4", "10.0.0.2/24"], "routes": [{"to": "0.0.0.0/0", "via": "dhcp4"}],
                "mtu": 9000, "roles": ["management"], "required_for_online": "ipv4",
                "firewall_rules": [{"action": "accept", "protocol": "tcp", "port": 22}],
                "ethernet": {"disable_gro": true, "wakeonlan": true, "wakeonlan_modes": ["magic"]},
                "lldp": true, "strict_hwaddr": true, "vlan_tags": [10, 20]}],
            "bonds": [{"name": "bond0", "mode": "802.3ad", "members": ["00:11:22:33:44:66"]}],
            "vlans": [{"name": "v10", "parent": "eth0", "id": 10}],
            "wireguard": [{"name": "wg0", "port": 51820, "private_key": "a2V5",
                "peers": [{"public_key": "cHVi", "allowed_ips": ["10.1.0.0/16"],
                           "endpoint": "h:1", "persistent_keepalive": 25}]}],
            "future_field": {"ignored": true}
        });
        let config: SystemNetworkConfig = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(config.confirmation_timeout, "45s");
        assert_eq!(config.interfaces[0].vlan_tags, vec![10, 20]);
        let out = serde_json::to_value(&config).unwrap();
        let mut expected = body;
        let obj = expected.as_object_mut().unwrap();
        obj.remove("confirmation_timeout");
        obj.remove("future_field");
        assert_eq!(out, expected);
    }

    #[test]
    fn fields_upstream_always_writes_are_written_when_empty() {
        let config = SystemNetworkConfig {
            dns: Some(SystemNetworkDns::default()),
            interfaces: vec![SystemNetworkInterface::default()],
            bonds: vec![SystemNetworkBond::default()],
            vlans: vec![SystemNetworkVlan::default()],
            wireguard: vec![SystemNetworkWireguard {
                peers: vec![SystemNetworkWireguardPeer::default()],
                ..Default::default()
            }],
            proxy: Some(SystemNetworkProxy {
                rules: vec![SystemNetworkProxyRule::default()],
                servers: [("s".to_string(), SystemNetworkProxyServer::default())].into(),
            }),
            ..Default::default()
        };
        let out = serde_json::to_string(&config).unwrap();
        assert_eq!(
            out,
            concat!(
                r#"{"dns":{"domain":"","hostname":""},"#,
                r#""proxy":{"rules":[{"destination":"","target":""}],"servers":{"s":{"auth":"","host":"","use_tls":false}}},"#,
                r#""interfaces":[{"hwaddr":"","name":""}],"#,
                r#""bonds":[{"mode":"","name":""}],"#,
                r#""vlans":[{"id":0,"name":"","parent":""}],"#,
                r#""wireguard":[{"name":"","peers":[{"allowed_ips":[],"public_key":""}]}]}"#
            )
        );
        assert_eq!(
            serde_json::to_string(&SystemNetworkConfig::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn null_decodes_as_the_zero_value_as_in_go() {
        let config: SystemNetworkConfig = serde_json::from_value(json!({
            "dns": null, "interfaces": null,
            "wireguard": [{"name": null, "peers": [{"allowed_ips": null, "public_key": "x"}]}]
        }))
        .unwrap();
        assert_eq!(config.dns, None);
        assert!(config.interfaces.is_empty());
        assert_eq!(config.wireguard[0].name, "");
        assert!(config.wireguard[0].peers[0].allowed_ips.is_empty());
    }

    #[test]
    fn state_writes_type_state_and_stats_and_omits_the_rest_when_empty() {
        let mut network = SystemNetwork::default();
        network.state.interfaces.insert(
            "vm".into(),
            SystemNetworkInterfaceState {
                kind: device_type::INTERFACE.into(),
                roles: vec![ROLE_INSTANCES.into()],
                state: "carrier".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            serde_json::to_value(&network).unwrap(),
            json!({"config": null, "state": {"interfaces": {"vm": {
                "roles": ["instances"], "state": "carrier",
                "stats": {"rx_bytes": 0, "rx_errors": 0, "tx_bytes": 0, "tx_errors": 0},
                "type": "interface"}}, "configuration_in_process": false}})
        );
    }

    fn dev(kind: &str, state: &str, roles: &[&str]) -> SystemNetworkInterfaceState {
        SystemNetworkInterfaceState {
            kind: kind.into(),
            state: state.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn roles(map: &BTreeMap<String, SystemNetworkInterfaceState>, name: &str) -> Vec<String> {
        map[name].roles.clone()
    }

    #[test]
    fn with_no_management_every_routable_device_gets_management_and_cluster() {
        let mut map = BTreeMap::from([
            ("a".to_string(), dev("interface", "routable", &[])),
            ("b".to_string(), dev("bond", "routable", &["storage"])),
            ("c".to_string(), dev("vlan", "degraded", &[])),
            ("d".to_string(), dev("physical", "routable", &[])),
        ]);
        apply_role_defaults(&mut map);
        assert_eq!(roles(&map, "a"), ["management", "cluster"]);
        assert_eq!(roles(&map, "b"), ["storage", "management", "cluster"]);
        assert!(roles(&map, "c").is_empty());
        assert!(roles(&map, "d").is_empty(), "unmanaged NICs get no roles");
    }

    #[test]
    fn cluster_follows_management_only_when_nobody_has_cluster() {
        let mut map = BTreeMap::from([
            (
                "mgmt".to_string(),
                dev("interface", "routable", &["management"]),
            ),
            (
                "other".to_string(),
                dev("interface", "routable", &["instances"]),
            ),
        ]);
        apply_role_defaults(&mut map);
        assert_eq!(roles(&map, "mgmt"), ["management", "cluster"]);
        assert_eq!(roles(&map, "other"), ["instances"]);

        let mut map = BTreeMap::from([
            (
                "mgmt".to_string(),
                dev("interface", "routable", &["management"]),
            ),
            ("cl".to_string(), dev("interface", "routable", &["cluster"])),
        ]);
        apply_role_defaults(&mut map);
        assert_eq!(roles(&map, "mgmt"), ["management"]);
        assert_eq!(roles(&map, "cl"), ["cluster"]);
    }

    #[test]
    fn the_role_address_prefers_ipv6() {
        let mut state = SystemNetworkState::default();
        let mut a = dev("interface", "routable", &["management"]);
        a.addresses = vec!["10.0.0.2".into()];
        let mut b = dev("interface", "routable", &["management"]);
        b.addresses = vec!["10.0.0.3".into(), "fd00::3".into()];
        state.interfaces.insert("a".into(), a);
        state.interfaces.insert("b".into(), b);
        assert_eq!(
            state.address_by_role("management"),
            Some("fd00::3".parse().unwrap())
        );
        state.interfaces.get_mut("b").unwrap().addresses.pop();
        assert_eq!(
            state.address_by_role("management"),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(state.address_by_role("storage"), None);
        assert_eq!(state.interface_names_by_role("management"), ["a", "b"]);
    }

    #[test]
    fn defaults_devices_and_time_zone() {
        let config = SystemNetworkConfig::default_for_nics([("enp5s0", "00:16:3e:00:00:01")]);
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            json!({"time": {"timezone": "UTC"}, "interfaces": [{"addresses": ["dhcp4", "slaac"],
                "hwaddr": "00:16:3e:00:00:01", "name": "enp5s0", "required_for_online": "no"}]})
        );
        assert!(config.has_devices());

        let mut config: SystemNetworkConfig =
            serde_json::from_value(json!({"wireguard": [{"name": "wg0"}]})).unwrap();
        assert!(!config.has_devices(), "WireGuard alone is no device");
        config.fill_default_timezone();
        assert_eq!(config.time.as_ref().unwrap().timezone, "UTC");
        config.time.as_mut().unwrap().timezone = "Europe/Paris".into();
        config.fill_default_timezone();
        assert_eq!(config.time.as_ref().unwrap().timezone, "Europe/Paris");
        for device in ["interfaces", "bonds", "vlans"] {
            let config: SystemNetworkConfig =
                serde_json::from_value(json!({ device: [{}] })).unwrap();
            assert!(config.has_devices(), "{device}");
        }
    }

    #[test]
    fn wake_on_lan_nics_are_the_interfaces_and_bond_members_with_it() {
        let config: SystemNetworkConfig = serde_json::from_value(json!({
            "interfaces": [
                {"name": "a", "hwaddr": "00:00:00:00:00:0A", "ethernet": {"wakeonlan": true}},
                {"name": "b", "hwaddr": "00:00:00:00:00:0b", "ethernet": {"disable_gro": true}},
                {"name": "c", "hwaddr": "00:00:00:00:00:0c"}
            ],
            "bonds": [
                {"name": "d", "members": ["00:00:00:00:00:0d", "00:00:00:00:00:0e"],
                 "ethernet": {"wakeonlan": true}},
                {"name": "f", "members": ["00:00:00:00:00:0f"]}
            ]
        }))
        .unwrap();
        let pair = |p: &str, m: &str| (p.to_string(), m.to_string());
        assert_eq!(
            config.wake_on_lan_macs(),
            [
                pair("_p00000000000a", "00:00:00:00:00:0A"),
                pair("_p00000000000d", "00:00:00:00:00:0d"),
                pair("_p00000000000e", "00:00:00:00:00:0e"),
            ]
        );
    }

    #[test]
    fn generated_names_use_the_mac_in_lower_case_without_colons() {
        assert_eq!(mac_suffix("10:66:6A:7C:8C:B0"), "10666a7c8cb0");
        assert_eq!(physical_port("10:66:6A:7C:8C:B0"), "_p10666a7c8cb0");
        assert_eq!(bridge_port("10:66:6a:7c:8c:b0"), "_i10666a7c8cb0");
        assert_eq!(host_veth("eth0"), "_veth0");
        assert_eq!(bond_device("bond0"), "_bbond0");
    }
}
