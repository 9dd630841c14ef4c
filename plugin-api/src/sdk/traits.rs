//! The three traits a plugin implements: [`Service`], [`Application`] and [`Provider`].

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Error, Host, Result, Undo, NOT_SUPPORTED};
use crate::application::{AppContext, BackupSpec, Replace};
use crate::manifest::RouteRequest;
use crate::provider::{errors, FetchOrder, Registration, Release, Target, UpdateContext};

/// An extra endpoint a plugin serves below its own URL, e.g.
/// `RouteSpec { method: Method::Post, suffix: ":rejoin", op: "rejoin" }` for
/// `POST /1.0/services/<name>/:rejoin`. Requests reach [`Service::route`] or
/// [`Application::route`] with the op name and a [`RouteRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// The HTTP method it answers.
    pub method: crate::manifest::Method,
    /// The path below the plugin's URL, e.g. `:rejoin` or `sessions`.
    pub suffix: &'static str,
    /// The operation name the `route` hook receives. Not a hook's name (`get`, `reset`,
    /// ...): that operation would reach the hook instead.
    pub op: &'static str,
}

/// A service's reset hook (`POST /1.0/services/{name}/:reset`): see [`Service::RESET`].
pub type ResetFn<S> = fn(&S, &mut Undo, &<S as Service>::Config) -> Result<()>;

