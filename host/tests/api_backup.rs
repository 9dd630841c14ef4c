//! `POST /1.0/system/:backup` and `:restore` through the router (tier 1), over a recording
//! network OS, systemd and command runner: the archive's layout, the round trip (host
//! name, time zone, keys, an application's data), the skip values, hostile archives and
//! failed checks changing nothing, and a late failure putting everything back.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::api::App;
use incus_osd::platform::exec::{Commands, Output};
use incus_osd::platform::network::fake::{FakeNetworkOs, FakeState};
use incus_osd::platform::network::{LinkState, LinkStatus};
use incus_osd::platform::systemd::PowerAction;
use incus_osd::platform::PlatformError;
use incus_osd::system::security::Runtime;
use incus_osd::testing::{call, err, RecordingSystemd, TestApp};
use plugin_api::application::AppContext;
use plugin_api::sdk::{Application, Host, Result as SdkResult};
use serde_json::{json, Value};
use tower::ServiceExt;

const MAC: &str = "52:54:00:12:34:56";
const V1: &str = "202511041601";
const KEY_A: &str = "foo-bar-biz-1234";
const KEY_B: &str = "qux-zot-wib-9731!";

/// Runs `nft` and `cryptsetup` as asked, recording cryptsetup's, failing the ones whose
/// command line starts with a prefix in `failing`; `systemd-sysext status` says every link
/// under the root is merged.
#[derive(Default)]
struct Cmds {
    runs: Mutex<Vec<(String, String)>>,
    failing: Mutex<Vec<String>>,
    root: Mutex<Option<PathBuf>>,
}

impl Cmds {
    fn sysext_status(&self) -> Vec<u8> {
        let root = self.root.lock().unwrap().clone().expect("the root is set");
        let names: Vec<String> = std::fs::read_dir(root.join("var/lib/extensions"))
            .map(|d| {
                d.filter_map(|e| {
                    let n = e.ok()?.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".raw").map(str::to_string)
                })
                .collect()
            })
            .unwrap_or_default();
        json!([{"hierarchy": "/usr", "extensions": names}])
            .to_string()
            .into_bytes()
    }
}

impl Commands for Cmds {
    fn run(&self, argv: &[String], stdin: &[u8], _: Duration) -> Result<Output, PlatformError> {
        let line = argv.join(" ");
        let failed = self
            .failing
            .lock()
            .unwrap()
            .iter()
            .any(|p| line.starts_with(p.as_str()));
        if argv[0] == "cryptsetup" {
            self.runs
                .lock()
                .unwrap()
                .push((line.clone(), String::from_utf8_lossy(stdin).into_owned()));
        }
        Ok(Output {
            status: if failed { 1 } else { 0 },
            stdout: if line == "systemd-sysext status --json=short" {
                self.sysext_status()
            } else {
                vec![]
            },
            stderr: if failed { b"refused".to_vec() } else { vec![] },
        })
    }
}

/// The primary application of these tests: it declares its data directory.
struct Keeper;

impl Application for Keeper {
    const NAME: &'static str = "keeper";
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &["/var/lib/keeper"];
    const BACKUP: Option<plugin_api::sdk::Backup> =
        Some(plugin_api::sdk::Backup::new("/var/lib/keeper"));
    type Config = Value;
    fn new(_: Host) -> SdkResult<Self> {
        Ok(Keeper)
    }
    fn restored(&self, _: &AppContext, _: &Value) -> SdkResult<()> {
        Ok(())
    }
}

/// A third-party application with an archive format of its own: its backup is the bytes of
/// its one data file.
struct Notes {
    host: Host,
}

const NOTES: &str = "/var/lib/notes/data";

impl Notes {
    fn backup(&self, _complete: bool, out: &mut dyn std::io::Write) -> SdkResult<()> {
        let data = self.host.read_file(NOTES)?.unwrap_or_default();
        out.write_all(&data)
            .map_err(|e| plugin_api::sdk::Error::internal(e.to_string()))
    }
    fn restore(&self, input: &mut dyn Read) -> SdkResult<()> {
        let mut data = vec![];
        input
            .read_to_end(&mut data)
            .map_err(|e| plugin_api::sdk::Error::internal(e.to_string()))?;
        self.host.write_file(NOTES, &data, 0o600)
    }
}

