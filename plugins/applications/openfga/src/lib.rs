//! The `openfga` application: an OpenFGA server for the primary application's
//! authorization, with openfga-sync beside it; not primary, started after the primary.
//!
//! Its data lives on the ZFS dataset `local/openfga` at [`DATA_DIR`]. Its config is
//! upstream's `{"api_tokens": [..], "sync": {..}}`: the tokens become OpenFGA's preshared
//! keys in [`CONFIG_FILE`] (linked from [`CONFIG_LINK`], where OpenFGA looks), the `sync`
//! section openfga-sync's [`SYNC_FILE`], completed to reach this OpenFGA. OpenFGA serves
//! TLS with the primary application's server certificate, copied at each start.
//!
//! The plugin the daemon loads is [`OpenFga`].
//!
//! | hook | function |
//! |---|---|
//! | get | [`friendly_version`] (context's version); the config as saved |
//! | put | [`apply_config`] ([`validate`] first) |
//! | start / stop / restart | [`start`] (context's `initialized`, [`primary_certificate`]) / [`stop`] / [`restart`] |
//! | initialize | [`initialize`] (returns the config to save) |
//! | restored | [`restored`] (returns the tokens to save) and [`read_sync`] (the `sync` to save) |
//! | reload (after an update) | [`reload`] |
//! | running | [`running`] |
//! | wipe | [`wipe`] (then the config is cleared, as upstream's factory reset) |
//! | manifest `backup`, `paths` | [`backup_spec`], [`PATHS`] |

mod plugin;
pub mod yaml;

#[doc(hidden)]
pub use plugin::__incus_osd_plugin_root_module;
pub use plugin::OpenFga;

use plugin_api::application::BackupSpec;
use plugin_api::sdk::Backup;
use plugin_api::{Error, Host, Result, Undo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use incus_osd_application_common::{
    random_token, unit_running, unmount_strict, version, zfs, COMMAND_TIMEOUT,
};

/// The application's name, also its dataset's (`local/openfga`).
pub const NAME: &str = "openfga";
pub const UNIT: &str = "openfga.service";
/// Runs only when [`SYNC_FILE`] exists (its unit's condition).
pub const SYNC_UNIT: &str = "openfga-sync.service";
pub const UNITS: [&str; 2] = [UNIT, SYNC_UNIT];

pub const DATA_DIR: &str = "/var/lib/openfga/";
pub const CONFIG_FILE: &str = "/var/lib/openfga/config.yaml";
pub const SYNC_FILE: &str = "/var/lib/openfga/sync.yaml";
pub const SYNC_STATE_DIR: &str = "/var/lib/openfga/sync-state";
pub const CERT_FILE: &str = "/var/lib/openfga/server.crt";
pub const KEY_FILE: &str = "/var/lib/openfga/server.key";
pub const CONFIG_DIR: &str = "/etc/openfga";
pub const CONFIG_LINK: &str = "/etc/openfga/config.yaml";

/// OpenFGA's gRPC listener (it cannot be turned off: loopback only, a high port) and its
/// HTTP API.
pub const GRPC_ADDRESS: &str = "localhost:55123";
pub const HTTP_ADDRESS: &str = ":8444";
/// Where openfga-sync reaches OpenFGA.
pub const SYNC_OPENFGA_URL: &str = "https://127.0.0.1:8444";

/// Upstream's error text for a config without tokens.
pub const NO_TOKEN: &str = "at least one API token must be specified";

/// What the plugin writes or removes (its manifest's `paths`).
pub const PATHS: [&str; 2] = ["/var/lib/openfga", CONFIG_DIR];

/// The backup: the whole data directory; the units stopped around a restore.
pub const BACKUP_ROOT: &str = DATA_DIR;
pub const BACKUP_UNITS: [&str; 2] = UNITS;

/// The declared backup: the whole data directory, both units stopped around a restore.
pub const BACKUP: Backup = Backup::new(BACKUP_ROOT).units(&BACKUP_UNITS);

/// The manifest's backup spec.
pub fn backup_spec() -> BackupSpec {
    BACKUP.spec()
}

/// The certificate and key files (PEM) of the primary applications, in the order they are
/// looked for: Incus' cluster certificate, else its own, then Migration Manager's and
/// Operations Center's. Only the installed primary's exist once it ran (one primary at a
/// time). The host does not hand one application another's certificate yet: they are
/// read where the primaries keep them (a plugin reads anywhere under the root).
pub const PRIMARY_CERTIFICATES: [(&str, &str); 4] = [
    ("/var/lib/incus/cluster.crt", "/var/lib/incus/cluster.key"),
    ("/var/lib/incus/server.crt", "/var/lib/incus/server.key"),
    (
        "/var/lib/migration-manager/server.crt",
        "/var/lib/migration-manager/server.key",
    ),
    (
        "/var/lib/operations-center/server.crt",
        "/var/lib/operations-center/server.key",
    ),
];

/// The primary application's server certificate chain and key (PEM): the first pair of
/// [`PRIMARY_CERTIFICATES`] whose two files exist.
pub fn primary_certificate(host: &Host) -> Result<Option<(String, String)>> {
    for (cert, key) in PRIMARY_CERTIFICATES {
        if let (Some(c), Some(k)) = (host.read_to_string(cert)?, host.read_to_string(key)?) {
            return Ok(Some((c, k)));
        }
    }
    Ok(None)
}

/// The application's config (upstream's field names). `sync` is openfga-sync's own
/// configuration (`daemon`, `sources`, `openfga`), kept in [`SYNC_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "plugin_api::sdk::nullable")]
    pub api_tokens: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<Map<String, Value>>,
}

