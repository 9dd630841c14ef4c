//! The safe SDK: what a plugin author writes against.
//!
//! Implement [`Service`], [`Application`] or [`Provider`] on a plain Rust type, then export
//! it with one macro. Every optional hook has a "not supported" default, config and state
//! are typed through serde, and the SDK owns persistence, request decoding and error
//! rendering. Panics in any hook become errors, never aborts.

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::abi::{
    ByteSinkRef, ByteSourceRef, CommandOutput, CommandSpec, HostHandle, LogLevel, PluginBox,
    PluginError, PluginOps, PluginOps_TO, UnitOp, SECRET_MASK,
};
use crate::manifest::{Hook, Kind, Manifest, Route};

pub use crate::helpers::{nullable, retry};
pub use crate::undo::{is_active, Undo};

/// An error a hook returns; `status` picks the HTTP status the API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: u16,
    pub message: String,
}

impl Error {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }
    /// 400: the request is wrong; nothing was changed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    /// 500: the operation failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Error::new(e.status, e.message.into_string())
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError::new(e.status, e.message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::internal(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The upstream error text of a service without reset support.
pub const RESET_NOT_SUPPORTED: &str = "reset isn't supported by this service";
/// The upstream error text of an unsupported application hook.
pub const NOT_SUPPORTED: &str = "not supported";

/// How the message of an error produced by a caught panic begins; the host marks such a
/// plugin degraded.
pub const PANIC_PREFIX: &str = "plugin panicked";

/// A command's captured result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The capabilities the host gives a plugin. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostHandle>,
}

impl Host {
    /// Wraps the ABI handle (done by the export macros, and by test harnesses).
    pub fn from_handle(handle: HostHandle) -> Self {
        Host {
            inner: Arc::new(handle),
        }
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, RStr::from_str(message));
    }
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message)
    }
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message)
    }
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message)
    }
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message)
    }

    /// The plugin's persisted document, or `T::default()` if none was saved.
    pub fn load_state<T: DeserializeOwned + Default>(&self) -> Result<T> {
        let raw = self.inner.state_load().into_result()?;
        let value: serde_json::Value = serde_json::from_str(raw.as_str())
            .map_err(|e| Error::internal(format!("stored state is not JSON: {e}")))?;
        if value.is_null() {
            return Ok(T::default());
        }
        serde_json::from_value(value)
            .map_err(|e| Error::internal(format!("stored state cannot be read: {e}")))
    }

    /// Saves the plugin's document durably.
    pub fn save_state<T: Serialize>(&self, value: &T) -> Result<()> {
        let json = serde_json::to_string(value)
            .map_err(|e| Error::internal(format!("cannot encode state: {e}")))?;
        self.inner.state_save(RStr::from_str(&json)).into_result()?;
        Ok(())
    }

    /// Reads a file (absolute OS path, resolved by the host under its root prefix).
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let data = self.inner.file_read(RStr::from_str(path)).into_result()?;
        Ok(match data {
            ROption::RSome(v) => Some(v.into_vec()),
            ROption::RNone => None,
        })
    }

    /// Reads a text file; `None` if absent.
    pub fn read_to_string(&self, path: &str) -> Result<Option<String>> {
        Ok(self
            .read_file(path)?
            .map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    /// The sorted entry names of a directory; `None` if it does not exist.
    pub fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let names = self.inner.dir_list(RStr::from_str(path)).into_result()?;
        Ok(match names {
            ROption::RSome(v) => Some(v.into_iter().map(RString::into_string).collect()),
            ROption::RNone => None,
        })
    }

    /// Kind, permission bits and symlink target of a path (a final symlink is not
    /// followed); `None` if it does not exist.
    pub fn stat(&self, path: &str) -> Result<Option<crate::abi::FileStat>> {
        let st = self.inner.file_stat(RStr::from_str(path)).into_result()?;
        Ok(st.into_option())
    }

    /// Whether a path exists (a dangling symlink exists).
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.stat(path)?.is_some())
    }

    /// The absolute OS path a symlink points to (relative targets resolved against the
    /// link's directory, `.` and `..` folded); `None` if `path` is not a symlink.
    pub fn read_link(&self, path: &str) -> Result<Option<String>> {
        let Some(st) = self.stat(path)? else {
            return Ok(None);
        };
        if st.kind != crate::abi::FileKind::Symlink {
            return Ok(None);
        }
        let target = st.link_target.as_str();
        let joined = if target.starts_with('/') {
            target.to_string()
        } else {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{target}")
        };
        let mut parts: Vec<&str> = vec![];
        for seg in joined.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        Ok(Some(format!("/{}", parts.join("/"))))
    }

    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        self.inner
            .file_write(RStr::from_str(path), RSlice::from_slice(data), mode)
            .into_result()?;
        Ok(())
    }

    pub fn create_dir(&self, path: &str, mode: u32) -> Result<()> {
        self.inner
            .dir_create(RStr::from_str(path), mode)
            .into_result()?;
        Ok(())
    }

    /// Removes a file or a tree; absent is fine.
    pub fn remove(&self, path: &str) -> Result<()> {
        self.inner.remove(RStr::from_str(path)).into_result()?;
        Ok(())
    }

    pub fn unit(&self, op: UnitOp, unit: &str) -> Result<String> {
        Ok(self
            .inner
            .unit(op, RStr::from_str(unit))
            .into_result()?
            .into_string())
    }
    pub fn start_unit(&self, unit: &str) -> Result<()> {
        self.unit(UnitOp::Start, unit).map(drop)
    }
    pub fn stop_unit(&self, unit: &str) -> Result<()> {
        self.unit(UnitOp::Stop, unit).map(drop)
    }
    pub fn restart_unit(&self, unit: &str) -> Result<()> {
        self.unit(UnitOp::Restart, unit).map(drop)
    }
    /// SIGKILL to every process of the unit.
    pub fn kill_unit(&self, unit: &str) -> Result<()> {
        self.unit(UnitOp::Kill, unit).map(drop)
    }
    /// Makes systemd re-read unit files.
    pub fn daemon_reload(&self) -> Result<()> {
        self.unit(UnitOp::DaemonReload, "").map(drop)
    }
    pub fn unit_active_state(&self, unit: &str) -> Result<String> {
        self.unit(UnitOp::ActiveState, unit)
    }

    /// Runs a command with a timeout; a non-zero exit is returned, not an error.
    pub fn run(&self, argv: &[&str], timeout: std::time::Duration) -> Result<Output> {
        let out = self.inner.run(command_spec(argv, timeout)).into_result()?;
        Ok(out.into())
    }

    /// [`Host::run`] for a command line that carries secrets: each [`Arg::Secret`] is
    /// shown as `***` in every error text and log line (the host masks them), and any
    /// occurrence of a secret in the captured output comes back as `***`.
    pub fn run_masked(&self, argv: &[Arg], timeout: std::time::Duration) -> Result<Output> {
        let words: Vec<&str> = argv.iter().map(|a| a.value()).collect();
        let secret: Vec<u32> = (0u32..)
            .zip(argv)
            .filter(|(_, a)| matches!(a, Arg::Secret(_)))
            .map(|(i, _)| i)
            .collect();
        let out = self
            .inner
            .run_masked(command_spec(&words, timeout), RSlice::from_slice(&secret))
            .into_result()?;
        Ok(out.into())
    }

    /// Runs a command and fails unless it exits 0, with upstream's error text:
    /// `Failed to run: <argv>: exit status <n> (<stderr>)`. Returns stdout.
    pub fn run_ok(&self, argv: &[&str], timeout: std::time::Duration) -> Result<String> {
        succeeded(&argv.join(" "), self.run(argv, timeout)?)
    }

    /// [`Host::run_ok`] for a command line that carries secrets (auth keys, setup keys),
    /// marked [`Arg::Secret`]: they are `***` in the error text, as in everything the host
    /// shows (see [`Host::run_masked`]).
    pub fn run_ok_masked(&self, argv: &[Arg], timeout: std::time::Duration) -> Result<String> {
        let shown: Vec<&str> = argv.iter().map(|a| a.shown()).collect();
        succeeded(&shown.join(" "), self.run_masked(argv, timeout)?)
    }
}

