//! The iSCSI initiator service (open-iscsi): `/1.0/services/iscsi`.
//!
//! When enabled, the host gets a persistent initiator name, `iscsid` runs and every
//! configured target is discovered and logged into. Disabling logs out and stops `iscsid`;
//! the initiator name is kept so the host keeps its identity towards the targets.

use std::net::IpAddr;
use std::time::Duration;

use plugin_api::sdk::retry;
use plugin_api::{validate, Error, Host, Result, Service, Undo};
use serde::{Deserialize, Serialize};

const ISCSID: &str = "iscsid.service";
const CONFIG_DIR: &str = "/etc/iscsi";
const INITIATOR_NAME_FILE: &str = "/etc/iscsi/initiatorname.iscsi";
const ISCSID_CONF: &str = "/etc/iscsi/iscsid.conf";
const STATE_DIR: &str = "/var/lib/iscsi";
const IQN_PREFIX: &str = "iqn.2004-10.org.linuxcontainers:01";

const SHORT: Duration = Duration::from_secs(10);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
const DISCOVERY_TRIES: usize = 10;
const DISCOVERY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub enabled: bool,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Target {
    /// The target's name (IQN, EUI or NAA).
    pub target: String,
    pub address: String,
    /// 0 leaves the port to iscsiadm (3260).
    pub port: i64,
}

impl Target {
    /// `address[:port]`, with IPv6 addresses in brackets.
    pub fn portal(&self) -> String {
        let mut portal = match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]", self.address),
            _ => self.address.clone(),
        };
        if self.port > 0 {
            portal.push_str(&format!(":{}", self.port));
        }
        portal
    }
}

#[derive(Debug, Serialize)]
pub struct State {
    pub initiator_name: String,
}

#[derive(Clone)]
pub struct Iscsi {
    host: Host,
}

fn check_target(t: &Target) -> std::result::Result<(), String> {
    if t.target.is_empty() {
        return Err("target name is empty".into());
    }
    if !validate::iscsi_name(&t.target) {
        return Err(format!(
            "invalid target name '{}' (expected an iSCSI name: iqn.<yyyy-mm>.<reversed \
             domain>[:<name>], eui.<16 hex digits> or naa.<16 or 32 hex digits>)",
            t.target
        ));
    }
    if t.address.is_empty() {
        return Err("address is empty".into());
    }
    if !validate::ip_or_host(&t.address) {
        return Err(format!("invalid address '{}'", t.address));
    }
    if !(0..=65535).contains(&t.port) {
        return Err(format!("invalid port {} (must be 0 to 65535)", t.port));
    }
    Ok(())
}

fn node_cmd<'a>(target: &'a str, portal: &'a str, action: &'a str) -> [&'a str; 8] {
    ["iscsiadm", "-m", "node", "-T", target, "-p", portal, action]
}

impl Iscsi {
    /// Discovery (retried: right after iscsid started it may fail), then login.
    fn log_in(&self, t: &Target) -> Result<()> {
        let portal = t.portal();
        let argv = [
            "iscsiadm",
            "-m",
            "discovery",
            "-t",
            "sendtargets",
            "-p",
            &portal,
        ];
        retry(DISCOVERY_TRIES, DISCOVERY_PAUSE, None, || {
            self.host.run_ok(&argv, SHORT)
        })?;
        let login = node_cmd(&t.target, &portal, "--login");
        self.host.run_ok(&login, LOGIN_TIMEOUT).map(drop)
    }

    fn log_out(&self, t: &Target) -> Result<()> {
        let portal = t.portal();
        let argv = node_cmd(&t.target, &portal, "--logout");
        self.host.run_ok(&argv, LOGIN_TIMEOUT).map(drop)
    }

    /// Logs out of `targets`; failures are only warned about.
    fn log_out_all(&self, targets: &[Target]) {
        for t in targets {
            if let Err(e) = self.log_out(t) {
                self.host.warn(&format!(
                    "failed to log out of {} at {}: {e}",
                    t.target,
                    t.portal()
                ));
            }
        }
    }
}

impl Service for Iscsi {
    const NAME: &'static str = "iscsi";
    const START_WEIGHT: i32 = 20;
    const PATHS: &'static [&'static str] = &[CONFIG_DIR, STATE_DIR];

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Iscsi { host })
    }

    fn state(&self, config: &Config) -> Result<State> {
        let mut initiator_name = String::new();
        if config.enabled {
            if let Some(content) = self.host.read_to_string(INITIATOR_NAME_FILE)? {
                let content = content.trim();
                initiator_name = content
                    .strip_prefix("InitiatorName=")
                    .unwrap_or(content)
                    .trim()
                    .to_string();
            }
        }
        Ok(State { initiator_name })
    }

    fn validate(&self, config: &Config) -> Result<()> {
        validate::entries(&config.targets, "target", check_target, |t| {
            (t.target.as_str(), t.portal())
        })
        .map_err(Error::bad_request)
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// Upstream's common start: initiator name, iscsid, discovery and login of every
    /// target. An existing /etc/iscsi keeps its mode, as with upstream's MkdirAll.
    fn bring_up(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        let h = &self.host;
        undo.create_dir(CONFIG_DIR, 0o700)?;
        if !h.exists(INITIATOR_NAME_FILE)? {
            let name = h.run_ok(&["iscsi-iname", "-p", IQN_PREFIX], SHORT)?;
            let content = format!("InitiatorName={}\n", name.trim());
            undo.write_file(INITIATOR_NAME_FILE, content.as_bytes(), 0o600)?;
        }
        if !h.exists(ISCSID_CONF)? {
            undo.write_file(ISCSID_CONF, b"", 0o600)?;
        }
        undo.start_unit(ISCSID)?;
        for t in &config.targets {
            self.log_in(t)?;
            let (iscsi, t) = (self.clone(), t.clone());
            let what = format!("log out of {} at {}", t.target, t.portal());
            undo.on_rollback(&what, move |_| iscsi.log_out(&t));
        }
        Ok(())
    }

    /// Logs out of `config`'s targets and stops iscsid.
    fn take_down(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        // Logging in needs iscsid, which is stopped below: on rollback this runs once the
        // units are back, iscsid running again.
        let (iscsi, targets) = (self.clone(), config.targets.clone());
        undo.on_rollback_after_units("log back in to the previous targets", move |_| {
            targets.iter().try_for_each(|t| iscsi.log_in(t))
        });
        self.log_out_all(&config.targets);
        undo.stop_unit(ISCSID)
    }

    /// Boot start begins from a clean node database, as upstream does.
    fn start(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        if !config.enabled {
            return Ok(());
        }
        self.host.remove(STATE_DIR)?;
        self.bring_up(undo, config)
    }

    /// Shutdown logs out and stops iscsid, with nothing to put back.
    fn stop(&self, _undo: &mut Undo, config: &Config) -> Result<()> {
        if !config.enabled {
            return Ok(());
        }
        self.log_out_all(&config.targets);
        self.host.stop_unit(ISCSID)
    }
}

plugin_api::export_service!(Iscsi);
