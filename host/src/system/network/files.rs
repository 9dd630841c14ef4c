//! The files an apply writes: systemd-networkd's `.link`/`.netdev`/`.network` files (the
//! whole of [`NETWORKD_DIR`], replaced on every apply), `timesyncd.conf` and `/etc/hosts`.
//!
//! Topology, as upstream: every interface and bond becomes a bridge named after the entry;
//! the physical NIC (renamed `_p<m>`, `<m>` being its MAC in lower case without colons) or
//! the bond (`_b<name>`, over its renamed members) is one port of that bridge; the host's
//! own addresses live on `_v<name>`, a veth whose peer `_i<m>` is the other port (`<m>` of
//! the bond's MAC, its `hwaddr` or else its first member's). VLANs hang off `_v<parent>`;
//! WireGuard devices stand alone.
//!
//! Files are numbered by kind so networkd reads them in a stable order: `00`/`01` links of
//! interfaces/bond members, `10`..`13` netdevs of interfaces, bonds, VLANs, WireGuard, and
//! `20`..`23` their networks. The keys, sections and their order are upstream's; the text
//! differs from upstream's only in blank lines (exactly one between sections here).
//!
//! Everything here is pure: the caller supplies each NIC's maximum MTU (as the kernel
//! reports it) and, for WireGuard, generated keys ([`ensure_wireguard_keys`]).

use base64::Engine as _;

use super::model::{
    bond_device, bridge_port, host_veth, physical_port, SystemNetworkConfig, SystemNetworkDns,
    SystemNetworkEthernet, SystemNetworkRoute, SystemNetworkTime, SystemNetworkVlan,
};

/// Where the networkd files go (emptied, then refilled, on every apply).
pub const NETWORKD_DIR: &str = "/run/systemd/network";
/// timesyncd's runtime configuration: written when NTP servers are configured, else removed.
pub const TIMESYNCD_CONF: &str = "/run/systemd/timesyncd.conf";
/// The hosts file, rewritten on every apply.
pub const ETC_HOSTS: &str = "/etc/hosts";

/// The MTU of a device without a configured one.
pub const DEFAULT_MTU: i64 = 1500;
/// The largest MTU ever configured, whatever the hardware allows.
pub const MTU_CAP: i64 = 9000;
/// The smallest maximum MTU a NIC may have (IPv6's minimum).
pub const MTU_MIN: i64 = 1280;

/// One generated file: its name in its directory, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub name: String,
    pub contents: String,
}

/// The MTU a NIC may be given: what the kernel reports as its maximum (`None`: the NIC was
/// not found), capped at [`MTU_CAP`]; a maximum under [`MTU_MIN`] is refused.
pub fn usable_max_mtu(mac: &str, reported: Option<i64>) -> Result<i64, String> {
    let max = reported.ok_or_else(|| format!("unable to determine maximum MTU for {mac}"))?;
    let max = max.min(MTU_CAP);
    if max < MTU_MIN {
        return Err(format!(
            "maximum MTU of {max} for {mac} is too small to support IPv6"
        ));
    }
    Ok(max)
}

