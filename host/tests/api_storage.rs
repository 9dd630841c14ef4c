//! Router tests (tier 1/2) for `/1.0/system/storage` and its actions, over a root with
//! three fake disks (sysfs, udev's database, `/dev` as plain files) and scripted
//! commands: `zpool`/`zfs` answer with JSON in OpenZFS's layout, and every command line
//! the daemon runs is recorded and checked exactly. (This kernel has no ZFS and no
//! device-mapper: the real tools run in the tier-3 tests where they can.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt;
use incus_osd::api::App;
use incus_osd::system::storage::runtime::{self, Clock};
use incus_osd::testing::{fake_disks, fake_file, plain_drives, Script, TestApp};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(r: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// The status and error text of an error answer.
fn err(v: &(StatusCode, Value)) -> (u16, String) {
    assert_eq!(v.1["type"], "error", "{}", v.1);
    assert_eq!(v.1["error_code"], v.0.as_u16());
    (v.0.as_u16(), v.1["error"].as_str().unwrap().to_string())
}

fn ok(v: &(StatusCode, Value)) {
    assert_eq!(v.0, 200, "{}", v.1);
}

const ROOT_ID: &str = "/dev/disk/by-id/scsi-incus_root";
const DISK1: &str = "/dev/disk/by-id/scsi-incus_disk1";
const DISK2: &str = "/dev/disk/by-id/scsi-incus_disk2";

struct Env {
    r: Router,
    app: Arc<App>,
    script: Script,
    dir: tempfile::TempDir,
}

impl Env {
    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }
    fn schedule(&self) -> String {
        self.app
            .with_state(|s| s.doc().system.storage.scrub_schedule.clone())
    }
}

fn env_with(t: TestApp) -> Env {
    fake_disks(t.root());
    let script = Script::default();
    plain_drives(&script);
    let (r, app, dir) = t.commands(Arc::new(script.clone())).router();
    Env {
        r,
        app,
        script,
        dir,
    }
}

fn env() -> Env {
    env_with(TestApp::new())
}

fn disk(name: &str) -> Value {
    json!({"name": name, "vdev_type": "disk", "state": "ONLINE",
           "alloc_space": 1000, "total_space": 10200547328u64, "def_space": 10200547328u64})
}

/// A pool in `zpool status -jp --json-int`'s layout; `scan`: its scan state, if any.
fn pool_json(name: &str, members: &[&str], scan: Option<&str>) -> (String, Value) {
    let vdevs: serde_json::Map<String, Value> =
        members.iter().map(|m| (m.to_string(), disk(m))).collect();
    let mut p = json!({"name": name, "state": "ONLINE", "error_count": 0,
                       "vdevs": {name: {"name": name, "vdevs": vdevs}}});
    if let Some(state) = scan {
        p["scan_stats"] = json!({"function": "SCRUB", "state": state, "start_time": 1764990000,
                                 "end_time": if state == "FINISHED" { 1764990600 } else { 0 },
                                 "examined": 50, "to_examine": 100, "errors": 0});
    }
    (name.to_string(), p)
}

fn status(pools: &[(String, Value)]) -> String {
    let ps: serde_json::Map<String, Value> = pools.iter().cloned().collect();
    json!({"output_version": {"command": "zpool status", "vers_major": 0, "vers_minor": 1},
           "pools": ps})
    .to_string()
}

/// Scripts the per-pool reads (key status and volumes) of `name`.
fn pool_reads(script: &Script, name: &str) {
    script.on(
        &format!("zfs get keystatus {name}"),
        0,
        &json!({"datasets": {name: {"properties": {"keystatus": {"value": "available"}}}}})
            .to_string(),
        "",
    );
    script.on(
        &format!("zfs list -r -d1 {name}"),
        0,
        &json!({"datasets": {name: {"properties": {}}}}).to_string(),
        "",
    );
}

fn with_local(e: &Env) {
    e.script.on(
        "zpool status",
        0,
        &status(&[pool_json("local", &["scsi-incus_root-part11"], None)]),
        "",
    );
    pool_reads(&e.script, "local");
}

// --- GET / PUT ---------------------------------------------------------------------

