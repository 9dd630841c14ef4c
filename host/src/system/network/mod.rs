//! The network subsystem (`/1.0/system/network`): the model, its validation, and the text of
//! every file and ruleset an apply writes, all as pure functions; the confirm/rollback state
//! machine; the OS calls live in `platform/`. See docs/network.md.

pub mod apply;
pub mod confirm;
pub mod files;
pub mod firewall;
pub mod model;
pub mod proxy;
pub mod service;
pub mod validate;
pub mod wgdump;
