//! The networkd files, timesyncd.conf, /etc/hosts and WireGuard keys generated from a
//! network configuration: exact texts (tier 1, pure).

use incus_osd::system::network::files::{
    configured_hostname, ensure_wireguard_keys, etc_hosts, networkd_files, private_key_from_bytes,
    timesyncd_conf, usable_max_mtu, GeneratedFile,
};
use incus_osd::system::network::model::SystemNetworkConfig;
use serde_json::json;

const MAC: &str = "10:66:6A:7C:8C:B0";
const M1: &str = "00:16:3e:00:00:01";
const M2: &str = "00:16:3e:00:00:02";
const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn config(value: serde_json::Value) -> SystemNetworkConfig {
    serde_json::from_value(value).unwrap()
}

/// Generates with every NIC able to carry `max`.
fn generate(c: &SystemNetworkConfig, max: i64) -> Vec<GeneratedFile> {
    networkd_files(c, |_| Some(max)).unwrap()
}

fn names(files: &[GeneratedFile]) -> Vec<&str> {
    files.iter().map(|f| f.name.as_str()).collect()
}

fn file<'a>(files: &'a [GeneratedFile], name: &str) -> &'a str {
    &files
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", names(files)))
        .contents
}

#[test]
fn one_dhcp_interface_gives_the_bridge_topology() {
    let c = config(json!({"interfaces": [
        {"name": "eth0", "hwaddr": MAC, "addresses": ["dhcp4", "slaac"]}
    ]}));
    let files = generate(&c, 9216);
    assert_eq!(
        names(&files),
        [
            "00-_p10666a7c8cb0.link",
            "10-eth0.netdev",
            "10-_veth0.netdev",
            "20-_veth0.network",
            "20-_i10666a7c8cb0.network",
            "20-_p10666a7c8cb0.network",
            "20-eth0.network",
        ]
    );
    assert_eq!(
        file(&files, "00-_p10666a7c8cb0.link"),
        "[Match]\n\
         PermanentMACAddress=10:66:6A:7C:8C:B0\n\
         \n\
         [Link]\n\
         MACAddressPolicy=random\n\
         NamePolicy=\n\
         Name=_p10666a7c8cb0\n\
         MTUBytes=9000\n"
    );
    assert_eq!(
        file(&files, "10-eth0.netdev"),
        "[NetDev]\nName=eth0\nKind=bridge\n\n[Bridge]\nVLANFiltering=true\n"
    );
    assert_eq!(
        file(&files, "10-_veth0.netdev"),
        "[NetDev]\n\
         Name=_veth0\n\
         Kind=veth\n\
         MACAddress=10:66:6A:7C:8C:B0\n\
         \n\
         [Peer]\n\
         Name=_i10666a7c8cb0\n"
    );
    assert_eq!(
        file(&files, "20-_veth0.network"),
        "[Match]\n\
         Name=_veth0\n\
         \n\
         [Link]\n\
         RequiredForOnline=yes\n\
         RequiredFamilyForOnline=any\n\
         MTUBytes=1500\n\
         \n\
         [DHCP]\n\
         ClientIdentifier=mac\n\
         RouteMetric=100\n\
         UseMTU=true\n\
         \n\
         [DHCPv6]\n\
         WithoutRA=solicit\n\
         \n\
         [Network]\n\
         LinkLocalAddressing=ipv6\n\
         IPv6AcceptRA=true\n\
         DHCP=ipv4\n"
    );
    assert_eq!(
        file(&files, "20-_i10666a7c8cb0.network"),
        "[Match]\nName=_i10666a7c8cb0\n\n[Link]\nMTUBytes=9000\n\n[Network]\nBridge=eth0\n"
    );
    assert_eq!(
        file(&files, "20-_p10666a7c8cb0.network"),
        "[Match]\n\
         Name=_p10666a7c8cb0\n\
         \n\
         [Link]\n\
         MTUBytes=9000\n\
         \n\
         [Network]\n\
         LLDP=false\n\
         EmitLLDP=false\n\
         Bridge=eth0\n"
    );
    assert_eq!(
        file(&files, "20-eth0.network"),
        "[Match]\n\
         Name=eth0\n\
         \n\
         [Link]\n\
         MTUBytes=9000\n\
         \n\
         [Network]\n\
         LinkLocalAddressing=no\n\
         ConfigureWithoutCarrier=yes\n"
    );
}

