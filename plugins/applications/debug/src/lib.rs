//! The `debug` application: a bundle of tools for looking into a running machine (htop,
//! tcpdump, strace, jq, sqlite3, ...), merged into `/usr` as any application image.
//!
//! It has nothing to run and no data: no lifecycle hook, no backup, no wipe (`:backup`,
//! `:restore` and `:factory-reset` answer `not supported`, as upstream's). Its friendly
//! version is the image version (the host's default). The config is `{}`.

use plugin_api::{Application, Host, Result};
use serde::{Deserialize, Serialize};

/// The config: no keys (anything else is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct Debug;

impl Application for Debug {
    const NAME: &'static str = "debug";
    /// Before the primary application, as upstream's.
    const START_WEIGHT: i32 = -1;

    type Config = Config;

    fn new(_host: Host) -> Result<Self> {
        Ok(Debug)
    }
}

plugin_api::export_application!(Debug);
