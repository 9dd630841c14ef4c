//! A test-app builder: the real router, state store and platform over a temporary root,
//! with plugins compiled into the test binary (through the same SDK adapters a `cdylib`
//! exports) instead of loaded from libraries.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::sdk::{self, Application, Service};
use plugin_api::Manifest;

use crate::api::{self, App};
use crate::platform::files::RootFs;
use crate::platform::systemd::Systemd;
use crate::platform::Platform;
use crate::plugins::Registry;
use crate::state::Store;
use crate::system::info::{OsRelease, SystemInfo};

type Adder = Box<dyn FnOnce(&mut Registry, &Path, Arc<Mutex<Store>>, &Platform, Duration)>;

/// Builds an [`App`] for router tests.
pub struct TestApp {
    root: tempfile::TempDir,
    timeout: Duration,
    adders: Vec<Adder>,
    ready: bool,
    systemd: Option<Arc<dyn Systemd>>,
    commands: Option<Arc<dyn crate::platform::exec::Commands>>,
    network: Option<Arc<dyn crate::platform::network::NetworkOs>>,
    install_disk: Option<PathBuf>,
    installed: Vec<(String, String)>,
    storage: crate::system::storage::runtime::Runtime,
    security: Option<crate::system::security::Runtime>,
    seeds: crate::system::seed::Seeds,
    first_start: bool,
}

impl Default for TestApp {
    fn default() -> Self {
        Self::new()
    }
}

impl TestApp {
    /// A root with an OS identity (`IncusOS` `202511041601`), a machine id and an uptime.
    pub fn new() -> TestApp {
        TestApp::reopen(tempfile::tempdir().expect("temp dir"))
    }

    /// A test app over `root`, the guard of an earlier one's [`TestApp::build`]: what that
    /// app saved (its state) is there, as for a daemon restarted over the same root. The
    /// OS identity files are written again; plugins are added anew.
    pub fn reopen(root: tempfile::TempDir) -> TestApp {
        let fs = RootFs::new(root.path());
        fs.write(
            "/lib/os-release",
            b"NAME=\"IncusOS\"\nIMAGE_VERSION=202511041601\n",
            0o644,
        )
        .unwrap();
        fs.write(
            "/etc/machine-id",
            b"0123456789abcdef0123456789abcdef\n",
            0o444,
        )
        .unwrap();
        fs.write("/proc/uptime", b"42.50 80.00\n", 0o444).unwrap();
        TestApp {
            root,
            timeout: Duration::from_secs(10),
            adders: vec![],
            ready: true,
            systemd: None,
            commands: None,
            network: None,
            install_disk: None,
            installed: vec![],
            storage: Default::default(),
            security: None,
            seeds: Default::default(),
            first_start: false,
        }
    }

    /// The seeds the app found at start, and whether it is the machine's first start (the
    /// daemon looks them up in `daemon::prepare`; call the seed steps yourself).
    pub fn seeds(mut self, seeds: crate::system::seed::Seeds, first_start: bool) -> Self {
        self.seeds = seeds;
        self.first_start = first_start;
        self
    }

    /// Lists drives with `opts` (loop devices admitted, for tier-3 tests).
    pub fn storage_options(mut self, opts: crate::system::storage::drives::Options) -> Self {
        self.storage.opts = opts;
        self
    }

