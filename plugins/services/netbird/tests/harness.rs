//! The netbird plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    argv, assert_conformance, built_plugin, control_character_cases, Failure, Harness, LogLevel,
    Reply, UnitCall, UnitOp,
};
use serde_json::{json, Value};

const UNIT: &str = "netbird.service";
const KEY: &str = "A616097E-FCF0-48FA-9354-CA4A61142761";
const KEY2: &str = "3F0C5B1D-7E42-4A9B-8C6D-2B1E9F4A7D05";

const LIB: &str = "incus_osd_plugin_netbird";

/// A plugin whose host answers every netbird command successfully.
fn scripted() -> Harness {
    let h = Harness::load_built(LIB);
    h.host().on_command(&["netbird"], Reply::ok(""));
    h
}

fn default_config() -> Value {
    json!({
        "enabled": false,
        "setup_key": "",
        "management_url": "",
        "admin_url": "",
        "anonymize": false,
        "block_inbound": false,
        "block_lan_access": false,
        "disable_client_routes": false,
        "disable_server_routes": false,
        "disable_dns": false,
        "disable_firewall": false,
        "dns_resolver_address": "",
        "external_ip_map": null,
        "extra_dns_labels": null
    })
}

/// The default config with `fields` replaced.
fn config(fields: Value) -> Value {
    let mut c = default_config();
    for (k, v) in fields.as_object().expect("an object") {
        assert!(c.get(k).is_some(), "unknown field {k}");
        c[k] = v.clone();
    }
    c
}

fn enabled() -> Value {
    config(json!({"enabled": true, "setup_key": KEY}))
}

/// Every field set.
fn full() -> Value {
    json!({
        "enabled": true,
        "setup_key": KEY,
        "management_url": "https://netbird.example.com:33073",
        "admin_url": "https://netbird.example.com",
        "anonymize": true,
        "block_inbound": true,
        "block_lan_access": true,
        "disable_client_routes": true,
        "disable_server_routes": true,
        "disable_dns": true,
        "disable_firewall": true,
        "dns_resolver_address": "127.0.0.153:53",
        "external_ip_map": ["203.0.113.7/10.0.0.7", "203.0.113.8/eth1", "198.51.100.1"],
        "extra_dns_labels": ["vpc1", "mgmt1"]
    })
}

fn down() -> Vec<String> {
    argv(&["netbird", "down"])
}

/// `netbird up` for the minimal config (setup key only).
fn up_minimal(key: &str) -> Vec<String> {
    argv(&[
        "netbird",
        "up",
        "--no-browser",
        "--setup-key",
        key,
        "--management-url",
        "",
        "--admin-url",
        "",
        "--dns-resolver-address",
        "",
        "--external-ip-map",
        "",
        "--extra-dns-labels",
        "",
    ])
}

fn unit(op: UnitOp) -> UnitCall {
    UnitCall::new(op, UNIT)
}

fn assert_no_secret(h: &Harness, extra: &str) {
    h.host().assert_not_logged(&[KEY, KEY2]);
    for key in [KEY, KEY2] {
        assert!(!extra.contains(key), "secret in {extra:?}");
    }
}

#[test]
fn generic_checks_pass() {
    assert_conformance(built_plugin(LIB));
}

