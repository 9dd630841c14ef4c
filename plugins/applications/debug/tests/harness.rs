//! The debug application as the daemon loads it, against the recording harness host.

use incus_osd_harness::{assert_conformance, built_plugin, Harness};
use plugin_api::{Hook, Kind};
use serde_json::json;

const LIB: &str = "incus_osd_plugin_application_debug";

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
fn a_non_primary_application_before_the_primary_with_nothing_to_write() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!((m.name.as_str(), m.kind), ("debug", Kind::Application));
    assert_eq!(m.start_weight, -1);
    assert!(!m.primary);
    assert!(m.dependencies.is_empty() && m.variants.is_empty());
    assert!(m.paths.is_empty(), "{:?}", m.paths);
    assert_eq!(m.backup, None);
    for hook in [Hook::Wipe, Hook::Action, Hook::Backup, Hook::Restore] {
        assert!(!m.has(hook), "{hook:?}");
    }
}

#[test]
fn get_leaves_the_friendly_version_to_the_host_and_touches_nothing() {
    let h = Harness::load_built(LIB);
    let ctx = json!({"name": "debug", "version": "202511041800"});
    assert_eq!(
        h.invoke_raw("get", ctx.to_string().as_bytes()).unwrap(),
        br#"{"state":{"friendly_version":""},"config":{}}"#
    );
    h.host().assert_untouched("get");
}

#[test]
fn the_config_is_empty_and_anything_else_is_refused() {
    let h = Harness::load_built(LIB);
    h.apply_config(&json!({}));
    h.assert_config_refused(
        &json!({"tools": ["htop"]}),
        "invalid request body: config.tools: unknown field `tools`, there are no fields at line 1 column 18",
    );
}

#[test]
fn no_lifecycle_and_no_factory_reset() {
    let h = Harness::load_built(LIB);
    let ctx = h.app_context();
    h.invoke("start", &ctx).unwrap();
    h.invoke("stop", &ctx).unwrap();
    assert_eq!(
        h.invoke("running", &ctx).unwrap(),
        json!({"running": false})
    );
    h.host().assert_untouched("start, stop, running");
    let err = h.factory_reset().unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "not supported"));
}
