//! The incus-linstor application as the daemon loads it, against the recording harness
//! host.

use incus_osd_harness::{argv, assert_conformance, built_plugin, Harness, Reply};
use plugin_api::{Hook, Kind};
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_application_incus_linstor";
const SATELLITE: &str = "/usr/share/linstor-server/bin/Satellite";

fn get(h: &Harness, version: &str) -> Value {
    let ctx = json!({"name": "incus-linstor", "version": version});
    h.invoke("get", ctx.to_string().as_bytes()).unwrap()
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
fn needs_incus_starts_before_the_primary_and_has_no_hooks_of_its_own() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!(
        (m.name.as_str(), m.kind),
        ("incus-linstor", Kind::Application)
    );
    assert_eq!(m.dependencies, ["incus"]);
    assert_eq!(m.start_weight, -1);
    assert!(!m.primary);
    assert!(m.paths.is_empty(), "{:?}", m.paths);
    assert_eq!(m.backup, None);
    for hook in [Hook::Wipe, Hook::Action, Hook::Backup, Hook::Restore] {
        assert!(!m.has(hook), "{hook:?}");
    }
    let err = h.factory_reset().unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "not supported"));
    let ctx = h.app_context();
    h.invoke("start", &ctx).unwrap();
    assert_eq!(
        h.invoke("running", &ctx).unwrap(),
        json!({"running": false})
    );
    h.host().assert_untouched("start, running");
}

#[test]
fn the_friendly_version_is_the_satellites_with_the_image_version() {
    let h = Harness::load_built(LIB);
    let out = "Picked up JAVA_TOOL_OPTIONS: -Xss4m\n\
               LINSTOR Satellite 1.31.0 (build 2a5f0e3)\n";
    h.host()
        .on_command(&[SATELLITE, "--version"], Reply::ok(out));
    assert_eq!(
        get(&h, "202511041800"),
        json!({"state": {"friendly_version": "1.31.0 [202511041800]"}, "config": {}})
    );
    assert_eq!(get(&h, "")["state"]["friendly_version"], "1.31.0");
    assert_eq!(
        h.host().commands(),
        vec![argv(&[SATELLITE, "--version"]); 2]
    );
    assert!(h.host().warnings().is_empty(), "{:?}", h.host().warnings());
}

#[test]
fn an_unreadable_satellite_version_leaves_the_image_version_and_a_warning() {
    for reply in [
        Reply::fail(1, "java not found"),
        Reply::ok("LINSTOR Satellite 1.31.0\nsomething after it\n"),
        Reply::ok(""),
    ] {
        let h = Harness::load_built(LIB);
        h.host()
            .on_command(&[SATELLITE, "--version"], reply.clone());
        assert_eq!(
            get(&h, "202511041800"),
            json!({"state": {"friendly_version": ""}, "config": {}}),
            "{reply:?}"
        );
        let warnings = h.host().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("Cannot read the LINSTOR version: "),
            "{warnings:?}"
        );
    }
}

#[test]
fn the_config_is_empty_and_anything_else_is_refused() {
    let h = Harness::load_built(LIB);
    h.apply_config(&json!({}));
    h.assert_config_refused(
        &json!({"node": "x"}),
        "invalid request body: config.node: unknown field `node`, there are no fields at line 1 column 17",
    );
}
