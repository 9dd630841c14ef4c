//! Drives and ZFS pools (`/1.0/system/storage`).

pub mod drives;
pub mod model;
pub mod pools;
pub mod zpool;
