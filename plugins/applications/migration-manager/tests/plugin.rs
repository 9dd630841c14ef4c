//! The built `migration-manager` plugin as the daemon loads it (through the harness): its manifest,
//! the conformance checks, and each hook reaching the shared one-daemon lifecycle. Migration Manager
//! cannot run here: its API is a stand-in test server on its unix socket, ZFS scripted.

use incus_osd_application_common::testing::{call_lines, stand_in, sync};
use incus_osd_harness::{
    argv, assert_conformance, built_plugin, CheckStatus, Harness, HarnessHost, Reply, UnitCall,
    UnitOp,
};
use plugin_api::application::{AppContext, BackupSpec};
use plugin_api::Hook;
use serde_json::json;

const LIB: &str = "incus_osd_plugin_application_migration_manager";
const DATASET: &str = "local/migration-manager";

fn ctx(initialized: bool) -> Vec<u8> {
    serde_json::to_vec(&AppContext {
        name: "migration-manager".into(),
        version: "202511041800".into(),
        initialized,
        ..Default::default()
    })
    .unwrap()
}

fn load_with(setup: impl FnOnce(&HarnessHost)) -> Harness {
    Harness::load_with(built_plugin(LIB), setup).expect("the plugin loads")
}

#[test]
fn the_manifest_is_a_primary_with_a_late_update_check_and_upstreams_backup() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!(m.name, "migration-manager");
    assert!(m.primary && m.late_update_check);
    assert_eq!(m.start_weight, 0);
    assert!(m.variants.is_empty() && m.dependencies.is_empty());
    assert_eq!(
        m.backup,
        Some(BackupSpec {
            root: "/var/lib/migration-manager/".into(),
            excluded: vec![],
            excluded_unless_complete: vec!["artifacts".into()],
            units: vec!["migration-manager.service".into()],
        })
    );
    assert!(m.has(Hook::Wipe));
    // No actions and no variants: the host answers upstream's "not supported" itself.
    assert!(!m.has(Hook::Action) && !m.has(Hook::CanReplace));
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
        br.detail
            .starts_with("declared backup of /var/lib/migration-manager/")
            && br.detail.contains("gave back the same GET and data"),
        "{br:?}"
    );
}

#[test]
fn a_put_of_the_empty_config_is_accepted_and_changes_nothing_and_an_unknown_field_is_refused() {
    let h = Harness::load_built(LIB);
    h.put_config(&json!({})).unwrap();
    assert!(h.host().events().is_empty(), "{:?}", h.host().events());
    assert_eq!(h.get().unwrap()["config"], json!({}));
    let err = h.put_config(&json!({"lxcfs": {}})).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message.contains("lxcfs"), "{}", err.message);
}

#[test]
fn the_first_start_creates_the_dataset_and_later_ones_mount_it() {
    let h = load_with(|hh| {
        hh.on_command(&["zfs", "list"], Reply::fail(1, "dataset does not exist"));
        hh.on_command(&["zfs", "create"], Reply::ok(""));
        hh.on_command(
            &["zfs", "mount"],
            Reply::fail(1, "filesystem already mounted"),
        );
    });
    h.invoke("start", &ctx(false)).unwrap();
    assert_eq!(
        h.host().commands(),
        [
            argv(&["zfs", "list", "-H", "-o", "name", DATASET]),
            argv(&[
                "zfs",
                "create",
                "-o",
                "mountpoint=/var/lib/migration-manager/",
                "-o",
                "incusos:use=migration-manager",
                DATASET
            ]),
        ]
    );
    assert_eq!(
        h.host().unit_changes(),
        [UnitCall::new(UnitOp::Start, "migration-manager.service")]
    );
    h.host().clear_effects();
    h.invoke("start", &ctx(true)).unwrap();
    assert_eq!(h.host().commands(), [argv(&["zfs", "mount", DATASET])]);
    h.host().clear_effects();
    h.invoke("stop", &ctx(true)).unwrap();
    assert_eq!(
        h.host().unit_changes(),
        [UnitCall::new(UnitOp::Stop, "migration-manager.service")]
    );
    h.host()
        .set_unit_state("migration-manager.service", "active");
    assert_eq!(
        h.invoke("running", &ctx(true)).unwrap(),
        json!({"running": true})
    );
}

#[test]
fn a_wipe_destroys_the_dataset_and_makes_an_empty_one() {
    let h = load_with(|hh| {
        hh.on_command(&["umount"], Reply::ok(""));
        hh.on_command(&["zfs", "destroy"], Reply::ok(""));
        hh.on_command(&["zfs", "create"], Reply::ok(""));
    });
    h.host()
        .put_file("/var/lib/migration-manager/db", b"data", 0o600);
    h.invoke("wipe", &ctx(true)).unwrap();
    let commands = h.host().commands();
    assert_eq!(
        commands[0],
        argv(&["umount", "/var/lib/migration-manager/"])
    );
    assert_eq!(commands[1], argv(&["zfs", "destroy", DATASET]));
    assert_eq!(commands[2][..2], argv(&["zfs", "create"]));
    assert!(!h.host().real_path("/var/lib/migration-manager").exists());
}

#[test]
fn get_shows_what_the_daemon_binary_says_its_version_is() {
    let h =
        load_with(|hh| hh.on_command(&["migration-managerd", "--version"], Reply::ok("1.2.3\n")));
    assert_eq!(
        h.invoke("get", &ctx(true)).unwrap(),
        json!({"state": {"friendly_version": "1.2.3"}, "config": {}})
    );
}

/// Boundary: the initialize hook reaches a stand-in for Migration Manager's API on its socket
/// (no seed is handed over yet: only the network defaults are applied).
#[test]
fn initialize_applies_the_network_defaults_through_a_stand_in_api() {
    let h = Harness::load_built(LIB);
    let server = stand_in(h.host(), "/run/migration-manager/unix.socket");
    for path in ["/1.0", "/1.0/system/network"] {
        server.handle(path, sync(json!({})));
    }
    h.invoke("initialize", &ctx(false)).unwrap();
    assert_eq!(call_lines(&server), ["GET /1.0", "PUT /1.0/system/network"]);
}
