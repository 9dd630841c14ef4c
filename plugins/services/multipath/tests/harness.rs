//! The multipath plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    argv, assert_conformance, built_plugin, control_character_cases, FileEffect, Harness, LogLevel,
    Reply, UnitCall, UnitOp,
};
use serde_json::{json, Value};

const MULTIPATHD: &str = "multipathd.service";
const SOCKET: &str = "multipathd.socket";
/// A NetApp LUN (NAA 6, 32 digits) and a dual-ported SAS disk (NAA 5, 16 digits).
const LUN: &str = "0x600a098038303053453f463045727a6c";
const SAS: &str = "0x5000c500a1b2c3d4";

/// `multipath -ll` of the LUN: ALUA with an optimized and a non-optimized path group, one
/// path of the latter failed.
const LUN_LL: &str = "\
3600a098038303053453f463045727a6c dm-2 NETAPP,LUN C-Mode
size=100G features='3 queue_if_no_path pg_init_retries 50' hwhandler='1 alua' wp=rw
|-+- policy='service-time 0' prio=50 status=active
| |- 1:0:0:1 sdb 8:16 active ready running
| `- 2:0:0:1 sdd 8:48 active ready running
`-+- policy='service-time 0' prio=10 status=enabled
  |- 1:0:1:1 sdc 8:32 active ready running
  `- 2:0:1:1 sde 8:64 failed faulty offline
";

/// `multipath -ll` of the SAS disk with `user_friendly_names yes`.
const SAS_LL: &str = "\
mpatha (35000c500a1b2c3d4) dm-3 SEAGATE,ST4000NM0025
size=3.6T features='0' hwhandler='0' wp=rw
|-+- policy='round-robin 0' prio=1 status=active
| `- 0:0:0:0 sda 8:0 active ready running
`-+- policy='round-robin 0' prio=1 status=enabled
  `- 0:0:1:0 sdf 8:80 active ready running
";

const LIB: &str = "incus_osd_plugin_multipath";

fn by_id(wwn: &str) -> String {
    format!("/dev/disk/by-id/wwn-{wwn}")
}

/// A plugin whose host has both disks in /dev/disk/by-id, linked as udev does, and
/// answers multipath.
fn scripted() -> Harness {
    let h = Harness::load_built(LIB);
    let host = h.host();
    std::fs::create_dir_all(host.real_path("/dev/disk/by-id")).unwrap();
    for (wwn, dev, ll) in [(LUN, "sdb", LUN_LL), (SAS, "sda", SAS_LL)] {
        // The harness root holds a plain file where the real system has a device node.
        host.put_file(&format!("/dev/{dev}"), b"", 0o660);
        std::os::unix::fs::symlink(format!("../../{dev}"), host.real_path(&by_id(wwn))).unwrap();
        host.on_command(&["multipath", "-ll", &by_id(wwn)], Reply::ok(ll));
    }
    host.put_file("/dev/disk/by-id/wwn-0x5000c500a1b2c3ff-part1", b"", 0o644);
    host.on_command(&["multipath", "-a"], Reply::ok("wwid added\n"));
    host.on_command(&["multipath", "-r"], Reply::ok(""));
    h
}

/// Two FC HBA ports as the kernel shows them: one logged into a fabric, one without link
/// (whose driver lacks `fabric_name`).
fn add_fc_hosts(h: &Harness) {
    let host = h.host();
    let files = [
        ("host1", "fabric_name", "0x100000051e0f5a2b\n"),
        ("host1", "node_name", "0x20000024ff7a1b2c\n"),
        ("host1", "port_name", "0x21000024ff7a1b2c\n"),
        ("host1", "port_state", "Online\n"),
        ("host1", "port_type", "NPort (fabric via point-to-point)\n"),
        ("host1", "speed", "16 Gbit\n"),
        ("host1", "supported_speeds", "4 Gbit, 8 Gbit, 16 Gbit\n"),
        ("host2", "node_name", "0x20000024ff7a1b2d\n"),
        ("host2", "port_name", "0x21000024ff7a1b2d\n"),
        ("host2", "port_state", "Linkdown\n"),
        ("host2", "port_type", "Unknown\n"),
        ("host2", "speed", "unknown\n"),
        ("host2", "supported_speeds", "4 Gbit, 8 Gbit, 16 Gbit\n"),
    ];
    for (fc, name, value) in files {
        host.put_file(
            &format!("/sys/class/fc_host/{fc}/{name}"),
            value.as_bytes(),
            0o444,
        );
    }
}

