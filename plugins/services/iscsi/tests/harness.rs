//! The iscsi plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    argv, assert_conformance, built_plugin, control_character_cases, Event, FileEffect, Harness,
    LogLevel, Reply, UnitCall, UnitOp,
};
use serde_json::{json, Value};

const ISCSID: &str = "iscsid.service";
const INAME: &str = "iqn.2004-10.org.linuxcontainers:01:6f1c2a9b7e3d";
const T1: &str = "iqn.2024-01.com.example:storage.disk1";
const T2: &str = "iqn.2024-01.com.example:storage.disk2";

const LIB: &str = "incus_osd_plugin_iscsi";

/// A plugin whose host answers iscsi-iname and every iscsiadm call successfully.
fn scripted() -> Harness {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.on_command(&["iscsi-iname", "-p"], Reply::ok(format!("{INAME}\n")));
    host.on_command(
        &["iscsiadm", "-m", "discovery"],
        Reply::ok("10.0.0.5:3260,1 x\n"),
    );
    host.on_command(&["iscsiadm", "-m", "node"], Reply::ok(""));
    h
}

fn target(t: &str, address: &str, port: i64) -> Value {
    json!({"target": t, "address": address, "port": port})
}

fn config(enabled: bool, targets: &[Value]) -> Value {
    json!({"enabled": enabled, "targets": targets})
}

fn discovery(portal: &str) -> Vec<String> {
    argv(&[
        "iscsiadm",
        "-m",
        "discovery",
        "-t",
        "sendtargets",
        "-p",
        portal,
    ])
}

fn node(t: &str, portal: &str, what: &str) -> Vec<String> {
    argv(&["iscsiadm", "-m", "node", "-T", t, "-p", portal, what])
}

fn iname() -> Vec<String> {
    argv(&["iscsi-iname", "-p", "iqn.2004-10.org.linuxcontainers:01"])
}

fn unit(op: UnitOp) -> UnitCall {
    UnitCall::new(op, ISCSID)
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
        r#"{"state":{"initiator_name":""},"config":{"enabled":false,"targets":[]}}"#
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn enabling_creates_the_initiator_name_starts_iscsid_and_logs_in() {
    let h = scripted();
    let cfg = config(true, &[target(T1, "10.0.0.5", 3260)]);
    h.put_config(&cfg).unwrap();

    let host = h.host();
    assert_eq!(
        host.read_file("/etc/iscsi/initiatorname.iscsi").unwrap(),
        format!("InitiatorName={INAME}\n").as_bytes()
    );
    assert_eq!(h.host().mode("/etc/iscsi"), 0o700);
    assert_eq!(h.host().mode("/etc/iscsi/initiatorname.iscsi"), 0o600);
    assert_eq!(host.read_file("/etc/iscsi/iscsid.conf").unwrap(), b"");
    assert_eq!(h.host().mode("/etc/iscsi/iscsid.conf"), 0o600);
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::dir_created("/etc/iscsi", 0o700),
            FileEffect::written("/etc/iscsi/initiatorname.iscsi", 0o600),
            FileEffect::written("/etc/iscsi/iscsid.conf", 0o600),
        ]
    );
    assert_eq!(
        host.commands(),
        [
            iname(),
            discovery("10.0.0.5:3260"),
            node(T1, "10.0.0.5:3260", "--login")
        ]
    );
    assert_eq!(host.command_calls()[2].timeout_ms, 30_000);
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.unit_state(ISCSID), "active");
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert_eq!(host.save_count(), 1);
    assert_eq!(
        h.get().unwrap(),
        json!({"state": {"initiator_name": INAME}, "config": cfg})
    );
}

#[test]
fn an_existing_initiator_name_and_iscsid_conf_are_kept() {
    let h = scripted();
    let host = h.host();
    host.put_file(
        "/etc/iscsi/initiatorname.iscsi",
        b"InitiatorName=iqn.x:kept\n",
        0o644,
    );
    host.put_file("/etc/iscsi/iscsid.conf", b"node.startup = manual\n", 0o644);
    h.put_config(&config(true, &[])).unwrap();
    assert_eq!(host.files_written(), Vec::<String>::new());
    assert!(!host.commands().contains(&iname()));
    assert_eq!(
        host.read_file("/etc/iscsi/iscsid.conf").unwrap(),
        b"node.startup = manual\n"
    );
    assert_eq!(h.get().unwrap()["state"]["initiator_name"], "iqn.x:kept");
}

