//! The LINSTOR satellite service: `/1.0/services/linstor` (needs the `incus-linstor`
//! application).
//!
//! When enabled, `/etc/linstor` is recreated from scratch with the satellite's config (and,
//! in TLS mode, its certificates and Java keystores), DRBD gets its top-level config and
//! `linstor-satellite.service` is started. Disabling stops the unit and leaves the files.

use std::time::Duration;

use plugin_api::sdk::{nullable, Undo};
use plugin_api::{validate, Error, Host, Result, Service};
use serde::{Deserialize, Serialize};

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

/// Written to files as they are: line breaks are part of them.
const PEM_FIELDS: [&str; 3] = [
    "tls_server_certificate",
    "tls_server_key",
    "tls_trusted_certificates",
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

/// The satellite binds to an IP literal and a port: `IPv4:port` or `[IPv6]:port`.
fn check_listen_address(addr: &str) -> std::result::Result<(), String> {
    if validate::socket_addr(addr) {
        return Ok(());
    }
    Err(format!(
        "listen_address: invalid address {addr:?} (expected <IPv4>:<port> or [<IPv6>]:<port>)"
    ))
}

/// One or more `CERTIFICATE` blocks (a certificate and its chain). Not
/// `validate::pem_of(text, "CERTIFICATE")`: that takes any label ending in `CERTIFICATE`
/// (`TRUSTED CERTIFICATE`, ...) and cannot name the block that is wrong.
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
/// Not `validate::pem_of(text, "PRIVATE KEY")`: that takes `ENCRYPTED PRIVATE KEY` and
/// several keys, and refuses the `EC PARAMETERS` block `openssl ecparam -genkey` writes.
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
    }
    if let Some((i, j)) = validate::first_duplicate(&config.tls_trusted_certificates, |c| c) {
        return Err(format!(
            "tls_trusted_certificates {i}: duplicate of certificate {j}"
        ));
    }
    Ok(())
}

// --- bring-up --------------------------------------------------------------------------

fn satellite_toml(config: &Config) -> String {
    let (kind, address, port) = config.netcom();
    let mut out =
        format!("[netcom]\n  type = \"{kind}\"\n  bind_address = \"{address}\"\n  port = {port}\n");
    if config.is_tls() {
        out.push_str(TLS_SETTINGS);
    }
    out
}

impl Service for Linstor {
    const NAME: &'static str = "linstor";
    const START_WEIGHT: i32 = 30;
    const PATHS: &'static [&'static str] = &[LINSTOR_DIR, DRBD_CONF, DRBD_DIR];
    const MULTI_LINE_FIELDS: &'static [&'static str] = &PEM_FIELDS;
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

    fn enabled(config: &Config) -> bool {
        config.enabled
    }

    /// Upstream's Start for an enabled config, journaled in `undo`.
    fn bring_up(&self, undo: &mut Undo, config: &Config) -> Result<()> {
        undo.remove(LINSTOR_DIR)?;
        undo.create_dir(LINSTOR_DIR, 0o700)?;
        undo.write_file(SATELLITE_TOML, satellite_toml(config).as_bytes(), 0o600)?;
        if config.is_tls() {
            let trusted = config.tls_trusted_certificates.join("\n");
            undo.write_file(SERVER_CRT, config.tls_server_certificate.as_bytes(), 0o600)?;
            undo.write_file(SERVER_KEY, config.tls_server_key.as_bytes(), 0o600)?;
            undo.write_file(TRUSTED_CRT, trusted.as_bytes(), 0o600)?;
            // The keystores land in the freshly created /etc/linstor: a rollback removes
            // them with it.
            for argv in KEYSTORE_COMMANDS {
                self.host.run_ok(argv, KEYSTORE_TIMEOUT)?;
            }
        }
        undo.create_dir(DRBD_DIR, 0o755)?;
        undo.write_file(DRBD_CONF, DRBD_CONF_CONTENT.as_bytes(), 0o644)?;
        undo.start_unit(SATELLITE)
    }

    /// Stops the satellite (a rollback starts it again).
    fn take_down(&self, undo: &mut Undo, _config: &Config) -> Result<()> {
        undo.stop_unit(SATELLITE)
    }

    /// Shutdown stops the satellite, with nothing to put back.
    fn stop(&self, _undo: &mut Undo, config: &Config) -> Result<()> {
        if !config.enabled {
            return Ok(());
        }
        self.host.stop_unit(SATELLITE)
    }
}

plugin_api::export_service!(Linstor);
