//! The fallback HTTPS listener: a way into the API over the network when the primary
//! application (whose own listener normally proxies `/os/*`) cannot serve it.
//!
//! - It starts when the system booted from the backup image, or when the primary
//!   application failed to start (see [`booted_from_backup`]).
//! - It listens on `config.listen_address` (an `IP:port`), or on every address at a random
//!   port when that is empty; the address is logged.
//! - TLS 1.2 or 1.3 with a client certificate required; a connection is served only when
//!   the SHA-256 of the client's leaf certificate equals that of one of
//!   `config.trusted_client_certificates` (read on every connection, so a PUT applies at
//!   once). Expired certificates are refused.
//! - Requests are handled as the application proxy's: the `X-IncusOS-Proxy` header is set
//!   to `/os` (so returned URLs carry `/os` and `/internal/*` is refused) and a leading `/os`
//!   is removed from the path.
//! - The server certificate is a self-signed one the daemon makes once and keeps in
//!   `var/lib/incus-os/fallback.{crt,key}` (applications do not expose theirs to the host).

pub mod listener;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `config` of `/1.0/system/fallback-listener` (persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackConfig {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub listen_address: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_client_certificates: Vec<String>,
}

/// What the state document keeps (the `active` state lives in memory only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackDoc {
    pub config: FallbackConfig,
}

/// Checks a configuration as upstream does; the error is the 400 text.
pub fn validate(config: &FallbackConfig) -> Result<(), String> {
    if !config.listen_address.is_empty() {
        config
            .listen_address
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("invalid listen address: {e}"))?;
    }
    if config.trusted_client_certificates.is_empty() {
        return Err("at least one trusted client TLS certificate must be defined".into());
    }
    for (i, pem) in config.trusted_client_certificates.iter().enumerate() {
        cert_der(pem).map_err(|e| match e {
            CertError::NotPem => format!("certificate at index {i} is not PEM-encoded"),
            CertError::Invalid(e) => format!("certificate at index {i} is not valid: {e}"),
        })?;
    }
    Ok(())
}

enum CertError {
    NotPem,
    Invalid(String),
}

/// The DER of the first PEM `CERTIFICATE` block of `pem`, checked to be X.509.
fn cert_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| CertError::NotPem)?;
    if block.label != "CERTIFICATE" {
        return Err(CertError::NotPem);
    }
    block
        .parse_x509()
        .map_err(|e| CertError::Invalid(e.to_string()))?;
    Ok(block.contents)
}

/// Whether the client certificate `der` is one of `trusted` (PEM; entries that do not
/// parse are skipped), compared by SHA-256.
pub fn is_trusted(der: &[u8], trusted: &[String]) -> bool {
    let fp = Sha256::digest(der);
    trusted
        .iter()
        .filter_map(|p| cert_der(p).ok())
        .any(|d| Sha256::digest(&d) == fp)
}

/// Whether the system runs from the backup image: an update is staged as the next boot's
/// release and this boot runs another one.
pub fn booted_from_backup(running_release: &str, next_release: &str) -> bool {
    !next_release.is_empty() && running_release != next_release
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_boot_needs_a_next_release_other_than_the_running_one() {
        assert!(booted_from_backup("202501010000", "202502010000"));
        assert!(!booted_from_backup("202502010000", "202502010000"));
        assert!(!booted_from_backup("202502010000", ""));
    }
}
