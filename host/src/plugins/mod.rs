//! Plugin loading, the registry of loaded plugins, lifecycle and dispatch.

pub mod loader;
