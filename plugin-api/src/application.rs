//! The typed vocabulary between the host and an application plugin (since 1.3).
//!
//! The host owns what is common to every application: whether and which version of it is
//! installed (the image under `/var/lib/incus-os-extensions/<version>/`, the link systemd-sysext
//! merges), the primary rule, dependencies, the choice of version after an update or a
//! boot of the other slot, `initialized`, `last_restored`, and, for an application that
//! declares a [`BackupSpec`], its backups and restores. The plugin answers for its domain:
//! its config, starting and stopping, initializing, reloading after an update, wiping its
//! data, actions.
//!
//! Every application hook of 1.3 ([`crate::Hook::Get`], `Start`, `Stop`, `Restart`,
//! `Initialize`, `Reload`, `Wipe`, `Running`, `Restored`) takes an [`AppContext`] as its
//! input; `Put` and `Action` take the request body; `CanReplace` takes a [`Replace`].
//!
//! An application's `get` answers `{"state": {"friendly_version": ..}, "config": ..}`; the
//! host writes the rest of the state (`is_primary`, `initialized`, `version`,
//! `available_versions`, `last_restored`) around it, in upstream's order.

use serde::{Deserialize, Serialize};

/// What the host tells an application hook about its install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppContext {
    /// The name it is installed as: the plugin's name or one of its variants.
    pub name: String,
    /// The version (release) of the active image; empty when none is active.
    pub version: String,
    /// Whether [`crate::Hook::Initialize`] succeeded once since the install (or the last
    /// factory reset).
    pub initialized: bool,
    /// Since 1.3, with [`crate::Hook::Initialize`] only: the application's seed (the
    /// machine's `<name>.json|yaml|yml` seed file as JSON) when the machine has one the host
    /// could read; `None` otherwise. Older hosts never send it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<serde_json::Value>,
}

/// The input of [`crate::Hook::CanReplace`]: may `from` give way to the variant `to`?
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Replace {
    /// The installed variant.
    pub from: AppContext,
    /// The variant asked for.
    pub to: String,
}

/// The answer of [`crate::Hook::Running`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Running {
    /// Whether the application's main unit runs.
    pub running: bool,
}

/// The `state` part of an application's `get` answer: what only the plugin knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginState {
    /// The version a user recognizes (`7.0.0 [202511041800]` for Incus); empty: the host
    /// shows the image version.
    pub friendly_version: String,
}

/// An application's data directory and what its backups leave out (the manifest's
/// `backup`). The host writes the archive (a gzip tar of `root`, see
/// `plugin_api::sdk::archive`) and restores it: extracted beside `root`, every entry
/// checked, then swapped in with `units` stopped, and started again afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    /// The directory backed up (an absolute OS path inside one of the manifest's `paths`).
    pub root: String,
    /// Names relative to `root` never backed up (prefix match: `unix.socket`, `guestapi`).
    #[serde(default)]
    pub excluded: Vec<String>,
    /// Names relative to `root` left out unless the backup is `complete` (cached
    /// artifacts).
    #[serde(default)]
    pub excluded_unless_complete: Vec<String>,
    /// Units stopped before a restore is swapped in, in this order, and started again in
    /// this order afterwards.
    #[serde(default)]
    pub units: Vec<String>,
}

impl BackupSpec {
    /// Checks the spec against the manifest's writable `paths`.
    pub fn validate(&self, paths: &[String]) -> Result<(), String> {
        let root = self.root.trim_end_matches('/');
        let plain = |p: &str| !p.split('/').any(|c| c == ".." || c == ".");
        if !root.starts_with('/') || root.is_empty() || !plain(root) {
            return Err(format!(
                "backup root {:?} must be an absolute path without '.' or '..'",
                self.root
            ));
        }
        let inside = paths.iter().any(|p| {
            let p = p.trim_end_matches('/');
            root == p || root.starts_with(&format!("{p}/"))
        });
        if !inside {
            return Err(format!(
                "backup root {:?} is not inside the plugin's paths",
                self.root
            ));
        }
        for e in self.excluded.iter().chain(&self.excluded_unless_complete) {
            if e.is_empty() || e.starts_with('/') || !plain(e) {
                return Err(format!(
                    "backup exclusion {e:?} must be a relative name without '.' or '..'"
                ));
            }
        }
        if let Some(u) = self.units.iter().find(|u| u.is_empty() || u.contains('/')) {
            return Err(format!("backup unit {u:?} is not a unit name"));
        }
        Ok(())
    }
}

/// The error texts upstream answers with, which clients match.
pub mod errors {
    /// An application asked to do what it has no hook for.
    pub const NOT_SUPPORTED: &str = "not supported";
    /// `:remove` of the primary application.
    pub const REMOVE_PRIMARY: &str = "cannot remove a primary application";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &str) -> BackupSpec {
        BackupSpec {
            root: root.into(),
            excluded: vec!["unix.socket".into()],
            excluded_unless_complete: vec!["artifacts".into()],
            units: vec!["demo.service".into()],
        }
    }

    #[test]
    fn a_backup_root_lies_inside_the_plugins_paths() {
        let paths = vec!["/var/lib/demo".to_string()];
        spec("/var/lib/demo/").validate(&paths).unwrap();
        spec("/var/lib/demo/data").validate(&paths).unwrap();
        for bad in [
            "/var/lib/demo2",
            "/var/lib",
            "var/lib/demo",
            "/var/lib/demo/../x",
        ] {
            assert!(spec(bad).validate(&paths).is_err(), "{bad}");
        }
        let mut s = spec("/var/lib/demo");
        s.excluded.push("../etc".into());
        assert!(s.validate(&paths).unwrap_err().contains("exclusion"));
        let mut s = spec("/var/lib/demo");
        s.units.push("../x".into());
        assert!(s.validate(&paths).unwrap_err().contains("unit"));
    }

    #[test]
    fn contexts_decode_from_nothing() {
        assert_eq!(
            serde_json::from_str::<AppContext>("{}").unwrap(),
            AppContext::default()
        );
        let r: Replace =
            serde_json::from_str(r#"{"from":{"name":"incus","version":"1"},"to":"x"}"#).unwrap();
        assert_eq!(r.from.name, "incus");
        assert_eq!(r.to, "x");
    }
}