    /// Drives the storage scrub scheduler with `clock`.
    pub fn storage_clock(mut self, clock: Arc<dyn crate::system::storage::runtime::Clock>) -> Self {
        self.storage.clock = clock;
        self
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Per-call plugin timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Leaves the daemon starting (`system_is_ready` false) and the plugins not started:
    /// `crate::lifecycle::start_plugins` starts them.
    pub fn not_ready(mut self) -> Self {
        self.ready = false;
        self
    }

    /// Drives units through `systemd` (a fake) instead of none: the platform stays offline
    /// for commands.
    pub fn systemd(mut self, systemd: Arc<dyn Systemd>) -> Self {
        self.systemd = Some(systemd);
        self
    }

    /// Drives the network through `network` (e.g. `FakeNetworkOs`) instead of none.
    pub fn network(mut self, network: Arc<dyn crate::platform::network::NetworkOs>) -> Self {
        self.network = Some(network);
        self
    }

    /// Runs commands through `commands` (e.g. the real adapter, for endpoints that run
    /// read-only tools) instead of refusing them as an offline platform does.
    pub fn commands(mut self, commands: Arc<dyn crate::platform::exec::Commands>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Adds a service compiled into the test.
    pub fn service<T: Service>(self) -> Self {
        let m = sdk::__service_manifest::<T>("1.0.0", plugin_api::API_VERSION);
        self.add(m, |h| sdk::__service_instance::<T>(h))
    }

    /// Adds an application compiled into the test.
    pub fn application<T: Application>(self) -> Self {
        let m = sdk::__application_manifest::<T>("1.0.0", plugin_api::API_VERSION);
        self.add(m, |h| sdk::__application_instance::<T>(h))
    }

    /// Adds an update provider compiled into the test.
    pub fn provider<T: plugin_api::Provider>(self) -> Self {
        let m = sdk::__provider_manifest::<T>("1.0.0", plugin_api::API_VERSION);
        self.add(m, |h| sdk::__provider_instance::<T>(h))
    }

    /// Uses `rt` as the security subsystem's runtime (a TPM connection, LUKS volumes).
    pub fn security(mut self, rt: crate::system::security::Runtime) -> Self {
        self.security = Some(rt);
        self
    }

    /// Stages OS updates into `disk` (a disk image file will do) instead of the ESP's disk.
    pub fn install_disk(mut self, disk: impl Into<PathBuf>) -> Self {
        self.install_disk = Some(disk.into());
        self
    }

    /// Records application `name` as installed at `version` (not initialized): its image
    /// (a stand-in with a GPT header) and link on disk, its record in the state, as an
    /// install leaves them. `name` is the application plugin's own name.
    pub fn installed(mut self, name: &str, version: &str) -> Self {
        self.installed.push((name.to_string(), version.to_string()));
        self
    }

    /// Adds a plugin from its manifest and constructor (to test manifest features such as
    /// declared routes).
    pub fn add(
        mut self,
        manifest: Manifest,
        make: impl FnOnce(plugin_api::abi::HostHandle) -> sdk::Result<plugin_api::abi::PluginBox>
            + 'static,
    ) -> Self {
        self.adders
            .push(Box::new(move |reg, root, store, platform, timeout| {
                let host = crate::plugins::host::handle(
                    &manifest,
                    root,
                    store,
                    platform,
                    Arc::new(plugin_host::net::NoProgress),
                );
                let inst = make(host).expect("test plugin constructor");
                let path = PathBuf::from(format!("(built-in test plugin {})", manifest.name));
                reg.add(
                    manifest,
                    &path,
                    inst,
                    crate::plugins::Timeouts::both(timeout),
                );
            }));
        self
    }

    /// Builds the app; keep the returned guard alive as long as the app is used.
    pub fn build(self) -> (Arc<App>, tempfile::TempDir) {
        let root = self.root.path().to_path_buf();
        let mut store = Store::load_or_create(&root.join("var/lib/incus-os")).expect("state");
        for (name, version) in &self.installed {
            crate::daemon::devroot::mark_installed(&RootFs::new(&root), &mut store, name, version)
                .expect("installed");
        }
        let store = Arc::new(Mutex::new(store));
        let mut platform = Platform::for_root(&root);
        if let Some(commands) = self.commands {
            // Commands run (through the test's adapter): the platform acts, it is not
            // offline.
            platform.commands = commands;
            platform.mode = crate::platform::Mode::Live;
        }
        if let Some(systemd) = self.systemd {
            platform.units = systemd;
        }
        if let Some(network) = self.network {
            platform.network = network;
        }
        let mut reg = Registry::default();
        for add in self.adders {
            add(&mut reg, &root, store.clone(), &platform, self.timeout);
        }
        reg.check_dependencies();
        let info = SystemInfo::read(
            &root,
            &platform.kernel,
            OsRelease {
                name: "IncusOS".into(),
                version: "202511041601".into(),
            },
        );
        let mut app = App::new(root, store, reg, info, platform);
        app.install_disk = self.install_disk;
        app.storage = self.storage;
        app.seeds = self.seeds;
        app.first_start = self.first_start;
        if let Some(rt) = self.security {
            app.security = rt;
        }
        let app = Arc::new(app);
        if self.ready {
            app.registry.mark_all_started();
            app.lifecycle
                .move_to(crate::lifecycle::Phase::Ready)
                .expect("starting -> ready");
        }
        (app, self.root)
    }

    /// The router over the built app.
    pub fn router(self) -> (axum::Router, Arc<App>, tempfile::TempDir) {
        let (app, dir) = self.build();
        (api::router(app.clone()), app, dir)
    }
}

/// Writes a stand-in image of application `name` for `version` where downloads land: a
/// file with a GPT header (what the store's verification checks), not a real extension.
pub fn place_image(root: &Path, name: &str, version: &str) {
    let fs = RootFs::new(root);
    fs.write(
        &crate::system::applications::store::image_path(version, name),
        &gpt_stub(),
        0o644,
    )
    .expect("image");
    fs.create_dir("/var/lib/extensions", 0o755).expect("dir");
}

/// 1 KiB with the GPT signature at 512: passes the store's image check.
pub fn gpt_stub() -> Vec<u8> {
    crate::daemon::devroot::stand_in_image()
}

/// An exit status, standard output and standard error.
type Answer = (i32, String, String);
/// Answers queued per command prefix, each with whether it was given yet.
type Answers = Vec<(String, std::collections::VecDeque<(Answer, bool)>)>;

/// Scripted commands: answers commands by their first words (the longest matching prefix
/// wins) and records every command line. A command nothing answers fails to run, as a
/// missing tool does.
#[derive(Default, Clone)]
pub struct Script {
    answers: Arc<Mutex<Answers>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Script {
    /// Commands starting with `prefix` answer this: answers queue up, each given once in
    /// order, the last one again and again until another is queued.
    pub fn on(&self, prefix: &str, status: i32, stdout: &str, stderr: &str) -> &Self {
        let mut a = self.answers.lock().unwrap();
        match a.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, q)) => q.push_back(((status, stdout.into(), stderr.into()), false)),
            None => a.push((
                prefix.into(),
                std::collections::VecDeque::from([((status, stdout.into(), stderr.into()), false)]),
            )),
        }
        self
    }

