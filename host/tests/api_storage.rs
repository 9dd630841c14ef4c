//! Router tests (tier 1/2) for `/1.0/system/storage` and its actions, over a root with
//! three fake disks (sysfs, udev's database, `/dev` as plain files) and scripted
//! commands: `zpool`/`zfs` answer with JSON in OpenZFS's layout, and every command line
//! the daemon runs is recorded and checked exactly. (This kernel has no ZFS and no
//! device-mapper: the real tools run in the tier-3 tests where they can.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use incus_osd::api::App;
use incus_osd::system::storage::runtime::{self, Clock};
use incus_osd::testing::call;
use incus_osd::testing::{fake_disks, fake_file, plain_drives, Script, TestApp};
use serde_json::{json, Value};

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

// --- actions -----------------------------------------------------------------------

async fn post(e: &Env, action: &str, body: &str) -> (StatusCode, Value) {
    call(&e.r, "POST", &format!("/1.0/system/storage/{action}"), body).await
}

fn key_file(e: &Env, name: &str) -> std::path::PathBuf {
    e.path(&format!("/var/lib/incus-os/{name}"))
}

const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[tokio::test]
async fn actions_are_routed_by_name_and_method() {
    let e = env();
    with_local(&e);
    assert_eq!(err(&post(&e, ":nothing", "").await).0, 501);
    assert_eq!(
        err(&call(&e.r, "GET", "/1.0/system/storage/:nothing", "").await).0,
        404
    );
    assert_eq!(
        err(&call(&e.r, "GET", "/1.0/system/storage/:wipe-drive", "").await).0,
        501
    );
    assert_eq!(
        err(&call(&e.r, "PUT", "/1.0/system/storage/:scrub-pool", "").await).0,
        501
    );
    assert!(e.script.changes().is_empty());
}

