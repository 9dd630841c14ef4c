//! The Ceph client service: `/1.0/services/ceph` (needs the `incus-ceph` application).
//!
//! It only provides client configuration: when enabled, every configured cluster gets
//! `/etc/ceph/<cluster>.conf` and one `/etc/ceph/<cluster>.client.<name>.keyring` per
//! keyring. Disabling removes `/etc/ceph`. The live state is `ceph status --format=json`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use plugin_api::abi::FileKind;
use plugin_api::sdk::{nullable, Undo};
use plugin_api::{validate, Error, Host, Result, Service};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const CEPH_DIR: &str = "/etc/ceph";
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "nullable")]
    pub enabled: bool,
    /// Upstream's GET turns a nil map into `{}`: always an object here.
    #[serde(deserialize_with = "nullable")]
    pub clusters: BTreeMap<String, Cluster>,
}

/// The optional fields are Go's nil-able slices and maps without `omitempty`: absent or
/// `null` reads as `None` and is written back as `null`, as upstream does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    #[serde(deserialize_with = "nullable")]
    pub fsid: String,
    pub monitors: Option<Vec<String>>,
    pub keyrings: Option<BTreeMap<String, Keyring>>,
    pub client_config: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Keyring {
    #[serde(deserialize_with = "nullable")]
    pub key: String,
}