    /// Commands starting with `prefix` answer this from now on (queued answers dropped).
    pub fn set(&self, prefix: &str, status: i32, stdout: &str, stderr: &str) -> &Self {
        self.answers.lock().unwrap().retain(|(p, _)| p != prefix);
        self.on(prefix, status, stdout, stderr)
    }

    /// Every command line run so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// The command lines that change something: reads of pools and drives (`zpool
    /// status`, `zfs get`, `zfs list`, `smartctl`, `multipath`) left out.
    pub fn changes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| {
                !c.starts_with("zpool status")
                    && !c.starts_with("zfs get")
                    && !c.starts_with("zfs list")
                    && !c.starts_with("smartctl")
                    && !c.starts_with("multipath")
            })
            .collect()
    }

    /// Forgets the command lines recorded so far (the answers stay).
    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }
}

impl crate::platform::exec::Commands for Script {
    fn run(
        &self,
        argv: &[String],
        _: &[u8],
        _: Duration,
    ) -> Result<crate::platform::exec::Output, crate::platform::PlatformError> {
        let line = argv.join(" ");
        self.calls.lock().unwrap().push(line.clone());
        let mut a = self.answers.lock().unwrap();
        let hit = a
            .iter_mut()
            .filter(|(p, _)| line.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len());
        match hit {
            Some((_, q)) => {
                if q.len() > 1 && q.front().is_some_and(|(_, given)| *given) {
                    q.pop_front();
                }
                let front = q.front_mut().unwrap();
                front.1 = true;
                let (status, out, err) = front.0.clone();
                Ok(crate::platform::exec::Output {
                    status,
                    stdout: out.into_bytes(),
                    stderr: err.into_bytes(),
                })
            }
            None => Err(crate::platform::PlatformError(format!(
                "cannot run {line}: not scripted"
            ))),
        }
    }
}

