//! Outgoing proxying: the local `kpx` daemon on `localhost:3128` relays HTTP(S) to the
//! configured proxy servers (anonymous, basic or Kerberos authentication) by destination
//! rules, and `http_proxy`/`https_proxy` point every program at it.
//!
//! [`setup`] says what an apply does: with no `proxy` in the configuration, remove
//! [`ENVIRONMENT`], drop both variables from the daemon's own environment and stop
//! [`KPX_UNIT`]; otherwise write [`ENVIRONMENT`] and [`KPX_CONF`], set both variables in
//! the daemon's environment, and start the unit.
//!
//! Rules map a destination pattern (`*.example.org`, `a|b`, `*`) to a server name or to one
//! of the reserved targets `direct` (no proxy) and `none` (refused). With no rules, every
//! destination goes to the first server in name order, or direct when there is none.

use super::model::{SystemNetworkProxy, SystemNetworkProxyRule};

/// Where the proxy variables are written for every login and service.
pub const ENVIRONMENT: &str = "/etc/environment";
/// kpx's configuration.
pub const KPX_CONF: &str = "/etc/kpx.yaml";
/// The unit running `kpx -c /etc/kpx.yaml`.
pub const KPX_UNIT: &str = "kpx.service";
/// The variables pointing programs at the local proxy.
pub const PROXY_VARIABLES: [&str; 2] = ["http_proxy", "https_proxy"];
/// The local proxy's address, their value.
pub const LOCAL_PROXY: &str = "http://localhost:3128";

/// Targets that are not servers.
pub const DIRECT: &str = "direct";
pub const NONE: &str = "none";

/// What an apply does about proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetup {
    /// No proxy: remove [`ENVIRONMENT`], unset [`PROXY_VARIABLES`], stop [`KPX_UNIT`].
    Off,
    /// Write both files, set [`PROXY_VARIABLES`] to [`LOCAL_PROXY`], start [`KPX_UNIT`].
    Local {
        environment: String,
        kpx_yaml: String,
    },
}

/// [`ProxySetup`] for a configuration's `proxy`; an error leaves everything untouched.
pub fn setup(proxy: Option<&SystemNetworkProxy>) -> Result<ProxySetup, String> {
    let Some(proxy) = proxy else {
        return Ok(ProxySetup::Off);
    };
    Ok(ProxySetup::Local {
        environment: environment(),
        kpx_yaml: kpx_config(proxy)?,
    })
}

/// `/etc/environment`: both variables set to the local proxy.
pub fn environment() -> String {
    PROXY_VARIABLES
        .iter()
        .map(|v| format!("{v}={LOCAL_PROXY}\n"))
        .collect()
}

/// The rules kpx applies: the configured ones, or the default one when there are none.
/// (Upstream stores the default rule into the configuration when it applies it, so a later
/// `GET` shows it; the caller may do the same with this.)
pub fn effective_rules(proxy: &SystemNetworkProxy) -> Vec<SystemNetworkProxyRule> {
    if !proxy.rules.is_empty() {
        return proxy.rules.clone();
    }
    let target = proxy.servers.keys().next().map_or(DIRECT, String::as_str);
    vec![SystemNetworkProxyRule {
        destination: "*".into(),
        target: target.into(),
    }]
}

/// The text of `/etc/kpx.yaml`.
pub fn kpx_config(proxy: &SystemNetworkProxy) -> Result<String, String> {
    let mut proxies = String::new();
    let mut credentials = String::new();
    for (name, server) in &proxy.servers {
        if name == DIRECT || name == NONE {
            return Err(format!(
                "cannot use reserved keyword '{name}' for proxy definition"
            ));
        }
        if !["anonymous", "basic", "kerberos"].contains(&server.auth.as_str()) {
            return Err(format!(
                "unsupported proxy authentication type {}",
                server.auth
            ));
        }
        let (host, port, ssl) = parse_host(&server.host, server.use_tls)
            .map_err(|e| format!("proxy '{name}' has an invalid host '{}': {e}", server.host))?;

        let mut fields = vec![("host", scalar(&host))];
        if let Some(port) = port {
            fields.push(("port", port.to_string()));
        }
        fields.push(("ssl", ssl.to_string()));
        fields.push(("type", scalar(&server.auth)));
        if server.auth == "kerberos" && !server.realm.is_empty() {
            fields.push(("realm", scalar(&server.realm)));
        }
        if server.auth != "anonymous" {
            fields.push(("credential", scalar(name)));
            credentials.push_str(&format!(
                "    {}:\n        login: {}\n        password: {}\n",
                scalar(name),
                scalar(&server.username),
                scalar(&server.password)
            ));
        }
        if server.auth == "kerberos" {
            fields.push(("spn", "HTTP".into()));
        }
        proxies.push_str(&format!("    {}:\n", scalar(name)));
        for (key, value) in fields {
            proxies.push_str(&format!("        {key}: {value}\n"));
        }
    }

    let mut rules = String::new();
    for rule in effective_rules(proxy) {
        let known = proxy.servers.contains_key(&rule.target);
        if !known && rule.target != DIRECT && rule.target != NONE {
            return Err(format!("no proxy defined for target {}", rule.target));
        }
        rules.push_str(&format!(
            "    - host: {}\n      proxy: {}\n",
            scalar(&rule.destination),
            scalar(&rule.target)
        ));
    }

    let mut out = String::from("bind: localhost\nport: 3128\ncheck: false\n");
    if !proxies.is_empty() {
        out.push_str("proxies:\n");
        out.push_str(&proxies);
    }
    if !credentials.is_empty() {
        out.push_str("credentials:\n");
        out.push_str(&credentials);
    }
    out.push_str("rules:\n");
    out.push_str(&rules);
    Ok(out)
}

/// A server's `host` as kpx wants it: the host name (IPv6 without brackets), the port if
/// one is known, and whether to speak TLS to it. `host:port` and bare `host` keep
/// `use_tls`; an `http://` or `https://` URL without a port means 80 without TLS or 443
/// with TLS.
fn parse_host(host: &str, use_tls: bool) -> Result<(String, Option<u16>, bool), String> {
    let (scheme, rest) = match host.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some((s, _)) => return Err(format!("unsupported scheme '{s}'")),
        None => (None, host),
    };
    // The authority: up to a path, query or fragment, without user information.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (name, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (name, after) = bracketed.split_once(']').ok_or("missing ']' in host")?;
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    if name.is_empty() {
        return Err("no host name".into());
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0 && p.bytes().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| format!("invalid port '{p}'"))?,
        ),
    };
    Ok(match (port, scheme) {
        (Some(p), _) => (name.to_string(), Some(p), use_tls),
        (None, Some("http")) => (name.to_string(), Some(80), false),
        (None, Some(_)) => (name.to_string(), Some(443), true),
        (None, None) => (name.to_string(), None, use_tls),
    })
}

/// A YAML string scalar: plain when it cannot be read as anything else, single-quoted
/// otherwise, double-quoted (JSON escapes) when it holds control characters.
fn scalar(s: &str) -> String {
    if s.chars().any(char::is_control) {
        return serde_json::to_string(s).unwrap_or_default();
    }
    const RESERVED: [&str; 11] = [
        "true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", "",
    ];
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/@".contains(c))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}