#[test]
fn static_v4_and_v6_with_routes_dns_and_ntp() {
    let c = config(json!({
        "dns": {"hostname": "h", "domain": "example.org", "search_domains": ["example.org", "lab"],
                "nameservers": ["10.0.0.53", "fd00::53"], "dns_over_tls": true},
        "time": {"ntp_servers": ["ntp1.example.org", "ntp2.example.org"]},
        "interfaces": [{"name": "uplink", "hwaddr": MAC, "mtu": 1400, "required_for_online": "both",
            "addresses": ["10.0.0.2/24", "fd00::2/64", "dhcp6"],
            "routes": [{"to": "0.0.0.0/0", "via": "10.0.0.1"}, {"to": "::/0", "via": "slaac"},
                       {"to": "192.168.0.0/16", "via": "dhcp4"}]}]
    }));
    let files = generate(&c, 1500);
    assert_eq!(
        file(&files, "20-_vuplink.network"),
        "[Match]\n\
         Name=_vuplink\n\
         \n\
         [Link]\n\
         RequiredForOnline=yes\n\
         RequiredFamilyForOnline=both\n\
         MTUBytes=1400\n\
         \n\
         [DHCP]\n\
         ClientIdentifier=mac\n\
         RouteMetric=100\n\
         UseMTU=true\n\
         \n\
         [DHCPv6]\n\
         WithoutRA=solicit\n\
         \n\
         [Network]\n\
         Domains=example.org lab\n\
         DNS=10.0.0.53\n\
         DNS=fd00::53\n\
         DNSOverTLS=yes\n\
         NTP=ntp1.example.org\n\
         NTP=ntp2.example.org\n\
         LinkLocalAddressing=ipv6\n\
         Address=10.0.0.2/24\n\
         Address=fd00::2/64\n\
         IPv6AcceptRA=true\n\
         DHCP=ipv6\n\
         \n\
         [Route]\n\
         Gateway=10.0.0.1\n\
         Destination=0.0.0.0/0\n\
         \n\
         [Route]\n\
         Gateway=_ipv6ra\n\
         Destination=::/0\n\
         \n\
         [Route]\n\
         Gateway=_dhcp4\n\
         Destination=192.168.0.0/16\n"
    );
    assert_eq!(
        timesyncd_conf(&c).as_deref(),
        Some("[Time]\nFallbackNTP=ntp1.example.org ntp2.example.org\n")
    );
    assert_eq!(configured_hostname(&c).as_deref(), Some("h.example.org"));
}

#[test]
fn an_interface_without_addresses_is_not_required_and_comes_up_without_carrier() {
    let c = config(json!({"interfaces": [
        {"name": "vm", "hwaddr": MAC, "required_for_online": "ipv4"},
        {"name": "b", "hwaddr": M1, "addresses": ["10.0.0.2/24"], "required_for_online": "no"},
        {"name": "c", "hwaddr": M2, "addresses": ["dhcp4", "dhcp6"]}
    ]}));
    let files = generate(&c, 1500);
    let vm = file(&files, "20-_vvm.network");
    assert!(
        vm.contains("[Link]\nRequiredForOnline=no\nMTUBytes=1500\n"),
        "{vm}"
    );
    assert!(
        vm.ends_with(
            "[Network]\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\nIPv6AcceptRA=false\n"
        ),
        "{vm}"
    );
    let b = file(&files, "20-_vb.network");
    assert!(b.contains("[Link]\nRequiredForOnline=no\n"), "{b}");
    assert!(
        b.ends_with("LinkLocalAddressing=ipv6\nAddress=10.0.0.2/24\nIPv6AcceptRA=false\n"),
        "{b}"
    );
    assert!(file(&files, "20-_vc.network").ends_with("IPv6AcceptRA=true\nDHCP=yes\n"));
}

