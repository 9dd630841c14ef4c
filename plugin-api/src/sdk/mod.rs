//! The safe SDK: what a plugin author writes against.
//!
//! Implement [`Service`], [`Application`] or [`Provider`] on a plain Rust type, then export
//! it with one macro. Every optional hook has a "not supported" default, config and state
//! are typed through serde, and the SDK owns persistence, request decoding and error
//! rendering. Panics in any hook become errors, never aborts.

mod adapters;
pub mod archive;
mod error;
mod export;
mod host;
mod traits;

pub use crate::helpers::{nullable, retry};
pub use crate::manifest::{Method, RouteRequest};
pub use crate::undo::{is_active, Undo};

#[doc(hidden)]
pub use adapters::{__application_instance, __guard, __provider_instance, __service_instance};
pub use adapters::{decode, decode_or_default};
pub use error::{Error, Result, NOT_SUPPORTED, PANIC_PREFIX, RESET_NOT_SUPPORTED};
#[doc(hidden)]
pub use export::{
    __RBox, __application_manifest, __bundle_manifest, __instantiate, __manifest_json,
    __no_plugins, __provider_manifest, __service_manifest,
};
pub use host::{Arg, Host, Output};
pub use traits::{
    ActionFn, Application, Backup, CanReplaceFn, Provider, ResetFn, RouteSpec, Service,
    StreamingBackup, WipeFn, PROVIDER_PATHS,
};
