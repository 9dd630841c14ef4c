//! The Tailscale VPN client: `/1.0/services/tailscale`.
//!
//! `tailscale.service` (shipped in the base image) runs tailscaled, which keeps its own
//! login state. Enabling starts it, joins the tailnet with the auth key when needed, then
//! applies the preferences (`tailscale set`) and the HTTPS proxy to the local API
//! (`tailscale serve`). A boot only starts the unit.
//!
//! Beyond upstream: enabling without `auth_key` is refused (400) unless tailscaled reports
//! a logged-in node (upstream logs out, then fails at `tailscale up`), and a logged-in
//! node whose key is dropped from the config stays logged in; the key is masked in error
//! texts; a failed update is undone; GET never fails (no answer from tailscaled gives the
//! empty state).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use plugin_api::sdk::{Arg, Undo};
use plugin_api::{validate, Error, Host, Result, Service};
use serde::{Deserialize, Serialize};

const UNIT: &str = "tailscale.service";
const SERVE_TARGET: &str = "https+insecure://localhost:8443";
/// What a peer's public key reads as when tailscaled reports none (Go's zero key).
const ZERO_NODE_KEY: &str =
    "nodekey:0000000000000000000000000000000000000000000000000000000000000000";

const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(30);
const UP_TIMEOUT: Duration = Duration::from_secs(60);
const SET_TIMEOUT: Duration = Duration::from_secs(30);
/// `tailscale serve` turns interactive when HTTPS is not provisioned on the tailnet.
const SERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Upstream's `ServiceTailscaleConfig`. `advertised_routes` is a Go `[]string` without
/// omitempty: `null` until set, so an `Option` keeps `null` and `[]` apart as upstream does.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub enabled: bool,
    pub login_server: String,
    pub auth_key: String,
    pub accept_routes: bool,
    pub accept_dns: bool,
    pub advertised_routes: Option<Vec<String>>,
    pub advertise_exit_node: bool,
    /// An IP, a peer's name, or `auto:any`; empty for none.
    pub exit_node: String,
    pub exit_node_allow_lan_access: bool,
    pub serve_enabled: bool,
    pub serve_port: i64,
    /// `svc:<name>`; empty serves the node itself.
    pub serve_service: String,
}

impl Config {
    fn routes(&self) -> &[String] {
        self.advertised_routes.as_deref().unwrap_or_default()
    }

    /// Whether this node offers itself as an exit node (explicitly or through both
    /// default routes).
    fn advertises_exit_node(&self) -> bool {
        self.advertise_exit_node || default_routes(self.routes()) == (true, true)
    }
}

/// Upstream's `ServiceTailscaleState`: a digest of `tailscale status --json`.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct State {
    pub version: String,
    pub backend_state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tailnet_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tailnet_dns_suffix: String,
    #[serde(rename = "self")]
    pub self_: Peer,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer: Vec<Peer>,
    pub have_node_key: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Peer {
    pub id: String,
    pub public_key: String,
    pub host_name: String,
    pub dns_name: String,
    pub os: String,
    /// `null` when tailscaled reports none (a Go nil slice).
    pub tailscale_ips: Option<Vec<String>>,
    pub rx_bytes: i64,
    pub tx_bytes: i64,
    pub used_as_exit_node: bool,
    pub exit_node_offered: bool,
    pub online: bool,
    pub expired: bool,
}

/// The part of tailscale's `ipnstate.Status` JSON that the state is made of.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStatus {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "BackendState")]
    backend_state: String,
    #[serde(rename = "HaveNodeKey")]
    have_node_key: bool,
    #[serde(rename = "Self")]
    self_: Option<RawPeer>,
    #[serde(rename = "Health")]
    health: Option<Vec<String>>,
    #[serde(rename = "CurrentTailnet")]
    current_tailnet: Option<RawTailnet>,
    #[serde(rename = "Peer")]
    peer: Option<BTreeMap<String, Option<RawPeer>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTailnet {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "MagicDNSSuffix")]
    magic_dns_suffix: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPeer {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "PublicKey")]
    public_key: Option<String>,
    #[serde(rename = "HostName")]
    host_name: String,
    #[serde(rename = "DNSName")]
    dns_name: String,
    #[serde(rename = "OS")]
    os: String,
    #[serde(rename = "TailscaleIPs")]
    tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "RxBytes")]
    rx_bytes: i64,
    #[serde(rename = "TxBytes")]
    tx_bytes: i64,
    #[serde(rename = "ExitNode")]
    exit_node: bool,
    #[serde(rename = "ExitNodeOption")]
    exit_node_option: bool,
    #[serde(rename = "Online")]
    online: bool,
    #[serde(rename = "Expired")]
    expired: bool,
}