impl Application for Notes {
    const NAME: &'static str = "notes";
    const PATHS: &'static [&'static str] = &["/var/lib/notes"];
    const STREAMING_BACKUP: Option<plugin_api::sdk::StreamingBackup<Self>> =
        Some(plugin_api::sdk::StreamingBackup {
            backup: Self::backup,
            restore: Self::restore,
        });
    type Config = Value;
    fn new(host: Host) -> SdkResult<Self> {
        Ok(Notes { host })
    }
}

struct Env {
    r: Router,
    app: Arc<App>,
    net: Arc<FakeNetworkOs>,
    cmds: Arc<Cmds>,
    power: tokio::sync::mpsc::Receiver<PowerAction>,
    _dir: tempfile::TempDir,
}

fn link(name: &str, kind: Option<&str>, mac: &str) -> LinkState {
    LinkState {
        name: name.into(),
        kind: kind.map(String::from),
        mtu: 1500,
        max_mtu: Some(9000),
        mac: Some(mac.into()),
        permanent_mac: kind.is_none().then(|| mac.to_string()),
        operstate: "up".into(),
        ..Default::default()
    }
}

fn env_with(tpm: &str) -> Env {
    env_of(tpm, |t| {
        t.application::<Keeper>()
            .installed("keeper", V1)
            .application::<Notes>()
            .installed("notes", V1)
    })
}

/// A machine with the applications `apps` adds.
fn env_of(tpm: &str, apps: impl FnOnce(TestApp) -> TestApp) -> Env {
    let mut status = BTreeMap::new();
    status.insert(
        "_veth0".to_string(),
        LinkStatus {
            online_state: Some("online".into()),
            operational_state: "routable".into(),
            address_state: "routable".into(),
            setup_state: "configured".into(),
        },
    );
    let net = Arc::new(FakeNetworkOs::new(FakeState {
        links: vec![
            link("enp1s0", None, MAC),
            link("eth0", Some("bridge"), "52:54:00:00:00:02"),
            link("_veth0", Some("veth"), "52:54:00:00:00:01"),
        ],
        status,
        hostname: "localhost".into(),
        timezone: "UTC".into(),
        time_synced: true,
        ..Default::default()
    }));
    let cmds = Arc::new(Cmds::default());
    let mut volumes = BTreeMap::new();
    volumes.insert("root".to_string(), PathBuf::from("/dev/vda10"));
    volumes.insert("swap".to_string(), PathBuf::from("/dev/vda9"));
    let rt = Runtime {
        volumes: Some(volumes),
        tpm_status_for_tests: Some(tpm.into()),
        ..Default::default()
    };
    let t = TestApp::new()
        .systemd(Arc::new(RecordingSystemd::new(false)))
        .network(net.clone())
        .commands(cmds.clone())
        .security(rt);
    let (r, app, dir) = apps(t).router();
    app.with_state(|s| {
        s.update(|d| d.system.security.config.encryption_recovery_keys = vec![KEY_A.into()])
    })
    .unwrap();
    *cmds.root.lock().unwrap() = Some(app.root.clone());
    let power = app.take_power_requests().unwrap();
    Env {
        r,
        app,
        net,
        cmds,
        power,
        _dir: dir,
    }
}

fn env() -> Env {
    env_with("ok")
}

impl Env {
    fn state_dir(&self) -> PathBuf {
        self.app.root.join("var/lib/incus-os")
    }

    fn data(&self) -> PathBuf {
        self.app.root.join("var/lib/keeper")
    }

