//! The NetBird mesh VPN client: `/1.0/services/netbird`.
//!
//! `netbird.service` (shipped in the base image) runs the NetBird daemon, which keeps its
//! own login state. Enabling starts it and re-connects with `netbird down` then
//! `netbird up` carrying the whole configuration; a boot only starts the unit.
//!
//! Beyond upstream: a config is validated first (a setup key is required to enable) and
//! stored only once applied (upstream stores it before trying), a failed update is undone,
//! and the setup key is masked in error texts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use plugin_api::sdk::{Arg, Undo};
use plugin_api::{validate, Error, Host, Result, Service};
use serde::{Deserialize, Serialize};

const UNIT: &str = "netbird.service";
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// NetBird's own limit on `--extra-dns-labels`.
const MAX_DNS_LABELS: usize = 32;

/// Upstream's `ServiceNetbirdConfig`. The two lists are Go `[]string` without omitempty:
/// `null` until set, so an `Option` keeps `null` and `[]` apart as upstream does.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub enabled: bool,
    pub setup_key: String,
    pub management_url: String,
    pub admin_url: String,
    pub anonymize: bool,
    pub block_inbound: bool,
    pub block_lan_access: bool,
    pub disable_client_routes: bool,
    pub disable_server_routes: bool,
    pub disable_dns: bool,
    pub disable_firewall: bool,
    /// `ip:port` of NetBird's local DNS resolver; empty lets NetBird choose.
    pub dns_resolver_address: String,
    /// `IP`, `IP/IP` or `IP/interface` entries.
    pub external_ip_map: Option<Vec<String>>,
    pub extra_dns_labels: Option<Vec<String>>,
}

impl Config {
    fn external_ip_map(&self) -> &[String] {
        self.external_ip_map.as_deref().unwrap_or_default()
    }

    fn extra_dns_labels(&self) -> &[String] {
        self.extra_dns_labels.as_deref().unwrap_or_default()
    }

    /// `netbird up` with upstream's exact arguments, the setup key marked secret.
    fn up_argv(&self) -> Vec<Arg> {
        let mut argv: Vec<Arg> = ["netbird", "up", "--no-browser", "--setup-key"]
            .map(Arg::from)
            .into();
        argv.push(Arg::secret(&self.setup_key));
        argv.extend(self.up_options().into_iter().map(Arg::from));
        argv
    }

    /// The arguments of `netbird up` after the setup key.
    fn up_options(&self) -> Vec<String> {
        let mut argv: Vec<String> = [
            "--management-url",
            &self.management_url,
            "--admin-url",
            &self.admin_url,
            "--dns-resolver-address",
            &self.dns_resolver_address,
            "--external-ip-map",
            &self.external_ip_map().join(","),
            "--extra-dns-labels",
            &self.extra_dns_labels().join(","),
        ]
        .map(String::from)
        .into();
        let flags = [
            (self.anonymize, "--anonymize"),
            (self.block_inbound, "--block-inbound"),
            (self.block_lan_access, "--block-lan-access"),
            (self.disable_client_routes, "--disable-client-routes"),
            (self.disable_server_routes, "--disable-server-routes"),
            (self.disable_dns, "--disable-dns"),
            (self.disable_firewall, "--disable-firewall"),
        ];
        argv.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| f.to_string()),
        );
        argv
    }
}

#[derive(Serialize)]
pub struct State {}

// --- validation ------------------------------------------------------------------------

/// A Linux interface name (at most 15 bytes, no `/`, whitespace or `:`).
fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':' && b != b',')
}

/// One `--external-ip-map` entry: `IP`, `IP/IP` or `IP/interface` (NetBird's rules; that
/// the interface exists is left to NetBird).
fn check_external_ip(entry: &str) -> std::result::Result<(), String> {
    let bad = || {
        format!("invalid entry '{entry}' (expected an external IP, IP/local-IP or IP/interface)")
    };
    let (external, local) = match entry.split_once('/') {
        Some((e, l)) => (e, Some(l)),
        None => (entry, None),
    };
    if external.parse::<IpAddr>().is_err() {
        return Err(bad());
    }
    match local {
        Some(l) if l.parse::<IpAddr>().is_err() && !valid_interface_name(l) => Err(bad()),
        _ => Ok(()),
    }
}

