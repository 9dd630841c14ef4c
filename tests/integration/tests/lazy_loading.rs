//! The manifest cache on the daemon with plugins as built: the first start opens every
//! library and records its manifest; a start with the same libraries and the same daemon
//! opens only what must run (services, the selected provider, installed applications) and
//! registers the others from the cache, opening each on its first call.

use incus_osd_integration::{built_plugin, get_ok, request, Daemon, Root};
use serde_json::{json, Value};

const CACHE: &str = "var/lib/incus-os/plugin-cache.json";

fn root_with_providers() -> Root {
    let root = Root::new();
    root.install_fixture("provider", "fixture");
    root.install_fixture("provider_b", "fixture_b");
    root
}

/// Whether `/1.0/plugins` says `name`'s library is open.
async fn opened(d: &Daemon, name: &str) -> bool {
    let v = get_ok(&d.socket, "/1.0/plugins").await;
    v["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {v}"))["opened"]
        .as_bool()
        .unwrap()
}

/// The cache file's inode (a write replaces the file).
fn cache_inode(root: &Root) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.path().join(CACHE)).unwrap())
}

/// Starts and stops the daemon once, so the cache holds every library.
fn warm(root: &Root) -> Vec<String> {
    let mut d = Daemon::start(root, &[]);
    let l = d.loaded();
    d.terminate();
    assert!(root.path().join(CACHE).exists());
    l
}

#[tokio::test]
async fn a_second_start_opens_only_what_must_run_and_the_rest_on_first_call() {
    let root = root_with_providers();
    root.install_plugin(&built_plugin("incus_osd_plugin_iscsi"), "iscsi");
    assert_eq!(warm(&root), ["fixture", "fixture-b", "iscsi"]);
    let written = cache_inode(&root);

    let d = Daemon::start(&root, &[]);
    // Services always open; the selected provider is upstream's default `images`, not
    // installed here.
    assert_eq!(d.loaded(), ["iscsi"], "{}", d.log());
    assert_eq!(
        cache_inode(&root),
        written,
        "an unchanged cache is not written again"
    );
    assert!(!opened(&d, "fixture").await);
    // Listings answer from the cached manifests.
    let v = get_ok(&d.socket, "/1.0/plugins").await;
    assert_eq!(v["loaded"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["failed"], json!([]));

    // A first call opens it, once, however many arrive together.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let socket = d.socket.clone();
        calls.spawn(async move { get_ok(&socket, "/1.0/system/provider/fixture/calls").await });
    }
    while let Some(v) = calls.join_next().await {
        let v = v.unwrap();
        assert!(v.is_array(), "{v}");
    }
    assert_eq!(d.loaded(), ["fixture", "iscsi"]);
    assert_eq!(d.log().matches("deferred=true").count(), 1);
    // Both were unchanged since their checks passed at the first start: the layout check
    // (the slowest step) is not repeated, every other check is.
    assert_eq!(
        d.log().matches("layout check not repeated").count(),
        2,
        "{}",
        d.log()
    );
    assert!(opened(&d, "fixture").await);
    assert!(!opened(&d, "fixture-b").await);
}

#[tokio::test]
async fn selecting_a_deferred_provider_opens_it_and_the_next_start_opens_it_at_once() {
    let root = root_with_providers();
    warm(&root);
    let mut d = Daemon::start(&root, &[]);
    assert!(d.loaded().is_empty());
    let body = json!({"config": {"name": "fixture-b", "config": {}}}).to_string();
    let (status, v) = request(&d.socket, "PUT", "/1.0/system/provider", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(d.loaded(), ["fixture-b"]);
    d.terminate();

    let d = Daemon::start(&root, &[]);
    assert_eq!(
        d.loaded(),
        ["fixture-b"],
        "the selected provider opens at start"
    );
}

#[tokio::test]
async fn a_changed_library_or_another_daemon_build_is_opened_again() {
    let root = root_with_providers();
    warm(&root);
    // Touched: its identity (mtime, ctime) changed.
    let lib = root.plugin_dir().join("libincus_osd_plugin_fixture.so");
    let f = std::fs::File::options().append(true).open(&lib).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let mut d = Daemon::start(&root, &[]);
    assert_eq!(d.loaded(), ["fixture"]);
    d.terminate();
    let mut d = Daemon::start(&root, &[]);
    assert!(d.loaded().is_empty(), "recorded again");
    d.terminate();

    // A cache written by another build (here: another plugin-api version) is not used.
    let path = root.path().join(CACHE);
    let mut cache: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cache["daemon"]["api_version"] = json!("0.9.0");
    std::fs::write(&path, cache.to_string()).unwrap();
    let mut d = Daemon::start(&root, &[]);
    assert_eq!(d.loaded(), ["fixture", "fixture-b"]);
    d.terminate();

    // Nor a corrupt one; the daemon starts and rewrites it.
    std::fs::write(&path, b"{not json").unwrap();
    let mut d = Daemon::start(&root, &[]);
    assert_eq!(d.loaded(), ["fixture", "fixture-b"]);
    d.terminate();
    let d = Daemon::start(&root, &[]);
    assert!(d.loaded().is_empty());
}

#[tokio::test]
async fn a_deferred_library_replaced_while_running_fails_its_first_call_and_is_listed_failed() {
    let root = root_with_providers();
    warm(&root);
    let d = Daemon::start(&root, &[]);
    // Replaced by another plugin's library after the daemon registered it.
    let lib = root.plugin_dir().join("libincus_osd_plugin_fixture.so");
    std::fs::remove_file(&lib).unwrap();
    std::fs::copy(built_plugin("fixture_provider_b"), &lib).unwrap();

    let (status, v) = request(&d.socket, "GET", "/1.0/system/provider/fixture/calls", "").await;
    assert_eq!(status, 500, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("plugin 'fixture'") && msg.contains("no longer the one registered at start"),
        "{msg}"
    );
    // Again: the same answer, without opening it again.
    let (status, _) = request(&d.socket, "GET", "/1.0/system/provider/fixture/calls", "").await;
    assert_eq!(status, 500);
    let v = get_ok(&d.socket, "/1.0/plugins").await;
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["name"], "fixture");
    let listed = v["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fixture")
        .unwrap();
    assert_eq!(listed["opened"], false);
    assert!(listed["degraded"]
        .as_str()
        .unwrap()
        .contains("failed to open on first use"));
    // The other one still works.
    assert!(get_ok(&d.socket, "/1.0/system/provider/fixture-b/calls")
        .await
        .is_array());
}

#[tokio::test]
async fn installed_applications_are_opened_at_start_and_the_others_deferred() {
    let root = Root::new();
    for (lib, name) in [
        ("incus_osd_plugin_application_incus", "application_incus"),
        (
            "incus_osd_plugin_application_openfga",
            "application_openfga",
        ),
    ] {
        root.install_plugin(&built_plugin(lib), name);
    }
    root.install_application("incus", "202511041800");
    assert_eq!(warm(&root), ["incus", "openfga"]);
    let mut d = Daemon::start(&root, &[]);
    assert_eq!(d.loaded(), ["incus"]);
    assert!(get_ok(&d.socket, "/1.0/applications/incus").await["state"].is_object());
    d.terminate();

    root.install_application("openfga", "202511041800");
    let d = Daemon::start(&root, &[]);
    assert_eq!(d.loaded(), ["incus", "openfga"]);
}