    async fn raw(&self, method: &str, uri: &str, body: Vec<u8>) -> (u16, String, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/x-tar")
            .body(Body::from(body))
            .unwrap();
        let resp = self.r.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, bytes.to_vec())
    }

    async fn backup(&self) -> Vec<u8> {
        let (s, ctype, body) = self
            .raw("POST", "/1.0/system/:backup", b"{}".to_vec())
            .await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(ctype, "application/gzip");
        body
    }

    async fn restore(&self, query: &str, archive: Vec<u8>) -> (u16, Value) {
        let (s, _, body) = self
            .raw("POST", &format!("/1.0/system/:restore{query}"), archive)
            .await;
        (s, serde_json::from_slice(&body).unwrap())
    }

    async fn put_network(&self, hostname: &str, tz: &str) {
        let (s, v) = call(
            &self.r,
            "PUT",
            "/1.0/system/network",
            &json!({"config": {
                "interfaces": [{"name": "eth0", "hwaddr": MAC, "addresses": ["dhcp4"]}],
                "dns": {"hostname": hostname},
                "time": {"timezone": tz}}})
            .to_string(),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }

    async fn network_config(&self) -> Value {
        let (s, v) = call(&self.r, "GET", "/1.0/system/network", "").await;
        assert_eq!(s, 200, "{v}");
        v["metadata"]["config"].clone()
    }

    fn keys(&self) -> Vec<String> {
        self.app.with_state(|s| {
            s.doc()
                .system
                .security
                .config
                .encryption_recovery_keys
                .clone()
        })
    }

    fn rebooting(&mut self) -> bool {
        matches!(self.power.try_recv(), Ok(PowerAction::Reboot))
    }
}

/// Every file under `dir` (relative path -> content): what "unchanged" is checked against.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                out.insert(format!("{rel}/"), vec![]);
                walk(base, &p, out);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(format!("{rel}@"), target.display().to_string().into_bytes());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The entries of a gzip tar: name, mode, type, data.
fn entries(archive: &[u8]) -> Vec<(String, u32, tar::EntryType, Vec<u8>)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
                e.header().entry_type(),
                data,
            )
        })
        .collect()
}

fn names(archive: &[u8]) -> Vec<String> {
    entries(archive).into_iter().map(|e| e.0).collect()
}

/// A gzip tar built entry by entry: (name, type, data); names written raw into the header.
fn archive(items: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        vec![],
        flate2::Compression::fast(),
    ));
    for (name, kind, data) in items {
        let mut h = tar::Header::new_gnu();
        {
            let raw = h.as_old_mut();
            raw.name = [0; 100];
            raw.name[..name.len()].copy_from_slice(name);
        }
        h.set_mode(0o600);
        h.set_size(data.len() as u64);
        h.set_entry_type(*kind);
        if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
            h.set_link_name("state.json").unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A good backup of `e` with its entries edited by `edit`.
fn rebuilt(
    good: &[u8],
    edit: impl FnOnce(&mut Vec<(Vec<u8>, tar::EntryType, Vec<u8>)>),
) -> Vec<u8> {
    let mut items: Vec<(Vec<u8>, tar::EntryType, Vec<u8>)> = entries(good)
        .into_iter()
        .map(|(n, _, k, d)| (n.into_bytes(), k, d))
        .collect();
    edit(&mut items);
    let refs: Vec<(&[u8], tar::EntryType, &[u8])> = items
        .iter()
        .map(|(n, k, d)| (n.as_slice(), *k, d.as_slice()))
        .collect();
    archive(&refs)
}

#[tokio::test]
async fn a_backup_is_flat_files_of_the_state_directory_mode_0600_and_the_applications_archives() {
    let e = env();
    let dir = e.state_dir();
    std::fs::write(dir.join("zpool.local.key"), [7u8; 32]).unwrap();
    std::fs::write(dir.join("recovery.root.key"), "k").unwrap();
    // The daemon's runtime, not state: left out.
    std::fs::write(dir.join("plugin-cache.json"), "{}").unwrap();
    std::fs::create_dir_all(dir.join("starting")).unwrap();
    std::fs::write(dir.join("starting/iscsi"), "").unwrap();
    std::fs::create_dir_all(dir.join("uploads")).unwrap();
    std::fs::create_dir_all(dir.join("secureboot-updates")).unwrap();
    std::fs::write(dir.join("secureboot-updates/SecureBootKeys_1.tar"), "x").unwrap();
    std::fs::write(dir.join(".state.json.0123abcd.incus-osd-tmp"), "torn").unwrap();
    // A provider's file (Operations Center's trusted client certificate) is state.
    std::fs::write(dir.join("operations-center.trusted-client.crt"), "pem").unwrap();
    std::fs::create_dir_all(e.data()).unwrap();
    std::fs::write(e.data().join("db"), "precious").unwrap();

    let body = e.backup().await;
    let list = entries(&body);
    let got: Vec<&str> = list.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        got,
        [
            "operations-center.trusted-client.crt",
            "recovery.root.key",
            "state.json",
            "zpool.local.key",
            "application.keeper.tar.gz",
            "application.notes.tar.gz"
        ]
    );
    for (name, mode, kind, _) in &list {
        assert_eq!((*mode, *kind), (0o600, tar::EntryType::Regular), "{name}");
    }
    assert_eq!(list[3].3, vec![7u8; 32]);
    // The state was saved first: the archive's state.json is the live document.
    let doc: Value = serde_json::from_slice(&list[2].3).unwrap();
    assert_eq!(
        doc["system"]["security"]["config"]["encryption_recovery_keys"],
        json!([KEY_A])
    );
    // Each application's own archive, as its `:backup` makes it.
    assert_eq!(names(&list[4].3), ["db"]);
    assert_eq!(list[5].3, b"");
}