#[tokio::test]
async fn get_shows_the_schedule_and_drives_by_id_and_never_config_pools() {
    let e = env();
    with_local(&e);
    let (s, v) = call(&e.r, "GET", "/1.0/system/storage", "").await;
    assert_eq!(s, 200, "{v}");
    let m = &v["metadata"];
    // Only the stored schedule: `pools` is input only.
    assert_eq!(m["config"], json!({"scrub_schedule": "0 4 * * 0"}));
    let ids: Vec<&str> = m["state"]["drives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [DISK1, DISK2, ROOT_ID]);
    let root = &m["state"]["drives"][2];
    assert_eq!(root["boot"], true);
    assert_eq!(root["member_pool"], "local");
    let d1 = m["state"]["drives"][0].as_object().unwrap();
    // Unset optional fields are left out, as upstream's.
    for absent in ["member_pool", "encrypted", "encrypted_id", "smart", "wwn"] {
        assert!(!d1.contains_key(absent), "{absent} in {d1:?}");
    }
    assert_eq!(m["state"]["pools"][0]["name"], "local");
    assert_eq!(
        m["state"]["pools"][0]["devices"],
        json!([format!("{ROOT_ID}-part11")])
    );
    assert!(
        m["state"]["root_partition"]["size_in_bytes"]
            .as_i64()
            .unwrap()
            > 0
    );
    // Reading changes nothing.
    assert!(e.script.changes().is_empty(), "{:?}", e.script.changes());
}

#[tokio::test]
async fn get_fails_with_the_command_error_when_zpool_fails() {
    let e = env();
    e.script.on("zpool status", 1, "", "no pools module");
    let (code, text) = err(&call(&e.r, "GET", "/1.0/system/storage", "").await);
    assert_eq!(code, 500);
    assert_eq!(
        text,
        "Failed to run: zpool status -jp --json-int: exit status 1 (no pools module)"
    );
}

#[tokio::test]
async fn put_checks_the_schedule_before_anything_else() {
    let e = env();
    with_local(&e);
    let invalid = "invalid cron expression provided for scrub schedule";
    // An empty body is `{}`, whose empty schedule is invalid.
    for body in [
        "",
        "{}",
        r#"{"config": {"scrub_schedule": "0 4 * *"}}"#,
        r#"{"config": {"scrub_schedule": "61 4 * * 0", "pools": [{"name": "tank", "type": "zfs-raid0", "devices": ["/dev/sdb"]}]}}"#,
    ] {
        assert_eq!(
            err(&call(&e.r, "PUT", "/1.0/system/storage", body).await),
            (400, invalid.to_string()),
            "{body}"
        );
    }
    assert_eq!(e.schedule(), "0 4 * * 0");
    assert!(e.script.changes().is_empty(), "{:?}", e.script.changes());
    // A body that is not JSON is a 400 naming the problem.
    let (code, _) = err(&call(&e.r, "PUT", "/1.0/system/storage", "{").await);
    assert_eq!(code, 400);
}

#[tokio::test]
async fn put_saves_the_schedule_which_get_shows_and_the_state_file_keeps() {
    let e = env();
    with_local(&e);
    ok(&call(
        &e.r,
        "PUT",
        "/1.0/system/storage",
        r#"{"config": {"scrub_schedule": "0 0 * * 5"}}"#,
    )
    .await);
    let (_, v) = call(&e.r, "GET", "/1.0/system/storage", "").await;
    assert_eq!(
        v["metadata"]["config"],
        json!({"scrub_schedule": "0 0 * * 5"})
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(e.path("/var/lib/incus-os/state.json")).unwrap())
            .unwrap();
    assert_eq!(
        saved["system"]["storage"],
        json!({"scrub_schedule": "0 0 * * 5"})
    );
    assert!(e.script.changes().is_empty());
}

#[tokio::test]
async fn put_creates_a_pool_with_upstreams_command_and_a_fresh_key() {
    let e = env();
    e.script
        .on("zpool status", 0, &status(&[]), "")
        .on("zpool create", 0, "", "");
    ok(&call(
        &e.r,
        "PUT",
        "/1.0/system/storage",
        r#"{"config": {"scrub_schedule": "0 4 * * 0", "pools": [{"name": "tank", "type": "zfs-raid1", "devices": ["/dev/sdb", "/dev/disk/by-id/scsi-incus_disk2"]}]}}"#,
    )
    .await);
    assert_eq!(
        e.script.changes(),
        ["zpool create -o ashift=12 -O mountpoint=none -O encryption=aes-256-gcm -O keyformat=raw -O keylocation=file:///var/lib/incus-os/zpool.tank.key tank mirror /dev/disk/by-id/scsi-incus_disk1 /dev/disk/by-id/scsi-incus_disk2"]
    );
    assert_eq!(
        std::fs::read(e.path("/var/lib/incus-os/zpool.tank.key"))
            .unwrap()
            .len(),
        32
    );
}

#[tokio::test]
async fn put_stops_at_the_first_failing_pool_with_a_500_after_saving_the_schedule() {
    let e = env();
    e.script.on("zpool status", 0, &status(&[]), "");
    let body = r#"{"config": {"scrub_schedule": "0 1 * * *", "pools": [
        {"name": "tank", "type": "zfs-raid1", "devices": ["/dev/sdb"]},
        {"name": "other", "type": "zfs-raid0", "devices": ["/dev/sdc"]}]}}"#;
    assert_eq!(
        err(&call(&e.r, "PUT", "/1.0/system/storage", body).await),
        (
            500,
            "at least two devices must be specified when creating a raid1 pool".into()
        )
    );
    // As upstream: the schedule was saved first; nothing ran for either pool.
    assert_eq!(e.schedule(), "0 1 * * *");
    assert!(e.script.changes().is_empty(), "{:?}", e.script.changes());
    // The system drive is refused for a new pool.
    let body = r#"{"config": {"scrub_schedule": "0 1 * * *", "pools": [
        {"name": "tank", "type": "zfs-raid0", "devices": ["/dev/sda"]}]}}"#;
    let (code, text) = err(&call(&e.r, "PUT", "/1.0/system/storage", body).await);
    assert_eq!(code, 500);
    assert!(text.contains("system root drive"), "{text}");
    assert!(e.script.changes().is_empty());
}

