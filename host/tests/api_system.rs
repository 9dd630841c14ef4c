//! Router tests (tier 1) for `/1.0/debug`, `/1.0/system` and `/internal`, over a temporary
//! root with no systemd reachable (offline). The paths that need a real systemd are
//! covered by the tier-3 tests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::testing::TestApp;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call_h(
    r: &Router,
    method: &str,
    uri: &str,
    body: &str,
    proxy: Option<&str>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(p) = proxy {
        b = b.header("X-IncusOS-Proxy", p);
    }
    let resp = r
        .clone()
        .oneshot(b.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn call(r: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    call_h(r, method, uri, body, None).await
}

fn err(v: &(StatusCode, Value)) -> (u16, String) {
    assert_eq!(v.1["type"], "error", "{}", v.1);
    assert_eq!(v.1["error_code"], v.0.as_u16());
    (v.0.as_u16(), v.1["error"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn debug_lists_the_entries_it_serves_in_upstreams_order() {
    let (r, _, _d) = TestApp::new().router();
    let (s, v) = call_h(&r, "GET", "/1.0/debug", "", Some("/os")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["metadata"],
        json!([
            "/os/1.0/debug/kernel",
            "/os/1.0/debug/log",
            "/os/1.0/debug/processes",
            "/os/1.0/debug/:run-script",
            "/os/1.0/debug/secureboot"
        ])
    );
}

#[tokio::test]
async fn system_lists_exactly_upstreams_eight_entries_and_unbuilt_ones_say_so() {
    let (r, _, _d) = TestApp::new().router();
    let (_, v) = call(&r, "GET", "/1.0/system", "").await;
    let names: Vec<&str> = v["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().strip_prefix("/1.0/system/").unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kernel",
            "logging",
            "network",
            "provider",
            "resources",
            "security",
            "storage",
            "update"
        ]
    );
    assert_eq!(
        err(&call(&r, "GET", "/1.0/system/nonsense", "").await),
        (404, "not found".into())
    );
    assert_eq!(
        err(&call(&r, "POST", "/1.0/system/:nonsense", "").await),
        (501, "not implemented".into())
    );
}

#[tokio::test]
async fn write_message_validates_its_body() {
    let (r, _, _d) = TestApp::new().router();
    for path in [
        "/internal/tui/:write-message",
        "/1.0/debug/tui/:write-message",
    ] {
        let (s, v) = call(
            &r,
            "POST",
            path,
            r#"{"level":"WARN","message":"Test message two"}"#,
        )
        .await;
        assert_eq!((s.as_u16(), &v["metadata"]), (200, &json!({})), "{path}");
        let (s, _) = call(&r, "POST", path, r#"{"message":"no level means INFO"}"#).await;
        assert_eq!(s, 200);
        assert_eq!(
            err(&call(&r, "POST", path, r#"{"level":"INFO","message":""}"#).await),
            (400, "no log message provided".into())
        );
        assert_eq!(
            err(&call(&r, "POST", path, r#"{"level":4,"message":"x"}"#).await),
            (400, "invalid syntax".into())
        );
        assert_eq!(
            err(&call(&r, "POST", path, r#"{"level":"LOUD","message":"x"}"#).await),
            (400, r#"slog: level string "LOUD": unknown name"#.into())
        );
        assert_eq!(err(&call(&r, "POST", path, "").await).0, 400);
        assert_eq!(err(&call(&r, "GET", path, "").await).0, 501);
    }
    // Proxied requests never reach the internal endpoint.
    let v = call_h(
        &r,
        "POST",
        "/internal/tui/:write-message",
        r#"{"message":"x"}"#,
        Some("/os"),
    )
    .await;
    assert_eq!(err(&v), (403, "not authorized".into()));
}

#[tokio::test]
async fn logging_defaults_to_empty_fields_and_refuses_bad_values() {
    let (r, app, _d) = TestApp::new().router();
    let (_, v) = call(&r, "GET", "/1.0/system/logging", "").await;
    assert_eq!(
        v["metadata"],
        json!({"config": {"syslog": {"address": "", "protocol": "", "log_format": ""}}, "state": {}})
    );
    for (body, needle) in [
        (
            r#"{"config":{"syslog":{"address":"no such host!"}}}"#,
            "invalid syslog address",
        ),
        (
            r#"{"config":{"syslog":{"address":"10.0.0.1","protocol":"smoke"}}}"#,
            "invalid syslog protocol",
        ),
        (
            r#"{"config":{"syslog":{"address":"10.0.0.1","log_format":"xml"}}}"#,
            "invalid syslog log format",
        ),
        (
            r#"{"config":{"syslog":{"address":7}}}"#,
            "config.syslog.address",
        ),
        ("", "request body is empty"),
    ] {
        let (code, msg) = err(&call(&r, "PUT", "/1.0/system/logging", body).await);
        assert_eq!(code, 400, "{body}");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    assert!(!app.root.join("etc/systemd/netlogd.conf").exists());
}

#[tokio::test]
async fn logging_without_systemd_fails_clearly_and_leaves_nothing_behind() {
    let (r, app, _d) = TestApp::new().router();
    let body =
        r#"{"config":{"syslog":{"address":"127.0.0.1","protocol":"tcp","log_format":"rfc5424"}}}"#;
    let (code, msg) = err(&call(&r, "PUT", "/1.0/system/logging", body).await);
    assert_eq!(code, 500);
    assert!(
        msg.contains("cannot restart systemd-netlogd.service: systemd is not reachable"),
        "{msg}"
    );
    assert!(
        !app.root.join("etc/systemd/netlogd.conf").exists(),
        "file removed again"
    );
    let (_, v) = call(&r, "GET", "/1.0/system/logging", "").await;
    assert_eq!(v["metadata"]["config"]["syslog"]["address"], "");
}

#[tokio::test]
async fn power_actions_without_systemd_are_refused_not_faked() {
    let (r, _, _d) = TestApp::new().router();
    for (verb, what) in [
        (":reboot", "reboot"),
        (":poweroff", "poweroff"),
        (":suspend", "suspend"),
    ] {
        let (code, msg) = err(&call(&r, "POST", &format!("/1.0/system/{verb}"), "").await);
        assert_eq!(code, 503, "{verb}");
        assert!(
            msg.starts_with(&format!("cannot {what}: systemd is not reachable")),
            "{msg}"
        );
        assert_eq!(
            err(&call(&r, "GET", &format!("/1.0/system/{verb}"), "").await).0,
            501
        );
    }
}

#[tokio::test]
async fn debug_kernel_reads_the_root_prefix() {
    let t = TestApp::new().commands(std::sync::Arc::new(incus_osd::platform::exec::RealCommands));
    let w = |p: &str, d: &str| {
        let path = t.root().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    };
    w("proc/sys/kernel/osrelease", "6.1.0-test-amd64\n");
    // usbip_core is used by vhci_hcd: vhci_hcd depends on usbip_core.
    w(
        "proc/modules",
        "usbip_core 36864 1 vhci_hcd, Live 0x0\nvhci_hcd 65536 0 - Live 0x0\n",
    );
    let (r, _, _d) = t.router();
    let (s, v) = call(&r, "GET", "/1.0/debug/kernel", "").await;
    assert_eq!(s, 200, "{v}");
    let k = &v["metadata"];
    assert_eq!(k["version"], "6.1.0-test-amd64");
    assert_eq!(k["architecture"], std::env::consts::ARCH);
    assert_eq!(
        k["modules"],
        json!([
            {"name": "usbip_core", "dependencies": [], "in_use": true},
            {"name": "vhci_hcd", "dependencies": ["usbip_core"], "in_use": false}
        ])
    );
    // `x86_64_vN` where the x86-64 loader runs (at least `x86_64_v1`), else empty.
    let baseline = k["cpu_baseline"].as_str().unwrap();
    if cfg!(target_arch = "x86_64") {
        let level = baseline
            .strip_prefix("x86_64_v")
            .unwrap_or_else(|| panic!("{k}"));
        assert!(matches!(level, "1" | "2" | "3" | "4"), "{k}");
    } else {
        assert_eq!(baseline, "", "{k}");
    }
}

#[tokio::test]
async fn debug_processes_is_the_process_tree_as_text() {
    let (r, _, _d) = TestApp::new()
        .commands(std::sync::Arc::new(incus_osd::platform::exec::RealCommands))
        .router();
    let (s, v) = call(&r, "GET", "/1.0/debug/processes", "").await;
    assert_eq!(s, 200, "{v}");
    let text = v["metadata"].as_str().unwrap();
    assert!(text.starts_with("USER") && text.contains("PID"), "{text}");
}

/// The debug endpoints' commands go through the platform's command adapter: an offline
/// daemon (a dev or test root) refuses to run them and says why, and reports no CPU
/// baseline rather than one read from a tool it may not run.
#[tokio::test]
async fn debug_commands_are_refused_offline() {
    let t = TestApp::new();
    std::fs::create_dir_all(t.root().join("proc/sys/kernel")).unwrap();
    std::fs::write(t.root().join("proc/sys/kernel/osrelease"), "6.1.0\n").unwrap();
    let (r, _, _d) = t.router();
    let (s, v) = call(&r, "GET", "/1.0/debug/processes", "").await;
    assert_eq!(s, 500, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.starts_with("cannot run ps: offline"), "{err}");
    let (s, v) = call(&r, "GET", "/1.0/debug/kernel", "").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["cpu_baseline"], "", "{v}");
}

#[tokio::test]
async fn debug_log_refuses_bad_filters_and_reports_a_missing_journal() {
    let (r, _, _d) = TestApp::new().router();
    for q in [
        "unit=--all",
        "boot=yesterday",
        "entries=0",
        "since=--reverse",
    ] {
        assert_eq!(
            err(&call(&r, "GET", &format!("/1.0/debug/log?{q}"), "").await).0,
            400,
            "{q}"
        );
    }
    // No journal under this root: journalctl's own error, as a 500.
    let (code, msg) = err(&call(&r, "GET", "/1.0/debug/log?unit=incus-osd", "").await);
    assert_eq!(code, 500);
    assert!(msg.contains("journalctl"), "{msg}");
}
