//! The incus-osd plugin contract and the SDK plugin authors write against.
//!
//! A plugin is a `cdylib` that exports one abi_stable root module ([`abi::PluginModule`])
//! plus a plain C symbol carrying the plugin-api version it was built for. Everything that
//! crosses the boundary is data: a JSON manifest, JSON request/response bytes for
//! [`abi::PluginOps::invoke`], and byte chunks for streamed backup and restore.
//!
//! Authors do not touch the ABI: they implement [`sdk::Service`], [`sdk::Application`] or
//! [`sdk::Provider`] and call [`export_service!`], [`export_application!`] or
//! [`export_provider!`].

pub mod abi;
pub mod manifest;
pub mod sdk;
mod undo;
pub mod validate;
pub mod version;

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use serde_json;
}

pub use manifest::{Hook, Kind, Manifest, Route};
pub use sdk::{Application, Error, Host, Provider, Result, Service, Undo};
pub use version::API_VERSION;
