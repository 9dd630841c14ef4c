//! The `migration-manager` application: Migration Manager, a primary application, its data
//! on the ZFS dataset `local/migration-manager`, its API on [`DAEMON`]'s socket.
//!
//! The lifecycle (start, stop, restart, reload, running, friendly version, wipe) is the
//! shared one-daemon lifecycle ([`Daemon`]); initialization is its own ([`initialize`]).
//!
//! The plugin the daemon loads is [`Plugin`], the shared primary one-daemon application
//! ([`DaemonApp`]) over these.
//!
//! | hook | function |
//! |---|---|
//! | get (`friendly_version`) | [`DAEMON`]`.friendly_version` |
//! | put | nothing (the config is `{}`) |
//! | start / stop / restart | [`DAEMON`]`.start` / `.stop` / `.restart` (context's `initialized`) |
//! | initialize | [`initialize`] (the seed) |
//! | reload (after an update) | [`DAEMON`]`.reload` |
//! | running | [`DAEMON`]`.running` |
//! | wipe | [`DAEMON`]`.wipe` |
//! | manifest `backup`, `paths` | [`backup_spec`], [`PATHS`] |
//! | host: certificates, trust, listen address, fallback listener | [`DAEMON`]`.certificate`, `.add_trusted_certificate`, [`listen_address`], [`seeded_client_certificates`] |

use std::net::IpAddr;

use plugin_api::application::BackupSpec;
use plugin_api::sdk::Backup;
use plugin_api::{Host, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use incus_osd_application_common::address;
use incus_osd_application_common::daemon::{
    security_with_certificates, with_defaults, DaemonApp, PrimaryDaemon,
};
use incus_osd_application_common::Daemon;

/// Migration Manager.
pub const DAEMON: Daemon = Daemon {
    name: "migration-manager",
    display: "Migration Manager",
    unit: "migration-manager.service",
    socket: "/run/migration-manager/unix.socket",
    binary: "migration-managerd",
};

/// What the plugin writes or removes (its manifest's `paths`).
pub const PATHS: [&str; 1] = ["/var/lib/migration-manager"];

/// The backup: the data directory, its cached artifacts only in a complete one.
pub const BACKUP_ROOT: &str = "/var/lib/migration-manager/";
pub const BACKUP_EXCLUDED_UNLESS_COMPLETE: [&str; 1] = ["artifacts"];
pub const BACKUP_UNITS: [&str; 1] = ["migration-manager.service"];

/// The address Migration Manager listens on unless seeded otherwise.
pub const DEFAULT_ADDRESS: &str = "[::]:8443";

/// The declared backup (upstream's root, `complete`-only part and unit).
pub const BACKUP: Backup = Backup::new(BACKUP_ROOT)
    .excluded_unless_complete(&BACKUP_EXCLUDED_UNLESS_COMPLETE)
    .units(&BACKUP_UNITS);

/// The manifest's backup spec.
pub fn backup_spec() -> BackupSpec {
    BACKUP.spec()
}

/// The plugin the daemon loads: the shared primary one-daemon application over [`MigrationManager`].
pub type Plugin = DaemonApp<MigrationManager>;

/// What makes [`DaemonApp`] this application.
pub struct MigrationManager;

impl PrimaryDaemon for MigrationManager {
    const DAEMON: Daemon = DAEMON;
    const PATHS: &'static [&'static str] = &PATHS;
    const BACKUP: Backup = BACKUP;

    fn initialize(host: &Host, ctx: &plugin_api::application::AppContext) -> Result<()> {
        let seed: Option<Seed> = incus_osd_application_common::seed(ctx, DAEMON.name)?;
        initialize(host, seed.as_ref())
    }
}

plugin_api::export_application!(Plugin);

/// The `migration-manager` seed (upstream's field names; unknown fields refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Seed {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Client certificates (PEM) to trust: their fingerprints join the security settings,
    /// and the host trusts them on its fallback listener.
    pub trusted_client_certificates: Vec<String>,
    pub apply_defaults: bool,
    pub preseed: Preseed,
}

/// Settings applied through Migration Manager's API as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preseed {
    /// `POST /1.0/system/certificate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_certificate: Option<Value>,
    /// `PUT /1.0/system/network`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_network: Option<Map<String, Value>>,
    /// `PUT /1.0/system/security`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_security: Option<Map<String, Value>>,
}

/// The network settings applied at initialization: the seeded ones, `address` defaulting
/// to [`DEFAULT_ADDRESS`] and `worker_endpoint` to `https://<management address>:8443`
/// (left out when the machine has no address yet).
pub fn network_settings(seed: &Seed, management: Option<IpAddr>) -> Value {
    let mut defaults = vec![("address", DEFAULT_ADDRESS.to_string())];
    if let Some(ip) = management {
        defaults.push(("worker_endpoint", address::connection_url(ip)));
    }
    with_defaults(seed.preseed.system_network.as_ref(), &defaults)
}

/// First initialization through Migration Manager's API, once it answers: the seeded
/// certificate, the network settings ([`network_settings`]), and the security settings
/// with the seeded client certificates' fingerprints. `seed` `None`: none was given.
pub fn initialize(host: &Host, seed: Option<&Seed>) -> Result<()> {
    let default = Seed::default();
    let seed = seed.unwrap_or(&default);
    // A bad certificate in the seed is refused before anything is applied.
    let security = security_with_certificates(
        seed.preseed.system_security.as_ref(),
        &seed.trusted_client_certificates,
    )?;
    let api = DAEMON.api();
    api.wait_ready(host)?;
    if let Some(cert) = &seed.preseed.system_certificate {
        api.post(host, "/1.0/system/certificate", cert)?;
    }
    let management = address::management_address(host)?;
    api.put(
        host,
        "/1.0/system/network",
        &network_settings(seed, management),
    )?;
    if let Some(security) = security {
        api.put(host, "/1.0/system/security", &security)?;
    }
    Ok(())
}

/// The address Migration Manager listens on (`address` of its network settings).
pub fn listen_address(host: &Host) -> Result<String> {
    DAEMON.listen_address(host, "address")
}

/// The client certificates (PEM) the seed trusts: what the host adds to the fallback
/// listener's trusted certificates at first initialization.
pub fn seeded_client_certificates(seed: Option<&Seed>) -> Vec<String> {
    seed.map(|s| s.trusted_client_certificates.clone())
        .unwrap_or_default()
}