/// The key is a secret: never shown.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring { key: <redacted> }")
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Upstream's subset of `ceph status --format=json`. Its `omitempty` fields are skipped
/// when zero; nested non-`omitempty` slices and maps are `null` when absent.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fsid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "is_zero")]
    pub election_epoch: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quorum: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quorum_names: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub quorum_age: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monmap: Option<Monmap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub osdmap: Option<Osdmap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgmap: Option<Pgmap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsmap: Option<Fsmap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mgrmap: Option<Mgrmap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicemap: Option<Servicemap>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub status: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, HealthCheck>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    pub severity: String,
    pub summary: HealthSummary,
    pub muted: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthSummary {
    pub message: String,
    pub count: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Monmap {
    pub epoch: i64,
    pub min_mon_release_name: String,
    pub num_mons: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Osdmap {
    pub epoch: i64,
    pub num_osds: i64,
    pub num_up_osds: i64,
    pub osd_up_since: i64,
    pub num_in_osds: i64,
    pub osd_in_since: i64,
    pub num_remapped_pgs: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pgmap {
    pub pgs_by_state: Option<Vec<PgsByState>>,
    pub num_pgs: i64,
    pub num_pools: i64,
    pub num_objects: i64,
    pub data_bytes: i64,
    pub bytes_used: i64,
    pub bytes_avail: i64,
    pub bytes_total: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PgsByState {
    pub state_name: String,
    pub count: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Fsmap {
    pub epoch: i64,
    pub btime: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Mgrmap {
    pub available: bool,
    pub num_standbys: i64,
    pub modules: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Servicemap {
    pub epoch: i64,
    pub modified: String,
    /// Daemon entries mix objects and strings: kept as they come.
    pub services: Option<BTreeMap<String, Value>>,
}

pub struct Ceph {
    host: Host,
}

// --- validation ------------------------------------------------------------------------

/// Cluster names become file names: letters, digits, `_` and `-`.
fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Ceph entity ids (`client.<name>`): letters, digits, `.`, `_` and `-`, not starting with
/// a dot.
fn valid_keyring_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A host name whose last label is not all digits: stricter than `validate::host_name`,
/// which takes a malformed IPv4 address such as `10.0.0.256` for a host name.
fn valid_host_name(name: &str) -> bool {
    let last = name
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or_default();
    validate::host_name(name) && !last.bytes().all(|b| b.is_ascii_digit())
}

/// A `mon_host` entry: `IPv4[:port]`, `[IPv6][:port]`, a bare IPv6 address, a host name
/// with an optional port, or Ceph's `v1:`/`v2:` address forms of an IP address (IPv6 in
/// brackets, an optional `/nonce`). Address vectors (`[v2:..,v1:..]`) are not accepted.
fn valid_monitor(m: &str) -> bool {
    let (prefixed, addr) = match m.strip_prefix("v1:").or_else(|| m.strip_prefix("v2:")) {
        Some(rest) => (true, rest),
        None => (false, m),
    };
    let addr = match addr.split_once('/') {
        Some((addr, nonce))
            if prefixed && !nonce.is_empty() && nonce.bytes().all(|b| b.is_ascii_digit()) =>
        {
            addr
        }
        Some(_) => return false,
        None => addr,
    };
    let Some((host, _port)) = validate::endpoint(addr) else {
        return false;
    };
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => true,
        Ok(IpAddr::V6(_)) => !prefixed || addr.starts_with('['),
        Err(_) => !prefixed && valid_host_name(host),
    }
}

/// A `[client]` option name: letters, digits, `_`, `-`, `.` and inner spaces.
fn valid_option_name(k: &str) -> bool {
    !k.is_empty()
        && k.trim() == k
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' '))
}

/// A value on one line, without what the config parser would read as a comment.
fn valid_option_value(v: &str) -> bool {
    !v.chars().any(|c| c.is_control() || c == '#' || c == ';')
}

fn check_cluster(c: &Cluster) -> std::result::Result<(), String> {
    if !validate::uuid(&c.fsid) {
        return Err(format!("invalid fsid {:?} (expected a UUID)", c.fsid));
    }
    let monitors = c.monitors.as_deref().unwrap_or_default();
    if monitors.is_empty() {
        return Err("monitors: at least one monitor is required".into());
    }
    for (i, m) in monitors.iter().enumerate() {
        if !valid_monitor(m) {
            return Err(format!(
                "monitor {i}: invalid address {m:?} (expected IP[:port], [IPv6][:port], \
                 v1:/v2:<ip>:<port> or a host name[:port])"
            ));
        }
    }
    if let Some((i, j)) = validate::first_duplicate(monitors, |m| m) {
        return Err(format!("monitor {i}: duplicate of monitor {j}"));
    }
    for (name, keyring) in c.keyrings.iter().flatten() {
        if !valid_keyring_name(name) {
            return Err(format!(
                "invalid keyring name {name:?} (allowed: letters, digits, '.', '_' and '-')"
            ));
        }
        // Never echo the key itself.
        if keyring.key.is_empty() {
            return Err(format!("keyring {name:?}: key is empty"));
        }
        if !validate::base64(&keyring.key) {
            return Err(format!("keyring {name:?}: key is not valid base64"));
        }
    }
    for (k, v) in c.client_config.iter().flatten() {
        if !valid_option_name(k) {
            return Err(format!("client_config: invalid option name {k:?}"));
        }
        if !valid_option_value(v) {
            return Err(format!(
                "client_config {k:?}: the value must be one line without '#' or ';'"
            ));
        }
    }
    Ok(())
}

// --- files -----------------------------------------------------------------------------

fn conf_file(cluster: &str) -> String {
    format!("{CEPH_DIR}/{cluster}.conf")
}

fn keyring_file(cluster: &str, name: &str) -> String {
    format!("{CEPH_DIR}/{cluster}.client.{name}.keyring")
}

/// `[global]` with the fsid and monitors, then the `[client]` options (sorted by name).
fn conf_content(c: &Cluster) -> String {
    let monitors = c.monitors.as_deref().unwrap_or_default().join(",");
    let mut out = format!("[global]\nfsid = {}\nmon_host = {monitors}\n", c.fsid);
    if let Some(options) = c.client_config.as_ref().filter(|o| !o.is_empty()) {
        out.push_str("\n[client]\n");
        for (k, v) in options {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

fn keyring_content(name: &str, keyring: &Keyring) -> String {
    format!("[client.{name}]\nkey = {}\n", keyring.key)
}

/// `Undo::write_file` journals a path that is not a regular file as absent, so a write
/// failing on a directory in the way would have the rollback delete that directory. Such a
/// path goes to the host unjournaled: the write fails with the host's own error and the
/// directory is left alone.
fn write(h: &Host, undo: &mut Undo, path: &str, data: &[u8], mode: u32) -> Result<()> {
    if h.stat(path)?.is_some_and(|st| st.kind == FileKind::Dir) {
        return h.write_file(path, data, mode);
    }
    undo.write_file(path, data, mode)
}

impl Service for Ceph {
    const NAME: &'static str = "ceph";
    const START_WEIGHT: i32 = 10;
    const PATHS: &'static [&'static str] = &[CEPH_DIR];
    const REQUIRES_APPLICATION: Option<&'static str> = Some("incus-ceph");

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Ceph { host })
    }

    /// `ceph status` hangs while the cluster is unreachable: 5 s at most. A missing tool,
    /// a failure or unreadable output all give the empty state (upstream fails the GET on
    /// unreadable output).
    fn state(&self, config: &Config) -> Result<State> {
        if !config.enabled {
            return Ok(State::default());
        }
        let argv = ["ceph", "status", "--format=json"];
        let stdout = match self.host.run_ok(&argv, STATUS_TIMEOUT) {
            Ok(out) => out,
            Err(e) => {
                self.host.debug(&format!("no Ceph status: {e}"));
                return Ok(State::default());
            }
        };
        Ok(serde_json::from_str(&stdout).unwrap_or_else(|e| {
            self.host
                .warn(&format!("cannot read the output of `ceph status`: {e}"));
            State::default()
        }))
    }

    fn validate(&self, config: &Config) -> Result<()> {
        for (name, cluster) in &config.clusters {
            if !valid_cluster_name(name) {
                return Err(Error::bad_request(format!(
                    "invalid cluster name {name:?} (allowed: letters, digits, '_' and '-')"
                )));
            }
            check_cluster(cluster)
                .map_err(|e| Error::bad_request(format!("cluster {name:?}: {e}")))?;
        }
        Ok(())
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// Upstream's Start: the config directory, then each cluster's files.
    fn bring_up(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        let h = &self.host;
        undo.create_dir(CEPH_DIR, 0o755)?;
        for (name, cluster) in &config.clusters {
            let conf = conf_content(cluster);
            write(h, undo, &conf_file(name), conf.as_bytes(), 0o644)?;
            for (kname, keyring) in cluster.keyrings.iter().flatten() {
                let (path, content) = (keyring_file(name, kname), keyring_content(kname, keyring));
                write(h, undo, &path, content.as_bytes(), 0o600)?;
            }
        }
        Ok(())
    }

    /// `/etc/ceph` goes, so a new config is written from scratch. A rollback puts the
    /// previous tree back as it was (foreign files and modes included).
    fn take_down(&self, undo: &mut Undo, _config: &Config) -> Result<()> {
        undo.remove(CEPH_DIR)
    }
}

plugin_api::export_service!(Ceph);