/// One argument of a command line for [`Host::run_masked`]. Strings convert into
/// [`Arg::Plain`]; [`Arg::secret`] marks a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Plain(String),
    /// A secret (an auth key, a setup key): never shown, `***` in its place.
    Secret(String),
}

impl Arg {
    /// A secret argument.
    pub fn secret(value: impl Into<String>) -> Self {
        Arg::Secret(value.into())
    }

    fn value(&self) -> &str {
        match self {
            Arg::Plain(s) | Arg::Secret(s) => s,
        }
    }

    fn shown(&self) -> &str {
        match self {
            Arg::Plain(s) => s,
            Arg::Secret(_) => SECRET_MASK,
        }
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Plain(s.to_string())
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Plain(s)
    }
}

impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Arg::Plain(s.clone())
    }
}

fn command_spec(argv: &[&str], timeout: std::time::Duration) -> CommandSpec {
    CommandSpec {
        argv: argv.iter().map(|a| RString::from(*a)).collect(),
        stdin: RVec::new(),
        timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
    }
}

impl From<CommandOutput> for Output {
    fn from(o: CommandOutput) -> Self {
        Output {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// stdout of a command that exited 0, else upstream's error text for `shown` (the command
/// line as it may be shown).
fn succeeded(shown: &str, out: Output) -> Result<String> {
    if out.status == 0 {
        return Ok(out.stdout);
    }
    let mut msg = format!("Failed to run: {shown}: exit status {}", out.status);
    let stderr = out.stderr.trim();
    if !stderr.is_empty() {
        msg.push_str(&format!(" ({stderr})"));
    }
    Err(Error::internal(msg))
}

/// Decodes a JSON request body with a clear error (the field path, what was wrong).
pub fn decode<T: DeserializeOwned>(input: &[u8]) -> Result<T> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request("request body is empty"));
    }
    let de = &mut serde_json::Deserializer::from_slice(input);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            Error::bad_request(format!("invalid request body: {inner}"))
        } else {
            Error::bad_request(format!("invalid request body: {path}: {inner}"))
        }
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("cannot encode response: {e}")))
}