/// Checks a config as upstream does (500, its text).
pub fn validate(config: &Config) -> Result<()> {
    if config.api_tokens.is_empty() {
        return Err(Error::internal(NO_TOKEN));
    }
    if let Some(sync) = &config.sync {
        sync_file(sync, &config.api_tokens[0])?;
    }
    Ok(())
}

/// The text of [`CONFIG_FILE`]: preshared-key authentication with `tokens`, gRPC and HTTP
/// over TLS with the copied certificate.
pub fn config_file(tokens: &[String]) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut out = String::from("authn:\n  method: preshared\n  preshared:\n    keys:\n");
    for t in tokens {
        out.push_str(&format!("      - {}\n", q(t)));
    }
    for (section, addr) in [("grpc", GRPC_ADDRESS), ("http", HTTP_ADDRESS)] {
        out.push_str(&format!(
            "{section}:\n  addr: {}\n  tls:\n    enabled: true\n    cert: {}\n    key: {}\n",
            q(addr),
            q(CERT_FILE),
            q(KEY_FILE)
        ));
    }
    out
}

const SOURCE_TYPES: [&str; 3] = ["ldap", "rauthy", "zitadel"];

/// The text of [`SYNC_FILE`] (JSON, which YAML readers take as it is): the user's
/// openfga-sync configuration with what reaches this OpenFGA filled in (its URL, the
/// first token, no certificate check on loopback, the state under the data directory).
/// The sources are checked as openfga-sync would refuse them (upstream's texts).
pub fn sync_file(sync: &Map<String, Value>, token: &str) -> Result<String> {
    let bad = |m: String| Err(Error::internal(m));
    let sources = sync.get("sources").and_then(Value::as_array);
    let Some(sources) = sources.filter(|s| !s.is_empty()) else {
        return bad("at least one source must be configured".into());
    };
    let mut seen = vec![];
    for src in sources {
        let name = src.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            return bad("sources must have a name".into());
        }
        if seen.contains(&name) {
            return bad(format!("duplicate source name {name:?}"));
        }
        seen.push(name);
        let kind = src.get("type").and_then(Value::as_str).unwrap_or_default();
        if !SOURCE_TYPES.contains(&kind) {
            return bad(format!("source {name:?} has unsupported type {kind:?}"));
        }
        if src.get(kind).is_none_or(|v| !v.is_object()) {
            return bad(format!("source {name:?} is missing its {kind:?} section"));
        }
    }
    let mut out = sync.clone();
    let openfga = out.entry("openfga").or_insert_with(|| json!({}));
    if !openfga.is_object() {
        return bad("the \"openfga\" section of the sync configuration is not an object".into());
    }
    openfga["url"] = json!(SYNC_OPENFGA_URL);
    openfga["api_token"] = json!(token);
    openfga["insecure_skip_verify"] = json!(true);
    let daemon = out.entry("daemon").or_insert_with(|| json!({}));
    if !daemon.is_object() {
        return bad("the \"daemon\" section of the sync configuration is not an object".into());
    }
    daemon["state_dir"] = json!(SYNC_STATE_DIR);
    let mut text = serde_json::to_string_pretty(&Value::Object(out))
        .map_err(|e| Error::internal(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// Applies a config: [`CONFIG_FILE`] (0600) written, [`SYNC_FILE`] (0600) written or
/// removed, the link in place, then systemd told and both units restarted. Refused as
/// upstream when there is no token, with nothing changed.
pub fn apply_config(host: &Host, undo: &mut Undo, config: &Config) -> Result<()> {
    validate(config)?;
    undo.write_file(
        CONFIG_FILE,
        config_file(&config.api_tokens).as_bytes(),
        0o600,
    )?;
    match &config.sync {
        Some(sync) => {
            let text = sync_file(sync, &config.api_tokens[0])?;
            undo.write_file(SYNC_FILE, text.as_bytes(), 0o600)?;
        }
        None => undo.remove(SYNC_FILE)?,
    }
    ensure_config_link(host, undo)?;
    host.daemon_reload()?;
    for unit in UNITS {
        undo.restart_unit(unit)?;
    }
    Ok(())
}

/// Makes sure [`CONFIG_LINK`] exists (a symlink to [`CONFIG_FILE`]); whatever is there
/// already is left alone, as upstream.
pub fn ensure_config_link(host: &Host, undo: &mut Undo) -> Result<()> {
    undo.create_dir(CONFIG_DIR, 0o755)?;
    if host.exists(CONFIG_LINK)? {
        return Ok(());
    }
    host.symlink(CONFIG_FILE, CONFIG_LINK)?;
    undo.on_rollback("remove the OpenFGA config link", |h| h.remove(CONFIG_LINK));
    Ok(())
}

/// First initialization: the config directory, one random token, the config applied.
/// Returns the config to save.
pub fn initialize(host: &Host, undo: &mut Undo) -> Result<Config> {
    undo.create_dir(CONFIG_DIR, 0o755)?;
    let config = Config {
        api_tokens: vec![random_token()?],
        sync: None,
    };
    apply_config(host, undo, &config)?;
    Ok(config)
}

/// After a restore: the tokens read back from the restored [`CONFIG_FILE`] (to be saved
/// as the config's `api_tokens`), and the link made sure of.
pub fn restored(host: &Host, undo: &mut Undo) -> Result<Vec<String>> {
    let text = host
        .read_to_string(CONFIG_FILE)?
        .ok_or_else(|| Error::internal(format!("{CONFIG_FILE} is missing from the backup")))?;
    let tokens =
        yaml::preshared_keys(&text).map_err(|e| Error::internal(format!("{CONFIG_FILE}: {e}")))?;
    ensure_config_link(host, undo)?;
    Ok(tokens)
}

/// The `sync` section as [`SYNC_FILE`] holds it (what GET shows), `None` without one. A
/// file that is not JSON (not written by this plugin) is logged and shown as none.
pub fn read_sync(host: &Host) -> Result<Option<Map<String, Value>>> {
    let Some(text) = host.read_to_string(SYNC_FILE)? else {
        return Ok(None);
    };
    match serde_json::from_str::<Map<String, Value>>(&text) {
        Ok(map) => Ok(Some(map)),
        Err(e) => {
            host.warn(&format!("{SYNC_FILE} cannot be read back: {e}"));
            Ok(None)
        }
    }
}

/// Start: the dataset created or mounted, the primary application's server certificate
/// (`tls`: certificate chain and key, PEM) copied for OpenFGA to serve, both units
/// started. Without an initialized primary application there is no certificate: refused.
pub fn start(
    host: &Host,
    undo: &mut Undo,
    initialized: bool,
    tls: Option<(&str, &str)>,
) -> Result<()> {
    zfs::configure_local_storage(host, NAME, initialized)?;
    let Some((cert, key)) = tls else {
        return Err(Error::internal(
            "no initialized primary application provides a server certificate",
        ));
    };
    undo.write_file(KEY_FILE, key.as_bytes(), 0o400)?;
    undo.write_file(CERT_FILE, cert.as_bytes(), 0o644)?;
    for unit in UNITS {
        undo.start_unit(unit)?;
    }
    Ok(())
}

/// Stop: openfga-sync, then OpenFGA.
pub fn stop(host: &Host) -> Result<()> {
    host.stop_unit(SYNC_UNIT)?;
    host.stop_unit(UNIT)
}

/// Restart: OpenFGA restarted.
pub fn restart(host: &Host) -> Result<()> {
    host.restart_unit(UNIT)
}

/// Reload after an update: systemd told, both units restarted.
pub fn reload(host: &Host) -> Result<()> {
    host.daemon_reload()?;
    for unit in UNITS {
        host.restart_unit(unit)?;
    }
    Ok(())
}

/// Whether OpenFGA runs.
pub fn running(host: &Host) -> Result<bool> {
    unit_running(host, UNIT)
}

/// `<version> [<image version>]`, the version read from what `openfga version` prints on
/// its standard error (``OpenFGA version `1.8.9` build from ...``).
pub fn friendly_version(host: &Host, image_version: &str) -> Result<String> {
    let out = host.run(&["openfga", "version"], COMMAND_TIMEOUT)?;
    if out.status != 0 {
        return Err(Error::internal(format!(
            "Failed to run: openfga version: exit status {} ({})",
            out.status,
            out.stderr.trim()
        )));
    }
    let parsed = out
        .stderr
        .split_once("OpenFGA version `")
        .and_then(|(_, rest)| rest.split_once("` build from"))
        .map(|(v, _)| v)
        .filter(|v| !v.is_empty());
    match parsed {
        Some(v) => Ok(version::with_image_version(v, image_version)),
        None => Err(Error::internal("unable to determine OpenFGA version")),
    }
}

/// Wipe: the link removed, the dataset unmounted and destroyed, the directory removed
/// (the next start creates the dataset again, as for a first start).
pub fn wipe(host: &Host) -> Result<()> {
    host.remove(CONFIG_LINK)?;
    unmount_strict(host, DATA_DIR)?;
    zfs::destroy_app_dataset(host, NAME)?;
    host.remove(DATA_DIR.trim_end_matches('/'))
}
