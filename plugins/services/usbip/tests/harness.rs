//! The usbip plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{assert_conformance, built_plugin, Harness, LogLevel, Reply};
use serde_json::{json, Value};

/// `usbip port` with nothing attached (vhci-hcd loaded).
const NO_PORTS: &str = "Imported USB devices\n====================\n";

/// `usbip port` with five devices imported: three configured ones (one from an IPv6
/// server), one attached by hand from another server, one whose record file is gone, and
/// one port in error.
const PORTS: &str = "\
Imported USB devices
====================
Port 00: <Port in Use> at High Speed(480Mbps)
       SanDisk Corp. : Cruzer Blade (0781:5567)
       3-1 -> usbip://192.0.2.10:3240/1-1.2
           -> remote bus/dev 001/004
Port 01: <Port in Use> at Full Speed(12Mbps)
       Logitech, Inc. : Unifying Receiver (046d:c52b)
       3-2 -> usbip://usb-server.lan:3240/2-3.4.1
           -> remote bus/dev 002/009
Port 02: <Port in Use> at High Speed(480Mbps)
       Future Technology Devices International, Ltd : FT232 Serial (UART) IC (0403:6001)
       3-3 -> usbip://192.0.2.99:3240/1-1
           -> remote bus/dev 001/002
Port 03: <Port in Use> at High Speed(480Mbps)
       unknown vendor : unknown product (1a86:7523)
       3-4 -> unknown host, remote port and remote busid
           -> remote bus/dev 001/006
Port 04: <Port Error> at High Speed(480Mbps)
       Silicon Labs : CP210x UART Bridge (10c4:ea60)
       3-5 -> usbip://192.0.2.10:3240/1-4
           -> remote bus/dev 001/007
Port 08: <Port in Use> at Super Speed(5000Mbps)
       Realtek Semiconductor Corp. : RTS5411 Hub (0bda:0411)
       4-1 -> usbip://fd00::20:3240/4-1
           -> remote bus/dev 004/002
";

const VHCI_NOT_LOADED: &str = "usbip: error: failed to open /sys/devices/platform/vhci_hcd.0\n\
usbip: error: open vhci_driver\n";

fn plugin() -> Harness {
    Harness::load(built_plugin("incus_osd_plugin_usbip")).expect("the usbip plugin loads")
}

/// A plugin whose host loads the module, lists `ports` and attaches/detaches anything.
fn scripted(ports: &str) -> Harness {
    let h = plugin();
    let host = h.host();
    host.on_command(&["modprobe", "vhci-hcd"], Reply::ok(""));
    host.on_command(&["usbip", "port"], Reply::ok(ports));
    host.on_command(&["usbip", "attach"], Reply::ok(""));
    host.on_command(&["usbip", "detach"], Reply::ok(""));
    h
}

fn target(address: &str, bus_id: &str) -> Value {
    json!({"address": address, "bus_id": bus_id})
}

fn config(enabled: bool, targets: &[Value]) -> Value {
    json!({"enabled": enabled, "targets": targets})
}

fn put_config(h: &Harness, config: &Value) -> Result<Value, plugin_api::abi::PluginError> {
    h.put(&json!({"state": {}, "config": config}))
}

fn preset(h: &Harness, config: &Value) {
    h.host().set_state(json!({ "config": config }));
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn modprobe() -> Vec<String> {
    argv(&["modprobe", "vhci-hcd"])
}

fn port() -> Vec<String> {
    argv(&["usbip", "port"])
}

fn attach(address: &str, bus_id: &str) -> Vec<String> {
    argv(&["usbip", "attach", "-r", address, "-b", bus_id])
}

fn detach(port: &str) -> Vec<String> {
    argv(&["usbip", "detach", "-p", port])
}

fn warnings(h: &Harness) -> Vec<String> {
    h.host()
        .logs()
        .into_iter()
        .filter(|l| l.level == LogLevel::Warn)
        .map(|l| l.message)
        .collect()
}

#[test]
fn generic_checks_pass() {
    assert_conformance(built_plugin("incus_osd_plugin_usbip"));
}

#[test]
fn manifest_declares_name_weight_and_no_paths() {
    let h = plugin();
    let m = h.manifest();
    assert_eq!(m.name, "usbip");
    assert_eq!(m.kind, plugin_api::Kind::Service);
    assert_eq!(m.start_weight, 100);
    assert!(m.paths.is_empty());
    assert!(!m.has(plugin_api::Hook::Reset));
}

#[test]
fn fresh_get_is_exactly_the_default() {
    let h = plugin();
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{},"config":{"enabled":false,"targets":[]}}"#
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn every_config_field_round_trips_and_null_targets_are_empty() {
    let h = scripted(NO_PORTS);
    let cfg = config(
        false,
        &[
            target("192.0.2.10", "1-1.2"),
            target("usb-server.lan", "2-3.4.1"),
        ],
    );
    put_config(&h, &cfg).unwrap();
    assert_eq!(h.get().unwrap(), json!({"state": {}, "config": cfg}));
    assert_eq!(h.host().state(), json!({ "config": cfg }));
    assert!(h.host().commands().is_empty());

    put_config(&h, &json!({"enabled": false, "targets": null})).unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &[]));
}