#[tokio::test]
async fn a_directory_in_the_state_directory_refuses_the_backup_with_upstreams_text() {
    let e = env();
    std::fs::create_dir_all(e.state_dir().join("stray")).unwrap();
    let v = call(&e.r, "POST", "/1.0/system/:backup", "").await;
    assert_eq!(err(&v), (500, "backup cannot contain directories".into()));
}

#[tokio::test]
async fn a_restore_brings_back_host_name_time_zone_keys_and_application_data_then_reboots() {
    let mut e = env();
    e.put_network("incusos1", "America/Chicago").await;
    std::fs::create_dir_all(e.data()).unwrap();
    std::fs::write(e.data().join("db"), "v1").unwrap();
    let backup = e.backup().await;

    e.put_network("incusos2", "America/Denver").await;
    let c = e.network_config().await;
    assert_eq!(c["dns"]["hostname"], "incusos2");
    assert_eq!(c["time"]["timezone"], "America/Denver");
    std::fs::write(e.data().join("db"), "v2").unwrap();
    e.app
        .with_state(|s| {
            s.update(|d| d.system.security.config.encryption_recovery_keys = vec![KEY_B.into()])
        })
        .unwrap();
    assert!(!e.rebooting());

    let (s, v) = e.restore("", backup).await;
    assert_eq!(s, 200, "{v}");
    let c = e.network_config().await;
    assert_eq!(c["dns"]["hostname"], "incusos1");
    assert_eq!(c["time"]["timezone"], "America/Chicago");
    {
        let st = e.net.state.lock().unwrap();
        assert_eq!(
            (st.hostname.as_str(), st.timezone.as_str()),
            ("incusos1", "America/Chicago")
        );
    }
    assert_eq!(std::fs::read_to_string(e.data().join("db")).unwrap(), "v1");
    assert_eq!(e.keys(), [KEY_A]);
    let runs: Vec<(String, String)> = e.cmds.runs.lock().unwrap().clone();
    let added: Vec<&str> = runs
        .iter()
        .filter(|(l, _)| l.contains("luksAddKey"))
        .map(|(_, k)| k.as_str())
        .collect();
    let removed: Vec<&str> = runs
        .iter()
        .filter(|(l, _)| l.contains("luksRemoveKey"))
        .map(|(_, k)| k.as_str())
        .collect();
    assert_eq!((added, removed), (vec![KEY_A, KEY_A], vec![KEY_B, KEY_B]));
    // The restored state is on disk, the previous one and the staging gone.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(e.state_dir().join("state.json")).unwrap()).unwrap();
    assert_eq!(
        on_disk["system"]["network"]["config"]["dns"]["hostname"],
        "incusos1"
    );
    let lib = e.app.root.join("var/lib");
    assert!(!lib.join("incus-os.bak").exists() && !lib.join("incus-os.new").exists());
    assert!(e.rebooting());
}

