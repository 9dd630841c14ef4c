//! The `incus` application (and its variant `incus-lts-7.0`, sharing its state): Incus as
//! a system extension, the default primary application.
//!
//! Its config is upstream's `{"lxcfs": {"cpu_shares": bool, "load_average": bool}}`, kept
//! in `/etc/default/incus` as `LXCFS_OPTS`. Its units start and stop in upstream's order,
//! it is initialized through its own API on [`SOCKET`] ([`init`]), and a stable install
//! gives way to the LTS branch only from exactly 7.0.0 ([`can_replace`]).
//!
//! Everything here is a function over the SDK's host; [`Incus`] (the `Application`
//! the daemon loads) calls them.
//!
//! | hook | function |
//! |---|---|
//! | get (`friendly_version`) | [`friendly_version`] (context's version) |
//! | put | [`apply_config`] (old, new) |
//! | start / stop / restart | [`start`] / [`stop`] / [`restart`] |
//! | initialize | [`init::initialize`] (the `incus` seed, the instance bridges) |
//! | reload (after an update) | [`reload`] |
//! | running | [`running`] |
//! | wipe | [`wipe`] |
//! | can-replace | [`can_replace`] (`from.name`, `to`) |
//! | manifest `backup`, `paths`, `debug_logs` | [`backup_spec`], [`PATHS`], [`LOG_DIRS`] |
//! | host: certificates, trust, listen address, fallback listener | [`server_certificate`], [`client_certificate`], [`init::add_trusted_certificate`], [`init::listen_address`], [`init::seeded_client_certificates`] |

pub mod init;
mod plugin;

#[doc(hidden)]
pub use plugin::__incus_osd_plugin_root_module;
pub use plugin::{Incus, CEPH_ACTION};

use plugin_api::application::BackupSpec;
use plugin_api::sdk::Backup;
use plugin_api::{Error, Host, Result, Undo};
use serde::{Deserialize, Serialize};

use incus_osd_application_common::{lazy_unmount, run, unit_running, version};

/// The application's name.
pub const NAME: &str = "incus";
/// Its LTS variant.
pub const LTS: &str = "incus-lts-7.0";
/// The Incus version from which the stable branch may go back to the LTS branch.
pub const LTS_VERSION: &str = "7.0.0";

/// Incus' main unit.
pub const UNIT: &str = "incus.service";
pub const SOCKET_UNIT: &str = "incus.socket";
pub const LXCFS_UNIT: &str = "incus-lxcfs.service";
pub const STARTUP_UNIT: &str = "incus-startup.service";
pub const SYSCTL_UNIT: &str = "systemd-sysctl.service";
/// Started in this order.
pub const START_UNITS: [&str; 4] = [SOCKET_UNIT, LXCFS_UNIT, STARTUP_UNIT, UNIT];
/// Stopped in this order, after [`STARTUP_UNIT`] (which shuts the instances down cleanly).
pub const STOP_UNITS: [&str; 3] = [UNIT, SOCKET_UNIT, LXCFS_UNIT];

/// Incus' API socket.
pub const SOCKET: &str = "/run/incus/unix.socket";
/// Where LXCFS' options are kept.
pub const DEFAULTS_FILE: &str = "/etc/default/incus";
/// Incus' data, its LXCFS data and its logs: what a wipe removes.
pub const DATA_DIR: &str = "/var/lib/incus";
pub const LXCFS_DIR: &str = "/var/lib/incus-lxcfs";
pub const LOG_DIR: &str = "/var/log/incus";
/// A link to the volume the logs live on (`storage.logs_volume`), unmounted on a wipe.
pub const LOGS_LINK: &str = "/var/lib/incus/logs";
/// Incus' own certificate: the client certificate towards other servers.
pub const SERVER_CERT: &str = "/var/lib/incus/server.crt";
pub const SERVER_KEY: &str = "/var/lib/incus/server.key";
/// A cluster's certificate: the server certificate when there is one.
pub const CLUSTER_CERT: &str = "/var/lib/incus/cluster.crt";
pub const CLUSTER_KEY: &str = "/var/lib/incus/cluster.key";

/// What the plugin writes or removes (its manifest's `paths`).
pub const PATHS: [&str; 4] = [DEFAULTS_FILE, DATA_DIR, LXCFS_DIR, LOG_DIR];

/// The backup: Incus' data directory without its sockets and runtime mounts; the units
/// stopped around a restore.
pub const BACKUP_ROOT: &str = "/var/lib/incus/";
pub const BACKUP_EXCLUDED: [&str; 3] = ["guestapi", "shmounts", "unix.socket"];
pub const BACKUP_UNITS: [&str; 4] = [STARTUP_UNIT, SOCKET_UNIT, UNIT, LXCFS_UNIT];

/// What `:debug` `get-logs` bundles (the host writes the gzip tar): the runtime and log
/// directories.
pub const LOG_DIRS: [&str; 2] = ["/run/incus", "/var/log/incus"];

/// The declared backup (upstream's root, exclusions and units).
pub const BACKUP: Backup = Backup::new(BACKUP_ROOT)
    .excluded(&BACKUP_EXCLUDED)
    .units(&BACKUP_UNITS);

/// The manifest's backup spec.
pub fn backup_spec() -> BackupSpec {
    BACKUP.spec()
}

/// The application's config (upstream's field names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "incus_osd_application_common::object")]
    pub lxcfs: Lxcfs,
}

