//! The lifecycle in process (tier 1): plugins compiled into the test, the real router,
//! registry and action loop, and a systemd that does what the test says.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use incus_osd::api::App;
use incus_osd::lifecycle::{self, Phase, StopReason};
use incus_osd::platform::systemd::{PowerAction, Systemd, UnitAction, Units};
use incus_osd::platform::PlatformError;
use incus_osd::plugins::Run;
use incus_osd::testing::TestApp;
use plugin_api::sdk::{Host, Result};
use plugin_api::{Hook, Kind, Service, Undo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A service whose start and stop take as long as its saved config says.
#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct SlowConfig {
    start_ms: u64,
    stop_ms: u64,
    note: String,
}

macro_rules! slow_service {
    ($ty:ident, $name:literal) => {
        struct $ty;
        impl Service for $ty {
            const NAME: &'static str = $name;
            type Config = SlowConfig;
            type State = Value;
            fn new(_: Host) -> Result<Self> {
                Ok($ty)
            }
            fn state(&self, _: &SlowConfig) -> Result<Value> {
                Ok(json!({}))
            }
            fn enabled(_: &SlowConfig) -> bool {
                true
            }
            fn update(&self, _: &mut Undo, _: &SlowConfig, _: &SlowConfig) -> Result<()> {
                Ok(())
            }
            fn start(&self, _: &mut Undo, c: &SlowConfig) -> Result<()> {
                std::thread::sleep(Duration::from_millis(c.start_ms));
                Ok(())
            }
            fn stop(&self, _: &mut Undo, c: &SlowConfig) -> Result<()> {
                std::thread::sleep(Duration::from_millis(c.stop_ms));
                Ok(())
            }
        }
    };
}

slow_service!(Base, "base");
slow_service!(OnBase, "on-base");
slow_service!(Free, "free");

/// A test app with `base`, `on-base` (depending on base) and `free`, whose saved configs
/// are `configs`.
fn three(configs: Value) -> TestApp {
    let t = TestApp::new();
    std::fs::create_dir_all(t.root().join("var/lib/incus-os")).unwrap();
    std::fs::write(
        t.root().join("var/lib/incus-os/state.json"),
        json!({"schema_version": 1, "plugins": configs}).to_string(),
    )
    .unwrap();
    let mut on_base =
        plugin_api::sdk::__service_manifest::<OnBase>("1.0.0", plugin_api::API_VERSION);
    on_base.dependencies.push("base".into());
    t.service::<Base>()
        .service::<Free>()
        .add(on_base, plugin_api::sdk::__service_instance::<OnBase>)
}