#[test]
fn portals_bracket_ipv6_and_append_only_positive_ports() {
    let h = scripted();
    let targets = [
        target(T1, "fd00::5", 3260),
        target(T1, "fd00::6", 0),
        target(T2, "san.example.com", 0),
        target(T2, "192.0.2.7", 860),
    ];
    h.put_config(&config(true, &targets)).unwrap();
    let portals: Vec<String> = h
        .host()
        .commands()
        .into_iter()
        .filter(|c| c.ends_with(&["--login".to_string()]))
        .map(|c| c[6].clone())
        .collect();
    assert_eq!(
        portals,
        [
            "[fd00::5]:3260",
            "[fd00::6]",
            "san.example.com",
            "192.0.2.7:860"
        ]
    );
    assert!(h.host().commands().contains(&discovery("[fd00::5]:3260")));
}

#[test]
fn discovery_is_retried_until_it_works() {
    let h = scripted();
    h.host().on_command_times(
        &["iscsiadm", "-m", "discovery"],
        2,
        Reply::fail(4, "iscsiadm: cannot make connection"),
    );
    h.put_config(&config(true, &[target(T1, "10.0.0.5", 0)]))
        .unwrap();
    let discoveries = h
        .host()
        .commands()
        .into_iter()
        .filter(|c| *c == discovery("10.0.0.5"))
        .count();
    assert_eq!(discoveries, 3);
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (
            vec![target("", "10.0.0.5", 3260)],
            "target 0: target name is empty",
        ),
        (
            vec![target(T1, "10.0.0.5", 3260), target("iqn.", "10.0.0.5", 0)],
            "target 1: invalid target name 'iqn.' (expected an iSCSI name: iqn.<yyyy-mm>.\
             <reversed domain>[:<name>], eui.<16 hex digits> or naa.<16 or 32 hex digits>)",
        ),
        (vec![target(T1, "", 3260)], "target 0: address is empty"),
        (
            vec![target(T1, "bad host", 3260)],
            "target 0: invalid address 'bad host'",
        ),
        (
            vec![target(T1, "-san.example.com", 3260)],
            "target 0: invalid address '-san.example.com'",
        ),
        (
            vec![target(T1, "[fd00::5]", 3260)],
            "target 0: invalid address '[fd00::5]'",
        ),
        (
            vec![target(T1, "10.0.0.5", 65536)],
            "target 0: invalid port 65536 (must be 0 to 65535)",
        ),
        (
            vec![target(T1, "10.0.0.5", -1)],
            "target 0: invalid port -1 (must be 0 to 65535)",
        ),
        (
            vec![
                target(T1, "10.0.0.5", 3260),
                target(T2, "10.0.0.5", 3260),
                target(T1, "10.0.0.5", 3260),
            ],
            "target 2: duplicate of target 0",
        ),
    ];
    let bad_names = [
        "storage.disk1",
        "iqn.2024-1.com.example:disk1",
        "iqn.2024-13.com.example:disk1",
        "iqn.2024-01:disk1",
        "iqn.2024-01.com.example:",
        "iqn.2024-01.com.example:disk/1",
        "iqn.2024-01.com.example:disk 1",
        "IQN.2024-01.com.example:disk1",
        "eui.02004567A425678",
        "naa.52004567BA64678D0",
    ];
    let long = format!("iqn.2024-01.com.example:{}", "d".repeat(200));
    let named: Vec<(Vec<Value>, String)> = bad_names
        .into_iter()
        .chain([long.as_str()])
        .map(|name| {
            let message = format!(
                "target 0: invalid target name '{name}' (expected an iSCSI name: \
                 iqn.<yyyy-mm>.<reversed domain>[:<name>], eui.<16 hex digits> or \
                 naa.<16 or 32 hex digits>)"
            );
            (vec![target(name, "10.0.0.5", 3260)], message)
        })
        .collect();
    let cases = cases
        .iter()
        .map(|(t, m)| (t.clone(), m.to_string()))
        .chain(named);
    let cases: Vec<(Vec<Value>, String)> = cases.collect();
    for enabled in [true, false] {
        for (targets, message) in &cases {
            let message = message.as_str();
            let h = scripted();
            h.assert_config_refused(&config(enabled, targets), message);
            let host = h.host();
            assert!(!host.root().join("etc").exists(), "{message}");
            assert_eq!(host.state(), Value::Null, "{message}");
        }
    }
}

