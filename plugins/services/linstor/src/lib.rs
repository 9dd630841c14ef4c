//! The LINSTOR satellite service: `/1.0/services/linstor` (needs the `incus-linstor`
//! application).
//!
//! When enabled, `/etc/linstor` is recreated from scratch with the satellite's config (and,
//! in TLS mode, its certificates and Java keystores), DRBD gets its top-level config and
//! `linstor-satellite.service` is started. Disabling stops the unit and leaves the files.

use std::net::IpAddr;
use std::time::Duration;

use plugin_api::{validate, Error, Host, Result, Service};
use serde::{Deserialize, Deserializer, Serialize};

const SATELLITE: &str = "linstor-satellite.service";
const LINSTOR_DIR: &str = "/etc/linstor";
const SATELLITE_TOML: &str = "/etc/linstor/linstor_satellite.toml";
const SERVER_CRT: &str = "/etc/linstor/server.crt";
const SERVER_KEY: &str = "/etc/linstor/server.key";
const TRUSTED_CRT: &str = "/etc/linstor/trusted.crt";
const DRBD_DIR: &str = "/etc/drbd.d";
const DRBD_CONF: &str = "/etc/drbd.conf";
const DRBD_CONF_CONTENT: &str = "include \"drbd.d/*.res\";\n";

/// openssl and keytool (a JVM) can be slow to start.
const KEYSTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// Upstream's keystore commands, exactly.
const KEYSTORE_COMMANDS: [&[&str]; 3] = [
    &[
        "openssl",
        "pkcs12",
        "-export",
        "-in",
        "/etc/linstor/server.crt",
        "-inkey",
        "/etc/linstor/server.key",
        "-out",
        "/etc/linstor/server.p12",
        "-name",
        "certificate",
        "-password",
        "pass:linstor",
    ],
    &[
        "keytool",
        "-importkeystore",
        "-srckeystore",
        "/etc/linstor/server.p12",
        "-srcstoretype",
        "pkcs12",
        "-destkeystore",
        "/etc/linstor/server.jks",
        "-srcstorepass",
        "linstor",
        "-deststorepass",
        "linstor",
    ],
    &[
        "keytool",
        "-keystore",
        "/etc/linstor/trusted.jks",
        "-importcert",
        "-file",
        "/etc/linstor/trusted.crt",
        "-alias",
        "trusted",
        "-deststorepass",
        "linstor",
        "-noprompt",
    ],
];

/// The keystore settings appended to `[netcom]` in TLS mode.
const TLS_SETTINGS: &str = r#"
  server_certificate="/etc/linstor/server.jks"
  trusted_certificates="/etc/linstor/trusted.jks"
  key_password="linstor"
  keystore_password="linstor"
  truststore_password="linstor"
  ssl_protocol="TLSv1.3"
"#;

/// JSON `null` reads as the zero value, as Go's decoder does.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "nullable")]
    pub enabled: bool,
    /// `host:port`; empty: all addresses on the mode's default port.
    #[serde(deserialize_with = "nullable")]
    pub listen_address: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub tls_server_certificate: String,
    /// A secret: never logged.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub tls_server_key: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub tls_trusted_certificates: Vec<String>,
}

/// The key is a secret: never shown.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("enabled", &self.enabled)
            .field("listen_address", &self.listen_address)
            .field("tls_server_certificate", &self.tls_server_certificate)
            .field("tls_server_key", &"<redacted>")
            .field("tls_trusted_certificates", &self.tls_trusted_certificates)
            .finish()
    }
}

impl Config {
    /// Upstream's rule: TLS only with a certificate, a key and at least one trusted
    /// certificate ([`check_tls`] refuses anything in between).
    fn is_tls(&self) -> bool {
        !self.tls_server_certificate.is_empty()
            && !self.tls_server_key.is_empty()
            && !self.tls_trusted_certificates.is_empty()
    }