#[test]
fn an_8023ad_bond_and_an_active_backup_bond() {
    let c = config(json!({"bonds": [
        {"name": "mgmt", "mode": "802.3ad", "members": [M1, M2], "mtu": 9000,
         "addresses": ["dhcp4"], "vlan_tags": [100]},
        {"name": "ab", "mode": "active-backup", "hwaddr": "00:16:3e:00:00:04",
         "members": ["00:16:3e:00:00:03", "00:16:3e:00:00:04"], "lldp": true}
    ]}));
    // The second member of `mgmt` carries less than the first.
    let max = |mac: &str| Some(if mac == M2 { 4000 } else { 9216 });
    let files = networkd_files(&c, max).unwrap();
    assert_eq!(
        names(&files),
        [
            "01-_p00163e000001.link",
            "01-_p00163e000002.link",
            "01-_p00163e000003.link",
            "01-_p00163e000004.link",
            "11-_bmgmt.netdev",
            "11-mgmt.netdev",
            "11-_vmgmt.netdev",
            "11-_bab.netdev",
            "11-ab.netdev",
            "11-_vab.netdev",
            "21-_bmgmt-dev0.network",
            "21-_bmgmt-dev1.network",
            "21-_vmgmt.network",
            "21-_i00163e000001.network",
            "21-_bmgmt.network",
            "21-mgmt.network",
            "21-_bab-dev0.network",
            "21-_bab-dev1.network",
            "21-_vab.network",
            "21-_i00163e000004.network",
            "21-_bab.network",
            "21-ab.network",
        ]
    );
    // A member's link: renamed, no random MAC (the bond sets the MACs).
    assert_eq!(
        file(&files, "01-_p00163e000002.link"),
        "[Match]\n\
         PermanentMACAddress=00:16:3e:00:00:02\n\
         \n\
         [Link]\n\
         NamePolicy=\n\
         Name=_p00163e000002\n\
         MTUBytes=4000\n"
    );
    assert_eq!(
        file(&files, "11-_bmgmt.netdev"),
        "[NetDev]\n\
         Name=_bmgmt\n\
         Kind=bond\n\
         \n\
         [Bond]\n\
         Mode=802.3ad\n\
         TransmitHashPolicy=layer3+4\n\
         LACPTransmitRate=fast\n"
    );
    assert_eq!(
        file(&files, "11-_bab.netdev"),
        "[NetDev]\nName=_bab\nKind=bond\n\n[Bond]\nMode=active-backup\nMIIMonitorSec=100ms\n"
    );
    // The veth takes the first member's MAC when the bond has none.
    assert_eq!(
        file(&files, "11-_vmgmt.netdev"),
        "[NetDev]\n\
         Name=_vmgmt\n\
         Kind=veth\n\
         MACAddress=00:16:3e:00:00:01\n\
         \n\
         [Peer]\n\
         Name=_i00163e000001\n"
    );
    assert_eq!(
        file(&files, "21-_bmgmt-dev0.network"),
        "[Match]\n\
         Name=_p00163e000001\n\
         \n\
         [Link]\n\
         MTUBytes=9000\n\
         \n\
         [Network]\n\
         LLDP=false\n\
         EmitLLDP=false\n\
         Bond=_bmgmt\n"
    );
    assert!(file(&files, "21-_bab-dev1.network").ends_with("LLDP=true\nEmitLLDP=true\nBond=_bab\n"));
    // The bond carries what its smallest member can: the configured 9000 becomes 4000.
    assert!(file(&files, "21-_vmgmt.network").contains("\nMTUBytes=4000\n"));
    assert_eq!(
        file(&files, "21-_bmgmt.network"),
        "[Match]\n\
         Name=_bmgmt\n\
         \n\
         [Link]\n\
         MTUBytes=4000\n\
         \n\
         [Network]\n\
         LinkLocalAddressing=no\n\
         ConfigureWithoutCarrier=yes\n\
         Bridge=mgmt\n\
         \n\
         [BridgeVLAN]\n\
         VLAN=100\n"
    );
    assert_eq!(
        file(&files, "21-_i00163e000001.network"),
        "[Match]\n\
         Name=_i00163e000001\n\
         \n\
         [Link]\n\
         MTUBytes=4000\n\
         \n\
         [Network]\n\
         Bridge=mgmt\n\
         \n\
         [BridgeVLAN]\n\
         VLAN=100\n"
    );
    assert_eq!(
        file(&files, "21-mgmt.network"),
        "[Match]\nName=mgmt\n\n[Link]\nMTUBytes=4000\n\n[Network]\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n"
    );
}

