//! The LVM service (shared volume groups through lvmlockd and sanlock): `/1.0/services/lvm`.
//!
//! When enabled, LVM is configured for lvmlockd with this host's cluster-unique
//! `system_id` as its sanlock host id, `lvmlockd`, `sanlock` and `wdmd` run and the lock
//! manager is started for the shared volume groups. The state (physical volumes, volume
//! groups and LVM's own log of the report) is read from `pvs` and `vgs` on every GET, even
//! when the service is disabled.

use std::time::Duration;

use plugin_api::sdk::ResetFn;
use plugin_api::{Error, Host, Result, Service, Undo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const LVMLOCKD: &str = "lvmlockd.service";
const SANLOCK: &str = "sanlock.service";
const WDMD: &str = "wdmd.service";
/// In upstream's start order (one `systemctl start` of the three).
const UNITS: [&str; 3] = [LVMLOCKD, SANLOCK, WDMD];

const LVM_DIR: &str = "/etc/lvm";
const LVMLOCAL_CONF: &str = "/etc/lvm/lvmlocal.conf";
const SANLOCK_DEFAULTS: &str = "/etc/default/sanlock";
/// wdmd's shared memory file, left behind when wdmd is killed.
const WDMD_SHM: &str = "/dev/shm/wdmd";

/// Sanlock logs to syslog only (an empty log file is still created).
const SANLOCK_OPTS: &str = "sanlock_opts='-L -1'\n";

/// sanlock host ids (lvmlocal's `host_id`) go from 1 to 2000.
const MAX_HOST_ID: i64 = 2000;

const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub enabled: bool,
    /// The cluster-unique host id (lvmlockd/sanlock `host_id`).
    pub system_id: i64,
}

/// Every list is omitted when empty, as upstream's `omitempty` does.
#[derive(Debug, Default, Serialize)]
pub struct State {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pvs: Vec<Pv>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vgs: Vec<Vg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pv {
    pub pv_name: String,
    pub vg_name: String,
    pub pv_fmt: String,
    pub pv_attr: String,
    pub pv_size: String,
    pub pv_free: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Vg {
    pub vg_name: String,
    #[serde(deserialize_with = "number")]
    pub pv_count: i64,
    #[serde(deserialize_with = "number")]
    pub lv_count: i64,
    #[serde(deserialize_with = "number")]
    pub snap_count: i64,
    pub vg_attr: String,
    pub vg_size: String,
    pub vg_free: String,
}

/// A number, also as the string older lvm2 prints in plain `json` reports.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Int(i64),
        Text(String),
    }
    match N::deserialize(d)? {
        N::Int(n) => Ok(n),
        N::Text(t) => t.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// An entry of LVM's command log report.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LogEntry {
    #[serde(deserialize_with = "number")]
    pub log_seq_num: i64,
    pub log_type: String,
    pub log_context: String,
    pub log_object_type: String,
    pub log_object_name: String,
    pub log_object_id: String,
    pub log_object_group: String,
    pub log_object_group_id: String,
    pub log_message: String,
    #[serde(deserialize_with = "number")]
    pub log_errno: i64,
    #[serde(deserialize_with = "number")]
    pub log_ret_code: i64,
}

/// A list inside a report; anything unexpected gives an empty list.
fn list<T: DeserializeOwned>(v: &Value) -> Vec<T> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

pub fn lvmlocal_conf(system_id: i64) -> String {
    format!(
        "global {{\n\tuse_lvmlockd = 1\n}}\n\nlocal {{\n\thost_id = {system_id}\n}}\n\n\
         devices {{\n\tfilter = [ \"r|/dev/zd*|/dev/rbd*|/dev/nbd*|\" ]\n}}\n"
    )
}

pub struct Lvm {
    host: Host,
}

/// `vgchange --lock-start` or `--lock-stop`: the lock manager of the shared VGs.
fn lock(host: &Host, op: &str) -> Result<()> {
    host.run_ok(&["vgchange", op], LOCK_TIMEOUT).map(drop)
}

impl Lvm {
    /// Runs `<tool> --reportformat json_std` and returns its `report[0].<key>` list and its
    /// `log`. A tool that cannot run or prints no JSON gives nothing. A non-zero exit with
    /// a JSON report is still used: its log says what went wrong.
    fn report<T: DeserializeOwned>(&self, tool: &str, key: &str) -> (Vec<T>, Vec<LogEntry>) {
        let run = |format: &str| {
            self.host
                .run(&[tool, "--reportformat", format], REPORT_TIMEOUT)
        };
        let out = match run("json_std") {
            // lvm2 before 2.03.17 (Debian 12's) knows only `json`, with numbers as strings.
            Ok(out) if out.stderr.contains("Invalid argument for --reportformat") => run("json"),
            other => other,
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.host.debug(&format!("{tool} is not available: {e}"));
                return Default::default();
            }
        };
        let Ok(doc) = serde_json::from_str::<Value>(&out.stdout) else {
            self.host.debug(&format!(
                "{tool} gave no JSON report (exit status {}): {}",
                out.status,
                out.stderr.trim()
            ));
            return Default::default();
        };
        (list(&doc["report"][0][key]), list(&doc["log"]))
    }

