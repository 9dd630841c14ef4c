//! The typed vocabulary between the host's update engine and an update provider (since
//! 1.2): what the host asks ([`UpdateContext`], [`RefreshCause`], [`FetchOrder`]) and what a
//! provider answers ([`Release`], [`ReleaseFile`]). Everything crosses `invoke` as JSON,
//! under the operation names of the provider hooks ([`crate::Hook`]).
//!
//! A provider finds and fetches; the host decides. Version rules (no downgrade, the bad
//! next release), free space, staging and reboots belong to the host.

use serde::{Deserialize, Serialize};

/// What every provider operation gets from the host: who is asking and what they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateContext {
    /// The configured update channel (`stable`, `testing`, or one the provider defines).
    pub channel: String,
    /// The machine's architecture as release files name it (`x86_64`, `aarch64`).
    pub architecture: String,
    /// The OS name (`IncusOS`), for the `User-Agent` and file names.
    pub os_name: String,
    /// The OS release running now (12 digits), empty when unknown.
    pub running_version: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// The machine's host name.
    pub hostname: String,
    /// Since 1.3. The addresses of the network devices with the `management` role (as
    /// `GET /1.0/system/network` shows them: configured, else the routable ones), IPv4
    /// first; empty when the host manages no network or knows none. An older host leaves
    /// it out (empty).
    pub management_addresses: Vec<String>,
}

/// Why the host asks a provider to refresh its registration. The wire names are
/// Operations Center's `ServerSelfUpdateCause` values (the default one is empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefreshCause {
    /// No particular event.
    #[default]
    #[serde(rename = "")]
    Default,
    /// The daemon finished starting.
    #[serde(rename = "system-is-ready")]
    SystemIsReady,
    /// A reboot was requested.
    #[serde(rename = "system-reboot-triggered")]
    SystemRebootTriggered,
    /// A power-off was requested.
    #[serde(rename = "system-shutdown-triggered")]
    ShutdownTriggered,
    /// An OS update was staged.
    #[serde(rename = "os-update-applied")]
    OsUpdateApplied,
    /// An application update was installed.
    #[serde(rename = "application-update-applied")]
    ApplicationUpdateApplied,
    /// The network configuration changed.
    #[serde(rename = "network-config-changed")]
    NetworkConfigChanged,
    /// The storage configuration changed.
    #[serde(rename = "storage-config-changed")]
    StorageConfigChanged,
}

impl RefreshCause {
    /// The wire name (empty for [`RefreshCause::Default`]).
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshCause::Default => "",
            RefreshCause::SystemIsReady => "system-is-ready",
            RefreshCause::SystemRebootTriggered => "system-reboot-triggered",
            RefreshCause::ShutdownTriggered => "system-shutdown-triggered",
            RefreshCause::OsUpdateApplied => "os-update-applied",
            RefreshCause::ApplicationUpdateApplied => "application-update-applied",
            RefreshCause::NetworkConfigChanged => "network-config-changed",
            RefreshCause::StorageConfigChanged => "storage-config-changed",
        }
    }
}

/// One file of a release, as upstream's update index lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseFile {
    /// `""` (any), `x86_64` or `aarch64`.
    pub architecture: String,
    /// `os`, `debug`, `incus`, ... (what the file belongs to).
    pub component: String,
    /// Path relative to the release directory, e.g. `x86_64/IncusOS_202601010000.efi.gz`.
    pub filename: String,
    /// SHA-256 of the file as served (compressed), lower-case hex.
    pub sha256: String,
    /// Size as served, in bytes.
    pub size: u64,
    /// `image-raw`, `update-efi`, `update-usr`, `update-usr-verity`,
    /// `update-usr-verity-signature`, `update-secureboot`, `application`, ...
    #[serde(rename = "type")]
    pub file_type: String,
}

impl ReleaseFile {
    /// The file's base name (after the last `/`).
    pub fn base_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }

    /// The name it gets on disk: the base name without a `.gz` suffix.
    pub fn target_name(&self) -> &str {
        let base = self.base_name();
        base.strip_suffix(".gz").unwrap_or(base)
    }
}

/// What a provider offers: one release (of the OS, an application or the Secure Boot keys)
/// with the files that make it up, already narrowed to this machine's architecture and to
/// what was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Release {
    /// The release's version (12 digits upstream: `YYYYMMDDhhmm`).
    pub version: String,
    /// `none`, `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// When it was published (RFC 3339), when the provider knows.
    pub published_at: String,
    /// The files to fetch.
    pub files: Vec<ReleaseFile>,
}

/// What an update lookup is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum Target {
    /// The OS itself.
    Os,
    /// An application, by name.
    Application(String),
    /// Secure Boot key updates (KEK, db, dbx).
    SecureBoot,
}

/// The input of the `lookup` operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// Who asks.
    pub context: UpdateContext,
    /// What for.
    pub target: Target,
}

/// The output of the `lookup` operation: the newest release for the channel, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LookupResult {
    /// The release on offer, `None` when there is nothing for this target and channel.
    pub release: Option<Release>,
}

/// The input of the `fetch` operation: bring `files` of `release` into `target_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchOrder {
    /// Who asks.
    pub context: UpdateContext,
    /// What the release is for (as looked up).
    pub target: Target,
    /// The release, as `lookup` returned it.
    pub release: Release,
    /// Absolute OS directory the files go to, each as [`ReleaseFile::target_name`]. The
    /// host has created it.
    pub target_dir: String,
}

/// The output of the `fetch` operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FetchResult {
    /// The absolute OS paths written.
    pub written: Vec<String>,
}

/// The input of the `register`, `refresh` and `deregister` operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Registration {
    /// Who asks.
    pub context: UpdateContext,
    /// Why (for `refresh`).
    pub cause: RefreshCause,
}

/// Error texts the host recognizes in provider errors, as upstream words them.
pub mod errors {
    /// The provider has no registration step (the host goes on as if registered).
    pub const REGISTRATION_UNSUPPORTED: &str = "registration unsupported";
    /// The provider cannot be left (switching away from it is refused).
    pub const DEREGISTRATION_UNSUPPORTED: &str = "deregistration unsupported";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_use_operations_centers_wire_names() {
        for (cause, name) in [
            (RefreshCause::Default, "\"\""),
            (RefreshCause::SystemIsReady, "\"system-is-ready\""),
            (
                RefreshCause::ShutdownTriggered,
                "\"system-shutdown-triggered\"",
            ),
            (
                RefreshCause::StorageConfigChanged,
                "\"storage-config-changed\"",
            ),
        ] {
            assert_eq!(serde_json::to_string(&cause).unwrap(), name);
            assert_eq!(format!("\"{}\"", cause.as_str()), name);
            let back: RefreshCause = serde_json::from_str(name).unwrap();
            assert_eq!(back, cause);
        }
    }

    #[test]
    fn targets_and_files_have_stable_json() {
        let t = Target::Application("incus".into());
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"kind":"application","name":"incus"}"#
        );
        assert_eq!(
            serde_json::to_string(&Target::Os).unwrap(),
            r#"{"kind":"os"}"#
        );
        let f: ReleaseFile = serde_json::from_str(
            r#"{"filename":"x86_64/IncusOS_1.efi.gz","type":"update-efi","size":3}"#,
        )
        .unwrap();
        assert_eq!(f.base_name(), "IncusOS_1.efi.gz");
        assert_eq!(f.target_name(), "IncusOS_1.efi");
        assert_eq!(f.file_type, "update-efi");
    }
}