/// Upstream's struct puts `config` before `state`, so the keys come in that order.
#[test]
fn fresh_get_is_exactly_the_default() {
    let h = Harness::load_built(LIB);
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"config":{"enabled":false,"setup_key":"","management_url":"","admin_url":"","anonymize":false,"block_inbound":false,"block_lan_access":false,"disable_client_routes":false,"disable_server_routes":false,"disable_dns":false,"disable_firewall":false,"dns_resolver_address":"","external_ip_map":null,"extra_dns_labels":null},"state":{}}"#
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn every_config_field_round_trips_while_disabled() {
    let h = scripted();
    let mut cfg = full();
    cfg["enabled"] = json!(false);
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap(), json!({"state": {}, "config": cfg}));
    assert_eq!(h.host().state(), json!({ "config": cfg }));
    assert!(h.host().commands().is_empty());
    assert!(h.host().units().is_empty());

    // Empty lists stay empty lists, null stays null.
    let empty = config(json!({"external_ip_map": [], "extra_dns_labels": []}));
    h.put_config(&empty).unwrap();
    assert_eq!(h.get().unwrap()["config"], empty);
    h.put_config(&default_config()).unwrap();
    assert_eq!(h.get().unwrap()["config"], default_config());
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"enabled": true}),
            "setup_key: a setup key is required to enable netbird",
        ),
        (
            json!({"enabled": true, "setup_key": "  "}),
            "setup_key: a setup key is required to enable netbird",
        ),
        (
            json!({"setup_key": "A616097E FCF0"}),
            "setup_key: the setup key contains whitespace",
        ),
        (
            json!({"enabled": true, "setup_key": "A616097E\u{a0}FCF0"}),
            "setup_key: the setup key contains whitespace",
        ),
        (
            json!({"management_url": "netbird.example.com"}),
            "management_url: invalid URL 'netbird.example.com' (expected http(s)://host[:port][/path])",
        ),
        (
            json!({"management_url": "https://netbird.example.com:0"}),
            "management_url: invalid URL 'https://netbird.example.com:0' (expected http(s)://host[:port][/path])",
        ),
        (
            json!({"admin_url": "grpc://netbird.example.com"}),
            "admin_url: invalid URL 'grpc://netbird.example.com' (expected http(s)://host[:port][/path])",
        ),
        (
            json!({"admin_url": "https://[fd00::1/"}),
            "admin_url: invalid URL 'https://[fd00::1/' (expected http(s)://host[:port][/path])",
        ),
        (
            json!({"dns_resolver_address": "127.0.0.153"}),
            "dns_resolver_address: invalid address '127.0.0.153' (expected ip:port, like 127.0.0.153:53)",
        ),
        (
            json!({"dns_resolver_address": "resolver.lan:53"}),
            "dns_resolver_address: invalid address 'resolver.lan:53' (expected ip:port, like 127.0.0.153:53)",
        ),
        (
            json!({"external_ip_map": ["203.0.113.7", ""]}),
            "external_ip_map[1]: invalid entry '' (expected an external IP, IP/local-IP or IP/interface)",
        ),
        (
            json!({"external_ip_map": ["eth0"]}),
            "external_ip_map[0]: invalid entry 'eth0' (expected an external IP, IP/local-IP or IP/interface)",
        ),
        (
            json!({"external_ip_map": ["203.0.113.7/10.0.0.7/eth0"]}),
            "external_ip_map[0]: invalid entry '203.0.113.7/10.0.0.7/eth0' (expected an external IP, IP/local-IP or IP/interface)",
        ),
        (
            json!({"external_ip_map": ["203.0.113.7,198.51.100.1"]}),
            "external_ip_map[0]: invalid entry '203.0.113.7,198.51.100.1' (expected an external IP, IP/local-IP or IP/interface)",
        ),
        (
            json!({"external_ip_map": ["203.0.113.7/averyveryverylonginterface"]}),
            "external_ip_map[0]: invalid entry '203.0.113.7/averyveryverylonginterface' (expected an external IP, IP/local-IP or IP/interface)",
        ),
        (
            json!({"external_ip_map": ["203.0.113.7/eth1", "198.51.100.1", "203.0.113.7/eth1"]}),
            "external_ip_map[2]: duplicate of external_ip_map[0]",
        ),
        (
            json!({"extra_dns_labels": ["vpc1", "bad label"]}),
            "extra_dns_labels[1]: invalid DNS label 'bad label'",
        ),
        (
            json!({"extra_dns_labels": ["-vpc"]}),
            "extra_dns_labels[0]: invalid DNS label '-vpc'",
        ),
        (
            json!({"extra_dns_labels": ["vpc1,mgmt1"]}),
            "extra_dns_labels[0]: invalid DNS label 'vpc1,mgmt1'",
        ),
        (
            json!({"extra_dns_labels": [""]}),
            "extra_dns_labels[0]: invalid DNS label ''",
        ),
        (
            json!({"extra_dns_labels": ["vpc1", "VPC2", "vpc1"]}),
            "extra_dns_labels[2]: duplicate of extra_dns_labels[0]",
        ),
        (
            json!({"extra_dns_labels": (0..33).map(|i| format!("l{i}")).collect::<Vec<_>>()}),
            "extra_dns_labels: 33 labels given, at most 32 are allowed",
        ),
    ];
    for (fields, message) in &cases {
        let h = scripted();
        h.host().set_saved_config(&enabled());
        let err = h.assert_config_refused(&config(fields.clone()), message);
        assert_no_secret(&h, &err.message);
    }
}

