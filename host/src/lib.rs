//! incus-osd: the Incus OS management daemon as a library; `main.rs` is a thin binary.

pub mod api;
pub mod daemon;
pub mod go;
pub mod lifecycle;
pub mod logging;
pub mod platform;
pub mod plugins;
pub mod state;
pub mod system;
/// The test-app builder for router tests: only in test builds (this crate's unit tests,
/// or the `testing` feature its integration tests turn on), never in the daemon.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
