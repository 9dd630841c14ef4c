//! The seed files' shapes (upstream's field names). Every seed has a `version` string.
//! Seeds that carry an API configuration "inline" (network, security, update) keep it in
//! `config`; the others are plain structs. Decoding is strict (see [`super::decode`]):
//! a field these types do not name is an error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::strict;

/// A seed file's typed content.
pub trait Seed: Sized {
    /// The file's base name (`<name>.json|yaml|yml`).
    const NAME: &'static str;
    /// Decodes the file's top-level mapping; the error names the offending field.
    fn decode(map: Map<String, Value>) -> Result<Self, String>;
}

macro_rules! plain_seed {
    ($ty:ident, $name:literal) => {
        impl Seed for $ty {
            const NAME: &'static str = $name;
            fn decode(map: Map<String, Value>) -> Result<Self, String> {
                strict(Value::Object(map))
            }
        }
    };
}

macro_rules! inline_seed {
    ($ty:ident, $name:literal, $config:ty) => {
        #[doc = concat!("The `", $name, "` seed: the API configuration inline, and `version`.")]
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $ty {
            pub version: String,
            pub config: $config,
        }

        impl Seed for $ty {
            const NAME: &'static str = $name;
            fn decode(mut map: Map<String, Value>) -> Result<Self, String> {
                let version = match map.remove("version") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s,
                    Some(other) => {
                        return Err(format!("field 'version': expected a string, got {other}"))
                    }
                };
                Ok($ty {
                    version,
                    config: strict(Value::Object(map))?,
                })
            }
        }
    };
}

/// `install`: what an install medium does (read only to tell whether one is present).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallSeed {
    pub version: String,
    pub force_install: bool,
    pub force_install_confirmation: String,
    pub force_reboot: bool,
    pub security: Option<InstallSecurity>,
    pub target: Option<InstallTarget>,
}
plain_seed!(InstallSeed, "install");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallSecurity {
    pub missing_tpm: bool,
    pub missing_secure_boot: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallTarget {
    pub bus: String,
    pub id: String,
    pub max_size: String,
    pub min_size: String,
    pub sort_order: String,
}

/// `applications`: the applications a new system installs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplicationsSeed {
    pub version: String,
    pub applications: Vec<ApplicationEntry>,
}
plain_seed!(ApplicationsSeed, "applications");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplicationEntry {
    pub name: String,
}

/// `incus`: the Incus application's first initialization (its plugin decodes `preseed`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IncusSeed {
    pub version: String,
    pub apply_defaults: bool,
    pub preseed: Option<Value>,
}
plain_seed!(IncusSeed, "incus");

/// `kernel`: the consoles (copied into the kernel settings when those have none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelSeed {
    pub version: String,
    pub console: Vec<crate::system::kernel::Console>,
}
plain_seed!(KernelSeed, "kernel");

/// `migration-manager`: that application's first initialization.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationManagerSeed {
    pub version: String,
    pub trusted_client_certificates: Vec<String>,
    pub apply_defaults: bool,
    pub preseed: Option<MigrationManagerPreseed>,
}
plain_seed!(MigrationManagerSeed, "migration-manager");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationManagerPreseed {
    pub system_certificate: Option<Value>,
    pub system_network: Option<Value>,
    pub system_security: Option<Value>,
}

/// `operations-center`: that application's first initialization.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperationsCenterSeed {
    pub version: String,
    pub trusted_client_certificates: Vec<String>,
    pub apply_defaults: bool,
    pub preseed: Option<OperationsCenterPreseed>,
}
plain_seed!(OperationsCenterSeed, "operations-center");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperationsCenterPreseed {
    pub system_certificate: Option<Value>,
    pub system_network: Option<Value>,
    pub system_security: Option<Value>,
    pub system_updates: Option<Value>,
    pub system_settings: Option<Value>,
}

/// `provider`: the update provider and its configuration (`SystemProviderConfig` inline).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderSeed {
    pub version: String,
    pub name: String,
    pub config: Option<Value>,
}
plain_seed!(ProviderSeed, "provider");

/// `services`: each service's configuration, applied once. Ceph and LINSTOR are not
/// seedable (as upstream): naming them is an unknown field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServicesSeed {
    pub version: String,
    pub iscsi: Option<Value>,
    pub lvm: Option<Value>,
    pub multipath: Option<Value>,
    pub netbird: Option<Value>,
    pub nvme: Option<Value>,
    pub ovn: Option<Value>,
    pub tailscale: Option<Value>,
    pub usbip: Option<Value>,
}
plain_seed!(ServicesSeed, "services");

impl ServicesSeed {
    /// The seeded services, in name order.
    pub fn configs(&self) -> Vec<(&'static str, &Value)> {
        [
            ("iscsi", &self.iscsi),
            ("lvm", &self.lvm),
            ("multipath", &self.multipath),
            ("netbird", &self.netbird),
            ("nvme", &self.nvme),
            ("ovn", &self.ovn),
            ("tailscale", &self.tailscale),
            ("usbip", &self.usbip),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
        .collect()
    }
}

inline_seed!(
    NetworkSeed,
    "network",
    crate::system::network::model::SystemNetworkConfig
);
inline_seed!(
    SecuritySeed,
    "security",
    crate::system::security::SecurityConfig
);
inline_seed!(
    UpdateSeed,
    "update",
    crate::system::update::config::UpdateConfig
);

/// Upstream's refusal of recovery keys in the security seed.
pub const NO_SEEDED_RECOVERY_KEYS: &str =
    "it is not possible to set encryption recovery key(s) via the security seed";

impl SecuritySeed {
    /// The seed's own rule: recovery keys cannot be seeded.
    pub fn check(&self) -> Result<(), String> {
        if self.config.encryption_recovery_keys.is_empty() {
            Ok(())
        } else {
            Err(NO_SEEDED_RECOVERY_KEYS.to_string())
        }
    }
}