/// The JSON pointer of every string in `v`, in document order.
fn string_pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::String(_) => out.push(at.to_string()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                string_pointers(item, &format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                string_pointers(item, &format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// Each string field of a full config with a control character added is a 400 naming the
/// field that changes nothing, also
/// for a service enabled before.
#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = config(
        true,
        &[
            target("192.0.2.10", "1-1.2"),
            target("usb.example.com", "3-1"),
        ],
    );
    let fields = [
        ("/targets/0/address", "targets[0].address"),
        ("/targets/0/bus_id", "targets[0].bus_id"),
        ("/targets/1/address", "targets[1].address"),
        ("/targets/1/bus_id", "targets[1].bus_id"),
    ];
    let mut pointers = vec![];
    string_pointers(&full, "", &mut pointers);
    assert_eq!(
        pointers,
        fields.map(|(p, _)| p),
        "every string field has a case"
    );
    for (pointer, field) in fields {
        for bad in ["\n", "\r", "\0", "\t"] {
            let mut cfg = full.clone();
            let value = cfg.pointer_mut(pointer).unwrap();
            *value = json!(format!("{}{bad}x", value.as_str().unwrap()));
            let h = scripted(NO_PORTS);
            preset(&h, &config(true, &[target("192.0.2.20", "1-1")]));
            let before = h.host().state();
            let err = put_config(&h, &cfg).unwrap_err();
            let expected =
                format!("{field}: line breaks, NUL and other control characters are not allowed");
            assert_eq!(
                (err.status, err.message.as_str()),
                (400, expected.as_str()),
                "{bad:?}"
            );
            h.host().assert_untouched(field);
            assert_eq!(h.host().state(), before, "{field}");
        }
    }
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (vec![target("", "1-1")], "target 0: address is empty"),
        (
            vec![target("usb server", "1-1")],
            "target 0: invalid address 'usb server'",
        ),
        (
            vec![target("192.0.2.10", "1-1"), target("[fd00::20]", "1-1")],
            "target 1: invalid address '[fd00::20]'",
        ),
        (
            vec![target("192.0.2.10:3240", "1-1")],
            "target 0: invalid address '192.0.2.10:3240'",
        ),
        (vec![target("192.0.2.10", "")], "target 0: bus_id is empty"),
        (
            vec![target("192.0.2.10", "1")],
            "target 0: invalid bus_id '1' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
        ),
        (
            vec![target("192.0.2.10", "1-")],
            "target 0: invalid bus_id '1-' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
        ),
        (
            vec![target("192.0.2.10", "1-1.")],
            "target 0: invalid bus_id '1-1.' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
        ),
        (
            vec![target("192.0.2.10", "1-1:1.0")],
            "target 0: invalid bus_id '1-1:1.0' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
        ),
        (
            vec![target("192.0.2.10", "usb1")],
            "target 0: invalid bus_id 'usb1' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
        ),
        (
            vec![target("192.0.2.10", "-b 1-1")],
            "target 0: invalid bus_id '-b 1-1' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
        ),
        (
            vec![
                target("192.0.2.10", "1-1.2"),
                target("192.0.2.10", "1-1.3"),
                target("192.0.2.10", "1-1.2"),
            ],
            "target 2: duplicate of target 0",
        ),
    ];
    for enabled in [true, false] {
        for (targets, message) in &cases {
            let h = scripted(PORTS);
            let err = put_config(&h, &config(enabled, targets)).unwrap_err();
            assert_eq!(
                (err.status, err.message.as_str()),
                (400, *message),
                "{targets:?}"
            );
            let host = h.host();
            host.assert_untouched(message);
            assert_eq!(host.state(), Value::Null, "{message}");
        }
    }
}

