//! `PUT /1.0/system/logging` with a working (fake) systemd: changes are serialized and
//! journaled, so the stored config and `netlogd.conf` always agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::api::App;
use incus_osd::platform::systemd::{PowerAction, Systemd, UnitAction, Units};
use incus_osd::platform::PlatformError;
use incus_osd::testing::TestApp;
use serde_json::{json, Value};
use tower::ServiceExt;

const CONF: &str = "etc/systemd/netlogd.conf";
const UNIT: &str = "systemd-netlogd.service";

/// A systemd that keeps each unit's active state, takes a little time to restart (so that
/// unserialized changes would interleave), and fails the operation it is told to.
#[derive(Default)]
struct FakeSystemd {
    active: Mutex<BTreeMap<String, bool>>,
    fail: Mutex<Option<UnitAction>>,
    calls: AtomicUsize,
}

impl FakeSystemd {
    fn fail(&self, action: Option<UnitAction>) {
        *self.fail.lock().unwrap() = action;
    }
    fn is_active(&self, unit: &str) -> bool {
        self.active
            .lock()
            .unwrap()
            .get(unit)
            .copied()
            .unwrap_or(false)
    }
}

impl Units for FakeSystemd {
    fn unit(&self, action: UnitAction, unit: &str) -> Result<String, PlatformError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if action == UnitAction::ActiveState {
            let on = self.is_active(unit);
            return Ok(if on { "active" } else { "inactive" }.into());
        }
        std::thread::sleep(Duration::from_micros(200 * (n % 5) as u64));
        if *self.fail.lock().unwrap() == Some(action) {
            if action == UnitAction::Restart {
                self.active.lock().unwrap().insert(unit.into(), false);
            }
            return Err(PlatformError(format!(
                "Job for {unit} failed ({})",
                action.as_str()
            )));
        }
        let on = matches!(action, UnitAction::Start | UnitAction::Restart);
        self.active.lock().unwrap().insert(unit.into(), on);
        Ok(String::new())
    }
    fn daemon_reload(&self) -> Result<(), PlatformError> {
        Ok(())
    }
}

impl Systemd for FakeSystemd {
    fn power(&self, _: PowerAction) -> Result<(), PlatformError> {
        Ok(())
    }
    fn reachable(&self) -> Result<(), PlatformError> {
        Ok(())
    }
}

fn setup() -> (Router, Arc<App>, Arc<FakeSystemd>, tempfile::TempDir) {
    let systemd = Arc::new(FakeSystemd::default());
    let (r, app, dir) = TestApp::new().systemd(systemd.clone()).router();
    (r, app, systemd, dir)
}

async fn call(r: &Router, method: &str, body: String) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri("/1.0/system/logging")
        .body(Body::from(body))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn put(r: &Router, address: &str) -> (u16, Value) {
    let body = json!({"config": {"syslog": {"address": address, "protocol": "tcp"}}});
    call(r, "PUT", body.to_string()).await
}

async fn stored_address(r: &Router) -> String {
    let (_, v) = call(r, "GET", String::new()).await;
    v["metadata"]["config"]["syslog"]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `Address=` in `netlogd.conf`, `""` when there is no file.
fn file_address(app: &App) -> String {
    match std::fs::read_to_string(app.root.join(CONF)) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("Address="))
            .unwrap()
            .to_string(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_leave_the_stored_config_and_the_file_in_agreement() {
    let (r, app, systemd, _d) = setup();
    for round in 0..50 {
        let puts: Vec<_> = (1..=8)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { put(&r, &format!("10.0.{round}.{i}")).await })
            })
            .collect();
        for p in puts {
            let (status, v) = p.await.unwrap();
            assert_eq!(status, 200, "round {round}: {v}");
        }
        let stored = stored_address(&r).await;
        assert!(stored.starts_with(&format!("10.0.{round}.")), "{stored}");
        assert_eq!(stored, file_address(&app), "round {round}");
        assert!(systemd.is_active(UNIT));
    }
}

#[tokio::test]
async fn a_failing_restart_leaves_the_old_file_config_and_unit_state() {
    let (r, app, systemd, _d) = setup();
    // From nothing: the file is removed again and the unit stopped again.
    systemd.fail(Some(UnitAction::Restart));
    let (status, v) = put(&r, "10.0.0.1").await;
    assert_eq!(status, 500);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Job for systemd-netlogd.service failed"),
        "{v}"
    );
    assert!(!app.root.join(CONF).exists());
    assert_eq!(stored_address(&r).await, "");
    assert!(!systemd.is_active(UNIT));

    // From a working config: the old file is back and the stored config unchanged.
    systemd.fail(None);
    assert_eq!(put(&r, "10.0.0.1").await.0, 200);
    let before = std::fs::read_to_string(app.root.join(CONF)).unwrap();
    systemd.fail(Some(UnitAction::Restart));
    assert_eq!(put(&r, "10.0.0.2").await.0, 500);
    assert_eq!(
        std::fs::read_to_string(app.root.join(CONF)).unwrap(),
        before
    );
    assert_eq!(stored_address(&r).await, "10.0.0.1");

    // Turning forwarding off when the stop fails: the file comes back.
    systemd.fail(None);
    assert_eq!(put(&r, "10.0.0.1").await.0, 200);
    systemd.fail(Some(UnitAction::Stop));
    assert_eq!(put(&r, "").await.0, 500);
    assert_eq!(
        std::fs::read_to_string(app.root.join(CONF)).unwrap(),
        before
    );
    assert_eq!(stored_address(&r).await, "10.0.0.1");
    assert!(systemd.is_active(UNIT), "restarted on the old file");
}

#[tokio::test]
async fn a_failing_save_puts_the_file_and_the_unit_back() {
    let (r, app, systemd, _d) = setup();
    assert_eq!(put(&r, "10.0.0.1").await.0, 200);
    let before = std::fs::read_to_string(app.root.join(CONF)).unwrap();
    let restarts = systemd.calls.load(Ordering::SeqCst);
    // The state file cannot be replaced any more: a directory with content in its place.
    let state = app.root.join("var/lib/incus-os/state.json");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(state.join("x")).unwrap();

    let (status, v) = put(&r, "10.0.0.2").await;
    assert_eq!(status, 500, "{v}");
    assert_eq!(
        std::fs::read_to_string(app.root.join(CONF)).unwrap(),
        before
    );
    assert_eq!(stored_address(&r).await, "10.0.0.1");
    // Restarted for the new file, and again for the old one.
    assert!(systemd.calls.load(Ordering::SeqCst) >= restarts + 3);
    assert!(systemd.is_active(UNIT));
}
