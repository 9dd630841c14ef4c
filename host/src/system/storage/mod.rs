//! Drives and ZFS pools (`/1.0/system/storage`).

pub mod actions;
pub mod cron;
pub mod drives;
pub mod model;
pub mod pools;
pub mod runtime;
pub mod service;
pub mod wipe;
pub mod zpool;

use serde::{Deserialize, Serialize};

/// What the state document keeps of storage: the scrub schedule only (pools live on the
/// disks, and a PUT's `pools` are never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageDoc {
    pub scrub_schedule: String,
}

impl Default for StorageDoc {
    fn default() -> Self {
        StorageDoc {
            scrub_schedule: cron::DEFAULT_SCRUB_SCHEDULE.to_string(),
        }
    }
}