fn controllers() -> Value {
    json!([
        {
            "fabric_name": "0x100000051e0f5a2b",
            "node_name": "0x20000024ff7a1b2c",
            "port_name": "0x21000024ff7a1b2c",
            "port_state": "Online",
            "port_type": "NPort (fabric via point-to-point)",
            "speed": "16 Gbit",
            "supported_speeds": "4 Gbit, 8 Gbit, 16 Gbit"
        },
        {
            "fabric_name": "",
            "node_name": "0x20000024ff7a1b2d",
            "port_name": "0x21000024ff7a1b2d",
            "port_state": "Linkdown",
            "port_type": "Unknown",
            "speed": "unknown",
            "supported_speeds": "4 Gbit, 8 Gbit, 16 Gbit"
        }
    ])
}

fn lun_device() -> Value {
    json!({
        "vendor": "NETAPP,LUN C-Mode",
        "size": "100G",
        "path_groups": [
            {"policy": "service-time 0", "priority": 50, "status": "active", "paths": [
                {"id": "1:0:0:1", "status": "running"},
                {"id": "2:0:0:1", "status": "running"}
            ]},
            {"policy": "service-time 0", "priority": 10, "status": "enabled", "paths": [
                {"id": "1:0:1:1", "status": "running"},
                {"id": "2:0:1:1", "status": "offline"}
            ]}
        ]
    })
}

fn sas_device() -> Value {
    json!({
        "vendor": "SEAGATE,ST4000NM0025",
        "size": "3.6T",
        "path_groups": [
            {"policy": "round-robin 0", "priority": 1, "status": "active",
             "paths": [{"id": "0:0:0:0", "status": "running"}]},
            {"policy": "round-robin 0", "priority": 1, "status": "enabled",
             "paths": [{"id": "0:0:1:0", "status": "running"}]}
        ]
    })
}

fn config(enabled: bool, wwns: &[&str]) -> Value {
    json!({"enabled": enabled, "wwns": wwns})
}

fn add(dev: &str) -> Vec<String> {
    argv(&["multipath", "-a", dev])
}

fn reload() -> Vec<String> {
    argv(&["multipath", "-r"])
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
        r#"{"state":{"controllers":[],"devices":null},"config":{"enabled":false,"wwns":[]}}"#
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn controllers_are_read_from_sysfs_even_when_disabled() {
    let h = scripted();
    add_fc_hosts(&h);
    assert_eq!(
        h.get().unwrap()["state"],
        json!({"controllers": controllers(), "devices": null})
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn enabling_lists_the_wwns_starts_multipathd_and_reloads() {
    let h = scripted();
    let cfg = config(true, &[LUN, SAS]);
    h.put_config(&cfg).unwrap();

    let host = h.host();
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::dir_created("/etc/multipath", 0o700),
            FileEffect::written("/etc/multipath/wwids", 0o600),
        ]
    );
    assert_eq!(h.host().mode("/etc/multipath"), 0o700);
    assert_eq!(h.host().mode("/etc/multipath/wwids"), 0o600);
    assert_eq!(host.read_file("/etc/multipath/wwids").unwrap(), b"");
    // The by-id links are resolved by the host, without a `readlink` command.
    assert_eq!(
        host.commands(),
        [add("/dev/sdb"), add("/dev/sda"), reload()]
    );
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Start, MULTIPATHD)
        ]
    );
    assert_eq!(host.unit_state(MULTIPATHD), "active");
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert_eq!(host.save_count(), 1);
    assert!(h.host().warnings().is_empty());
}

#[test]
fn the_state_parses_multipath_ll_of_each_wwn() {
    let h = scripted();
    add_fc_hosts(&h);
    h.put_config(&config(true, &[LUN, SAS])).unwrap();
    h.host().clear_effects();

    assert_eq!(
        h.get().unwrap(),
        json!({
            "state": {
                "controllers": controllers(),
                "devices": {LUN: lun_device(), SAS: sas_device()}
            },
            "config": config(true, &[LUN, SAS])
        })
    );
    assert_eq!(
        h.host().commands(),
        [
            argv(&["multipath", "-ll", &by_id(LUN)]),
            argv(&["multipath", "-ll", &by_id(SAS)])
        ]
    );
}