#[test]
fn valid_target_names_and_addresses_are_accepted() {
    let h = scripted();
    let targets = [
        target("eui.02004567A425678D", "san", 0),
        target("naa.52004567BA64678D", "san.example.com.", 3260),
        target("naa.6001405abcdef0123456789abcdef012", "san", 0),
        target(T1, "2001:db8::1", 65535),
        target(T1, "192.0.2.1", 3260),
        // Capitals (Synology), underscores (TrueNAS), no unique part.
        target("iqn.2000-01.com.synology:DS920.Target-1.5c3d2f", "san", 0),
        target("iqn.2005-10.org.freenas.ctl:disk_1", "san", 0),
        target("iqn.2003-01.org.linux-iscsi.san.x8664", "san", 0),
    ];
    h.put_config(&config(false, &targets)).unwrap();
    assert_eq!(
        h.get().unwrap()["config"]["targets"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = config(true, &[target(T1, "san.example.com", 3260)]);
    let fields = [
        ("/targets/0/address", "targets[0].address"),
        ("/targets/0/target", "targets[0].target"),
    ];
    for case in control_character_cases(&full, &fields, &[]) {
        let h = scripted();
        h.assert_config_refused(&case.config, &case.message);
        assert_eq!(h.host().state(), Value::Null, "{}", case.field);
    }
}

#[test]
fn a_failing_login_undoes_everything() {
    let h = scripted();
    let host = h.host();
    host.on_command(
        &["iscsiadm", "-m", "node", "-T", T2],
        Reply::fail(19, "iscsiadm: No portal found.\n"),
    );
    let cfg = config(
        true,
        &[target(T1, "10.0.0.5", 3260), target(T2, "10.0.0.6", 3260)],
    );
    let err = h.put_config(&cfg).unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.message.as_str(),
        format!(
            "Failed to run: iscsiadm -m node -T {T2} -p 10.0.0.6:3260 --login: exit status 19 (iscsiadm: No portal found.)"
        )
    );
    assert_eq!(
        host.commands(),
        [
            iname(),
            discovery("10.0.0.5:3260"),
            node(T1, "10.0.0.5:3260", "--login"),
            discovery("10.0.0.6:3260"),
            node(T2, "10.0.0.6:3260", "--login"),
            node(T1, "10.0.0.5:3260", "--logout"),
        ]
    );
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Start),
            unit(UnitOp::Stop)
        ]
    );
    assert_eq!(host.unit_state(ISCSID), "inactive");
    // What this update created is gone again, the generated initiator name included.
    assert!(!host.root().join("etc/iscsi").exists());
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
    assert_eq!(h.get().unwrap()["config"], config(false, &[]));
}

#[test]
fn a_failing_update_brings_the_old_config_back() {
    let h = scripted();
    let host = h.host();
    let old = config(true, &[target(T1, "10.0.0.5", 3260)]);
    h.put_config(&old).unwrap();
    host.on_command(
        &[
            "iscsiadm", "-m", "node", "-T", T2, "-p", "10.0.0.6", "--login",
        ],
        Reply::fail(8, "iscsiadm: connection login retries reached"),
    );
    host.clear_effects();

    let new = config(true, &[target(T2, "10.0.0.6", 0)]);
    let err = h.put_config(&new).unwrap_err();
    assert_eq!(err.status, 500, "{err:?}");
    assert_eq!(
        host.commands(),
        [
            node(T1, "10.0.0.5:3260", "--logout"),
            discovery("10.0.0.6"),
            node(T2, "10.0.0.6", "--login"),
            // iscsid was active before the update: it is not stopped, the old
            // config is brought back up.
            discovery("10.0.0.5:3260"),
            node(T1, "10.0.0.5:3260", "--login"),
        ]
    );
    assert_eq!(host.unit_state(ISCSID), "active");
    assert_eq!(host.state(), json!({ "config": old }));
    assert_eq!(host.save_count(), 1);
}

#[test]
fn a_failing_save_is_undone() {
    let h = scripted();
    let host = h.host();
    host.fail_next_save("disk full");
    let err = h
        .put_config(&config(true, &[target(T1, "10.0.0.5", 3260)]))
        .unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(
        host.commands().last().unwrap(),
        &node(T1, "10.0.0.5:3260", "--logout")
    );
    assert_eq!(host.unit_state(ISCSID), "inactive");
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn a_failing_iscsid_start_is_reported() {
    let h = scripted();
    h.host().fail_unit(ISCSID, "Job for iscsid.service failed");
    let err = h
        .put_config(&config(true, &[target(T1, "10.0.0.5", 3260)]))
        .unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "Job for iscsid.service failed")
    );
    let host = h.host();
    assert!(host.commands().iter().all(|c| c[0] != "iscsiadm"));
    // The undo tries to stop it again.
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Start),
            unit(UnitOp::Stop)
        ]
    );
    assert_eq!(host.unit_state(ISCSID), "failed");
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn disabling_logs_out_stops_iscsid_and_keeps_the_initiator_name() {
    let h = scripted();
    let host = h.host();
    let targets = [target(T1, "10.0.0.5", 3260), target(T2, "fd00::6", 0)];
    h.put_config(&config(true, &targets)).unwrap();
    host.clear_effects();

    h.put_config(&config(false, &targets)).unwrap();
    assert_eq!(
        host.commands(),
        [
            node(T1, "10.0.0.5:3260", "--logout"),
            node(T2, "[fd00::6]", "--logout")
        ]
    );
    // The state is read first, for a rollback.
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Stop)]
    );
    assert_eq!(host.unit_state(ISCSID), "inactive");
    assert!(host.file_effects().is_empty());
    assert!(host.read_file("/etc/iscsi/initiatorname.iscsi").is_some());
    assert_eq!(
        h.get().unwrap(),
        json!({"state": {"initiator_name": ""}, "config": config(false, &targets)})
    );
}