/// A system service (`/1.0/services/{name}`).
///
/// The SDK persists `Config` and answers GET with `{"state", "config"}`. On PUT it decodes
/// the new config, calls [`Service::validate`] and [`Service::validate_change`], then
/// [`Service::update`] with a fresh [`Undo`] journal, and saves the config. If the update
/// or the save fails, the journal is rolled back (the system and the saved config stay as
/// they were); only once the config is saved is the journal committed.
///
/// Every service has an on/off switch ([`Service::enabled`]), and the lifecycle defaults
/// are built on two hooks, [`Service::bring_up`] and [`Service::take_down`]:
///
/// | hook | default |
/// |---|---|
/// | `update(old, new)` | off→off: nothing; on→off: `take_down(old)`; off→on: `bring_up(new)`; on→on: `reconfigure(old, new)` |
/// | `reconfigure(old, new)` | `take_down(old)`, then `bring_up(new)` |
/// | `start(config)` (daemon start) | `bring_up(config)` if enabled |
/// | `stop(config)` (daemon shutdown) | `take_down(config)` if enabled |
///
/// Start, stop and reset get a journal whose changes are kept even when the hook fails
/// (boot and shutdown have no previous state to go back to).
pub trait Service: Sized + Send + Sync + 'static {
    /// The service name (URL segment).
    const NAME: &'static str;
    /// Start order among plugins (lower first); stop is the reverse.
    const START_WEIGHT: i32 = 0;
    /// OS paths this service may write (its files under the root prefix).
    const PATHS: &'static [&'static str] = &[];
    /// Config fields that may hold several lines (PEM certificates and keys), by their own
    /// name. Before `validate`, the SDK refuses a PUT whose config has a line break, a NUL
    /// or another control character in any other string, map keys included (see
    /// [`crate::validate::config_strings`]): config strings end up in files and command
    /// lines.
    const MULTI_LINE_FIELDS: &'static [&'static str] = &[];
    /// Listed and usable only when this application is installed.
    const REQUIRES_APPLICATION: Option<&'static str> = None;
    /// The reset hook, if the service has one: `const RESET: Option<ResetFn<Self>> =
    /// Some(Self::reset);` with an inherent `fn reset(&self, undo: &mut Undo, config:
    /// &Config) -> Result<()>`. The manifest lists the `reset` hook exactly when this is
    /// set; without it, a reset answers upstream's "not supported" error.
    const RESET: Option<ResetFn<Self>> = None;
    /// Whether a GET answers `{"config", "state"}` rather than `{"state", "config"}`, to
    /// keep the key order of the upstream struct the service mirrors.
    const CONFIG_FIRST: bool = false;

    /// The config the SDK persists and a PUT replaces (`Default` is the config of a
    /// service never configured).
    type Config: Serialize + DeserializeOwned + Default + Clone + Send;
    /// What a GET shows beside the config, read live by [`Service::state`].
    type State: Serialize;

    /// Builds the service. Called once, when the host loads the plugin.
    fn new(host: Host) -> Result<Self>;

    /// The live state, read from the system.
    fn state(&self, config: &Self::Config) -> Result<Self::State>;

    /// Whether `config` has the service running (its `enabled` switch).
    fn enabled(config: &Self::Config) -> bool;

    /// Refuses a config that cannot work (400). Called before anything is touched.
    fn validate(&self, _config: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// Refuses a change that depends on the current config (400), before anything is
    /// touched. Called after [`Service::validate`], with the config currently saved.
    fn validate_change(&self, _old: &Self::Config, _new: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// Brings the service up as `config` says (it is enabled), recording in `undo` what
    /// it changes.
    fn bring_up(&self, _undo: &mut Undo, _config: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// Takes the service down (`config` is the enabled config it ran with), recording in
    /// `undo` what it changes.
    fn take_down(&self, _undo: &mut Undo, _config: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// Moves a running service from `old` to `new` (both enabled).
    fn reconfigure(&self, undo: &mut Undo, old: &Self::Config, new: &Self::Config) -> Result<()> {
        self.take_down(undo, old)?;
        self.bring_up(undo, new)
    }

    /// Applies a new config, recording in `undo` what it changes: a failure here, or in
    /// the save that follows, rolls the journal back.
    fn update(&self, undo: &mut Undo, old: &Self::Config, new: &Self::Config) -> Result<()> {
        match (Self::enabled(old), Self::enabled(new)) {
            (false, false) => Ok(()),
            (true, false) => self.take_down(undo, old),
            (false, true) => self.bring_up(undo, new),
            (true, true) => self.reconfigure(undo, old, new),
        }
    }

    /// Brings the system to the configured state at daemon start.
    fn start(&self, undo: &mut Undo, config: &Self::Config) -> Result<()> {
        if Self::enabled(config) {
            self.bring_up(undo, config)?;
        }
        Ok(())
    }

    /// Called at daemon shutdown, in reverse start order.
    fn stop(&self, undo: &mut Undo, config: &Self::Config) -> Result<()> {
        if Self::enabled(config) {
            self.take_down(undo, config)?;
        }
        Ok(())
    }

    /// Extra endpoints below `/1.0/services/<name>/`.
    const ROUTES: &'static [RouteSpec] = &[];

    /// Answers a request to one of [`Service::ROUTES`].
    fn route(
        &self,
        op: &str,
        _request: RouteRequest,
        _config: &Self::Config,
    ) -> Result<serde_json::Value> {
        Err(Error::new(
            501,
            format!("operation '{op}' is not implemented by this plugin"),
        ))
    }
}

/// An application's data directory and what its backups leave out, as constants: the
/// manifest carries it as a [`BackupSpec`] and the host writes and restores the backups
/// (see [`Application::BACKUP`]). Built in a `const`:
///
/// ```
/// # use plugin_api::sdk::Backup;
/// const BACKUP: Option<Backup> = Some(
///     Backup::new("/var/lib/demo")
///         .excluded(&["unix.socket"])
///         .excluded_unless_complete(&["artifacts"])
///         .units(&["demo.service"]),
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    /// The directory backed up: an absolute OS path inside one of [`Application::PATHS`].
    pub root: &'static str,
    /// Names relative to `root` never backed up (a prefix match: `unix.socket`).
    pub excluded: &'static [&'static str],
    /// Names relative to `root` left out unless the backup is `complete` (caches).
    pub excluded_unless_complete: &'static [&'static str],
    /// Units stopped, in this order, before a restore is swapped in, and started again in
    /// this order afterwards.
    pub units: &'static [&'static str],
}

impl Backup {
    /// A backup of everything under `root`, with no unit stopped around a restore.
    pub const fn new(root: &'static str) -> Backup {
        Backup {
            root,
            excluded: &[],
            excluded_unless_complete: &[],
            units: &[],
        }
    }

