//! [`OpenFga`]: the `Application` the daemon loads, each hook calling the domain functions
//! of this crate.

use plugin_api::application::AppContext;
use plugin_api::sdk::{Backup, WipeFn};
use plugin_api::{Application, Host, Result, Undo};
use serde_json::{Map, Value};

use incus_osd_application_common::version;

use crate::Config;

/// The `openfga` application plugin.
pub struct OpenFga {
    host: Host,
}

/// Runs `f` with a journal that is kept when `f` succeeds and rolled back when it fails.
fn journaled<T>(host: &Host, f: impl FnOnce(&mut Undo) -> Result<T>) -> Result<T> {
    let mut undo = Undo::new(host);
    match f(&mut undo) {
        Ok(v) => {
            undo.commit();
            Ok(v)
        }
        Err(e) => {
            undo.rollback();
            Err(e)
        }
    }
}

/// The `sync` section to keep after a restore: none without a restored [`crate::SYNC_FILE`];
/// the saved one when the restored file is what it gives with `token` (the file holds the
/// completed section, the config what the user sent); else the file's.
fn restored_sync(
    file: Option<Map<String, Value>>,
    saved: Option<&Map<String, Value>>,
    token: Option<&str>,
) -> Option<Map<String, Value>> {
    let file = file?;
    let same = match (saved, token) {
        (Some(saved), Some(token)) => crate::sync_file(saved, token)
            .ok()
            .and_then(|text| serde_json::from_str::<Map<String, Value>>(&text).ok())
            .is_some_and(|completed| completed == file),
        _ => false,
    };
    if same {
        saved.cloned()
    } else {
        Some(file)
    }
}

impl OpenFga {
    /// The data goes, and the config with it (upstream's factory reset clears the
    /// application's state between the wipe and the start).
    fn wipe(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::wipe(&self.host)?;
        self.host.update_config(|c: &mut Config| {
            let changed = *c != Config::default();
            *c = Config::default();
            changed
        })?;
        Ok(())
    }
}

impl Application for OpenFga {
    const NAME: &'static str = crate::NAME;
    /// After the primary application, whose certificate it serves.
    const START_WEIGHT: i32 = 1;
    const PATHS: &'static [&'static str] = &crate::PATHS;
    const BACKUP: Option<Backup> = Some(crate::BACKUP);
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    type Config = Config;

    fn new(host: Host) -> Result<Self> {
        Ok(OpenFga { host })
    }

    fn friendly_version(&self, ctx: &AppContext, _config: &Config) -> Result<String> {
        Ok(version::friendly_or_empty(&self.host, ctx, || {
            crate::friendly_version(&self.host, &ctx.version)
        }))
    }

    fn validate(&self, config: &Config) -> Result<()> {
        crate::validate(config)
    }

    fn update(&self, undo: &mut Undo, _old: &Config, new: &Config) -> Result<()> {
        crate::apply_config(&self.host, undo, new)
    }

    fn start(&self, undo: &mut Undo, ctx: &AppContext, _config: &Config) -> Result<()> {
        let tls = crate::primary_certificate(&self.host)?;
        let tls = tls.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        crate::start(&self.host, undo, ctx.initialized, tls)
    }

    fn stop(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::stop(&self.host)
    }

    /// One new token, applied and saved as the config (what upstream's initialization
    /// does); a failure puts the files back and saves nothing.
    fn initialize(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        journaled(&self.host, |undo| {
            let config = crate::initialize(&self.host, undo)?;
            self.host.update_config(|c: &mut Config| {
                *c = config;
                true
            })
        })
        .map(drop)
    }

    fn reload(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::reload(&self.host)
    }

    fn restart(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::restart(&self.host)
    }

    fn running(&self, _ctx: &AppContext, _config: &Config) -> Result<bool> {
        crate::running(&self.host)
    }

    /// The tokens read back from the restored config file and saved as the config's, the
    /// `sync` section as the restored file has it, the link made sure of.
    fn restored(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        journaled(&self.host, |undo| {
            let tokens = crate::restored(&self.host, undo)?;
            let file = crate::read_sync(&self.host)?;
            self.host.update_config(|c: &mut Config| {
                let sync = restored_sync(file, c.sync.as_ref(), tokens.first().map(String::as_str));
                let changed = c.api_tokens != tokens || c.sync != sync;
                c.api_tokens = tokens;
                c.sync = sync;
                changed
            })
        })
        .map(drop)
    }
}

plugin_api::export_application!(OpenFga);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_restored_sync_file_keeps_the_saved_section_only_when_it_is_what_that_section_gives() {
        let saved = map(json!({"sources": [{"name": "corp", "type": "ldap", "ldap": {}}]}));
        let completed: Map<String, Value> =
            serde_json::from_str(&crate::sync_file(&saved, "T").unwrap()).unwrap();
        assert_eq!(
            restored_sync(Some(completed.clone()), Some(&saved), Some("T")),
            Some(saved.clone())
        );
        // Another token in the file: the file's section.
        assert_eq!(
            restored_sync(Some(completed.clone()), Some(&saved), Some("U")),
            Some(completed.clone())
        );
        assert_eq!(
            restored_sync(Some(completed.clone()), None, Some("T")),
            Some(completed)
        );
        assert_eq!(restored_sync(None, Some(&saved), Some("T")), None);
    }
}
