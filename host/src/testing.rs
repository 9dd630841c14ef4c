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
    security: Option<crate::system::security::Runtime>,
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
            security: None,
        }
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
