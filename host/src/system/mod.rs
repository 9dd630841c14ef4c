//! The OS subsystems as plain Rust: they decide; the platform layer touches the OS.

pub mod info;