/// An extra endpoint a plugin serves below its own URL, e.g.
/// `RouteSpec { method: Method::Post, suffix: ":rejoin", op: "rejoin" }` for
/// `POST /1.0/services/<name>/:rejoin`. Requests reach [`Service::route`] or
/// [`Application::route`] with the op name and a [`RouteRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: crate::manifest::Method,
    pub suffix: &'static str,
    pub op: &'static str,
}

pub use crate::manifest::{Method, RouteRequest};

/// `{"state": .., "config": ..}`: the shape of every service and application.
#[derive(Serialize)]
struct Shape<'a, S, C> {
    state: &'a S,
    config: &'a C,
}

/// The same shape, `config` first (see [`Service::CONFIG_FIRST`]).
#[derive(Serialize)]
struct ConfigFirst<'a, S, C> {
    config: &'a C,
    state: &'a S,
}

#[derive(Deserialize)]
struct PutBody<C> {
    config: Option<C>,
}

/// The document the SDK persists for a service or an application.
#[derive(Serialize, Deserialize, Default)]
#[serde(bound = "C: Serialize + DeserializeOwned + Default")]
struct Stored<C> {
    #[serde(default)]
    config: C,
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

    type Config: Serialize + DeserializeOwned + Default + Clone + Send;
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

/// An application (`/1.0/applications/{name}`).
///
/// Config handling is the service's: PUT calls [`Application::validate`],
/// [`Application::validate_change`], then [`Application::update`] with a journal that is
/// rolled back if the update or the save fails, and committed once the config is saved.
/// Start and stop get a journal whose changes are kept.
pub trait Application: Sized + Send + Sync + 'static {
    const NAME: &'static str;
    const START_WEIGHT: i32 = 0;
    const PRIMARY: bool = false;
    const DEPENDENCIES: &'static [&'static str] = &[];
    const PATHS: &'static [&'static str] = &[];
    /// Hooks implemented beyond get/put/start/stop (e.g. `Hook::Backup`).
    const HOOKS: &'static [Hook] = &[];

    type Config: Serialize + DeserializeOwned + Default + Clone + Send;
    type State: Serialize;

    fn new(host: Host) -> Result<Self>;
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
    fn start(&self, _undo: &mut Undo, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    fn stop(&self, _undo: &mut Undo, _config: &Self::Config) -> Result<()> {
        Ok(())
    }
    fn restart(&self, _config: &Self::Config) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    fn factory_reset(&self, _config: &Self::Config) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    /// `:action` with `{"action", "config"}`; returns the response metadata.
    fn action(
        &self,
        _action: &str,
        _args: &std::collections::BTreeMap<String, String>,
    ) -> Result<serde_json::Value> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    /// Writes a tar archive of the application's data to `out`.
    fn backup(&self, _complete: bool, _out: &mut dyn Write) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    /// Restores from a tar archive produced by [`Application::backup`].
    fn restore(&self, _input: &mut dyn Read) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }

    /// Extra endpoints below `/1.0/applications/<name>/`.
    const ROUTES: &'static [RouteSpec] = &[];

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

