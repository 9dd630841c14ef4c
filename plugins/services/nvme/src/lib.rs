//! The NVMe over Fabrics initiator service (nvme-cli): `/1.0/services/nvme`.
//!
//! When enabled, the NVMe kernel modules are loaded, the host gets a persistent host NQN
//! and host ID, every target is either connected to directly (when its subsystem NQN is
//! given) or discovered and listed in `/etc/nvme/discovery.conf`, and `nvme connect-all`
//! connects whatever discovery found. The state lists the NVMe subsystems of the machine
//! (from sysfs, always) and the host's identity (when enabled).

use std::time::{Duration, Instant};

use plugin_api::sdk::{nullable, retry, ResetFn};
use plugin_api::{validate, Error, Host, Result, Service, Undo};
use serde::{Deserialize, Serialize};

const NVME_DIR: &str = "/etc/nvme";
const HOSTNQN: &str = "/etc/nvme/hostnqn";
const HOSTID: &str = "/etc/nvme/hostid";
const DISCOVERY_CONF: &str = "/etc/nvme/discovery.conf";
const SUBSYSTEMS_DIR: &str = "/sys/class/nvme-subsystem";
const FC_HOSTS_DIR: &str = "/sys/class/fc_host";
/// A fresh random UUID on every read.
const RANDOM_UUID: &str = "/proc/sys/kernel/random/uuid";

const SHORT: Duration = Duration::from_secs(10);
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream's budget for contacting every target, and again for `connect-all`.
const BUDGET: Duration = Duration::from_secs(30);
const TRIES: usize = 10;
const PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub enabled: bool,
    /// Upstream GETs `[]` for an unset list; a Go client may still send `null`.
    #[serde(deserialize_with = "nullable")]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Target {
    /// `tcp` or `fc`.
    pub transport: String,
    /// An IP address or host name (tcp), or `nn-0x<WWNN>:pn-0x<WWPN>` (fc).
    pub address: String,
    /// fc only: the local port to connect from; every local port when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host_address: String,
    /// tcp only.
    pub port: i64,
    /// The subsystem to connect to directly, instead of relying on discovery.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nqn: String,
}

#[derive(Debug, Default, Serialize)]
pub struct State {
    pub host_id: String,
    pub host_nqn: String,
    pub subsystems: Vec<Subsystem>,
}

#[derive(Debug, Default, Serialize)]
pub struct Subsystem {
    pub name: String,
    pub nqn: String,
    pub controllers: Vec<Controller>,
}

#[derive(Debug, Default, Serialize)]
pub struct Controller {
    pub name: String,
    pub transport: String,
    pub address: String,
    pub state: String,
    pub namespaces: Vec<String>,
}

