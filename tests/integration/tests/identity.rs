//! A plugin is its kind and its name together, on the daemon with libraries as built: the
//! `debug` update provider and an application named `debug` (`tests/fixtures/app-debug`)
//! load side by side, each keeps its own config across a restart, and a second
//! application of the same name is still refused as a duplicate.

use incus_osd_integration::{built_plugin, get_ok, request, Daemon, Root};
use serde_json::{json, Value};

fn root_with_both() -> Root {
    let root = Root::new();
    root.install_plugin(
        &built_plugin("incus_osd_plugin_provider_debug"),
        "provider_debug",
    );
    root.install_fixture("app_debug", "app_debug");
    root.install_application("debug", "202601010000");
    root
}

fn state(root: &Root) -> Value {
    serde_json::from_slice(&std::fs::read(root.state_file()).unwrap()).unwrap()
}

#[tokio::test]
async fn the_debug_provider_and_a_debug_application_load_side_by_side_through_a_restart() {
    let root = root_with_both();
    let d = Daemon::start(&root, &[]);
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    let loaded: Vec<(&str, &str)> = listing["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        loaded,
        [("application", "debug"), ("provider", "debug")],
        "{listing}"
    );
    assert_eq!(listing["failed"], json!([]), "{listing}");

    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/system/provider",
        r#"{"config": {"name": "debug", "config": {}}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/applications/debug",
        r#"{"config": {"note": "the application's"}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // Each in its own slot of the state.
    let saved = state(&root);
    assert_eq!(saved["plugins"]["provider/debug"], json!({"config": {}}));
    assert_eq!(
        saved["plugins"]["application/debug"],
        json!({"config": {"note": "the application's"}})
    );

    drop(d);
    let d = Daemon::start(&root, &[]);
    let provider = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(provider["config"]["name"], "debug", "{provider}");
    let apps = get_ok(&d.socket, "/1.0/applications").await;
    assert_eq!(apps, json!(["/1.0/applications/debug"]));
    let app = get_ok(&d.socket, "/1.0/applications/debug").await;
    assert_eq!(
        app["state"]["friendly_version"], "202601010000 (the application)",
        "{app}"
    );
    assert_eq!(app["config"], json!({"note": "the application's"}));
    // The debug provider refuses a config key: its slot is not the application's.
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/system/provider",
        r#"{"config": {"name": "debug", "config": {"note": "x"}}}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let app = get_ok(&d.socket, "/1.0/applications/debug").await;
    assert_eq!(app["config"]["note"], "the application's");
}

#[tokio::test]
async fn a_second_plugin_of_the_same_kind_and_name_is_still_refused() {
    let root = root_with_both();
    root.install_fixture("app_debug", "zz_app_debug");
    let d = Daemon::start(&root, &[]);
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    assert_eq!(listing["loaded"].as_array().unwrap().len(), 2, "{listing}");
    let failed = listing["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{listing}");
    assert_eq!(
        (&failed[0]["check"], &failed[0]["name"], &failed[0]["kind"]),
        (
            &json!("duplicate-name"),
            &json!("debug"),
            &json!("application")
        )
    );
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("libincus_osd_plugin_zz_app_debug.so is not loaded: a plugin of that name was already loaded from")
            && reason.contains("libincus_osd_plugin_app_debug.so"),
        "{reason}"
    );
}

/// A state the previous daemon wrote (schema 1: the selected provider's document at its
/// bare name) is upgraded: the provider keeps its config and its registration.
#[tokio::test]
async fn a_provider_config_saved_by_the_previous_daemon_is_found_after_the_upgrade() {
    let root = Root::new();
    root.install_fixture("provider", "fixture");
    std::fs::create_dir_all(root.state_file().parent().unwrap()).unwrap();
    std::fs::write(
        root.state_file(),
        json!({
            "schema_version": 1,
            "system": {"provider": {"name": "fixture", "registered": true}},
            "plugins": {"fixture": {"config": {"contents": {"kept": "yes"}}}}
        })
        .to_string(),
    )
    .unwrap();
    let d = Daemon::start(&root, &[]);
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(
        v,
        json!({
            "config": {"name": "fixture", "config": {"contents": {"kept": "yes"}}},
            "state": {"registered": true}
        })
    );
    let saved = state(&root);
    assert_eq!(saved["schema_version"], incus_osd::state::SCHEMA_VERSION);
    assert!(saved["plugins"].get("fixture").is_none(), "{saved}");
}
