//! Tier 3, end to end: an application's whole life on a real systemd, through the daemon's
//! API. The daemon runs as its unit in a machine that merges system extensions (its
//! binary, plugins and OS identity copied into `/usr`, as on IncusOS), with the fixture
//! application `standin-app` (its hooks drive `standin-app.service`) and the workspace's
//! `debug` application (no lifecycle). Their images are stand-ins built at test time (a shell-script daemon and
//! the unit, each saying it is a stand-in), served by the `local` provider from a mirror
//! directory whose index is signed by the providers' test PKI; the real `systemd-sysext`
//! merges them.
//!
//! Install (V1), an update brought by `:check-update` (V2), `:switch-version` back to V1,
//! the version chosen at the start after booting the other slot (the OS release changed
//! under the daemon, the previous one recorded in its state) and after coming back, then
//! `:remove`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use incus_osd::platform::systemd::UnitAction;
use incus_osd::platform::systemd_dbus::DbusSystemd;
use incus_osd_integration::sysext::{write_local_mirror, MirrorImage, StandIn};
use incus_osd_integration::tier3::{
    install_and_start, show, socket, wait_for, wait_system_ready, Site, UNIT,
};
use incus_osd_integration::{get_ok, request};
use incus_osd_provider_common::testing::Pki;
use incus_osd_provider_common::trust::{ROOT_CA_PATH, UPDATE_CA_PATH};
use incus_osd_test_machine::{tier3_or_return, Machine};
use serde_json::{json, Value};

const V1: &str = "202601010000";
const V2: &str = "202601150000";
const APP: &str = "standin-app";
const APP_UNIT: &str = "standin-app.service";
/// Where the machine sees the mirror (a host directory bound read-write).
const MIRROR: &str = "/media/mirror";

fn os_release(version: &str) -> String {
    format!("NAME=\"IncusOS\"\nID=incus-os\nPRETTY_NAME=\"IncusOS (tier-3 test)\"\nIMAGE_VERSION={version}\n")
}

/// The stand-in images of `standin-app` and `debug` for each release, built once.
struct Images {
    _dir: tempfile::TempDir,
    /// (release, app, image)
    built: Vec<(String, String, PathBuf)>,
}

impl Images {
    fn build() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let mut built = vec![];
        for v in [V1, V2] {
            let d = dir.path().join(v);
            std::fs::create_dir(&d).unwrap();
            built.push((
                v.to_string(),
                APP.to_string(),
                StandIn::new(APP, v, &[APP_UNIT]).build(&d),
            ));
            built.push((
                v.to_string(),
                "debug".to_string(),
                StandIn::new("debug", v, &[]).build(&d),
            ));
        }
        Images { _dir: dir, built }
    }

    /// Writes the mirror at `dir` with `releases`.
    fn mirror(&self, dir: &Path, releases: &[&str], pki: &Pki) {
        let releases: Vec<(&str, Vec<MirrorImage<'_>>)> = releases
            .iter()
            .map(|r| {
                let images = self
                    .built
                    .iter()
                    .filter(|(v, _, _)| v == r)
                    .map(|(_, app, image)| MirrorImage { app, image })
                    .collect();
                (*r, images)
            })
            .collect();
        write_local_mirror(dir, &releases, |c| pki.sign(c));
    }
}

struct Env {
    m: Machine,
    sd: DbusSystemd,
    sock: PathBuf,
}

