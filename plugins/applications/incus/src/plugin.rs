//! [`Incus`]: the `Application` the daemon loads, each hook calling the domain functions of
//! this crate.

use std::collections::BTreeMap;

use plugin_api::application::{AppContext, Replace};
use plugin_api::sdk::{ActionFn, Backup, CanReplaceFn, WipeFn};
use plugin_api::{Application, Error, Host, Result, Undo};

use incus_osd_application_common::{ceph, version};

use crate::Config;

/// The action upstream's Incus application offers: a Ceph cluster over the Incus cluster
/// (see `incus_osd_application_common::ceph::initialize_cluster`).
pub const CEPH_ACTION: &str = "initialize-ceph-cluster";

/// The `incus` application plugin (also installed as `incus-lts-7.0`).
pub struct Incus {
    host: Host,
}

impl Incus {
    fn wipe(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::wipe(&self.host)
    }

    fn action(
        &self,
        _config: &Config,
        action: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value> {
        if action == CEPH_ACTION {
            return ceph::initialize_cluster(
                &self.host,
                &ceph::incus(),
                args,
                ceph::Pauses::UPSTREAM,
            );
        }
        Err(Error::unsupported_action(action))
    }

    fn can_replace(&self, replace: &Replace) -> Result<()> {
        crate::can_replace(&self.host, &replace.from.name, &replace.to)
    }
}

impl Application for Incus {
    const NAME: &'static str = crate::NAME;
    const VARIANTS: &'static [&'static str] = &[crate::LTS];
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &crate::PATHS;
    const BACKUP: Option<Backup> = Some(crate::BACKUP);
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);
    const CAN_REPLACE: Option<CanReplaceFn<Self>> = Some(Self::can_replace);
    const DEBUG_LOGS: &'static [&'static str] = &crate::LOG_DIRS;
    type Config = Config;

    fn new(host: Host) -> Result<Self> {
        Ok(Incus { host })
    }

    fn friendly_version(&self, ctx: &AppContext, _config: &Config) -> Result<String> {
        Ok(version::friendly_or_empty(&self.host, ctx, || {
            crate::friendly_version(&self.host, &ctx.version)
        }))
    }

    fn update(&self, undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        crate::apply_config(&self.host, undo, old, new)
    }

    fn start(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::start(&self.host)
    }

    fn stop(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &Config) -> Result<()> {
        crate::stop(&self.host)
    }

    fn initialize(&self, ctx: &AppContext, _config: &Config) -> Result<()> {
        // The `incus` seed from the host (none: the defaults apply, as upstream without
        // one); no instance bridges (the host's network roles are not handed over).
        let seed: Option<crate::init::Seed> = incus_osd_application_common::seed(ctx, "incus")?;
        crate::init::initialize(&self.host, seed.as_ref(), &[])
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
}

plugin_api::export_application!(Incus);