#[test]
fn a_vlan_on_an_interface() {
    let c = config(json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC}],
        "vlans": [{"name": "v10", "parent": "eth0", "id": 10, "addresses": ["dhcp4"],
                   "required_for_online": "ipv4", "routes": [{"to": "0.0.0.0/0", "via": "dhcp4"}]}],
        "dns": {"hostname": "", "domain": "", "nameservers": ["1.1.1.1"]}
    }));
    let files = generate(&c, 1500);
    assert_eq!(
        names(&files)[2..],
        [
            "10-_veth0.netdev",
            "12-v10.netdev",
            "20-_veth0.network",
            "20-_i10666a7c8cb0.network",
            "20-_p10666a7c8cb0.network",
            "20-eth0.network",
            "22-v10.network",
        ]
    );
    assert_eq!(
        file(&files, "12-v10.netdev"),
        "[NetDev]\nName=v10\nKind=vlan\n\n[VLAN]\nId=10\n"
    );
    // The VLAN hangs off the host side of the veth.
    assert!(file(&files, "20-_veth0.network")
        .contains("[Network]\nVLAN=v10\nDNS=1.1.1.1\nLinkLocalAddressing=no\n"));
    // Both bridge ports let the tag through.
    for port in ["20-_i10666a7c8cb0.network", "20-_p10666a7c8cb0.network"] {
        assert!(
            file(&files, port).ends_with("Bridge=eth0\n\n[BridgeVLAN]\nVLAN=10\n"),
            "{port}"
        );
    }
    assert_eq!(
        file(&files, "22-v10.network"),
        "[Match]\n\
         Name=v10\n\
         \n\
         [Link]\n\
         RequiredForOnline=yes\n\
         RequiredFamilyForOnline=ipv4\n\
         MTUBytes=1500\n\
         \n\
         [DHCP]\n\
         ClientIdentifier=mac\n\
         RouteMetric=100\n\
         UseMTU=true\n\
         \n\
         [DHCPv6]\n\
         WithoutRA=solicit\n\
         \n\
         [Network]\n\
         DNS=1.1.1.1\n\
         LinkLocalAddressing=ipv6\n\
         IPv6AcceptRA=false\n\
         DHCP=ipv4\n\
         \n\
         [Route]\n\
         Gateway=_dhcp4\n\
         Destination=0.0.0.0/0\n"
    );
}

#[test]
fn bridge_vlans_are_the_tags_plus_only_the_first_child_vlan() {
    let c = config(json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC, "vlan_tags": [200, 10, 100]}],
        "vlans": [{"name": "v10", "parent": "eth0", "id": 10},
                  {"name": "v30", "parent": "eth0", "id": 30}]
    }));
    let files = generate(&c, 1500);
    // Upstream's quirk: v30's tag is not let through the bridge (10 is, and only once).
    let tags = "\n[BridgeVLAN]\nVLAN=10\n\n[BridgeVLAN]\nVLAN=100\n\n[BridgeVLAN]\nVLAN=200\n";
    for port in ["20-_i10666a7c8cb0.network", "20-_p10666a7c8cb0.network"] {
        assert!(
            file(&files, port).ends_with(&format!("Bridge=eth0\n{tags}")),
            "{port}: {}",
            file(&files, port)
        );
    }
    // Both VLANs still attach to the host side.
    assert!(file(&files, "20-_veth0.network").contains("[Network]\nVLAN=v10\nVLAN=v30\n"));
}

#[test]
fn wireguard_with_peers() {
    let c = config(json!({"wireguard": [{
        "name": "wg0", "port": 51820, "private_key": KEY, "mtu": 1420,
        "addresses": ["10.9.0.7/24", "fd25::7/64"],
        "routes": [{"to": "10.10.0.0/16", "via": "10.9.0.1"}],
        "peers": [
            {"public_key": PEER, "allowed_ips": ["10.9.0.1/32", "10.10.0.0/16"],
             "endpoint": "vpn.example.org:51820", "persistent_keepalive": 25, "preshared_key": KEY},
            {"public_key": KEY, "allowed_ips": []}
        ]
    }]}));
    let files = generate(&c, 1500);
    assert_eq!(names(&files), ["13-wg0.netdev", "23-wg0.network"]);
    assert_eq!(
        file(&files, "13-wg0.netdev"),
        format!(
            "[NetDev]\n\
             Name=wg0\n\
             Kind=wireguard\n\
             \n\
             [WireGuard]\n\
             PrivateKey={KEY}\n\
             ListenPort=51820\n\
             \n\
             [WireGuardPeer]\n\
             PublicKey={PEER}\n\
             AllowedIPs=10.9.0.1/32\n\
             AllowedIPs=10.10.0.0/16\n\
             PresharedKey={KEY}\n\
             Endpoint=vpn.example.org:51820\n\
             PersistentKeepalive=25\n\
             \n\
             [WireGuardPeer]\n\
             PublicKey={KEY}\n"
        )
    );
    assert_eq!(
        file(&files, "23-wg0.network"),
        "[Match]\n\
         Name=wg0\n\
         \n\
         [Link]\n\
         MTUBytes=1420\n\
         \n\
         [Network]\n\
         LinkLocalAddressing=ipv6\n\
         Address=10.9.0.7/24\n\
         Address=fd25::7/64\n\
         IPv6AcceptRA=false\n\
         \n\
         [Route]\n\
         Gateway=10.9.0.1\n\
         Destination=10.10.0.0/16\n"
    );
}

