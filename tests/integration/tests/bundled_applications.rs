//! The bundled applications without data of their own (`debug`, `gpu-support`) in the real
//! daemon, as built, installed under the root prefix: what a client sees of them through
//! the API (tier 2).

use incus_osd_integration::{built_plugin, get_ok, request, Daemon, Root};
use serde_json::{json, Value};

const VERSION: &str = "202601010000";

fn root() -> Root {
    let root = Root::new();
    for (lib, name) in [
        ("incus_osd_plugin_application_debug", "application_debug"),
        (
            "incus_osd_plugin_application_gpu_support",
            "application_gpu_support",
        ),
    ] {
        root.install_plugin(&built_plugin(lib), name);
    }
    root.install_application("debug", VERSION);
    root.install_application("gpu-support", VERSION);
    let firmware = root
        .path()
        .join("usr/lib/firmware/linux-firmware-gpu-version");
    std::fs::create_dir_all(firmware.parent().unwrap()).unwrap();
    std::fs::write(firmware, "20251111\n").unwrap();
    root
}

async fn post(d: &Daemon, path: &str, body: &str) -> (u16, Value) {
    request(&d.socket, "POST", path, body).await
}

#[tokio::test]
async fn their_state_config_and_friendly_versions() {
    let root = root();
    let d = Daemon::start(&root, &[]);
    assert_eq!(
        get_ok(&d.socket, "/1.0/applications").await,
        json!(["/1.0/applications/debug", "/1.0/applications/gpu-support"])
    );
    let debug = get_ok(&d.socket, "/1.0/applications/debug").await;
    assert_eq!(
        debug,
        json!({"state": {"is_primary": false, "initialized": true, "friendly_version": VERSION,
                         "version": VERSION, "available_versions": [VERSION]},
               "config": {}})
    );
    let gpu = get_ok(&d.socket, "/1.0/applications/gpu-support").await;
    assert_eq!(
        gpu["state"]["friendly_version"],
        format!("20251111 [{VERSION}]"),
        "{gpu}"
    );
    assert_eq!(gpu["config"], json!({}));
}

#[tokio::test]
async fn no_backup_no_action_and_no_config_keys() {
    let root = root();
    let d = Daemon::start(&root, &[]);
    for app in ["debug", "gpu-support"] {
        let base = format!("/1.0/applications/{app}");
        let (s, v) = post(&d, &format!("{base}/:backup"), "{}").await;
        assert_eq!(
            (s, v["error"].as_str()),
            (500, Some("not supported")),
            "{app}: {v}"
        );
        let (s, v) = post(&d, &format!("{base}/:action"), r#"{"action": "x"}"#).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (500, Some("not supported")),
            "{app}: {v}"
        );
        let (s, v) = request(&d.socket, "PUT", &base, r#"{"config": {"x": 1}}"#).await;
        assert_eq!(s, 400, "{app}: {v}");
        let (s, v) = request(&d.socket, "PUT", &base, r#"{"config": {}}"#).await;
        assert_eq!(s, 200, "{app}: {v}");
    }
}
