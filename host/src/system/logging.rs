//! Syslog forwarding through `systemd-netlogd` (`/1.0/system/logging`).
//!
//! An empty address turns forwarding off: the config file is removed and the unit stopped.
//! Otherwise the file is written (protocol `udp` and format `rfc5424` when left empty) and
//! the unit restarted. The stored config is what the client sent, defaults not filled in,
//! as upstream does. Unlike upstream, a bad address, protocol or format is refused.

use serde::{Deserialize, Serialize};

use crate::platform::files::RootFs;
use crate::platform::systemd::{UnitAction, Units};

pub const CONF: &str = "/etc/systemd/netlogd.conf";
pub const UNIT: &str = "systemd-netlogd.service";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Syslog {
    pub address: String,
    pub protocol: String,
    pub log_format: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoggingConfig {
    pub syslog: Syslog,
}

/// Checks a config before anything is touched.
pub fn validate(c: &LoggingConfig) -> Result<(), String> {
    let s = &c.syslog;
    if !s.address.is_empty() {
        valid_address(&s.address)?;
    }
    if !matches!(s.protocol.as_str(), "" | "udp" | "tcp" | "tls" | "dtls") {
        return Err(format!(
            "invalid syslog protocol '{}' (expected udp, tcp, tls or dtls)",
            s.protocol
        ));
    }
    if !matches!(s.log_format.as_str(), "" | "rfc5424" | "rfc3339") {
        return Err(format!(
            "invalid syslog log format '{}' (expected rfc5424 or rfc3339)",
            s.log_format
        ));
    }
    Ok(())
}

/// `host`, `host:port`, an IP, `ip:port` or `[ipv6]:port`; a bare IPv6 address with a
/// port must be bracketed.
fn valid_address(a: &str) -> Result<(), String> {
    let bracketed_without_port = a.starts_with('[') && a.ends_with(']');
    match plugin_api::validate::endpoint(a) {
        Some(_) if !bracketed_without_port => Ok(()),
        _ => Err(format!("invalid syslog address '{a}'")),
    }
}

/// The `netlogd.conf` for a config, `None` when forwarding is off.
pub fn render(c: &LoggingConfig) -> Option<String> {
    let s = &c.syslog;
    if s.address.is_empty() {
        return None;
    }
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    Some(format!(
        "[Network]\nAddress={}\nProtocol={}\nLogFormat={}\n",
        s.address,
        or(&s.protocol, "udp"),
        or(&s.log_format, "rfc5424")
    ))
}

/// Writes the file and drives the unit; on failure the previous file is put back (and the
/// unit brought back in line with it, best effort).
pub fn apply(fs: &RootFs, units: &dyn Units, c: &LoggingConfig) -> Result<(), String> {
    let previous = fs.read(CONF).map_err(|e| e.to_string())?;
    let result = match render(c) {
        None => fs.remove(CONF).map_err(|e| e.to_string()).and_then(|_| {
            units
                .unit(UnitAction::Stop, UNIT)
                .map(drop)
                .map_err(|e| e.0)
        }),
        Some(text) => fs
            .write(CONF, text.as_bytes(), 0o644)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                units
                    .unit(UnitAction::Restart, UNIT)
                    .map(drop)
                    .map_err(|e| e.0)
            }),
    };
    if let Err(e) = result {
        let undo = match &previous {
            Some(old) => fs
                .write(CONF, old, 0o644)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    units
                        .unit(UnitAction::Restart, UNIT)
                        .map(drop)
                        .map_err(|e| e.0)
                }),
            None => fs.remove(CONF).map_err(|e| e.to_string()),
        };
        if let Err(u) = undo {
            tracing::error!(error = %u, "cannot restore the previous syslog configuration");
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(a: &str, p: &str, f: &str) -> LoggingConfig {
        LoggingConfig {
            syslog: Syslog {
                address: a.into(),
                protocol: p.into(),
                log_format: f.into(),
            },
        }
    }

    #[test]
    fn the_file_fills_in_defaults() {
        assert_eq!(render(&cfg("", "tcp", "")), None);
        assert_eq!(
            render(&cfg("127.0.0.1", "", "")).unwrap(),
            "[Network]\nAddress=127.0.0.1\nProtocol=udp\nLogFormat=rfc5424\n"
        );
        assert_eq!(
            render(&cfg("logs.example.org:6514", "tls", "rfc3339")).unwrap(),
            "[Network]\nAddress=logs.example.org:6514\nProtocol=tls\nLogFormat=rfc3339\n"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for (c, needle) in [
            (cfg("not an address", "", ""), "invalid syslog address"),
            (cfg("10.0.0.1:99999", "", ""), "invalid syslog address"),
            (cfg("[::1]", "", ""), "invalid syslog address"),
            (
                cfg("10.0.0.1", "carrier-pigeon", ""),
                "invalid syslog protocol",
            ),
            (cfg("10.0.0.1", "udp", "json"), "invalid syslog log format"),
        ] {
            assert!(validate(&c).unwrap_err().contains(needle), "{c:?}");
        }
        for ok in [
            cfg("", "", ""),
            cfg("127.0.0.1", "tcp", "rfc5424"),
            cfg("::1", "", ""),
            cfg("[2001:db8::1]:514", "udp", ""),
            cfg("syslog.example.org", "", "rfc3339"),
        ] {
            assert!(validate(&ok).is_ok(), "{ok:?}");
        }
    }
}
