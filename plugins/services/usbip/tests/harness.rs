//! The usbip plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    argv, assert_conformance, built_plugin, control_character_cases, Harness, Reply,
};
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

const LIB: &str = "incus_osd_plugin_usbip";

/// A plugin whose host loads the module, lists `ports` and attaches/detaches anything.
fn scripted(ports: &str) -> Harness {
    let h = Harness::load_built(LIB);
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

#[test]
fn generic_checks_pass() {
    assert_conformance(built_plugin(LIB));
}

#[test]
fn fresh_get_is_exactly_the_default() {
    let h = Harness::load_built(LIB);
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
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap(), json!({"state": {}, "config": cfg}));
    assert_eq!(h.host().state(), json!({ "config": cfg }));
    assert!(h.host().commands().is_empty());

    h.put_config(&json!({"enabled": false, "targets": null}))
        .unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &[]));
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
    for case in control_character_cases(&full, &fields, &[]) {
        let h = scripted(NO_PORTS);
        h.host()
            .set_saved_config(&config(true, &[target("192.0.2.20", "1-1")]));
        h.assert_config_refused(&case.config, &case.message);
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
            h.assert_config_refused(&config(enabled, targets), message);
            assert_eq!(h.host().state(), Value::Null, "{message}");
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
    h.put_config(&cfg).unwrap();
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
    h.put_config(&cfg).unwrap();
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
    h.put_config(&config(true, &[])).unwrap();
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
    h.put_config(&cfg).unwrap();
    assert_eq!(
        host.commands(),
        [
            modprobe(),
            port(),
            attach("usb-server.lan", "2-3.4.1"),
            attach("192.0.2.10", "1-1.2"),
        ]
    );
    let warnings = h.host().warnings();
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
    h.host().set_saved_config(&old);
    let new = config(
        true,
        &[
            target("usb-server.lan", "2-3.4.1"),
            target("192.0.2.10", "1-4"),
            target("192.0.2.11", "1-1"),
        ],
    );
    h.put_config(&new).unwrap();
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
    assert!(h.host().warnings().is_empty());
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
    h.host().set_saved_config(&old);
    let mut new = old.clone();
    new["enabled"] = json!(false);
    h.put_config(&new).unwrap();
    assert_eq!(
        host.commands(),
        [port(), detach("0"), detach("1"), detach("4")]
    );
    assert_eq!(host.state(), json!({ "config": new }));

    // Staying disabled touches nothing.
    host.clear_effects();
    h.put_config(&config(false, &[])).unwrap();
    assert!(host.commands().is_empty());
}

#[test]
fn detach_failures_only_warn() {
    let h = scripted(PORTS);
    let host = h.host();
    h.host()
        .set_saved_config(&config(true, &[target("192.0.2.10", "1-1.2")]));
    host.on_command(
        &["usbip", "detach", "-p", "0"],
        Reply::fail(1, "usbip: error: Port 0 is already detached!\n"),
    );
    h.put_config(&config(false, &[])).unwrap();
    let warnings = h.host().warnings();
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
    h.host()
        .set_saved_config(&config(true, &[target("192.0.2.10", "1-1.2")]));
    let new = config(true, &[target("usb-server.lan", "2-3.4.1")]);
    h.put_config(&new).unwrap();
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
    h.host()
        .set_saved_config(&config(true, &[target("192.0.2.10", "1-1.2")]));
    let err = h
        .put_config(&config(true, &[target("usb-server.lan", "2-3.4.1")]))
        .unwrap_err();
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
    let err = h
        .put_config(&config(true, &[target("192.0.2.10", "1-1.2")]))
        .unwrap_err();
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
    h.host().set_saved_config(&config(
        true,
        &[target("192.0.2.10", "1-1.2"), target("192.0.2.11", "1-1")],
    ));
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
    h.host()
        .set_saved_config(&config(false, &[target("192.0.2.10", "1-1.2")]));
    h.start().unwrap();
    assert!(h.host().commands().is_empty());
}
