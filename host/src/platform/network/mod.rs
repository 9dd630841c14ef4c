//! What the network subsystem asks of the OS: link state and link changes over rtnetlink
//! ([`netlink`]), and systemd-networkd, hostnamed, timedated, resolved and timesyncd over
//! D-Bus. No `ip`, `networkctl`, `hostnamectl`, `timedatectl` or `resolvectl` output is
//! parsed (see docs/network-platform.md).

pub mod netlink;

use serde::Serialize;

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
