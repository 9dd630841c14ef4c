//! The update engine's decisions (`/1.0/system/update`): the configuration and its
//! validation ([`config`]), when to check ([`schedule`]), and which offered version to take
//! ([`versions`]). Plain Rust without I/O: the runner that talks to the provider, the disk
//! and the clock calls these.

pub mod config;
pub mod schedule;
pub mod versions;
