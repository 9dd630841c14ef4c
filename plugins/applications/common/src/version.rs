//! Friendly versions: what a user recognizes, from the application's own binary.

use plugin_api::application::AppContext;
use plugin_api::{Error, Host, Result};

use crate::COMMAND_TIMEOUT;

/// The first line `argv` prints (`incus --version` prints `7.0.0`), trimmed; an error when
/// it fails or prints nothing.
pub fn command_version(host: &Host, argv: &[&str]) -> Result<String> {
    let out = host.run_ok(argv, COMMAND_TIMEOUT)?;
    let line = out.lines().map(str::trim).find(|l| !l.is_empty());
    line.map(str::to_string)
        .ok_or_else(|| Error::internal(format!("{} printed no version", argv.join(" "))))
}

/// `<friendly> [<image version>]`, or the friendly version alone when no image is active.
pub fn with_image_version(friendly: &str, image_version: &str) -> String {
    if image_version.is_empty() {
        friendly.to_string()
    } else {
        format!("{friendly} [{image_version}]")
    }
}

/// The friendly version of an install, as `read` gives it; empty (the host then shows the
/// image version) when no image is active (the binary is not merged), or when `read`
/// fails, which is logged as a warning: a GET does not fail over it.
pub fn friendly_or_empty(
    host: &Host,
    ctx: &AppContext,
    read: impl FnOnce() -> Result<String>,
) -> String {
    if ctx.version.is_empty() {
        return String::new();
    }
    match read() {
        Ok(v) => v,
        Err(e) => {
            host.warn(&format!("cannot read the friendly version: {}", e.message));
            String::new()
        }
    }
}
