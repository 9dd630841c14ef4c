//! Validation of a network configuration, with upstream's messages and order of checks.
//!
//! An apply validates twice: first [`MacCheck::Lenient`] (a `hwaddr` or bond member may
//! still be an interface name), then [`resolve_hwaddrs`] turns those names into MACs, then
//! [`MacCheck::Strict`] (every one must now be a MAC). [`prepare`] runs the three steps.
//!
//! The first problem found is the error. Devices are checked in the order interfaces,
//! bonds, VLANs, WireGuard, after the global checks (unique names, unique MACs); each
//! message starts with the device kind and its index (`interface 0 ...`, `bond 1 ...`).
//! Two quirks are kept from upstream because clients may match on the texts: a bad
//! firewall rule of a bond or a VLAN is reported as `interface <i> ...`, and the WireGuard
//! keepalive message spells `persitent`.
//!
//! USB NICs are often named `enx` + their 12-digit MAC, 15 characters, longer than the 13 a
//! name may have (the generated `_v<name>` must fit the kernel's 15): validation strips the
//! `enx` from such an interface entry's name, as upstream does, so the stored name is the
//! bare MAC digits.

use std::net::IpAddr;

use super::model::{
    SystemNetworkConfig, SystemNetworkEthernet, SystemNetworkFirewallRule, SystemNetworkRoute,
    ROLES,
};

/// Whether `hwaddr` and bond members must already be MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    /// Before [`resolve_hwaddrs`]: any non-empty value.
    Lenient,
    /// After it: `xx:xx:xx:xx:xx:xx`.
    Strict,
}

/// The message for a missing configuration.
pub const NO_CONFIGURATION: &str = "no network configuration provided";

