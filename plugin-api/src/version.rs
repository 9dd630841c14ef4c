//! The plugin-api version and the host's compatibility rule.
//!
//! This crate's semver is the contract's version, independent of the daemon's release
//! number. The host accepts a plugin built for the same major version and an equal or
//! lower minor version: a plugin may not rely on host capabilities newer than the host.

use semver::Version;

/// The plugin-api version this crate implements (the crate's own version).
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Name of the C symbol (a `extern "C" fn() -> *const c_char`) that every plugin exports
/// with the plugin-api version it was built against. It is read before any abi_stable
/// check, so a plugin for another major version gets a clear refusal even when its root
/// module's layout has changed.
pub const VERSION_SYMBOL: &str = "incus_osd_plugin_api_version";

/// Why a plugin's declared plugin-api version is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// The string is not a semver version.
    Unparsable {
        /// What the plugin declared.
        found: String,
    },
    /// Another major version.
    OtherMajor {
        /// The host's version.
        expected: String,
        /// The plugin's version.
        found: String,
    },
    /// Same major, newer minor than the host.
    NewerMinor {
        /// The host's version.
        expected: String,
        /// The plugin's version.
        found: String,
    },
}

impl std::fmt::Display for VersionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionError::Unparsable { found } => {
                write!(f, "plugin-api version {found:?} is not a semver version")
            }
            VersionError::OtherMajor { expected, found } => write!(
                f,
                "plugin-api major version mismatch: host provides {expected}, plugin built for {found}"
            ),
            VersionError::NewerMinor { expected, found } => write!(
                f,
                "plugin-api version too new: host provides {expected}, plugin built for {found} (needs host capabilities this daemon lacks)"
            ),
        }
    }
}

impl std::error::Error for VersionError {}

/// Checks a plugin's declared plugin-api version against `host` (normally [`API_VERSION`]).
pub fn check_compatible(host: &str, plugin: &str) -> Result<Version, VersionError> {
    let host_v = Version::parse(host).expect("host API version is valid semver");
    let plugin_v = Version::parse(plugin.trim()).map_err(|_| VersionError::Unparsable {
        found: plugin.to_string(),
    })?;
    if plugin_v.major != host_v.major {
        return Err(VersionError::OtherMajor {
            expected: host.to_string(),
            found: plugin_v.to_string(),
        });
    }
    if plugin_v.minor > host_v.minor {
        return Err(VersionError::NewerMinor {
            expected: host.to_string(),
            found: plugin_v.to_string(),
        });
    }
    Ok(plugin_v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_lower_or_equal_minor_is_accepted() {
        assert!(check_compatible("1.3.0", "1.3.0").is_ok());
        assert!(check_compatible("1.3.0", "1.0.7").is_ok());
        assert!(check_compatible("1.3.0", "1.3.9").is_ok());
    }

    /// abi_stable treats every `0.x` minor version as breaking, in its version check of the
    /// root module and in the package version of each type: the contract could not grow
    /// in a minor version below 1.0.
    #[test]
    fn the_contract_is_past_0_x() {
        assert!(Version::parse(API_VERSION).unwrap().major >= 1);
    }

    #[test]
    fn newer_minor_and_other_major_are_refused() {
        assert!(matches!(
            check_compatible("1.3.0", "1.4.0"),
            Err(VersionError::NewerMinor { .. })
        ));
        assert!(matches!(
            check_compatible("1.3.0", "2.0.0"),
            Err(VersionError::OtherMajor { .. })
        ));
        assert!(matches!(
            check_compatible("1.3.0", "0.9.0"),
            Err(VersionError::OtherMajor { .. })
        ));
        assert!(matches!(
            check_compatible("1.3.0", "banana"),
            Err(VersionError::Unparsable { .. })
        ));
    }
}