#[test]
fn wireguard_without_a_port_listens_anywhere_and_without_a_key_is_refused() {
    let mut c = config(json!({"wireguard": [{"name": "wg0", "private_key": KEY}]}));
    let files = generate(&c, 1500);
    assert_eq!(
        file(&files, "13-wg0.netdev"),
        format!("[NetDev]\nName=wg0\nKind=wireguard\n\n[WireGuard]\nPrivateKey={KEY}\n")
    );
    c.wireguard[0].private_key.clear();
    assert_eq!(
        networkd_files(&c, |_| Some(1500)).unwrap_err(),
        "wireguard wg0 has no private key"
    );
}

#[test]
fn wireguard_keys_come_from_the_generator_only_where_missing() {
    let mut c = config(json!({"wireguard": [
        {"name": "a"}, {"name": "b", "private_key": KEY}, {"name": "c"}
    ]}));
    let mut n = 0u8;
    ensure_wireguard_keys(&mut c, || {
        n += 1;
        Ok(private_key_from_bytes([n; 32]))
    })
    .unwrap();
    // Clamped as `wg genkey` does: low 3 bits of the first byte cleared, top bit of the
    // last cleared and the next one set.
    assert_eq!(
        c.wireguard[0].private_key,
        "AAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAUE="
    );
    assert_eq!(c.wireguard[1].private_key, KEY);
    assert_eq!(
        c.wireguard[2].private_key,
        "AAICAgICAgICAgICAgICAgICAgICAgICAgICAgICAkI="
    );
    assert_eq!(
        private_key_from_bytes([0xff; 32]),
        "+P///////////////////////////////////////38="
    );

    let mut c = config(json!({"wireguard": [{"name": "a"}]}));
    assert_eq!(
        ensure_wireguard_keys(&mut c, || Err("no entropy".into())).unwrap_err(),
        "no entropy"
    );
    assert_eq!(c.wireguard[0].private_key, "");
}

#[test]
fn real_keys_are_random_and_clamped() {
    use base64::Engine as _;
    let a = incus_osd::system::network::files::random_private_key().unwrap();
    let b = incus_osd::system::network::files::random_private_key().unwrap();
    assert_ne!(a, b);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&a)
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(bytes[0] & 7, 0);
    assert_eq!(bytes[31] & 0xc0, 0x40);
}

#[test]
fn the_nic_maximum_mtu_is_capped_at_9000_and_must_allow_ipv6() {
    assert_eq!(usable_max_mtu(MAC, Some(65535)), Ok(9000));
    assert_eq!(usable_max_mtu(MAC, Some(1500)), Ok(1500));
    assert_eq!(usable_max_mtu(MAC, Some(1280)), Ok(1280));
    assert_eq!(
        usable_max_mtu(MAC, Some(1279)).unwrap_err(),
        "maximum MTU of 1279 for 10:66:6A:7C:8C:B0 is too small to support IPv6"
    );
    assert_eq!(
        usable_max_mtu(MAC, None).unwrap_err(),
        "unable to determine maximum MTU for 10:66:6A:7C:8C:B0"
    );

    let c = config(json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC, "mtu": 9000}],
        "bonds": [{"name": "b", "mode": "balance-rr", "members": [M1]}]
    }));
    // A configured MTU above what the NIC carries is clipped, everywhere.
    let files = networkd_files(&c, |_| Some(1500)).unwrap();
    assert!(file(&files, "20-_veth0.network").contains("\nMTUBytes=1500\n"));
    assert!(file(&files, "00-_p10666a7c8cb0.link").contains("\nMTUBytes=1500\n"));
    // So is the default 1500 on a NIC that carries less.
    let files = networkd_files(&c, |_| Some(1400)).unwrap();
    assert!(file(&files, "20-_veth0.network").contains("\nMTUBytes=1400\n"));
    assert!(file(&files, "21-_vb.network").contains("\nMTUBytes=1400\n"));
    // A NIC that cannot carry IPv6, or that is not there, fails the whole generation.
    assert_eq!(
        networkd_files(&c, |mac| Some(if mac == M1 { 1000 } else { 1500 })).unwrap_err(),
        "maximum MTU of 1000 for 00:16:3e:00:00:01 is too small to support IPv6"
    );
    assert_eq!(
        networkd_files(&c, |_| None).unwrap_err(),
        "unable to determine maximum MTU for 10:66:6A:7C:8C:B0"
    );
}

