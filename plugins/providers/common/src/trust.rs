//! The certificates a signed index is checked against.
//!
//! Upstream builds its root CA and update CA into the daemon. This daemon is built apart
//! from the OS image, so the image ships them as files ([`ROOT_CA_PATH`],
//! [`UPDATE_CA_PATH`]); the `update_ca` config key replaces the update CA, as upstream's
//! does. Without the files (and without `update_ca`), a lookup says which file is missing.

use plugin_api::{Error, Host, Result};

/// The root CA every index signature must chain to.
pub const ROOT_CA_PATH: &str = "/usr/lib/incus-osd/certs/update-root-ca.pem";
/// The update CA (the intermediate) an index must be signed through, unless `update_ca`
/// is configured.
pub const UPDATE_CA_PATH: &str = "/usr/lib/incus-osd/certs/update-ca.pem";
/// The support CA (an intermediate under the same root) that signs debug scripts
/// (`POST /1.0/debug/:run-script`, a recovery volume's `hotfix.sh.sig`); the daemon reads it.
pub const SUPPORT_CA_PATH: &str = "/usr/lib/incus-osd/certs/support-ca.pem";

/// The root CA and the expected intermediate, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub root_ca: String,
    pub update_ca: String,
}

impl Trust {
    /// The shipped root CA, with `update_ca` (when not empty) or the shipped update CA.
    pub fn load(host: &Host, update_ca: &str) -> Result<Trust> {
        let read = |path: &str| -> Result<String> {
            match host.read_to_string(path)? {
                Some(text) if !text.trim().is_empty() => Ok(text),
                _ => Err(Error::internal(format!(
                    "cannot verify the update index: {path} is missing"
                ))),
            }
        };
        let root_ca = read(ROOT_CA_PATH)?;
        let update_ca = if update_ca.trim().is_empty() {
            read(UPDATE_CA_PATH)?
        } else {
            update_ca.to_string()
        };
        Ok(Trust { root_ca, update_ca })
    }
}
