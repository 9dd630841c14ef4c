//! The application plugins as built, on the daemon under a development root (offline: no
//! units, no commands): Incus installed as an install leaves it, served by its plugin
//! with the host's state around it, its action answers, a PUT the offline system cannot
//! apply changing nothing, and the primary rule across the primary plugins.

use incus_osd_integration::{built_plugin, get_ok, request, Daemon, Root};
use serde_json::json;

fn root_with_primaries() -> Root {
    let root = Root::new();
    for (lib, name) in [
        ("incus_osd_plugin_application_incus", "application_incus"),
        (
            "incus_osd_plugin_application_migration_manager",
            "application_migration_manager",
        ),
        (
            "incus_osd_plugin_application_openfga",
            "application_openfga",
        ),
    ] {
        root.install_plugin(&built_plugin(lib), name);
    }
    root.install_application("incus", "202511041800");
    root
}

#[tokio::test]
async fn installed_incus_is_served_by_its_plugin_with_the_hosts_state_around_it() {
    let root = root_with_primaries();
    let d = Daemon::start(&root, &[]);
    let apps = get_ok(&d.socket, "/1.0/applications").await;
    assert_eq!(apps, json!(["/1.0/applications/incus"]));
    let incus = get_ok(&d.socket, "/1.0/applications/incus").await;
    // `incus --version` cannot run offline: the host shows the image version.
    assert_eq!(
        incus,
        json!({
            "state": {"is_primary": true, "initialized": false,
                      "friendly_version": "202511041800", "version": "202511041800",
                      "available_versions": ["202511041800"]},
            "config": {"lxcfs": {"cpu_shares": false, "load_average": false}}
        })
    );

    let (status, body) = request(
        &d.socket,
        "POST",
        "/1.0/applications/incus/:action",
        r#"{"action": "initialize-ceph-cluster", "config": {"network": "meshbr0"}}"#,
    )
    .await;
    // Incus does not run here: the action says so, naming its first call.
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Incus: GET /1.0: ")),
        "{body}"
    );
    let (status, body) = request(
        &d.socket,
        "POST",
        "/1.0/applications/incus/:action",
        r#"{"action": "add-drive"}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("unsupported action 'add-drive'"))
    );

    // Offline, systemd cannot be told: the PUT fails and nothing stays changed.
    let (status, body) = request(
        &d.socket,
        "PUT",
        "/1.0/applications/incus",
        r#"{"config": {"lxcfs": {"cpu_shares": true, "load_average": false}}}"#,
    )
    .await;
    assert_ne!(status, 200, "{body}");
    assert!(!root.path().join("etc/default/incus").exists());
    let incus = get_ok(&d.socket, "/1.0/applications/incus").await;
    assert_eq!(incus["config"]["lxcfs"]["cpu_shares"], false);
}

#[tokio::test]
async fn the_primary_plugins_keep_to_one_primary_and_incus_cannot_be_removed() {
    let root = root_with_primaries();
    let d = Daemon::start(&root, &[]);
    let (status, body) = request(
        &d.socket,
        "POST",
        "/1.0/applications",
        r#"{"name": "migration-manager"}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("a primary application is already installed"))
    );
    let (status, body) = request(&d.socket, "POST", "/1.0/applications/incus/:remove", "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("cannot remove a primary application"))
    );
    // OpenFGA is loaded but not installed.
    let (status, _) = request(&d.socket, "GET", "/1.0/applications/openfga", "").await;
    assert_eq!(status, 404);
}

/// An application's action runs as long as it takes, as upstream answers it when it is
/// done (building a Ceph cluster pulls images and makes containers): it is not cut at
/// `--plugin-change-timeout` as a PUT is, and the plugin stays healthy.
#[tokio::test]
async fn an_action_outlasting_the_change_timeout_is_answered_when_it_is_done() {
    let root = Root::new();
    root.install_fixture("backup_app", "backup_app");
    root.install_application("backup-app", "202511041800");
    let d = Daemon::start(&root, &["--plugin-change-timeout", "1"]);
    let started = std::time::Instant::now();
    let (status, body) = request(
        &d.socket,
        "POST",
        "/1.0/applications/backup-app/:action",
        r#"{"action": "wait", "config": {"ms": "2500"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", d.log());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let plugins = get_ok(&d.socket, "/1.0/plugins").await;
    let app = plugins["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "backup-app")
        .unwrap()
        .clone();
    assert!(app["degraded"].is_null(), "{app}");
}