/// Every file of [`NETWORKD_DIR`] for `config`, in writing order.
///
/// `config` must have passed strict validation (every `hwaddr` and member a MAC) and have
/// its WireGuard keys. `max_mtu` gives a NIC's maximum MTU as reported by the kernel, by
/// MAC (`None` when no NIC has it, which fails the generation as upstream does).
pub fn networkd_files(
    config: &SystemNetworkConfig,
    max_mtu: impl Fn(&str) -> Option<i64>,
) -> Result<Vec<GeneratedFile>, String> {
    let nic_max = |mac: &str| usable_max_mtu(mac, max_mtu(mac));
    if let Some(wg) = config.wireguard.iter().find(|w| w.private_key.is_empty()) {
        return Err(format!("wireguard {} has no private key", wg.name));
    }
    let iface_max: Vec<i64> = config
        .interfaces
        .iter()
        .map(|i| nic_max(&i.hwaddr))
        .collect::<Result<_, _>>()?;
    let member_max: Vec<Vec<i64>> = config
        .bonds
        .iter()
        .map(|b| b.members.iter().map(|m| nic_max(m)).collect())
        .collect::<Result<_, _>>()?;

    let mut out = Vec::new();
    let mut add = |name: String, unit: Unit| {
        out.push(GeneratedFile {
            name,
            contents: unit.render(),
        })
    };

    // Links: match the NIC by its permanent MAC and rename it `_p<m>`.
    for (iface, max) in config.interfaces.iter().zip(&iface_max) {
        let mut link = vec![
            kv("MACAddressPolicy", "random"),
            kv("NamePolicy", ""),
            kv("Name", physical_port(&iface.hwaddr)),
            kv("MTUBytes", max),
        ];
        let eee = ethernet_options(iface.ethernet.as_ref(), &mut link);
        let unit = Unit::new()
            .section("Match", vec![kv("PermanentMACAddress", &iface.hwaddr)])
            .section("Link", link)
            .sections(eee);
        add(format!("00-{}.link", physical_port(&iface.hwaddr)), unit);
    }
    for (bond, maxes) in config.bonds.iter().zip(&member_max) {
        for (member, max) in bond.members.iter().zip(maxes) {
            let mut link = vec![
                kv("NamePolicy", ""),
                kv("Name", physical_port(member)),
                kv("MTUBytes", max),
            ];
            let eee = ethernet_options(bond.ethernet.as_ref(), &mut link);
            let unit = Unit::new()
                .section("Match", vec![kv("PermanentMACAddress", member)])
                .section("Link", link)
                .sections(eee);
            add(format!("01-{}.link", physical_port(member)), unit);
        }
    }

    // Netdevs.
    for iface in &config.interfaces {
        add(format!("10-{}.netdev", iface.name), bridge(&iface.name));
        add(
            format!("10-{}.netdev", host_veth(&iface.name)),
            veth(&iface.name, &iface.hwaddr),
        );
    }
    for bond in &config.bonds {
        let mut mode = vec![kv("Mode", &bond.mode)];
        match bond.mode.as_str() {
            "802.3ad" => {
                mode.push(kv("TransmitHashPolicy", "layer3+4"));
                mode.push(kv("LACPTransmitRate", "fast"));
            }
            "active-backup" => mode.push(kv("MIIMonitorSec", "100ms")),
            _ => {}
        }
        let unit = Unit::new()
            .section(
                "NetDev",
                vec![kv("Name", bond_device(&bond.name)), kv("Kind", "bond")],
            )
            .section("Bond", mode);
        add(format!("11-{}.netdev", bond_device(&bond.name)), unit);
        add(format!("11-{}.netdev", bond.name), bridge(&bond.name));
        add(
            format!("11-{}.netdev", host_veth(&bond.name)),
            veth(&bond.name, bond.effective_hwaddr()),
        );
    }
    for vlan in &config.vlans {
        let unit = Unit::new()
            .section("NetDev", vec![kv("Name", &vlan.name), kv("Kind", "vlan")])
            .section("VLAN", vec![kv("Id", vlan.id)]);
        add(format!("12-{}.netdev", vlan.name), unit);
    }
    for wg in &config.wireguard {
        let mut wireguard = vec![kv("PrivateKey", &wg.private_key)];
        if wg.port != 0 {
            wireguard.push(kv("ListenPort", wg.port));
        }
        let mut unit = Unit::new()
            .section(
                "NetDev",
                vec![kv("Name", &wg.name), kv("Kind", "wireguard")],
            )
            .section("WireGuard", wireguard);
        for peer in &wg.peers {
            let mut lines = vec![kv("PublicKey", &peer.public_key)];
            lines.extend(peer.allowed_ips.iter().map(|ip| kv("AllowedIPs", ip)));
            if !peer.preshared_key.is_empty() {
                lines.push(kv("PresharedKey", &peer.preshared_key));
            }
            if !peer.endpoint.is_empty() {
                lines.push(kv("Endpoint", &peer.endpoint));
            }
            if peer.persistent_keepalive > 0 {
                lines.push(kv("PersistentKeepalive", peer.persistent_keepalive));
            }
            unit = unit.section("WireGuardPeer", lines);
        }
        add(format!("13-{}.netdev", wg.name), unit);
    }

    // Networks.
    let dns = config.dns.as_ref();
    let time = config.time.as_ref();
    for (iface, &max) in config.interfaces.iter().zip(&iface_max) {
        let l3 = L3 {
            addresses: &iface.addresses,
            routes: &iface.routes,
            required_for_online: &iface.required_for_online,
            mtu: configured_mtu(iface.mtu, max),
        };
        add(
            format!("20-{}.network", host_veth(&iface.name)),
            l3.unit(
                &host_veth(&iface.name),
                &iface.name,
                &config.vlans,
                dns,
                time,
            ),
        );
        let tags = bridge_vlans(&iface.name, &iface.vlan_tags, &config.vlans);
        let unit = port(&bridge_port(&iface.hwaddr), max)
            .section("Network", vec![kv("Bridge", &iface.name)])
            .sections(tags.clone());
        add(format!("20-{}.network", bridge_port(&iface.hwaddr)), unit);
        let lldp = iface.lldp.to_string();
        let unit = port(&physical_port(&iface.hwaddr), max)
            .section(
                "Network",
                vec![
                    kv("LLDP", &lldp),
                    kv("EmitLLDP", &lldp),
                    kv("Bridge", &iface.name),
                ],
            )
            .sections(tags);
        add(format!("20-{}.network", physical_port(&iface.hwaddr)), unit);
        add(
            format!("20-{}.network", iface.name),
            bridge_network(&iface.name, max),
        );
    }
    for (bond, maxes) in config.bonds.iter().zip(&member_max) {
        // The bond can carry what its smallest member can.
        let max = maxes.iter().copied().fold(MTU_CAP, i64::min);
        let lldp = bond.lldp.to_string();
        for (index, (member, member_max)) in bond.members.iter().zip(maxes).enumerate() {
            let unit = port(&physical_port(member), *member_max).section(
                "Network",
                vec![
                    kv("LLDP", &lldp),
                    kv("EmitLLDP", &lldp),
                    kv("Bond", bond_device(&bond.name)),
                ],
            );
            add(
                format!("21-{}-dev{index}.network", bond_device(&bond.name)),
                unit,
            );
        }
        let l3 = L3 {
            addresses: &bond.addresses,
            routes: &bond.routes,
            required_for_online: &bond.required_for_online,
            mtu: configured_mtu(bond.mtu, max),
        };
        add(
            format!("21-{}.network", host_veth(&bond.name)),
            l3.unit(&host_veth(&bond.name), &bond.name, &config.vlans, dns, time),
        );
        let tags = bridge_vlans(&bond.name, &bond.vlan_tags, &config.vlans);
        let mac = bond.effective_hwaddr();
        let unit = port(&bridge_port(mac), max)
            .section("Network", vec![kv("Bridge", &bond.name)])
            .sections(tags.clone());
        add(format!("21-{}.network", bridge_port(mac)), unit);
        let unit = port(&bond_device(&bond.name), max)
            .section(
                "Network",
                vec![
                    kv("LinkLocalAddressing", "no"),
                    kv("ConfigureWithoutCarrier", "yes"),
                    kv("Bridge", &bond.name),
                ],
            )
            .sections(tags);
        add(format!("21-{}.network", bond_device(&bond.name)), unit);
        add(
            format!("21-{}.network", bond.name),
            bridge_network(&bond.name, max),
        );
    }
    for vlan in &config.vlans {
        let l3 = L3 {
            addresses: &vlan.addresses,
            routes: &vlan.routes,
            required_for_online: &vlan.required_for_online,
            mtu: configured_mtu(vlan.mtu, MTU_CAP),
        };
        add(
            format!("22-{}.network", vlan.name),
            l3.unit(&vlan.name, &vlan.name, &[], dns, time),
        );
    }
    for wg in &config.wireguard {
        let network = addressing(&wg.addresses);
        let unit = Unit::new()
            .section("Match", vec![kv("Name", &wg.name)])
            .section(
                "Link",
                vec![kv("MTUBytes", configured_mtu(wg.mtu, MTU_CAP))],
            )
            .section("Network", network)
            .sections(route_sections(&wg.routes));
        add(format!("23-{}.network", wg.name), unit);
    }
    Ok(out)
}