/// Writes a file under the root, with its directories.
pub fn fake_file(root: &Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Makes a symlink under the root, with its directories.
pub fn fake_link(root: &Path, path: &str, target: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// A 1 GiB SATA disk `name` (`dev` its major:minor) with by-id name `id`.
pub fn fake_disk(root: &Path, name: &str, dev: &str, id: &str) {
    let node = format!("/sys/devices/pci0000:00/ata/{name}/block/{name}");
    fake_file(root, &format!("{node}/dev"), dev);
    fake_file(root, &format!("{node}/size"), "2097152");
    fake_file(root, &format!("{node}/removable"), "0");
    fake_link(
        root,
        &format!("/sys/block/{name}"),
        &format!("../devices/pci0000:00/ata/{name}/block/{name}"),
    );
    fake_link(
        root,
        &format!("/sys/class/block/{name}"),
        &format!("../../devices/pci0000:00/ata/{name}/block/{name}"),
    );
    fake_file(
        root,
        &format!("/run/udev/data/b{dev}"),
        &format!("S:disk/by-id/{id}\n"),
    );
    fake_file(root, &format!("/dev/{name}"), "");
    fake_link(
        root,
        &format!("/dev/disk/by-id/{id}"),
        &format!("../../{name}"),
    );
}

/// A root with three disks: `sda` (`scsi-incus_root`, the disk the root prefix's file
/// system is on), `sdb` (`scsi-incus_disk1`) and `sdc` (`scsi-incus_disk2`), each 1 GiB,
/// as sysfs, udev's database and `/dev` (plain files) show them.
pub fn fake_disks(root: &Path) {
    fake_disk(root, "sda", "8:0", "scsi-incus_root");
    fake_disk(root, "sdb", "8:16", "scsi-incus_disk1");
    fake_disk(root, "sdc", "8:32", "scsi-incus_disk2");
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(root).unwrap().dev();
    fake_link(
        root,
        &format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev)),
        "../../devices/pci0000:00/ata/sda/block/sda",
    );
}

/// Drives without SMART (what `smartctl` says of a virtual disk) and without multipath.
pub fn plain_drives(script: &Script) {
    script.on(
        "smartctl",
        4,
        r#"{"device":{"type":"scsi"},"smart_support":{"available":false}}"#,
        "",
    );
    script.on("multipath", 1, "", "");
}

/// A systemd whose jobs all succeed and are recorded (`restart systemd-networkd.service`);
/// a unit's state follows its jobs, and a unit no job touched reads active or not as
/// chosen at [`RecordingSystemd::new`].
#[derive(Default)]
pub struct RecordingSystemd {
    jobs: Mutex<Vec<String>>,
    active: Mutex<std::collections::BTreeMap<String, bool>>,
    untouched_active: bool,
}

impl RecordingSystemd {
    pub fn new(untouched_active: bool) -> RecordingSystemd {
        RecordingSystemd {
            untouched_active,
            ..Default::default()
        }
    }

    /// The jobs run so far, in order.
    pub fn jobs(&self) -> Vec<String> {
        self.jobs.lock().unwrap().clone()
    }
}

impl crate::platform::systemd::Units for RecordingSystemd {
    fn unit(
        &self,
        action: crate::platform::systemd::UnitAction,
        unit: &str,
    ) -> Result<String, crate::platform::PlatformError> {
        use crate::platform::systemd::UnitAction;
        let mut active = self.active.lock().unwrap();
        if action == UnitAction::ActiveState {
            let on = active.get(unit).copied().unwrap_or(self.untouched_active);
            return Ok(if on { "active" } else { "inactive" }.into());
        }
        self.jobs
            .lock()
            .unwrap()
            .push(format!("{} {unit}", action.as_str()));
        let on = matches!(action, UnitAction::Start | UnitAction::Restart);
        active.insert(unit.into(), on);
        Ok(String::new())
    }
    fn daemon_reload(&self) -> Result<(), crate::platform::PlatformError> {
        Ok(())
    }
}

impl Systemd for RecordingSystemd {
    fn power(
        &self,
        _: crate::platform::systemd::PowerAction,
    ) -> Result<(), crate::platform::PlatformError> {
        Ok(())
    }
    fn reachable(&self) -> Result<(), crate::platform::PlatformError> {
        Ok(())
    }
}

