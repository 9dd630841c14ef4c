//! The first-party bundle (`libincus_osd_bundle_first_party.so`): one library carrying every
//! first-party plugin, loaded by the daemon as built; the crates' own libraries beside it are
//! skipped unopened, and an earlier plugin directory still overrides one of its plugins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use incus_osd_integration::{built_plugin, get_ok, workspace_plugins, Daemon, Root};
use serde_json::Value;

const BUNDLE: &str = "libincus_osd_bundle_first_party.so";

fn bundle() -> PathBuf {
    built_plugin("incus_osd_bundle_first_party")
}

fn install_bundle(dir: &Path) {
    std::fs::copy(bundle(), dir.join(BUNDLE)).expect("copy the bundle");
}

/// (kind, name) of every workspace plugin, each read from its own library.
fn first_party() -> BTreeSet<(String, String)> {
    workspace_plugins()
        .iter()
        .map(|p| {
            let lib = incus_osd::plugins::loader::open(p).expect("a plugin library");
            (
                lib.manifest.kind.as_str().to_string(),
                lib.manifest.name.clone(),
            )
        })
        .collect()
}

fn listed(v: &Value) -> Vec<(String, String, String)> {
    v["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
                p["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_bundle_carries_every_first_party_plugin_and_replaces_their_own_libraries() {
    let root = Root::new();
    install_bundle(&root.plugin_dir());
    // A bundled crate's own library beside it: skipped, not a duplicate.
    std::fs::copy(
        built_plugin("incus_osd_plugin_iscsi"),
        root.plugin_dir().join("libincus_osd_plugin_iscsi.so"),
    )
    .unwrap();
    // A plugin the bundle does not carry: loaded from its own library.
    root.install_fixture("provider", "fixture");
    let want = first_party();
    assert!(want.len() >= 22, "{want:?}");

    for start in ["cold", "warm"] {
        let mut d = Daemon::start(&root, &[]);
        let v = get_ok(&d.socket, "/1.0/plugins").await;
        assert_eq!(v["failed"], serde_json::json!([]), "{start}: {v}");
        let got = listed(&v);
        let from_bundle: BTreeSet<(String, String)> = got
            .iter()
            .filter(|(_, _, path)| path.ends_with(BUNDLE))
            .map(|(k, n, _)| (k.clone(), n.clone()))
            .collect();
        assert_eq!(from_bundle, want, "{start}: every first-party plugin");
        assert_eq!(got.len(), want.len() + 1, "{start}: {got:?}");
        assert!(
            got.iter()
                .any(|(_, n, p)| n == "fixture" && p.ends_with("libincus_osd_plugin_fixture.so")),
            "{start}: {got:?}"
        );
        let log = d.log();
        assert!(
            log.contains("plugin libraries skipped: their plugins are loaded from the bundle")
                && log.contains("skipped=libincus_osd_plugin_iscsi.so"),
            "{start}: {log}"
        );
        // The bundle's plugins answer as their own libraries do.
        let iscsi = get_ok(&d.socket, "/1.0/services/iscsi").await;
        assert!(iscsi["config"].is_object(), "{iscsi}");
        assert_eq!(d.terminate().code(), Some(0), "{}", d.log());
    }
}

#[tokio::test]
async fn a_plugin_in_an_earlier_directory_overrides_the_bundles_copy() {
    let root = Root::new();
    let later = root.path().join("vendor-plugins");
    std::fs::create_dir(&later).unwrap();
    install_bundle(&later);
    root.install_plugin(&built_plugin("incus_osd_plugin_iscsi"), "iscsi");
    let mut d = Daemon::start(&root, &["--plugins", later.to_str().unwrap()]);
    let v = get_ok(&d.socket, "/1.0/plugins").await;
    let got = listed(&v);
    let iscsi: Vec<_> = got.iter().filter(|(_, n, _)| n == "iscsi").collect();
    assert_eq!(iscsi.len(), 1, "{got:?}");
    assert!(
        iscsi[0].2.ends_with("plugins/libincus_osd_plugin_iscsi.so"),
        "{got:?}"
    );
    // The bundle's copy is refused as a duplicate, and the rest of the bundle loads.
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["name"], "iscsi");
    assert_eq!(failed[0]["check"], "duplicate-name");
    assert_eq!(got.len(), first_party().len(), "{got:?}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// A library named as a bundle whose root module is one plugin's (a bundle linked so that
/// one plugin's exports won) is refused, not taken for that one plugin.
#[test]
fn a_bundle_named_library_carrying_one_plugin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libincus_osd_bundle_mislinked.so");
    std::fs::copy(built_plugin("incus_osd_plugin_iscsi"), &path).unwrap();
    let err = incus_osd::plugins::loader::open_library(&path).unwrap_err();
    assert_eq!(err.check(), "manifest", "{err}");
    assert!(
        err.to_string()
            .contains("named as a bundle, but its root module is the one plugin 'iscsi'"),
        "{err}"
    );
}

#[test]
fn a_bundle_is_not_loaded_as_one_plugin() {
    let err = incus_osd::plugins::loader::open(&bundle()).unwrap_err();
    assert!(
        err.to_string().contains("is a bundle of")
            && err.to_string().contains("incus_osd_plugin_iscsi"),
        "{err}"
    );
}

/// Every plugin crate of the workspace is in the bundle: a plugin added to the workspace
/// but not to `plugins/bundle` would be missing wherever only the bundle is installed.
#[test]
fn every_workspace_plugin_crate_is_bundled() {
    let lib = incus_osd::plugins::loader::open_library(&bundle()).expect("the bundle opens");
    let bundled: BTreeSet<String> = lib.bundled.into_iter().collect();
    let own: BTreeSet<String> = workspace_plugins()
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            Some(incus_osd::plugins::loader::crate_of_file(name)?.to_string())
        })
        .collect();
    assert_eq!(bundled, own);
}

/// A bundle none of whose plugins must run (two providers, neither selected): a warm start
/// leaves it unopened; the first call of one plugin opens the bundle and instantiates that
/// plugin alone, the other's first call instantiates the other.
#[tokio::test]
async fn a_bundle_nothing_needs_at_start_is_opened_on_first_use_one_plugin_at_a_time() {
    let root = Root::new();
    std::fs::copy(
        built_plugin("fixture_bundle"),
        root.plugin_dir().join("libincus_osd_bundle_fixtures.so"),
    )
    .unwrap();
    let mut d = Daemon::start(&root, &[]);
    assert_eq!(d.loaded(), ["fixture", "fixture-b"], "cold: opened");
    d.terminate();

    let d = Daemon::start(&root, &[]);
    assert!(d.loaded().is_empty(), "warm: deferred\n{}", d.log());
    let v = get_ok(&d.socket, "/1.0/plugins").await;
    assert_eq!(listed(&v).len(), 2, "{v}");
    let calls = get_ok(&d.socket, "/1.0/system/provider/fixture-b/calls").await;
    assert!(calls.is_array(), "{calls}");
    assert_eq!(d.loaded(), ["fixture-b"]);
    let calls = get_ok(&d.socket, "/1.0/system/provider/fixture/calls").await;
    assert!(calls.is_array(), "{calls}");
    assert_eq!(d.loaded(), ["fixture", "fixture-b"]);
    assert_eq!(d.log().matches("deferred=true").count(), 2, "{}", d.log());
}