/// Each string field of a full config with a control character added is a 400 naming the
/// field that changes nothing (and never quotes the setup key).
#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = full();
    let fields = [
        ("/admin_url", "admin_url"),
        ("/dns_resolver_address", "dns_resolver_address"),
        ("/external_ip_map/0", "external_ip_map[0]"),
        ("/external_ip_map/1", "external_ip_map[1]"),
        ("/external_ip_map/2", "external_ip_map[2]"),
        ("/extra_dns_labels/0", "extra_dns_labels[0]"),
        ("/extra_dns_labels/1", "extra_dns_labels[1]"),
        ("/management_url", "management_url"),
        ("/setup_key", "setup_key"),
    ];
    for case in control_character_cases(&full, &fields, &[]) {
        let h = scripted();
        h.host().set_saved_config(&enabled());
        let err = h.assert_config_refused(&case.config, &case.message);
        assert_no_secret(&h, &err.message);
    }
}

#[test]
fn valid_values_are_accepted() {
    let h = scripted();
    for fields in [
        json!({"management_url": "http://10.0.0.1"}),
        json!({"management_url": "https://[fd00::1]:33073/"}),
        json!({"admin_url": "https://app.netbird.io/peers"}),
        json!({"dns_resolver_address": "[fd00::53]:5053"}),
        json!({"external_ip_map": ["2001:db8::7", "203.0.113.7/enp5s0.100", "203.0.113.8/10.0.0.8"]}),
        json!({"extra_dns_labels": ["vpc1", "site-a.internal"]}),
    ] {
        let cfg = config(fields.clone());
        h.put_config(&cfg)
            .unwrap_or_else(|e| panic!("{fields}: {e:?}"));
        assert_eq!(h.get().unwrap()["config"], cfg);
    }
    assert!(h.host().commands().is_empty());
}

#[test]
fn enabling_starts_the_unit_and_connects_with_every_flag() {
    let h = scripted();
    let host = h.host();
    h.put_config(&full()).unwrap();
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.unit_state(UNIT), "active");
    assert_eq!(
        host.commands(),
        [
            down(),
            argv(&[
                "netbird",
                "up",
                "--no-browser",
                "--setup-key",
                KEY,
                "--management-url",
                "https://netbird.example.com:33073",
                "--admin-url",
                "https://netbird.example.com",
                "--dns-resolver-address",
                "127.0.0.153:53",
                "--external-ip-map",
                "203.0.113.7/10.0.0.7,203.0.113.8/eth1,198.51.100.1",
                "--extra-dns-labels",
                "vpc1,mgmt1",
                "--anonymize",
                "--block-inbound",
                "--block-lan-access",
                "--disable-client-routes",
                "--disable-server-routes",
                "--disable-dns",
                "--disable-firewall",
            ])
        ]
    );
    let timeouts: Vec<u64> = host.command_calls().iter().map(|c| c.timeout_ms).collect();
    assert_eq!(timeouts, [30_000, 60_000]);
    assert!(host.file_effects().is_empty());
    assert_eq!(host.state(), json!({ "config": full() }));
    assert_eq!(host.save_count(), 1);
    assert_no_secret(&h, "");
}

#[test]
fn a_minimal_config_passes_empty_values_as_upstream() {
    let h = scripted();
    h.put_config(&enabled()).unwrap();
    assert_eq!(h.host().commands(), [down(), up_minimal(KEY)]);
    let mut some_flags = enabled();
    some_flags["block_inbound"] = json!(true);
    some_flags["disable_dns"] = json!(true);
    h.host().clear_effects();
    h.put_config(&some_flags).unwrap();
    let mut up = up_minimal(KEY);
    up.extend(argv(&["--block-inbound", "--disable-dns"]));
    assert_eq!(h.host().commands(), [down(), up]);
}

