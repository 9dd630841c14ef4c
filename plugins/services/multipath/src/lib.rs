//! The multipath service: `/1.0/services/multipath`.
//!
//! When enabled, the configured WWNs are the only ones multipath may claim
//! (`/etc/multipath/wwids`), `multipathd` runs and the maps are reloaded. Disabling empties
//! the list, reloads and stops `multipathd`. The state lists the local Fibre Channel ports
//! (always) and, when enabled, the multipath topology of each configured WWN.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plugin_api::sdk::{nullable, Undo};
use plugin_api::{validate, Error, Host, Result, Service};
use serde::{Deserialize, Serialize};

const MULTIPATHD: &str = "multipathd.service";
const MULTIPATHD_SOCKET: &str = "multipathd.socket";
const CONFIG_DIR: &str = "/etc/multipath";
const WWIDS: &str = "/etc/multipath/wwids";
const BY_ID: &str = "/dev/disk/by-id";
const FC_HOST: &str = "/sys/class/fc_host";

const MULTIPATH_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream lets the reload settle before stopping multipathd.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "nullable")]
    pub enabled: bool,
    /// Upstream's GET turns a nil list into `[]`: always a list here.
    #[serde(deserialize_with = "nullable")]
    pub wwns: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct State {
    pub controllers: Vec<Controller>,
    /// `null` while disabled (upstream's nil map), the configured WWNs found otherwise.
    pub devices: Option<BTreeMap<String, Device>>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Controller {
    pub fabric_name: String,
    pub node_name: String,
    pub port_name: String,
    pub port_state: String,
    pub port_type: String,
    pub speed: String,
    pub supported_speeds: String,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Device {
    pub vendor: String,
    pub size: String,
    pub path_groups: Vec<PathGroup>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct PathGroup {
    pub policy: String,
    pub priority: u64,
    pub status: String,
    pub paths: Vec<Path>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Path {
    pub id: String,
    pub status: String,
}

pub struct Multipath {
    host: Host,
}

fn by_id(wwn: &str) -> String {
    format!("{BY_ID}/wwn-{wwn}")
}

/// The form udev uses in `/dev/disk/by-id/wwn-<wwn>`: `0x` and 16 (NAA 5, as in upstream's
/// example) or 32 (NAA 6, most SAN LUNs) lowercase hexadecimal digits.
fn valid_wwn(wwn: &str) -> bool {
    wwn.strip_prefix("0x").is_some_and(|hex| {
        matches!(hex.len(), 16 | 32)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `policy='<p>' prio=<n> status=<s>` (upstream's regular expression, greedy groups).
fn parse_group_line(line: &str) -> Option<(String, u64, String)> {
    let rest = &line[line.find("policy='")? + "policy='".len()..];
    let (before_status, status) = rest.rsplit_once(" status=")?;
    let (policy, prio) = before_status.rsplit_once("' prio=")?;
    if policy.is_empty() || prio.is_empty() || status.is_empty() {
        return None;
    }
    // A prio that is not a number leaves the group empty, as upstream does.
    let prio = prio.parse::<u64>().ok()?;
    Some((policy.to_string(), prio, status.to_string()))
}

/// Parses `multipath -ll <device>` as upstream does: the header's vendor and product, the
/// size, then each path group and its paths (id and the path's last state word).
pub fn parse_multipath_ll(out: &str) -> Option<Device> {
    let lines: Vec<&str> = out.split('\n').collect();
    if lines.len() < 3 {
        return None;
    }
    // `<wwid> dm-N VENDOR,PRODUCT`, or `<alias> (<wwid>) dm-N VENDOR,PRODUCT` with
    // user-friendly names (upstream would keep `dm-N` in the vendor there).
    let header: Vec<&str> = lines[0].splitn(3, ' ').collect();
    let mut vendor = header.get(2).copied().unwrap_or_default();
    if header.get(1).is_some_and(|w| w.starts_with('(')) {
        vendor = vendor.split_once(' ').map_or("", |(_, v)| v);
    }
    let size = lines[1].split(' ').next().unwrap_or_default();
    let mut device = Device {
        vendor: vendor.to_string(),
        size: size.strip_prefix("size=").unwrap_or(size).to_string(),
        path_groups: vec![],
    };
    let mut group: Option<PathGroup> = None;
    for line in &lines[2..] {
        if line.contains("policy=") {
            device.path_groups.extend(group.take());
            let mut g = PathGroup::default();
            if let Some((policy, priority, status)) = parse_group_line(line) {
                (g.policy, g.priority, g.status) = (policy, priority, status);
            }
            group = Some(g);
            continue;
        }
        let Some(g) = &mut group else {
            continue;
        };
        let parts: Vec<&str> = line.split("- ").collect();
        if parts.len() != 2 {
            continue;
        }
        let fields: Vec<&str> = parts[1].split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        g.paths.push(Path {
            id: fields[0].to_string(),
            status: fields[fields.len() - 1].to_string(),
        });
    }
    device.path_groups.extend(group);
    Some(device)
}

impl Multipath {
    fn controllers(&self) -> Vec<Controller> {
        let h = &self.host;
        let Ok(Some(hosts)) = h.list_dir(FC_HOST) else {
            return vec![];
        };
        let read = |fc: &str, name: &str| {
            h.read_to_string(&format!("{FC_HOST}/{fc}/{name}"))
                .ok()
                .flatten()
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        hosts
            .iter()
            .map(|fc| Controller {
                fabric_name: read(fc, "fabric_name"),
                node_name: read(fc, "node_name"),
                port_name: read(fc, "port_name"),
                port_state: read(fc, "port_state"),
                port_type: read(fc, "port_type"),
                speed: read(fc, "speed"),
                supported_speeds: read(fc, "supported_speeds"),
            })
            .collect()
    }

    fn devices(&self, config: &Config) -> BTreeMap<String, Device> {
        let mut devices = BTreeMap::new();
        for wwn in &config.wwns {
            let argv = ["multipath", "-ll", &by_id(wwn)];
            match self.host.run_ok(&argv, MULTIPATH_TIMEOUT) {
                Ok(out) => {
                    if let Some(device) = parse_multipath_ll(&out) {
                        devices.insert(wwn.clone(), device);
                    }
                }
                Err(e) => self
                    .host
                    .error(&format!("couldn't get the multipath status of {wwn}: {e}")),
            }
        }
        devices
    }

    /// The device node a `/dev/disk/by-id` link points to, if it exists (as `readlink -e`
    /// would give it): `multipath -a` wants the node, not the link.
    fn device_of(&self, wwn: &str) -> Option<String> {
        let target = self.host.read_link(&by_id(wwn)).ok().flatten()?;
        self.host.exists(&target).ok()?.then_some(target)
    }
}

impl Service for Multipath {
    const NAME: &'static str = "multipath";
    const START_WEIGHT: i32 = 60;
    const PATHS: &'static [&'static str] = &[CONFIG_DIR];

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Multipath { host })
    }

    fn state(&self, config: &Config) -> Result<State> {
        Ok(State {
            controllers: self.controllers(),
            devices: config.enabled.then(|| self.devices(config)),
        })
    }

    fn validate(&self, config: &Config) -> Result<()> {
        for (i, wwn) in config.wwns.iter().enumerate() {
            if !valid_wwn(wwn) {
                return Err(Error::bad_request(format!(
                    "wwns {i}: invalid WWN {wwn:?} (expected 0x and 16 or 32 lowercase \
                     hexadecimal digits, e.g. 0x5abcdef123456001)"
                )));
            }
        }
        if let Some((i, j)) = validate::first_duplicate(&config.wwns, |w| w) {
            return Err(Error::bad_request(format!(
                "wwns {i}: duplicate of WWN {j}"
            )));
        }
        if config.enabled {
            let present = self.host.list_dir(BY_ID)?.unwrap_or_default();
            if let Some(wwn) = config
                .wwns
                .iter()
                .find(|w| !present.contains(&format!("wwn-{w}")))
            {
                return Err(Error::bad_request(format!("failed to locate WWN {wwn:?}")));
            }
        }
        Ok(())
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// Upstream's Start for an enabled config, journaled in `undo`.
    fn bring_up(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        let h = &self.host;
        // Once the maps were reloaded (the last step), a rollback (a failed save) reloads
        // them again. Registered first, so that it runs once the WWID list is back and
        // before multipathd is put back.
        let reloaded = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reloaded);
        undo.on_rollback("reload the multipath maps", move |host| {
            if !flag.load(Ordering::SeqCst) {
                return Ok(());
            }
            host.run_ok(&["multipath", "-r"], MULTIPATH_TIMEOUT)
                .map(drop)
        });
        undo.create_dir(CONFIG_DIR, 0o700)?;
        // Journaled before `multipath -a` appends to it: a rollback undoes those too.
        undo.write_file(WWIDS, b"", 0o600)?;
        for wwn in &config.wwns {
            let Some(target) = self.device_of(wwn) else {
                h.warn(&format!("failed to locate multipath disk {wwn}"));
                continue;
            };
            if let Err(e) = h.run_ok(&["multipath", "-a", &target], MULTIPATH_TIMEOUT) {
                h.warn(&format!("failed to add multipath disk {wwn}: {e}"));
            }
        }
        undo.start_unit(MULTIPATHD)?;
        // The last step: if it fails, the maps were not changed.
        h.run_ok(&["multipath", "-r"], MULTIPATH_TIMEOUT)?;
        reloaded.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Upstream's Stop for an enabled config, journaled in `undo`. Disabling stores the
    /// new config (upstream's Update kept the old one in that branch, so the service came
    /// back enabled).
    fn take_down(&self, undo: &mut Undo, _config: &Config) -> Result<()> {
        let h = &self.host;
        // Registered first so that it runs last on rollback, once the WWID list and the
        // units are back: the maps follow the restored list again.
        undo.on_rollback("reload the multipath maps", |host| {
            host.run_ok(&["multipath", "-r"], MULTIPATH_TIMEOUT)
                .map(drop)
        });
        undo.remove(CONFIG_DIR)?;
        h.run_ok(&["multipath", "-r"], MULTIPATH_TIMEOUT)?;
        std::thread::sleep(SETTLE);
        // Upstream stops both in one `systemctl stop`; one at a time, the socket goes
        // first so that it cannot start the service again in between.
        undo.stop_unit(MULTIPATHD_SOCKET)?;
        undo.stop_unit(MULTIPATHD)
    }

    /// Upstream's Update of a running multipath: the new WWID list, without a stop.
    fn reconfigure(&self, undo: &mut Undo, _old: &Config, new: &Config) -> Result<()> {
        self.bring_up(undo, new)
    }
}

plugin_api::export_service!(Multipath);
