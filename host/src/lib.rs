//! incus-osd: the Incus OS management daemon as a library; `main.rs` is a thin binary.

pub mod api;
pub mod daemon;
pub mod lifecycle;
pub mod logging;
pub mod platform;
pub mod plugins;
pub mod state;
pub mod system;
pub mod testing;