/// Checks a configuration (see the module doc). Strips `enx` from USB NIC names in place.
pub fn validate(config: Option<&mut SystemNetworkConfig>, macs: MacCheck) -> Result<(), String> {
    let config = config.ok_or_else(|| NO_CONFIGURATION.to_string())?;
    check_unique(config)?;
    strip_usb_prefixes(config);
    let strict = macs == MacCheck::Strict;

    for (i, iface) in config.interfaces.iter().enumerate() {
        let p = |e: String| format!("interface {i} {e}");
        name(&iface.name).map_err(p)?;
        mtu(iface.mtu).map_err(p)?;
        roles(&iface.roles).map_err(p)?;
        firewall(&iface.firewall_rules).map_err(p)?;
        addresses(&iface.addresses).map_err(p)?;
        required_for_online(&iface.required_for_online).map_err(p)?;
        routes(&iface.routes).map_err(p)?;
        hwaddr(&iface.hwaddr, strict).map_err(p)?;
        ethernet(iface.ethernet.as_ref()).map_err(p)?;
    }

    for (i, bond) in config.bonds.iter().enumerate() {
        let p = |e: String| format!("bond {i} {e}");
        name(&bond.name).map_err(p)?;
        mode(&bond.mode).map_err(p)?;
        mtu(bond.mtu).map_err(p)?;
        roles(&bond.roles).map_err(p)?;
        // Upstream's label for a bond's firewall problem.
        firewall(&bond.firewall_rules).map_err(|e| format!("interface {i} {e}"))?;
        addresses(&bond.addresses).map_err(p)?;
        required_for_online(&bond.required_for_online).map_err(p)?;
        routes(&bond.routes).map_err(p)?;
        if !bond.hwaddr.is_empty() {
            hwaddr(&bond.hwaddr, strict).map_err(p)?;
        }
        if bond.members.is_empty() {
            return Err(format!("bond {i} has no members"));
        }
        for (j, member) in bond.members.iter().enumerate() {
            hwaddr(member, strict).map_err(|e| format!("bond {i} member {j} {e}"))?;
        }
        ethernet(bond.ethernet.as_ref()).map_err(p)?;
    }

    for (i, vlan) in config.vlans.iter().enumerate() {
        let p = |e: String| format!("vlan {i} {e}");
        name(&vlan.name).map_err(p)?;
        parent(&vlan.parent, config).map_err(p)?;
        if !(0..=4094).contains(&vlan.id) {
            return Err(format!("vlan {i} ID {} out of range", vlan.id));
        }
        mtu(vlan.mtu).map_err(p)?;
        roles(&vlan.roles).map_err(p)?;
        // Upstream's label for a VLAN's firewall problem.
        firewall(&vlan.firewall_rules).map_err(|e| format!("interface {i} {e}"))?;
        addresses(&vlan.addresses).map_err(p)?;
        required_for_online(&vlan.required_for_online).map_err(p)?;
        routes(&vlan.routes).map_err(p)?;
    }

    for (i, wg) in config.wireguard.iter().enumerate() {
        let p = |e: String| format!("wireguard {i} {e}");
        name(&wg.name).map_err(p)?;
        mtu(wg.mtu).map_err(p)?;
        roles(&wg.roles).map_err(p)?;
        firewall(&wg.firewall_rules).map_err(p)?;
        addresses(&wg.addresses).map_err(p)?;
        required_for_online(&wg.required_for_online).map_err(p)?;
        if !is_base64(&wg.private_key) {
            return Err(format!(
                "wireguard {i} private key '{}' invalid",
                wg.private_key
            ));
        }
        if !(0..=65535).contains(&wg.port) {
            return Err(format!("wireguard {i} port '{}' out of range", wg.port));
        }
        routes(&wg.routes).map_err(p)?;
        for (j, peer) in wg.peers.iter().enumerate() {
            if !is_base64(&peer.public_key) {
                return Err(format!("wireguard {i} peer {j} public key invalid"));
            }
            if !peer.preshared_key.is_empty() && !is_base64(&peer.preshared_key) {
                return Err(format!("wireguard {i} peer {j} preshared key invalid"));
            }
            for (k, ip) in peer.allowed_ips.iter().enumerate() {
                address_with_prefix(ip)
                    .map_err(|e| format!("wireguard {i} peer {j} allowed IP {k} {e}"))?;
            }
            if !(0..=65535).contains(&peer.persistent_keepalive) {
                return Err(format!(
                    "wireguard {i} peer {j} persitent keepalive {} out of range",
                    peer.persistent_keepalive
                ));
            }
            if !peer.endpoint.is_empty() {
                split_host_port(&peer.endpoint).map_err(|e| {
                    format!(
                        "wireguard {i} peer {j} invalid endpoint '{}': {e}",
                        peer.endpoint
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// Replaces every `hwaddr` and bond member that is not a MAC by the MAC of the interface it
/// names, asking `lookup` (an interface name to its MAC, or why not). A bond's empty
/// `hwaddr` stays empty. The error names the entry, as upstream's:
/// `interface 0 failed getting MAC for 'eth9': <why>`.
pub fn resolve_hwaddrs(
    config: &mut SystemNetworkConfig,
    lookup: impl Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    for (i, iface) in config.interfaces.iter_mut().enumerate() {
        if !is_mac(&iface.hwaddr) {
            iface.hwaddr = lookup(&iface.hwaddr).map_err(|e| {
                format!(
                    "interface {i} failed getting MAC for '{}': {e}",
                    iface.hwaddr
                )
            })?;
        }
    }
    for (i, bond) in config.bonds.iter_mut().enumerate() {
        if !bond.hwaddr.is_empty() && !is_mac(&bond.hwaddr) {
            bond.hwaddr = lookup(&bond.hwaddr)
                .map_err(|e| format!("bond {i} failed getting MAC for '{}': {e}", bond.hwaddr))?;
        }
        for (j, member) in bond.members.iter_mut().enumerate() {
            if !is_mac(member) {
                *member = lookup(member).map_err(|e| {
                    format!("bond {i} member {j} failed getting MAC for '{member}': {e}")
                })?;
            }
        }
    }
    Ok(())
}

/// The three validation steps of an apply: lenient, [`resolve_hwaddrs`], strict.
pub fn prepare(
    config: &mut SystemNetworkConfig,
    lookup: impl Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    validate(Some(config), MacCheck::Lenient)?;
    resolve_hwaddrs(config, lookup)?;
    validate(Some(config), MacCheck::Strict)
}

/// `xx:xx:xx:xx:xx:xx` in hex digits of either case.
pub fn is_mac(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 17
        && b.iter().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                *c == b':'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Names and MACs must be unique across the whole configuration; a bond may share its MAC
/// with one of its members. Compared as given (before any name is resolved or stripped).
fn check_unique(config: &SystemNetworkConfig) -> Result<(), String> {
    let mut names: Vec<&str> = Vec::new();
    let mut macs: Vec<&str> = Vec::new();
    // Device by device, as upstream: a clash is reported at the first device that has one.
    let duplicate_mac = |m: &str| format!("duplicate MAC address: {m}");
    let duplicate_name = |n: &str| format!("duplicate interface/bond/vlan/wireguard name: {n}");
    for iface in &config.interfaces {
        if names.contains(&iface.name.as_str()) {
            return Err(duplicate_name(&iface.name));
        }
        if macs.contains(&iface.hwaddr.as_str()) {
            return Err(duplicate_mac(&iface.hwaddr));
        }
        names.push(&iface.name);
        macs.push(&iface.hwaddr);
    }
    for bond in &config.bonds {
        if names.contains(&bond.name.as_str()) {
            return Err(duplicate_name(&bond.name));
        }
        names.push(&bond.name);
        if !bond.hwaddr.is_empty() {
            if macs.contains(&bond.hwaddr.as_str()) {
                return Err(duplicate_mac(&bond.hwaddr));
            }
            macs.push(&bond.hwaddr);
        }
        let mut members_with_bond_mac = 0;
        for member in &bond.members {
            if *member == bond.hwaddr {
                members_with_bond_mac += 1;
                if members_with_bond_mac > 1 {
                    return Err(duplicate_mac(member));
                }
            } else {
                if macs.contains(&member.as_str()) {
                    return Err(duplicate_mac(member));
                }
                macs.push(member);
            }
        }
    }
    for n in config
        .vlans
        .iter()
        .map(|v| &v.name)
        .chain(config.wireguard.iter().map(|w| &w.name))
    {
        if names.contains(&n.as_str()) {
            return Err(duplicate_name(n));
        }
        names.push(n);
    }
    Ok(())
}

/// `enx` + 12 hex digits -> the 12 digits (interface entries only).
fn strip_usb_prefixes(config: &mut SystemNetworkConfig) {
    for iface in &mut config.interfaces {
        if let Some(rest) = iface.name.strip_prefix("enx") {
            if rest.len() == 12 && rest.bytes().all(|c| c.is_ascii_hexdigit()) {
                iface.name = rest.to_string();
            }
        }
    }
}

fn name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("has no name".into());
    }
    if name.starts_with('_') {
        return Err("name cannot begin with an underscore".into());
    }
    // Bytes, as Go's len().
    if name.len() > 13 {
        return Err(format!("name '{name}' cannot be longer than 13 characters"));
    }
    // Not upstream's: a name the kernel refuses, or one that would break the generated
    // files or firewall script, is refused here rather than half way through an apply.
    let bad = |c: char| c.is_whitespace() || c.is_control() || "/:\"'\\;#{}".contains(c);
    if name == "." || name == ".." || name.contains(bad) {
        return Err(format!("name '{name}' is not a valid interface name"));
    }
    Ok(())
}

fn mode(mode: &str) -> Result<(), String> {
    const MODES: [&str; 7] = [
        "balance-rr",
        "active-backup",
        "balance-xor",
        "broadcast",
        "802.3ad",
        "balance-tlb",
        "balance-alb",
    ];
    if MODES.contains(&mode) {
        Ok(())
    } else {
        Err(format!("invalid Mode value '{mode}'"))
    }
}

fn parent(parent: &str, config: &SystemNetworkConfig) -> Result<(), String> {
    if parent.is_empty() {
        return Err("has no parent".into());
    }
    let found = config.interfaces.iter().any(|i| i.name == parent)
        || config.bonds.iter().any(|b| b.name == parent);
    if found {
        Ok(())
    } else {
        Err(format!("unable to find parent '{parent}'"))
    }
}

fn roles(roles: &[String]) -> Result<(), String> {
    for (k, role) in roles.iter().enumerate() {
        if !ROLES.contains(&role.as_str()) {
            return Err(format!("role {} is unsupported", crate::go::quote(role)));
        }
        if roles[..k].contains(role) {
            return Err(format!(
                "role {} is listed multiple times",
                crate::go::quote(role)
            ));
        }
    }
    Ok(())
}

fn firewall(rules: &[SystemNetworkFirewallRule]) -> Result<(), String> {
    for rule in rules {
        if !["accept", "drop", "reject"].contains(&rule.action.as_str()) {
            return Err(format!(
                "unsupported action {}",
                crate::go::quote(&rule.action)
            ));
        }
        if !["", "tcp", "udp"].contains(&rule.protocol.as_str()) {
            return Err(format!(
                "unsupported protocol {}",
                crate::go::quote(&rule.protocol)
            ));
        }
        if !(0..=65535).contains(&rule.port) {
            return Err(format!("invalid port {}", rule.port));
        }
        if rule.port > 0 && rule.protocol.is_empty() {
            return Err("port specified but no protocol provided".into());
        }
        if !rule.protocol.is_empty() && rule.port == 0 {
            return Err("protocol specified but no port provided".into());
        }
        if !rule.source.is_empty() {
            parse_source(&rule.source)?;
        }
    }
    Ok(())
}

/// A firewall rule's `source`: an IP, or a network in CIDR form (Go's `net.ParseIP` /
/// `net.ParseCIDR`, with their texts). Returns the address part.
pub(crate) fn parse_source(source: &str) -> Result<IpAddr, String> {
    if let Some((ip, bits)) = source.split_once('/') {
        let invalid = || format!("invalid CIDR address: {source}");
        let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let ok = !bits.is_empty()
            && bits.len() <= 6
            && bits.bytes().all(|c| c.is_ascii_digit())
            && bits.parse::<u32>().is_ok_and(|n| n <= max);
        if !ok {
            return Err(invalid());
        }
        Ok(ip)
    } else {
        source
            .parse()
            .map_err(|_| format!("bad address {}", crate::go::quote(source)))
    }
}

fn mtu(mtu: i64) -> Result<(), String> {
    if (0..=9000).contains(&mtu) {
        Ok(())
    } else {
        Err("MTU out of range".into())
    }
}

fn is_keyword_address(a: &str) -> bool {
    matches!(a, "dhcp4" | "dhcp6" | "slaac")
}

fn addressish(a: &str) -> bool {
    !a.is_empty()
        && a.bytes()
            .all(|c| c == b'.' || c == b':' || c.is_ascii_hexdigit())
}

/// A route's `via`: an address-looking value (a loose check, as upstream's) or a keyword.
fn address(a: &str) -> Result<(), String> {
    if a.is_empty() {
        return Err("has empty address".into());
    }
    if is_keyword_address(a) || addressish(a) {
        return Ok(());
    }
    Err(format!("invalid IP address '{a}'"))
}

/// An address with a prefix length (`10.0.0.2/24`), or a keyword.
fn address_with_prefix(a: &str) -> Result<(), String> {
    if a.is_empty() {
        return Err("has empty address".into());
    }
    if is_keyword_address(a) {
        return Ok(());
    }
    let ok = a.split_once('/').is_some_and(|(ip, bits)| {
        addressish(ip) && !bits.is_empty() && bits.bytes().all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid IP address '{a}', must provide a CIDR mask"
        ))
    }
}

fn addresses(list: &[String]) -> Result<(), String> {
    for (j, a) in list.iter().enumerate() {
        address_with_prefix(a).map_err(|e| format!("address {j} {e}"))?;
    }
    Ok(())
}

fn routes(list: &[SystemNetworkRoute]) -> Result<(), String> {
    for (j, r) in list.iter().enumerate() {
        address_with_prefix(&r.to).map_err(|e| format!("route {j} 'To' {e}"))?;
        address(&r.via).map_err(|e| format!("route {j} 'Via' {e}"))?;
    }
    Ok(())
}

fn required_for_online(v: &str) -> Result<(), String> {
    if matches!(v, "" | "ipv4" | "ipv6" | "both" | "any" | "no") {
        Ok(())
    } else {
        Err(format!("invalid RequiredForOnline value '{v}'"))
    }
}

fn hwaddr(h: &str, strict: bool) -> Result<(), String> {
    if h.is_empty() {
        return Err("has no MAC address".into());
    }
    if strict && !is_mac(h) {
        return Err(format!("invalid MAC address '{h}'"));
    }
    Ok(())
}

fn ethernet(e: Option<&SystemNetworkEthernet>) -> Result<(), String> {
    if let Some(e) = e {
        if !e.wakeonlan_password.is_empty() {
            hwaddr(&e.wakeonlan_password, true)
                .map_err(|err| format!("bad wake-on-lan password: {err}"))?;
        }
    }
    Ok(())
}

/// Go's `base64.StdEncoding` decodability: padded standard alphabet, line breaks ignored,
/// the empty string included.
pub(crate) fn is_base64(s: &str) -> bool {
    let b: Vec<u8> = s.bytes().filter(|c| *c != b'\r' && *c != b'\n').collect();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return false;
    }
    b[..b.len() - pad].iter().all(alphabet)
}

/// Go's `net.SplitHostPort` check, with its error texts.
fn split_host_port(hostport: &str) -> Result<(), String> {
    let err = |why: &str| Err(format!("address {hostport}: {why}"));
    let b = hostport.as_bytes();
    let Some(last_colon) = hostport.rfind(':') else {
        return err("missing port in address");
    };
    let (mut no_open_before, mut no_close_before) = (0, 0);
    if b.first() == Some(&b'[') {
        let Some(end) = hostport.find(']') else {
            return err("missing ']' in address");
        };
        if end + 1 == b.len() {
            return err("missing port in address");
        }
        if end + 1 != last_colon {
            return if b[end + 1] == b':' {
                err("too many colons in address")
            } else {
                err("missing port in address")
            };
        }
        (no_open_before, no_close_before) = (1, end + 1);
    } else if hostport[..last_colon].contains(':') {
        return err("too many colons in address");
    }
    if hostport[no_open_before..].contains('[') {
        return err("unexpected '[' in address");
    }
    if hostport[no_close_before..].contains(']') {
        return err("unexpected ']' in address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::network::model::*;

    const MAC0: &str = "00:11:22:33:44:55";
    const MAC1: &str = "00:11:22:33:44:66";
    const MAC2: &str = "00:11:22:33:44:77";
    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    /// A configuration using every kind of device, valid in both modes.
    fn base() -> SystemNetworkConfig {
        let rule = SystemNetworkFirewallRule {
            action: "accept".into(),
            source: "10.0.0.0/8".into(),
            protocol: "tcp".into(),
            port: 22,
        };
        SystemNetworkConfig {
            interfaces: vec![SystemNetworkInterface {
                name: "eth0".into(),
                hwaddr: MAC0.into(),
                addresses: vec!["dhcp4".into(), "slaac".into(), "10.0.0.2/24".into()],
                routes: vec![SystemNetworkRoute {
                    to: "0.0.0.0/0".into(),
                    via: "10.0.0.1".into(),
                }],
                roles: vec!["management".into(), "cluster".into()],
                firewall_rules: vec![rule.clone()],
                mtu: 9000,
                required_for_online: "both".into(),
                ethernet: Some(SystemNetworkEthernet {
                    wakeonlan: true,
                    wakeonlan_modes: vec!["secureon".into()],
                    wakeonlan_password: "01:02:03:04:05:06".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            bonds: vec![SystemNetworkBond {
                name: "bond0".into(),
                mode: "802.3ad".into(),
                hwaddr: MAC1.into(),
                members: vec![MAC1.into(), MAC2.into()],
                firewall_rules: vec![rule.clone()],
                ..Default::default()
            }],
            vlans: vec![SystemNetworkVlan {
                name: "v10".into(),
                parent: "bond0".into(),
                id: 10,
                firewall_rules: vec![rule.clone()],
                ..Default::default()
            }],
            wireguard: vec![SystemNetworkWireguard {
                name: "wg0".into(),
                port: 51820,
                private_key: KEY.into(),
                peers: vec![SystemNetworkWireguardPeer {
                    public_key: KEY.into(),
                    preshared_key: KEY.into(),
                    allowed_ips: vec!["10.1.0.0/16".into(), "fd00::/64".into()],
                    endpoint: "[fd00::1]:51820".into(),
                    persistent_keepalive: 25,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn check(mut config: SystemNetworkConfig, macs: MacCheck) -> Result<(), String> {
        validate(Some(&mut config), macs)
    }

    type Edit = fn(&mut SystemNetworkConfig);

    /// Every message, with the edit of [`base`] that causes it.
    const CASES: &[(&str, Edit)] = &[
        ("interface 0 has no name", |c| c.interfaces[0].name.clear()),
        ("interface 0 name cannot begin with an underscore", |c| {
            c.interfaces[0].name = "_eth0".into()
        }),
        (
            "interface 0 name 'abcdefghijklmn' cannot be longer than 13 characters",
            |c| c.interfaces[0].name = "abcdefghijklmn".into(),
        ),
        ("interface 0 name 'a b' is not a valid interface name", |c| {
            c.interfaces[0].name = "a b".into()
        }),
        ("bond 0 name 'a\";x' is not a valid interface name", |c| {
            c.bonds[0].name = "a\";x".into()
        }),
        ("vlan 0 name 'a/b' is not a valid interface name", |c| {
            c.vlans[0].name = "a/b".into()
        }),
        ("wireguard 0 name '..' is not a valid interface name", |c| {
            c.wireguard[0].name = "..".into()
        }),
        ("interface 0 MTU out of range", |c| c.interfaces[0].mtu = 9001),
        ("interface 0 MTU out of range", |c| c.interfaces[0].mtu = -1),
        ("interface 0 role \"admin\" is unsupported", |c| {
            c.interfaces[0].roles.push("admin".into())
        }),
        ("interface 0 role \"cluster\" is listed multiple times", |c| {
            c.interfaces[0].roles.push("cluster".into())
        }),
        ("interface 0 unsupported action \"allow\"", |c| {
            c.interfaces[0].firewall_rules[0].action = "allow".into()
        }),
        ("interface 0 unsupported protocol \"icmp\"", |c| {
            c.interfaces[0].firewall_rules[0].protocol = "icmp".into()
        }),
        ("interface 0 invalid port 65536", |c| {
            c.interfaces[0].firewall_rules[0].port = 65536
        }),
        ("interface 0 port specified but no protocol provided", |c| {
            c.interfaces[0].firewall_rules[0].protocol.clear()
        }),
        ("interface 0 protocol specified but no port provided", |c| {
            c.interfaces[0].firewall_rules[0].port = 0
        }),
        ("interface 0 bad address \"10.0.0.300\"", |c| {
            c.interfaces[0].firewall_rules[0].source = "10.0.0.300".into()
        }),
        ("interface 0 invalid CIDR address: 10.0.0.0/33", |c| {
            c.interfaces[0].firewall_rules[0].source = "10.0.0.0/33".into()
        }),
        (
            "interface 0 address 2 invalid IP address 'bizbaz', must provide a CIDR mask",
            |c| c.interfaces[0].addresses[2] = "bizbaz".into(),
        ),
        (
            "interface 0 address 2 invalid IP address '10.0.0.2', must provide a CIDR mask",
            |c| c.interfaces[0].addresses[2] = "10.0.0.2".into(),
        ),
        ("interface 0 address 1 has empty address", |c| {
            c.interfaces[0].addresses[1].clear()
        }),
        ("interface 0 invalid RequiredForOnline value 'yes'", |c| {
            c.interfaces[0].required_for_online = "yes".into()
        }),
        (
            "interface 0 route 0 'To' invalid IP address 'default', must provide a CIDR mask",
            |c| c.interfaces[0].routes[0].to = "default".into(),
        ),
        ("interface 0 route 0 'Via' invalid IP address 'gw'", |c| {
            c.interfaces[0].routes[0].via = "gw".into()
        }),
        ("interface 0 route 0 'Via' has empty address", |c| {
            c.interfaces[0].routes[0].via.clear()
        }),
        ("interface 0 has no MAC address", |c| c.interfaces[0].hwaddr.clear()),
        (
            "interface 0 bad wake-on-lan password: invalid MAC address 'secret'",
            |c| c.interfaces[0].ethernet.as_mut().unwrap().wakeonlan_password = "secret".into(),
        ),
        ("bond 0 has no name", |c| c.bonds[0].name.clear()),
        ("bond 0 invalid Mode value 'lacp'", |c| c.bonds[0].mode = "lacp".into()),
        ("bond 0 invalid Mode value ''", |c| c.bonds[0].mode.clear()),
        ("bond 0 MTU out of range", |c| c.bonds[0].mtu = 10000),
        ("bond 0 role \"x\" is unsupported", |c| c.bonds[0].roles = vec!["x".into()]),
        // Upstream's label for a bond's firewall problem.
        ("interface 0 unsupported action \"\"", |c| {
            c.bonds[0].firewall_rules[0].action.clear()
        }),
        ("bond 0 address 0 has empty address", |c| {
            c.bonds[0].addresses = vec![String::new()]
        }),
        ("bond 0 invalid RequiredForOnline value 'all'", |c| {
            c.bonds[0].required_for_online = "all".into()
        }),
        ("bond 0 route 0 'To' has empty address", |c| {
            c.bonds[0].routes = vec![SystemNetworkRoute::default()]
        }),
        ("bond 0 has no members", |c| c.bonds[0].members.clear()),
        ("bond 0 member 1 has no MAC address", |c| c.bonds[0].members[1].clear()),
        ("bond 0 bad wake-on-lan password: invalid MAC address 'x'", |c| {
            c.bonds[0].ethernet = Some(SystemNetworkEthernet {
                wakeonlan_password: "x".into(),
                ..Default::default()
            })
        }),
        ("vlan 0 has no name", |c| c.vlans[0].name.clear()),
        ("vlan 0 has no parent", |c| c.vlans[0].parent.clear()),
        ("vlan 0 unable to find parent 'wg0'", |c| c.vlans[0].parent = "wg0".into()),
        ("vlan 0 ID 4095 out of range", |c| c.vlans[0].id = 4095),
        ("vlan 0 ID -1 out of range", |c| c.vlans[0].id = -1),
        ("vlan 0 MTU out of range", |c| c.vlans[0].mtu = -5),
        ("vlan 0 role \"storage\" is listed multiple times", |c| {
            c.vlans[0].roles = vec!["storage".into(), "storage".into()]
        }),
        // Upstream's label for a VLAN's firewall problem.
        ("interface 0 invalid port -1", |c| c.vlans[0].firewall_rules[0].port = -1),
        ("vlan 0 address 0 invalid IP address 'x/24', must provide a CIDR mask", |c| {
            c.vlans[0].addresses = vec!["x/24".into()]
        }),
        ("vlan 0 invalid RequiredForOnline value 'IPv4'", |c| {
            c.vlans[0].required_for_online = "IPv4".into()
        }),
        ("vlan 0 route 0 'Via' invalid IP address '10.0.0.1/32'", |c| {
            c.vlans[0].routes = vec![SystemNetworkRoute {
                to: "10.0.0.0/8".into(),
                via: "10.0.0.1/32".into(),
            }]
        }),
        ("wireguard 0 has no name", |c| c.wireguard[0].name.clear()),
        ("wireguard 0 MTU out of range", |c| c.wireguard[0].mtu = 9001),
        ("wireguard 0 role \"\" is unsupported", |c| {
            c.wireguard[0].roles = vec![String::new()]
        }),
        ("wireguard 0 bad address \"fd00::1%eth0\"", |c| {
            c.wireguard[0].firewall_rules = vec![SystemNetworkFirewallRule {
                action: "drop".into(),
                source: "fd00::1%eth0".into(),
                ..Default::default()
            }]
        }),
        ("wireguard 0 address 0 invalid IP address 'dhcp', must provide a CIDR mask", |c| {
            c.wireguard[0].addresses = vec!["dhcp".into()]
        }),
        ("wireguard 0 invalid RequiredForOnline value 'none'", |c| {
            c.wireguard[0].required_for_online = "none".into()
        }),
        ("wireguard 0 private key 'not-base64' invalid", |c| {
            c.wireguard[0].private_key = "not-base64".into()
        }),
        ("wireguard 0 port '65536' out of range", |c| c.wireguard[0].port = 65536),
        ("wireguard 0 port '-1' out of range", |c| c.wireguard[0].port = -1),
        ("wireguard 0 route 0 'To' has empty address", |c| {
            c.wireguard[0].routes = vec![SystemNetworkRoute::default()]
        }),
        ("wireguard 0 peer 0 public key invalid", |c| {
            c.wireguard[0].peers[0].public_key = "abc".into()
        }),
        ("wireguard 0 peer 0 preshared key invalid", |c| {
            c.wireguard[0].peers[0].preshared_key = "a=bc".into()
        }),
        (
            "wireguard 0 peer 0 allowed IP 1 invalid IP address 'fd00::', must provide a CIDR mask",
            |c| c.wireguard[0].peers[0].allowed_ips[1] = "fd00::".into(),
        ),
        ("wireguard 0 peer 0 persitent keepalive 65536 out of range", |c| {
            c.wireguard[0].peers[0].persistent_keepalive = 65536
        }),
        (
            "wireguard 0 peer 0 invalid endpoint 'vpn.example.org': address vpn.example.org: missing port in address",
            |c| c.wireguard[0].peers[0].endpoint = "vpn.example.org".into(),
        ),
        (
            "wireguard 0 peer 0 invalid endpoint 'fd00::1:51820': address fd00::1:51820: too many colons in address",
            |c| c.wireguard[0].peers[0].endpoint = "fd00::1:51820".into(),
        ),
        (
            "wireguard 0 peer 0 invalid endpoint '[fd00::1:51820': address [fd00::1:51820: missing ']' in address",
            |c| c.wireguard[0].peers[0].endpoint = "[fd00::1:51820".into(),
        ),
        ("duplicate interface/bond/vlan/wireguard name: eth0", |c| {
            c.bonds[0].name = "eth0".into()
        }),
        ("duplicate interface/bond/vlan/wireguard name: v10", |c| {
            c.wireguard[0].name = "v10".into()
        }),
        ("duplicate MAC address: 00:11:22:33:44:55", |c| {
            c.bonds[0].members[1] = MAC0.into()
        }),
        ("duplicate MAC address: 00:11:22:33:44:66", |c| {
            c.bonds[0].members[1] = MAC1.into()
        }),
        ("duplicate MAC address: 00:11:22:33:44:55", |c| {
            c.bonds[0].hwaddr = MAC0.into()
        }),
        // A name clash is found before a later device's MAC clash.
        ("duplicate interface/bond/vlan/wireguard name: eth0", |c| {
            c.bonds[0].name = "eth0".into();
            c.bonds[0].members[1] = MAC0.into();
        }),
    ];

    #[test]
    fn the_base_config_is_valid_in_both_modes() {
        check(base(), MacCheck::Lenient).unwrap();
        check(base(), MacCheck::Strict).unwrap();
    }

    #[test]
    fn every_message_as_upstream_writes_it() {
        for (want, edit) in CASES {
            for macs in [MacCheck::Lenient, MacCheck::Strict] {
                let mut config = base();
                edit(&mut config);
                assert_eq!(check(config, macs).unwrap_err(), *want, "{want} ({macs:?})");
            }
        }
    }

    #[test]
    fn a_missing_config_is_refused() {
        assert_eq!(
            validate(None, MacCheck::Lenient).unwrap_err(),
            "no network configuration provided"
        );
    }

    #[test]
    fn strict_mode_wants_macs_where_lenient_takes_names() {
        let cases: &[(&str, Edit)] = &[
            ("interface 0 invalid MAC address 'enp5s0'", |c| {
                c.interfaces[0].hwaddr = "enp5s0".into()
            }),
            ("bond 0 invalid MAC address 'bond-mac'", |c| {
                c.bonds[0].hwaddr = "bond-mac".into()
            }),
            ("bond 0 member 0 invalid MAC address 'eno1'", |c| {
                c.bonds[0].members[0] = "eno1".into()
            }),
            ("interface 0 invalid MAC address '00-11-22-33-44-55'", |c| {
                c.interfaces[0].hwaddr = "00-11-22-33-44-55".into()
            }),
        ];
        for (want, edit) in cases {
            let mut config = base();
            edit(&mut config);
            check(config.clone(), MacCheck::Lenient).unwrap();
            assert_eq!(check(config, MacCheck::Strict).unwrap_err(), *want);
        }
    }

    #[test]
    fn usb_nic_names_lose_their_enx_prefix() {
        let mut config = base();
        config.interfaces[0].name = "enx00e04c680001".into();
        validate(Some(&mut config), MacCheck::Strict).unwrap();
        assert_eq!(config.interfaces[0].name, "00e04c680001");

        // Only `enx` + exactly 12 hex digits; anything else is a long name.
        let mut config = base();
        config.interfaces[0].name = "enx00e04c68000g".into();
        assert_eq!(
            validate(Some(&mut config), MacCheck::Strict).unwrap_err(),
            "interface 0 name 'enx00e04c68000g' cannot be longer than 13 characters"
        );
    }

    #[test]
    fn upper_case_macs_are_accepted() {
        let mut config = base();
        config.interfaces[0].hwaddr = "AA:BB:CC:DD:EE:FF".into();
        check(config, MacCheck::Strict).unwrap();
    }

    #[test]
    fn an_empty_private_key_is_valid_it_gets_generated() {
        let mut config = base();
        config.wireguard[0].private_key.clear();
        check(config, MacCheck::Strict).unwrap();
    }

    #[test]
    fn base64_is_gos_standard_padded_encoding() {
        for ok in ["", "YQ==", "YWI=", "YWJj", "YW\nJj", KEY] {
            assert!(is_base64(ok), "{ok:?}");
        }
        for bad in ["YQ", "Y===", "YW=j", "YW-_", "a2V5 "] {
            assert!(!is_base64(bad), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_as_go_splits_them() {
        for ok in ["h:1", "1.2.3.4:51820", "[fd00::1]:51820", "h:"] {
            split_host_port(ok).unwrap();
        }
        let cases = [
            ("[fd00::1]", "missing port in address"),
            ("[fd00::1]x:1", "missing port in address"),
            ("[a]:b:1", "too many colons in address"),
            ("a[b:1", "unexpected '[' in address"),
            ("ab]:1", "unexpected ']' in address"),
            ("[a[b]:1", "unexpected '[' in address"),
        ];
        for (input, why) in cases {
            assert_eq!(
                split_host_port(input).unwrap_err(),
                format!("address {input}: {why}")
            );
        }
    }

    #[test]
    fn names_resolve_to_macs_through_the_lookup() {
        let mut config = base();
        config.interfaces[0].hwaddr = "enp5s0".into();
        config.bonds[0].hwaddr.clear();
        config.bonds[0].members = vec!["eno1".into(), MAC2.into()];
        let lookup = |name: &str| match name {
            "enp5s0" => Ok(MAC0.to_string()),
            "eno1" => Ok(MAC1.to_string()),
            other => Err(format!("no interface {other}")),
        };
        prepare(&mut config, lookup).unwrap();
        assert_eq!(config.interfaces[0].hwaddr, MAC0);
        assert_eq!(config.bonds[0].hwaddr, "", "an empty bond MAC stays empty");
        assert_eq!(config.bonds[0].members, [MAC1, MAC2]);

        let mut config = base();
        config.bonds[0].members[1] = "eth9".into();
        assert_eq!(
            prepare(&mut config, lookup).unwrap_err(),
            "bond 0 member 1 failed getting MAC for 'eth9': no interface eth9"
        );
        let mut config = base();
        config.interfaces[0].hwaddr = "eth9".into();
        assert_eq!(
            resolve_hwaddrs(&mut config, lookup).unwrap_err(),
            "interface 0 failed getting MAC for 'eth9': no interface eth9"
        );
        let mut config = base();
        config.bonds[0].hwaddr = "eth9".into();
        assert_eq!(
            resolve_hwaddrs(&mut config, lookup).unwrap_err(),
            "bond 0 failed getting MAC for 'eth9': no interface eth9"
        );
    }

    #[test]
    fn a_name_resolving_to_a_mac_already_used_is_caught_by_the_strict_pass() {
        let mut config = base();
        config.interfaces[0].hwaddr = "enp5s0".into();
        assert_eq!(
            prepare(&mut config, |_| Ok(MAC1.to_string())).unwrap_err(),
            "duplicate MAC address: 00:11:22:33:44:66"
        );
    }
}