impl Env {
    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = request(&self.sock, method, path, &body.to_string()).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["metadata"].clone()
    }

    async fn state(&self, name: &str) -> Value {
        get_ok(&self.sock, &format!("/1.0/applications/{name}")).await["state"].clone()
    }

    /// The extensions merged over `/usr`, as `systemd-sysext status` reports them.
    fn merged(&self) -> Vec<String> {
        let out = self
            .m
            .run_ok(&["systemd-sysext", "status", "--json=short"])
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let usr = v
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hierarchy"] == "/usr")
            .unwrap_or_else(|| panic!("no /usr in {v}"));
        match &usr["extensions"] {
            Value::Array(names) => names
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect(),
            _ => vec![],
        }
    }

    fn link(&self, app: &str) -> String {
        self.m
            .run_ok(&["readlink", &format!("/var/lib/extensions/{app}.raw")])
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The local images of `app`, by release.
    fn images(&self, app: &str) -> Vec<String> {
        let out = self
            .m
            .run_ok(&[
                "find",
                "/var/lib/incus-os-extensions",
                "-name",
                &format!("{app}.raw"),
            ])
            .unwrap();
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split('/').nth(4).map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// Waits until `standin-app.service` is active and its stand-in daemon says it runs
    /// `version` (after [`Env::forget_daemon_version`]: a daemon started since), and the
    /// unit systemd has loaded is `version`'s.
    fn app_runs(&self, version: &str) {
        wait_for(
            &format!("{APP_UNIT} running {version}"),
            Duration::from_secs(15),
            || {
                let v = self
                    .m
                    .run_ok(&["cat", "/run/standin-app-stand-in/version"])
                    .unwrap_or_default();
                (show(&self.m, APP_UNIT, "ActiveState") == "active" && v.trim() == version)
                    .then_some(())
            },
        );
        assert!(show(&self.m, APP_UNIT, "Description").contains(&format!("{APP} {version}")));
    }

    /// Forgets what the stand-in daemon wrote, so the next [`Env::app_runs`] sees a new start.
    fn forget_daemon_version(&self) {
        self.m
            .run_ok(&["rm", "-f", "/run/standin-app-stand-in/version"])
            .unwrap();
    }

    /// Stops the daemon (its shutdown stops the applications), unmerges everything (as a
    /// reboot would), sets the OS release to `release` (the slot that boots) and starts the
    /// daemon again: its start chooses each application's image for that release.
    async fn boot_slot(&self, release: &str) {
        self.sd.run_job(UnitAction::Stop, UNIT).await.unwrap();
        assert_eq!(show(&self.m, APP_UNIT, "ActiveState"), "inactive");
        self.m.run_ok(&["systemd-sysext", "unmerge"]).unwrap();
        self.m.run_ok(&["systemctl", "daemon-reload"]).unwrap();
        self.m
            .write_file("/usr/lib/os-release", os_release(release))
            .unwrap();
        self.forget_daemon_version();
        self.sd.run_job(UnitAction::Start, UNIT).await.unwrap();
        wait_system_ready(&self.sock).await;
        assert_eq!(
            get_ok(&self.sock, "/1.0").await["environment"]["os_version"],
            release
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_is_installed_updated_switched_chosen_at_boot_and_removed() {
    tier3_or_return!();
    let started = Instant::now();
    let images = Images::build();
    let pki = Pki::new();
    let mirror = tempfile::tempdir().unwrap();
    images.mirror(mirror.path(), &[V1], &pki);
    eprintln!("images and mirror built in {:?}", started.elapsed());

    let site = Site::new();
    std::fs::write(site.path().join("os-release"), os_release(V1)).unwrap();
    site.add_fixture("standin_app", "standin_app");
    // `openssl` verifies the mirror's signed index.
    let b = site
        .sysext_builder()
        .packages(&["openssl"])
        .bind(mirror.path(), MIRROR);
    let m = tokio::task::spawn_blocking(move || b.boot().expect("boot"))
        .await
        .unwrap();
    eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
    site.install_in_usr(&m);
    m.write_file(ROOT_CA_PATH, pki.root_pem()).unwrap();
    m.write_file(UPDATE_CA_PATH, pki.update_ca_pem()).unwrap();
    let (sd, _) = install_and_start(&m).await;
    let e = Env {
        sock: socket(&m),
        m,
        sd,
    };
    let ready = Instant::now();
    e.ok(
        "PUT",
        "/1.0/system/provider",
        json!({"config": {"name": "local", "config": {"path": MIRROR}}}),
    )
    .await;

    // Installed: V1 downloaded, linked, merged, the unit started by the application.
    let t = Instant::now();
    e.ok("POST", "/1.0/applications", json!({"name": APP}))
        .await;
    eprintln!("install: {:?}", t.elapsed());
    assert_eq!(e.images(APP), [V1]);
    assert_eq!(
        e.link(APP),
        format!("/var/lib/incus-os-extensions/{V1}/{APP}.raw")
    );
    assert_eq!(e.merged(), [APP]);
    e.app_runs(V1);
    let state = e.state(APP).await;
    assert_eq!(
        (
            &state["version"],
            &state["available_versions"],
            &state["initialized"],
            &state["is_primary"]
        ),
        (&json!(V1), &json!([V1]), &json!(true), &json!(false)),
        "{state}"
    );
    // An application without a lifecycle beside it.
    e.ok("POST", "/1.0/applications", json!({"name": "debug"}))
        .await;
    assert_eq!(e.merged(), ["debug", APP]);
    assert_eq!(e.state("debug").await["friendly_version"], V1);
    assert_eq!(
        get_ok(&e.sock, "/1.0/applications").await,
        json!([
            "/1.0/applications/debug",
            format!("/1.0/applications/{APP}")
        ])
    );
    let (status, v) = request(
        &e.sock,
        "POST",
        "/1.0/applications",
        &json!({"name": APP}).to_string(),
    )
    .await;
    assert_eq!(
        (status, &v["error"]),
        (409, &json!("already exists")),
        "{v}"
    );

    // V2 appears in the mirror; the check brings it in: merged, the daemon restarted.
    images.mirror(mirror.path(), &[V1, V2], &pki);
    e.forget_daemon_version();
    let t = Instant::now();
    e.ok(
        "POST",
        &format!("/1.0/applications/{APP}/:check-update"),
        json!({}),
    )
    .await;
    let mut state = Value::Null;
    for _ in 0..300 {
        state = e.state(APP).await;
        if state["version"] == V2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["version"], V2, "{state}");
    e.app_runs(V2);
    eprintln!("update: {:?}", t.elapsed());
    assert_eq!(state["available_versions"], json!([V1, V2]));
    assert_eq!(e.images(APP), [V1, V2]);
    assert_eq!(
        e.link(APP),
        format!("/var/lib/incus-os-extensions/{V2}/{APP}.raw")
    );
    assert_eq!(e.merged(), ["debug", APP]);
    // Only the application checked was updated.
    assert_eq!(e.state("debug").await["version"], V1);

    // Back to V1: merged before the answer, restarted after it.
    e.forget_daemon_version();
    let t = Instant::now();
    e.ok(
        "POST",
        &format!("/1.0/applications/{APP}/:switch-version"),
        json!({"version": V1}),
    )
    .await;
    assert_eq!(
        e.link(APP),
        format!("/var/lib/incus-os-extensions/{V1}/{APP}.raw")
    );
    assert_eq!(e.merged(), ["debug", APP]);
    e.app_runs(V1);
    eprintln!("switch: {:?}", t.elapsed());
    let state = e.state(APP).await;
    assert_eq!(
        (&state["version"], &state["available_versions"]),
        (&json!(V1), &json!([V1, V2]))
    );

    // The other slot boots, V2's release (an upgrade from V1): the newest image. The
    // mirror is unplugged meanwhile (the provider's path leads nowhere: the start-up
    // update check finds nothing, so what runs is the boot's own choice).
    e.ok(
        "PUT",
        "/1.0/system/provider",
        json!({"config": {"name": "local", "config": {"path": "/media/unplugged"}}}),
    )
    .await;
    let t = Instant::now();
    e.boot_slot(V2).await;
    eprintln!("boot of V2's slot: {:?}", t.elapsed());
    assert_eq!(e.state(APP).await["version"], V2);
    assert_eq!(
        e.link(APP),
        format!("/var/lib/incus-os-extensions/{V2}/{APP}.raw")
    );
    assert_eq!(e.merged(), ["debug", APP]);
    e.app_runs(V2);

    // Back on V1's slot (the previous boot ran the newer V2): the image of the running
    // release, V2's kept.
    e.boot_slot(V1).await;
    let state = e.state(APP).await;
    assert_eq!(
        (&state["version"], &state["available_versions"]),
        (&json!(V1), &json!([V1, V2])),
        "{state}"
    );
    assert_eq!(e.merged(), ["debug", APP]);
    e.app_runs(V1);
    assert_eq!(e.images(APP), [V1, V2]);

    // Removed: stopped, unmerged, images and link gone; `debug` stays merged.
    let t = Instant::now();
    e.ok(
        "POST",
        &format!("/1.0/applications/{APP}/:remove"),
        json!({}),
    )
    .await;
    eprintln!("remove: {:?}", t.elapsed());
    assert_eq!(e.link(APP), "");
    assert!(e.images(APP).is_empty());
    assert_eq!(e.merged(), ["debug"]);
    assert_eq!(show(&e.m, APP_UNIT, "ActiveState"), "inactive");
    assert_eq!(show(&e.m, APP_UNIT, "LoadState"), "not-found");
    let (status, _) = request(&e.sock, "GET", &format!("/1.0/applications/{APP}"), "").await;
    assert_eq!(status, 404);
    e.ok("POST", "/1.0/applications/debug/:remove", json!({}))
        .await;
    assert!(e.merged().is_empty());
    assert_eq!(get_ok(&e.sock, "/1.0/applications").await, json!([]));

    eprintln!(
        "lifecycle (after start-up): {:?}; whole test: {:?}",
        ready.elapsed(),
        started.elapsed()
    );
}
