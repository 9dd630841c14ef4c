//! `incus-osd`: the binary. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use incus_osd::daemon::{self, Config, Daemon};

/// The Incus OS management daemon: serves the Incus OS REST API on a unix socket and hosts
/// service, application and update-provider plugins.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Root prefix: every OS path resolves under it. Defaults to `/` in release builds; debug
    /// builds default to a dev root next to the binary (`target/debug/dev-root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// API socket [default: ROOT/run/incus-os/unix.socket].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Plugin directory; repeat for several [default: ROOT/usr/lib/incus-osd/plugins; debug
    /// builds without --root: the directory of the binary, where cargo puts the plugins].
    #[arg(long = "plugins")]
    plugins: Vec<PathBuf>,
    /// Seconds a plugin call that only reads (GET) may take before it fails and the plugin
    /// is marked degraded.
    #[arg(long, default_value_t = 30.0)]
    plugin_timeout: f64,
    /// Seconds a plugin call that changes things (PUT, start, reset, ...) may take.
    #[arg(long, default_value_t = 300.0)]
    plugin_change_timeout: f64,
    /// D-Bus address of the systemd to drive (e.g. `unix:path=/run/dbus/system_bus_socket`)
    /// [default: the system bus when the root is `/`; none otherwise].
    #[arg(long)]
    system_bus: Option<String>,
    /// The disk holding the A/B slots that OS updates are staged into [default: the disk
    /// of the partition mounted on ROOT/boot].
    #[arg(long)]
    install_disk: Option<PathBuf>,
    /// Records an application as installed before starting (repeatable; development roots
    /// only): a stand-in image, its link and the install record, so that a plugin can be
    /// tried without an update server. On a system, `POST /1.0/applications` installs.
    #[arg(long = "dev-install", value_name = "NAME")]
    dev_install: Vec<String>,
    /// Tests only: lists loop devices as drives in `/1.0/system/storage` (loop devices
    /// stand in for disks on test machines).
    #[arg(long)]
    test_admit_loop_devices: bool,
}

fn config(args: Args) -> Result<Config, String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from));
    let dev = args.root.is_none() && cfg!(debug_assertions);
    let mut cfg = match (&args.root, dev, &exe_dir) {
        (Some(root), _, _) => Config::for_root(root),
        (None, true, Some(exe_dir)) => {
            let root = exe_dir.join("dev-root");
            daemon::prepare_dev_root(&root)
                .map_err(|e| format!("cannot prepare dev root {}: {e}", root.display()))?;
            let mut c = Config::for_root(root);
            c.plugin_dirs = vec![exe_dir.clone()];
            // The dev run shows this machine's kernel facts (uptime, modules, ...).
            c.kernel = incus_osd::platform::kernel::KernelFiles::host();
            c
        }
        _ => Config::for_root("/"),
    };
    if dev {
        tracing::info!(root = %cfg.root.display(), "debug build without --root: using the dev root");
    }
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    cfg.system_bus = args.system_bus;
    cfg.install_disk = args.install_disk;
    cfg.dev_install = args.dev_install;
    cfg.test_admit_loop_devices = args.test_admit_loop_devices;
    if !args.plugins.is_empty() {
        cfg.plugin_dirs = args.plugins;
    }
    let secs = |v: f64, flag: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!("{flag} must be a positive number of seconds"))
        }
    };
    cfg.plugin_timeouts = incus_osd::plugins::Timeouts {
        read: secs(args.plugin_timeout, "--plugin-timeout")?,
        change: secs(args.plugin_change_timeout, "--plugin-change-timeout")?,
    };
    Ok(cfg)
}

fn init_logging() {
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("INCUS_OSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd the journal stamps each line, and a `<N>` prefix gives it the syslog
    // priority, so MESSAGE reads `INFO System is ready version=...`.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    incus_osd::logging::subscriber(filter, std::io::stderr, journal, ansi).init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    // Every connection holds a descriptor: take what the hard limit allows (the connection
    // cap is sized from it).
    if let Err(e) = incus_osd::platform::limits::raise_open_files() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        // Before anything is bound: a SIGTERM from now on means a clean stop.
        let mut signals = match daemon::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the signal handlers");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            root = %cfg.root.display(),
            socket = %cfg.socket.display(),
            plugins = ?cfg.plugin_dirs,
            "incus-osd starting"
        );
        match Daemon::start(&cfg).await {
            Ok(d) => {
                signals.recv().await;
                d.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("cannot start: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // A plugin call that timed out may still hold a blocking thread: don't wait for it.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}