/// `/run/systemd/timesyncd.conf`: the configured NTP servers as timesyncd's fallback
/// servers; `None` (remove the file) when there are none.
pub fn timesyncd_conf(config: &SystemNetworkConfig) -> Option<String> {
    let servers = &config.time.as_ref()?.ntp_servers;
    if servers.is_empty() {
        return None;
    }
    Some(format!("[Time]\nFallbackNTP={}\n", servers.join(" ")))
}

/// The host name the configuration asks for: `hostname`, with `.domain` when one is set;
/// `None` when no host name is configured (the caller falls back to the machine's own).
pub fn configured_hostname(config: &SystemNetworkConfig) -> Option<String> {
    let dns = config.dns.as_ref()?;
    if dns.hostname.is_empty() {
        return None;
    }
    Some(if dns.domain.is_empty() {
        dns.hostname.clone()
    } else {
        format!("{}.{}", dns.hostname, dns.domain)
    })
}

/// `/etc/hosts`: the loopback names, the host name on `127.0.1.1`, and the usual IPv6
/// entries.
pub fn etc_hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n\
         127.0.1.1\t{hostname}\n\
         \n\
         # IPv6\n\
         ::1     localhost ip6-localhost ip6-loopback\n\
         ff02::1 ip6-allnodes\n\
         ff02::2 ip6-allrouters\n"
    )
}

