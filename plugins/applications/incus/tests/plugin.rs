//! The built `incus` plugin as the daemon loads it (through the harness): its manifest,
//! the conformance checks, and each hook reaching the domain logic. Incus itself cannot
//! run here: its API is a stand-in test server on its unix socket, its tools scripted.

use incus_osd_application_common::testing::{call_lines, stand_in, sync};
use incus_osd_harness::{
    argv, assert_conformance, built_plugin, CheckStatus, Harness, HarnessHost, Reply, UnitCall,
    UnitOp,
};
use plugin_api::application::{AppContext, BackupSpec};
use plugin_api::Hook;
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_application_incus";

fn ctx(version: &str) -> Vec<u8> {
    serde_json::to_vec(&AppContext {
        name: "incus".into(),
        version: version.into(),
        initialized: true,
        ..Default::default()
    })
    .unwrap()
}

fn load_with(setup: impl FnOnce(&HarnessHost)) -> Harness {
    Harness::load_with(built_plugin(LIB), setup).expect("the incus plugin loads")
}

#[test]
fn the_manifest_has_upstreams_roles_variant_and_backup() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!(m.name, "incus");
    assert_eq!(m.variants, ["incus-lts-7.0"]);
    assert!(m.primary);
    assert_eq!(m.start_weight, 0);
    assert!(m.dependencies.is_empty());
    assert!(!m.late_update_check);
    // `:debug` `get-logs` bundles these (the host writes the archive).
    assert_eq!(m.debug_logs, ["/run/incus", "/var/log/incus"]);
    assert_eq!(
        m.backup,
        Some(BackupSpec {
            root: "/var/lib/incus/".into(),
            excluded: vec!["guestapi".into(), "shmounts".into(), "unix.socket".into()],
            excluded_unless_complete: vec![],
            units: vec![
                "incus-startup.service".into(),
                "incus.socket".into(),
                "incus.service".into(),
                "incus-lxcfs.service".into()
            ],
        })
    );
    for hook in [Hook::Wipe, Hook::Action, Hook::CanReplace, Hook::Initialize] {
        assert!(m.has(hook), "{hook:?}");
    }
    // The host writes and restores the declared backup: no streams of the plugin's own.
    assert!(!m.has(Hook::Backup) && !m.has(Hook::Restore));
}

#[test]
fn plugin_check_passes_with_the_backup_round_trip() {
    let outcomes = assert_conformance(built_plugin(LIB));
    let br = outcomes
        .iter()
        .find(|o| o.name == "backup-restore")
        .unwrap();
    assert_eq!(br.status, CheckStatus::Passed, "{br:?}");
    assert!(
        br.detail.starts_with("declared backup of /var/lib/incus/")
            && br.detail.contains("gave back the same GET and data"),
        "{br:?}"
    );
}

#[test]
fn initialize_ceph_cluster_goes_to_the_incus_api_and_other_actions_are_refused_as_upstream() {
    let h = Harness::load_built(LIB);
    let err = h
        .invoke("action", br#"{"action": "initialize-ceph-cluster"}"#)
        .unwrap_err();
    assert_eq!(err.status, 500, "{err:?}");
    assert!(err.message.starts_with("Incus: GET /1.0: "), "{err:?}");
    let err = h
        .invoke("action", br#"{"action": "get-logs", "config": {}}"#)
        .unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "unsupported action 'get-logs'")
    );
    assert!(h.host().events().is_empty(), "{:?}", h.host().events());
}

#[test]
fn a_put_writes_lxcfs_options_restarts_incus_and_get_shows_the_config() {
    let h = Harness::load_built(LIB);
    let config = json!({"lxcfs": {"cpu_shares": true, "load_average": false}});
    h.put_config(&config).unwrap();
    assert_eq!(
        h.host().read_text("/etc/default/incus"),
        "LXCFS_OPTS=\"--enable-cfs\"\n"
    );
    assert_eq!(
        h.host().unit_changes(),
        [
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "incus.service")
        ]
    );
    assert_eq!(h.get().unwrap()["config"], config);
    // An array where the object belongs is refused, naming the field.
    let err = h.put_config(&json!({"lxcfs": []})).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message.contains("lxcfs"), "{}", err.message);
}

#[test]
fn a_put_whose_restart_fails_leaves_the_options_and_the_config_as_they_were() {
    let h = Harness::load_built(LIB);
    h.host().fail_unit("incus.service", "incus.service failed");
    let err = h
        .put_config(&json!({"lxcfs": {"cpu_shares": true, "load_average": true}}))
        .unwrap_err();
    assert!(err.message.contains("incus.service failed"), "{err:?}");
    assert_eq!(h.host().read_file("/etc/default/incus"), None);
    assert_eq!(
        h.get().unwrap()["config"],
        json!({"lxcfs": {"cpu_shares": false, "load_average": false}})
    );
}

#[test]
fn replacement_is_decided_on_incus_own_version() {
    let ask = |to: &str| {
        json!({"from": {"name": "incus", "version": "202511041800", "initialized": true}, "to": to})
            .to_string()
    };
    let h = load_with(|hh| hh.on_command(&["incus", "--version"], Reply::ok("7.0.0\n")));
    h.invoke("can-replace", ask("incus-lts-7.0").as_bytes())
        .unwrap();
    let h = load_with(|hh| hh.on_command(&["incus", "--version"], Reply::ok("7.1\n")));
    let err = h
        .invoke("can-replace", ask("incus-lts-7.0").as_bytes())
        .unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            400,
            "unable to replace application 'incus' with 'incus-lts-7.0': current Incus version (7.1) is too new to rollback to older LTS branch"
        )
    );
}

