//! The OS subsystems as plain Rust: they decide; the platform layer touches the OS.

pub mod agent;
pub mod applications;
pub mod backup;
pub mod debug;
pub mod fallback;
pub mod host;
pub mod info;
pub mod kernel;
pub mod logging;
pub mod network;
pub mod provider;
pub mod recovery;
pub mod resources;
pub mod script;
pub mod security;
pub mod seed;
pub mod storage;
pub mod update;