async fn call(r: &Router, method: &str, uri: &str, body: &str) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn state(app: &App, name: &str) -> Run {
    app.registry.get(Kind::Service, name).unwrap().run_state()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_plugin_waits_for_its_dependencies_start_only() {
    let (r, app, _d) = three(json!({"base": {"config": {"start_ms": 800}}}))
        .not_ready()
        .router();
    let starting = tokio::spawn({
        let app = app.clone();
        async move { lifecycle::start_plugins(&app).await }
    });
    until("free started", || state(&app, "free") == Run::Started).await;
    assert_eq!(state(&app, "base"), Run::Starting);
    assert_eq!(state(&app, "on-base"), Run::Pending, "waits for base");
    // free takes changes now; base's change waits for base's start.
    let t = Instant::now();
    assert_eq!(
        call(&r, "PUT", "/1.0/services/free", r#"{"config":{}}"#)
            .await
            .0,
        200
    );
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let (s, _) = call(
        &r,
        "PUT",
        "/1.0/services/base",
        r#"{"config":{"note":"x"}}"#,
    )
    .await;
    assert_eq!(s, 200);
    assert_ne!(
        state(&app, "base"),
        Run::Starting,
        "the change waited for the start"
    );
    starting.await.unwrap();
    for p in ["base", "on-base", "free"] {
        assert_eq!(state(&app, p), Run::Started, "{p}");
    }
}

#[tokio::test]
async fn host_changes_wait_for_start_up_and_plugin_changes_for_their_plugin() {
    let (r, app, _d) = three(json!({}))
        .systemd(Arc::new(PowerGate {
            verdict: Mutex::new(mpsc::channel().1),
        }))
        .not_ready()
        .router();
    // Not started yet: a plugin change waits for its plugin, a host change for start-up.
    let plugin_put = tokio::spawn({
        let r = r.clone();
        async move { call(&r, "PUT", "/1.0/services/free", r#"{"config":{}}"#).await }
    });
    let host_put = tokio::spawn({
        let r = r.clone();
        async move {
            let body = r#"{"config":{"syslog":{"address":"","protocol":"","log_format":""}}}"#;
            call(&r, "PUT", "/1.0/system/logging", body).await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!plugin_put.is_finished() && !host_put.is_finished());
    lifecycle::start_plugins(&app).await;
    assert_eq!(plugin_put.await.unwrap().0, 200);
    assert!(!host_put.is_finished(), "start-up has not finished yet");
    app.lifecycle.move_to(Phase::Ready).unwrap();
    let (s, v) = host_put.await.unwrap();
    assert_eq!(s, 200, "{v}");
}

/// A systemd whose power requests wait for the test's verdict.
struct PowerGate {
    verdict: Mutex<mpsc::Receiver<bool>>,
}

impl Units for PowerGate {
    fn unit(&self, _: UnitAction, _: &str) -> std::result::Result<String, PlatformError> {
        Ok(String::new())
    }
    fn daemon_reload(&self) -> std::result::Result<(), PlatformError> {
        Ok(())
    }
}

impl Systemd for PowerGate {
    fn power(&self, _: PowerAction) -> std::result::Result<(), PlatformError> {
        match self.verdict.lock().unwrap().recv() {
            Ok(true) => Ok(()),
            _ => Err(PlatformError("refused by the test".into())),
        }
    }
    fn reachable(&self) -> std::result::Result<(), PlatformError> {
        Ok(())
    }
}

#[tokio::test]
async fn changes_are_refused_while_plugins_stop_for_a_reboot() {
    let (tx, rx) = mpsc::channel();
    let (r, app, _d) = three(json!({}))
        .systemd(Arc::new(PowerGate {
            verdict: Mutex::new(rx),
        }))
        .router();
    tokio::spawn(incus_osd::daemon::action_loop(
        app.clone(),
        app.take_power_requests().unwrap(),
    ));
    assert_eq!(call(&r, "POST", "/1.0/system/:reboot", "").await.0, 200);
    until("plugins stopped for the reboot", || {
        app.lifecycle.phase() == Phase::Stopping(StopReason::Reboot)
            && ["base", "on-base", "free"]
                .iter()
                .all(|p| state(&app, p) == Run::Stopped)
    })
    .await;
    // Through the API: refused at once, saying why; reads still answer.
    let (s, v) = call(
        &r,
        "PUT",
        "/1.0/services/free",
        r#"{"config":{"note":"x"}}"#,
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(v["error"], "the system is rebooting: changes are refused");
    assert_eq!(call(&r, "POST", "/1.0/system/:poweroff", "").await.0, 503);
    assert_eq!(call(&r, "GET", "/1.0/services/free", "").await.0, 200);
    let (_, v) = call(&r, "GET", "/1.0", "").await;
    assert_eq!(v["metadata"]["environment"]["system_is_ready"], false);
    // A change that got past the API before the reboot began cannot reach the plugin.
    let e = app
        .registry
        .get(Kind::Service, "free")
        .unwrap()
        .hook(Hook::Put, Bytes::from_static(br#"{"config":{"note":"x"}}"#))
        .await
        .unwrap_err();
    assert_eq!(e.status, 503);
    assert!(
        e.message.contains("plugin 'free' is stopped"),
        "{}",
        e.message
    );
    // systemd refuses the reboot: ready again, plugins started again, changes taken.
    tx.send(false).unwrap();
    until("ready again", || {
        app.is_ready() && state(&app, "on-base") == Run::Started
    })
    .await;
    let (s, v) = call(
        &r,
        "PUT",
        "/1.0/services/free",
        r#"{"config":{"note":"y"}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(&r, "GET", "/1.0/services/free", "").await;
    assert_eq!(v["metadata"]["config"]["note"], "y");
}

#[tokio::test]
async fn stop_hooks_keep_to_their_deadline_and_the_whole_budget() {
    let (_, app, _d) = three(json!({
        "base": {"config": {"stop_ms": 2000}},
        "free": {"config": {"stop_ms": 2000}},
    }))
    .router();
    // Each stop hook gets at most its share...
    let t = Instant::now();
    app.registry
        .stop_all(Duration::from_secs(60), Duration::from_millis(300))
        .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for p in ["base", "free"] {
        let why = app
            .registry
            .get(Kind::Service, p)
            .unwrap()
            .degraded()
            .unwrap();
        assert!(
            why.contains("'stop' did not finish within 0.3s"),
            "{p}: {why}"
        );
    }
    // ...and all of them together the budget.
    let (_, app, _d) = three(json!({
        "base": {"config": {"stop_ms": 2000}},
        "free": {"config": {"stop_ms": 2000}},
    }))
    .router();
    let t = Instant::now();
    app.registry
        .stop_all(Duration::from_millis(400), Duration::from_secs(15))
        .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for p in ["base", "on-base", "free"] {
        assert_eq!(state(&app, p), Run::Stopped, "{p}");
    }
}

/// A service whose `get` panics while its config says so.
#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct FlakyConfig {
    panic: bool,
}

struct Flaky;

impl Service for Flaky {
    const NAME: &'static str = "flaky";
    type Config = FlakyConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Flaky)
    }
    fn state(&self, c: &FlakyConfig) -> Result<Value> {
        assert!(!c.panic, "flaky: deliberate panic");
        Ok(json!({}))
    }
    fn enabled(_: &FlakyConfig) -> bool {
        true
    }
    fn update(&self, _: &mut Undo, _: &FlakyConfig, _: &FlakyConfig) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panic_keeps_the_plugin_degraded_until_the_daemon_restarts() {
    let (r, app, _d) = TestApp::new().service::<Flaky>().router();
    let put = |panic: bool| json!({"config": {"panic": panic}}).to_string();
    assert_eq!(
        call(&r, "PUT", "/1.0/services/flaky", &put(true)).await.0,
        200
    );
    assert_eq!(call(&r, "GET", "/1.0/services/flaky", "").await.0, 500);
    assert_eq!(
        call(&r, "PUT", "/1.0/services/flaky", &put(false)).await.0,
        200
    );
    assert_eq!(call(&r, "GET", "/1.0/services/flaky", "").await.0, 200);
    let why = app
        .registry
        .get(Kind::Service, "flaky")
        .unwrap()
        .degraded()
        .unwrap();
    assert!(why.contains("deliberate panic"), "{why}");
}