/// An update provider. Its config is handled as a service's (see [`Application`]).
pub trait Provider: Sized + Send + Sync + 'static {
    const NAME: &'static str;
    /// Hooks implemented beyond get (e.g. `Hook::Register`).
    const HOOKS: &'static [Hook] = &[];
    type Config: Serialize + DeserializeOwned + Default + Clone + Send;
    type State: Serialize;

    fn new(host: Host) -> Result<Self>;
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
    fn register(&self, _config: &Self::Config) -> Result<()> {
        Err(Error::internal("registration unsupported"))
    }
    fn deregister(&self, _config: &Self::Config) -> Result<()> {
        Err(Error::internal("deregistration unsupported"))
    }
    fn check_update(&self, _config: &Self::Config) -> Result<serde_json::Value> {
        Err(Error::internal(NOT_SUPPORTED))
    }
}

/// The config-handling every kind shares: load, GET, PUT with validate/update/save.
struct Configured<C> {
    host: Host,
    /// Serializes read-modify-write of the stored config inside the plugin too.
    lock: std::sync::Mutex<()>,
    _c: std::marker::PhantomData<fn() -> C>,
}

impl<C: Serialize + DeserializeOwned + Default + Clone> Configured<C> {
    fn new(host: Host) -> Self {
        Configured {
            host,
            lock: std::sync::Mutex::new(()),
            _c: std::marker::PhantomData,
        }
    }

    fn config(&self) -> Result<C> {
        Ok(self.host.load_state::<Stored<C>>()?.config)
    }

    fn get<S: Serialize>(
        &self,
        config_first: bool,
        state: impl FnOnce(&C) -> Result<S>,
    ) -> Result<Vec<u8>> {
        let config = self.config()?;
        let state = state(&config)?;
        if config_first {
            encode(&ConfigFirst {
                config: &config,
                state: &state,
            })
        } else {
            encode(&Shape {
                state: &state,
                config: &config,
            })
        }
    }

    /// PUT: decode, validate, then `update` with a fresh journal and save. A failed
    /// update or save rolls the journal back (the saved config is still the old one); the
    /// journal is committed only once the new config is saved.
    fn put(
        &self,
        input: &[u8],
        validate: impl FnOnce(&C) -> Result<()>,
        validate_change: impl FnOnce(&C, &C) -> Result<()>,
        update: impl FnOnce(&mut Undo, &C, &C) -> Result<()>,
    ) -> Result<Vec<u8>> {
        let body: PutBody<C> = decode(input)?;
        let new = body
            .config
            .ok_or_else(|| Error::bad_request("invalid request body: missing field `config`"))?;
        validate(&new)?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config()?;
        validate_change(&old, &new)?;
        let mut undo = Undo::new(&self.host);
        let applied = update(&mut undo, &old, &new)
            .and_then(|()| self.host.save_state(&Stored { config: new }));
        match applied {
            Ok(()) => {
                undo.commit();
                empty()
            }
            Err(e) => {
                undo.rollback();
                Err(e)
            }
        }
    }

    fn with_config<T>(&self, f: impl FnOnce(&C) -> Result<T>) -> Result<T> {
        let config = self.config()?;
        f(&config)
    }

    /// Start, stop, reset: `f` with the saved config and a journal whose changes are kept
    /// whatever `f` returns.
    fn kept(&self, f: impl FnOnce(&mut Undo, &C) -> Result<()>) -> Result<Vec<u8>> {
        let config = self.config()?;
        Undo::kept(&self.host, |undo| f(undo, &config))?;
        empty()
    }
}

/// Dispatch of `invoke` operations, implemented once per kind.
trait Dispatch: Send + Sync {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>>;
    fn backup(&self, _options: &[u8], _out: &mut dyn Write) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    fn restore(&self, _input: &mut dyn Read) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
}