    /// Upstream's configure(): lvmlocal.conf and sanlock's options. An existing /etc/lvm
    /// keeps its mode, as with upstream's MkdirAll.
    fn configure(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        undo.create_dir(LVM_DIR, 0o700)?;
        let conf = lvmlocal_conf(config.system_id);
        undo.write_file(LVMLOCAL_CONF, conf.as_bytes(), 0o600)?;
        undo.write_file(SANLOCK_DEFAULTS, SANLOCK_OPTS.as_bytes(), 0o644)
    }

    /// `POST /1.0/services/lvm/:reset`: kills the three units, clears wdmd's leftover
    /// and brings LVM up again.
    fn reset(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        if !config.enabled {
            return Err(Error::internal("LVM isn't currently enabled"));
        }
        for unit in UNITS {
            self.host.kill_unit(unit)?;
        }
        // Absent is fine; like upstream, a failure to remove it is not fatal either.
        if let Err(e) = self.host.remove(WDMD_SHM) {
            self.host.warn(&format!("failed to remove {WDMD_SHM}: {e}"));
        }
        self.bring_up(undo, config)
    }
}

impl Service for Lvm {
    const NAME: &'static str = "lvm";
    const START_WEIGHT: i32 = 70;
    const PATHS: &'static [&'static str] = &[LVM_DIR, SANLOCK_DEFAULTS, WDMD_SHM];
    const RESET: Option<ResetFn<Self>> = Some(Self::reset);

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Lvm { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        let (pvs, _) = self.report("pvs", "pv");
        let (vgs, log) = self.report("vgs", "vg");
        Ok(State { pvs, vgs, log })
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    fn validate(&self, config: &Config) -> Result<()> {
        let min = i64::from(config.enabled);
        if !(min..=MAX_HOST_ID).contains(&config.system_id) {
            return Err(Error::bad_request(format!(
                "invalid system_id {} (must be {min} to {MAX_HOST_ID}{}: it is this host's sanlock host_id)",
                config.system_id,
                if config.enabled { " when enabled" } else { "" }
            )));
        }
        Ok(())
    }

    /// Upstream's Start: configure, the three units, then the lock manager.
    fn bring_up(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        self.configure(undo, config)?;
        for unit in UNITS {
            undo.start_unit(unit)?;
        }
        // Before trying: a failed --lock-start may still have started some lockspaces.
        undo.on_rollback("stop the lock manager", |h| lock(h, "--lock-stop"));
        lock(&self.host, "--lock-start")
    }

    /// Upstream's Stop: the lock manager, then the three units.
    fn take_down(&self, undo: &mut Undo, _config: &Config) -> Result<()> {
        lock(&self.host, "--lock-stop")?;
        // Needs lvmlockd, which is stopped below: on rollback this runs once the units are
        // back.
        undo.on_rollback_after_units("start the lock manager", |h| lock(h, "--lock-start"));
        for unit in UNITS {
            undo.stop_unit(unit)?;
        }
        Ok(())
    }

    // Upstream rewrites the configuration files on every update, also when the service
    // ends up disabled; here a disabled service writes nothing, and a running one only
    // gets its files rewritten.
    fn reconfigure(&self, undo: &mut Undo, _old: &Config, new: &Config) -> Result<()> {
        self.configure(undo, new)
    }
}

plugin_api::export_service!(Lvm);
