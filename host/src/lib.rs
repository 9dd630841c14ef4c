//! incus-osd: the Incus OS management daemon as a library; `main.rs` is a thin binary.

pub mod platform;
pub mod plugins;
