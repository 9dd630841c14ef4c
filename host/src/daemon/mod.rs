//! Start-up, the unix socket listener and shutdown.

pub(crate) mod devroot;

use crate::platform::notify::{notify_barrier, notify_systemd};
pub use crate::platform::socket::bind_socket;
pub use devroot::prepare_dev_root;
use plugin_api::provider::RefreshCause;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{self, App};
use crate::lifecycle::{self, Phase, StartMarkers, StopReason, DRAIN_DEADLINE};
use crate::platform::files::RootFs;
use crate::platform::kernel::KernelFiles;
use crate::platform::systemd::PowerAction;
use crate::platform::{Mode, Platform};
use crate::plugins::Registry;
use crate::state::Store;
use crate::system::info::{read_os_release, SystemInfo};

/// The state directory, as an OS path under the root.
pub const STATE_DIR: &str = "/var/lib/incus-os";

/// Where the daemon finds and keeps everything.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every OS path resolves under this root.
    pub root: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// Directories scanned for plugin libraries.
    pub plugin_dirs: Vec<PathBuf>,
    /// How long plugin calls may take before they fail and the plugin is marked degraded.
    pub plugin_timeouts: crate::plugins::Timeouts,
    /// D-Bus address of the systemd to drive; `None`: the system bus when the root is `/`,
    /// no systemd otherwise.
    pub system_bus: Option<String>,
    /// Where kernel facts are read: this machine's `/proc` and `/sys` for the root `/` and
    /// the dev root, stand-ins under any other root.
    pub kernel: KernelFiles,
    /// The disk OS updates are staged into; `None`: the disk of the ESP's partition.
    pub install_disk: Option<PathBuf>,
    /// Applications recorded as installed at start, under a root other than `/` only (a
    /// development root): see [`devroot::mark_installed`].
    pub dev_install: Vec<String>,
    /// Lists loop devices as drives (tests only: loop devices stand in for disks).
    pub test_admit_loop_devices: bool,
}

impl Config {
    /// The standard layout under `root`: socket `run/incus-os/unix.socket`, plugins in
    /// `usr/lib/incus-osd/plugins`.
    pub fn for_root(root: impl Into<PathBuf>) -> Config {
        let root = root.into();
        Config {
            socket: root.join("run/incus-os/unix.socket"),
            plugin_dirs: vec![root.join("usr/lib/incus-osd/plugins")],
            plugin_timeouts: crate::plugins::Timeouts::default(),
            system_bus: None,
            kernel: KernelFiles::for_root(&root),
            install_disk: None,
            dev_install: vec![],
            test_admit_loop_devices: false,
            root,
        }
    }

