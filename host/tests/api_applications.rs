//! `/1.0/applications` through the router (tier 1): installs from a provider compiled into
//! the test, the primary rule, dependencies, variants, removal, updates, version switches,
//! factory resets and restarts, with what the host owns (the record, the images, the links)
//! checked on disk. `systemd-sysext refresh` and `daemon-reload` are recorded at the
//! boundary here (a fake command runner and unit manager); tier 3 merges real extensions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::platform::exec::{Commands, Output};
use incus_osd::platform::systemd::{PowerAction, Systemd, UnitAction, Units};
use incus_osd::platform::PlatformError;
use incus_osd::testing::{gpt_stub, TestApp};
use plugin_api::application::{AppContext, Replace};
use plugin_api::provider::{FetchOrder, Release, ReleaseFile, Target, UpdateContext};
use plugin_api::sdk::{Error, Host, Result, Undo};
use plugin_api::Application;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The running OS release (TestApp's): its image stays available after an update, as the
/// running slot's.
const V1: &str = "202511041601";
const V2: &str = "202602010000";
const CALLS: &str = "/var/log/app-calls";

// ---- the machine's boundary ---------------------------------------------------------------

/// What the machine was asked: every command line and daemon-reload, in order. A refresh
/// merges every link under `root` (set once the router is built), as `systemd-sysext
/// status --json=short` then says (systemd 252's shape).
#[derive(Default)]
struct Machine {
    log: Mutex<Vec<String>>,
    fail_refresh: AtomicBool,
    root: Mutex<Option<PathBuf>>,
}

impl Machine {
    fn status(&self) -> Vec<u8> {
        let root = self.root.lock().unwrap().clone().expect("the root is set");
        let mut names: Vec<String> = std::fs::read_dir(root.join("var/lib/extensions"))
            .map(|d| {
                d.filter_map(|e| {
                    let n = e.ok()?.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".raw").map(str::to_string)
                })
                .collect()
            })
            .unwrap_or_default();
        names.sort();
        let usr = if names.is_empty() {
            json!("none")
        } else {
            json!(names)
        };
        json!([{"hierarchy": "/opt", "extensions": "none", "since": null},
               {"hierarchy": "/usr", "extensions": usr, "since": 1796638054544665u64}])
        .to_string()
        .into_bytes()
    }
}

impl Commands for Machine {
    fn run(
        &self,
        argv: &[String],
        _: &[u8],
        _: Duration,
    ) -> std::result::Result<Output, PlatformError> {
        self.log.lock().unwrap().push(argv.join(" "));
        if argv.join(" ") == "systemd-sysext status --json=short" {
            return Ok(Output {
                status: 0,
                stdout: self.status(),
                stderr: vec![],
            });
        }
        let fail = argv.first().is_some_and(|a| a == "systemd-sysext")
            && self.fail_refresh.load(Ordering::SeqCst);
        Ok(Output {
            status: i32::from(fail),
            stdout: vec![],
            stderr: if fail {
                b"Failed to merge extensions: Invalid argument".to_vec()
            } else {
                vec![]
            },
        })
    }
}

impl Units for Machine {
    fn unit(&self, action: UnitAction, unit: &str) -> std::result::Result<String, PlatformError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {unit}", action.as_str()));
        Ok("inactive".into())
    }
    fn daemon_reload(&self) -> std::result::Result<(), PlatformError> {
        self.log.lock().unwrap().push("daemon-reload".into());
        Ok(())
    }
}

impl Systemd for Machine {
    fn power(&self, _: PowerAction) -> std::result::Result<(), PlatformError> {
        Ok(())
    }
    fn reachable(&self) -> std::result::Result<(), PlatformError> {
        Ok(())
    }
}

// ---- the provider: offers what its config says --------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Offer {
    /// Application name -> version on offer.
    apps: BTreeMap<String, String>,
    /// Versions whose images are not disk images.
    corrupt: Vec<String>,
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
    fn lookup(&self, c: &Offer, _: &UpdateContext, t: &Target) -> Result<Option<Release>> {
        let Target::Application(name) = t else {
            return Ok(None);
        };
        Ok(c.apps.get(name).map(|v| Release {
            version: v.clone(),
            files: vec![ReleaseFile {
                component: "application".into(),
                filename: format!("x86_64/{name}.raw.gz"),
                ..ReleaseFile::default()
            }],
            ..Release::default()
        }))
    }
    fn fetch(&self, c: &Offer, order: &FetchOrder) -> Result<Vec<String>> {
        let mut out = vec![];
        for f in &order.release.files {
            let path = format!("{}/{}", order.target_dir, f.target_name());
            let data = if c.corrupt.contains(&order.release.version) {
                b"not a disk image".to_vec()
            } else {
                gpt_stub()
            };
            self.host.write_file(&path, &data, 0o644)?;
            out.push(path);
        }
        Ok(out)
    }
}