    /// Sets [`Backup::excluded`].
    pub const fn excluded(mut self, names: &'static [&'static str]) -> Backup {
        self.excluded = names;
        self
    }

    /// Sets [`Backup::excluded_unless_complete`].
    pub const fn excluded_unless_complete(mut self, names: &'static [&'static str]) -> Backup {
        self.excluded_unless_complete = names;
        self
    }

    /// Sets [`Backup::units`].
    pub const fn units(mut self, units: &'static [&'static str]) -> Backup {
        self.units = units;
        self
    }

    /// The manifest's form.
    pub fn spec(&self) -> BackupSpec {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        BackupSpec {
            root: self.root.to_string(),
            excluded: strings(self.excluded),
            excluded_unless_complete: strings(self.excluded_unless_complete),
            units: strings(self.units),
        }
    }
}

/// An application's wipe hook: see [`Application::WIPE`].
pub type WipeFn<A> = fn(&A, &AppContext, &<A as Application>::Config) -> Result<()>;

/// An application's action hook: see [`Application::ACTION`].
pub type ActionFn<A> = fn(
    &A,
    &<A as Application>::Config,
    &str,
    &BTreeMap<String, String>,
) -> Result<serde_json::Value>;

/// An application's replacement rule: see [`Application::CAN_REPLACE`].
pub type CanReplaceFn<A> = fn(&A, &Replace) -> Result<()>;

/// An application's own archive format: see [`Application::STREAMING_BACKUP`].
pub struct StreamingBackup<A: 'static> {
    /// Writes the archive (`complete`: include what a plain backup leaves out) to the
    /// stream. The host sends it to the client as it comes.
    pub backup: fn(&A, bool, &mut dyn Write) -> Result<()>,
    /// Reads an archive [`StreamingBackup::backup`] wrote and restores it; a bad archive
    /// must change nothing.
    pub restore: fn(&A, &mut dyn Read) -> Result<()>,
}

