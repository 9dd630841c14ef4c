//! The only code that touches the OS: files under the root prefix, systemd, commands.

pub mod files;