#[test]
fn ethernet_offload_and_wake_on_lan_options() {
    let c = config(json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC, "ethernet": {
            "disable_gro": true, "disable_gso": true, "disable_ipv4_tso": true,
            "disable_ipv6_tso": true, "disable_energy_efficient": true,
            "wakeonlan": true, "wakeonlan_modes": ["magic", "secureon"],
            "wakeonlan_password": "01:02:03:04:05:06"}}],
        "bonds": [{"name": "b", "mode": "balance-rr", "members": [M1],
                   "ethernet": {"wakeonlan": true}}]
    }));
    let files = generate(&c, 1500);
    assert_eq!(
        file(&files, "00-_p10666a7c8cb0.link"),
        "[Match]\n\
         PermanentMACAddress=10:66:6A:7C:8C:B0\n\
         \n\
         [Link]\n\
         MACAddressPolicy=random\n\
         NamePolicy=\n\
         Name=_p10666a7c8cb0\n\
         MTUBytes=1500\n\
         GenericReceiveOffload=false\n\
         GenericReceiveOffloadHardware=false\n\
         GenericSegmentationOffload=false\n\
         TCPSegmentationOffload=false\n\
         TCP6SegmentationOffload=false\n\
         WakeOnLan=magic\n\
         WakeOnLan=secureon\n\
         WakeOnLanPassword=01:02:03:04:05:06\n\
         \n\
         [EnergyEfficientEthernet]\n\
         Enable=false\n"
    );
    // Wake-on-LAN without modes means magic packets; a bond's options go on every member.
    assert!(file(&files, "01-_p00163e000001.link").ends_with("MTUBytes=1500\nWakeOnLan=magic\n"));
}

#[test]
fn lldp_is_received_and_sent_on_the_physical_port_only() {
    let c = config(json!({"interfaces": [{"name": "eth0", "hwaddr": MAC, "lldp": true}]}));
    let files = generate(&c, 1500);
    assert!(
        file(&files, "20-_p10666a7c8cb0.network").contains("[Network]\nLLDP=true\nEmitLLDP=true\n")
    );
    let others: Vec<&GeneratedFile> = files
        .iter()
        .filter(|f| f.name != "20-_p10666a7c8cb0.network")
        .collect();
    assert!(
        others.iter().all(|f| !f.contents.contains("LLDP")),
        "{others:?}"
    );
}

#[test]
fn timesyncd_conf_only_with_ntp_servers() {
    assert_eq!(timesyncd_conf(&config(json!({}))), None);
    assert_eq!(
        timesyncd_conf(&config(json!({"time": {"timezone": "UTC"}}))),
        None
    );
    assert_eq!(
        timesyncd_conf(&config(json!({"time": {"ntp_servers": ["a"]}}))).as_deref(),
        Some("[Time]\nFallbackNTP=a\n")
    );
}

#[test]
fn hosts_file_and_host_name() {
    assert_eq!(
        etc_hosts("node1.example.org"),
        "127.0.0.1\tlocalhost\n\
         127.0.1.1\tnode1.example.org\n\
         \n\
         # IPv6\n\
         ::1     localhost ip6-localhost ip6-loopback\n\
         ff02::1 ip6-allnodes\n\
         ff02::2 ip6-allrouters\n"
    );
    let c = |dns| config(json!({ "dns": dns }));
    assert_eq!(
        configured_hostname(&c(json!({"hostname": "n1", "domain": ""}))).as_deref(),
        Some("n1")
    );
    assert_eq!(
        configured_hostname(&c(json!({"hostname": "", "domain": "x"}))),
        None
    );
    assert_eq!(configured_hostname(&config(json!({}))), None);
}