#[test]
fn start_stop_restart_reload_and_running_drive_incus_units() {
    let h = load_with(|hh| hh.on_command(&["systemd-sysusers"], Reply::ok("")));
    let c = ctx("202511041800");
    h.invoke("start", &c).unwrap();
    assert_eq!(h.host().commands(), [argv(&["systemd-sysusers"])]);
    let started: Vec<UnitCall> = [
        (UnitOp::Restart, "systemd-sysctl.service"),
        (UnitOp::Start, "incus.socket"),
        (UnitOp::Start, "incus-lxcfs.service"),
        (UnitOp::Start, "incus-startup.service"),
        (UnitOp::Start, "incus.service"),
    ]
    .iter()
    .map(|(op, u)| UnitCall::new(*op, u))
    .collect();
    assert_eq!(h.host().unit_changes(), started);
    h.host().clear_effects();
    h.invoke("stop", &c).unwrap();
    let stopped: Vec<UnitCall> = [
        "incus-startup.service",
        "incus.service",
        "incus.socket",
        "incus-lxcfs.service",
    ]
    .iter()
    .map(|u| UnitCall::new(UnitOp::Stop, u))
    .collect();
    assert_eq!(h.host().unit_changes(), stopped);
    h.host().clear_effects();
    h.invoke("restart", &c).unwrap();
    assert_eq!(
        h.host().unit_changes(),
        [UnitCall::new(UnitOp::Restart, "incus.service")]
    );
    h.host().clear_effects();
    h.invoke("reload", &c).unwrap();
    assert_eq!(
        h.host().unit_changes(),
        [
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "incus.service")
        ]
    );
    h.host().set_unit_state("incus.service", "active");
    assert_eq!(h.invoke("running", &c).unwrap(), json!({"running": true}));
    h.host().set_unit_state("incus.service", "failed");
    assert_eq!(h.invoke("running", &c).unwrap(), json!({"running": false}));
}

#[test]
fn get_shows_incus_version_beside_the_image_version_and_nothing_without_an_image() {
    let h = load_with(|hh| hh.on_command(&["incus", "--version"], Reply::ok("7.0.0\n")));
    let got = h.invoke("get", &ctx("202511041800")).unwrap();
    assert_eq!(
        got["state"],
        json!({"friendly_version": "7.0.0 [202511041800]"})
    );
    // No image active: no binary to ask, the host shows its own version.
    h.host().clear_effects();
    assert_eq!(
        h.invoke("get", &ctx("")).unwrap()["state"],
        json!({"friendly_version": ""})
    );
    assert!(h.host().commands().is_empty());
    // A binary that cannot say: logged, and the GET still answers.
    let h = load_with(|hh| hh.on_command(&["incus", "--version"], Reply::fail(1, "broken")));
    assert_eq!(
        h.invoke("get", &ctx("202511041800")).unwrap()["state"],
        json!({"friendly_version": ""})
    );
    assert_eq!(
        h.host().warnings(),
        ["cannot read the friendly version: Failed to run: incus --version: exit status 1 (broken)"]
    );
}

/// Boundary: the initialize hook applies the defaults through a stand-in for Incus' API
/// on `/run/incus/unix.socket` (no seed is handed over yet: the defaults apply).
#[test]
fn initialize_applies_the_defaults_through_a_stand_in_incus_api() {
    let h = load_with(|hh| {
        hh.on_command(&["zpool", "list"], Reply::fail(1, "no such pool"));
    });
    let server = stand_in(h.host(), "/run/incus/unix.socket");
    server.handle("/1.0", sync(json!({"config": {}})));
    server.handle(
        "/1.0/profiles/default",
        sync(json!({"name": "default", "description": "", "config": {}, "devices": {}})),
    );
    server.handle("/1.0/storage-pools", sync(json!([])));
    server.handle("/1.0/networks", sync(json!([])));
    h.invoke("initialize", &ctx("202511041800")).unwrap();
    let lines = call_lines(&server);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("PUT /1.0"),
        "{lines:?}"
    );
    let put: Vec<Value> = incus_osd_application_common::testing::calls(&server)
        .into_iter()
        .filter(|(m, p, _)| m == "PUT" && p == "/1.0")
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(put, [json!({"config": {"core.https_address": ":8443"}})]);
    assert!(
        lines.contains(&"POST /1.0/networks".to_string()),
        "{lines:?}"
    );
}

#[test]
fn a_wipe_removes_incus_data_lxcfs_data_and_logs() {
    let h = Harness::load_built(LIB);
    for f in [
        "/var/lib/incus/database/global/db.bin",
        "/var/lib/incus-lxcfs/x",
        "/var/log/incus/incusd.log",
    ] {
        h.host().put_file(f, b"data", 0o600);
    }
    h.invoke("wipe", &ctx("202511041800")).unwrap();
    for d in ["/var/lib/incus", "/var/lib/incus-lxcfs", "/var/log/incus"] {
        assert!(!h.host().real_path(d).exists(), "{d}");
    }
}

#[test]
fn a_seed_the_host_hands_over_that_does_not_decode_is_refused_before_any_call() {
    let h = Harness::load_built(LIB);
    let ctx = serde_json::to_vec(&AppContext {
        name: "incus".into(),
        version: "202511041601".into(),
        seed: Some(json!({"apply_defaults": true, "colour": "red"})),
        ..Default::default()
    })
    .unwrap();
    let e = h.invoke("initialize", &ctx).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(
        e.message
            .as_str()
            .starts_with("invalid 'incus' seed: unknown field `colour`"),
        "{}",
        e.message
    );
}