#[tokio::test]
async fn storage_answers_501_for_other_methods() {
    let e = env();
    let (code, _) = err(&call(&e.r, "POST", "/1.0/system/storage", "").await);
    assert_eq!(code, 501);
    let (code, _) = err(&call(&e.r, "DELETE", "/1.0/system/storage", "").await);
    assert_eq!(code, 501);
}

// --- the scrub scheduler -----------------------------------------------------------

/// A clock whose sleeps end at once (moving its time on), recording each; from the
/// `limit`-th sleep on it never wakes.
struct TestClock {
    now: Mutex<DateTime<Utc>>,
    sleeps: Mutex<Vec<Duration>>,
    limit: usize,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }
    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let mut sleeps = self.sleeps.lock().unwrap();
        sleeps.push(d);
        if sleeps.len() >= self.limit {
            return Box::pin(std::future::pending());
        }
        *self.now.lock().unwrap() += chrono::Duration::from_std(d).unwrap();
        Box::pin(std::future::ready(()))
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_scheduler_scrubs_pools_one_by_one_on_the_saved_schedule() {
    // Saturday 2026-12-05 12:00 UTC: the default schedule fires on Sunday at 04:00.
    let clock = Arc::new(TestClock {
        now: Mutex::new(Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap()),
        sleeps: Mutex::new(vec![]),
        limit: 3,
    });
    let e = env_with(TestApp::new().storage_clock(clock.clone()));
    let idle = status(&[
        pool_json("local", &["scsi-incus_root-part11"], None),
        pool_json("tank", &["scsi-incus_disk1"], Some("FINISHED")),
    ]);
    let local_running = status(&[
        pool_json("local", &["scsi-incus_root-part11"], Some("SCANNING")),
        pool_json("tank", &["scsi-incus_disk1"], Some("FINISHED")),
    ]);
    let both_done = status(&[
        pool_json("local", &["scsi-incus_root-part11"], Some("FINISHED")),
        pool_json("tank", &["scsi-incus_disk1"], Some("FINISHED")),
    ]);
    // The listing, local still running once, then done (tank's scrub ends at once).
    e.script
        .on("zpool status", 0, &idle, "")
        .on("zpool status", 0, &local_running, "")
        .on("zpool status", 0, &both_done, "")
        .on("zpool scrub", 0, "", "");
    pool_reads(&e.script, "local");
    pool_reads(&e.script, "tank");
    let task = tokio::spawn(runtime::scrub_scheduler(e.app.clone()));
    wait_for("the third sleep", || {
        clock.sleeps.lock().unwrap().len() >= 3
    })
    .await;
    assert_eq!(
        e.script.changes(),
        ["zpool scrub local", "zpool scrub tank"]
    );
    let sleeps = clock.sleeps.lock().unwrap().clone();
    assert_eq!(
        sleeps,
        [
            Duration::from_secs(16 * 3600),
            runtime::SCRUB_POLL,
            // From Sunday 04:01 to the next Sunday 04:00.
            Duration::from_secs(7 * 24 * 3600 - 60),
        ]
    );
    // A schedule saved meanwhile takes effect at once: Friday 00:00 from Sunday 04:01.
    ok(&call(
        &e.r,
        "PUT",
        "/1.0/system/storage",
        r#"{"config": {"scrub_schedule": "0 0 * * 5"}}"#,
    )
    .await);
    wait_for("the rescheduled sleep", || {
        clock.sleeps.lock().unwrap().len() >= 4
    })
    .await;
    assert_eq!(
        clock.sleeps.lock().unwrap()[3],
        Duration::from_secs((4 * 24 + 19) * 3600 + 59 * 60)
    );
    task.abort();
}

#[tokio::test]
async fn a_pool_already_scrubbing_is_skipped_by_the_scheduled_run() {
    let e = env();
    e.script
        .on(
            "zpool status",
            0,
            &status(&[
                pool_json("local", &["scsi-incus_root-part11"], Some("SCANNING")),
                pool_json("tank", &["scsi-incus_disk1"], None),
            ]),
            "",
        )
        .on(
            "zpool status",
            0,
            &status(&[
                pool_json("local", &["scsi-incus_root-part11"], Some("SCANNING")),
                pool_json("tank", &["scsi-incus_disk1"], Some("FINISHED")),
            ]),
            "",
        )
        .on("zpool scrub", 0, "", "");
    pool_reads(&e.script, "local");
    pool_reads(&e.script, "tank");
    runtime::scrub_all(&e.app).await.unwrap();
    assert_eq!(e.script.changes(), ["zpool scrub tank"]);
}

// Keeps `fake_file` in use for the action tests below.
#[allow(dead_code)]
fn write(root: &std::path::Path, p: &str, text: &str) {
    fake_file(root, p, text)
}