impl From<RawPeer> for Peer {
    fn from(p: RawPeer) -> Self {
        Peer {
            id: p.id,
            public_key: p.public_key.unwrap_or_else(|| ZERO_NODE_KEY.to_string()),
            host_name: p.host_name,
            dns_name: p.dns_name,
            os: p.os,
            tailscale_ips: p.tailscale_ips,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            used_as_exit_node: p.exit_node,
            exit_node_offered: p.exit_node_option,
            online: p.online,
            expired: p.expired,
        }
    }
}

/// Parses `tailscale status --json`; peers come sorted by host name.
pub fn parse_status(json: &str) -> std::result::Result<State, serde_json::Error> {
    let raw: RawStatus = serde_json::from_str(json)?;
    let tailnet = raw.current_tailnet.unwrap_or_default();
    let mut peer: Vec<Peer> = raw
        .peer
        .unwrap_or_default()
        .into_values()
        .flatten()
        .map(Peer::from)
        .collect();
    peer.sort_by(|a, b| a.host_name.cmp(&b.host_name));
    Ok(State {
        version: raw.version,
        backend_state: raw.backend_state,
        tailnet_name: tailnet.name,
        tailnet_dns_suffix: tailnet.magic_dns_suffix,
        self_: raw.self_.map(Peer::from).unwrap_or_default(),
        peer,
        have_node_key: raw.have_node_key,
        health: raw.health.unwrap_or_default(),
    })
}

// --- validation ------------------------------------------------------------------------

/// A route as `tailscale set --advertise-routes` takes it: [`validate::cidr`], plus
/// tailscale's own rules (netip.ParsePrefix and its router checks), checked before
/// anything is touched: no zero-padded length, no host bits, sane 4-in-6 "via" routes.
fn check_route(route: &str) -> std::result::Result<(), String> {
    let not_cidr = || format!("'{route}' is not a CIDR prefix (like 192.0.2.0/24)");
    let (addr, bits) = route.split_once('/').ok_or_else(not_cidr)?;
    if !validate::cidr(route) || (bits.len() > 1 && bits.starts_with('0')) {
        return Err(not_cidr());
    }
    let addr: IpAddr = addr.parse().map_err(|_| not_cidr())?;
    let bits: u32 = bits.parse().map_err(|_| not_cidr())?;
    let (value, masked) = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            (u128::from(u32::from(a)), u128::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            (u128::from(a), u128::from(a) & mask)
        }
    };
    if value != masked {
        let expected = match addr {
            IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(masked as u32)),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(masked)),
        };
        return Err(format!(
            "'{route}' has host bits set (expected {expected}/{bits})"
        ));
    }
    // Tailscale's 4-in-6 "via" routes: fd7a:115c:a1e0:b1a::/64, site ID in bits 64..96.
    if let IpAddr::V6(a) = addr {
        if bits >= 64 && u128::from(a) >> 64 == 0xfd7a_115c_a1e0_0b1a {
            if bits < 96 {
                return Err(format!("'{route}': a 4-in-6 route must be at least a /96"));
            }
            if (u128::from(a) >> 32) as u32 > 0xffff {
                return Err(format!(
                    "'{route}': the 4-in-6 site ID must be 0xffff or less"
                ));
            }
        }
    }
    Ok(())
}

/// Whether (valid) `routes` hold the IPv4 and the IPv6 default route.
fn default_routes(routes: &[String]) -> (bool, bool) {
    let default = |v6: bool| {
        routes
            .iter()
            .any(|r| r.ends_with("/0") && r.contains(':') == v6)
    };
    (default(false), default(true))
}