#[test]
fn an_update_reconnects_with_the_new_config() {
    let h = scripted();
    let host = h.host();
    h.host().set_saved_config(&enabled());
    host.set_unit_state(UNIT, "active");
    let mut cfg = enabled();
    cfg["setup_key"] = json!(KEY2);
    h.put_config(&cfg).unwrap();
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.commands(), [down(), up_minimal(KEY2)]);
    assert_eq!(host.state(), json!({ "config": cfg }));
}

#[test]
fn disabling_stops_the_unit_only() {
    let h = scripted();
    let host = h.host();
    h.put_config(&full()).unwrap();
    host.clear_effects();
    let mut cfg = full();
    cfg["enabled"] = json!(false);
    h.put_config(&cfg).unwrap();
    assert_eq!(host.units(), [unit(UnitOp::Stop)]);
    assert_eq!(host.unit_state(UNIT), "inactive");
    assert!(host.commands().is_empty());
    assert_eq!(host.state(), json!({ "config": cfg }));

    host.clear_effects();
    h.put_config(&default_config()).unwrap();
    assert!(host.units().is_empty());
    assert!(host.commands().is_empty());
}

#[test]
fn a_failing_connect_undoes_the_enable_and_hides_the_key() {
    let h = scripted();
    let host = h.host();
    host.on_command(
        &["netbird", "up"],
        Reply::fail(1, format!("Error: login failed: invalid setup-key {KEY}\n")),
    );
    let err = h.put_config(&enabled()).unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.message.as_str(),
        "Failed to run: netbird up --no-browser --setup-key *** --management-url  --admin-url  --dns-resolver-address  --external-ip-map  --extra-dns-labels : exit status 1 (Error: login failed: invalid setup-key ***)"
    );
    assert_eq!(host.commands(), [down(), up_minimal(KEY)]);
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Start),
            unit(UnitOp::Stop)
        ]
    );
    assert_eq!(host.unit_state(UNIT), "inactive");
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
    assert_no_secret(&h, &err.message);
}

/// A `netbird up` that cannot be started or times out: the host's error text names the
/// command line with the setup key masked, and the enable is undone.
#[test]
fn a_connect_that_cannot_start_or_times_out_hides_the_key() {
    for (failure, ending) in [
        (Failure::Spawn, "No such file or directory (os error 2)"),
        (Failure::Timeout, "timed out after 60.0s"),
    ] {
        let h = scripted();
        let host = h.host();
        host.on_command_failure(&["netbird", "up"], failure);
        let err = h.put_config(&enabled()).unwrap_err();
        assert_eq!(err.status, 500);
        assert_eq!(
            err.message.as_str(),
            format!("Failed to run: netbird up --no-browser --setup-key *** --management-url  --admin-url  --dns-resolver-address  --external-ip-map  --extra-dns-labels : {ending}")
        );
        assert_eq!(host.commands(), [down(), up_minimal(KEY)]);
        assert_eq!(host.unit_state(UNIT), "inactive");
        assert_eq!(host.state(), Value::Null);
        assert_no_secret(&h, &err.message);
    }
}

#[test]
fn a_failing_update_brings_the_old_config_back() {
    let h = scripted();
    let host = h.host();
    h.host().set_saved_config(&enabled());
    host.set_unit_state(UNIT, "active");
    host.on_command(
        &["netbird", "up", "--no-browser", "--setup-key", KEY2],
        Reply::fail(1, "Error: login failed"),
    );
    let mut cfg = enabled();
    cfg["setup_key"] = json!(KEY2);
    let err = h.put_config(&cfg).unwrap_err();
    assert_eq!(err.status, 500);
    assert!(err.message.contains("--setup-key ***"), "{err:?}");
    assert_eq!(
        host.commands(),
        [down(), up_minimal(KEY2), down(), up_minimal(KEY)]
    );
    assert_eq!(host.unit_state(UNIT), "active");
    assert_eq!(host.state(), json!({ "config": enabled() }));
    assert_eq!(host.save_count(), 0);
    assert_no_secret(&h, &err.message);
}