/// `nvme<digits>`: a controller.
fn is_controller(name: &str) -> bool {
    name.strip_prefix("nvme")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Splits the leading digits off `s`; `None` if there are none.
fn digits(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// `nvme<C>c<P>n<N>` (a namespace path below a controller) gives `nvme<C>n<N>`.
fn namespace(name: &str) -> Option<String> {
    let (ctrl, rest) = digits(name.strip_prefix("nvme")?)?;
    let (_, rest) = digits(rest.strip_prefix('c')?)?;
    let (ns, rest) = digits(rest.strip_prefix('n')?)?;
    rest.is_empty().then(|| format!("nvme{ctrl}n{ns}"))
}

/// `nn-0x<16 hex digits>:pn-0x<16 hex digits>`.
fn valid_fc_address(a: &str) -> bool {
    let wwn = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    a.strip_prefix("nn-0x")
        .and_then(|r| r.split_once(":pn-0x"))
        .is_some_and(|(nn, pn)| wwn(nn) && wwn(pn))
}

fn check_target(t: &Target) -> std::result::Result<(), String> {
    if t.address.is_empty() {
        return Err("address is empty".into());
    }
    match t.transport.as_str() {
        "tcp" => {
            if !validate::ip_or_host(&t.address) {
                return Err(format!("invalid address '{}'", t.address));
            }
            if !t.host_address.is_empty() {
                return Err("host_address is only used with the fc transport".into());
            }
            if !(1..=65535).contains(&t.port) {
                return Err(format!(
                    "invalid port {} (must be 1 to 65535 with tcp)",
                    t.port
                ));
            }
        }
        "fc" => {
            if !valid_fc_address(&t.address) {
                return Err(format!(
                    "invalid address '{}' (expected nn-0x<WWNN>:pn-0x<WWPN>)",
                    t.address
                ));
            }
            if !t.host_address.is_empty() && !valid_fc_address(&t.host_address) {
                return Err(format!(
                    "invalid host_address '{}' (expected nn-0x<WWNN>:pn-0x<WWPN>)",
                    t.host_address
                ));
            }
            if !(0..=65535).contains(&t.port) {
                return Err(format!("invalid port {} (must be 0 to 65535)", t.port));
            }
        }
        "" => return Err("transport is empty (expected tcp or fc)".into()),
        other => return Err(format!("invalid transport '{other}' (expected tcp or fc)")),
    }
    if !t.nqn.is_empty() && !validate::nqn(&t.nqn) {
        return Err(format!(
            "invalid nqn '{}' (expected an nqn. name of at most {} characters)",
            t.nqn,
            validate::MAX_NAME_LEN
        ));
    }
    Ok(())
}

/// The modules to load, in upstream's order.
fn modules(config: &Config) -> Vec<&'static str> {
    let mut modules = vec!["nvme", "nvme-fabrics"];
    for t in &config.targets {
        let module = if t.transport == "fc" {
            "nvme-fc"
        } else {
            "nvme-tcp"
        };
        if !modules.contains(&module) {
            modules.push(module);
        }
    }
    modules
}

#[derive(Clone)]
pub struct Nvme {
    host: Host,
}

impl Nvme {
    fn read_value(&self, path: &str) -> String {
        match self.host.read_to_string(path) {
            Ok(Some(v)) => v.trim().to_string(),
            _ => String::new(),
        }
    }

    fn list(&self, path: &str) -> Option<Vec<String>> {
        self.host.list_dir(path).ok().flatten()
    }

    /// The walk of `/sys/class/nvme-subsystem`; an unreadable subsystem is skipped.
    fn subsystems(&self) -> Vec<Subsystem> {
        let mut subsystems = Vec::new();
        for name in self.list(SUBSYSTEMS_DIR).unwrap_or_default() {
            let path = format!("{SUBSYSTEMS_DIR}/{name}");
            let Some(entries) = self.list(&path) else {
                continue;
            };
            let mut subsystem = Subsystem {
                nqn: self.read_value(&format!("{path}/subsysnqn")),
                name,
                controllers: Vec::new(),
            };
            for ctrl in entries.into_iter().filter(|e| is_controller(e)) {
                let cpath = format!("{path}/{ctrl}");
                subsystem.controllers.push(Controller {
                    transport: self.read_value(&format!("{cpath}/transport")),
                    address: self.read_value(&format!("{cpath}/address")),
                    state: self.read_value(&format!("{cpath}/state")),
                    namespaces: self
                        .list(&cpath)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|e| namespace(e))
                        .collect(),
                    name: ctrl,
                });
            }
            subsystems.push(subsystem);
        }
        subsystems
    }

    /// `nn-<node_name>:pn-<port_name>` of every local Fibre Channel port.
    fn fc_host_addresses(&self) -> Result<Vec<String>> {
        let mut addresses = Vec::new();
        for name in self.host.list_dir(FC_HOSTS_DIR)?.unwrap_or_default() {
            let path = format!("{FC_HOSTS_DIR}/{name}");
            let (Some(nn), Some(pn)) = (
                self.host.read_to_string(&format!("{path}/node_name"))?,
                self.host.read_to_string(&format!("{path}/port_name"))?,
            ) else {
                continue;
            };
            addresses.push(format!("nn-{}:pn-{}", nn.trim(), pn.trim()));
        }
        Ok(addresses)
    }

    /// The nvme-cli arguments of each connection to `t`.
    fn connections(&self, t: &Target) -> Result<Vec<Vec<String>>> {
        if t.transport != "fc" {
            return Ok(vec![vec![
                format!("--transport={}", t.transport),
                format!("--traddr={}", t.address),
                format!("--trsvcid={}", t.port),
            ]]);
        }
        let hosts = if t.host_address.is_empty() {
            self.fc_host_addresses()?
        } else {
            vec![t.host_address.clone()]
        };
        if hosts.is_empty() {
            return Err(Error::internal(format!(
                "no local Fibre Channel port found for NVME target {:?}",
                t.address
            )));
        }
        Ok(hosts
            .into_iter()
            .map(|h| {
                vec![
                    "--transport=fc".to_string(),
                    format!("--traddr={}", t.address),
                    format!("--host-traddr={h}"),
                ]
            })
            .collect())
    }

    /// `nvme <verb> <args>` within what is left of the budget ending at `deadline`.
    fn nvme(&self, deadline: Instant, verb: &[&str], args: &[String]) -> Result<String> {
        let mut argv: Vec<&str> = vec!["nvme"];
        argv.extend(verb);
        argv.extend(args.iter().map(String::as_str));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::internal(format!(
                "Failed to run: {}: the {}s budget is used up",
                argv.join(" "),
                BUDGET.as_secs()
            )));
        }
        self.host.run_ok(&argv, left)
    }

    /// Up to [`TRIES`] attempts, [`PAUSE`] apart; the last error if none worked.
    fn retry(&self, deadline: Instant, verb: &[&str], args: &[String]) -> Result<()> {
        retry(TRIES, PAUSE, Some(deadline), || {
            self.nvme(deadline, verb, args)
        })
        .map(drop)
    }

    fn random_uuid(&self) -> Result<String> {
        let uuid = self.host.read_to_string(RANDOM_UUID)?.unwrap_or_default();
        let uuid = uuid.trim();
        if !validate::uuid(uuid) {
            return Err(Error::internal(format!(
                "cannot generate a host ID: {RANDOM_UUID} gave {uuid:?}"
            )));
        }
        Ok(uuid.to_string())
    }

    /// `POST /1.0/services/nvme/:reset`: reconnects the named subsystems, then
    /// `connect-all`.
    fn reset(&self, _undo: &mut Undo, config: &Config) -> Result<()> {
        if !config.enabled {
            return Err(Error::internal("NVME isn't currently enabled"));
        }
        let deadline = Instant::now() + BUDGET;
        // Errors are ignored: the subsystems may already be connected.
        for t in config.targets.iter().filter(|t| !t.nqn.is_empty()) {
            let nqn_arg = format!("--nqn={}", t.nqn);
            for c in self.connections(t)? {
                let _ = self.nvme(deadline, &["connect", &nqn_arg], &c);
            }
        }
        self.nvme(deadline, &["connect-all"], &[]).map(drop)
    }
}