#[tokio::test]
async fn wipe_drive_refuses_with_upstreams_texts_and_touches_nothing() {
    let e = env();
    e.script.on(
        "zpool status",
        0,
        &status(&[
            pool_json("local", &["scsi-incus_root-part11"], None),
            pool_json("tank", &["scsi-incus_disk2"], None),
        ]),
        "",
    );
    pool_reads(&e.script, "local");
    pool_reads(&e.script, "tank");
    fake_file(e.dir.path(), "/dev/sdc", "pool data");
    fake_file(e.dir.path(), "/dev/sda", "system");
    assert_eq!(
        err(&post(&e, ":wipe-drive", "").await),
        (400, "no drive specified".into())
    );
    assert_eq!(
        err(&post(&e, ":wipe-drive", &json!({"id": ROOT_ID}).to_string()).await),
        (500, "cannot wipe boot drive".into())
    );
    assert_eq!(
        err(&post(&e, ":wipe-drive", &json!({"id": DISK2}).to_string()).await),
        (500, "cannot wipe drive belonging to pool 'tank'".into())
    );
    assert_eq!(
        err(&post(&e, ":wipe-drive", r#"{"id": "/dev/disk/by-id/nope"}"#).await),
        (500, "drive '/dev/disk/by-id/nope' doesn't exist".into())
    );
    // A kernel name is not an id.
    assert_eq!(
        err(&post(&e, ":wipe-drive", r#"{"id": "/dev/sdb"}"#).await),
        (500, "drive '/dev/sdb' doesn't exist".into())
    );
    assert!(e.script.changes().is_empty(), "{:?}", e.script.changes());
    assert_eq!(
        std::fs::read_to_string(e.path("/dev/sdc")).unwrap(),
        "pool data"
    );
    assert_eq!(
        std::fs::read_to_string(e.path("/dev/sda")).unwrap(),
        "system"
    );
}

#[tokio::test]
async fn wipe_drive_closes_the_luks_mapping_deletes_its_key_then_clears_the_drive() {
    let e = env();
    with_local(&e);
    e.script.on("cryptsetup close", 0, "", "");
    fake_file(e.dir.path(), "/dev/sdb", "secret data");
    fake_file(
        e.dir.path(),
        "/var/lib/incus-os/luks.scsi-incus_disk1.key",
        "k",
    );
    fake_file(e.dir.path(), "/dev/mapper/luks-scsi-incus_disk1", "");
    // Listed as encrypted before.
    let (_, v) = call(&e.r, "GET", "/1.0/system/storage", "").await;
    assert_eq!(v["metadata"]["state"]["drives"][0]["encrypted"], true);
    assert_eq!(
        v["metadata"]["state"]["drives"][0]["encrypted_id"],
        "/dev/mapper/luks-scsi-incus_disk1"
    );
    ok(&post(&e, ":wipe-drive", &json!({"id": DISK1}).to_string()).await);
    assert_eq!(
        e.script.changes(),
        ["cryptsetup close /dev/mapper/luks-scsi-incus_disk1"]
    );
    assert!(!key_file(&e, "luks.scsi-incus_disk1.key").exists());
    let data = std::fs::read(e.path("/dev/sdb")).unwrap();
    assert!(data.len() == 11 && data.iter().all(|b| *b == 0), "{data:?}");
    let (_, v) = call(&e.r, "GET", "/1.0/system/storage", "").await;
    let d1 = v["metadata"]["state"]["drives"][0].as_object().unwrap();
    assert!(!d1.contains_key("encrypted") && !d1.contains_key("encrypted_id"));
    // A failed close stops the wipe: the key stays.
    fake_file(
        e.dir.path(),
        "/var/lib/incus-os/luks.scsi-incus_disk1.key",
        "k",
    );
    fake_file(e.dir.path(), "/dev/sdb", "secret data");
    e.script.on(
        "cryptsetup close",
        5,
        "",
        "Device luks-scsi-incus_disk1 is still in use.",
    );
    let (code, text) = err(&post(&e, ":wipe-drive", &json!({"id": DISK1}).to_string()).await);
    assert_eq!(code, 500);
    assert_eq!(text, "Failed to run: cryptsetup close /dev/mapper/luks-scsi-incus_disk1: exit status 5 (Device luks-scsi-incus_disk1 is still in use.)");
    assert!(key_file(&e, "luks.scsi-incus_disk1.key").exists());
    assert_eq!(
        std::fs::read_to_string(e.path("/dev/sdb")).unwrap(),
        "secret data"
    );
}

#[tokio::test]
async fn encrypt_drive_wipes_formats_with_a_fresh_key_and_opens() {
    let e = env();
    with_local(&e);
    e.script
        .on("cryptsetup luksFormat", 0, "", "")
        .on("cryptsetup open", 0, "", "");
    fake_file(e.dir.path(), "/dev/sdb", "old data");
    assert_eq!(
        err(&post(&e, ":encrypt-drive", "{}").await),
        (400, "no drive specified".into())
    );
    assert_eq!(
        err(&post(&e, ":encrypt-drive", r#"{"id": "/dev/sdb"}"#).await),
        (500, "invalid disk id".into())
    );
    assert_eq!(
        err(&post(&e, ":encrypt-drive", &json!({"id": ROOT_ID}).to_string()).await),
        (500, "cannot wipe boot drive".into())
    );
    assert!(e.script.changes().is_empty());
    ok(&post(&e, ":encrypt-drive", &json!({"id": DISK1}).to_string()).await);
    let key = "/var/lib/incus-os/luks.scsi-incus_disk1.key";
    assert_eq!(
        e.script.changes(),
        [
            format!("cryptsetup luksFormat -q {DISK1} {key}"),
            format!("cryptsetup open --type=luks -d {key} {DISK1} luks-scsi-incus_disk1"),
        ]
    );
    let k = e.path(key);
    assert_eq!(std::fs::read(&k).unwrap().len(), 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read(e.path("/dev/sdb"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    let (_, v) = call(&e.r, "GET", "/1.0/system/storage", "").await;
    assert_eq!(v["metadata"]["state"]["drives"][0]["encrypted"], true);
}

#[tokio::test]
async fn a_failed_luks_format_leaves_no_key() {
    let e = env();
    with_local(&e);
    e.script
        .on("cryptsetup luksFormat", 1, "", "Cannot format device.");
    let (code, text) = err(&post(&e, ":encrypt-drive", &json!({"id": DISK1}).to_string()).await);
    assert_eq!(code, 500);
    assert!(
        text.ends_with("exit status 1 (Cannot format device.)"),
        "{text}"
    );
    assert!(!key_file(&e, "luks.scsi-incus_disk1.key").exists());
    assert!(!e
        .script
        .changes()
        .iter()
        .any(|c| c.starts_with("cryptsetup open")));
}

#[tokio::test]
async fn import_encrypted_drive_checks_the_key_and_keeps_it_only_when_it_opens() {
    let e = env();
    let key = "/var/lib/incus-os/luks.scsi-incus_disk1.key";
    assert_eq!(
        err(&post(&e, ":import-encrypted-drive", r#"{"key": "x"}"#).await),
        (400, "no drive specified".into())
    );
    for (body, text) in [
        (
            json!({"id": "/dev/sdb", "key": KEY_B64}),
            "invalid disk id".to_string(),
        ),
        (
            json!({"id": DISK1, "key": "AAEC"}),
            "expected a 32 byte raw encryption key, got 3 bytes".into(),
        ),
        (
            json!({"id": DISK1}),
            "expected a 32 byte raw encryption key, got 0 bytes".into(),
        ),
        (
            json!({"id": DISK1, "key": "AA!C"}),
            "illegal base64 data at input byte 2".into(),
        ),
    ] {
        assert_eq!(
            err(&post(&e, ":import-encrypted-drive", &body.to_string()).await),
            (500, text),
            "{body}"
        );
    }
    assert!(e.script.changes().is_empty());
    assert!(!e.path(key).exists());
    // Not a LUKS device: cryptsetup's words, and the key goes again.
    e.script.on(
        "cryptsetup open",
        1,
        "",
        &format!("Device {DISK1} is not a valid LUKS device."),
    );
    let (code, text) = err(&post(
        &e,
        ":import-encrypted-drive",
        &json!({"id": DISK1, "key": KEY_B64}).to_string(),
    )
    .await);
    assert_eq!(code, 500);
    assert!(
        text.contains(&format!("Device {DISK1} is not a valid LUKS device")),
        "{text}"
    );
    assert!(!e.path(key).exists());
    e.script.on("cryptsetup open", 0, "", "");
    e.script.clear_calls();
    ok(&post(
        &e,
        ":import-encrypted-drive",
        &json!({"id": DISK1, "key": KEY_B64}).to_string(),
    )
    .await);
    assert_eq!(
        e.script.changes(),
        [format!(
            "cryptsetup open --type=luks -d {key} {DISK1} luks-scsi-incus_disk1"
        )]
    );
    assert_eq!(
        std::fs::read(e.path(key)).unwrap(),
        (0u8..32).collect::<Vec<u8>>()
    );
}

#[tokio::test]
async fn cleanup_root_vacuums_the_journal_and_empties_the_cache() {
    let e = env();
    e.script.on("journalctl", 0, "", "");
    fake_file(e.dir.path(), "/var/cache/apt/pkgcache.bin", "x");
    fake_file(e.dir.path(), "/var/cache/top-file", "x");
    ok(&post(&e, ":cleanup-root", "ignored body").await);
    assert_eq!(e.script.changes(), ["journalctl --vacuum-files=1"]);
    assert!(e.path("/var/cache").is_dir());
    assert_eq!(std::fs::read_dir(e.path("/var/cache")).unwrap().count(), 0);
    // A failed vacuum is a 500 and leaves the cache.
    fake_file(e.dir.path(), "/var/cache/kept", "x");
    e.script.on("journalctl", 1, "", "boom");
    assert_eq!(err(&post(&e, ":cleanup-root", "").await).0, 500);
    assert!(e.path("/var/cache/kept").exists());
}

#[tokio::test]
async fn volumes_are_checked_with_upstreams_texts_and_made_with_exact_commands() {
    let e = env();
    for (body, text) in [
        (json!({}), "no pool name provided"),
        (json!({"pool": "a/b"}), "invalid pool name provided"),
        (json!({"pool": "local"}), "no volume name provided"),
        (
            json!({"pool": "local", "name": "x/y"}),
            "invalid volume name provided",
        ),
        (
            json!({"pool": "local", "name": "v"}),
            "no volume use provided",
        ),
        (
            json!({"pool": "local", "name": "v", "use": "ceph"}),
            "invalid volume use provided",
        ),
    ] {
        assert_eq!(
            err(&post(&e, ":create-volume", &body.to_string()).await),
            (400, text.to_string()),
            "{body}"
        );
    }
    for (body, text) in [
        (json!({}), "no pool name provided"),
        (json!({"pool": "a/b"}), "invalid pool name provided"),
        (json!({"pool": "local"}), "no volume name provided"),
        (
            json!({"pool": "local", "name": "x/y"}),
            "invalid volume name provided",
        ),
    ] {
        assert_eq!(
            err(&post(&e, ":delete-volume", &body.to_string()).await),
            (400, text.to_string()),
            "{body}"
        );
    }
    // A quota of the wrong type is Go's decode error, a 400.
    assert_eq!(
        err(&post(
            &e,
            ":create-volume",
            r#"{"pool": "local", "name": "v", "use": "incus", "quota": "1G"}"#
        )
        .await)
        .0,
        400
    );
    assert!(e.script.calls().is_empty());
    e.script
        .on("zfs create", 0, "", "")
        .on("zfs destroy", 0, "", "");
    ok(&post(
        &e,
        ":create-volume",
        r#"{"pool": "local", "name": "vol1", "use": "incus", "quota": 1073741824}"#,
    )
    .await);
    ok(&post(
        &e,
        ":create-volume",
        r#"{"pool": "tank", "name": "ls", "use": "linstor"}"#,
    )
    .await);
    ok(&post(&e, ":delete-volume", r#"{"pool": "local", "name": "vol1"}"#).await);
    ok(&post(
        &e,
        ":delete-volume",
        r#"{"pool": "tank", "name": "ls", "force": true}"#,
    )
    .await);
    assert_eq!(
        e.script.changes(),
        [
            "zfs create local/vol1 -o incusos:use=incus -o quota=1073741824",
            "zfs create tank/ls -o incusos:use=linstor -o encryption=off",
            "zfs destroy local/vol1",
            "zfs destroy tank/ls -R",
        ]
    );
    e.script.on(
        "zfs destroy",
        1,
        "",
        "cannot destroy 'local/vol1': filesystem has children",
    );
    assert_eq!(
        err(&post(&e, ":delete-volume", r#"{"pool": "local", "name": "vol1"}"#).await),
        (500, "Failed to run: zfs destroy local/vol1: exit status 1 (cannot destroy 'local/vol1': filesystem has children)".into())
    );
}

#[tokio::test]
async fn delete_pool_destroys_deletes_the_key_and_wipes_the_members() {
    let e = env();
    e.script.on(
        "zpool status",
        0,
        &status(&[
            pool_json("local", &["scsi-incus_root-part11"], None),
            pool_json("tank", &["scsi-incus_disk1"], None),
        ]),
        "",
    );
    // After the destroy, tank is gone.
    e.script.on(
        "zpool status",
        0,
        &status(&[
            pool_json("local", &["scsi-incus_root-part11"], None),
            pool_json("tank", &["scsi-incus_disk1"], None),
        ]),
        "",
    );
    e.script.on(
        "zpool status",
        0,
        &status(&[pool_json("local", &["scsi-incus_root-part11"], None)]),
        "",
    );
    pool_reads(&e.script, "local");
    pool_reads(&e.script, "tank");
    e.script.on("zpool destroy", 0, "", "");
    fake_file(e.dir.path(), "/var/lib/incus-os/zpool.tank.key", "k");
    fake_file(e.dir.path(), "/dev/sdb", "pool data");
    assert_eq!(
        err(&post(&e, ":delete-pool", "").await),
        (400, "no pool name provided".into())
    );
    assert_eq!(
        err(&post(&e, ":delete-pool", r#"{"name": "local"}"#).await),
        (500, "cannot destroy special zpool 'local'".into())
    );
    assert!(e.script.changes().is_empty());
    ok(&post(&e, ":delete-pool", r#"{"name": "tank"}"#).await);
    assert_eq!(e.script.changes(), ["zpool destroy tank"]);
    assert!(!key_file(&e, "zpool.tank.key").exists());
    assert!(std::fs::read(e.path("/dev/sdb"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    // Gone, and no key: upstream's text. Gone with a key left: the key goes.
    assert_eq!(
        err(&post(&e, ":delete-pool", r#"{"name": "tank"}"#).await),
        (500, "cannot destroy zpool 'tank': no such pool".into())
    );
    fake_file(e.dir.path(), "/var/lib/incus-os/zpool.tank.key", "k");
    ok(&post(&e, ":delete-pool", r#"{"name": "tank"}"#).await);
    assert!(!key_file(&e, "zpool.tank.key").exists());
    assert_eq!(e.script.changes(), ["zpool destroy tank"]);
}

/// Scripts `zpool import` and `zfs get <prop>` answers for `:import-pool`.
fn importable(e: &Env, encryption: &str, keyformat: &str) {
    e.script
        .set("zpool import", 0, "", "")
        .set("zpool export", 0, "", "")
        .set("zfs get encryption", 0, &format!("{encryption}\n"), "")
        .set("zfs get keyformat", 0, &format!("{keyformat}\n"), "")
        .set("zfs set", 0, "", "")
        .set("zfs load-key", 0, "", "");
}

#[tokio::test]
async fn import_pool_refusals_carry_upstreams_texts_and_export_again() {
    let e = env();
    for (body, text) in [
        (json!({}), "missing pool name and type"),
        (json!({"name": "mypool"}), "missing pool name and type"),
        (
            json!({"name": "mypool", "type": "lvm"}),
            "unsupported pool type 'lvm'",
        ),
    ] {
        assert_eq!(
            err(&post(&e, ":import-pool", &body.to_string()).await),
            (400, text.to_string()),
            "{body}"
        );
    }
    assert!(e.script.calls().is_empty());
    importable(&e, "off", "none");
    let body = json!({"name": "mypool", "type": "zfs", "encryption_key": KEY_B64}).to_string();
    assert_eq!(
        err(&post(&e, ":import-pool", &body).await),
        (
            500,
            "attempted to import unencrypted pool 'mypool', but an encryption key was provided"
                .into()
        )
    );
    assert_eq!(
        e.script.changes(),
        ["zpool import mypool", "zpool export -f mypool"]
    );
    e.script.clear_calls();
    importable(&e, "aes-256-gcm", "passphrase");
    assert_eq!(
        err(&post(&e, ":import-pool", &body).await),
        (
            500,
            "refusing to import encrypted pool 'mypool' that doesn't use a raw encryption key"
                .into()
        )
    );
    importable(&e, "aes-256-gcm", "raw");
    let short = json!({"name": "mypool", "type": "zfs", "encryption_key": "AAEC"}).to_string();
    assert_eq!(
        err(&post(&e, ":import-pool", &short).await),
        (
            500,
            "expected a 32 byte raw encryption key for pool 'mypool', got 3 bytes".into()
        )
    );
    e.script.set(
        "zfs load-key",
        255,
        "",
        "Key load error: Incorrect key provided for 'mypool'.",
    );
    e.script.clear_calls();
    assert_eq!(
        err(&post(&e, ":import-pool", &body).await),
        (500, "Failed to run: zfs load-key mypool: exit status 255 (Key load error: Incorrect key provided for 'mypool'.)".into())
    );
    assert_eq!(
        e.script.changes(),
        [
            "zpool import mypool",
            "zfs set keylocation=file:///var/lib/incus-os/zpool.mypool.key mypool",
            "zfs load-key mypool",
            "zpool export -f mypool"
        ]
    );
    assert!(!key_file(&e, "zpool.mypool.key").exists());
}

#[tokio::test]
async fn import_pool_takes_unencrypted_pools_unmanaged_and_stores_a_raw_key() {
    let e = env();
    importable(&e, "off", "none");
    ok(&post(&e, ":import-pool", r#"{"name": "plain", "type": "zfs"}"#).await);
    assert_eq!(e.script.changes(), ["zpool import plain"]);
    assert!(!key_file(&e, "zpool.plain.key").exists());
    e.script.clear_calls();
    importable(&e, "aes-256-gcm", "raw");
    // The seed API's name does the same.
    let body = json!({"name": "mypool", "type": "zfs", "encryption_key": KEY_B64}).to_string();
    ok(&post(&e, ":import-encryption-key", &body).await);
    assert_eq!(
        e.script.changes(),
        [
            "zpool import mypool",
            "zfs set keylocation=file:///var/lib/incus-os/zpool.mypool.key mypool",
            "zfs load-key mypool",
        ]
    );
    assert_eq!(
        std::fs::read(key_file(&e, "zpool.mypool.key")).unwrap(),
        (0u8..32).collect::<Vec<u8>>()
    );
}

#[tokio::test]
async fn scrub_pool_starts_a_scrub_and_answers_409_while_one_runs() {
    let e = env();
    e.script.on(
        "zpool status",
        0,
        &status(&[pool_json("tank", &["scsi-incus_disk1"], Some("FINISHED"))]),
        "",
    );
    pool_reads(&e.script, "tank");
    e.script.on("zpool scrub", 0, "", "");
    assert_eq!(
        err(&post(&e, ":scrub-pool", "").await),
        (400, "no pool name provided".into())
    );
    assert_eq!(
        err(&post(&e, ":scrub-pool", r#"{"name": "nope"}"#).await),
        (500, "zpool 'nope' doesn't exist".into())
    );
    ok(&post(&e, ":scrub-pool", r#"{"name": "tank"}"#).await);
    assert_eq!(e.script.changes(), ["zpool scrub tank"]);
    e.script.on(
        "zpool status",
        0,
        &status(&[pool_json("tank", &["scsi-incus_disk1"], Some("SCANNING"))]),
        "",
    );
    assert_eq!(
        err(&post(&e, ":scrub-pool", r#"{"name": "tank"}"#).await),
        (409, "scrub already in progress".into())
    );
    assert_eq!(e.script.changes(), ["zpool scrub tank"]);
}

// --- boot ----------------------------------------------------------------------------

#[tokio::test]
async fn at_boot_keyed_drives_open_and_keyed_pools_import_and_load_their_keys() {
    let e = env();
    let root = e.dir.path();
    fake_file(root, "/var/lib/incus-os/luks.scsi-incus_disk1.key", "k");
    // A drive that is gone is skipped.
    fake_file(root, "/var/lib/incus-os/luks.scsi-gone.key", "k");
    fake_file(root, "/var/lib/incus-os/zpool.tank.key", "k");
    fake_file(root, "/var/lib/incus-os/zpool.gone.key", "k");
    fake_file(root, "/var/lib/incus-os/zpool.local.key", "k");
    fake_file(root, "/var/lib/incus-os/state.json.key-not", "");
    e.script
        .on("cryptsetup open", 0, "", "")
        .on(
            "zpool import gone",
            1,
            "",
            "cannot import 'gone': no such pool available",
        )
        .on(
            "zpool import local",
            1,
            "",
            "cannot import 'local': a pool with that name already exists",
        )
        .on("zpool import tank", 0, "", "")
        .on(
            "zfs load-key local",
            255,
            "",
            "Key load error: Key already loaded for 'local'.",
        )
        .on("zfs load-key tank", 0, "", "")
        // systemd-repart did not grow the data partition this boot.
        .on("journalctl", 0, "", "");
    runtime::load_at_boot(&e.app).await;
    let key = "/var/lib/incus-os/luks.scsi-incus_disk1.key";
    assert_eq!(
        e.script.changes(),
        [
            format!("cryptsetup open --type=luks -d {key} {DISK1} luks-scsi-incus_disk1"),
            "zpool import gone".into(),
            "zpool import local".into(),
            "zfs load-key local".into(),
            "zpool import tank".into(),
            "zfs load-key tank".into(),
            "journalctl -b -u systemd-repart -g Growing existing partition 10".into(),
        ]
    );
}

#[tokio::test]
async fn at_boot_a_grown_single_disk_local_pool_is_expanded() {
    let e = env();
    with_local(&e);
    e.script
        .on("journalctl", 0, "Growing existing partition 10.\n", "")
        .on("zpool set", 0, "", "")
        .on("zpool online", 0, "", "");
    runtime::load_at_boot(&e.app).await;
    assert_eq!(
        e.script.changes(),
        [
            "journalctl -b -u systemd-repart -g Growing existing partition 10".to_string(),
            "zpool set autoexpand=on local".into(),
            format!("zpool online -e local {ROOT_ID}-part11"),
        ]
    );
}

// --- the provider is told --------------------------------------------------------------

static CAUSES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A registered provider recording why it was refreshed.
struct Recorder;

impl plugin_api::Provider for Recorder {
    const NAME: &'static str = "recorder";
    type Config = Value;
    type State = Value;
    fn new(_: plugin_api::sdk::Host) -> plugin_api::sdk::Result<Self> {
        Ok(Recorder)
    }
    fn state(&self, _: &Value) -> plugin_api::sdk::Result<Value> {
        Ok(json!({}))
    }
    fn refresh(
        &self,
        _: &Value,
        reg: &plugin_api::provider::Registration,
    ) -> plugin_api::sdk::Result<()> {
        CAUSES.lock().unwrap().push(reg.cause.as_str().to_string());
        Ok(())
    }
}

#[tokio::test]
async fn changes_tell_the_provider_but_scrubs_cleanups_and_refusals_do_not() {
    let e = env_with(TestApp::new().provider::<Recorder>());
    e.app
        .with_state(|s| {
            s.update(|d| {
                d.system.provider.name = "recorder".into();
                d.system.provider.registered = true;
            })
        })
        .unwrap();
    e.script
        .on(
            "zpool status",
            0,
            &status(&[pool_json("tank", &["scsi-incus_disk1"], None)]),
            "",
        )
        .on("zpool scrub", 0, "", "")
        .on("zfs create", 0, "", "")
        .on("journalctl", 0, "", "")
        .on("zpool add", 0, "", "");
    pool_reads(&e.script, "tank");
    let told = || std::mem::take(&mut *CAUSES.lock().unwrap());
    // A PUT without pools only saves the schedule (as upstream: nobody is told).
    ok(&call(
        &e.r,
        "PUT",
        "/1.0/system/storage",
        r#"{"config": {"scrub_schedule": "0 4 * * 0"}}"#,
    )
    .await);
    assert!(told().is_empty());
    ok(&call(
        &e.r,
        "PUT",
        "/1.0/system/storage",
        r#"{"config": {"scrub_schedule": "0 4 * * 0", "pools": [{"name": "tank", "type": "zfs-raid0", "devices": ["/dev/sdb", "/dev/sdc"]}]}}"#,
    )
    .await);
    assert_eq!(told(), ["storage-config-changed"]);
    ok(&post(
        &e,
        ":create-volume",
        r#"{"pool": "tank", "name": "v", "use": "incus"}"#,
    )
    .await);
    assert_eq!(told(), ["storage-config-changed"]);
    ok(&post(&e, ":scrub-pool", r#"{"name": "tank"}"#).await);
    ok(&post(&e, ":cleanup-root", "").await);
    assert_eq!(
        err(&post(&e, ":delete-pool", r#"{"name": "local"}"#).await).0,
        500
    );
    assert!(told().is_empty());
}

/// The system drive's data partition (`sda11`, partition label `local-data`).
fn local_data_partition(root: &std::path::Path) {
    let node = "/sys/devices/pci0000:00/ata/sda/block/sda/sda11";
    fake_file(root, &format!("{node}/dev"), "8:11");
    fake_file(root, &format!("{node}/partition"), "11");
    incus_osd::testing::fake_link(
        root,
        "/sys/class/block/sda11",
        "../../devices/pci0000:00/ata/sda/block/sda/sda11",
    );
    fake_file(
        root,
        "/run/udev/data/b8:11",
        "S:disk/by-id/scsi-incus_root-part11\nS:disk/by-partlabel/local-data\n",
    );
    fake_file(root, "/dev/sda11", "");
    incus_osd::testing::fake_link(root, "/dev/disk/by-partlabel/local-data", "../../sda11");
}

#[tokio::test]
async fn at_first_boot_local_is_created_on_the_data_partition() {
    let e = env();
    local_data_partition(e.dir.path());
    e.script
        .on("zpool status", 0, &status(&[]), "")
        .on(
            "zpool import local",
            1,
            "",
            "cannot import 'local': no such pool available",
        )
        .on("zpool create", 0, "", "")
        .on("journalctl", 0, "", "");
    runtime::load_at_boot(&e.app).await;
    assert_eq!(
        e.script.changes(),
        [
            "zpool import local",
            "zpool create -o ashift=12 -O mountpoint=none -O encryption=aes-256-gcm -O keyformat=raw -O keylocation=file:///var/lib/incus-os/zpool.local.key local /dev/disk/by-id/scsi-incus_root-part11",
            "journalctl -b -u systemd-repart -g Growing existing partition 10",
        ]
    );
    assert_eq!(
        std::fs::read(key_file(&e, "zpool.local.key"))
            .unwrap()
            .len(),
        32
    );
}

#[tokio::test]
async fn at_boot_a_local_pool_left_by_an_earlier_install_is_imported_and_exported_for_its_key() {
    let e = env();
    local_data_partition(e.dir.path());
    e.script
        .on("zpool status", 0, &status(&[]), "")
        .on(
            "zpool status",
            0,
            &status(&[pool_json("local", &["scsi-incus_root-part11"], None)]),
            "",
        )
        .on("zpool import local", 0, "", "")
        .on("zpool export local", 0, "", "")
        .on("journalctl", 0, "", "");
    runtime::load_at_boot(&e.app).await;
    assert_eq!(
        e.script.changes(),
        [
            "zpool import local",
            "zpool export local",
            "journalctl -b -u systemd-repart -g Growing existing partition 10",
        ]
    );
    assert!(!key_file(&e, "zpool.local.key").exists());
}

#[tokio::test]
async fn the_held_keys_are_listed_in_base64_by_drive_and_by_pool() {
    let e = env();
    let root = e.dir.path();
    std::fs::create_dir_all(e.path("/var/lib/incus-os")).unwrap();
    std::fs::write(
        key_file(&e, "luks.scsi-incus_disk1.key"),
        (0u8..32).collect::<Vec<u8>>(),
    )
    .unwrap();
    fake_file(root, "/var/lib/incus-os/zpool.local.key", "local-key");
    fake_file(root, "/var/lib/incus-os/zpool..key", "nameless");
    fake_file(
        root,
        "/var/lib/incus-os/recovery.root.key",
        "not a storage key",
    );
    let drives = runtime::with_machine(&e.app, |m| m.drive_keys())
        .await
        .unwrap();
    assert_eq!(
        drives,
        [("scsi-incus_disk1".to_string(), KEY_B64.to_string())].into()
    );
    let pools = runtime::with_machine(&e.app, |m| m.pool_keys())
        .await
        .unwrap();
    assert_eq!(
        pools,
        [("local".to_string(), "bG9jYWwta2V5".to_string())].into()
    );
}

/// `local` as a two-disk mirror: members by name with their states, the pool's state.
fn local_mirror(state: &str, members: &[(&str, &str)]) -> String {
    let vdevs: serde_json::Map<String, Value> = members
        .iter()
        .map(|(m, st)| {
            let mut d = disk(m);
            d["state"] = json!(st);
            (m.to_string(), d)
        })
        .collect();
    let p = json!({"name": "local", "state": state, "error_count": 0,
                   "vdevs": {"local": {"name": "local", "vdevs": {
                       "mirror-0": {"name": "mirror-0", "vdev_type": "mirror", "state": state,
                                    "alloc_space": 1000, "total_space": 10200547328u64,
                                    "def_space": 10200547328u64, "vdevs": vdevs}}}}});
    status(&[("local".to_string(), p)])
}

#[tokio::test]
async fn at_boot_a_local_mirror_that_lost_the_system_drive_is_repaired_before_its_export() {
    let e = env();
    local_data_partition(e.dir.path());
    let lost = [
        ("scsi-disk2-part1", "ONLINE"),
        ("9211468283463720133", "UNAVAIL"),
    ];
    let whole = [
        ("scsi-disk2-part1", "ONLINE"),
        ("scsi-incus_root-part11", "ONLINE"),
    ];
    e.script
        .on("zpool status", 0, &status(&[]), "")
        .on("zpool status", 0, &local_mirror("DEGRADED", &lost), "")
        .on("zpool status", 0, &local_mirror("DEGRADED", &lost), "")
        .on("zpool status", 0, &local_mirror("ONLINE", &whole), "")
        .on("zpool import local", 0, "", "")
        .on("zpool replace", 0, "", "")
        .on("zpool export local", 0, "", "")
        .on("journalctl", 0, "", "");
    runtime::load_at_boot(&e.app).await;
    assert_eq!(
        e.script.changes(),
        [
            "zpool import local",
            "zpool replace local 9211468283463720133 /dev/disk/by-id/scsi-incus_root-part11",
            "zpool export local",
            "journalctl -b -u systemd-repart -g Growing existing partition 10",
        ]
    );
    assert!(!key_file(&e, "zpool.local.key").exists());
}

#[tokio::test]
async fn at_boot_a_local_mirror_that_lost_its_other_disk_is_only_reported_and_exported() {
    let e = env();
    local_data_partition(e.dir.path());
    let lost = [
        ("scsi-incus_root-part11", "ONLINE"),
        ("scsi-disk2-part1", "UNAVAIL"),
    ];
    e.script
        .on("zpool status", 0, &status(&[]), "")
        .on("zpool status", 0, &local_mirror("DEGRADED", &lost), "")
        .on("zpool import local", 0, "", "")
        .on("zpool export local", 0, "", "")
        .on("journalctl", 0, "", "");
    runtime::load_at_boot(&e.app).await;
    assert_eq!(
        e.script.changes(),
        [
            "zpool import local",
            "zpool export local",
            "journalctl -b -u systemd-repart -g Growing existing partition 10",
        ]
    );
}
