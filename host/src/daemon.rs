//! Start-up, the unix socket listener and shutdown.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::api::{self, App};
use crate::platform::files::RootFs;
use crate::platform::systemd::PowerAction;
use crate::platform::{Mode, Platform};
use crate::plugins::Registry;
use crate::state::Store;
use crate::system::info::{read_os_release, SystemInfo};

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
            root,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/incus-os")
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
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.display().to_string();
    move |source| StartError::Io { what, path, source }
}

/// Creates `dir` (and parents) and sets its mode exactly.
fn private_dir(dir: &Path, mode: u32) -> Result<(), StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
        .map_err(io("cannot create directory", dir))
}

/// Binds the API socket: its directory 0700, the socket 0600. A stale socket is removed;
/// a live one (another daemon answers) is refused.
pub fn bind_socket(path: &Path) -> Result<UnixListener, StartError> {
    if let Some(dir) = path.parent() {
        private_dir(dir, 0o700)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StartError::AlreadyRunning(path.display().to_string()));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io("cannot remove stale socket", path))?;
        }
        Ok(_) => {
            return Err(StartError::Io {
                what: "refusing to replace",
                path: path.display().to_string(),
                source: std::io::Error::other("it exists and is not a socket"),
            })
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(io("cannot listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot set the mode of", path))?;
    Ok(listener)
}

/// Everything loaded before serving: state, OS identity, plugins.
pub fn prepare(config: &Config, platform: Platform) -> Result<Arc<App>, StartError> {
    let state_dir = config.state_dir();
    private_dir(&state_dir, 0o700)?;
    let mut store = Store::load_or_create(&state_dir)?;
    let os =
        read_os_release(&RootFs::new(&config.root)).map_err(|reason| StartError::OsRelease {
            root: config.root.display().to_string(),
            reason,
        })?;
    if store.doc().os.name != os.name || store.doc().os.running_release != os.version {
        let (name, version) = (os.name.clone(), os.version.clone());
        if let Err(e) = store.update(|d| {
            d.os.name = name;
            d.os.running_release = version;
        }) {
            tracing::warn!(error = %e, "cannot record the OS release in the state");
        }
    }
    let info = SystemInfo::read(&config.root, os);
    if let Mode::Offline(why) = &platform.mode {
        tracing::warn!("{why}");
    }
    let store = Arc::new(Mutex::new(store));
    let registry = {
        let (root, store, platform) = (config.root.clone(), store.clone(), platform.clone());
        Registry::load(&config.plugin_dirs, config.plugin_timeouts, move |m| {
            crate::plugins::host::handle(m, &root, store.clone(), &platform)
        })
    };
    Ok(Arc::new(App::new(
        config.root.clone(),
        store,
        registry,
        info,
        platform,
    )))
}

/// A running daemon.
pub struct Daemon {
    pub app: Arc<App>,
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Set once the plugins' stop hooks ran (by a power action or at shutdown).
    plugins_stopped: Arc<tokio::sync::Mutex<bool>>,
}

impl Daemon {
    /// Loads everything, binds the socket, serves, runs the plugins' start hooks in order,
    /// then reports the system ready.
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
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
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
        apply_logging(&app).await;
        app.registry.start_all().await;
        {
            let mut store = app.store.lock().unwrap_or_else(|p| p.into_inner());
            if !store.doc().os.successful_boot {
                if let Err(e) = store.update(|d| d.os.successful_boot = true) {
                    tracing::warn!(error = %e, "cannot record the successful boot");
                }
            }
        }
        app.set_ready();
        tracing::info!(version = %app.info.os().version, "System is ready");
        let plugins_stopped = Arc::new(tokio::sync::Mutex::new(false));
        if let Some(requests) = app.take_power_requests() {
            tokio::spawn(action_loop(app.clone(), requests, plugins_stopped.clone()));
        }
        Ok(Daemon {
            app,
            socket: config.socket.clone(),
            stop,
            server,
            plugins_stopped,
        })
    }

    /// Stops serving (in-flight requests finish), stops plugins in reverse start order,
    /// saves the state and removes the socket.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(30), self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "API server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "API server task failed"),
            Err(_) => tracing::warn!("in-flight requests did not finish within 30s"),
        }
        notify_systemd("STOPPING=1");
        stop_plugins_once(&self.app, &self.plugins_stopped).await;
        save_state(&self.app);
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("stopped");
    }
}