#[tokio::test]
async fn skip_local_data_encryption_key_keeps_this_machines_key() {
    let e = env();
    let key = e.state_dir().join("zpool.local.key");
    std::fs::write(&key, "from-backup").unwrap();
    let backup = e.backup().await;
    std::fs::write(&key, "this-machine").unwrap();
    let (s, v) = e
        .restore("?skip=local-data-encryption-key", backup.clone())
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "this-machine");
    let (s, v) = e.restore("", backup).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "from-backup");
}

#[tokio::test]
async fn skip_network_macs_writes_interface_names_for_macs() {
    let e = env();
    e.put_network("host1", "UTC").await;
    let backup = e.backup().await;
    let (s, v) = e.restore("?skip=network-macs", backup.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(e.network_config().await["interfaces"][0]["hwaddr"], "eth0");
    let (s, v) = e.restore("?skip=foo,bar", backup).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(e.network_config().await["interfaces"][0]["hwaddr"], MAC);
}

#[tokio::test]
async fn skip_encryption_recovery_keys_leaves_the_slots_and_the_key_list_alone() {
    let e = env();
    let backup = e.backup().await;
    e.app
        .with_state(|s| {
            s.update(|d| d.system.security.config.encryption_recovery_keys = vec![KEY_B.into()])
        })
        .unwrap();
    let (s, v) = e
        .restore("?skip=encryption-recovery-keys%2Cnetwork-macs", backup)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(e.cmds.runs.lock().unwrap().is_empty());
    assert_eq!(e.keys(), [KEY_B]);
}

#[tokio::test]
async fn hostile_archives_are_refused_and_change_nothing() {
    let e = env();
    std::fs::create_dir_all(e.data()).unwrap();
    std::fs::write(e.data().join("db"), "live").unwrap();
    let good = e.backup().await;
    let lib = e.app.root.join("var/lib");
    let before = snapshot(&lib);
    let state = |n: &[u8]| -> (Vec<u8>, tar::EntryType, Vec<u8>) {
        (n.to_vec(), tar::EntryType::Regular, b"x".to_vec())
    };
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 20);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not gzip", b"plain text".to_vec(), "cannot read the backup"),
        ("truncated", truncated, "backup"),
        (
            "symlink",
            rebuilt(&good, |i| {
                i.push((b"link".to_vec(), tar::EntryType::Symlink, vec![]))
            }),
            "backup cannot contain anything other than regular files",
        ),
        (
            "hard link",
            rebuilt(&good, |i| {
                i.push((b"hard".to_vec(), tar::EntryType::Link, vec![]))
            }),
            "backup cannot contain anything other than regular files",
        ),
        (
            "directory",
            rebuilt(&good, |i| {
                i.push((b"sub/".to_vec(), tar::EntryType::Directory, vec![]))
            }),
            "backup cannot contain anything other than regular files",
        ),
        (
            "dot-dot",
            rebuilt(&good, |i| i.push(state(b"../.."))),
            "has no file name",
        ),
        (
            "dot",
            rebuilt(&good, |i| i.push(state(b"a/."))),
            "has no file name",
        ),
        (
            "empty",
            rebuilt(&good, |i| i.push(state(b"a/"))),
            "has no file name",
        ),
        (
            "twice",
            rebuilt(&good, |i| i.push(state(b"elsewhere/state.json"))),
            "holds 'state.json' twice",
        ),
        (
            "an application the state does not install",
            rebuilt(&good, |i| {
                i.push(state(b"application.ghost.tar.gz"));
            }),
            "application 'ghost', which its state does not install",
        ),
        (
            "a key file over 64 MiB (a gzip bomb)",
            rebuilt(&good, |i| {
                i.push((
                    b"zpool.big.key".to_vec(),
                    tar::EntryType::Regular,
                    vec![0; 65 << 20],
                ))
            }),
            "is 68157440 bytes (at most 67108864",
        ),
    ];
    // More entries than allowed.
    let many: Vec<Vec<u8>> = (0..10_001).map(|n| format!("k{n}").into_bytes()).collect();
    let items: Vec<(&[u8], tar::EntryType, &[u8])> = many
        .iter()
        .map(|n| (n.as_slice(), tar::EntryType::Regular, &b""[..]))
        .collect();
    cases.push((
        "too many entries",
        archive(&items),
        "more than 10000 entries",
    ));
    // A NUL in a PAX path.
    let mut pax = tar::Builder::new(flate2::write::GzEncoder::new(
        vec![],
        flate2::Compression::fast(),
    ));
    pax.append_pax_extensions([("path", &b"a\0b"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("plain").unwrap();
    h.set_size(0);
    h.set_cksum();
    pax.append(&h, &b""[..]).unwrap();
    cases.push((
        "NUL",
        pax.into_inner().unwrap().finish().unwrap(),
        "has a NUL",
    ));

    for (what, body, text) in cases {
        let (s, v) = e.restore("", body).await;
        assert_eq!(s, 400, "{what}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(text), "{what}: {msg}");
        assert_eq!(snapshot(&lib), before, "{what} changed the state");
    }
    assert_eq!(
        std::fs::read_to_string(e.data().join("db")).unwrap(),
        "live"
    );
}

#[tokio::test]
async fn a_backup_state_that_fails_upstreams_checks_is_refused_with_its_text() {
    // TPM status first.
    let e = env_with("pcr mismatch");
    let good = e.backup().await;
    let v = e.restore("", good).await;
    assert_eq!(
        (v.0, v.1["error"].as_str().unwrap()),
        (
            500,
            "unable to process state from backup: TPM status isn't OK: pcr mismatch"
        )
    );

    let e = env();
    let good = e.backup().await;
    let lib = e.app.root.join("var/lib");
    let before = snapshot(&lib);
    let edit_state = |f: &dyn Fn(&mut Value)| {
        rebuilt(&good, |items| {
            let st = items.iter_mut().find(|i| i.0 == b"state.json").unwrap();
            let mut doc: Value = serde_json::from_slice(&st.2).unwrap();
            f(&mut doc);
            st.2 = serde_json::to_vec(&doc).unwrap();
        })
    };
    let no_keys =
        edit_state(&|d| d["system"]["security"]["config"]["encryption_recovery_keys"] = json!([]));
    let no_primary = rebuilt(&edit_state(&|d| d["applications"] = json!({})), |i| {
        i.retain(|x| !x.0.starts_with(b"application."))
    });
    let newer = edit_state(&|d| d["schema_version"] = json!(99));
    for (body, text) in [
        (no_keys, "unable to process state from backup: at least one recovery passphrase must be provided".to_string()),
        (no_primary, "unable to process state from backup: backup state doesn't include the incus, migration-manager, or operations-center application".to_string()),
        (newer, "unable to process state from backup: its state was written by a newer incus-osd (schema 99); this one knows 3".to_string()),
    ] {
        let v = e.restore("", body).await;
        assert_eq!((v.0, v.1["error"].as_str().unwrap()), (500, text.as_str()));
        assert_eq!(snapshot(&lib), before);
    }
}

#[tokio::test]
async fn a_failure_late_in_the_restore_puts_everything_back() {
    let mut e = env();
    e.put_network("incusos1", "America/Chicago").await;
    std::fs::create_dir_all(e.data()).unwrap();
    std::fs::write(e.data().join("db"), "v1").unwrap();
    let backup = e.backup().await;
    e.put_network("incusos2", "America/Denver").await;
    std::fs::write(e.data().join("db"), "v2").unwrap();
    e.app
        .with_state(|s| {
            s.update(|d| d.system.security.config.encryption_recovery_keys = vec![KEY_B.into()])
        })
        .unwrap();
    let state_before = snapshot(&e.state_dir());
    let hosts_before = std::fs::read(e.app.root.join("etc/hosts")).unwrap();
    // The last volume refuses the key: after the data, host name and time zone changed.
    e.cmds
        .failing
        .lock()
        .unwrap()
        .push("cryptsetup luksAddKey --batch-mode --key-file".into());
    let (s, v) = e.restore("", backup).await;
    assert_eq!(s, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("refused"), "{v}");
    assert_eq!(std::fs::read_to_string(e.data().join("db")).unwrap(), "v2");
    {
        let st = e.net.state.lock().unwrap();
        assert_eq!(
            (st.hostname.as_str(), st.timezone.as_str()),
            ("incusos2", "America/Denver")
        );
    }
    assert_eq!(
        std::fs::read(e.app.root.join("etc/hosts")).unwrap(),
        hosts_before
    );
    assert_eq!(snapshot(&e.state_dir()), state_before);
    assert_eq!(e.keys(), [KEY_B]);
    assert_eq!(e.network_config().await["dns"]["hostname"], "incusos2");
    assert!(!e.rebooting());
}

#[tokio::test]
async fn a_backup_of_several_mib_is_streamed_and_restored() {
    let e = env();
    std::fs::create_dir_all(e.data()).unwrap();
    // Incompressible data: the upload is as large as the file.
    let mut big = vec![0u8; 6 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(e.data().join("blob"), &big).unwrap();
    let backup = e.backup().await;
    assert!(backup.len() > 6 << 20, "{}", backup.len());
    std::fs::write(e.data().join("blob"), "small").unwrap();
    let (s, v) = e.restore("", backup).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(std::fs::read(e.data().join("blob")).unwrap(), big);
}

#[tokio::test]
async fn a_third_party_applications_own_archive_round_trips_through_the_system_backup() {
    let e = env();
    let notes = e.app.root.join(NOTES.trim_start_matches('/'));
    std::fs::create_dir_all(notes.parent().unwrap()).unwrap();
    std::fs::write(&notes, "first").unwrap();
    let backup = e.backup().await;
    let list = entries(&backup);
    let entry = list
        .iter()
        .find(|x| x.0 == "application.notes.tar.gz")
        .unwrap();
    assert_eq!(entry.3, b"first");
    std::fs::write(&notes, "second").unwrap();
    let (s, v) = e.restore("", backup).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "first");
    // The restore time is recorded as an application restore records it.
    let restored = e
        .app
        .with_state(|s| s.doc().applications["notes"].last_restored);
    assert!(restored.is_some());
}

/// The good backup of `e` with its state document edited by `f`.
fn with_state(good: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    rebuilt(good, |items| {
        let st = items.iter_mut().find(|i| i.0 == b"state.json").unwrap();
        let mut doc: Value = serde_json::from_slice(&st.2).unwrap();
        f(&mut doc);
        st.2 = serde_json::to_vec(&doc).unwrap();
    })
}

#[tokio::test]
async fn applications_are_reconciled_with_the_backup() {
    let e = env();
    let good = e.backup().await;
    let lib = e.app.root.join("var/lib");
    let before = snapshot(&lib);
    // An application the backup installs and this machine lacks is installed first: here
    // it cannot be (no plugin), and nothing changes.
    let more = with_state(&good, |d| {
        d["applications"]["ghost"] = json!({"version": V1});
    });
    let v = e.restore("", more).await;
    assert_eq!(
        (v.0, v.1["error"].as_str().unwrap()),
        (
            500,
            "cannot install application 'ghost': unknown application 'ghost'"
        )
    );
    assert_eq!(snapshot(&lib), before);
    // One this machine has and the backup lacks is removed.
    let fewer = rebuilt(
        &with_state(&good, |d| {
            d["applications"].as_object_mut().unwrap().remove("notes");
        }),
        |i| i.retain(|x| x.0 != b"application.notes.tar.gz"),
    );
    let (s, v) = e.restore("", fewer).await;
    assert_eq!(s, 200, "{v}");
    assert!(!e.app.application_installed("notes"));
    assert!(e.app.application_installed("keeper"));
    assert!(e
        .app
        .with_state(|s| !s.doc().applications.contains_key("notes")));
}

/// Incus as upstream's state names it: the primary application of an upstream machine.
struct Incus;

impl Application for Incus {
    const NAME: &'static str = "incus";
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &["/var/lib/incus"];
    type Config = Value;
    fn new(_: Host) -> SdkResult<Self> {
        Ok(Incus)
    }
}

/// A gzip tar as upstream's daemon writes a system backup: flat entries, mode 0600.
fn upstream_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn an_upstream_systems_backup_restores_here_its_state_txt_imported() {
    let mut e = env_of("ok", |t| t.application::<Incus>().installed("incus", V1));
    let state = format!(
        "#Version: 8
Applications.Incus.State.Initialized: true
Applications.Incus.State.Version: {V1}
OS.Name: IncusOS
OS.RunningRelease: {V1}
OS.SuccessfulBoot: true
Services.LVM.Config.Enabled: true
Services.LVM.Config.SystemID: 7
System.Network.Config.DNS.Hostname: incusos1
System.Network.Config.Time.Timezone: America/Chicago
System.Network.Config.Interfaces[0].Name: enp1s0
System.Network.Config.Interfaces[0].Hwaddr: {MAC}
System.Network.Config.Interfaces[0].Addresses[0]: dhcp4
System.Network.Config.Interfaces[0].RequiredForOnline: no
System.Security.Config.EncryptionRecoveryKeys[0]: {KEY_B}
System.Update.Config.Channel: testing
System.Update.Config.CheckFrequency: 12h0m0s
System.Storage.Config.ScrubSchedule: 0 3 * * 1
"
    );
    let local_key = [7u8; 32];
    let archive = upstream_archive(&[
        ("state.txt", state.as_bytes()),
        ("zpool.local.key", &local_key),
        ("tpm-auth.pem", b"-----BEGIN PUBLIC KEY-----\n"),
    ]);
    let (s, v) = e.restore("", archive).await;
    assert_eq!(s, 200, "{v}");

    let c = e.network_config().await;
    assert_eq!(c["dns"]["hostname"], "incusos1");
    assert_eq!(c["time"]["timezone"], "America/Chicago");
    {
        let st = e.net.state.lock().unwrap();
        assert_eq!(
            (st.hostname.as_str(), st.timezone.as_str()),
            ("incusos1", "America/Chicago")
        );
    }
    assert_eq!(e.keys(), [KEY_B]);
    let (_, u) = call(&e.r, "GET", "/1.0/system/update", "").await;
    assert_eq!(u["metadata"]["config"]["channel"], "testing");
    assert_eq!(u["metadata"]["config"]["check_frequency"], "12h0m0s");
    let doc = e.app.with_state(|s| s.doc().clone());
    assert_eq!(doc.system.storage.scrub_schedule, "0 3 * * 1");
    assert_eq!(doc.plugins["lvm"]["config"]["system_id"], 7);
    assert_eq!(doc.applications["incus"].version, V1);
    // The key files are there as upstream named them; state.txt became our state.json.
    let dir = e.state_dir();
    assert_eq!(
        std::fs::read(dir.join("zpool.local.key")).unwrap(),
        local_key
    );
    assert!(dir.join("tpm-auth.pem").exists());
    assert!(!dir.join("state.txt").exists());
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        on_disk["system"]["network"]["config"]["dns"]["hostname"],
        "incusos1"
    );
    assert!(e.rebooting());

    // A state.txt this daemon cannot read whole is refused, naming the line; nothing changes.
    let before = snapshot(&e.state_dir());
    let bad = upstream_archive(&[(
        "state.txt",
        b"#Version: 8\nSystem.Network.Config.DNS.Hostnam: x\n",
    )]);
    let (s, v) = e.restore("", bad).await;
    assert_eq!(s, 500, "{v}");
    let text = v["error"].as_str().unwrap();
    assert!(
        text.starts_with("unable to process state from backup: line 2: "),
        "{text}"
    );
    assert_eq!(snapshot(&e.state_dir()), before);
}