// ---- the applications ------------------------------------------------------------------------

/// Appends `line` to the calls log under the root.
fn note(host: &Host, line: String) -> Result<()> {
    let mut text = host.read_to_string(CALLS)?.unwrap_or_default();
    text.push_str(&line);
    text.push('\n');
    host.write_file(CALLS, text.as_bytes(), 0o644)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct PrimeConfig {
    /// Refuse to be replaced by a variant.
    pinned: bool,
    /// Fail the start hook.
    broken: bool,
}

/// A primary application with a variant (`prime-lts`), data to wipe and a replacement
/// rule.
struct Prime {
    host: Host,
}

impl Prime {
    fn wipe(&self, ctx: &AppContext, _: &PrimeConfig) -> Result<()> {
        note(&self.host, format!("wipe {}", ctx.name))?;
        self.host.remove("/var/lib/prime")
    }
    fn can_replace(&self, r: &Replace) -> Result<()> {
        if self.host.exists("/var/lib/prime/pinned")? {
            return Err(Error::bad_request(format!(
                "can't replace application '{}' with '{}': pinned",
                r.from.name, r.to
            )));
        }
        Ok(())
    }
}

impl Application for Prime {
    const NAME: &'static str = "prime";
    const VARIANTS: &'static [&'static str] = &["prime-lts"];
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &["/var/lib/prime", CALLS];
    const WIPE: Option<plugin_api::sdk::WipeFn<Self>> = Some(Self::wipe);
    const CAN_REPLACE: Option<plugin_api::sdk::CanReplaceFn<Self>> = Some(Self::can_replace);
    type Config = PrimeConfig;

    fn new(host: Host) -> Result<Self> {
        Ok(Prime { host })
    }
    fn friendly_version(&self, ctx: &AppContext, _: &PrimeConfig) -> Result<String> {
        Ok(format!("1.0 [{}]", ctx.version))
    }
    fn start(&self, _: &mut Undo, ctx: &AppContext, c: &PrimeConfig) -> Result<()> {
        note(&self.host, format!("start {} {}", ctx.name, ctx.version))?;
        if c.broken || self.host.exists("/var/lib/prime/broken")? {
            return Err(Error::internal("the stand-in daemon does not start"));
        }
        self.host.write_file("/var/lib/prime/data", b"data", 0o600)
    }
    fn stop(&self, _: &mut Undo, ctx: &AppContext, _: &PrimeConfig) -> Result<()> {
        note(&self.host, format!("stop {}", ctx.name))
    }
    fn initialize(&self, ctx: &AppContext, _: &PrimeConfig) -> Result<()> {
        note(&self.host, format!("initialize {}", ctx.name))
    }
    fn restart(&self, ctx: &AppContext, _: &PrimeConfig) -> Result<()> {
        note(&self.host, format!("restart {} {}", ctx.name, ctx.version))
    }
    fn reload(&self, ctx: &AppContext, _: &PrimeConfig) -> Result<()> {
        note(&self.host, format!("reload {} {}", ctx.name, ctx.version))
    }
    fn running(&self, _: &AppContext, _: &PrimeConfig) -> Result<bool> {
        self.host.exists("/var/lib/prime/data")
    }
}

/// Another primary application.
struct Other {
    host: Host,
}

impl Application for Other {
    const NAME: &'static str = "other";
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &[CALLS];
    type Config = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Other { host })
    }
    fn start(&self, _: &mut Undo, ctx: &AppContext, _: &Value) -> Result<()> {
        note(&self.host, format!("start {} {}", ctx.name, ctx.version))
    }
}

/// A non-primary application that needs `prime`; no data of its own to wipe.
struct Addon {
    host: Host,
}