    /// The state directory on the host (for messages; it is opened as [`STATE_DIR`]
    /// inside the root).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR.trim_start_matches('/'))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot read the OS identity under {root}: {reason}")]
    OsRelease { root: String, reason: String },
    #[error("another incus-osd is already serving on {0}")]
    AlreadyRunning(String),
    #[error("{0}")]
    Usage(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// Everything loaded before serving: state, OS identity, plugins.
pub fn prepare(config: &Config, mut platform: Platform) -> Result<Arc<App>, StartError> {
    if !config.dev_install.is_empty() && config.root == std::path::Path::new("/") {
        return Err(StartError::Usage(
            "--dev-install is for a development root (a --root other than /): on a system, \
             POST /1.0/applications installs"
                .into(),
        ));
    }
    platform.kernel = config.kernel.clone();
    let fs = RootFs::new(&config.root);
    let state_dir = fs
        .create_dir_handle(STATE_DIR, 0o700)
        .map_err(|e| StartError::Io {
            what: "cannot open the state directory",
            path: config.state_dir().display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let mut store = Store::load_or_create_in(state_dir)?;
    remove_temp_files(&fs, crate::system::logging::CONF);
    let os = read_os_release(&fs).map_err(|reason| StartError::OsRelease {
        root: config.root.display().to_string(),
        reason,
    })?;
    {
        for name in &config.dev_install {
            devroot::mark_installed(&fs, &mut store, name, &os.version)
                .map_err(StartError::Usage)?;
        }
    }
    let prior_release = store.doc().os.running_release.clone();
    let first_start = crate::system::seed::apply::is_first_start(store.doc());
    if store.doc().os.name != os.name || store.doc().os.running_release != os.version {
        let (name, version) = (os.name.clone(), os.version.clone());
        if let Err(e) = store.update(|d| {
            d.os.name = name;
            d.os.running_release = version;
        }) {
            tracing::warn!(error = %e, "cannot record the OS release in the state");
        }
    }
    crate::system::security::startup(&config.root, &platform.kernel, &mut store)
        .map_err(|e| StartError::Usage(e.to_string()))?;
    let info = SystemInfo::read(&config.root, &platform.kernel, os);
    if let Mode::Offline(why) = &platform.mode {
        tracing::warn!("{why}");
    }
    let store = Arc::new(Mutex::new(store));
    let update_status = Arc::new(crate::system::update::runner::UpdateStatus::default());
    let registry = {
        let (root, store, platform) = (config.root.clone(), store.clone(), platform.clone());
        let progress = update_status.clone();
        // Opened at start besides plugins with start or stop hooks: the selected provider
        // and the installed applications; the others on their first call.
        let (provider, apps) = {
            let s = store.lock().unwrap_or_else(|e| e.into_inner());
            let apps: std::collections::BTreeSet<String> = s
                .doc()
                .applications
                .iter()
                .filter(|(_, r)| !r.version.is_empty())
                .map(|(n, _)| n.clone())
                .collect();
            (s.doc().system.provider.name.clone(), apps)
        };
        let open_at_start = move |m: &plugin_api::Manifest| match m.kind {
            plugin_api::Kind::Provider => m.name == provider,
            plugin_api::Kind::Application => m.names().any(|n| apps.contains(n)),
            _ => true,
        };
        let cache = crate::plugins::cache::Cache::read(
            &config.state_dir().join(crate::plugins::cache::FILE),
        );
        Registry::load_cached(
            &config.plugin_dirs,
            config.plugin_timeouts,
            cache,
            open_at_start,
            move |m| {
                for path in &m.paths {
                    remove_temp_files(&RootFs::new(&root), path);
                }
                crate::plugins::host::handle(m, &root, store.clone(), &platform, progress.clone())
            },
        )
    };
    let mut app = App::new(config.root.clone(), store, registry, info, platform);
    app.updates = crate::system::update::runner::Updates::new(update_status);
    app.install_disk = config.install_disk.clone();
    app.first_start = first_start;
    let boot_disk = crate::system::update::runner::install_disk(&app)
        .map(|d| d.display().to_string())
        .ok();
    app.seeds = crate::system::seed::lookup(&app.root, boot_disk.as_deref());
    crate::system::seed::apply::apply_early(&app);
    app.prior_release = prior_release;
    app.storage.opts.admit_loop_devices = config.test_admit_loop_devices;
    if config.test_admit_loop_devices {
        tracing::warn!("--test-admit-loop-devices: loop devices are listed as drives");
    }
    Ok(Arc::new(app))
}

/// Removes the temporary files interrupted atomic writes left at `os_path` (the daemon's
/// own files, each plugin's declared paths) before anything writes there: everywhere under
/// it if it is a directory, else the ones of that file next to it. Failures are logged.
fn remove_temp_files(fs: &RootFs, os_path: &str) {
    match fs.remove_temp_files(os_path) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            path = os_path,
            removed = n,
            "removed leftover temporary files"
        ),
        Err(e) => {
            tracing::warn!(path = os_path, error = %e, "cannot remove leftover temporary files")
        }
    }
}

/// A running daemon.
pub struct Daemon {
    pub app: Arc<App>,
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Start-up after the API answers (plugins' start hooks, then ready).
    starting: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Loads everything, binds the socket and serves; then, in the background, starts the
    /// plugins (each after its dependencies) and reports the system ready once every one
    /// started or gave up. Install the signal handlers ([`Signals::install`]) first.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        let listener = bind_socket(&config.socket)?;
        let platform = Platform::connect(&config.root, config.system_bus.as_deref()).await;
        let app = match prepare(config, platform) {
            Ok(app) => app,
            Err(e) => {
                let _ = std::fs::remove_file(&config.socket);
                return Err(e);
            }
        };
        let (stop, mut stopped) = watch::channel(false);
        let router = api::router(app.clone());
        let server = tokio::spawn(async move {
            let limits = api::listener::Limits::for_this_process();
            api::listener::serve(listener, router, limits, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        });
        tracing::info!(socket = %config.socket.display(), "API listening");
        // Ready for systemd once the API answers (upstream's clients may call it while the
        // system finishes starting; `system_is_ready` says when it did). The barrier makes
        // systemd's own "Started" entry land before "System is ready" in the journal.
        notify_systemd("READY=1");
        tokio::task::spawn_blocking(|| notify_barrier(Duration::from_secs(5)))
            .await
            .ok();
        if let Some(requests) = app.take_power_requests() {
            tokio::spawn(action_loop(app.clone(), requests));
        }
        let starting = tokio::spawn(finish_start(app.clone()));
        Ok(Daemon {
            app,
            socket: config.socket.clone(),
            stop,
            server,
            starting,
        })
    }

    /// Stops within the unit's `TimeoutStopSec`: changes are refused from now on;
    /// requests in flight get [`DRAIN_DEADLINE`] to finish; plugins stop in reverse start
    /// order within [`lifecycle::STOP_HOOKS_BUDGET`]; the state is saved and the socket
    /// removed.
    pub async fn shutdown(mut self) {
        let app = self.app.clone();
        if let Err(e) = app.lifecycle.move_to(Phase::Stopping(StopReason::Shutdown)) {
            tracing::warn!(error = %e, "shutting down anyway");
        }
        tracing::info!("shutting down");
        notify_systemd("STOPPING=1");
        // Start-up, if still going, ends here: plugins not started yet stay so, and a start
        // hook still running is waited for (within the budget) before its stop hook.
        self.starting.abort();
        let _ = self.stop.send(true);
        // The abort takes effect where start-up next waits: until then it may still be
        // running (spawning plugins' start tasks, logging). Waited for, so nothing of it
        // runs after the plugins are stopped or after "stopped" is logged; a start-up
        // stuck in a blocking call is left behind after a moment.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.starting)
            .await
            .is_err()
        {
            tracing::warn!("start-up did not end 2s after shutdown began");
        }
        // The listener cuts requests still running after DRAIN_DEADLINE; a moment more
        // for that (kept within EXIT_MARGIN), then it is no longer waited for.
        let drain = DRAIN_DEADLINE + Duration::from_secs(2);
        match tokio::time::timeout(drain, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "API server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "API server task failed"),
            Err(_) => {
                tracing::warn!(
                    "the API server did not stop {}s after shutdown began",
                    drain.as_secs()
                );
                self.server.abort();
            }
        }
        lifecycle::stop_plugins(&app).await;
        save_state(&app);
        StartMarkers::new(&app.root).clear_all();
        let _ = std::fs::remove_file(&self.socket);
        let _ = app.lifecycle.move_to(Phase::Stopped);
        tracing::info!("stopped");
    }
}

/// Makes the recovery keys when missing, then caches the encrypted volumes' states (on a
/// live system; a development root has none).
async fn refresh_encrypted_volumes(app: &Arc<App>) {
    if app.platform.mode != Mode::Live {
        return;
    }
    let app2 = app.clone();
    let done = tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::system::security::ensure_recovery_keys(
            app2.platform.commands.as_ref(),
            &app2.root,
            &app2.platform.kernel,
            &app2.security,
            &app2.store,
        ) {
            tracing::error!(error = %e, "cannot make the encryption recovery keys");
        }
        crate::system::security::refresh_encrypted_volumes(
            app2.platform.commands.as_ref(),
            &app2.root,
            &app2.platform.kernel,
            &app2.security,
        )
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "cannot find the encrypted volumes' states");
    }
}

/// Start-up after the API answers: the stored syslog forwarding, the plugins, then ready.
async fn finish_start(app: Arc<App>) {
    // A recovery volume first (upstream's point: before anything that could fail and keep
    // a fix from running); its update is applied where the start-up check runs.
    let recovery_update = crate::system::recovery::check_at_start(&app).await;
    // In an Incus VM, the agent's features (upstream does this before the API exists).
    crate::system::agent::configure(&app).await;
    apply_logging(&app).await;
    refresh_encrypted_volumes(&app).await;
    apply_network(&app).await;
    apply_kernel(&app).await;
    // The images installed applications use, chosen for the release that booted, before
    // anything starts (upstream's order).
    crate::system::applications::manage::refresh_at_boot(&app).await;
    lifecycle::start_plugins(&app).await;
    // A shutdown that began meanwhile ends start-up here (the abort of this task takes
    // effect only where it waits, and these steps may never wait).
    if app.lifecycle.is_stopping() {
        return;
    }
    // Storage after the services (iSCSI, NVMe-oF, multipath provide pool disks), before
    // the applications that keep their data in pools.
    crate::system::storage::runtime::load_at_boot(&app).await;
    crate::system::seed::apply::apply_late(&app).await;
    if let Some(version) = recovery_update {
        crate::system::recovery::apply_prepared_update(&app, &version).await;
    }
    crate::system::provider::register_at_start(&app).await;
    crate::system::update::runner::start(app.clone()).await;
    if app.lifecycle.is_stopping() {
        return;
    }
    // Running from the backup image: the fallback listener starts before the applications
    // (which may be what the newer image broke).
    let (running, next) = app.with_state(|s| {
        let os = &s.doc().os;
        (os.running_release.clone(), os.next_release.clone())
    });
    crate::system::fallback::listener::start_if_booted_from_backup(&app, &running, &next).await;
    // Applications start after the startup update check (which may install them).
    if crate::system::applications::manage::start_installed(&app).await {
        crate::system::fallback::listener::primary_failed(&app).await;
    }
    if app.lifecycle.is_stopping() {
        return;
    }
    {
        let mut store = app.store.lock().unwrap_or_else(|p| p.into_inner());
        if !store.doc().os.successful_boot {
            if let Err(e) = store.update(|d| d.os.successful_boot = true) {
                tracing::warn!(error = %e, "cannot record the successful boot");
            }
        }
    }
    tokio::spawn(crate::system::storage::runtime::scrub_scheduler(
        app.clone(),
    ));
    match app.lifecycle.move_to(Phase::Ready) {
        Ok(_) => {
            tracing::info!(version = %app.info.os().version, "System is ready");
            crate::system::provider::notify(&app, RefreshCause::SystemIsReady).await;
        }
        Err(e) => tracing::info!(error = %e, "start-up ended while stopping"),
    }
}

/// Saves the state document (logged, not fatal).
fn save_state(app: &App) {
    app.with_state(|store| {
        if !store.is_read_only() {
            if let Err(e) = store.save() {
                tracing::error!(error = %e, "cannot save state");
            }
        }
    });
}

/// Carries out power requests. For reboot and power-off: stopping (changes refused), the
/// plugins stopped in reverse order, the state saved, then the request to systemd; if
/// systemd refuses, the daemon is ready again and the plugins start again. Suspend
/// changes nothing of the lifecycle.
pub async fn action_loop(app: Arc<App>, mut requests: tokio::sync::mpsc::Receiver<PowerAction>) {
    while let Some(action) = requests.recv().await {
        tracing::info!(action = action.as_str(), "power action requested");
        let reason = StopReason::for_power(action);
        if let Some(reason) = reason {
            if let Err(e) = app.lifecycle.move_to(Phase::Stopping(reason)) {
                tracing::warn!(action = action.as_str(), error = %e, "power action dropped");
                continue;
            }
            tracing::info!("System is shutting down");
            let cause = match action {
                PowerAction::Reboot => RefreshCause::SystemRebootTriggered,
                _ => RefreshCause::ShutdownTriggered,
            };
            crate::system::provider::notify(&app, cause).await;
            lifecycle::stop_plugins(&app).await;
            save_state(&app);
        }
        if matches!(action, PowerAction::PowerOff | PowerAction::Suspend) {
            let net = app.network.clone();
            let _ = tokio::task::spawn_blocking(move || net.restore_wake_on_lan_macs()).await;
        }
        let app2 = app.clone();
        let result = tokio::task::spawn_blocking(move || app2.platform.units.power(action))
            .await
            .unwrap_or_else(|e| Err(crate::platform::PlatformError(e.to_string())));
        if let Err(e) = result {
            tracing::error!(action = action.as_str(), error = %e, "power action failed");
            // Ready first: a shutdown that comes meanwhile then finds the plugins to stop,
            // and a plugin's start checks for it under the plugin's lock.
            if reason.is_some() && app.lifecycle.move_to(Phase::Ready).is_ok() {
                lifecycle::start_plugins(&app).await;
            }
        }
    }
}

/// Applies the network configuration at start (see `Network::start`); a dev root has no
/// network to configure.
async fn apply_network(app: &Arc<App>) {
    if app.platform.mode != crate::platform::Mode::Live {
        return;
    }
    let net = app.network.clone();
    let seed = crate::system::seed::apply::network_seed(app);
    if let Err(e) = tokio::task::spawn_blocking(move || net.start(seed)).await {
        tracing::error!(error = %e, "network start-up failed");
    }
}

/// Applies the stored kernel settings at start, on this machine only (failures are logged,
/// not fatal). An empty config is the kernel's defaults: nothing to apply.
async fn apply_kernel(app: &Arc<App>) {
    if app.platform.mode != crate::platform::Mode::Live {
        return;
    }
    let config = app.with_state(|s| s.doc().system.kernel.clone());
    if config == Default::default() {
        return;
    }
    let (cmds, consoles) = (app.platform.commands.clone(), config.console.clone());
    let failed = tokio::task::spawn_blocking(move || {
        crate::system::kernel::set_console_speeds(cmds.as_ref(), &consoles)
    })
    .await
    .unwrap_or_default();
    for e in failed {
        tracing::error!(error = %e, "cannot set a console's speed");
    }
    let (root, platform) = (app.root.clone(), app.platform.clone());
    if let Err(e) = crate::system::kernel::apply_stored(root, platform, config).await {
        tracing::warn!(error = %e, "cannot apply the kernel configuration");
    }
}

/// Applies the stored syslog forwarding at start (failures are logged, not fatal).
async fn apply_logging(app: &Arc<App>) {
    let config = app.with_state(|s| s.doc().system.logging.clone());
    if config == Default::default() {
        return;
    }
    let (root, platform) = (app.root.clone(), app.platform.clone());
    if let Err(e) = crate::system::logging::apply_stored(root, platform, config).await {
        tracing::warn!(error = %e, "cannot apply the syslog configuration");
    }
}

/// SIGTERM and SIGINT, caught from the moment this is installed: install it before the
/// socket is bound, so a signal that comes as soon as the API answers stops the daemon
/// cleanly instead of killing it by the default action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the async runtime).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for SIGTERM or SIGINT (one that came earlier is returned at once).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
