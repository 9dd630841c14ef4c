//! `/1.0/system/storage` on the wire: upstream's field names, and its rule that unset
//! optional fields are left out.

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemStorage {
    #[serde(default)]
    pub config: StorageConfig,
    #[serde(default)]
    pub state: StorageState,
}

/// The stored part is `scrub_schedule`; `pools` is input only (never stored, never shown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageConfig {
    #[serde(default)]
    pub scrub_schedule: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<Pool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageState {
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub root_partition: RootPartition,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPartition {
    pub size_in_bytes: i64,
    pub available_in_bytes: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drive {
    pub id: String,
    pub model_family: String,
    pub model_name: String,
    pub serial_number: String,
    pub bus: String,
    pub capacity_in_bytes: i64,
    pub boot: bool,
    pub multipath: bool,
    pub removable: bool,
    pub remote: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<Smart>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub member_pool: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub encrypted_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smart {
    pub enabled: bool,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub power_on_hours: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub data_units_read: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub data_units_written: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_spare: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub percentage_used: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub raw_read_error_rate: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seek_error_rate: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reallocated_sectors: i64,
}

/// A pool: what a PUT asks for (name, type, devices and their classes) and, read back,
/// what it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_mixed_dev_sizes: bool,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<Special>,
    // Read only.
    #[serde(default)]
    pub managed: bool,
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub: Option<ScrubStatus>,
    #[serde(default)]
    pub encryption_key_status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices_degraded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_degraded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_degraded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub special_degraded: Vec<String>,
    #[serde(default)]
    pub raw_pool_size_in_bytes: i64,
    #[serde(default)]
    pub usable_pool_size_in_bytes: i64,
    #[serde(default)]
    pub pool_allocated_space_in_bytes: i64,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Special {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub special_small_blocks_size_in_kb: i64,
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// `IN_PROGRESS`, `FINISHED` or `UNKNOWN`.
    pub state: String,
    #[serde(with = "crate::system::update::config::go_time")]
    pub start_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    #[serde(with = "crate::system::update::config::go_time")]
    pub end_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// `"99.81%"`.
    pub progress: String,
    pub errors: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub usage_in_bytes: i64,
    pub quota_in_bytes: i64,
    #[serde(rename = "use")]
    pub usage: String,
}