/// Gives every WireGuard device without a private key one from `generate` (which returns a
/// base64 key, or why it could not). Upstream generates at apply time, before the config is
/// stored, so the key is kept with the config.
pub fn ensure_wireguard_keys(
    config: &mut SystemNetworkConfig,
    mut generate: impl FnMut() -> Result<String, String>,
) -> Result<(), String> {
    for wg in config
        .wireguard
        .iter_mut()
        .filter(|w| w.private_key.is_empty())
    {
        wg.private_key = generate()?;
    }
    Ok(())
}

/// A WireGuard private key from 32 random bytes, as `wg genkey` makes it: the bytes clamped
/// for X25519, in base64.
pub fn private_key_from_bytes(mut bytes: [u8; 32]) -> String {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh WireGuard private key from the operating system's CSPRNG.
pub fn random_private_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| format!("unable to generate a WireGuard key: {e}"))?;
    Ok(private_key_from_bytes(bytes))
}

/// A unit file's text: sections of `Key=value` lines, one blank line between sections.
#[derive(Debug, Clone, Default)]
struct Unit(Vec<Section>);

type Section = (&'static str, Vec<String>);

impl Unit {
    fn new() -> Self {
        Unit::default()
    }

    fn section(mut self, name: &'static str, lines: Vec<String>) -> Self {
        self.0.push((name, lines));
        self
    }

    fn sections(mut self, more: Vec<Section>) -> Self {
        self.0.extend(more);
        self
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (i, (name, lines)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("[{name}]\n"));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

fn kv(key: &str, value: impl std::fmt::Display) -> String {
    format!("{key}={value}")
}

/// The offload and Wake-on-LAN lines of a `[Link]` section; returns the extra sections
/// (energy-efficient Ethernet).
fn ethernet_options(e: Option<&SystemNetworkEthernet>, link: &mut Vec<String>) -> Vec<Section> {
    let Some(e) = e else {
        return Vec::new();
    };
    if e.disable_gro {
        link.push(kv("GenericReceiveOffload", false));
        link.push(kv("GenericReceiveOffloadHardware", false));
    }
    if e.disable_gso {
        link.push(kv("GenericSegmentationOffload", false));
    }
    if e.disable_ipv4_tso {
        link.push(kv("TCPSegmentationOffload", false));
    }
    if e.disable_ipv6_tso {
        link.push(kv("TCP6SegmentationOffload", false));
    }
    if e.wakeonlan {
        if e.wakeonlan_modes.is_empty() {
            link.push(kv("WakeOnLan", "magic"));
        }
        link.extend(e.wakeonlan_modes.iter().map(|m| kv("WakeOnLan", m)));
        if e.wakeonlan_modes.iter().any(|m| m == "secureon") {
            link.push(kv("WakeOnLanPassword", &e.wakeonlan_password));
        }
    }
    if e.disable_energy_efficient {
        vec![("EnergyEfficientEthernet", vec![kv("Enable", false)])]
    } else {
        Vec::new()
    }
}

fn bridge(name: &str) -> Unit {
    Unit::new()
        .section("NetDev", vec![kv("Name", name), kv("Kind", "bridge")])
        .section("Bridge", vec![kv("VLANFiltering", true)])
}

fn veth(name: &str, mac: &str) -> Unit {
    Unit::new()
        .section(
            "NetDev",
            vec![
                kv("Name", host_veth(name)),
                kv("Kind", "veth"),
                kv("MACAddress", mac),
            ],
        )
        .section("Peer", vec![kv("Name", bridge_port(mac))])
}

/// A bridge port's `[Match]` and `[Link]`.
fn port(name: &str, mtu: i64) -> Unit {
    Unit::new()
        .section("Match", vec![kv("Name", name)])
        .section("Link", vec![kv("MTUBytes", mtu)])
}

fn bridge_network(name: &str, mtu: i64) -> Unit {
    port(name, mtu).section(
        "Network",
        vec![
            kv("LinkLocalAddressing", "no"),
            kv("ConfigureWithoutCarrier", "yes"),
        ],
    )
}

/// The configured MTU, 1500 when unset, never above what the device can carry.
fn configured_mtu(mtu: i64, max: i64) -> i64 {
    let mtu = if mtu == 0 { DEFAULT_MTU } else { mtu };
    mtu.min(max)
}

/// The `[BridgeVLAN]` sections of a bridge's ports: the device's `vlan_tags` plus the ID of
/// the first VLAN whose parent it is (only the first, as upstream), sorted, without
/// duplicates.
fn bridge_vlans(device: &str, tags: &[i64], vlans: &[SystemNetworkVlan]) -> Vec<Section> {
    let mut all = tags.to_vec();
    if let Some(vlan) = vlans.iter().find(|v| v.parent == device) {
        all.push(vlan.id);
    }
    all.sort_unstable();
    all.dedup();
    all.into_iter()
        .map(|tag| ("BridgeVLAN", vec![kv("VLAN", tag)]))
        .collect()
}

/// A device carrying addresses (`_v<name>` or a VLAN).
struct L3<'a> {
    addresses: &'a [String],
    routes: &'a [SystemNetworkRoute],
    required_for_online: &'a str,
    mtu: i64,
}

impl L3<'_> {
    /// `device` is the matched device; VLANs whose parent is `parent` attach to it.
    fn unit(
        &self,
        device: &str,
        parent: &str,
        vlans: &[SystemNetworkVlan],
        dns: Option<&SystemNetworkDns>,
        time: Option<&SystemNetworkTime>,
    ) -> Unit {
        let mut link = Vec::new();
        if self.addresses.is_empty() || self.required_for_online == "no" {
            link.push(kv("RequiredForOnline", "no"));
        } else {
            let family = match self.required_for_online {
                "" => "any",
                f => f,
            };
            link.push(kv("RequiredForOnline", "yes"));
            link.push(kv("RequiredFamilyForOnline", family));
        }
        link.push(kv("MTUBytes", self.mtu));

        let mut network: Vec<String> = vlans
            .iter()
            .filter(|v| v.parent == parent)
            .map(|v| kv("VLAN", &v.name))
            .collect();
        if let Some(dns) = dns {
            if !dns.search_domains.is_empty() {
                network.push(kv("Domains", dns.search_domains.join(" ")));
            }
            network.extend(dns.nameservers.iter().map(|ns| kv("DNS", ns)));
            if dns.dns_over_tls {
                network.push(kv("DNSOverTLS", "yes"));
            }
        }
        if let Some(time) = time {
            network.extend(time.ntp_servers.iter().map(|s| kv("NTP", s)));
        }
        network.extend(addressing(self.addresses));

        Unit::new()
            .section("Match", vec![kv("Name", device)])
            .section("Link", link)
            .section(
                "DHCP",
                vec![
                    kv("ClientIdentifier", "mac"),
                    kv("RouteMetric", 100),
                    kv("UseMTU", true),
                ],
            )
            .section("DHCPv6", vec![kv("WithoutRA", "solicit")])
            .section("Network", network)
            .sections(route_sections(self.routes))
    }
}

/// The `[Network]` lines for a device's addresses: link-local only when it has addresses,
/// static `Address=` lines, router advertisements for `slaac`/`dhcp6`, and `DHCP=`.
fn addressing(addresses: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    if addresses.is_empty() {
        lines.push(kv("LinkLocalAddressing", "no"));
        lines.push(kv("ConfigureWithoutCarrier", "yes"));
    } else {
        lines.push(kv("LinkLocalAddressing", "ipv6"));
    }
    let (mut dhcp4, mut dhcp6, mut accept_ra) = (false, false, false);
    for address in addresses {
        match address.as_str() {
            "dhcp4" => dhcp4 = true,
            "dhcp6" => {
                dhcp6 = true;
                accept_ra = true;
            }
            "slaac" => accept_ra = true,
            a => lines.push(kv("Address", a)),
        }
    }
    lines.push(kv("IPv6AcceptRA", accept_ra));
    match (dhcp4, dhcp6) {
        (true, true) => lines.push(kv("DHCP", "yes")),
        (true, false) => lines.push(kv("DHCP", "ipv4")),
        (false, true) => lines.push(kv("DHCP", "ipv6")),
        (false, false) => {}
    }
    lines
}

/// One `[Route]` per route; a `dhcp4`/`slaac` gateway is the one DHCPv4/router
/// advertisements provide.
fn route_sections(routes: &[SystemNetworkRoute]) -> Vec<Section> {
    routes
        .iter()
        .map(|r| {
            let gateway = match r.via.as_str() {
                "dhcp4" => "_dhcp4",
                "slaac" => "_ipv6ra",
                via => via,
            };
            (
                "Route",
                vec![kv("Gateway", gateway), kv("Destination", &r.to)],
            )
        })
        .collect()
}