#[test]
fn valid_addresses_and_bus_ids_are_accepted() {
    let h = scripted(NO_PORTS);
    let cfg = config(
        false,
        &[
            target("192.0.2.10", "1-1"),
            target("fd00::20", "4-1"),
            target("usb-server.lan.", "2-3.4.1"),
            target("usb", "10-1.2.3.4.5"),
        ],
    );
    put_config(&h, &cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
}

#[test]
fn enabling_loads_the_module_and_attaches_every_target() {
    let h = scripted(NO_PORTS);
    let host = h.host();
    let cfg = config(
        true,
        &[
            target("192.0.2.10", "1-1.2"),
            target("usb-server.lan", "2-3.4.1"),
        ],
    );
    put_config(&h, &cfg).unwrap();
    assert_eq!(
        host.commands(),
        [
            modprobe(),
            port(),
            attach("192.0.2.10", "1-1.2"),
            attach("usb-server.lan", "2-3.4.1"),
        ]
    );
    let timeouts: Vec<u64> = host.command_calls().iter().map(|c| c.timeout_ms).collect();
    assert_eq!(timeouts, [30_000, 10_000, 30_000, 30_000]);
    assert!(host.units().is_empty());
    assert!(host.file_effects().is_empty());
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert_eq!(h.get().unwrap(), json!({"state": {}, "config": cfg}));
}

#[test]
fn enabling_without_targets_only_loads_the_module() {
    let h = scripted(NO_PORTS);
    put_config(&h, &config(true, &[])).unwrap();
    assert_eq!(h.host().commands(), [modprobe()]);
}

#[test]
fn attach_failures_only_warn() {
    let h = scripted(NO_PORTS);
    let host = h.host();
    host.on_command(
        &["usbip", "attach", "-r", "usb-server.lan"],
        Reply::fail(
            1,
            "usbip: error: tcp connect\nusbip: error: import device\n",
        ),
    );
    let cfg = config(
        true,
        &[
            target("usb-server.lan", "2-3.4.1"),
            target("192.0.2.10", "1-1.2"),
        ],
    );
    put_config(&h, &cfg).unwrap();
    assert_eq!(
        host.commands(),
        [
            modprobe(),
            port(),
            attach("usb-server.lan", "2-3.4.1"),
            attach("192.0.2.10", "1-1.2"),
        ]
    );
    let warnings = warnings(&h);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("unable to attach USB/IP device 2-3.4.1 from usb-server.lan: "),
        "{warnings:?}"
    );
    assert_eq!(host.state(), json!({ "config": cfg }));
}

#[test]
fn an_update_detaches_removed_targets_and_skips_attached_ones() {
    let h = scripted(PORTS);
    let host = h.host();
    let old = config(
        true,
        &[
            target("192.0.2.10", "1-1.2"),
            target("usb-server.lan", "2-3.4.1"),
            target("fd00::20", "4-1"),
            target("192.0.2.10", "1-4"),
        ],
    );
    preset(&h, &old);
    let new = config(
        true,
        &[
            target("usb-server.lan", "2-3.4.1"),
            target("192.0.2.10", "1-4"),
            target("192.0.2.11", "1-1"),
        ],
    );
    put_config(&h, &new).unwrap();
    assert_eq!(
        host.commands(),
        [
            modprobe(),
            port(),
            // Removed: 192.0.2.10 1-1.2 (port 0) and fd00::20 4-1 (port 8). The device
            // attached by hand (port 2) and the one without a record (port 3) stay.
            detach("0"),
            detach("8"),
            // Still wanted and in use: not attached again. In error: attached again.
            attach("192.0.2.10", "1-4"),
            attach("192.0.2.11", "1-1"),
        ]
    );
    assert!(warnings(&h).is_empty());
    assert_eq!(host.state(), json!({ "config": new }));
}