    /// `(type, bind_address, port)` of the `[netcom]` table.
    fn netcom(&self) -> (&'static str, String, String) {
        let (kind, default_port) = if self.is_tls() {
            ("ssl", "3367")
        } else {
            ("plain", "3366")
        };
        // Validated: an IP literal and a port. Like Go's net.SplitHostPort, an IPv6
        // address loses its brackets.
        match validate::endpoint(&self.listen_address) {
            Some((host, Some(port))) => (kind, host.to_string(), port.to_string()),
            _ => (kind, "[::]".to_string(), default_port.to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct State {}

pub struct Linstor {
    host: Host,
}

// --- validation ------------------------------------------------------------------------

/// An IP literal and a port: `IPv4:port` or `[IPv6]:port`.
fn check_listen_address(addr: &str) -> std::result::Result<(), String> {
    let valid = match validate::endpoint(addr) {
        Some((host, Some(_))) => match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => true,
            Ok(IpAddr::V6(_)) => addr.starts_with('['),
            Err(_) => false,
        },
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "listen_address: invalid address {addr:?} (expected <IPv4>:<port> or [<IPv6>]:<port>)"
        ))
    }
}

/// One or more `CERTIFICATE` blocks (a certificate and its chain).
fn check_certificates(field: &str, text: &str) -> std::result::Result<(), String> {
    let labels =
        validate::pem_labels(text).map_err(|e| format!("{field}: not a PEM certificate: {e}"))?;
    match labels.iter().find(|l| *l != "CERTIFICATE") {
        Some(other) => Err(format!(
            "{field}: unexpected PEM block type {other} (expected CERTIFICATE)"
        )),
        None => Ok(()),
    }
}

const KEY_LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// Exactly one unencrypted private key block (an `EC PARAMETERS` block may precede it).
fn check_private_key(text: &str) -> std::result::Result<(), String> {
    let field = "tls_server_key";
    let labels =
        validate::pem_labels(text).map_err(|e| format!("{field}: not a PEM private key: {e}"))?;
    let keys = labels
        .iter()
        .filter(|l| KEY_LABELS.contains(&l.as_str()))
        .count();
    if let Some(other) = labels
        .iter()
        .find(|l| !KEY_LABELS.contains(&l.as_str()) && *l != "EC PARAMETERS")
    {
        return Err(format!(
            "{field}: unexpected PEM block type {other} (expected an unencrypted PRIVATE KEY, \
             RSA PRIVATE KEY or EC PRIVATE KEY)"
        ));
    }
    if keys != 1 {
        return Err(format!(
            "{field}: expected exactly one private key block, found {keys}"
        ));
    }
    Ok(())
}

/// TLS is all or nothing: upstream silently falls back to plain mode when a part is
/// missing, which is never what was meant.
fn check_tls(config: &Config) -> std::result::Result<(), String> {
    let parts = [
        (
            "tls_server_certificate",
            !config.tls_server_certificate.is_empty(),
        ),
        ("tls_server_key", !config.tls_server_key.is_empty()),
        (
            "tls_trusted_certificates",
            !config.tls_trusted_certificates.is_empty(),
        ),
    ];
    if parts.iter().all(|(_, set)| !set) {
        return Ok(());
    }
    if let Some((missing, _)) = parts.iter().find(|(_, set)| !set) {
        return Err(format!(
            "{missing} is required for TLS (tls_server_certificate, tls_server_key and \
             tls_trusted_certificates go together)"
        ));
    }
    check_certificates("tls_server_certificate", &config.tls_server_certificate)?;
    check_private_key(&config.tls_server_key)?;
    for (i, cert) in config.tls_trusted_certificates.iter().enumerate() {
        check_certificates(&format!("tls_trusted_certificates {i}"), cert)?;
        if let Some(j) = config.tls_trusted_certificates[..i]
            .iter()
            .position(|c| c == cert)
        {
            return Err(format!(
                "tls_trusted_certificates {i}: duplicate of certificate {j}"
            ));
        }
    }
    Ok(())
}

// --- bring-up and undo -----------------------------------------------------------------

fn satellite_toml(config: &Config) -> String {
    let (kind, address, port) = config.netcom();
    let mut out =
        format!("[netcom]\n  type = \"{kind}\"\n  bind_address = \"{address}\"\n  port = {port}\n");
    if config.is_tls() {
        out.push_str(TLS_SETTINGS);
    }
    out
}

/// What a bring-up from the disabled state replaced, to put it back on failure.
struct Previous {
    /// The files of `/etc/linstor` (`None`: the directory did not exist).
    linstor_files: Option<Vec<(String, Vec<u8>)>>,
    drbd_conf: Option<Vec<u8>>,
    drbd_dir: bool,
    satellite_active: bool,
}

impl Linstor {
    /// Upstream's Start for an enabled config.
    fn bring_up(&self, config: &Config) -> Result<()> {
        let h = &self.host;
        h.remove(LINSTOR_DIR)?;
        h.create_dir(LINSTOR_DIR, 0o700)?;
        h.write_file(SATELLITE_TOML, satellite_toml(config).as_bytes(), 0o600)?;
        if config.is_tls() {
            let trusted = config.tls_trusted_certificates.join("\n");
            h.write_file(SERVER_CRT, config.tls_server_certificate.as_bytes(), 0o600)?;
            h.write_file(SERVER_KEY, config.tls_server_key.as_bytes(), 0o600)?;
            h.write_file(TRUSTED_CRT, trusted.as_bytes(), 0o600)?;
            for argv in KEYSTORE_COMMANDS {
                h.run_ok(argv, KEYSTORE_TIMEOUT)?;
            }
        }
        if h.list_dir(DRBD_DIR)?.is_none() {
            h.create_dir(DRBD_DIR, 0o755)?;
        }
        h.write_file(DRBD_CONF, DRBD_CONF_CONTENT.as_bytes(), 0o644)?;
        h.start_unit(SATELLITE)
    }

