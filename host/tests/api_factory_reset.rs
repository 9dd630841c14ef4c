//! `POST /1.0/system/:factory-reset` through the router (tier 1): the seed archive written
//! over partition 2 of the boot disk (a file under the test root), the plugins' factory-reset
//! hooks, the removed swtpm state and Secure Boot opt-out, the exact `sgdisk` line (a
//! scripted command runner), and the hard reboot as the `b` written to the root's
//! `/proc/sysrq-trigger` a second after the answer. No TPM exists under a test root: its
//! clear fails, which is fatal unless allowed (the real clear runs in `tier3_tpm.rs`; the
//! real disk in `tier3_factory_reset.rs`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::std_types::{RResult, RSlice, RStr, RVec};
use incus_osd::testing::{call, err, Script, TestApp};
use plugin_api::abi::{ByteSinkRef, ByteSourceRef, PluginError, PluginOps, PluginOps_TO};
use plugin_api::application::AppContext;
use plugin_api::sdk::{Host, Result, Undo};
use plugin_api::{Application, Manifest};
use serde_json::{json, Value};

const CALLS: &str = "/var/log/app-calls";

/// An installed application with data to wipe: notes its hooks in a file under the root.
struct Keeper {
    host: Host,
}

fn note(host: &Host, line: &str) -> Result<()> {
    let mut text = host.read_to_string(CALLS)?.unwrap_or_default();
    text.push_str(line);
    text.push('\n');
    host.write_file(CALLS, text.as_bytes(), 0o644)
}

impl Keeper {
    fn wipe(&self, ctx: &AppContext, _: &Value) -> Result<()> {
        note(&self.host, &format!("wipe {}", ctx.name))
    }
}

impl Application for Keeper {
    const NAME: &'static str = "keeper";
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &[CALLS];
    const WIPE: Option<plugin_api::sdk::WipeFn<Self>> = Some(Self::wipe);
    type Config = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Keeper { host })
    }
    fn stop(&self, _: &mut Undo, ctx: &AppContext, _: &Value) -> Result<()> {
        note(&self.host, &format!("stop {}", ctx.name))
    }
}

/// A plugin declaring the factory-reset hook (a service here): records the operations it
/// is asked for.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl PluginOps for Recorder {
    fn invoke(&self, op: RStr<'_>, _: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.lock().unwrap().push(op.to_string());
        RResult::ROk(RVec::from(b"{}".to_vec()))
    }
    fn backup(&self, _: RSlice<'_, u8>, _: ByteSinkRef<'_>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(501, "no"))
    }
    fn restore(&self, _: ByteSourceRef<'_>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(501, "no"))
    }
}

struct Site {
    r: axum::Router,
    root: tempfile::TempDir,
    script: Script,
    recorded: Arc<Mutex<Vec<String>>>,
}

impl Site {
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.root.path().join(rel)
    }
    fn app_calls(&self) -> String {
        std::fs::read_to_string(self.path(CALLS.trim_start_matches('/'))).unwrap_or_default()
    }
    fn sysrq(&self) -> Option<String> {
        std::fs::read_to_string(self.path("proc/sysrq-trigger")).ok()
    }
    /// The seed archive on the partition: names, contents and modes.
    fn seeds(&self) -> Vec<(String, String, u32)> {
        let data = std::fs::read(self.path("dev/sda2")).unwrap();
        assert_eq!(&data[257..262], b"ustar");
        let mut a = tar::Archive::new(data.as_slice());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mode = e.header().mode().unwrap();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut e, &mut text).unwrap();
                (name, text, mode)
            })
            .collect()
    }
}