/// LXCFS' optional features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lxcfs {
    /// CPU shares (`--enable-cfs`).
    pub cpu_shares: bool,
    /// Per-container load averages (`--enable-loadavg`).
    pub load_average: bool,
}

/// The text of [`DEFAULTS_FILE`] for `config`: `LXCFS_OPTS` with the selected flags;
/// `None` when none is selected (the file is removed).
pub fn defaults_file(config: &Config) -> Option<String> {
    let mut flags = vec![];
    if config.lxcfs.cpu_shares {
        flags.push("--enable-cfs");
    }
    if config.lxcfs.load_average {
        flags.push("--enable-loadavg");
    }
    if flags.is_empty() {
        return None;
    }
    Some(format!("LXCFS_OPTS=\"{}\"\n", flags.join(" ")))
}

/// Applies a config change: [`DEFAULTS_FILE`] rewritten (or removed), systemd told, and
/// Incus restarted to pick LXCFS' options up. Nothing happens when the config is the
/// same.
pub fn apply_config(host: &Host, undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
    if old == new {
        return Ok(());
    }
    match defaults_file(new) {
        Some(text) => undo.write_file(DEFAULTS_FILE, text.as_bytes(), 0o644)?,
        None => undo.remove(DEFAULTS_FILE)?,
    }
    host.daemon_reload()?;
    undo.restart_unit(UNIT)
}

/// Start: system users refreshed, sysctls applied again, the units started in order.
pub fn start(host: &Host) -> Result<()> {
    run(host, &["systemd-sysusers"])?;
    host.restart_unit(SYSCTL_UNIT)?;
    for unit in START_UNITS {
        host.start_unit(unit)?;
    }
    Ok(())
}

/// Stop: the startup unit first (it shuts the instances down cleanly), then the rest.
pub fn stop(host: &Host) -> Result<()> {
    host.stop_unit(STARTUP_UNIT)?;
    for unit in STOP_UNITS {
        host.stop_unit(unit)?;
    }
    Ok(())
}

/// Restart: the main unit restarted.
pub fn restart(host: &Host) -> Result<()> {
    host.restart_unit(UNIT)
}

/// Reload after an update: system users refreshed, systemd told, the main unit restarted.
pub fn reload(host: &Host) -> Result<()> {
    run(host, &["systemd-sysusers"])?;
    host.daemon_reload()?;
    host.restart_unit(UNIT)
}

/// Whether the main unit is active.
pub fn running(host: &Host) -> Result<bool> {
    unit_running(host, UNIT)
}

/// What `incus --version` prints.
pub fn incus_version(host: &Host) -> Result<String> {
    version::command_version(host, &["incus", "--version"])
}

/// `<incus --version> [<image version>]`, as upstream shows it.
pub fn friendly_version(host: &Host, image_version: &str) -> Result<String> {
    Ok(version::with_image_version(
        &incus_version(host)?,
        image_version,
    ))
}

/// May the installed variant `from` give way to `to`? Stable to LTS only while Incus is
/// exactly [`LTS_VERSION`]; LTS to stable always. The errors are upstream's (400).
pub fn can_replace(host: &Host, from: &str, to: &str) -> Result<()> {
    if from == to {
        return Err(Error::bad_request(format!(
            "can't replace application '{from}' with itself"
        )));
    }
    match from {
        NAME => {
            if to != LTS {
                return Err(Error::bad_request(format!(
                    "unable to replace application '{NAME}' with '{to}': unsupported application"
                )));
            }
            let current = incus_version(host)?;
            if current != LTS_VERSION {
                return Err(Error::bad_request(format!(
                    "unable to replace application '{NAME}' with '{LTS}': current Incus version ({current}) is too new to rollback to older LTS branch"
                )));
            }
            Ok(())
        }
        LTS if to == NAME => Ok(()),
        LTS => Err(Error::bad_request(format!(
            "can't replace application '{LTS}' with a non-Incus application"
        ))),
        other => Err(Error::bad_request(format!(
            "unable to replace application '{other}' with '{to}': unsupported application"
        ))),
    }
}

/// Wipe: the logs volume lazily unmounted (where [`LOGS_LINK`] points), then Incus' data,
/// its LXCFS data and its logs removed.
pub fn wipe(host: &Host) -> Result<()> {
    if let Some(target) = host.read_link(LOGS_LINK)? {
        lazy_unmount(host, &target)?;
    }
    for dir in [DATA_DIR, LXCFS_DIR, LOG_DIR] {
        host.remove(dir)?;
    }
    Ok(())
}

/// The server certificate and key (PEM): the cluster's when there is one, else Incus' own.
pub fn server_certificate(host: &Host) -> Result<Option<(String, String)>> {
    if let Some(pair) = pair(host, CLUSTER_CERT, CLUSTER_KEY)? {
        return Ok(Some(pair));
    }
    pair(host, SERVER_CERT, SERVER_KEY)
}

/// The client certificate and key (PEM): Incus' own.
pub fn client_certificate(host: &Host) -> Result<Option<(String, String)>> {
    pair(host, SERVER_CERT, SERVER_KEY)
}

fn pair(host: &Host, cert: &str, key: &str) -> Result<Option<(String, String)>> {
    match (host.read_to_string(cert)?, host.read_to_string(key)?) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        _ => Ok(None),
    }
}
