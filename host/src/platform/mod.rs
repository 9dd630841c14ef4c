//! The only code that touches the OS: files under the root prefix, systemd, commands.
//!
//! Each adapter is a trait with a real implementation. When the daemon runs against a dev
//! root (anything but `/`), the platform is *offline*: it never touches the machine's own
//! services or runs system commands, and says so in its errors instead of pretending.

pub mod efi;
pub mod journal;
pub mod kernel;
pub mod limits;
pub mod network;
pub mod notify;
pub mod socket;
pub mod systemd;
pub mod systemd_dbus;
pub mod tpm;
pub mod uploads;
pub mod volume;
pub mod watch;

use std::sync::Arc;

/// Whether the daemon acts on the live machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Root prefix `/`: units and commands act on this machine.
    Live,
    /// A dev or test root: units and commands are refused with this reason.
    Offline(String),
}

/// Commands with a timeout (shared with the plugin harness).
pub use plugin_host::exec;
/// Files under the root prefix (shared with the plugin harness).
pub use plugin_host::files;
pub use plugin_host::PlatformError;

/// The platform adapters the daemon and its plugins use.
#[derive(Clone)]
pub struct Platform {
    pub mode: Mode,
    pub units: Arc<dyn systemd::Systemd>,
    pub commands: Arc<dyn exec::Commands>,
    /// Where kernel facts (`/proc`, `/sys`) are read.
    pub kernel: kernel::KernelFiles,
    /// The network's OS side (netlink, networkd and friends over D-Bus).
    pub network: Arc<dyn network::NetworkOs>,
}

impl Platform {
    /// The adapters for a root prefix, with systemd reached over D-Bus: on `bus` when
    /// given, else on the system bus when the root is `/`. Commands run only when the root
    /// is `/`.
    pub async fn connect(root: &std::path::Path, bus: Option<&str>) -> Platform {
        let mut p = Platform::for_root(root);
        if bus.is_none() && p.mode != Mode::Live {
            return p;
        }
        p.network = network::connect(&p.mode, root, bus, p.kernel.clone()).await;
        match systemd_dbus::DbusSystemd::connect(bus).await {
            Ok(d) => p.units = Arc::new(d),
            Err(e) => {
                tracing::warn!(error = %e, "systemd is not reachable over D-Bus");
                p.units = Arc::new(systemd::Unavailable::new(&e.0));
            }
        }
        p
    }

    /// The adapters for a root prefix, without systemd (see [`Platform::connect`]). Kernel
    /// facts come from [`kernel::KernelFiles::for_root`].
    pub fn for_root(root: &std::path::Path) -> Platform {
        let kernel = kernel::KernelFiles::for_root(root);
        if root == std::path::Path::new("/") {
            Platform {
                mode: Mode::Live,
                units: Arc::new(systemd::Unavailable::new("no D-Bus connection")),
                commands: Arc::new(exec::RealCommands),
                kernel,
                network: Arc::new(network::fake::Unavailable::new("no D-Bus connection")),
            }
        } else {
            let why = format!(
                "offline: the daemon runs against root prefix {} and does not touch this machine's services",
                root.display()
            );
            Platform {
                mode: Mode::Offline(why.clone()),
                units: Arc::new(systemd::Unavailable::new(&why)),
                commands: Arc::new(exec::Refused::new(&why)),
                network: Arc::new(network::fake::Unavailable::new(&why)),
                kernel,
            }
        }
    }
}