#[test]
fn unusual_multipath_output_is_skipped_or_parsed_as_upstream_does() {
    let h = scripted();
    h.put_config(&config(true, &[LUN, SAS])).unwrap();
    let host = h.host();

    // Not (or no longer) a multipath device: multipath prints nothing.
    host.on_command(&["multipath", "-ll", &by_id(SAS)], Reply::ok(""));
    // A priority that is not a number leaves that group's fields empty, as upstream.
    host.on_command(
        &["multipath", "-ll", &by_id(LUN)],
        Reply::ok(
            "3600a098038303053453f463045727a6c dm-2 NETAPP,LUN C-Mode\n\
             size=100G features='0' hwhandler='1 alua' wp=rw\n\
             `-+- policy='service-time 0' prio=-1 status=enabled\n  \
             `- #:#:#:# -   #:#  failed faulty running\n",
        ),
    );
    assert_eq!(
        h.get().unwrap()["state"]["devices"],
        json!({LUN: {"vendor": "NETAPP,LUN C-Mode", "size": "100G", "path_groups": [
            {"policy": "", "priority": 0, "status": "", "paths": []}
        ]}})
    );

    // A failing multipath: the device is left out and the error logged.
    host.clear_effects();
    host.on_command(
        &["multipath", "-ll", &by_id(LUN)],
        Reply::fail(1, "DM multipath kernel driver not loaded"),
    );
    assert_eq!(h.get().unwrap()["state"]["devices"], json!({}));
    let errors = host.logged(LogLevel::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(LUN), "{errors:?}");
}

#[test]
fn a_missing_multipath_tool_gives_empty_devices() {
    let h = Harness::load_built(LIB);
    h.host().put_file(&by_id(LUN), b"", 0o644);
    h.host().set_saved_config(&config(true, &[LUN]));
    assert_eq!(
        h.get().unwrap()["state"],
        json!({"controllers": [], "devices": {}})
    );
}

#[test]
fn every_config_field_round_trips() {
    let h = scripted();
    let cfg = config(false, &[LUN, SAS, "0x5000c500a1b2c3ff"]);
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
    h.put_config(&config(true, &[SAS])).unwrap();
    assert_eq!(h.get().unwrap()["config"], config(true, &[SAS]));
    // null reads as an empty list, shown as [] as upstream's GET does.
    h.put_config(&json!({"enabled": null, "wwns": null}))
        .unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &[]));
}

/// Each string field of a full config with a control character added is a 400 naming the
/// field that changes nothing.
#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = config(true, &[LUN, SAS]);
    let fields = [("/wwns/0", "wwns[0]"), ("/wwns/1", "wwns[1]")];
    for case in control_character_cases(&full, &fields, &[]) {
        let h = scripted();
        h.assert_config_refused(&case.config, &case.message);
        assert_eq!(h.host().state(), Value::Null, "{}", case.field);
    }
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let format_error = |i: usize, w: &str| {
        format!(
            "wwns {i}: invalid WWN {w:?} (expected 0x and 16 or 32 lowercase hexadecimal \
             digits, e.g. 0x5abcdef123456001)"
        )
    };
    let mut cases: Vec<(bool, Vec<&str>, String)> = vec![];
    for w in [
        "",
        "5000c500a1b2c3d4",
        "0x5000C500A1B2C3D4",
        "0x5000c500a1b2c3d",
        "0x5000c500a1b2c3d4a",
        "0x5000c500a1b2c3g4",
        "0x5000c500a1b2c3d4-part1",
        "0x../../sda0000000",
        "naa.5000c500a1b2c3d4",
    ] {
        for enabled in [true, false] {
            cases.push((enabled, vec![SAS, w], format_error(1, w)));
        }
    }
    for enabled in [true, false] {
        cases.push((
            enabled,
            vec![LUN, SAS, LUN],
            "wwns 2: duplicate of WWN 0".into(),
        ));
    }
    // Enabling needs every disk present.
    cases.push((
        true,
        vec![SAS, "0x5000c500a1b2c3ff"],
        r#"failed to locate WWN "0x5000c500a1b2c3ff""#.into(),
    ));
    for (enabled, wwns, message) in &cases {
        let h = scripted();
        h.assert_config_refused(&config(*enabled, wwns), message);
        let host = h.host();
        assert!(!host.root().join("etc").exists(), "{message}");
        assert_eq!(host.state(), Value::Null, "{message}");
    }
}

#[test]
fn missing_disks_are_accepted_while_disabled() {
    let h = Harness::load_built(LIB);
    h.put_config(&config(false, &[LUN])).unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &[LUN]));
    let err = h.put_config(&config(true, &[LUN])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (400, format!("failed to locate WWN {LUN:?}").as_str())
    );
}