impl Application for Addon {
    const NAME: &'static str = "addon";
    const DEPENDENCIES: &'static [&'static str] = &["prime"];
    const PATHS: &'static [&'static str] = &[CALLS];
    type Config = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Addon { host })
    }
    fn start(&self, _: &mut Undo, ctx: &AppContext, _: &Value) -> Result<()> {
        note(&self.host, format!("start {} {}", ctx.name, ctx.version))
    }
    fn stop(&self, _: &mut Undo, ctx: &AppContext, _: &Value) -> Result<()> {
        note(&self.host, format!("stop {}", ctx.name))
    }
}

// ---- the harness -----------------------------------------------------------------------------

struct Site {
    r: Router,
    machine: Arc<Machine>,
    _root: tempfile::TempDir,
    root: PathBuf,
}

fn site_with(build: impl FnOnce(TestApp) -> TestApp) -> Site {
    let machine = Arc::new(Machine::default());
    let t = TestApp::new()
        .commands(machine.clone())
        .systemd(machine.clone())
        .provider::<Offering>()
        .application::<Prime>()
        .application::<Other>()
        .application::<Addon>();
    let (r, _app, root) = build(t).router();
    let path = root.path().to_path_buf();
    *machine.root.lock().unwrap() = Some(path.clone());
    Site {
        r,
        machine,
        _root: root,
        root: path,
    }
}

fn site() -> Site {
    site_with(|t| t)
}