fn disconnect_all(host: &Host) -> Result<()> {
    host.run_ok(&["nvme", "disconnect-all"], BUDGET).map(drop)
}

impl Service for Nvme {
    const NAME: &'static str = "nvme";
    const START_WEIGHT: i32 = 50;
    const PATHS: &'static [&'static str] = &[NVME_DIR];
    const RESET: Option<ResetFn<Self>> = Some(Self::reset);

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Nvme { host })
    }

    fn state(&self, config: &Config) -> Result<State> {
        let mut state = State {
            subsystems: self.subsystems(),
            ..State::default()
        };
        if config.enabled {
            state.host_id = self.read_value(HOSTID);
            state.host_nqn = self.read_value(HOSTNQN);
        }
        Ok(state)
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    fn validate(&self, config: &Config) -> Result<()> {
        validate::entries(&config.targets, "target", check_target, |t| t)
            .map_err(Error::bad_request)
    }

    /// Upstream's Start.
    fn bring_up(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        let h = &self.host;
        // Resolved before anything is touched (upstream finds a missing local FC port
        // half way through).
        let mut plan = Vec::new();
        for t in &config.targets {
            plan.push((t, self.connections(t)?));
        }
        for module in modules(config) {
            h.run_ok(&["modprobe", module], MODPROBE_TIMEOUT)?;
        }
        undo.create_dir(NVME_DIR, 0o700)?;
        if !h.exists(HOSTNQN)? {
            // Written only once generated (upstream leaves an empty file, kept forever,
            // when gen-hostnqn fails).
            let nqn = h.run_ok(&["nvme", "gen-hostnqn"], SHORT)?;
            if nqn.trim().is_empty() {
                return Err(Error::internal("nvme gen-hostnqn printed no host NQN"));
            }
            undo.write_file(HOSTNQN, nqn.as_bytes(), 0o600)?;
        }
        if !h.exists(HOSTID)? {
            let id = format!("{}\n", self.random_uuid()?);
            undo.write_file(HOSTID, id.as_bytes(), 0o600)?;
        }
        // Every discovered target's connection, one line each, whether it answered or not.
        let discovery: String = plan
            .iter()
            .filter(|(t, _)| t.nqn.is_empty())
            .flat_map(|(_, conns)| conns.iter().map(|c| format!("{}\n", c.join(" "))))
            .collect();
        undo.write_file(DISCOVERY_CONF, discovery.as_bytes(), 0o600)?;

        // Before trying: a failed attempt may still have connected some paths.
        undo.on_rollback("disconnect", disconnect_all);
        let deadline = Instant::now() + BUDGET;
        for (t, conns) in &plan {
            if t.nqn.is_empty() {
                // Not fatal: some controllers may be temporarily offline.
                for c in conns {
                    if let Err(e) = self.retry(deadline, &["discover"], c) {
                        h.warn(&format!("NVMe discovery at {} failed: {e}", t.address));
                    }
                }
                continue;
            }
            // Every connection is tried (several local FC ports give several paths).
            let nqn_arg = format!("--nqn={}", t.nqn);
            let (mut connected, mut last_error) = (false, None);
            for c in conns {
                match self.retry(deadline, &["connect", &nqn_arg], c) {
                    Ok(()) => connected = true,
                    Err(e) => last_error = Some(e),
                }
            }
            if !connected {
                let why = last_error.map(|e| format!(": {e}")).unwrap_or_default();
                return Err(Error::internal(format!(
                    "couldn't connect to NVME subsystem {:?} on {:?}{why}",
                    t.nqn, t.address
                )));
            }
        }
        self.nvme(Instant::now() + BUDGET, &["connect-all"], &[])
            .map(drop)
    }

    /// Upstream's Stop. Once disconnected, a rollback brings `config` back up, after
    /// its discovery file was put back.
    fn take_down(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        disconnect_all(&self.host)?;
        let (nvme, config) = (self.clone(), config.clone());
        undo.on_rollback("restore the previous NVMe configuration", move |_| {
            Undo::kept(&nvme.host, |undo| nvme.bring_up(undo, &config))
        });
        undo.remove(DISCOVERY_CONF)
    }
}

plugin_api::export_service!(Nvme);