#[test]
fn disabling_tears_down_and_stores_the_new_config() {
    let h = scripted();
    let host = h.host();
    h.put_config(&config(true, &[LUN, SAS])).unwrap();
    host.clear_effects();

    let disabled = config(false, &[LUN]);
    h.put_config(&disabled).unwrap();
    assert_eq!(host.file_effects(), [FileEffect::removed("/etc/multipath")]);
    assert!(!host.real_path("/etc/multipath").exists());
    assert_eq!(host.commands(), [reload()]);
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, SOCKET),
            UnitCall::new(UnitOp::Stop, SOCKET),
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Stop, MULTIPATHD)
        ]
    );
    assert_eq!(host.unit_state(MULTIPATHD), "inactive");
    // Upstream kept the old (enabled) config here; the new one is stored.
    assert_eq!(host.state(), json!({ "config": disabled }));
    assert_eq!(host.save_count(), 2);
    assert_eq!(
        h.get().unwrap(),
        json!({"state": {"controllers": [], "devices": null}, "config": disabled})
    );
    // ... so the next boot leaves multipath alone.
    host.clear_effects();
    h.start().unwrap();
    assert!(host.commands().is_empty());
    assert!(host.units().is_empty());
}

#[test]
fn an_update_rewrites_the_wwid_list() {
    let h = scripted();
    let host = h.host();
    h.put_config(&config(true, &[LUN, SAS])).unwrap();
    host.put_file(
        "/etc/multipath/wwids",
        b"/3600a098038303053453f463045727a6c/\n/35000c500a1b2c3d4/\n",
        0o600,
    );
    host.clear_effects();

    h.put_config(&config(true, &[SAS])).unwrap();
    assert_eq!(
        host.file_effects(),
        [FileEffect::written("/etc/multipath/wwids", 0o600)]
    );
    assert_eq!(host.read_file("/etc/multipath/wwids").unwrap(), b"");
    assert_eq!(host.commands(), [add("/dev/sda"), reload()]);
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Start, MULTIPATHD)
        ]
    );
    assert_eq!(host.state(), json!({"config": config(true, &[SAS])}));
}

#[test]
fn disks_that_cannot_be_added_are_only_warnings() {
    let h = scripted();
    let host = h.host();
    // The LUN's link dangles: its device node is gone.
    std::fs::remove_file(host.real_path("/dev/sdb")).unwrap();
    host.on_command(
        &["multipath", "-a", "/dev/sda"],
        Reply::fail(1, "/dev/sda: can't store path info"),
    );
    h.put_config(&config(true, &[LUN, SAS])).unwrap();
    assert_eq!(host.commands(), [add("/dev/sda"), reload()]);
    let warnings = h.host().warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains(LUN), "{warnings:?}");
    assert!(warnings[1].contains(SAS), "{warnings:?}");
    assert_eq!(host.unit_state(MULTIPATHD), "active");
    assert_eq!(host.save_count(), 1);
}

#[test]
fn a_failing_reload_when_enabling_undoes_everything() {
    let h = scripted();
    let host = h.host();
    host.on_command(
        &["multipath", "-r"],
        Reply::fail(1, "DM multipath kernel driver not loaded"),
    );
    let err = h.put_config(&config(true, &[LUN])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            500,
            "Failed to run: multipath -r: exit status 1 (DM multipath kernel driver not loaded)"
        )
    );
    assert!(!host.real_path("/etc/multipath").exists());
    assert_eq!(
        host.files_removed(),
        ["/etc/multipath/wwids", "/etc/multipath"]
    );
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Start, MULTIPATHD),
            UnitCall::new(UnitOp::Stop, MULTIPATHD)
        ]
    );
    assert_eq!(host.unit_state(MULTIPATHD), "inactive");
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
}

#[test]
fn a_failing_multipathd_start_keeps_an_existing_wwids_file() {
    let h = scripted();
    let host = h.host();
    host.put_file("/etc/multipath/wwids", b"/35000c500a1b2c3d4/\n", 0o600);
    host.set_unit_state(MULTIPATHD, "active");
    host.fail_unit(MULTIPATHD, "Job for multipathd.service failed");
    let err = h.put_config(&config(true, &[SAS])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "Job for multipathd.service failed")
    );
    assert_eq!(
        host.read_file("/etc/multipath/wwids").unwrap(),
        b"/35000c500a1b2c3d4/\n"
    );
    // It was active before: it is not stopped.
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Start, MULTIPATHD)
        ]
    );
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn a_failing_update_brings_the_old_config_back() {
    let h = scripted();
    let host = h.host();
    let old = config(true, &[LUN]);
    h.put_config(&old).unwrap();
    // What `multipath -a` wrote for the LUN.
    let lun_wwids = b"/3600a098038303053453f463045727a6c/\n";
    host.put_file("/etc/multipath/wwids", lun_wwids, 0o600);
    host.on_command_times(&["multipath", "-r"], 1, Reply::fail(1, "timeout"));
    host.clear_effects();

    let err = h.put_config(&config(true, &[SAS])).unwrap_err();
    assert_eq!(err.status, 500);
    // The reload failed, so the maps are unchanged: putting the WWID list back is
    // enough, without replaying the old bring-up; multipathd kept running throughout.
    assert_eq!(host.commands(), [add("/dev/sda"), reload()]);
    assert_eq!(host.read_file("/etc/multipath/wwids").unwrap(), lun_wwids);
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Start, MULTIPATHD)
        ]
    );
    assert_eq!(host.unit_state(MULTIPATHD), "active");
    assert_eq!(host.state(), json!({ "config": old }));
    assert_eq!(host.save_count(), 1);
}

