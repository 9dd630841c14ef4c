//! The nftables script generated from a network configuration (tier 1, text only; the
//! tier-3 test `tier3_network_nft` has nft check the same scripts).

use incus_osd::system::network::firewall::ruleset;
use incus_osd::system::network::model::SystemNetworkConfig;
use serde_json::json;

const HEADER: &str = "\
add table inet incus-osd
add chain inet incus-osd input { type filter hook input priority 0 ; policy accept ; }
add chain inet incus-osd forward { type filter hook forward priority 0 ; policy accept ; }
add table bridge incus-osd
add chain bridge incus-osd mac-filters { type filter hook postrouting priority 0 ; policy accept ; }
add chain bridge incus-osd conntrack-bypass { type filter hook prerouting priority -300 ; policy accept ; }
flush chain inet incus-osd input
flush chain inet incus-osd forward
flush chain bridge incus-osd mac-filters
flush chain bridge incus-osd conntrack-bypass
";

/// Every device kind, firewall rules of each shape, a strict MAC.
pub fn full_config() -> SystemNetworkConfig {
    serde_json::from_value(json!({
        "interfaces": [
            {"name": "eth0", "hwaddr": "10:66:6A:7C:8C:B0", "strict_hwaddr": true,
             "firewall_rules": [
                {"action": "accept", "protocol": "tcp", "port": 22, "source": "10.0.0.0/8"},
                {"action": "accept", "source": "fd00::1"},
                {"action": "reject", "protocol": "udp", "port": 53},
                {"action": "drop"}]},
            {"name": "00e04c680001", "hwaddr": "00:e0:4c:68:00:01"}
        ],
        "bonds": [{"name": "bond0", "mode": "802.3ad",
                   "members": ["00:16:3e:00:00:01", "00:16:3e:00:00:02"]}],
        "vlans": [{"name": "v10", "parent": "bond0", "id": 10,
                   "firewall_rules": [{"action": "drop", "source": "192.168.1.1"}]}],
        "wireguard": [{"name": "wg0", "private_key": "",
                       "firewall_rules": [{"action": "accept", "protocol": "udp", "port": 51820}]}]
    }))
    .unwrap()
}

#[test]
fn no_devices_only_creates_and_flushes_the_chains() {
    assert_eq!(ruleset(&SystemNetworkConfig::default()).unwrap(), HEADER);
}

#[test]
fn every_chain_for_every_device_kind() {
    let base = |dev: &str| {
        format!(
            "add rule inet incus-osd input iifname \"{dev}\" ct state established,related accept
add rule inet incus-osd input iifname \"{dev}\" ct state invalid drop
add rule inet incus-osd input iifname \"{dev}\" ip protocol icmp accept
add rule inet incus-osd input iifname \"{dev}\" icmp type {{ echo-request, destination-unreachable, time-exceeded, parameter-problem }} accept
add rule inet incus-osd input iifname \"{dev}\" icmpv6 type {{ echo-request, nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, mld-listener-query }} accept
"
        )
    };
    let l3 = r#"{ "_veth0", "_v00e04c680001", "_vbond0", "v10", "wg0" }"#;
    let expected = format!(
        "{HEADER}{}\
add rule inet incus-osd input iifname \"_veth0\" ip saddr 10.0.0.0/8 tcp dport 22 accept
add rule inet incus-osd input iifname \"_veth0\" ip6 saddr fd00::1 accept
add rule inet incus-osd input iifname \"_veth0\" udp dport 53 reject
add rule inet incus-osd input iifname \"_veth0\" drop
{}\
add rule inet incus-osd input iifname \"v10\" ip saddr 192.168.1.1 drop
{}\
add rule inet incus-osd input iifname \"wg0\" udp dport 51820 accept
add rule inet incus-osd forward iifname {l3} oifname {l3} drop
add rule bridge incus-osd mac-filters oifname \"_p10666a7c8cb0\" ether saddr != 10:66:6a:7c:8c:b0 drop
add rule bridge incus-osd conntrack-bypass iifname {{ \"_i10666a7c8cb0\", \"_p10666a7c8cb0\", \"_i00e04c680001\", \"_p00e04c680001\", \"_i00163e000001\", \"_bbond0\" }} notrack
",
        base("_veth0"),
        base("v10"),
        base("wg0"),
    );
    let got = ruleset(&full_config()).unwrap();
    assert_eq!(got, expected, "\n{got}");
}

#[test]
fn devices_without_rules_get_no_input_rules_but_are_kept_apart() {
    let config: SystemNetworkConfig = serde_json::from_value(json!({
        "interfaces": [{"name": "eth0", "hwaddr": "00:16:3e:00:00:01"}],
        "wireguard": [{"name": "wg0"}]
    }))
    .unwrap();
    let got = ruleset(&config).unwrap();
    assert!(!got.contains(" input iifname"), "{got}");
    assert!(got.contains(
        "add rule inet incus-osd forward iifname { \"_veth0\", \"wg0\" } oifname { \"_veth0\", \"wg0\" } drop\n"
    ));
    assert!(!got.contains("mac-filters oifname"), "not strict: {got}");
}

#[test]
fn a_bond_with_its_own_mac_bypasses_conntrack_on_that_port() {
    let config: SystemNetworkConfig = serde_json::from_value(json!({
        "bonds": [{"name": "b", "mode": "balance-rr", "hwaddr": "00:16:3e:00:00:09",
                   "members": ["00:16:3e:00:00:01"]}]
    }))
    .unwrap();
    assert!(ruleset(&config).unwrap().ends_with(
        "add rule bridge incus-osd conntrack-bypass iifname { \"_i00163e000009\", \"_bb\" } notrack\n"
    ));
}

#[test]
fn a_bad_source_is_an_error_not_a_broken_script() {
    let config: SystemNetworkConfig = serde_json::from_value(json!({
        "vlans": [{"name": "v", "parent": "x", "id": 1,
                   "firewall_rules": [{"action": "drop", "source": "10.0.0.0/40"}]}]
    }))
    .unwrap();
    assert_eq!(
        ruleset(&config).unwrap_err(),
        "invalid CIDR address: 10.0.0.0/40"
    );
}