/// One request through `r` (the router under test): its status and JSON body.
pub async fn call(
    r: &axum::Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (axum::http::StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// An answer that must be the error envelope: its status and error text.
pub fn err(v: &(axum::http::StatusCode, serde_json::Value)) -> (u16, String) {
    assert_eq!(v.1["type"], "error", "{}", v.1);
    (v.0.as_u16(), v.1["error"].as_str().unwrap().to_string())
}

/// A throw-away PKI for signed messages, made at test time: a root CA with the support CA
/// and the update CA under it, a signer under each, a support signer whose certificate has
/// expired, and a second root with its own "support CA" and signer. Messages are signed by
/// the real `openssl smime -sign`.
pub struct SigningPki {
    dir: tempfile::TempDir,
}

impl SigningPki {
    #[allow(clippy::new_without_default)]
    pub fn new() -> SigningPki {
        use rcgen::{
            BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let params = |cn: &str, ca: bool| {
            let mut p = CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2099, 1, 1);
            if ca {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            } else {
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            }
            p
        };
        let save = |name: &str, cert: &Certificate, key: &KeyPair| {
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        let root = |name: &str, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params(cn, true).self_signed(&key).unwrap();
            save(name, &cert, &key);
            (cert, key)
        };
        let issue = |name: &str, p: CertificateParams, by: &(Certificate, KeyPair)| {
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &by.0, &by.1).unwrap();
            save(name, &cert, &key);
            (cert, key)
        };
        let r = root("root", "Test Root CA");
        let support = issue("support-ca", params("Test Support CA", true), &r);
        let update = issue("update-ca", params("Test Update CA", true), &r);
        issue(
            "support-signer",
            params("Test Support Signer", false),
            &support,
        );
        issue(
            "update-signer",
            params("Test Update Signer", false),
            &update,
        );
        let mut old = params("Test Expired Support Signer", false);
        old.not_before = rcgen::date_time_ymd(2020, 1, 1);
        old.not_after = rcgen::date_time_ymd(2021, 1, 1);
        issue("expired-signer", old, &support);
        let other = root("other-root", "Test Other Root CA");
        let other_support = issue("other-support-ca", params("Test Support CA", true), &other);
        issue(
            "other-signer",
            params("Test Support Signer", false),
            &other_support,
        );
        SigningPki { dir }
    }

    /// A certificate of the PKI (PEM): `root`, `support-ca`, `update-ca`, `other-root`, ...
    pub fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.pem"))).expect("pem")
    }

    /// Ships the root CA, the update CA and the support CA under `root`, where the daemon
    /// and the providers read them.
    pub fn install(&self, root: &Path) {
        let fs = RootFs::new(root);
        use incus_osd_provider_common::trust::{ROOT_CA_PATH, SUPPORT_CA_PATH, UPDATE_CA_PATH};
        for (path, name) in [
            (ROOT_CA_PATH, "root"),
            (UPDATE_CA_PATH, "update-ca"),
            (SUPPORT_CA_PATH, "support-ca"),
        ] {
            fs.write(path, self.pem(name).as_bytes(), 0o644).unwrap();
        }
    }

    /// `content` signed (text mode) by `signer` (`support-signer`, `update-signer`,
    /// `expired-signer`, `other-signer`), carrying its issuer `ca`.
    pub fn sign_as(&self, content: &[u8], signer: &str, ca: &str) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(d.join("content"), content).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["smime", "-sign", "-text", "-in", "content", "-signer"])
            .arg(format!("{signer}.pem"))
            .arg("-inkey")
            .arg(format!("{signer}.key"))
            .arg("-certfile")
            .arg(format!("{ca}.pem"))
            .current_dir(d)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl smime -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `content` signed through the support CA.
    pub fn sign_support(&self, content: &[u8]) -> Vec<u8> {
        self.sign_as(content, "support-signer", "support-ca")
    }

    /// `content` signed through the update CA.
    pub fn sign_update(&self, content: &[u8]) -> Vec<u8> {
        self.sign_as(content, "update-signer", "update-ca")
    }
}
