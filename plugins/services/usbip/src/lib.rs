//! The USB/IP client: `/1.0/services/usbip`.
//!
//! When enabled, the `vhci-hcd` module is loaded and every configured remote USB device
//! is attached with `usbip attach`; a device that cannot be attached is only warned about
//! (as upstream). Upstream never detaches anything; here an update also detaches the
//! devices it attached for targets that were removed (or for all targets when disabling),
//! found by parsing `usbip port`, and skips targets that are attached already. Devices
//! attached by hand are never touched: only a configured address and bus ID match.
//! A config is stored only once the module loaded (upstream stores it first).

use std::time::Duration;

use plugin_api::sdk::nullable;
use plugin_api::{validate, Error, Host, Result, Service, Undo};
use serde::{Deserialize, Serialize};

const MODULE: &str = "vhci-hcd";
const TIMEOUT: Duration = Duration::from_secs(30);
const PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// `SYSFS_BUS_ID_SIZE` minus the terminating NUL.
const MAX_BUS_ID_LEN: usize = 31;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub enabled: bool,
    /// Upstream answers `[]` for a never-set list (its Get initialises it) and takes
    /// `null` as empty.
    #[serde(deserialize_with = "nullable")]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Target {
    /// The USB/IP server (IP address or host name).
    pub address: String,
    /// The device's bus ID on the server, e.g. `1-1.2`.
    pub bus_id: String,
}

#[derive(Serialize)]
pub struct State {}

/// A device attached to a local vhci port, from `usbip port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The vhci port number (`usbip detach -p`).
    pub port: u32,
    /// `Port in Use` (an attached, working device).
    pub in_use: bool,
    /// The server as given to `usbip attach -r`.
    pub address: String,
    pub bus_id: String,
}

impl Attachment {
    fn is(&self, t: &Target) -> bool {
        self.address == t.address && self.bus_id == t.bus_id
    }
}

/// Parses `usbip port`:
///
/// ```text
/// Port 00: <Port in Use> at High Speed(480Mbps)
///        SanDisk Corp. : Cruzer Blade (0781:5567)
///        3-1 -> usbip://192.0.2.10:3240/1-1.2
///            -> remote bus/dev 001/004
/// ```
///
/// Ports whose record cannot be read (`-> unknown host, ...`) are left out.
pub fn parse_ports(output: &str) -> Vec<Attachment> {
    let mut found = vec![];
    let mut current: Option<(u32, bool)> = None;
    for line in output.lines() {
        let line = line.trim();
        if let Some((port, status)) = line
            .strip_prefix("Port ")
            .and_then(|rest| rest.split_once(": <"))
        {
            current = port
                .parse()
                .ok()
                .map(|p| (p, status.starts_with("Port in Use>")));
        } else if let Some((_, url)) = line.split_once("-> usbip://") {
            let Some((port, in_use)) = current.take() else {
                continue;
            };
            let Some((server, bus_id)) = url.rsplit_once('/') else {
                continue;
            };
            let Some((address, _tcp_port)) = server.rsplit_once(':') else {
                continue;
            };
            found.push(Attachment {
                port,
                in_use,
                address: address.to_string(),
                bus_id: bus_id.to_string(),
            });
        }
    }
    found
}

/// `<bus>-<port>[.<port>...]`, e.g. `1-1`, `1-1.2`, `2-3.4.1`.
fn valid_bus_id(id: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    id.len() <= MAX_BUS_ID_LEN
        && id
            .split_once('-')
            .is_some_and(|(bus, ports)| number(bus) && ports.split('.').all(number))
}

fn check_target(t: &Target) -> std::result::Result<(), String> {
    if t.address.is_empty() {
        return Err("address is empty".into());
    }
    if !validate::ip_or_host(&t.address) {
        return Err(format!("invalid address '{}'", t.address));
    }
    if t.bus_id.is_empty() {
        return Err("bus_id is empty".into());
    }
    if !valid_bus_id(&t.bus_id) {
        return Err(format!(
            "invalid bus_id '{}' (expected <bus>-<port>[.<port>...], like 1-1 or 1-1.2)",
            t.bus_id
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Usbip {
    host: Host,
}

impl Usbip {
    /// The devices attached now; on failure (e.g. vhci-hcd not loaded) none.
    fn attached(&self) -> Vec<Attachment> {
        match self.host.run_ok(&["usbip", "port"], PORT_TIMEOUT) {
            Ok(out) => parse_ports(&out),
            Err(e) => {
                self.host
                    .debug(&format!("cannot list attached USB/IP devices: {e}"));
                vec![]
            }
        }
    }

    /// Attaches every target not attached yet (failures warn, as upstream).
    fn attach(&self, targets: &[Target], attached: &[Attachment]) {
        for t in targets {
            if attached.iter().any(|a| a.in_use && a.is(t)) {
                continue;
            }
            let argv = ["usbip", "attach", "-r", &t.address, "-b", &t.bus_id];
            if let Err(e) = self.host.run_ok(&argv, TIMEOUT) {
                self.host.warn(&format!(
                    "unable to attach USB/IP device {} from {}: {e}",
                    t.bus_id, t.address
                ));
            }
        }
    }

    /// Detaches the devices attached for `targets` (failures warn).
    fn detach(&self, targets: &[&Target], attached: &[Attachment]) {
        for a in attached.iter().filter(|a| targets.iter().any(|t| a.is(t))) {
            let port = a.port.to_string();
            if let Err(e) = self.host.run_ok(&["usbip", "detach", "-p", &port], TIMEOUT) {
                self.host.warn(&format!(
                    "unable to detach USB/IP device {} from {} (port {port}): {e}",
                    a.bus_id, a.address
                ));
            }
        }
    }

    fn load_module(&self) -> Result<()> {
        self.host.run_ok(&["modprobe", MODULE], TIMEOUT).map(drop)
    }

    /// Goes from `old`'s devices to `new`'s. Only fails when the module cannot be loaded,
    /// before anything changed.
    fn apply(&self, old: &Config, new: &Config) -> Result<()> {
        let wanted: &[Target] = if new.enabled { &new.targets } else { &[] };
        let before: &[Target] = if old.enabled { &old.targets } else { &[] };
        let removed: Vec<&Target> = before.iter().filter(|t| !wanted.contains(t)).collect();
        if new.enabled {
            self.load_module()?;
        }
        if removed.is_empty() && wanted.is_empty() {
            return Ok(());
        }
        let attached = self.attached();
        self.detach(&removed, &attached);
        self.attach(wanted, &attached);
        Ok(())
    }
}

impl Service for Usbip {
    const NAME: &'static str = "usbip";
    const START_WEIGHT: i32 = 100;

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Usbip { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {})
    }

    fn validate(&self, config: &Config) -> Result<()> {
        validate::entries(&config.targets, "target", check_target, |t| t)
            .map_err(Error::bad_request)
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// The module, then whatever is not attached yet. Shutdown leaves the devices.
    fn bring_up(&self, _undo: &mut Undo, config: &Config) -> Result<()> {
        self.load_module()?;
        if !config.targets.is_empty() {
            let attached = self.attached();
            self.attach(&config.targets, &attached);
        }
        Ok(())
    }

    /// Detaches what `old` had and `new` has not, attaches what is missing; a rollback (a
    /// failed save) goes back the same way.
    fn update(&self, undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        self.apply(old, new)?;
        let (usbip, old, new) = (self.clone(), old.clone(), new.clone());
        undo.on_rollback("put the previous USB/IP devices back", move |_| {
            usbip.apply(&new, &old)
        });
        Ok(())
    }
}

plugin_api::export_service!(Usbip);
