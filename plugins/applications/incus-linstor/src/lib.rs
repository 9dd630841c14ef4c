//! The `incus-linstor` application: the LINSTOR satellite for Incus, for the `linstor`
//! service (listed only while this application is installed). It needs `incus`.
//!
//! No lifecycle hook (the `linstor` service runs the satellite), no backup, no wipe
//! (`:backup`, `:restore` and `:factory-reset` answer `not supported`, as upstream's). The
//! config is `{}`.
//!
//! Friendly version: the satellite's own version, from the last line of
//! `Satellite --version` (`LINSTOR Satellite <version> ...`), with the image version:
//! `1.31.0 [202511041800]`. When it cannot be read, a warning is logged and the host shows
//! the image version.

use incus_osd_application_common::version::with_image_version;
use incus_osd_application_common::COMMAND_TIMEOUT;
use plugin_api::application::AppContext;
use plugin_api::{Application, Error, Host, Result};
use serde::{Deserialize, Serialize};

/// The satellite's launcher, which prints its version.
pub const SATELLITE: &str = "/usr/share/linstor-server/bin/Satellite";

/// The config: no keys (anything else is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct IncusLinstor {
    host: Host,
}

/// The version in `Satellite --version`'s output: the third word of its last line, which
/// starts with `LINSTOR Satellite `.
pub fn satellite_version(output: &str) -> Option<&str> {
    let last = output.lines().rev().find(|l| !l.trim().is_empty())?;
    last.strip_prefix("LINSTOR Satellite ")?
        .split_whitespace()
        .next()
}

impl IncusLinstor {
    fn linstor_version(&self) -> Result<String> {
        let out = self
            .host
            .run_ok(&[SATELLITE, "--version"], COMMAND_TIMEOUT)?;
        satellite_version(&out)
            .map(str::to_string)
            .ok_or_else(|| Error::internal("unable to determine the LINSTOR version"))
    }
}

impl Application for IncusLinstor {
    const NAME: &'static str = "incus-linstor";
    /// Before the primary application, as upstream's.
    const START_WEIGHT: i32 = -1;
    const DEPENDENCIES: &'static [&'static str] = &["incus"];

    type Config = Config;

    fn new(host: Host) -> Result<Self> {
        Ok(IncusLinstor { host })
    }

    fn friendly_version(&self, ctx: &AppContext, _config: &Config) -> Result<String> {
        match self.linstor_version() {
            Ok(v) => Ok(with_image_version(&v, &ctx.version)),
            Err(e) => {
                self.host
                    .warn(&format!("Cannot read the LINSTOR version: {}", e.message));
                Ok(String::new())
            }
        }
    }
}

plugin_api::export_application!(IncusLinstor);