#[test]
fn a_failing_disable_brings_the_old_config_back() {
    let h = scripted();
    let host = h.host();
    let old = config(true, &[LUN]);
    h.put_config(&old).unwrap();
    let lun_wwids = b"/3600a098038303053453f463045727a6c/\n";
    host.put_file("/etc/multipath/wwids", lun_wwids, 0o600);
    host.fail_unit(SOCKET, "Job for multipathd.socket failed");
    host.clear_effects();

    let err = h.put_config(&config(false, &[LUN])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "Job for multipathd.socket failed")
    );
    // The WWID list comes back as it was, then the maps are reloaded from it.
    assert_eq!(host.commands(), [reload(), reload()]);
    assert_eq!(host.read_file("/etc/multipath/wwids").unwrap(), lun_wwids);
    assert_eq!(h.host().mode("/etc/multipath"), 0o700);
    assert_eq!(host.unit_state(MULTIPATHD), "active");
    assert_eq!(host.state(), json!({ "config": old }));
}

#[test]
fn a_failing_save_is_undone() {
    let h = scripted();
    let host = h.host();
    host.fail_next_save("disk full");
    let err = h.put_config(&config(true, &[LUN])).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert!(!host.real_path("/etc/multipath").exists());
    assert_eq!(host.commands().last().unwrap(), &reload());
    assert_eq!(host.unit_state(MULTIPATHD), "inactive");
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn a_failing_save_reloads_the_maps_from_the_restored_list() {
    let h = scripted();
    let host = h.host();
    let old = config(true, &[LUN]);
    h.put_config(&old).unwrap();
    let lun_wwids = b"/3600a098038303053453f463045727a6c/\n";
    host.put_file("/etc/multipath/wwids", lun_wwids, 0o600);
    host.clear_effects();
    host.fail_next_save("disk full");

    let err = h.put_config(&config(true, &[SAS])).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    // The new list was loaded into the maps: once the old list is back, they are reloaded
    // from it.
    assert_eq!(host.commands(), [add("/dev/sda"), reload(), reload()]);
    assert_eq!(host.read_file("/etc/multipath/wwids").unwrap(), lun_wwids);
    assert_eq!(host.unit_state(MULTIPATHD), "active");
    assert_eq!(host.state(), json!({ "config": old }));
}

#[test]
fn boot_start_brings_multipath_up_and_shutdown_tears_it_down() {
    let h = scripted();
    let host = h.host();
    host.set_saved_config(&config(true, &[LUN]));
    h.start().unwrap();
    assert_eq!(host.commands(), [add("/dev/sdb"), reload()]);
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Start, MULTIPATHD)
        ]
    );
    assert_eq!(host.save_count(), 0);

    host.clear_effects();
    h.stop().unwrap();
    assert_eq!(host.files_removed(), ["/etc/multipath"]);
    assert_eq!(host.commands(), [reload()]);
    assert_eq!(
        host.units(),
        [
            UnitCall::new(UnitOp::ActiveState, SOCKET),
            UnitCall::new(UnitOp::Stop, SOCKET),
            UnitCall::new(UnitOp::ActiveState, MULTIPATHD),
            UnitCall::new(UnitOp::Stop, MULTIPATHD)
        ]
    );
}

#[test]
fn boot_start_and_stop_do_nothing_when_disabled() {
    let h = scripted();
    h.host().set_saved_config(&config(false, &[LUN]));
    h.host().put_file("/etc/multipath/wwids", b"x\n", 0o600);
    h.start().unwrap();
    h.stop().unwrap();
    let host = h.host();
    host.assert_untouched("boot_start_and_stop_do_nothing_when_disabled");
}