/// Runs the plugins' stop hooks, unless that already happened.
async fn stop_plugins_once(app: &App, stopped: &tokio::sync::Mutex<bool>) {
    let mut done = stopped.lock().await;
    if !*done {
        app.registry.stop_all().await;
        *done = true;
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

/// Carries out power requests: for reboot and power-off the shutdown sequence first (plugins
/// stopped in reverse order, state saved), then the request to systemd. If systemd refuses,
/// the plugins are started again.
async fn action_loop(
    app: Arc<App>,
    mut requests: tokio::sync::mpsc::Receiver<PowerAction>,
    plugins_stopped: Arc<tokio::sync::Mutex<bool>>,
) {
    while let Some(action) = requests.recv().await {
        tracing::info!(action = action.as_str(), "power action requested");
        let shutdown = action != PowerAction::Suspend;
        if shutdown {
            tracing::info!("System is shutting down");
            stop_plugins_once(&app, &plugins_stopped).await;
            save_state(&app);
        }
        let app2 = app.clone();
        let result = tokio::task::spawn_blocking(move || app2.platform.units.power(action))
            .await
            .unwrap_or_else(|e| Err(crate::platform::PlatformError(e.to_string())));
        if let Err(e) = result {
            tracing::error!(action = action.as_str(), error = %e, "power action failed");
            if shutdown {
                let mut stopped = plugins_stopped.lock().await;
                app.registry.start_all().await;
                *stopped = false;
            }
        }
    }
}

/// Applies the stored syslog forwarding at start (failures are logged, not fatal).
async fn apply_logging(app: &Arc<App>) {
    let config = app.with_state(|s| s.doc().system.logging.clone());
    if config == Default::default() {
        return;
    }
    let app2 = app.clone();
    let res = tokio::task::spawn_blocking(move || {
        crate::system::logging::apply(
            &RootFs::new(&app2.root),
            app2.platform.units.as_ref(),
            &config,
        )
    })
    .await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot apply the syslog configuration"),
        Err(e) => tracing::warn!(error = %e, "cannot apply the syslog configuration"),
    }
}

/// The notify socket systemd gave us, connected; `None` when not started by systemd.
fn notify_socket() -> Option<std::os::unix::net::UnixDatagram> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: no socket");
            return None;
        }
    };
    let bytes = path.as_encoded_bytes();
    let connected = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.connect_addr(&addr))
    } else {
        sock.connect(&path)
    };
    match connected {
        Ok(()) => Some(sock),
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: cannot reach systemd");
            None
        }
    }
}

/// Tells systemd about our state (`Type=notify`), when started by it.
pub fn notify_systemd(state: &str) {
    if let Some(sock) = notify_socket() {
        if let Err(e) = sock.send(state.as_bytes()) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// Waits until systemd has processed every notification sent before (sd_notify's barrier:
/// `BARRIER=1` with the write end of a pipe, which systemd closes once it got there).
pub fn notify_barrier(timeout: Duration) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Some(sock) = notify_socket() else { return };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two new descriptors, which we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return tracing::warn!("sd_notify barrier: no pipe");
    }
    // SAFETY: both descriptors were just created and are not owned elsewhere.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let msg = b"BARRIER=1";
    let fd = write_end.as_raw_fd();
    // SAFETY: a sendmsg with one iovec over `msg` and one SCM_RIGHTS control message
    // carrying `fd`, in a buffer sized with CMSG_SPACE; every pointer outlives the call.
    let sent = unsafe {
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::copy_nonoverlapping(&fd, libc::CMSG_DATA(cmsg) as *mut i32, 1);
        libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL)
    };
    drop(write_end);
    if sent < 0 {
        return tracing::warn!("sd_notify barrier: {}", std::io::Error::last_os_error());
    }
    let mut pfd = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; POLLHUP arrives once systemd closed its copy of the pipe.
    let n = unsafe {
        libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    if n <= 0 {
        tracing::warn!("sd_notify barrier: systemd did not answer in time");
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Lays out a dev root on first use: an OS identity, a machine id, and links to this
/// machine's `/proc` and `/sys` so uptime and hardware facts are real.
pub fn prepare_dev_root(root: &Path) -> std::io::Result<()> {
    let fs = RootFs::new(root);
    let io = |e: crate::platform::files::FsError| std::io::Error::other(e.to_string());
    std::fs::create_dir_all(root)?;
    if fs.read("/lib/os-release").map_err(io)?.is_none() {
        let text = format!(
            "NAME=\"IncusOS\"\nID=incus-os\nIMAGE_VERSION={}\n",
            dev_version()
        );
        fs.write("/lib/os-release", text.as_bytes(), 0o644)
            .map_err(io)?;
    }
    if fs.read("/etc/machine-id").map_err(io)?.is_none() {
        let id = random_hex_128();
        fs.write("/etc/machine-id", format!("{id}\n").as_bytes(), 0o444)
            .map_err(io)?;
    }
    for link in ["proc", "sys"] {
        let p = root.join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(format!("/{link}"), &p)?;
        }
    }
    Ok(())
}

/// A dev image version in upstream's 12-digit form, fixed at the time of the first run.
fn dev_version() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi) = civil_from_unix(secs);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}")
}

/// (year, month, day, hour, minute) in UTC for a Unix time.
fn civil_from_unix(secs: u64) -> (i64, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32)
}

fn random_hex_128() -> String {
    let mut buf = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0));
        // 2026-11-27 12:54 UTC
        assert_eq!(civil_from_unix(1_795_784_040), (2026, 11, 27, 12, 54));
    }

    #[test]
    fn a_dev_root_gets_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        prepare_dev_root(dir.path()).unwrap();
        let fs = RootFs::new(dir.path());
        let rel = read_os_release(&fs).unwrap();
        assert_eq!(rel.name, "IncusOS");
        assert_eq!(rel.version.len(), 12);
        assert_eq!(crate::system::info::read_machine_id(&fs).unwrap().len(), 32);
        // A second run keeps the identity.
        let before = std::fs::read(dir.path().join("etc/machine-id")).unwrap();
        prepare_dev_root(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/machine-id")).unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn a_second_daemon_on_a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/incus-os/unix.socket");
        let l = bind_socket(&sock).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock), 0o600);
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        let err = bind_socket(&sock).unwrap_err();
        assert!(matches!(err, StartError::AlreadyRunning(_)), "{err}");
        drop(l); // the socket file stays behind: stale
        assert!(sock.exists());
        let _l2 = bind_socket(&sock).unwrap();
    }
}
