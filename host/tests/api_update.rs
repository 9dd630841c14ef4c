//! `/1.0/system/update` and `:check` through the router (tier 1): the config's defaults and
//! validation, and whole OS update checks with a provider compiled into the test, the real
//! command runner and a GPT disk image (sfdisk works on files, no root needed): the update
//! is looked up, downloaded into `/var/lib/updates`, staged into slot B with its UKI on the
//! ESP, and recorded; each failure leaves the running slot and the recorded state alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::platform::exec::RealCommands;
use incus_osd::system::update::stage::{Arch, Kind};
use incus_osd::testing::TestApp;
use plugin_api::provider::{FetchOrder, Release, ReleaseFile, Target, UpdateContext};
use plugin_api::sdk::{Error, Host, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

const OS: &str = "IncusOS";
const RUNNING: &str = "202511041601";
const NEW: &str = "202601010000";
const MIB: u64 = 1 << 20;
/// Slot partition sizes: signature, verity, usr.
const SIZES: [u64; 3] = [MIB, MIB, 4 * MIB];

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

fn err(v: &(StatusCode, Value)) -> (u16, String) {
    assert_eq!(v.1["type"], "error", "{}", v.1);
    (v.0.as_u16(), v.1["error"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_fresh_system_shows_upstreams_defaults() {
    let (r, _, _d) = TestApp::new().router();
    let (s, v) = call(&r, "GET", "/1.0/system/update", "").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["metadata"],
        json!({
            "config": {"auto_reboot": false, "channel": "stable", "check_frequency": "6h"},
            "state": {"last_check": "0001-01-01T00:00:00Z", "status": "", "needs_reboot": false}
        })
    );
    let (s, v) = call(&r, "GET", "/1.0/system", "").await;
    assert_eq!(s, 200);
    assert!(v["metadata"]
        .as_array()
        .unwrap()
        .contains(&json!("/1.0/system/update")));
}

#[tokio::test]
async fn bad_configs_get_upstreams_texts_and_change_nothing() {
    let (r, _, _d) = TestApp::new().router();
    let put = |c: Value| json!({ "config": c }).to_string();
    for (config, text) in [
        (
            json!({"channel": "stable", "check_frequency": "abc"}),
            "invalid update check frequency: time: invalid duration \"abc\"",
        ),
        (
            json!({"channel": "stable"}),
            "invalid update check frequency: time: invalid duration \"\"",
        ),
        (
            json!({"check_frequency": "-1h"}),
            "invalid update check frequency: must be a positive value",
        ),
        (
            json!({"check_frequency": "6h", "maintenance_windows": [
                {"start_day_of_week": "Monday", "start_hour": 5, "start_minute": 0,
                 "end_day_of_week": "Monday", "end_hour": 4, "end_minute": 0}]}),
            "invalid migration window: end time is before start time",
        ),
        (
            json!({"check_frequency": "6h", "maintenance_windows": [
                {"start_day_of_week": "Monday", "start_hour": 1, "start_minute": 0,
                 "end_hour": 4, "end_minute": 0}]}),
            "invalid migration window: both StartDayOfWeek and EndDayOfWeek must be provided",
        ),
    ] {
        let v = call(&r, "PUT", "/1.0/system/update", &put(config.clone())).await;
        assert_eq!(err(&v), (400, text.to_string()), "{config}");
    }
    let (s, _) = call(&r, "PUT", "/1.0/system/update", "").await;
    assert_eq!(s, 400, "an empty body is refused (strict)");
    let (s, _) = call(&r, "PUT", "/1.0/system/update", "[]").await;
    assert_eq!(s, 400);
    let (_, v) = call(&r, "GET", "/1.0/system/update", "").await;
    assert_eq!(v["metadata"]["config"]["check_frequency"], "6h");
}

#[tokio::test]
async fn a_config_is_stored_as_given() {
    let (r, _, _d) = TestApp::new().router();
    let config = json!({
        "auto_reboot": true,
        "channel": "testing",
        "check_frequency": "never",
        "maintenance_windows": [{"start_hour": 22, "start_minute": 30, "end_hour": 2, "end_minute": 0}]
    });
    let (s, v) = call(
        &r,
        "PUT",
        "/1.0/system/update",
        &json!({ "config": config }).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(&r, "GET", "/1.0/system/update", "").await;
    assert_eq!(v["metadata"]["config"], config);
}

#[tokio::test]
async fn a_check_without_the_selected_provider_fails_clearly() {
    let (r, _, _d) = TestApp::new().router();
    // The full check is queued for the checker loop and answered at once; tolerant body.
    let (s, _) = call(&r, "POST", "/1.0/system/update/:check", "").await;
    assert_eq!(s, 200);
    let (s, _) = call(&r, "POST", "/1.0/system/update/:check", "{}").await;
    assert_eq!(s, 200);
    let (s, _) = call(&r, "POST", "/1.0/system/update/:check", "{bad").await;
    assert_eq!(s, 400);
    let v = call(
        &r,
        "POST",
        "/1.0/system/update/:check",
        r#"{"os_only": true}"#,
    )
    .await;
    assert_eq!(
        err(&v),
        (
            500,
            "Failed to load the update provider: unknown provider \"images\"".into()
        )
    );
    let (_, v) = call(&r, "GET", "/1.0/system/update", "").await;
    assert_eq!(
        v["metadata"]["state"]["status"],
        "Failed to load the update provider: unknown provider \"images\""
    );
    let (s, _) = call(&r, "GET", "/1.0/system/update/:check", "").await;
    assert_eq!(s, 501);
}

// --- whole OS update checks -------------------------------------------------------------

/// The provider under test: offers what its config says and writes each file's content
/// from the config (its name otherwise). Named `images`, the default selection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Offer {
    os: Option<Release>,
    contents: std::collections::BTreeMap<String, String>,
    lookup_error: String,
}

struct Offering {
    host: Host,
}

impl plugin_api::Provider for Offering {
    const NAME: &'static str = "images";
    type Config = Offer;
    type State = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Offering { host })
    }
    fn state(&self, _: &Offer) -> Result<Value> {
        Ok(json!({}))
    }
    fn lookup(&self, c: &Offer, ctx: &UpdateContext, t: &Target) -> Result<Option<Release>> {
        assert_eq!(ctx.os_name, OS);
        assert_eq!(ctx.running_version, RUNNING);
        if !c.lookup_error.is_empty() {
            return Err(Error::internal(c.lookup_error.clone()));
        }
        Ok(match t {
            Target::Os => c.os.clone(),
            _ => None,
        })
    }
    fn fetch(&self, c: &Offer, order: &FetchOrder) -> Result<Vec<String>> {
        let mut out = vec![];
        for f in &order.release.files {
            let path = format!("{}/{}", order.target_dir, f.target_name());
            let data = c.contents.get(f.target_name()).cloned().unwrap_or_default();
            self.host.write_file(&path, data.as_bytes(), 0o644)?;
            out.push(path);
        }
        Ok(out)
    }
}

fn arch() -> Arch {
    Arch::native().expect("x86-64 or arm64")
}

/// The file names of release `ver`.
fn files(ver: &str) -> Vec<String> {
    let a = arch().name();
    vec![
        format!("{OS}_{ver}.efi"),
        format!("{OS}_{ver}.usr-{a}.raw"),
        format!("{OS}_{ver}.usr-{a}-verity.raw"),
        format!("{OS}_{ver}.usr-{a}-verity-sig.raw"),
    ]
}

fn release(ver: &str, names: &[String]) -> Release {
    Release {
        version: ver.into(),
        files: names
            .iter()
            .map(|n| ReleaseFile {
                component: "os".into(),
                filename: format!("x86_64/{n}.gz"),
                ..ReleaseFile::default()
            })
            .collect(),
        ..Release::default()
    }
}

/// A GPT disk image with slots A (labelled with the running release) and B (empty).
/// Returns the path and each slot partition's (start, size), A's three then B's.
fn disk(dir: &Path) -> (PathBuf, Vec<(u64, u64)>) {
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(32 * MIB).unwrap();
    let mut script = String::from("label: gpt\n");
    for slot in ["A", "B"] {
        for (kind, size) in Kind::ALL.into_iter().zip(SIZES) {
            let name = if slot == "A" {
                kind.label(OS, RUNNING)
            } else {
                "_empty".into()
            };
            script.push_str(&format!(
                "size={}KiB, type={}, name=\"{name}\"\n",
                size / 1024,
                arch().type_guid(kind)
            ));
        }
    }
    let mut child = std::process::Command::new("sfdisk")
        .arg("--quiet")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (package fdisk)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(&path)
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
            )
        })
        .collect();
    (path, parts)
}

