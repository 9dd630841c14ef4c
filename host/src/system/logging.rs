//! Syslog forwarding through `systemd-netlogd` (`/1.0/system/logging`).
//!
//! An empty address turns forwarding off: the config file is removed and the unit stopped.
//! Otherwise the file is written (protocol `udp` and format `rfc5424` when left empty) and
//! the unit restarted. The stored config is what the client sent, defaults not filled in,
//! as upstream does. Unlike upstream, a bad address, protocol or format is refused.
//!
//! Changes are serialized and journaled ([`Undo`], through the subsystem's own host
//! handle): a change that fails half way puts the file and the unit back, and the config is
//! stored only once the change succeeded.

use std::path::PathBuf;

use plugin_api::sdk::{self, Host};
use plugin_api::Undo;
use serde::{Deserialize, Serialize};

use super::host::{self, Subsystem};
use crate::platform::Platform;

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

/// The logging subsystem's host handle writes only `netlogd.conf`.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "logging",
    writable: &[CONF],
};

/// One logging change at a time, whoever makes it (a PUT, start-up): the file, the unit
/// and the stored config move together. The daemon has one logging configuration, so one
/// lock for the process.
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brings the file and the unit in line with `c`, each step journaled in `undo`.
fn steps(undo: &mut Undo, c: &LoggingConfig) -> sdk::Result<()> {
    match render(c) {
        None => {
            undo.remove(CONF)?;
            undo.stop_unit(UNIT)
        }
        Some(text) => {
            undo.write_file(CONF, text.as_bytes(), 0o644)?;
            undo.restart_unit(UNIT)
        }
    }
}

/// Refuses at once, before anything is touched, when there is no systemd to drive.
fn require_systemd(platform: &Platform, c: &LoggingConfig) -> Result<(), String> {
    let verb = if render(c).is_some() {
        "restart"
    } else {
        "stop"
    };
    platform
        .units
        .reachable()
        .map_err(|e| format!("cannot {verb} {UNIT}: {e}"))
}

/// Runs `f` under the change lock on a blocking thread, with the logging host handle. The
/// lock is held until `f` returns, even if the caller stops waiting.
async fn locked<T: Send + 'static>(
    root: PathBuf,
    platform: Platform,
    c: LoggingConfig,
    f: impl FnOnce(&Host, &LoggingConfig) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let guard = CHANGES.lock().await;
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        require_systemd(&platform, &c)?;
        f(&host::handle(&root, &platform, &SUBSYSTEM), &c)
    })
    .await
    .map_err(|e| format!("the syslog change crashed: {e}"))?
}

/// Changes the forwarding to `c` (validated by the caller): writes the file, restarts (or
/// stops) the unit, then `save`s the config. If any step fails, `save` included, the file
/// and the unit are put back and the error returned: the stored config and the file always
/// agree.
pub async fn change(
    root: PathBuf,
    platform: Platform,
    c: LoggingConfig,
    save: impl FnOnce(&LoggingConfig) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    locked(root, platform, c, |host, c| {
        // Dropped without `commit` on any early return: everything is put back.
        let mut undo = Undo::new(host);
        steps(&mut undo, c).map_err(|e| e.message)?;
        save(c)?;
        undo.commit();
        Ok(())
    })
    .await
}

/// Applies the stored config at start. What it does is kept even if a step fails: the
/// stored config is what was asked for, and there is nothing older to go back to.
pub async fn apply_stored(
    root: PathBuf,
    platform: Platform,
    c: LoggingConfig,
) -> Result<(), String> {
    locked(root, platform, c, |host, c| {
        Undo::kept(host, |undo| steps(undo, c)).map_err(|e| e.message)
    })
    .await
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
