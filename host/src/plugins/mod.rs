//! Plugin loading, the registry of loaded plugins, lifecycle and dispatch.

pub mod cache;
pub mod host;
pub mod registry;

/// Loading plugin libraries (shared with the plugin harness).
pub use plugin_host::loader;

pub use registry::{
    CallError, LoadFailure, Plugin, Registry, Run, Timeouts, MAX_CHANGES, MAX_READS,
};
