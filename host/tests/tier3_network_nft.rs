//! Tier 3: the generated firewall script as the real `nft` takes it, in a network namespace
//! of its own (`unshare -n`), so the machine's ruleset is never touched.

use std::path::Path;
use std::process::Command;

use incus_osd::system::network::firewall::ruleset;
use incus_osd::system::network::model::SystemNetworkConfig;
use incus_osd_test_machine::{find_tool, tier3_or_return, under_ci};
use serde_json::json;

fn config() -> SystemNetworkConfig {
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
        "bonds": [{"name": "bond-0", "mode": "802.3ad",
                   "members": ["00:16:3e:00:00:01", "00:16:3e:00:00:02"]}],
        "vlans": [{"name": "v10", "parent": "bond-0", "id": 10,
                   "firewall_rules": [{"action": "drop", "source": "fd00::/64"}]}],
        "wireguard": [{"name": "wg0",
                       "firewall_rules": [{"action": "accept", "protocol": "udp", "port": 51820}]}]
    }))
    .unwrap()
}

/// Runs `script` (in a shell, `$1` being the ruleset file) in a new network namespace.
fn in_new_netns(script: &str, file: &Path) -> std::process::Output {
    Command::new("unshare")
        .args(["-n", "sh", "-c", script, "sh"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn nft_accepts_the_ruleset_and_a_second_run_changes_nothing() {
    tier3_or_return!();
    if find_tool("nft").is_none() {
        let msg = "TIER 3 SKIPPED: nft missing (package nftables; tests/scripts/setup-tier3)";
        assert!(!under_ci(), "{msg}");
        use std::io::Write;
        let _ = write!(std::io::stderr(), "\n{msg}\n\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, ruleset(&config()).unwrap()).unwrap();

    let check = in_new_netns("nft -c -f \"$1\"", &file);
    assert!(
        check.status.success(),
        "nft -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Applied once, listed; applied twice, listed: the same ruleset.
    let out = in_new_netns(
        "nft -f \"$1\" && nft list ruleset && echo ---- && nft -f \"$1\" && nft list ruleset",
        &file,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (once, twice) = stdout.split_once("----\n").unwrap();
    assert_eq!(once, twice, "a second apply must give the same ruleset");
    for expected in [
        "table inet incus-osd",
        "table bridge incus-osd",
        "iifname \"_veth0\" ip saddr 10.0.0.0/8 tcp dport 22 accept",
        "iifname \"v10\" ip6 saddr fd00::/64 drop",
        "iifname \"wg0\" udp dport 51820 accept",
        "oifname \"_p10666a7c8cb0\" ether saddr != 10:66:6a:7c:8c:b0 drop",
        "notrack",
    ] {
        assert!(
            once.contains(expected),
            "{expected:?} missing from:\n{once}"
        );
    }
    // Every L3 device is in the forward set and every bridge port in the bypass set.
    for dev in ["_veth0", "_v00e04c680001", "_vbond-0", "v10", "wg0"] {
        let forward = once.split("chain forward").nth(1).unwrap();
        assert!(forward.contains(&format!("\"{dev}\"")), "{dev}: {forward}");
    }
    let bypass = once.split("chain conntrack-bypass").nth(1).unwrap();
    for port in [
        "_i10666a7c8cb0",
        "_p10666a7c8cb0",
        "_i00e04c680001",
        "_p00e04c680001",
        "_i00163e000001",
        "_bbond-0",
    ] {
        assert!(bypass.contains(&format!("\"{port}\"")), "{port}: {bypass}");
    }
}