fn archive(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, c) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(c.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, n, c.as_bytes()).unwrap();
    }
    let mut data = b.into_inner().unwrap();
    data.resize(64 * 1024, 0);
    data
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A machine installed on `/dev/sda` with seeds on its partition 2, swtpm state and the
/// Secure Boot opt-out on the ESP, `keeper` installed and a service with a reset hook.
fn site() -> Site {
    let script = Script::default();
    let recorded = Arc::new(Mutex::new(vec![]));
    let rec = recorded.clone();
    let manifest: Manifest = serde_json::from_value(json!({
        "name": "resettable",
        "kind": "service",
        "version": "1.0.0",
        "api_version": plugin_api::API_VERSION,
        "hooks": ["get", "factory-reset"],
    }))
    .unwrap();
    let (r, _app, root) = TestApp::new()
        .commands(Arc::new(script.clone()))
        .install_disk("/dev/sda")
        .application::<Keeper>()
        .installed("keeper", "202511041601")
        .add(manifest, move |_| {
            Ok(PluginOps_TO::from_value(
                Recorder(rec),
                abi_stable::sabi_trait::TD_Opaque,
            ))
        })
        .router();
    write(
        root.path(),
        "dev/sda2",
        &archive(&[
            ("./network.yaml", "time:\n  timezone: Europe/Paris\n"),
            ("incus.yml", "apply_defaults: false\n"),
            ("update.json", "{\"channel\": \"testing\"}"),
        ]),
    );
    write(root.path(), "boot/swtpm/tpm2-00.permall", b"state");
    write(root.path(), "boot/sb-disabled", b"");
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    Site {
        r,
        root,
        script,
        recorded,
    }
}

async fn after_the_reboot_delay() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_reset_rewrites_the_seeds_runs_the_hooks_deletes_the_data_partitions_and_reboots() {
    let s = site();
    s.script.on("sgdisk", 0, "", "");
    let body = json!({
        "allow_tpm_reset_failure": true,
        "seeds": {"incus": {"apply_defaults": true}},
        "unknown": "ignored",
    });
    let res = call(
        &s.r,
        "POST",
        "/1.0/system/:factory-reset",
        &body.to_string(),
    )
    .await;
    assert_eq!(res.0, 200, "{}", res.1);
    assert_eq!(res.1["type"], "sync");
    // Merged: the provided seed replaces every file of its name; the rest stay.
    assert_eq!(
        s.seeds(),
        vec![
            (
                "network.yaml".into(),
                "time:\n  timezone: Europe/Paris\n".into(),
                0o600
            ),
            (
                "update.json".into(),
                "{\"channel\": \"testing\"}".into(),
                0o600
            ),
            (
                "incus.json".into(),
                "{\"apply_defaults\":true}".into(),
                0o600
            ),
        ]
    );
    assert_eq!(s.app_calls(), "stop keeper\nwipe keeper\n");
    assert_eq!(*s.recorded.lock().unwrap(), ["factory-reset"]);
    assert!(!s.path("boot/swtpm").exists());
    assert!(!s.path("boot/sb-disabled").exists());
    assert_eq!(s.script.calls(), ["sgdisk -d 9 -d 10 -d 11 /dev/sda"]);
    // The answer comes first; the reboot a second later.
    assert_eq!(s.sysrq(), None);
    after_the_reboot_delay().await;
    assert_eq!(s.sysrq().as_deref(), Some("b"));
}

#[tokio::test]
async fn wiping_keeps_only_the_provided_seeds_and_no_body_is_a_plain_reset() {
    let s = site();
    s.script.on("sgdisk", 0, "", "");
    let body = json!({"allow_tpm_reset_failure": true, "wipe_existing_seeds": true,
        "seeds": {"network": {"time": {"timezone": "UTC"}}}});
    let res = call(
        &s.r,
        "POST",
        "/1.0/system/:factory-reset",
        &body.to_string(),
    )
    .await;
    assert_eq!(res.0, 200, "{}", res.1);
    let names: Vec<String> = s.seeds().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["network.json"]);

    // No body: the existing seeds are kept as they are; the TPM clear (no TPM under a test
    // root) is then fatal.
    let s = site();
    s.script.on("sgdisk", 0, "", "");
    let res = call(&s.r, "POST", "/1.0/system/:factory-reset", "").await;
    let (status, text) = err(&res);
    assert_eq!(status, 500);
    assert!(text.starts_with("cannot reset the TPM: "), "{text}");
    let names: Vec<String> = s.seeds().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["network.yaml", "incus.yml", "update.json"]);
    // Nothing after the TPM step ran.
    assert!(s.path("boot/swtpm/tpm2-00.permall").exists());
    assert!(s.path("boot/sb-disabled").exists());
    assert!(s.script.calls().is_empty());
    after_the_reboot_delay().await;
    assert_eq!(s.sysrq(), None);
}