fn unknown_op(op: &str) -> Error {
    Error::new(
        501,
        format!("operation '{op}' is not implemented by this plugin"),
    )
}

fn empty() -> Result<Vec<u8>> {
    Ok(b"{}".to_vec())
}

struct ServiceAdapter<T: Service> {
    svc: T,
    cfg: Configured<T::Config>,
}

impl<T: Service> Dispatch for ServiceAdapter<T> {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>> {
        let s = &self.svc;
        match op {
            "get" => self.cfg.get(T::CONFIG_FIRST, |c| s.state(c)),
            "put" => self.cfg.put(
                input,
                |c| s.validate(c),
                |old, new| s.validate_change(old, new),
                |undo, old, new| s.update(undo, old, new),
            ),
            "start" => self.cfg.kept(|undo, c| s.start(undo, c)),
            "stop" => self.cfg.kept(|undo, c| s.stop(undo, c)),
            "reset" => match T::RESET {
                Some(reset) => self.cfg.kept(|undo, c| reset(s, undo, c)),
                None => Err(Error::internal(RESET_NOT_SUPPORTED)),
            },
            _ if T::ROUTES.iter().any(|r| r.op == op) => {
                let req: RouteRequest = decode(input)?;
                encode(&self.cfg.with_config(|c| s.route(op, req, c))?)
            }
            _ => Err(unknown_op(op)),
        }
    }
}

#[derive(Deserialize, Default)]
struct ActionBody {
    #[serde(default)]
    action: String,
    #[serde(default)]
    config: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct BackupOptions {
    #[serde(default)]
    complete: bool,
}

struct ApplicationAdapter<T: Application> {
    app: T,
    cfg: Configured<T::Config>,
}

impl<T: Application> Dispatch for ApplicationAdapter<T> {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>> {
        let a = &self.app;
        match op {
            "get" => self.cfg.get(false, |c| a.state(c)),
            "put" => self.cfg.put(
                input,
                |c| a.validate(c),
                |old, new| a.validate_change(old, new),
                |undo, old, new| a.update(undo, old, new),
            ),
            "start" => self.cfg.kept(|undo, c| a.start(undo, c)),
            "stop" => self.cfg.kept(|undo, c| a.stop(undo, c)),
            "restart" => self.cfg.with_config(|c| a.restart(c)).and_then(|_| empty()),
            "factory-reset" => self
                .cfg
                .with_config(|c| a.factory_reset(c))
                .and_then(|_| empty()),
            "action" => {
                let body: ActionBody = decode(input)?;
                encode(&a.action(&body.action, &body.config)?)
            }
            _ if T::ROUTES.iter().any(|r| r.op == op) => {
                let req: RouteRequest = decode(input)?;
                encode(&self.cfg.with_config(|c| a.route(op, req, c))?)
            }
            _ => Err(unknown_op(op)),
        }
    }
    fn backup(&self, options: &[u8], out: &mut dyn Write) -> Result<()> {
        let opts: BackupOptions = if options.iter().all(u8::is_ascii_whitespace) {
            BackupOptions::default()
        } else {
            decode(options)?
        };
        self.app.backup(opts.complete, out)
    }
    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        self.app.restore(input)
    }
}

struct ProviderAdapter<T: Provider> {
    prov: T,
    cfg: Configured<T::Config>,
}

impl<T: Provider> Dispatch for ProviderAdapter<T> {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>> {
        let p = &self.prov;
        match op {
            "get" => self.cfg.get(false, |c| p.state(c)),
            "put" => self.cfg.put(
                input,
                |c| p.validate(c),
                |old, new| p.validate_change(old, new),
                |undo, old, new| p.update(undo, old, new),
            ),
            "register" => self
                .cfg
                .with_config(|c| p.register(c))
                .and_then(|_| empty()),
            "deregister" => self
                .cfg
                .with_config(|c| p.deregister(c))
                .and_then(|_| empty()),
            "check-update" => self
                .cfg
                .with_config(|c| p.check_update(c))
                .and_then(|v| encode(&v)),
            _ => Err(unknown_op(op)),
        }
    }
}