/// An application (`/1.0/applications/{name}` and the names of its [`Application::VARIANTS`]).
///
/// The host owns what every application has: whether and which version is installed, the
/// primary rule, dependencies, `initialized`, `last_restored`, and, for an application that
/// declares [`Application::BACKUP`], its backups and restores. The plugin answers for its
/// own domain: its config, starting and stopping it, initializing it, reloading it after an
/// update, wiping its data, actions. Every hook but PUT and the action gets the
/// [`AppContext`] of the install (the name it is installed as, the active version, whether
/// it was initialized).
///
/// Config handling is the service's: PUT calls [`Application::validate`],
/// [`Application::validate_change`], then [`Application::update`] with a journal that is
/// rolled back if the update or the save fails, and committed once the config is saved.
/// Start and stop get a journal whose changes are kept.
///
/// Optional hooks are declared once, by naming the function that implements them (as
/// `const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);`); the manifest lists a hook
/// exactly when it is set. GET, PUT, start, stop, restart, initialize, reload, running and
/// restored are always listed (their defaults are upstream's answers).
pub trait Application: Sized + Send + Sync + 'static {
    /// The application name (URL segment).
    const NAME: &'static str;
    /// Other names it installs as, sharing this plugin, its config and its install record
    /// (`incus-lts-7.0` for `incus`); at most one of them is installed at a time.
    const VARIANTS: &'static [&'static str] = &[];
    /// Start order among plugins (lower first); stop is the reverse.
    const START_WEIGHT: i32 = 0;
    /// A primary application: only one may be installed at a time (the host's rule).
    const PRIMARY: bool = false;
    /// Plugins that must be loaded, installed and started first, by plugin name: a
    /// dependency on `incus` is satisfied by any of its variants.
    const DEPENDENCIES: &'static [&'static str] = &[];
    /// The update check of this application runs after the OS is up (it serves its own
    /// update server).
    const LATE_UPDATE_CHECK: bool = false;
    /// OS paths this application may write (its files under the root prefix).
    const PATHS: &'static [&'static str] = &[];
    /// Config fields that may hold several lines (PEM certificates and keys), by their own
    /// name. Before `validate`, the SDK refuses a PUT whose config has a line break, a NUL
    /// or another control character in any other string, map keys included (see
    /// [`crate::validate::config_strings`]): config strings end up in files and command
    /// lines.
    const MULTI_LINE_FIELDS: &'static [&'static str] = &[];
    /// Extra endpoints below `/1.0/applications/<name>/`.
    const ROUTES: &'static [RouteSpec] = &[];
    /// The data directory the host backs up and restores (a gzip tar, see
    /// [`crate::sdk::archive`]), with its exclusions and the units stopped around a restore.
    /// The host then serves `:backup` and `:restore` itself, and calls
    /// [`Application::restored`] after a restore. Not together with
    /// [`Application::STREAMING_BACKUP`] (the plugin would fail to load).
    const BACKUP: Option<Backup> = None;
    /// Wipes the application's local data (the host stops it first): gives `:factory-reset`
    /// (stop, wipe, start, initialize) and the data removal of `:remove`. Without it a
    /// factory reset answers upstream's "not supported".
    const WIPE: Option<WipeFn<Self>> = None;
    /// `:action` with `{"action", "config"}`: the action's name and arguments, returning
    /// the response metadata. An unknown action should answer upstream's 500
    /// `unsupported action '<x>'` ([`Error::unsupported_action`]). Without it every
    /// action answers "not supported".
    const ACTION: Option<ActionFn<Self>> = None;
    /// Whether the installed variant may give way to another of [`Application::VARIANTS`]
    /// (or the name): `Ok`, or the refusal (a 400 [`Error`]) the user sees.
    const CAN_REPLACE: Option<CanReplaceFn<Self>> = None;
    /// An archive format of the application's own, for an author who does not use
    /// [`Application::BACKUP`]: the SDK streams `:backup` and `:restore` through these.
    const STREAMING_BACKUP: Option<StreamingBackup<Self>> = None;
    /// Directories the application logs to (`/run/incus`, `/var/log/incus`): `:debug` with
    /// `{"action": "get-logs"}` streams them as a gzip tar, written by the host. Empty:
    /// `:debug` answers 501 `not implemented`, as upstream's for every application but
    /// Incus.
    const DEBUG_LOGS: &'static [&'static str] = &[];

    /// The config the SDK persists and a PUT replaces.
    type Config: Serialize + DeserializeOwned + Default + Clone + Send;

    /// Builds the application. Called once, when the host loads the plugin.
    fn new(host: Host) -> Result<Self>;
    /// The version a user recognizes (`7.0.0 [202511041800]`), GET's
    /// `state.friendly_version`. Default: empty, and the host shows the image version.
    fn friendly_version(&self, _ctx: &AppContext, _config: &Self::Config) -> Result<String> {
        Ok(String::new())
    }
    /// Refuses a config that cannot work (400), before anything is touched.
    fn validate(&self, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Refuses a change that depends on the saved config (400), before anything is
    /// touched.
    fn validate_change(&self, _old: &Self::Config, _new: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Applies a new config (a PUT), recording in `undo` what it changes.
    fn update(&self, _undo: &mut Undo, _old: &Self::Config, _new: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Starts the application (daemon start, install, after a factory reset); what it
    /// changes is kept even if it fails.
    fn start(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Stops the application (daemon shutdown in reverse start order, before a wipe or a
    /// removal).
    fn stop(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Sets the application up once after its first start (the host then records it as
    /// initialized, and calls this again after a factory reset).
    fn initialize(&self, _ctx: &AppContext, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Picks up a new image after an update (reloads its units).
    fn reload(&self, _ctx: &AppContext, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// `:restart`. Default: nothing, as upstream's.
    fn restart(&self, _ctx: &AppContext, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Whether the application's main unit runs. Default: no.
    fn running(&self, _ctx: &AppContext, _config: &Self::Config) -> Result<bool> {
        Ok(false)
    }
    /// Called after the host swapped a restored [`Application::BACKUP`] in and started its
    /// units again (to re-read what the archive brought).
    fn restored(&self, _ctx: &AppContext, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Answers a request to one of [`Application::ROUTES`].
    fn route(
        &self,
        op: &str,
        _request: RouteRequest,
        _config: &Self::Config,
    ) -> Result<serde_json::Value> {
        Err(Error::new(
            501,
            format!("operation '{op}' is not implemented by this plugin"),
        ))
    }
}

/// The OS paths a provider writes by default: where the host asks it to fetch OS updates,
/// application images and Secure Boot key updates.
pub const PROVIDER_PATHS: &[&str] = &[
    "/var/lib/updates",
    "/var/lib/incus-os-extensions",
    "/var/lib/incus-os/secureboot-updates",
];

/// An update provider, selected by name through `/1.0/system/provider`.
///
/// Its config is handled as a service's (see [`Application`]): it is the `config` object
/// of the provider's `/1.0/system/provider` document. The host drives it through typed
/// operations (see [`crate::provider`]): [`Provider::lookup`] finds the release on offer
/// for the OS, an application or the Secure Boot keys; [`Provider::fetch`] brings its files
/// to disk through the host's download capability ([`Host::download`]), which verifies the
/// SHA-256 and writes atomically. The host owns the version rules, free-space checks,
/// staging and reboots. Every hook has upstream's default answer.
pub trait Provider: Sized + Send + Sync + 'static {
    /// The provider name, as `/1.0/system/provider` selects it.
    const NAME: &'static str;
    /// Config fields that may hold several lines (PEM certificates and keys), by their own
    /// name. Before `validate`, the SDK refuses a PUT whose config has a line break, a NUL
    /// or another control character in any other string, map keys included (see
    /// [`crate::validate::config_strings`]): config strings end up in files and command
    /// lines.
    const MULTI_LINE_FIELDS: &'static [&'static str] = &[];
    /// OS paths this provider may write: the directories the host fetches into.
    const PATHS: &'static [&'static str] = PROVIDER_PATHS;
    /// Extra endpoints below `/1.0/system/provider/<name>/`.
    const ROUTES: &'static [RouteSpec] = &[];
    /// The config the SDK persists and a PUT replaces.
    type Config: Serialize + DeserializeOwned + Default + Clone + Send;
    /// What a GET shows beside the config, read live by [`Provider::state`].
    type State: Serialize;

    /// Builds the provider. Called once, when the host loads the plugin.
    fn new(host: Host) -> Result<Self>;
    /// The live state.
    fn state(&self, config: &Self::Config) -> Result<Self::State>;
    /// Refuses a config that cannot work (400), before anything is touched.
    fn validate(&self, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Refuses a change that depends on the saved config (400), before anything is
    /// touched.
    fn validate_change(&self, _old: &Self::Config, _new: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Applies a new config, recording in `undo` what it changes.
    fn update(&self, _undo: &mut Undo, _old: &Self::Config, _new: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Registers this machine with the provider's server. The default answers upstream's
    /// `registration unsupported`, which the host takes as "nothing to register".
    fn register(&self, _config: &Self::Config, _reg: &Registration) -> Result<()> {
        Err(Error::internal(errors::REGISTRATION_UNSUPPORTED))
    }
    /// Tells the server about an event (`reg.cause`) once registered. Default: nothing.
    fn refresh(&self, _config: &Self::Config, _reg: &Registration) -> Result<()> {
        Ok(())
    }
    /// Removes this machine's registration. The default answers upstream's
    /// `deregistration unsupported`, which makes the host refuse to switch away.
    fn deregister(&self, _config: &Self::Config, _reg: &Registration) -> Result<()> {
        Err(Error::internal(errors::DEREGISTRATION_UNSUPPORTED))
    }
    /// Forgets what was cached (the index), so the next lookup asks again. Default:
    /// nothing cached.
    fn clear_cache(&self) {}
    /// The newest release for `target` on the context's channel, narrowed to the
    /// context's architecture; `None` when there is none.
    fn lookup(
        &self,
        _config: &Self::Config,
        _context: &UpdateContext,
        _target: &Target,
    ) -> Result<Option<Release>> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    /// Brings `order.release`'s files into `order.target_dir` (each named as
    /// [`crate::provider::ReleaseFile::target_name`]) and returns the paths written.
    fn fetch(&self, _config: &Self::Config, _order: &FetchOrder) -> Result<Vec<String>> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    /// Answers a request to one of [`Provider::ROUTES`].
    fn route(
        &self,
        op: &str,
        _request: RouteRequest,
        _config: &Self::Config,
    ) -> Result<serde_json::Value> {
        Err(Error::new(
            501,
            format!("operation '{op}' is not implemented by this plugin"),
        ))
    }
}
