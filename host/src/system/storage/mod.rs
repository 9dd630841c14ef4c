//! Drives and ZFS pools (`/1.0/system/storage`).

pub mod cron;
pub mod drives;
pub mod model;
pub mod pools;
pub mod service;
pub mod wipe;
pub mod zpool;