    fn previous(&self) -> Result<Previous> {
        let h = &self.host;
        let linstor_files = match h.list_dir(LINSTOR_DIR)? {
            None => None,
            Some(names) => {
                let mut files = vec![];
                for name in names {
                    let path = format!("{LINSTOR_DIR}/{name}");
                    match h.read_file(&path) {
                        Ok(Some(data)) => files.push((path, data)),
                        Ok(None) => {}
                        Err(e) => h.warn(&format!("{path} cannot be kept: {e}")),
                    }
                }
                Some(files)
            }
        };
        Ok(Previous {
            linstor_files,
            drbd_conf: h.read_file(DRBD_CONF)?,
            drbd_dir: h.list_dir(DRBD_DIR)?.is_some(),
            satellite_active: h.unit_active_state(SATELLITE)? == "active",
        })
    }

    /// Puts back what a failed bring-up from the disabled state changed.
    fn restore(&self, previous: Previous) {
        let h = &self.host;
        let mut failures = vec![];
        if !previous.satellite_active {
            failures.push(h.stop_unit(SATELLITE).err());
        }
        failures.push(h.remove(LINSTOR_DIR).err());
        if let Some(files) = &previous.linstor_files {
            failures.push(h.create_dir(LINSTOR_DIR, 0o700).err());
            for (path, data) in files {
                failures.push(h.write_file(path, data, 0o600).err());
            }
        }
        failures.push(
            match &previous.drbd_conf {
                Some(data) => h.write_file(DRBD_CONF, data, 0o644),
                None => h.remove(DRBD_CONF),
            }
            .err(),
        );
        if !previous.drbd_dir {
            failures.push(h.remove(DRBD_DIR).err());
        }
        for e in failures.into_iter().flatten() {
            h.warn(&format!("undoing the LINSTOR change: {e}"));
        }
    }
}

impl Service for Linstor {
    const NAME: &'static str = "linstor";
    const START_WEIGHT: i32 = 30;
    const PATHS: &'static [&'static str] = &[LINSTOR_DIR, DRBD_CONF, DRBD_DIR];
    const REQUIRES_APPLICATION: Option<&'static str> = Some("incus-linstor");

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Linstor { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {})
    }

    fn validate(&self, config: &Config) -> Result<()> {
        if !config.listen_address.is_empty() {
            check_listen_address(&config.listen_address).map_err(Error::bad_request)?;
        }
        check_tls(config).map_err(Error::bad_request)
    }

    fn update(&self, old: &Config, new: &Config) -> Result<()> {
        let previous = match (old.enabled, new.enabled) {
            (false, true) => Some(self.previous()?),
            _ => None,
        };
        self.stop(old)?;
        if !new.enabled {
            return Ok(());
        }
        let Err(err) = self.bring_up(new) else {
            return Ok(());
        };
        match previous {
            Some(previous) => self.restore(previous),
            None => {
                if let Err(e) = self.bring_up(old) {
                    self.host.error(&format!(
                        "failed to restore the previous LINSTOR configuration: {e}"
                    ));
                }
            }
        }
        Err(err)
    }

    fn start(&self, config: &Config) -> Result<()> {
        if !config.enabled {
            return Ok(());
        }
        self.bring_up(config)
    }

    fn stop(&self, config: &Config) -> Result<()> {
        if !config.enabled {
            return Ok(());
        }
        self.host.stop_unit(SATELLITE)
    }
}

plugin_api::export_service!(Linstor);
