//! The `incus-ceph` application: the Ceph client tools for Incus, for the `ceph` service
//! (listed only while this application is installed). It needs `incus`.
//!
//! No lifecycle hook, no backup, no wipe (`:backup`, `:restore` and `:factory-reset`
//! answer `not supported`, as upstream's). The config is `{}`.
//!
//! Friendly version: the third word of `ceph --version` (`ceph version 19.2.1 (...)
//! squid (stable)`) with the image version: `19.2.1 [202511041800]`. When it cannot be
//! read, a warning is logged and the host shows the image version.
//!
//! Actions: upstream's `add-drive`, `refresh-images` and `remove-drive` drive the Ceph
//! containers through the local Incus API ([`osd`]). Any other action is upstream's 500
//! `unsupported action '<x>'`.

pub use incus_osd_application_common::ceph as osd;

use std::collections::BTreeMap;

use incus_osd_application_common::version::with_image_version;
use incus_osd_application_common::COMMAND_TIMEOUT;
use plugin_api::application::AppContext;
use plugin_api::sdk::ActionFn;
use plugin_api::{Application, Error, Host, Result};
use serde::{Deserialize, Serialize};

/// Upstream's actions, which work through the Incus API.
pub const ACTIONS: [&str; 3] = ["add-drive", "refresh-images", "remove-drive"];

/// The config: no keys (anything else is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct IncusCeph {
    host: Host,
}

/// The version in `ceph --version`'s output: its third word, after `ceph version`.
pub fn ceph_version(output: &str) -> Option<&str> {
    output
        .trim_start()
        .strip_prefix("ceph version ")?
        .split_whitespace()
        .next()
}

impl IncusCeph {
    fn ceph_version(&self) -> Result<String> {
        let out = self.host.run_ok(&["ceph", "--version"], COMMAND_TIMEOUT)?;
        ceph_version(&out)
            .map(str::to_string)
            .ok_or_else(|| Error::internal("unable to determine the Ceph version"))
    }

    /// `:action`: `add-drive` (`device_id`), `remove-drive`, `refresh-images` (`oci_tag`
    /// optional); any other is unsupported.
    fn action(
        &self,
        _config: &Config,
        action: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value> {
        match action {
            "remove-drive" => return osd::remove_drive(&self.host, &osd::incus()),
            "add-drive" => {
                let device = args
                    .get("device_id")
                    .map(String::as_str)
                    .unwrap_or_default();
                return osd::add_drive(&self.host, &osd::incus(), device, osd::Pauses::UPSTREAM);
            }
            "refresh-images" => {
                let tag = args.get("oci_tag").map(String::as_str);
                return osd::refresh_images(&self.host, &osd::incus(), tag, osd::Pauses::UPSTREAM);
            }
            _ => {}
        }
        Err(Error::unsupported_action(action))
    }
}

impl Application for IncusCeph {
    const NAME: &'static str = "incus-ceph";
    /// Before the primary application, as upstream's.
    const START_WEIGHT: i32 = -1;
    const DEPENDENCIES: &'static [&'static str] = &["incus"];
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);

    type Config = Config;

    fn new(host: Host) -> Result<Self> {
        Ok(IncusCeph { host })
    }

    fn friendly_version(&self, ctx: &AppContext, _config: &Config) -> Result<String> {
        match self.ceph_version() {
            Ok(v) => Ok(with_image_version(&v, &ctx.version)),
            Err(e) => {
                self.host
                    .warn(&format!("Cannot read the Ceph version: {}", e.message));
                Ok(String::new())
            }
        }
    }
}

plugin_api::export_application!(IncusCeph);