fn check_duplicates(field: &str, items: &[String]) -> std::result::Result<(), String> {
    match validate::first_duplicate(items, |item| item) {
        Some((i, j)) => Err(format!("{field}[{i}]: duplicate of {field}[{j}]")),
        None => Ok(()),
    }
}

fn check(c: &Config) -> std::result::Result<(), String> {
    if c.enabled && c.setup_key.trim().is_empty() {
        return Err("setup_key: a setup key is required to enable netbird".into());
    }
    // Never quoted: it is a secret.
    if !c.setup_key.is_empty() && !validate::token(&c.setup_key) {
        return Err("setup_key: the setup key contains whitespace".into());
    }
    for (field, url) in [
        ("management_url", &c.management_url),
        ("admin_url", &c.admin_url),
    ] {
        if !url.is_empty() && !validate::http_url(url) {
            return Err(format!(
                "{field}: invalid URL '{url}' (expected http(s)://host[:port][/path])"
            ));
        }
    }
    if !c.dns_resolver_address.is_empty() && c.dns_resolver_address.parse::<SocketAddr>().is_err() {
        return Err(format!(
            "dns_resolver_address: invalid address '{}' (expected ip:port, like 127.0.0.153:53)",
            c.dns_resolver_address
        ));
    }
    for (i, entry) in c.external_ip_map().iter().enumerate() {
        check_external_ip(entry).map_err(|e| format!("external_ip_map[{i}]: {e}"))?;
    }
    check_duplicates("external_ip_map", c.external_ip_map())?;
    let labels = c.extra_dns_labels();
    if labels.len() > MAX_DNS_LABELS {
        return Err(format!(
            "extra_dns_labels: {} labels given, at most {MAX_DNS_LABELS} are allowed",
            labels.len()
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if label.ends_with('.') || !validate::host_name(label) {
            return Err(format!(
                "extra_dns_labels[{i}]: invalid DNS label '{label}'"
            ));
        }
    }
    check_duplicates("extra_dns_labels", labels)?;
    Ok(())
}

/// Upstream's configure: disconnect, then connect with the whole configuration. The setup
/// key is masked in any error (upstream's error shows the whole command line).
fn configure(h: &Host, c: &Config) -> Result<()> {
    h.run_ok(&["netbird", "down"], DOWN_TIMEOUT)?;
    h.run_ok_masked(&c.up_argv(), UP_TIMEOUT).map(drop)
}

pub struct Netbird {
    host: Host,
}

impl Service for Netbird {
    const NAME: &'static str = "netbird";
    const START_WEIGHT: i32 = 40;
    /// Upstream's struct declares `config` before `state`.
    const CONFIG_FIRST: bool = true;

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Netbird { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {})
    }

    fn validate(&self, config: &Config) -> Result<()> {
        check(config).map_err(Error::bad_request)
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// Boot start only starts the unit: the daemon keeps its own login state.
    fn bring_up(&self, _undo: &mut Undo, _config: &Config) -> Result<()> {
        self.host.start_unit(UNIT)
    }

    fn take_down(&self, _undo: &mut Undo, _config: &Config) -> Result<()> {
        self.host.stop_unit(UNIT)
    }

    fn update(&self, undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        let h = &self.host;
        if !new.enabled {
            if old.enabled {
                self.take_down(undo, old)?;
                let old = old.clone();
                // A failed save: the node is connected again as before.
                undo.on_rollback("connect again", move |h| {
                    if let Err(e) = h.start_unit(UNIT).and_then(|()| configure(h, &old)) {
                        h.error(&format!(
                            "failed to connect NetBird again with the previous configuration: {e}"
                        ));
                    }
                    Ok(())
                });
            }
            return Ok(());
        }
        // Not `undo.start_unit`: its rollback restarts a unit that was running, which
        // would cut the mesh off for nothing. A unit that was stopped is stopped again; a
        // running one is connected with the old configuration again.
        if h.unit_active_state(UNIT)? != "active" {
            undo.on_rollback(&format!("stop {UNIT}"), |h| h.stop_unit(UNIT));
        } else if old.enabled {
            let old = old.clone();
            undo.on_rollback("restore the previous configuration", move |h| {
                // An error, not Undo's warning: the node may be left disconnected.
                if let Err(e) = configure(h, &old) {
                    h.error(&format!(
                        "failed to restore the previous NetBird configuration: {e}"
                    ));
                }
                Ok(())
            });
        }
        h.start_unit(UNIT)?;
        configure(h, new)
    }
}

plugin_api::export_service!(Netbird);