fn check_routes(routes: &[String]) -> std::result::Result<(), String> {
    for (i, r) in routes.iter().enumerate() {
        check_route(r).map_err(|e| format!("advertised_routes[{i}]: {e}"))?;
    }
    if let Some((i, j)) = validate::first_duplicate(routes, |r| r) {
        return Err(format!(
            "advertised_routes[{i}]: duplicate of advertised_routes[{j}]"
        ));
    }
    match default_routes(routes) {
        (true, false) => Err(
            "advertised_routes: 0.0.0.0/0 needs its IPv6 counterpart ::/0 \
                             (or use advertise_exit_node)"
                .into(),
        ),
        (false, true) => Err(
            "advertised_routes: ::/0 needs its IPv4 counterpart 0.0.0.0/0 \
                             (or use advertise_exit_node)"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// `svc:<dns label>`, as tailscale names services.
fn valid_service_name(name: &str) -> bool {
    name.strip_prefix("svc:")
        .is_some_and(|label| !label.contains('.') && validate::host_name(label))
}

fn check(config: &Config) -> std::result::Result<(), String> {
    // Never quoted: it is a secret.
    if !config.auth_key.is_empty() && !validate::token(&config.auth_key) {
        return Err("auth_key: the auth key contains whitespace".into());
    }
    let url = &config.login_server;
    if !url.is_empty() && !validate::http_url(url) {
        return Err(format!(
            "login_server: invalid URL '{url}' (expected http(s)://host[:port][/path])"
        ));
    }
    check_routes(config.routes())?;
    let exit_node = config.exit_node.as_str();
    if !exit_node.is_empty() && exit_node != "auto:any" && !validate::ip_or_host(exit_node) {
        return Err(format!(
            "exit_node: invalid exit node '{exit_node}' (expected an IP address, a node name or auto:any)"
        ));
    }
    if !exit_node.is_empty() && config.advertises_exit_node() {
        return Err(
            "exit_node: cannot use an exit node while advertising this node as one \
             (advertise_exit_node)"
                .into(),
        );
    }
    if !(0..=65535).contains(&config.serve_port) {
        return Err(format!(
            "serve_port: invalid port {} (must be 1 to 65535)",
            config.serve_port
        ));
    }
    if config.serve_enabled && config.serve_port == 0 {
        return Err("serve_port: a port (1 to 65535) is required when serve_enabled is set".into());
    }
    if !config.serve_service.is_empty() && !valid_service_name(&config.serve_service) {
        return Err(format!(
            "serve_service: invalid service name '{}' (expected svc:<name>)",
            config.serve_service
        ));
    }
    Ok(())
}

// --- commands --------------------------------------------------------------------------

/// Upstream re-joins when any of these changed.
fn needs_rejoin(old: &Config, new: &Config) -> bool {
    old.enabled != new.enabled
        || old.login_server != new.login_server
        || old.auth_key != new.auth_key
}

/// Backend states of a node that has no usable login.
fn logged_out(backend_state: &str) -> bool {
    matches!(backend_state, "" | "NoState" | "NeedsLogin")
}

fn logout(h: &Host) -> Result<()> {
    h.run_ok(&["tailscale", "logout"], LOGOUT_TIMEOUT).map(drop)
}

/// Joins the tailnet with the auth key, marked secret: the host masks it in every error
/// and log line (upstream's error text would show the whole command line).
fn up(h: &Host, c: &Config) -> Result<()> {
    let mut up: Vec<Arg> = [
        "tailscale",
        "up",
        "--reset",
        "--timeout",
        "30s",
        "--auth-key",
    ]
    .map(Arg::from)
    .into();
    up.push(Arg::secret(&c.auth_key));
    if !c.login_server.is_empty() {
        up.extend([Arg::from("--login-server"), Arg::from(&c.login_server)]);
    }
    h.run_ok_masked(&up, UP_TIMEOUT).map(drop)
}

/// The preferences (`tailscale set`) and the HTTPS proxy to the local API
/// (`tailscale serve`).
fn apply_preferences(h: &Host, c: &Config) -> Result<()> {
    let set = [
        "tailscale".to_string(),
        "set".to_string(),
        format!("--advertise-routes={}", c.routes().join(",")),
        format!("--accept-routes={}", c.accept_routes),
        format!("--accept-dns={}", c.accept_dns),
        format!("--advertise-exit-node={}", c.advertise_exit_node),
        format!("--exit-node={}", c.exit_node),
        format!(
            "--exit-node-allow-lan-access={}",
            c.exit_node_allow_lan_access
        ),
    ];
    h.run_ok(&set.each_ref().map(String::as_str), SET_TIMEOUT)?;
    h.run_ok(&["tailscale", "serve", "reset"], SET_TIMEOUT)?;
    if c.serve_enabled {
        let https = format!("--https={}", c.serve_port);
        let service = format!("--service={}", c.serve_service);
        let mut serve = vec!["tailscale", "serve", "--bg", &https];
        if !c.serve_service.is_empty() {
            serve.push(&service);
        }
        // tailscale serve is sensitive to argument order: the target comes last.
        serve.push(SERVE_TARGET);
        h.run_ok(&serve, SERVE_TIMEOUT)?;
    }
    Ok(())
}

/// Runs a step of a rollback, logging its failure as an error: the node may be left with
/// a half-restored configuration, which [`Undo`]'s warning would understate.
fn restore(h: &Host, what: &str, step: Result<()>) -> Result<()> {
    if let Err(e) = step {
        h.error(&format!("failed to {what}: {e}"));
    }
    Ok(())
}

pub struct Tailscale {
    host: Host,
}

impl Tailscale {
    /// The live status, `None` when tailscaled cannot tell (not running, no tool, output
    /// that does not parse).
    fn status(&self) -> Option<State> {
        let out = match self
            .host
            .run(&["tailscale", "status", "--json"], STATUS_TIMEOUT)
        {
            Ok(out) if out.status == 0 => out,
            Ok(out) => {
                let why = out
                    .stderr
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                self.host.debug(&format!("tailscale status failed: {why}"));
                return None;
            }
            Err(e) => {
                self.host.debug(&format!("tailscale status failed: {e}"));
                return None;
            }
        };
        match parse_status(&out.stdout) {
            Ok(state) => Some(state),
            Err(e) => {
                self.host
                    .warn(&format!("cannot parse the output of tailscale status: {e}"));
                None
            }
        }
    }
}

impl Service for Tailscale {
    const NAME: &'static str = "tailscale";
    const START_WEIGHT: i32 = 90;
    /// Upstream's struct declares `config` before `state`.
    const CONFIG_FIRST: bool = true;

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Tailscale { host })
    }

    /// Upstream asks tailscaled even when disabled; the unit is stopped then, so the
    /// answer is always the empty state and the command is skipped.
    fn state(&self, config: &Config) -> Result<State> {
        if !config.enabled {
            return Ok(State::default());
        }
        Ok(self.status().unwrap_or_default())
    }

    fn validate(&self, config: &Config) -> Result<()> {
        check(config).map_err(Error::bad_request)
    }

    /// Refuses (400) to enable without an auth key unless tailscaled reports a logged-in
    /// node (asked with `tailscale status`): upstream would start and then fail at
    /// `tailscale up`, or log the node out.
    fn validate_change(&self, old: &Config, new: &Config) -> Result<()> {
        if !new.enabled || !new.auth_key.is_empty() {
            return Ok(());
        }
        let Some(state) = self.status() else {
            return Err(Error::bad_request(
                "auth_key: an auth key is required to enable tailscale \
                 (the node's login state is unknown: tailscaled is not running)",
            ));
        };
        if logged_out(&state.backend_state) {
            let shown = match state.backend_state.as_str() {
                "" => "unknown",
                s => s,
            };
            return Err(Error::bad_request(format!(
                "auth_key: an auth key is required, the node is not logged in \
                 (backend state {shown})"
            )));
        }
        if old.login_server != new.login_server {
            return Err(Error::bad_request(
                "auth_key: an auth key is required to change login_server",
            ));
        }
        Ok(())
    }

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// Boot start only starts the unit: tailscaled keeps its own login state.
    fn bring_up(&self, _undo: &mut Undo, _config: &Config) -> Result<()> {
        self.host.start_unit(UNIT)
    }

    fn take_down(&self, _undo: &mut Undo, _config: &Config) -> Result<()> {
        self.host.stop_unit(UNIT)
    }

    /// Upstream's configure: start the unit, re-join if needed, then the preferences.
    fn update(&self, undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        let h = &self.host;
        if !new.enabled {
            if old.enabled {
                self.take_down(undo, old)?;
                // A failed save: the node joins again as before (enabling re-joins when
                // there is a key).
                let old = old.clone();
                undo.on_rollback("enable tailscale again", move |h| {
                    let what = "enable tailscale again with the previous configuration";
                    let step = h.start_unit(UNIT).and_then(|()| {
                        if !old.auth_key.is_empty() {
                            logout(h)?;
                            up(h, &old)?;
                        }
                        apply_preferences(h, &old)
                    });
                    restore(h, what, step)
                });
            }
            return Ok(());
        }
        // Without a key the node is logged in already (validate_change): there is nothing
        // to re-join with.
        let mut rejoin = !new.auth_key.is_empty() && needs_rejoin(old, new);
        // Not `undo.start_unit`: its rollback restarts a unit that was running, which
        // would cut the tailnet off for nothing. A unit that was stopped is stopped again;
        // a running one gets the old preferences back (and the old login, below).
        let previous = if h.unit_active_state(UNIT)? == "active" {
            old.enabled.then(|| old.clone())
        } else {
            undo.on_rollback(&format!("stop {UNIT}"), |h| h.stop_unit(UNIT));
            None
        };
        if let Some(old) = previous.clone() {
            undo.on_rollback("restore the previous preferences", move |h| {
                let what = "restore the previous Tailscale configuration";
                restore(h, what, apply_preferences(h, &old))
            });
        }
        h.start_unit(UNIT)?;
        // Also re-join when an earlier login with this key never completed.
        if !rejoin && !new.auth_key.is_empty() {
            rejoin = self
                .status()
                .is_some_and(|s| s.backend_state == "NeedsLogin");
        }
        if rejoin {
            logout(h)?;
            if let Some(old) = previous.filter(|o| !o.auth_key.is_empty()) {
                undo.on_rollback("re-join with the previous auth key", move |h| {
                    let what = "re-join the tailnet with the previous auth key";
                    restore(h, what, logout(h).and_then(|()| up(h, &old)))
                });
            }
            up(h, new)?;
        }
        apply_preferences(h, new)
    }
}

plugin_api::export_service!(Tailscale);
