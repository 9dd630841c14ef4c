//! What the daemon and the per-plugin test harness share, without the daemon's HTTP and
//! D-Bus stack:
//!
//! - [`loader`]: opening a plugin library and checking it, layer by layer;
//! - [`files`]: file access under the root prefix ([`files::RootFs`]) and atomic writes;
//! - [`exec`]: running commands with a timeout ([`exec::Commands`]);
//! - [`units`]: systemd unit operations as plugins use them ([`units::Units`]);
//! - [`app_backup`]: backups of an application that declares its data directory;
//! - [`host_ops`]: the one implementation of the plugin ABI's `HostOps`, over those
//!   adapters plus a state slot and a log sink.
//!
//! The daemon plugs in its real adapters (systemd over D-Bus, its state store, `tracing`);
//! the harness plugs in recording ones. Everything a plugin can ask of its host is decided
//! here once: unit-name checks, the write allow-list, error texts.

pub mod app_backup;
#[cfg(any(test, feature = "test-support"))]
pub mod crash;
pub mod exec;
pub mod files;
pub mod host_ops;
pub mod loader;
pub mod net;
pub mod random;
mod sys;
pub mod units;

pub use host_ops::{state_key, Adapters, Files, LogSink, PluginHost, StateSlot, TracingLog};

/// Failure of a platform operation, with a message meant for the API's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlatformError(pub String);
