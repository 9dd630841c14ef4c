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
//!
//! # Example
//!
//! The README's example plugin (kept in step with it by this doctest):
//!
//! ```no_run
//! use plugin_api::sdk::{is_active, Error, Host, Result, Undo};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Default, Clone)]
//! #[serde(default)]
//! pub struct Config { enabled: bool, address: String }
//!
//! #[derive(Serialize)]
//! pub struct State { running: bool }
//!
//! pub struct Demo { host: Host }
//!
//! impl plugin_api::Service for Demo {
//!     const NAME: &'static str = "demo";
//!     const PATHS: &'static [&'static str] = &["/etc/demo"];
//!     type Config = Config;
//!     type State = State;
//!
//!     fn new(host: Host) -> Result<Self> { Ok(Demo { host }) }
//!     fn state(&self, _: &Config) -> Result<State> {
//!         Ok(State { running: is_active(&self.host.unit_active_state("demo.service")?) })
//!     }
//!     fn enabled(c: &Config) -> bool { c.enabled }
//!     fn validate(&self, c: &Config) -> Result<()> {
//!         if c.enabled && c.address.is_empty() {
//!             return Err(Error::bad_request("an address is required"));
//!         }
//!         Ok(())
//!     }
//!     // Enabling, disabling, changes, boot start and shutdown are built from these two.
//!     // Through `undo`, a failure (or a failed save of the config) puts the file and the
//!     // unit back as they were.
//!     fn bring_up(&self, undo: &mut Undo, c: &Config) -> Result<()> {
//!         undo.write_file("/etc/demo/demo.conf", c.address.as_bytes(), 0o600)?;
//!         undo.restart_unit("demo.service")
//!     }
//!     fn take_down(&self, undo: &mut Undo, _: &Config) -> Result<()> {
//!         undo.stop_unit("demo.service")
//!     }
//! }
//!
//! plugin_api::export_service!(Demo);
//! # fn main() {}
//! ```

#![warn(missing_docs)]

pub mod abi;
pub mod application;
mod helpers;
pub mod manifest;
pub mod net;
pub mod provider;
pub mod sdk;
mod undo;
pub mod validate;
pub mod version;

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use serde_json;
}

pub use manifest::{Call, Hook, Kind, Manifest, Method, Route, RouteRequest};
pub use sdk::{Application, Error, Host, Provider, Result, Service, Undo};
pub use version::API_VERSION;
