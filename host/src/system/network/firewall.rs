//! The nftables ruleset of a network configuration, as one script for `nft -f`.
//!
//! Two tables named `incus-osd`, with upstream's chains and rules:
//!
//! * `inet`: `input` (hook input, priority 0) holds each device's firewall: on a device
//!   with `firewall_rules`, established/related traffic and ICMP (v4, and the v6 types
//!   neighbour discovery, router discovery, MLD and ping need) are accepted, invalid traffic
//!   dropped, then the user's rules follow in order. `forward` (hook forward, priority 0)
//!   drops traffic routed from one of the host's own L3 devices (`_v<name>`, VLANs,
//!   WireGuard) to another; forwarding that involves anything else is left alone.
//! * `bridge`: `mac-filters` (hook postrouting, priority 0) drops frames leaving a
//!   `strict_hwaddr` NIC with another source MAC than its own; `conntrack-bypass` (hook
//!   prerouting, priority -300, ahead of bridge conntrack) marks everything entering the
//!   managed bridges' ports (`_i<m>`, `_p<m>`, `_b<name>`) `notrack`, so bridge conntrack
//!   does not clash with connections already tracked (and NATed) at the IP layer.
//!
//! Every chain's policy is accept: a user who wants a closed device adds a final `drop`.
//!
//! The script first creates the tables and chains (a no-op when they exist), then flushes
//! the four chains and refills them, so running it again gives the same ruleset, and nft
//! applies it as one transaction: either all of it or nothing.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::model::{
    bond_device, bridge_port, host_veth, physical_port, SystemNetworkConfig,
    SystemNetworkFirewallRule,
};
use super::validate::parse_source;

/// The tables' name.
pub const TABLE: &str = "incus-osd";

/// The `nft -f` script for `config` (strictly validated: every `hwaddr` a MAC).
pub fn ruleset(config: &SystemNetworkConfig) -> Result<String, String> {
    let mut s = String::new();
    s.push_str(&format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} input {{ type filter hook input priority 0 ; policy accept ; }}\n\
         add chain inet {TABLE} forward {{ type filter hook forward priority 0 ; policy accept ; }}\n\
         add table bridge {TABLE}\n\
         add chain bridge {TABLE} mac-filters {{ type filter hook postrouting priority 0 ; policy accept ; }}\n\
         add chain bridge {TABLE} conntrack-bypass {{ type filter hook prerouting priority -300 ; policy accept ; }}\n\
         flush chain inet {TABLE} input\n\
         flush chain inet {TABLE} forward\n\
         flush chain bridge {TABLE} mac-filters\n\
         flush chain bridge {TABLE} conntrack-bypass\n"
    ));

    // input: (device, rules) for every L3 device, in configuration order.
    let l3: Vec<(String, &[SystemNetworkFirewallRule])> = config
        .interfaces
        .iter()
        .map(|i| (host_veth(&i.name), i.firewall_rules.as_slice()))
        .chain(
            config
                .bonds
                .iter()
                .map(|b| (host_veth(&b.name), b.firewall_rules.as_slice())),
        )
        .chain(
            config
                .vlans
                .iter()
                .map(|v| (v.name.clone(), v.firewall_rules.as_slice())),
        )
        .chain(
            config
                .wireguard
                .iter()
                .map(|w| (w.name.clone(), w.firewall_rules.as_slice())),
        )
        .collect();
    for (device, rules) in l3.iter().filter(|(_, rules)| !rules.is_empty()) {
        let prefix = format!("add rule inet {TABLE} input iifname {}", quote(device));
        for base in [
            "ct state established,related accept",
            "ct state invalid drop",
            "ip protocol icmp accept",
            "icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept",
            "icmpv6 type { echo-request, nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, mld-listener-query } accept",
        ] {
            let _ = writeln!(s, "{prefix} {base}");
        }
        for rule in *rules {
            let _ = writeln!(s, "{prefix} {}", user_rule(rule)?);
        }
    }

    // forward: no routing between the host's own L3 devices.
    if !l3.is_empty() {
        let set = set(l3.iter().map(|(d, _)| d.as_str()));
        let _ = writeln!(
            s,
            "add rule inet {TABLE} forward iifname {set} oifname {set} drop"
        );
    }

    // mac-filters: a strict NIC sends only its own MAC.
    for iface in config.interfaces.iter().filter(|i| i.strict_hwaddr) {
        let _ = writeln!(
            s,
            "add rule bridge {TABLE} mac-filters oifname {} ether saddr != {} drop",
            quote(&physical_port(&iface.hwaddr)),
            iface.hwaddr.to_lowercase()
        );
    }

    // conntrack-bypass: the managed bridges' ports.
    let mut ports = Vec::new();
    for iface in config.interfaces.iter().filter(|i| !i.hwaddr.is_empty()) {
        ports.push(bridge_port(&iface.hwaddr));
        ports.push(physical_port(&iface.hwaddr));
    }
    for bond in &config.bonds {
        let mac = bond.effective_hwaddr();
        if !mac.is_empty() {
            ports.push(bridge_port(mac));
            ports.push(bond_device(&bond.name));
        }
    }
    if !ports.is_empty() {
        let _ = writeln!(
            s,
            "add rule bridge {TABLE} conntrack-bypass iifname {} notrack",
            set(ports.iter().map(String::as_str))
        );
    }
    Ok(s)
}

/// A user rule after the device match: `[ip|ip6 saddr <source>] [<proto> dport <port>]
/// <action>`.
fn user_rule(rule: &SystemNetworkFirewallRule) -> Result<String, String> {
    let mut parts = Vec::new();
    if !rule.source.is_empty() {
        let family = match parse_source(&rule.source)? {
            IpAddr::V4(_) => "ip",
            IpAddr::V6(_) => "ip6",
        };
        parts.push(format!("{family} saddr {}", rule.source));
    }
    if !rule.protocol.is_empty() {
        parts.push(format!("{} dport {}", rule.protocol, rule.port));
    }
    parts.push(rule.action.clone());
    Ok(parts.join(" "))
}

/// An interface name as an nft string (validation keeps quotes and backslashes out).
fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

fn set<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(quote).collect();
    format!("{{ {} }}", names.join(", "))
}