/// The ABI-facing instance: every entry point runs under `catch_unwind`.
struct Instance(Box<dyn Dispatch>);

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `f`, turning a panic into a 500 [`PluginError`].
#[doc(hidden)]
pub fn __guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(p) => RResult::RErr(PluginError::new(
            500,
            format!("{PANIC_PREFIX} in {what}: {}", panic_message(&*p)),
        )),
    }
}

struct SinkWriter<'a, 'b>(&'a mut ByteSinkRef<'b>);

impl Write for SinkWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write(RSlice::from_slice(buf))
            .into_result()
            .map_err(|e| std::io::Error::other(e.message.into_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct SourceReader<'a, 'b>(&'a mut ByteSourceRef<'b>);

impl Read for SourceReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0
            .read(RSliceMut::from_mut_slice(buf))
            .into_result()
            .map_err(|e| std::io::Error::other(e.message.into_string()))
    }
}

impl PluginOps for Instance {
    fn invoke(&self, op: RStr<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        __guard(op.as_str(), || {
            self.0.invoke(op.as_str(), input.as_slice()).map(RVec::from)
        })
    }

    fn backup(
        &self,
        options: RSlice<'_, u8>,
        mut sink: ByteSinkRef<'_>,
    ) -> RResult<(), PluginError> {
        __guard("backup", || {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, SinkWriter(&mut sink));
            self.0.backup(options.as_slice(), &mut w)?;
            w.flush()?;
            Ok(())
        })
    }

    fn restore(&self, mut source: ByteSourceRef<'_>) -> RResult<(), PluginError> {
        __guard("restore", || self.0.restore(&mut SourceReader(&mut source)))
    }
}

fn boxed(d: impl Dispatch + 'static) -> PluginBox {
    PluginOps_TO::from_value(Instance(Box::new(d)), TD_Opaque)
}

