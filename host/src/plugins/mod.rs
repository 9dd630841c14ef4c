//! Plugin loading, the registry of loaded plugins, lifecycle and dispatch.

pub mod host_impl;
pub mod loader;
pub mod registry;

pub use registry::{CallError, LoadFailure, Plugin, Registry, Timeouts};