#[test]
fn a_failing_disable_logs_back_in() {
    let h = scripted();
    let host = h.host();
    let cfg = config(true, &[target(T1, "10.0.0.5", 3260)]);
    h.put_config(&cfg).unwrap();
    host.clear_effects();
    host.fail_unit(ISCSID, "Job for iscsid.service canceled");
    let err = h.put_config(&config(false, &[])).unwrap_err();
    assert_eq!(err.message.as_str(), "Job for iscsid.service canceled");
    assert_eq!(
        host.commands(),
        [
            node(T1, "10.0.0.5:3260", "--logout"),
            discovery("10.0.0.5:3260"),
            node(T1, "10.0.0.5:3260", "--login"),
        ]
    );
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Stop),
            unit(UnitOp::Restart)
        ]
    );
    assert_eq!(host.state(), json!({ "config": cfg }));
}

/// A disable whose save fails logs back in to the targets, and only once iscsid runs
/// again: the log-in goes through iscsid, which the disable had stopped.
#[test]
fn a_rolled_back_disable_logs_back_in_after_iscsid_is_running_again() {
    let h = scripted();
    let host = h.host();
    let cfg = config(true, &[target(T1, "10.0.0.5", 3260)]);
    h.put_config(&cfg).unwrap();
    host.clear_effects();
    host.fail_next_save("disk full");
    let err = h
        .put_config(&config(false, &[target(T1, "10.0.0.5", 3260)]))
        .unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(
        host.events(),
        [
            Event::Command(node(T1, "10.0.0.5:3260", "--logout")),
            Event::Unit(unit(UnitOp::ActiveState)),
            Event::Unit(unit(UnitOp::Stop)),
            // The rollback: iscsid first, then the log-in through it.
            Event::Unit(unit(UnitOp::Restart)),
            Event::Command(discovery("10.0.0.5:3260")),
            Event::Command(node(T1, "10.0.0.5:3260", "--login")),
        ]
    );
    assert_eq!(host.unit_state(ISCSID), "active");
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert!(
        host.logs().iter().all(|l| l.level != LogLevel::Warn),
        "{:?}",
        host.logs()
    );
}

#[test]
fn logout_failures_are_only_warnings() {
    let h = scripted();
    let host = h.host();
    h.put_config(&config(true, &[target(T1, "10.0.0.5", 3260)]))
        .unwrap();
    host.on_command(
        &[
            "iscsiadm",
            "-m",
            "node",
            "-T",
            T1,
            "-p",
            "10.0.0.5:3260",
            "--logout",
        ],
        Reply::fail(21, "iscsiadm: No matching sessions found"),
    );
    h.put_config(&config(false, &[])).unwrap();
    assert_eq!(host.unit_state(ISCSID), "inactive");
    let warnings = host.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(T1), "{warnings:?}");
}

#[test]
fn boot_start_wipes_var_lib_iscsi_first() {
    let h = scripted();
    let host = h.host();
    let cfg = config(true, &[target(T1, "10.0.0.5", 3260)]);
    host.set_saved_config(&cfg);
    host.put_file("/var/lib/iscsi/nodes/stale/default", b"stale", 0o600);

    h.start().unwrap();
    assert_eq!(
        host.file_effects()[0],
        FileEffect::removed("/var/lib/iscsi")
    );
    assert!(!host.real_path("/var/lib/iscsi").exists());
    assert_eq!(
        host.commands(),
        [
            iname(),
            discovery("10.0.0.5:3260"),
            node(T1, "10.0.0.5:3260", "--login")
        ]
    );
    assert_eq!(host.unit_state(ISCSID), "active");
    assert_eq!(host.save_count(), 0);

    // Daemon shutdown.
    host.clear_effects();
    h.stop().unwrap();
    assert_eq!(host.commands(), [node(T1, "10.0.0.5:3260", "--logout")]);
    assert_eq!(host.units(), [unit(UnitOp::Stop)]);
}

#[test]
fn boot_start_and_stop_do_nothing_when_disabled() {
    let h = scripted();
    h.host().put_file("/var/lib/iscsi/nodes/x", b"x", 0o600);
    h.start().unwrap();
    h.stop().unwrap();
    let host = h.host();
    host.assert_untouched("boot_start_and_stop_do_nothing_when_disabled");
    assert!(host.real_path("/var/lib/iscsi/nodes/x").exists());
}