#[test]
fn disabling_detaches_the_configured_devices_only() {
    let h = scripted(PORTS);
    let host = h.host();
    let old = config(
        true,
        &[
            target("192.0.2.10", "1-1.2"),
            target("usb-server.lan", "2-3.4.1"),
            target("192.0.2.10", "1-4"),
            target("192.0.2.12", "1-1"),
        ],
    );
    preset(&h, &old);
    let mut new = old.clone();
    new["enabled"] = json!(false);
    put_config(&h, &new).unwrap();
    assert_eq!(
        host.commands(),
        [port(), detach("0"), detach("1"), detach("4")]
    );
    assert_eq!(host.state(), json!({ "config": new }));

    // Staying disabled touches nothing.
    host.clear_effects();
    put_config(&h, &config(false, &[])).unwrap();
    assert!(host.commands().is_empty());
}

#[test]
fn detach_failures_only_warn() {
    let h = scripted(PORTS);
    let host = h.host();
    preset(&h, &config(true, &[target("192.0.2.10", "1-1.2")]));
    host.on_command(
        &["usbip", "detach", "-p", "0"],
        Reply::fail(1, "usbip: error: Port 0 is already detached!\n"),
    );
    put_config(&h, &config(false, &[])).unwrap();
    let warnings = warnings(&h);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("unable to detach USB/IP device 1-1.2 from 192.0.2.10 (port 0): "),
        "{warnings:?}"
    );
    assert_eq!(host.state(), json!({ "config": config(false, &[]) }));
}

#[test]
fn an_unreadable_port_list_attaches_everything_and_detaches_nothing() {
    let h = scripted(NO_PORTS);
    let host = h.host();
    host.on_command(&["usbip", "port"], Reply::fail(1, VHCI_NOT_LOADED));
    preset(&h, &config(true, &[target("192.0.2.10", "1-1.2")]));
    let new = config(true, &[target("usb-server.lan", "2-3.4.1")]);
    put_config(&h, &new).unwrap();
    assert_eq!(
        host.commands(),
        [modprobe(), port(), attach("usb-server.lan", "2-3.4.1")]
    );
    assert_eq!(host.state(), json!({ "config": new }));
}

#[test]
fn a_failing_modprobe_changes_nothing() {
    let h = scripted(PORTS);
    let host = h.host();
    host.on_command(
        &["modprobe", "vhci-hcd"],
        Reply::fail(
            1,
            "modprobe: FATAL: Module vhci-hcd not found in directory /lib/modules/6.12.0",
        ),
    );
    preset(&h, &config(true, &[target("192.0.2.10", "1-1.2")]));
    let err = put_config(&h, &config(true, &[target("usb-server.lan", "2-3.4.1")])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            500,
            "Failed to run: modprobe vhci-hcd: exit status 1 (modprobe: FATAL: Module vhci-hcd not found in directory /lib/modules/6.12.0)"
        )
    );
    assert_eq!(host.commands(), [modprobe()]);
    assert_eq!(
        host.state(),
        json!({ "config": config(true, &[target("192.0.2.10", "1-1.2")]) })
    );
}

#[test]
fn a_failing_save_is_undone() {
    let h = scripted(PORTS);
    let host = h.host();
    host.on_command_times(&["usbip", "port"], 1, Reply::ok(NO_PORTS));
    host.fail_next_save("disk full");
    let err = put_config(&h, &config(true, &[target("192.0.2.10", "1-1.2")])).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(
        host.commands(),
        [
            modprobe(),
            port(),
            attach("192.0.2.10", "1-1.2"),
            // Undo: back to disabled, the device just attached (port 0) is detached.
            port(),
            detach("0"),
        ]
    );
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn boot_start_attaches_what_is_missing_and_stop_does_nothing() {
    let h = scripted(PORTS);
    let host = h.host();
    preset(
        &h,
        &config(
            true,
            &[target("192.0.2.10", "1-1.2"), target("192.0.2.11", "1-1")],
        ),
    );
    h.start().unwrap();
    assert_eq!(
        host.commands(),
        [modprobe(), port(), attach("192.0.2.11", "1-1")]
    );
    host.clear_effects();
    // Upstream has no Stop: attachments survive a daemon shutdown.
    h.stop().unwrap();
    assert!(host.commands().is_empty());
    assert_eq!(host.save_count(), 0);
}

#[test]
fn boot_start_does_nothing_when_disabled() {
    let h = scripted(PORTS);
    preset(&h, &config(false, &[target("192.0.2.10", "1-1.2")]));
    h.start().unwrap();
    assert!(h.host().commands().is_empty());
}

#[test]
fn reset_is_not_supported() {
    let err = plugin().reset().unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "reset isn't supported by this service")
    );
}
