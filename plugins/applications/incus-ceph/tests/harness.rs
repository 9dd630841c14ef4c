//! The incus-ceph application as the daemon loads it, against the recording harness host.

use incus_osd_harness::{argv, assert_conformance, built_plugin, Harness, Reply};
use plugin_api::{Hook, Kind};
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_application_incus_ceph";
const CEPH_VERSION: &str =
    "ceph version 19.2.1 (58a7fab8be0a062d730ad7da874972fd3fba59fb) squid (stable)\n";

fn get(h: &Harness, version: &str) -> Value {
    let ctx = json!({"name": "incus-ceph", "version": version});
    h.invoke("get", ctx.to_string().as_bytes()).unwrap()
}

fn action(h: &Harness, name: &str) -> incus_osd_harness::PluginError {
    let body = json!({"action": name, "config": {"device_id": "/dev/disk/by-id/x"}});
    h.invoke("action", body.to_string().as_bytes())
        .expect_err("the action is answered with an error")
}

#[test]
fn passes_the_generic_checks() {
    let outcomes = assert_conformance(built_plugin(LIB));
    let skipped: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.skipped())
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        skipped,
        ["reset", "backup-restore", "provider-ops"],
        "{outcomes:#?}"
    );
}

#[test]
fn needs_incus_starts_before_the_primary_and_has_actions_but_no_backup() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!((m.name.as_str(), m.kind), ("incus-ceph", Kind::Application));
    assert_eq!(m.dependencies, ["incus"]);
    assert_eq!(m.start_weight, -1);
    assert!(!m.primary);
    assert!(m.paths.is_empty(), "{:?}", m.paths);
    assert_eq!(m.backup, None);
    assert!(m.has(Hook::Action));
    for hook in [Hook::Wipe, Hook::Backup, Hook::Restore] {
        assert!(!m.has(hook), "{hook:?}");
    }
    let err = h.factory_reset().unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "not supported"));
}

#[test]
fn the_friendly_version_is_cephs_with_the_image_version() {
    let h = Harness::load_built(LIB);
    h.host()
        .on_command(&["ceph", "--version"], Reply::ok(CEPH_VERSION));
    assert_eq!(
        get(&h, "202511041800"),
        json!({"state": {"friendly_version": "19.2.1 [202511041800]"}, "config": {}})
    );
    assert_eq!(get(&h, "")["state"]["friendly_version"], "19.2.1");
    assert_eq!(h.host().commands(), vec![argv(&["ceph", "--version"]); 2]);
    assert!(h.host().warnings().is_empty(), "{:?}", h.host().warnings());
}

#[test]
fn an_unreadable_ceph_version_leaves_the_image_version_and_a_warning() {
    for reply in [
        Reply::fail(1, "ceph: command failed"),
        Reply::ok("something else 1.0\n"),
    ] {
        let h = Harness::load_built(LIB);
        h.host().on_command(&["ceph", "--version"], reply.clone());
        assert_eq!(
            get(&h, "202511041800"),
            json!({"state": {"friendly_version": ""}, "config": {}}),
            "{reply:?}"
        );
        let warnings = h.host().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("Cannot read the Ceph version: "),
            "{warnings:?}"
        );
    }
}

/// Upstream's three actions through the loaded plugin: with no Incus answering on its
/// socket, the error names Incus and the first call, and nothing on the machine is touched.
#[test]
fn the_drive_and_image_actions_go_to_the_incus_api() {
    let h = Harness::load_built(LIB);
    for (name, first) in [
        ("add-drive", "Incus: GET /1.0: "),
        ("remove-drive", "Incus: GET /1.0: "),
        ("refresh-images", "Incus: GET /1.0/instances?"),
    ] {
        let err = action(&h, name);
        assert_eq!(err.status, 500, "{name}: {err:?}");
        assert!(err.message.starts_with(first), "{name}: {err:?}");
    }
    h.host().assert_untouched("the actions without Incus");
}

#[test]
fn another_action_is_unsupported() {
    let h = Harness::load_built(LIB);
    for name in ["initialize-ceph-cluster", "add-drives", ""] {
        let err = action(&h, name);
        assert_eq!(
            (err.status, err.message.as_str()),
            (500, format!("unsupported action '{name}'").as_str())
        );
    }
    h.host().assert_untouched("unsupported actions");
}

#[test]
fn the_config_is_empty_and_anything_else_is_refused() {
    let h = Harness::load_built(LIB);
    h.apply_config(&json!({}));
    h.assert_config_refused(
        &json!({"fsid": "x"}),
        "invalid request body: config.fsid: unknown field `fsid`, there are no fields at line 1 column 17",
    );
}
