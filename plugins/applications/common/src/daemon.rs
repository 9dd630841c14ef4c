//! The lifecycle of an application that is one daemon with one unit, its data on its own
//! ZFS dataset and its API on a unix socket: Migration Manager and Operations Center
//! ([`Daemon`]), and the `Application` both plugins are ([`DaemonApp`]).

use std::marker::PhantomData;
use std::time::Duration;

use plugin_api::application::AppContext;
use plugin_api::sdk::{Backup, WipeFn};
use plugin_api::{Application, Host, Result, Undo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// The security settings' list of trusted client certificate fingerprints (Migration
/// Manager's and Operations Center's API).
pub const FINGERPRINTS: &str = "trusted_tls_client_cert_fingerprints";

impl Daemon {
    /// Trusts a client certificate (PEM): its fingerprint added to the security settings
    /// (`GET` then `PUT /1.0/system/security`) unless it is there already.
    pub fn add_trusted_certificate(&self, host: &Host, pem: &str) -> Result<()> {
        let fp = crate::certificate_fingerprint(pem)?;
        let api = self.api();
        let mut security = api.get(host, "/1.0/system/security")?;
        if !security.is_object() {
            security = Value::Object(Map::new());
        }
        let list = security
            .as_object_mut()
            .expect("an object")
            .entry(FINGERPRINTS)
            .or_insert_with(|| Value::Array(vec![]));
        if !list.is_array() {
            *list = Value::Array(vec![]);
        }
        let list = list.as_array_mut().expect("an array");
        if list.iter().any(|v| v.as_str() == Some(fp.as_str())) {
            return Ok(());
        }
        list.push(Value::String(fp));
        api.put(host, "/1.0/system/security", &security).map(drop)
    }

    /// The address it listens on: `key` of `GET /1.0/system/network`.
    pub fn listen_address(&self, host: &Host, key: &str) -> Result<String> {
        let network = self.api().get(host, "/1.0/system/network")?;
        Ok(network
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Its certificate and key (PEM), `server.crt` and `server.key` in its data directory:
    /// both its server and its client certificate.
    pub fn certificate(&self, host: &Host) -> Result<Option<(String, String)>> {
        let dir = self.data_dir();
        match (
            host.read_to_string(&format!("{dir}server.crt"))?,
            host.read_to_string(&format!("{dir}server.key"))?,
        ) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            _ => Ok(None),
        }
    }
}

/// A seeded settings object with `defaults` filled in where a key is missing or empty.
pub fn with_defaults(seeded: Option<&Map<String, Value>>, defaults: &[(&str, String)]) -> Value {
    let mut out = seeded.cloned().unwrap_or_default();
    for (key, value) in defaults {
        let empty = match out.get(*key) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            _ => false,
        };
        if empty {
            out.insert(key.to_string(), Value::String(value.clone()));
        }
    }
    Value::Object(out)
}

/// The security settings to apply at initialization: the seeded ones with the
/// fingerprints of `certificates` (PEM) added to [`FINGERPRINTS`] (no repeats); `None`
/// when neither settings nor certificates were seeded. A certificate that does not parse
/// is an error naming its place in the seed.
pub fn security_with_certificates(
    seeded: Option<&Map<String, Value>>,
    certificates: &[String],
) -> Result<Option<Value>> {
    if seeded.is_none() && certificates.is_empty() {
        return Ok(None);
    }
    let mut out = seeded.cloned().unwrap_or_default();
    let mut list: Vec<Value> = out
        .get(FINGERPRINTS)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, pem) in certificates.iter().enumerate() {
        let fp = crate::certificate_fingerprint(pem).map_err(|e| {
            plugin_api::Error::bad_request(format!("{} (seed index {i})", e.message))
        })?;
        if !list.iter().any(|v| v.as_str() == Some(fp.as_str())) {
            list.push(Value::String(fp));
        }
    }
    out.insert(FINGERPRINTS.into(), Value::Array(list));
    Ok(Some(Value::Object(out)))
}

/// What distinguishes one primary one-daemon application from another (Migration Manager,
/// Operations Center): [`DaemonApp`] is the `Application` over it.
pub trait PrimaryDaemon: Send + Sync + 'static {
    /// The daemon.
    const DAEMON: Daemon;
    /// The manifest's `paths`.
    const PATHS: &'static [&'static str];
    /// The declared backup.
    const BACKUP: Backup;
    /// First initialization through the daemon's API; `ctx.seed` is the application's seed.
    fn initialize(host: &Host, ctx: &AppContext) -> Result<()>;
}

/// The config of an application without settings: `{}` (upstream's `ApplicationConfig`;
/// a PUT is accepted and changes nothing, an unknown field is refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// A primary application that is one daemon ([`Daemon`]'s lifecycle): primary, its update
/// check late (it may serve its own update server), its data backed up as `D::BACKUP`,
/// wiped and created again on a factory reset.
pub struct DaemonApp<D> {
    host: Host,
    _d: PhantomData<fn() -> D>,
}

impl<D: PrimaryDaemon> DaemonApp<D> {
    fn wipe(&self, _ctx: &AppContext, _config: &NoConfig) -> Result<()> {
        D::DAEMON.wipe(&self.host)
    }
}

impl<D: PrimaryDaemon> Application for DaemonApp<D> {
    const NAME: &'static str = D::DAEMON.name;
    const PRIMARY: bool = true;
    const LATE_UPDATE_CHECK: bool = true;
    const PATHS: &'static [&'static str] = D::PATHS;
    const BACKUP: Option<Backup> = Some(D::BACKUP);
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    type Config = NoConfig;

    fn new(host: Host) -> Result<Self> {
        Ok(DaemonApp {
            host,
            _d: PhantomData,
        })
    }

    fn friendly_version(&self, ctx: &AppContext, _config: &NoConfig) -> Result<String> {
        Ok(version::friendly_or_empty(&self.host, ctx, || {
            D::DAEMON.friendly_version(&self.host)
        }))
    }

    fn start(&self, _undo: &mut Undo, ctx: &AppContext, _config: &NoConfig) -> Result<()> {
        D::DAEMON.start(&self.host, ctx.initialized)
    }

    fn stop(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &NoConfig) -> Result<()> {
        D::DAEMON.stop(&self.host)
    }

    fn initialize(&self, ctx: &AppContext, _config: &NoConfig) -> Result<()> {
        D::initialize(&self.host, ctx)
    }

    fn reload(&self, _ctx: &AppContext, _config: &NoConfig) -> Result<()> {
        D::DAEMON.reload(&self.host)
    }

    fn restart(&self, ctx: &AppContext, _config: &NoConfig) -> Result<()> {
        D::DAEMON.restart(&self.host, ctx.initialized)
    }

    fn running(&self, _ctx: &AppContext, _config: &NoConfig) -> Result<bool> {
        D::DAEMON.running(&self.host)
    }
}