fn base_manifest(name: &str, kind: Kind, version: &str, api_version: &str) -> Manifest {
    Manifest {
        name: name.to_string(),
        kind,
        version: version.to_string(),
        api_version: api_version.to_string(),
        hooks: vec![Hook::Get, Hook::Put],
        routes: Vec::<Route>::new(),
        dependencies: vec![],
        start_weight: 0,
        primary: false,
        paths: vec![],
        requires_application: None,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[doc(hidden)]
pub fn __service_manifest<T: Service>(version: &str, api_version: &str) -> Manifest {
    let mut m = base_manifest(T::NAME, Kind::Service, version, api_version);
    m.hooks.extend([Hook::Start, Hook::Stop]);
    if T::RESET.is_some() {
        m.hooks.push(Hook::Reset);
    }
    m.start_weight = T::START_WEIGHT;
    m.paths = strings(T::PATHS);
    m.requires_application = T::REQUIRES_APPLICATION.map(str::to_string);
    m.routes = routes(Kind::Service, T::NAME, T::ROUTES);
    m
}

fn routes(kind: Kind, name: &str, specs: &[RouteSpec]) -> Vec<Route> {
    let collection = kind.collection().unwrap_or("plugins");
    specs
        .iter()
        .map(|r| Route {
            method: r.method,
            path: format!("/1.0/{collection}/{name}/{}", r.suffix),
            op: r.op.to_string(),
        })
        .collect()
}

#[doc(hidden)]
pub fn __application_manifest<T: Application>(version: &str, api_version: &str) -> Manifest {
    let mut m = base_manifest(T::NAME, Kind::Application, version, api_version);
    m.hooks.extend([Hook::Start, Hook::Stop]);
    m.hooks.extend(T::HOOKS.iter().copied());
    m.hooks.sort();
    m.hooks.dedup();
    m.start_weight = T::START_WEIGHT;
    m.primary = T::PRIMARY;
    m.dependencies = strings(T::DEPENDENCIES);
    m.paths = strings(T::PATHS);
    m.routes = routes(Kind::Application, T::NAME, T::ROUTES);
    m
}

#[doc(hidden)]
pub fn __provider_manifest<T: Provider>(version: &str, api_version: &str) -> Manifest {
    let mut m = base_manifest(T::NAME, Kind::Provider, version, api_version);
    m.hooks.extend(T::HOOKS.iter().copied());
    m.hooks.sort();
    m.hooks.dedup();
    m
}

#[doc(hidden)]
pub fn __service_instance<T: Service>(host: HostHandle) -> Result<PluginBox> {
    let host = Host::from_handle(host);
    let svc = T::new(host.clone())?;
    Ok(boxed(ServiceAdapter {
        svc,
        cfg: Configured::new(host),
    }))
}

#[doc(hidden)]
pub fn __application_instance<T: Application>(host: HostHandle) -> Result<PluginBox> {
    let host = Host::from_handle(host);
    let app = T::new(host.clone())?;
    Ok(boxed(ApplicationAdapter {
        app,
        cfg: Configured::new(host),
    }))
}

#[doc(hidden)]
pub fn __provider_instance<T: Provider>(host: HostHandle) -> Result<PluginBox> {
    let host = Host::from_handle(host);
    let prov = T::new(host.clone())?;
    Ok(boxed(ProviderAdapter {
        prov,
        cfg: Configured::new(host),
    }))
}

/// Renders a manifest to JSON under `catch_unwind` (an empty string on panic, which the
/// host refuses as an invalid manifest).
#[doc(hidden)]
pub fn __manifest_json(f: impl FnOnce() -> Manifest) -> RString {
    match catch_unwind(AssertUnwindSafe(|| serde_json::to_string(&f()))) {
        Ok(Ok(s)) => RString::from(s),
        _ => RString::new(),
    }
}

#[doc(hidden)]
pub fn __instantiate(f: impl FnOnce() -> Result<PluginBox>) -> RResult<PluginBox, PluginError> {
    __guard("constructor", f)
}

// Keep RBox in the public signature path used by the macros.
#[doc(hidden)]
pub type __RBox<T> = RBox<T>;

/// Exports the whole ABI of a plugin: the version symbol and the root module.
/// Use [`export_service!`], [`export_application!`] or [`export_provider!`] instead.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($manifest:ident, $instance:ident, $ty:ty, $api:expr) => {
        // The SDK turns a panic in a hook into an error with `catch_unwind`; with
        // `panic = "abort"` the same panic would abort the whole daemon.
        #[cfg(panic = "abort")]
        ::std::compile_error!(
            "incus-osd plugins must be built with panic = \"unwind\" (the default): with \"abort\", a panic in the plugin would take the daemon down"
        );

        #[no_mangle]
        pub extern "C" fn incus_osd_plugin_api_version() -> *const ::std::os::raw::c_char {
            static V: ::std::sync::OnceLock<::std::ffi::CString> = ::std::sync::OnceLock::new();
            V.get_or_init(|| ::std::ffi::CString::new($api).expect("no NUL in version"))
                .as_ptr()
        }

        #[::abi_stable::export_root_module]
        pub fn __incus_osd_plugin_root_module() -> $crate::abi::PluginModuleRef {
            use ::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn manifest() -> ::abi_stable::std_types::RString {
                $crate::sdk::__manifest_json(|| {
                    $crate::sdk::$manifest::<$ty>(env!("CARGO_PKG_VERSION"), $api)
                })
            }
            extern "C" fn instantiate(
                host: $crate::abi::HostHandle,
            ) -> ::abi_stable::std_types::RResult<$crate::abi::PluginBox, $crate::abi::PluginError>
            {
                $crate::sdk::__instantiate(|| $crate::sdk::$instance::<$ty>(host))
            }
            $crate::abi::PluginModule {
                manifest,
                instantiate,
            }
            .leak_into_prefix()
        }
    };
}

/// Exports a [`Service`] implementation as the plugin of this `cdylib`.
#[macro_export]
macro_rules! export_service {
    ($ty:ty) => {
        $crate::export_service!($ty, api_version = $crate::API_VERSION);
    };
    ($ty:ty, api_version = $api:expr) => {
        $crate::__export_plugin!(__service_manifest, __service_instance, $ty, $api);
    };
}

/// Exports an [`Application`] implementation as the plugin of this `cdylib`.
#[macro_export]
macro_rules! export_application {
    ($ty:ty) => {
        $crate::__export_plugin!(
            __application_manifest,
            __application_instance,
            $ty,
            $crate::API_VERSION
        );
    };
}

/// Exports a [`Provider`] implementation as the plugin of this `cdylib`.
#[macro_export]
macro_rules! export_provider {
    ($ty:ty) => {
        $crate::__export_plugin!(
            __provider_manifest,
            __provider_instance,
            $ty,
            $crate::API_VERSION
        );
    };
}