impl Site {
    async fn call(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.r.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn ok(&self, method: &str, uri: &str, body: &str) -> Value {
        let (s, v) = self.call(method, uri, body).await;
        assert_eq!(s, 200, "{method} {uri}: {v}");
        v["metadata"].clone()
    }

    async fn err(&self, method: &str, uri: &str, body: &str) -> (u16, String) {
        let (s, v) = self.call(method, uri, body).await;
        assert_eq!(v["type"], "error", "{method} {uri}: {v}");
        (s.as_u16(), v["error"].as_str().unwrap().to_string())
    }

    async fn offer(&self, apps: Value) {
        let body = json!({"config": {"name": "images", "config": {"apps": apps}}}).to_string();
        self.ok("PUT", "/1.0/system/provider", &body).await;
    }

    async fn offer_corrupt(&self, apps: Value, corrupt: &[&str]) {
        let body =
            json!({"config": {"name": "images", "config": {"apps": apps, "corrupt": corrupt}}})
                .to_string();
        self.ok("PUT", "/1.0/system/provider", &body).await;
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join(&CALLS[1..]))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn machine_log(&self) -> Vec<String> {
        self.machine.log.lock().unwrap().clone()
    }

    fn path(&self, os_path: &str) -> PathBuf {
        self.root.join(os_path.trim_start_matches('/'))
    }

    fn link(&self, app: &str) -> Option<String> {
        std::fs::read_link(self.path(&format!("/var/lib/extensions/{app}.raw")))
            .ok()
            .map(|t| t.display().to_string())
    }

    fn image(&self, version: &str, app: &str) -> PathBuf {
        self.path(&format!("/var/lib/incus-os-extensions/{version}/{app}.raw"))
    }

    async fn list(&self) -> Value {
        self.ok("GET", "/1.0/applications", "").await
    }

    /// Waits for the background work of an "answer first" operation.
    async fn until(&self, what: &str, done: impl Fn(&Site) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: calls {:?}",
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

// ---- install ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_install_downloads_links_merges_starts_and_initializes() {
    let s = site();
    s.offer(json!({"prime": V1})).await;
    assert_eq!(s.list().await, json!([]));
    assert_eq!(
        s.err("GET", "/1.0/applications/prime", "").await,
        (404, "not found".into())
    );

    s.ok("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    assert_eq!(s.list().await, json!(["/1.0/applications/prime"]));
    assert!(exists(&s.image(V1, "prime")));
    assert_eq!(
        s.link("prime").as_deref(),
        Some(format!("/var/lib/incus-os-extensions/{V1}/prime.raw").as_str())
    );
    // Merged, and systemd told, before the application started.
    let log = s.machine_log();
    assert_eq!(
        log,
        [
            "systemd-sysext refresh",
            "systemd-sysext status --json=short",
            "daemon-reload"
        ]
    );
    assert_eq!(
        s.calls(),
        [format!("start prime {V1}"), "initialize prime".to_string()]
    );
    let v = s.ok("GET", "/1.0/applications/prime", "").await;
    assert_eq!(
        v,
        json!({
            "state": {
                "is_primary": true,
                "initialized": true,
                "friendly_version": format!("1.0 [{V1}]"),
                "version": V1,
                "available_versions": [V1]
            },
            "config": {"pinned": false, "broken": false}
        })
    );
    // Upstream's key order in the state.
    let req = Request::builder()
        .uri("/1.0/applications/prime")
        .body(Body::empty())
        .unwrap();
    let resp = s.r.clone().oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let order = [
        "is_primary",
        "initialized",
        "friendly_version",
        "version",
        "available",
    ];
    let at: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");

    assert_eq!(
        s.err("POST", "/1.0/applications", r#"{"name":"prime"}"#)
            .await,
        (409, "already exists".into())
    );
}

#[tokio::test]
async fn install_checks_come_in_upstreams_order() {
    let s = site();
    s.offer(json!({"prime": V1, "other": V1})).await;
    assert_eq!(
        s.err("POST", "/1.0/applications", "").await,
        (400, "missing application name".into())
    );
    assert_eq!(
        s.err("POST", "/1.0/applications", r#"{"name":""}"#).await,
        (400, "missing application name".into())
    );
    assert_eq!(
        s.err("POST", "/1.0/applications", r#"{"name":"nope"}"#)
            .await,
        (400, "unknown application 'nope'".into())
    );
    // Tolerant, but a body that does not decode is refused.
    assert_eq!(
        s.err("POST", "/1.0/applications", r#"{"name":1}"#).await.0,
        400
    );
    s.ok("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    assert_eq!(
        s.err("POST", "/1.0/applications", r#"{"name":"other"}"#)
            .await,
        (400, "a primary application is already installed".into())
    );
    assert!(!exists(&s.image(V1, "other")), "nothing was downloaded");
}

#[tokio::test]
async fn a_dependency_is_installed_first() {
    let s = site();
    s.offer(json!({"prime": V1, "addon": V2})).await;
    s.ok("POST", "/1.0/applications", r#"{"name":"addon"}"#)
        .await;
    assert_eq!(
        s.list().await,
        json!(["/1.0/applications/addon", "/1.0/applications/prime"])
    );
    assert_eq!(
        s.calls(),
        [
            format!("start prime {V1}"),
            "initialize prime".to_string(),
            format!("start addon {V2}")
        ]
    );
    let v = s.ok("GET", "/1.0/applications/addon", "").await;
    assert_eq!(v["state"]["is_primary"], false);
    assert_eq!(v["state"]["friendly_version"], V2, "the version by default");
}

#[tokio::test]
async fn a_failed_install_leaves_nothing_behind() {
    // The image is not a disk image: refused before anything is linked.
    let s = site();
    s.offer_corrupt(json!({"prime": V1}), &[V1]).await;
    let (code, msg) = s
        .err("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    assert_eq!(code, 500);
    assert!(msg.contains("is not a disk image"), "{msg}");
    assert_eq!(s.list().await, json!([]));
    assert!(!exists(&s.image(V1, "prime")));
    assert_eq!(s.link("prime"), None);
    assert!(s.calls().is_empty());

    // The merge fails: the link goes again.
    let s = site();
    s.offer(json!({"prime": V1})).await;
    s.machine.fail_refresh.store(true, Ordering::SeqCst);
    let (code, msg) = s
        .err("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    assert_eq!(code, 500);
    assert!(msg.contains("cannot refresh system extensions"), "{msg}");
    assert_eq!(s.link("prime"), None);
    assert!(!exists(&s.image(V1, "prime")));
    assert_eq!(s.list().await, json!([]));

    // The application does not start: stopped, unlinked, unmerged, forgotten.
    let s = site();
    s.offer(json!({"prime": V1})).await;
    std::fs::create_dir_all(s.path("/var/lib/prime")).unwrap();
    std::fs::write(s.path("/var/lib/prime/broken"), "").unwrap();
    let (code, msg) = s
        .err("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    assert_eq!(code, 500);
    assert!(msg.contains("does not start"), "{msg}");
    assert_eq!(s.link("prime"), None);
    assert!(!exists(&s.image(V1, "prime")));
    assert_eq!(s.list().await, json!([]));
    assert_eq!(
        s.calls(),
        [format!("start prime {V1}"), "stop prime".to_string()]
    );
}

// ---- remove ----------------------------------------------------------------------------------

#[tokio::test]
async fn remove_refuses_the_primary_and_takes_the_rest_away() {
    let s = site();
    s.offer(json!({"prime": V1, "addon": V1})).await;
    s.ok("POST", "/1.0/applications", r#"{"name":"addon"}"#)
        .await;
    assert_eq!(
        s.err("POST", "/1.0/applications/prime/:remove", "").await,
        (500, "cannot remove a primary application".into())
    );
    assert_eq!(
        s.err("GET", "/1.0/applications/prime/:remove", "").await.0,
        501,
        "the method is checked first"
    );
    assert_eq!(
        s.err("POST", "/1.0/applications/nope/:remove", "").await.0,
        404
    );
    s.ok("POST", "/1.0/applications/addon/:remove", "").await;
    assert_eq!(s.list().await, json!(["/1.0/applications/prime"]));
    assert_eq!(s.link("addon"), None);
    assert!(!exists(&s.image(V1, "addon")));
    assert!(
        exists(&s.image(V1, "prime")),
        "a shared release directory stays"
    );
    assert_eq!(s.calls().last().unwrap(), "stop addon");
    assert_eq!(
        s.err("GET", "/1.0/applications/addon", "").await,
        (404, "not found".into())
    );
}

// ---- updates and versions ----------------------------------------------------------------------

#[tokio::test]
async fn check_update_installs_a_newer_image_and_reloads_then_switch_version_goes_back() {
    let s = site();
    s.offer(json!({"prime": V1})).await;
    s.ok("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    s.offer(json!({"prime": V2})).await;
    s.ok("POST", "/1.0/applications/prime/:check-update", "")
        .await;
    s.until("the update", |s| {
        s.calls().iter().any(|c| c.starts_with("reload"))
    })
    .await;
    assert_eq!(s.calls().last().unwrap(), &format!("reload prime {V2}"));
    let v = s.ok("GET", "/1.0/applications/prime", "").await;
    assert_eq!(v["state"]["version"], V2);
    assert_eq!(v["state"]["available_versions"], json!([V1, V2]));
    assert!(s.link("prime").unwrap().contains(V2));

    // Back to the previous one: merged before the answer, restarted after it.
    s.ok("POST", "/1.0/applications/prime/:switch-version", "")
        .await;
    assert!(s.link("prime").unwrap().contains(V1));
    assert_eq!(
        s.ok("GET", "/1.0/applications/prime", "").await["state"]["version"],
        V1
    );
    s.until("the restart", |s| {
        s.calls().iter().any(|c| c.starts_with("restart"))
    })
    .await;
    assert_eq!(s.calls().last().unwrap(), &format!("restart prime {V1}"));

    assert_eq!(
        s.err(
            "POST",
            "/1.0/applications/prime/:switch-version",
            r#"{"version":"202001010000"}"#
        )
        .await,
        (
            400,
            "cannot switch application to version '202001010000' because it does not exist locally"
                .into()
        )
    );
    assert_eq!(
        s.err("POST", "/1.0/applications/prime/:switch-version", "")
            .await,
        (
            400,
            "cannot rollback application as no earlier version is available locally".into()
        )
    );
    // A body that does not decode is refused before anything changes.
    assert_eq!(
        s.err(
            "POST",
            "/1.0/applications/prime/:switch-version",
            r#"{"version":1}"#
        )
        .await
        .0,
        400
    );
    // A merge that fails puts the link and the recorded version back.
    s.machine.fail_refresh.store(true, Ordering::SeqCst);
    let (code, msg) = s
        .err(
            "POST",
            "/1.0/applications/prime/:switch-version",
            &format!(r#"{{"version":"{V2}"}}"#),
        )
        .await;
    assert_eq!(code, 500);
    assert!(msg.contains("cannot refresh system extensions"), "{msg}");
    assert!(s.link("prime").unwrap().contains(V1));
    assert_eq!(
        s.ok("GET", "/1.0/applications/prime", "").await["state"]["version"],
        V1
    );
}

#[tokio::test]
async fn switch_version_needs_two_local_versions() {
    let s = site_with(|t| t.installed("prime", V1));
    assert_eq!(
        s.err("POST", "/1.0/applications/prime/:switch-version", "")
            .await,
        (
            400,
            "only one version of the application is available locally, cannot switch to a different version"
                .into()
        )
    );
}

// ---- variants ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_variant_replaces_the_installed_one_in_the_background_keeping_its_data() {
    let s = site();
    s.offer(json!({"prime": V1, "prime-lts": V2})).await;
    s.ok("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    std::fs::write(s.path("/var/lib/prime/pinned"), "").unwrap();
    assert_eq!(
        s.err("POST", "/1.0/applications", r#"{"name":"prime-lts"}"#)
            .await,
        (
            400,
            "can't replace application 'prime' with 'prime-lts': pinned".into()
        )
    );
    s.ok(
        "PUT",
        "/1.0/applications/prime",
        r#"{"config":{"pinned":false,"broken":false}}"#,
    )
    .await;
    std::fs::remove_file(s.path("/var/lib/prime/pinned")).unwrap();
    s.ok("POST", "/1.0/applications", r#"{"name":"prime-lts"}"#)
        .await;
    s.until("the replacement", |s| s.link("prime-lts").is_some())
        .await;
    assert_eq!(s.list().await, json!(["/1.0/applications/prime-lts"]));
    assert_eq!(s.link("prime"), None);
    assert!(!exists(&s.image(V1, "prime")));
    let v = s.ok("GET", "/1.0/applications/prime-lts", "").await;
    assert_eq!(v["state"]["version"], V2);
    assert_eq!(v["state"]["initialized"], true);
    assert_eq!(v["config"]["pinned"], false, "the config is shared");
    assert!(
        !s.calls().iter().any(|c| c == "initialize prime-lts"),
        "initialized is kept: {:?}",
        s.calls()
    );
    assert!(exists(&s.path("/var/lib/prime/data")), "data is kept");
    assert_eq!(
        s.err("GET", "/1.0/applications/prime", "").await.0,
        404,
        "the other variant is not installed"
    );
}

// ---- answer first, then work -----------------------------------------------------------------

#[tokio::test]
async fn factory_reset_stops_wipes_starts_and_initializes_after_answering() {
    let s = site_with(|t| t.installed("prime", V1));
    s.ok("POST", "/1.0/applications/prime/:factory-reset", "")
        .await;
    assert!(s.calls().is_empty(), "answered before the work");
    s.until("the reset", |s| {
        s.calls().iter().any(|c| c.starts_with("initialize"))
    })
    .await;
    assert_eq!(
        s.calls(),
        [
            "stop prime".to_string(),
            "wipe prime".to_string(),
            format!("start prime {V1}"),
            "initialize prime".to_string()
        ]
    );
    // The host records `initialized` once the hook returned.
    let mut initialized = Value::Null;
    for _ in 0..250 {
        initialized =
            s.ok("GET", "/1.0/applications/prime", "").await["state"]["initialized"].clone();
        if initialized == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(initialized, true);
}

#[tokio::test]
async fn restart_runs_after_answering() {
    let s = site_with(|t| t.installed("prime", V1));
    s.ok("POST", "/1.0/applications/prime/:restart", "").await;
    s.until("the restart", |s| !s.calls().is_empty()).await;
    assert_eq!(s.calls(), [format!("restart prime {V1}")]);
}

#[tokio::test]
async fn verbs_an_application_lacks_answer_not_supported() {
    let s = site_with(|t| t.installed("addon", V1).installed("prime", V1));
    for verb in [":action", ":backup", ":restore"] {
        assert_eq!(
            s.err("POST", &format!("/1.0/applications/addon/{verb}"), "{}")
                .await,
            (500, "not supported".into()),
            "{verb}"
        );
    }
    assert_eq!(
        s.err("POST", "/1.0/applications/addon/:debug", "{}").await,
        (501, "not implemented".into())
    );
}

// ---- the update check's selection --------------------------------------------------------------

#[tokio::test]
async fn an_update_check_installs_incus_when_no_application_is_installed() {
    let machine = Arc::new(Machine::default());
    // The primary test application, named `incus` (the default primary).
    let mut m = plugin_api::sdk::__application_manifest::<Prime>("1.0.0", plugin_api::API_VERSION);
    m.name = "incus".into();
    m.variants.clear();
    let (r, app, root) = TestApp::new()
        .commands(machine.clone())
        .systemd(machine.clone())
        .provider::<Offering>()
        .add(m, plugin_api::sdk::__application_instance::<Prime>)
        .router();
    *machine.root.lock().unwrap() = Some(root.path().to_path_buf());
    let s = Site {
        r,
        machine,
        root: root.path().to_path_buf(),
        _root: root,
    };
    s.offer(json!({"incus": V1})).await;
    incus_osd::system::update::runner::check(
        &app,
        incus_osd::system::update::schedule::CheckKind::UserRequested,
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!(s.list().await, json!(["/1.0/applications/incus"]));
    assert_eq!(
        s.calls(),
        [format!("start incus {V1}"), "initialize incus".to_string()]
    );
    // Installed: the next check only looks for its update.
    incus_osd::system::update::runner::check(
        &app,
        incus_osd::system::update::schedule::CheckKind::UserRequested,
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!(s.calls().len(), 2);
}

#[tokio::test]
async fn an_install_under_a_development_root_is_refused_before_downloading() {
    // No command runner: the platform is offline, as under a development root.
    let (r, _app, root) = TestApp::new()
        .provider::<Offering>()
        .application::<Prime>()
        .router();
    let s = Site {
        r,
        machine: Arc::default(),
        root: root.path().to_path_buf(),
        _root: root,
    };
    s.offer(json!({"prime": V1})).await;
    let (code, msg) = s
        .err("POST", "/1.0/applications", r#"{"name":"prime"}"#)
        .await;
    assert_eq!(code, 500);
    assert!(
        msg.starts_with("cannot install application 'prime': offline:"),
        "{msg}"
    );
    assert!(!exists(&s.path("/var/lib/incus-os-extensions")));
}

// ---- declared backups ----------------------------------------------------------------------------

/// An application that declares its data directory: the host writes and restores it.
struct Keeper {
    host: Host,
}

impl Keeper {
    fn wipe(&self, _: &AppContext, _: &Value) -> Result<()> {
        self.host.remove("/var/lib/keeper")
    }
}

impl Application for Keeper {
    const NAME: &'static str = "keeper";
    const PATHS: &'static [&'static str] = &["/var/lib/keeper", CALLS];
    const BACKUP: Option<plugin_api::sdk::Backup> = Some(
        plugin_api::sdk::Backup::new("/var/lib/keeper")
            .excluded(&["unix.socket"])
            .excluded_unless_complete(&["cache"])
            .units(&["keeper.service", "keeper-helper.service"]),
    );
    const WIPE: Option<plugin_api::sdk::WipeFn<Self>> = Some(Self::wipe);
    type Config = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Keeper { host })
    }
    fn restored(&self, ctx: &AppContext, _: &Value) -> Result<()> {
        note(&self.host, format!("restored {}", ctx.name))
    }
}

/// The entry names of a gzip tar.
fn entries(archive: &[u8]) -> Vec<String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

async fn raw(s: &Site, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let resp = s.r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, bytes.to_vec())
}

#[tokio::test]
async fn a_declared_backup_survives_a_factory_reset_and_is_restored_around_its_units() {
    let s = site_with(|t| t.application::<Keeper>().installed("keeper", V1));
    let data = s.path("/var/lib/keeper");
    std::fs::create_dir_all(data.join("db")).unwrap();
    std::fs::create_dir_all(data.join("cache")).unwrap();
    std::fs::write(data.join("db/main.db"), "precious").unwrap();
    std::fs::write(data.join("cache/blob"), "cached").unwrap();
    std::fs::write(data.join("unix.socket"), "").unwrap();
    std::os::unix::fs::symlink("db/main.db", data.join("current")).unwrap();

    let (status, ctype, archive) =
        raw(&s, "POST", "/1.0/applications/keeper/:backup", vec![]).await;
    assert_eq!((status.as_u16(), ctype.as_str()), (200, "application/gzip"));
    let mut names = entries(&archive);
    names.sort();
    assert_eq!(names, ["current", "db", "db/main.db"]);
    let (_, _, complete) = raw(
        &s,
        "POST",
        "/1.0/applications/keeper/:backup",
        br#"{"complete": true}"#.to_vec(),
    )
    .await;
    assert!(entries(&complete).contains(&"cache/blob".to_string()));

    s.ok("POST", "/1.0/applications/keeper/:factory-reset", "")
        .await;
    s.until("the wipe", |_| !data.join("db").exists()).await;

    // A hostile archive is refused before anything is swapped.
    let mut evil = tar::Builder::new(flate2::write::GzEncoder::new(
        vec![],
        flate2::Compression::default(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    evil.append_link(&mut h, "escape", "/etc").unwrap();
    let evil = evil.into_inner().unwrap().finish().unwrap();
    let (status, _, body) = raw(&s, "POST", "/1.0/applications/keeper/:restore", evil).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status.as_u16(), 400, "{body}");
    assert!(body.contains("escape"), "{body}");
    assert!(!data.join("escape").exists());

    let before = s.machine_log().len();
    let (status, _, _) = raw(
        &s,
        "POST",
        "/1.0/applications/keeper/:restore",
        archive.clone(),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    // Until the swap is done, another restore would take the extraction away under it.
    let (status, _, body) = raw(&s, "POST", "/1.0/applications/keeper/:restore", archive).await;
    assert_eq!(
        (
            status.as_u16(),
            String::from_utf8_lossy(&body).contains("already in progress")
        ),
        (409, true)
    );
    s.until("the swap", |s| {
        s.calls().iter().any(|c| c == "restored keeper")
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(data.join("db/main.db")).unwrap(),
        "precious"
    );
    assert_eq!(
        std::fs::read_link(data.join("current")).unwrap(),
        PathBuf::from("db/main.db")
    );
    assert!(!data.join("cache").exists(), "not in the archive");
    assert_eq!(
        s.machine_log()[before..],
        [
            "stop keeper.service",
            "stop keeper-helper.service",
            "start keeper.service",
            "start keeper-helper.service"
        ]
    );
    let v = s.ok("GET", "/1.0/applications/keeper", "").await;
    assert!(v["state"]["last_restored"].is_string(), "{v}");
}

// ---- :debug ---------------------------------------------------------------------------------------

/// An application whose logs `:debug` bundles.
struct Logger;

impl Application for Logger {
    const NAME: &'static str = "logger";
    const DEBUG_LOGS: &'static [&'static str] =
        &["/run/logger", "/var/log/logger", "/var/log/none"];
    type Config = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Logger)
    }
}

#[tokio::test]
async fn debug_get_logs_streams_the_log_directories_and_nothing_else() {
    let s = site_with(|t| {
        t.application::<Logger>()
            .installed("logger", V1)
            .installed("addon", V1)
    });
    std::fs::create_dir_all(s.path("/run/logger/sub")).unwrap();
    std::fs::create_dir_all(s.path("/var/log/logger")).unwrap();
    std::fs::write(s.path("/run/logger/sub/state"), "up").unwrap();
    std::fs::write(s.path("/var/log/logger/daemon.log"), "started").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", s.path("/var/log/logger/link")).unwrap();
    let _socket =
        std::os::unix::net::UnixListener::bind(s.path("/run/logger/unix.socket")).unwrap();

    let (status, ctype, body) = raw(
        &s,
        "POST",
        "/1.0/applications/logger/:debug",
        br#"{"action":"get-logs"}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), ctype.as_str()),
        (200, "application/octet-stream")
    );
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&body[..]));
    let mut seen = BTreeMap::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut text = String::new();
        if e.header().entry_type().is_file() {
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
        } else if e.header().entry_type().is_symlink() {
            text = format!("-> {}", e.link_name().unwrap().unwrap().display());
        }
        seen.insert(name, text);
    }
    let names: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "run/logger",
            "run/logger/sub",
            "run/logger/sub/state",
            "var/log/logger",
            "var/log/logger/daemon.log",
            "var/log/logger/link"
        ],
        "the socket and the missing directory are left out"
    );
    assert_eq!(seen["var/log/logger/daemon.log"], "started");
    assert_eq!(
        seen["var/log/logger/link"], "-> /etc/shadow",
        "a link is not followed"
    );

    assert_eq!(
        s.err(
            "POST",
            "/1.0/applications/logger/:debug",
            r#"{"action":"other"}"#
        )
        .await,
        (501, "not implemented".into())
    );
    assert_eq!(
        s.err("POST", "/1.0/applications/logger/:debug", "{bad")
            .await
            .0,
        500
    );
    assert_eq!(
        s.err(
            "POST",
            "/1.0/applications/addon/:debug",
            r#"{"action":"get-logs"}"#
        )
        .await,
        (501, "not implemented".into())
    );
}

#[tokio::test(start_paused = true)]
async fn an_application_with_a_late_update_check_delays_the_start_up_check() {
    let mut m = plugin_api::sdk::__application_manifest::<Other>("1.0.0", plugin_api::API_VERSION);
    m.late_update_check = true;
    let (app, _root) = TestApp::new()
        .add(m, plugin_api::sdk::__application_instance::<Other>)
        .installed("other", V1)
        .build();
    incus_osd::system::update::runner::start(app.clone()).await;
    // Returned at once, nothing checked yet (no provider is loaded: a check would say so).
    assert_eq!(app.updates.status.status(), "");
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(app.updates.status.status(), "");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..100 {
        if !app.updates.status.status().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.updates.status.status(),
        "Failed to load the update provider: unknown provider \"images\""
    );
}
