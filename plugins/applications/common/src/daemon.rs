//! The lifecycle of an application that is one daemon with one unit, its data on its own
//! ZFS dataset and its API on a unix socket: Migration Manager and Operations Center.

use std::time::Duration;

use plugin_api::{Host, Result};

use crate::{api::Api, version, zfs};

/// How long a call to such a daemon's API may stall (upstream: 5 s).
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// One such daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Daemon {
    /// The application's name (`migration-manager`), also its dataset's (`local/<name>`)
    /// and its mountpoint's (`/var/lib/<name>/`).
    pub name: &'static str,
    /// The name errors show (`Migration Manager`).
    pub display: &'static str,
    /// Its unit (`migration-manager.service`).
    pub unit: &'static str,
    /// Its API's socket (`/run/migration-manager/unix.socket`).
    pub socket: &'static str,
    /// Its binary, which prints the friendly version with `--version`.
    pub binary: &'static str,
}

impl Daemon {
    /// The client for its API.
    pub fn api(&self) -> Api {
        Api::new(self.display, self.socket, API_TIMEOUT)
    }

    /// Its data directory, `/var/lib/<name>/`.
    pub fn data_dir(&self) -> String {
        zfs::app_mountpoint(self.name)
    }

    /// Start: its dataset created or mounted ([`zfs::configure_local_storage`]), then the
    /// unit started.
    pub fn start(&self, host: &Host, initialized: bool) -> Result<()> {
        zfs::configure_local_storage(host, self.name, initialized)?;
        host.start_unit(self.unit)
    }

    /// Stop: the unit stopped.
    pub fn stop(&self, host: &Host) -> Result<()> {
        host.stop_unit(self.unit)
    }

    /// Restart: the dataset made ready as for a start, then the unit restarted.
    pub fn restart(&self, host: &Host, initialized: bool) -> Result<()> {
        zfs::configure_local_storage(host, self.name, initialized)?;
        host.restart_unit(self.unit)
    }

    /// Reload after an update: systemd re-reads the units, the unit is restarted.
    pub fn reload(&self, host: &Host) -> Result<()> {
        host.daemon_reload()?;
        host.restart_unit(self.unit)
    }

    /// Whether the unit is active.
    pub fn running(&self, host: &Host) -> Result<bool> {
        crate::unit_running(host, self.unit)
    }

    /// What `<binary> --version` prints.
    pub fn friendly_version(&self, host: &Host) -> Result<String> {
        version::command_version(host, &[self.binary, "--version"])
    }

    /// Wipe: the dataset unmounted and destroyed, the directory removed, then an empty
    /// dataset created again (the next start mounts it).
    pub fn wipe(&self, host: &Host) -> Result<()> {
        let dir = self.data_dir();
        crate::unmount_strict(host, &dir)?;
        zfs::destroy_app_dataset(host, self.name)?;
        host.remove(dir.trim_end_matches('/'))?;
        zfs::create_app_dataset(host, self.name)
    }
}