#[tokio::test]
async fn bad_seeds_and_bodies_are_refused_before_anything_changes() {
    let s = site();
    let before = std::fs::read(s.path("dev/sda2")).unwrap();
    for (body, want) in [
        (
            json!({"seeds": {"network": null}}).to_string(),
            "seed data for 'network' is not defined",
        ),
        (
            json!({"seeds": {"network": "dhcp"}}).to_string(),
            "seed data for 'network' is not a JSON object",
        ),
        (
            json!({"seeds": {"../boot": {}}}).to_string(),
            "seed name \"../boot\" is not a valid file name",
        ),
    ] {
        let res = call(&s.r, "POST", "/1.0/system/:factory-reset", &body).await;
        assert_eq!(err(&res), (400, want.to_string()));
    }
    let res = call(&s.r, "POST", "/1.0/system/:factory-reset", "{\"seeds\": ").await;
    assert_eq!(err(&res).0, 400);
    let res = call(&s.r, "POST", "/1.0/system/:factory-reset", "[]").await;
    assert_eq!(err(&res).0, 400);
    assert_eq!(std::fs::read(s.path("dev/sda2")).unwrap(), before);
    assert_eq!(s.app_calls(), "");
    assert!(s.recorded.lock().unwrap().is_empty());
    assert!(s.script.calls().is_empty());
    assert!(s.path("boot/sb-disabled").exists());
    after_the_reboot_delay().await;
    assert_eq!(s.sysrq(), None);
}

#[tokio::test]
async fn when_the_seed_write_fails_nothing_else_happens() {
    let s = site();
    s.script.on("sgdisk", 0, "", "");
    // The seed partition cannot be written (a directory stands in for it).
    std::fs::remove_file(s.path("dev/sda2")).unwrap();
    std::fs::create_dir(s.path("dev/sda2")).unwrap();
    let body = json!({"allow_tpm_reset_failure": true, "wipe_existing_seeds": true});
    let res = call(
        &s.r,
        "POST",
        "/1.0/system/:factory-reset",
        &body.to_string(),
    )
    .await;
    let (status, text) = err(&res);
    assert_eq!(status, 500);
    assert!(text.starts_with("cannot write the seeds: "), "{text}");
    assert!(s.path("boot/swtpm/tpm2-00.permall").exists());
    assert!(s.path("boot/sb-disabled").exists());
    assert!(s.script.calls().is_empty());
    after_the_reboot_delay().await;
    assert_eq!(s.sysrq(), None);

    // No seed partition at all: refused before the hooks run.
    let s = site();
    std::fs::remove_file(s.path("dev/sda2")).unwrap();
    let res = call(
        &s.r,
        "POST",
        "/1.0/system/:factory-reset",
        &body.to_string(),
    )
    .await;
    assert_eq!(
        err(&res),
        (
            500,
            "the seed partition /dev/sda2 does not exist".to_string()
        )
    );
    assert_eq!(s.app_calls(), "");
}

#[tokio::test]
async fn a_failed_sgdisk_is_the_error_and_no_reboot_follows() {
    let s = site();
    s.script.on("sgdisk", 2, "", "Problem opening /dev/sda");
    let body = json!({"allow_tpm_reset_failure": true});
    let res = call(
        &s.r,
        "POST",
        "/1.0/system/:factory-reset",
        &body.to_string(),
    )
    .await;
    assert_eq!(
        err(&res),
        (
            500,
            "Failed to run: sgdisk -d 9 -d 10 -d 11 /dev/sda: exit status 2 (Problem opening /dev/sda)"
                .to_string()
        )
    );
    after_the_reboot_delay().await;
    assert_eq!(s.sysrq(), None);
}

#[tokio::test]
async fn only_post_is_served_and_it_is_built() {
    let s = site();
    // Another method is upstream's "not implemented", not the "not built yet" answer.
    let res = call(&s.r, "GET", "/1.0/system/:factory-reset", "").await;
    let (status, text) = err(&res);
    assert_eq!(status, 501);
    assert!(!text.contains("by this daemon yet"), "{text}");
    assert!(s.script.calls().is_empty());
    assert!(s.path("boot/sb-disabled").exists());
}
