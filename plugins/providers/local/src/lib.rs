//! The `local` update provider (not upstream's): an air-gapped mirror in a directory (a
//! USB stick, an NFS mount). The directory has the images server's layout, the signed
//! `index.sjson` at its top and each release's files under `<version>/`, and the index
//! is verified exactly as `images` verifies it (the same root CA, the shipped update CA
//! or `update_ca`). Files are fetched through the host's download capability from
//! `file://` URLs, so their SHA-256 is checked and `.gz` files are unpacked as for
//! `images`. A directory that is not there (the stick is not plugged in) means no update.
//! There is no registration; deregistering does nothing.

use incus_osd_provider_common::{config, fetch, lookup_in, verified_index, Trust};
use plugin_api::provider::{errors, FetchOrder, Registration, Release, Target, UpdateContext};
use plugin_api::{Error, Host, Provider, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The mirror directory (absolute OS path).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The update CA (PEM) the index must be signed through, instead of the shipped one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub update_ca: String,
}

#[derive(Serialize)]
pub struct State {}

pub struct Local {
    host: Host,
}

impl Local {
    /// The mirror directory, without a trailing slash.
    fn dir(config: &Config) -> Result<&str> {
        if config.path.is_empty() {
            return Err(Error::internal("the local provider has no path configured"));
        }
        Ok(match config.path.trim_end_matches('/') {
            "" => "/",
            p => p,
        })
    }
}

impl Provider for Local {
    const NAME: &'static str = "local";
    const MULTI_LINE_FIELDS: &'static [&'static str] = &["update_ca"];
    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Local { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {})
    }

    fn validate(&self, config: &Config) -> Result<()> {
        if !config.path.is_empty() {
            config::check_abs_path("path", &config.path)?;
        }
        if !config.update_ca.is_empty() {
            config::check_certificates("update_ca", &config.update_ca)?;
        }
        Ok(())
    }

    fn refresh(&self, _config: &Config, _reg: &Registration) -> Result<()> {
        Err(Error::internal(errors::REGISTRATION_UNSUPPORTED))
    }

    fn deregister(&self, _config: &Config, _reg: &Registration) -> Result<()> {
        Ok(())
    }

    fn lookup(
        &self,
        config: &Config,
        context: &UpdateContext,
        target: &Target,
    ) -> Result<Option<Release>> {
        let dir = Self::dir(config)?;
        if self.host.list_dir(dir)?.is_none() {
            return Ok(None);
        }
        let index_path = format!("{}/index.sjson", dir.trim_end_matches('/'));
        let Some(signed) = self.host.read_file(&index_path)? else {
            return Err(Error::internal(format!(
                "the mirror has no update index: {index_path} is missing"
            )));
        };
        let trust = Trust::load(&self.host, &config.update_ca)?;
        let index = verified_index(&self.host, &signed, &trust)?;
        Ok(lookup_in(&self.host, &index, context, target))
    }

    fn fetch(&self, config: &Config, order: &FetchOrder) -> Result<Vec<String>> {
        let base = format!("file://{}", Self::dir(config)?.trim_end_matches('/'));
        fetch::fetch_release(&self.host, order, &[], |f| {
            fetch::file_url(&base, &order.release.version, f)
        })
    }
}

plugin_api::export_provider!(Local);