#[test]
fn a_failing_restore_is_logged_without_the_key() {
    let h = scripted();
    let host = h.host();
    h.host().set_saved_config(&enabled());
    host.set_unit_state(UNIT, "active");
    host.on_command(&["netbird", "up"], Reply::fail(1, "Error: daemon is down"));
    let mut cfg = enabled();
    cfg["setup_key"] = json!(KEY2);
    let err = h.put_config(&cfg).unwrap_err();
    let errors = host.logged(LogLevel::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("--setup-key ***"), "{errors:?}");
    assert_no_secret(&h, &err.message);
}

#[test]
fn a_rollback_keeps_a_running_unit_running_without_a_restart() {
    let h = scripted();
    let host = h.host();
    h.host().set_saved_config(&enabled());
    host.set_unit_state(UNIT, "active");
    host.on_command_times(&["netbird", "up"], 1, Reply::fail(1, "Error: login failed"));
    let mut cfg = enabled();
    cfg["block_inbound"] = json!(true);
    h.put_config(&cfg).unwrap_err();
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.unit_state(UNIT), "active");
    assert!(host.logs().is_empty(), "{:?}", host.logs());
}

#[test]
fn zero_padded_ports_and_bare_ipv6_hosts_are_refused_in_urls() {
    // Zero-padded ports follow the SDK's port rule (`validate::port`); before, they passed.
    for url in [
        "https://netbird.example.com:033073",
        "http://fd00::1",
        "https://fd00::1:443/",
    ] {
        let expected =
            format!("management_url: invalid URL '{url}' (expected http(s)://host[:port][/path])");
        scripted().assert_config_refused(&config(json!({"management_url": url})), &expected);
    }
    // The scheme matches in any case, as before.
    scripted()
        .put_config(&config(json!({"admin_url": "HTTPS://App.NetBird.io"})))
        .unwrap();
}

#[test]
fn a_failing_unit_start_is_reported() {
    let h = scripted();
    h.host().fail_unit(UNIT, "Job for netbird.service failed");
    let err = h.put_config(&enabled()).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "Job for netbird.service failed")
    );
    assert!(h.host().commands().is_empty());
    assert_eq!(h.host().state(), Value::Null);
}

#[test]
fn a_failing_disable_keeps_the_old_config() {
    let h = scripted();
    h.host().set_saved_config(&enabled());
    h.host().set_unit_state(UNIT, "active");
    h.host().fail_unit(UNIT, "Job for netbird.service failed");
    let err = h.put_config(&default_config()).unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(h.host().state(), json!({ "config": enabled() }));
}

#[test]
fn a_failing_save_is_undone() {
    let h = scripted();
    let host = h.host();
    host.fail_next_save("disk full");
    let err = h.put_config(&enabled()).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(host.units().last().unwrap(), &unit(UnitOp::Stop));
    assert_eq!(host.unit_state(UNIT), "inactive");
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn a_failing_save_after_disabling_connects_again() {
    let h = scripted();
    let host = h.host();
    h.host().set_saved_config(&enabled());
    host.set_unit_state(UNIT, "active");
    host.fail_next_save("disk full");
    let err = h.put_config(&default_config()).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(host.units(), [unit(UnitOp::Stop), unit(UnitOp::Start)]);
    assert_eq!(host.unit_state(UNIT), "active");
    assert_eq!(host.commands(), [down(), up_minimal(KEY)]);
    assert_eq!(host.state(), json!({ "config": enabled() }));
    assert_no_secret(&h, "");
}

#[test]
fn boot_start_and_shutdown_drive_the_unit_only() {
    let h = scripted();
    let host = h.host();
    h.host().set_saved_config(&full());
    h.start().unwrap();
    assert_eq!(host.units(), [unit(UnitOp::Start)]);
    assert!(host.commands().is_empty());
    host.clear_effects();
    h.stop().unwrap();
    assert_eq!(host.units(), [unit(UnitOp::Stop)]);
    assert!(host.commands().is_empty());
    assert_eq!(host.save_count(), 0);
}

#[test]
fn boot_start_and_stop_do_nothing_when_disabled() {
    let h = scripted();
    h.start().unwrap();
    h.stop().unwrap();
    assert!(h.host().units().is_empty());
    assert!(h.host().commands().is_empty());
}