fn read_at(path: &Path, start: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn labels(path: &Path) -> Vec<String> {
    let out = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(path)
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .collect()
}

struct Machine {
    r: Router,
    app: Arc<incus_osd::api::App>,
    disk: PathBuf,
    parts: Vec<(u64, u64)>,
    root: tempfile::TempDir,
    _disk_dir: tempfile::TempDir,
}

/// A machine running `RUNNING` from slot A, with the test provider offering `offer`.
async fn machine(offer: Value) -> Machine {
    let disk_dir = tempfile::tempdir().unwrap();
    let (disk_path, parts) = disk(disk_dir.path());
    let t = TestApp::new()
        .provider::<Offering>()
        .commands(Arc::new(RealCommands))
        .install_disk(&disk_path);
    let uki_dir = t.root().join("boot/EFI/Linux");
    std::fs::create_dir_all(&uki_dir).unwrap();
    std::fs::write(uki_dir.join(format!("{OS}_{RUNNING}.efi")), b"running uki").unwrap();
    let (r, app, root) = t.router();
    let (s, v) = call(
        &r,
        "PUT",
        "/1.0/system/provider",
        &json!({"config": {"name": "images", "config": offer}}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    Machine {
        r,
        app,
        disk: disk_path,
        parts,
        root,
        _disk_dir: disk_dir,
    }
}

impl Machine {
    async fn check(&self) -> (StatusCode, Value) {
        call(
            &self.r,
            "POST",
            "/1.0/system/update/:check",
            r#"{"os_only": true}"#,
        )
        .await
    }

    async fn state(&self) -> Value {
        call(&self.r, "GET", "/1.0/system/update", "").await.1["metadata"]["state"].clone()
    }

    fn next_release(&self) -> String {
        self.app.with_state(|s| s.doc().os.next_release.clone())
    }

    fn ukis(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.path().join("boot/EFI/Linux"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Slot A still holds the running release: labels and the UKI.
    #[track_caller]
    fn assert_running_slot_intact(&self) {
        let l = labels(&self.disk);
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(l[i], kind.label(OS, RUNNING));
        }
        assert!(self.ukis().contains(&format!("{OS}_{RUNNING}.efi")));
    }
}

fn contents(ver: &str) -> Value {
    let names = files(ver);
    json!({
        names[0].clone(): "new uki",
        names[1].clone(): "new usr image",
        names[2].clone(): "new verity",
        names[3].clone(): "new signature",
    })
}

#[tokio::test]
async fn an_os_update_is_downloaded_staged_into_slot_b_and_recorded() {
    let m = machine(json!({"os": release(NEW, &files(NEW)), "contents": contents(NEW)})).await;
    let (s, v) = m.check().await;
    assert_eq!(s, 200, "{v}");
    let state = m.state().await;
    assert_eq!(
        state["status"],
        format!("{OS} has been updated to version {NEW}")
    );
    assert_eq!(state["needs_reboot"], true);
    assert_eq!(m.next_release(), NEW);
    let (_, info) = call(&m.r, "GET", "/1.0", "").await;
    assert_eq!(info["metadata"]["environment"]["os_version_next"], NEW);

    // Slot B holds the images, labelled with the new release; A is untouched.
    let l = labels(&m.disk);
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        assert_eq!(l[3 + i], kind.label(OS, NEW));
    }
    m.assert_running_slot_intact();
    let (usr_start, _) = m.parts[5];
    assert_eq!(read_at(&m.disk, usr_start, 13), b"new usr image");
    // The UKI is on the ESP with boot counting, next to the running one.
    assert_eq!(
        m.ukis(),
        [format!("{OS}_{RUNNING}.efi"), format!("{OS}_{NEW}+3-0.efi")]
    );
    // The downloaded files are kept in /var/lib/updates.
    let downloaded = m.root.path().join("var/lib/updates");
    assert_eq!(std::fs::read_dir(downloaded).unwrap().count(), 4);

    // Checking again finds nothing new: the staged release is not downloaded again.
    let (s, _) = m.check().await;
    assert_eq!(s, 200);
    assert_eq!(m.state().await["status"], "Update check completed");
    assert_eq!(m.state().await["needs_reboot"], true);
}

#[tokio::test]
async fn nothing_newer_on_offer_is_a_completed_check() {
    let m = machine(json!({"os": release(RUNNING, &files(RUNNING))})).await;
    let (s, _) = m.check().await;
    assert_eq!(s, 200);
    assert_eq!(m.state().await["status"], "Update check completed");
    assert_eq!(m.state().await["needs_reboot"], false);
    let m = machine(json!({})).await;
    let (s, _) = m.check().await;
    assert_eq!(s, 200);
    assert_eq!(m.next_release(), "");
}

#[tokio::test]
async fn an_older_release_is_refused_and_nothing_changes() {
    let m = machine(json!({"os": release("202501010000", &files("202501010000"))})).await;
    let v = m.check().await;
    let (status, text) = err(&v);
    assert_eq!(status, 500);
    assert!(text.starts_with("Failed to update the OS: "), "{text}");
    assert_eq!(m.state().await["status"], text);
    assert_eq!(m.next_release(), "");
    m.assert_running_slot_intact();
}

#[tokio::test]
async fn a_provider_failure_is_the_checks_error() {
    let m = machine(json!({"lookup_error": "index signature is not valid"})).await;
    let v = m.check().await;
    assert_eq!(
        err(&v),
        (
            500,
            "Failed to update the OS: index signature is not valid".into()
        )
    );
    assert_eq!(m.state().await["needs_reboot"], false);
}

#[tokio::test]
async fn a_release_missing_its_usr_image_is_not_staged_and_the_running_slot_stays() {
    let mut names = files(NEW);
    names.remove(1);
    let m = machine(json!({"os": release(NEW, &names), "contents": contents(NEW)})).await;
    let v = m.check().await;
    let (status, text) = err(&v);
    assert_eq!(status, 500);
    assert!(text.contains("usr"), "{text}");
    assert_eq!(m.next_release(), "");
    assert_eq!(m.state().await["needs_reboot"], false);
    m.assert_running_slot_intact();
    assert_eq!(m.ukis(), [format!("{OS}_{RUNNING}.efi")]);
}

#[tokio::test]
async fn with_auto_reboot_a_staged_update_reboots_through_the_lifecycle() {
    let m = machine(json!({"os": release(NEW, &files(NEW)), "contents": contents(NEW)})).await;
    let mut power = m.app.take_power_requests().expect("power requests");
    let (s, _) = call(
        &m.r,
        "PUT",
        "/1.0/system/update",
        &json!({"config": {"auto_reboot": true, "channel": "stable", "check_frequency": "6h"}})
            .to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert!(power.try_recv().is_err(), "nothing asked before the check");
    let (s, v) = m.check().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        power.try_recv().ok(),
        Some(incus_osd::platform::systemd::PowerAction::Reboot)
    );
    // Rebooting now: no reboot is left pending.
    assert_eq!(m.state().await["needs_reboot"], false);
    assert_eq!(m.next_release(), NEW);
}

#[tokio::test]
async fn a_release_version_that_is_not_a_version_is_refused_before_anything_is_written() {
    let m =
        machine(json!({"os": release("../../etc", &files(NEW)), "contents": contents(NEW)})).await;
    let v = m.check().await;
    assert_eq!(
        err(&v),
        (
            500,
            "Failed to update the OS: provider images offered an invalid version \"../../etc\""
                .into()
        )
    );
    assert!(!m.root.path().join("var/lib/updates").exists());
    assert_eq!(m.next_release(), "");
    m.assert_running_slot_intact();
}
