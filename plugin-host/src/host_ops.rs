//! The one implementation of the plugin ABI's [`HostOps`]: what a plugin may ask of its
//! host, decided here for the daemon and the harness alike. The effects go through
//! adapters ([`Adapters`]): the daemon gives real ones, the harness recording ones.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use plugin_api::abi::{
    mask_secrets, mask_secrets_str, secret_values, CommandOutput, CommandSpec, FileFacts, FileKind,
    FileStat, HostHandle, HostOps, HostOps_TO, HttpReply, LogLevel, OpenFlags, PluginError, UnitOp,
    RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use plugin_api::net::{Download, Request, ResponseHead};
use plugin_api::Kind;
use serde_json::Value;

use crate::exec::Commands;
use crate::files::{AtomicWrite, Facts, FsError, OpenOptions, RootFs, Stat, StatKind};
use crate::net::{Net, Progress};
use crate::units::{valid_unit_name, UnitAction, Units};
use crate::PlatformError;

/// Each plugin's persisted state document, found by its slot key ([`state_key`]).
pub trait StateSlot: Send + Sync {
    /// The document at `slot`, `Value::Null` when nothing was saved yet.
    fn load(&self, slot: &str) -> Result<Value, PlatformError>;
    /// Replaces the document at `slot`, durably.
    fn save(&self, slot: &str, value: Value) -> Result<(), PlatformError>;
}

/// The key of a plugin's state document: a plugin is its kind and its name together, so a
/// `debug` provider and a `debug` application each have their own. A service keeps its bare
/// name (the key every service always had); another kind is `<kind>/<name>`, e.g.
/// `provider/debug`, `application/debug` (a name never holds a `/`).
pub fn state_key(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Service => name.to_string(),
        other => format!("{}/{name}", other.as_str()),
    }
}

/// Where plugins' log lines go.
pub trait LogSink: Send + Sync {
    fn log(&self, plugin: &str, level: LogLevel, message: &str);
}

/// Log lines as `tracing` events with a `plugin` field (the daemon's sink).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLog;

impl LogSink for TracingLog {
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        match level {
            LogLevel::Error => tracing::error!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
        }
    }
}

/// Files under the root prefix, as one plugin sees them. [`RootFs`] is the real one (built
/// with the plugin's declared paths as its write allow-list); the harness wraps it to
/// record effects.
pub trait Files: Send + Sync {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, FsError>;
    fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FsError>;
    fn create_dir(&self, path: &str, mode: u32) -> Result<(), FsError>;
    fn remove(&self, path: &str) -> Result<(), FsError>;
    fn list(&self, path: &str) -> Result<Option<Vec<String>>, FsError>;
    fn stat(&self, path: &str) -> Result<Option<Stat>, FsError>;
    /// A streaming writer that replaces the file at `path` atomically once committed
    /// (see [`AtomicWrite`]); the write allow-list applies.
    fn create_atomic(&self, path: &str, mode: u32) -> Result<Box<dyn AtomicWrite>, FsError>;
    /// A regular file opened as `how` says (a writing open under the allow-list only);
    /// `Ok(None)` when absent (since 1.3).
    fn open(&self, path: &str, how: &OpenOptions) -> Result<Option<OwnedFd>, FsError>;
    /// A directory under the allow-list; `Ok(None)` when absent (since 1.3).
    fn open_dir(&self, path: &str) -> Result<Option<OwnedFd>, FsError>;
    /// Full facts about a path, a final symlink not followed (since 1.3).
    fn facts(&self, path: &str) -> Result<Option<Facts>, FsError>;
    /// `lchown` (since 1.3); `u32::MAX` keeps an id.
    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsError>;
    /// A new symlink `path` -> `target` (since 1.3).
    fn symlink(&self, target: &str, path: &str) -> Result<(), FsError>;
    /// An atomic rename with `renameat2` flags (since 1.3).
    fn rename(&self, from: &str, to: &str, flags: u32) -> Result<(), FsError>;
}

impl Files for RootFs {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, FsError> {
        RootFs::read(self, path)
    }
    fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FsError> {
        RootFs::write(self, path, data, mode)
    }
    fn create_dir(&self, path: &str, mode: u32) -> Result<(), FsError> {
        RootFs::create_dir(self, path, mode)
    }
    fn remove(&self, path: &str) -> Result<(), FsError> {
        RootFs::remove(self, path)
    }
    fn list(&self, path: &str) -> Result<Option<Vec<String>>, FsError> {
        RootFs::list(self, path)
    }
    fn stat(&self, path: &str) -> Result<Option<Stat>, FsError> {
        RootFs::stat(self, path)
    }
    fn create_atomic(&self, path: &str, mode: u32) -> Result<Box<dyn AtomicWrite>, FsError> {
        Ok(Box::new(RootFs::create_atomic(self, path, mode)?))
    }
    fn open(&self, path: &str, how: &OpenOptions) -> Result<Option<OwnedFd>, FsError> {
        RootFs::open(self, path, how)
    }
    fn open_dir(&self, path: &str) -> Result<Option<OwnedFd>, FsError> {
        RootFs::open_dir(self, path)
    }
    fn facts(&self, path: &str) -> Result<Option<Facts>, FsError> {
        RootFs::facts(self, path)
    }
    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsError> {
        RootFs::chown(self, path, uid, gid)
    }
    fn symlink(&self, target: &str, path: &str) -> Result<(), FsError> {
        RootFs::symlink(self, target, path)
    }
    fn rename(&self, from: &str, to: &str, flags: u32) -> Result<(), FsError> {
        RootFs::rename(self, from, to, flags)
    }
}

/// The adapters behind one plugin's host handle.
#[derive(Clone)]
pub struct Adapters {
    pub files: Arc<dyn Files>,
    pub units: Arc<dyn Units>,
    pub commands: Arc<dyn Commands>,
    pub state: Arc<dyn StateSlot>,
    pub log: Arc<dyn LogSink>,
    /// HTTP requests and downloads (`NoNet` refuses them).
    pub net: Arc<dyn Net>,
    /// Where download progress goes.
    pub progress: Arc<dyn Progress>,
}

/// One plugin's view of the host.
pub struct PluginHost {
    /// The name its log lines and requests are tagged with.
    name: String,
    /// Where its state document lives ([`state_key`]).
    slot: String,
    a: Adapters,
}

impl PluginHost {
    /// The host of `plugin`, whose state document is the one at `slot` (for a plugin,
    /// [`state_key`] of its kind and name).
    pub fn new(plugin: &str, slot: &str, adapters: Adapters) -> Self {
        PluginHost {
            name: plugin.to_string(),
            slot: slot.to_string(),
            a: adapters,
        }
    }

    /// The ABI handle for plugin `plugin` with its state document at `slot`.
    pub fn handle(plugin: &str, slot: &str, adapters: Adapters) -> HostHandle {
        HostOps_TO::from_value(PluginHost::new(plugin, slot, adapters), TD_Opaque)
    }

    /// The ABI handle for the plugin `manifest` describes (state at its [`state_key`]).
    pub fn plugin_handle(manifest: &plugin_api::Manifest, adapters: Adapters) -> HostHandle {
        let slot = state_key(manifest.kind, &manifest.name);
        PluginHost::handle(&manifest.name, &slot, adapters)
    }
}

fn err(message: impl std::fmt::Display) -> PluginError {
    PluginError::new(500, message.to_string())
}

fn to_r<T, E: std::fmt::Display>(r: Result<T, E>) -> RResult<T, PluginError> {
    r.map_err(err).into()
}

/// The ABI operation a platform action stands for (the reverse of [`unit_action`]).
pub fn abi_unit_op(action: UnitAction) -> UnitOp {
    match action {
        UnitAction::Start => UnitOp::Start,
        UnitAction::Stop => UnitOp::Stop,
        UnitAction::Restart => UnitOp::Restart,
        UnitAction::Reload => UnitOp::Reload,
        UnitAction::ActiveState => UnitOp::ActiveState,
        UnitAction::Kill => UnitOp::Kill,
    }
}

/// The platform's unit action for an ABI operation (`None` for daemon-reload).
pub fn unit_action(op: UnitOp) -> Option<UnitAction> {
    Some(match op {
        UnitOp::Start => UnitAction::Start,
        UnitOp::Stop => UnitAction::Stop,
        UnitOp::Restart => UnitAction::Restart,
        UnitOp::Reload => UnitAction::Reload,
        UnitOp::ActiveState => UnitAction::ActiveState,
        UnitOp::Kill => UnitAction::Kill,
        UnitOp::DaemonReload => return None,
    })
}

impl HostOps for PluginHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        self.a.log.log(&self.name, level, message.as_str());
    }

    fn state_load(&self) -> RResult<RString, PluginError> {
        to_r(
            self.a
                .state
                .load(&self.slot)
                .map(|v| RString::from(v.to_string())),
        )
    }

    fn state_save(&self, json: RStr<'_>) -> RResult<(), PluginError> {
        let value: Value = match serde_json::from_str(json.as_str()) {
            Ok(v) => v,
            Err(e) => return RResult::RErr(err(format!("state is not valid JSON: {e}"))),
        };
        to_r(self.a.state.save(&self.slot, value))
    }

    fn file_read(&self, path: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError> {
        to_r(
            self.a
                .files
                .read(path.as_str())
                .map(|o| o.map(RVec::from).into()),
        )
    }

    fn file_write(
        &self,
        path: RStr<'_>,
        data: RSlice<'_, u8>,
        mode: u32,
    ) -> RResult<(), PluginError> {
        tracing::debug!(plugin = %self.name, path = path.as_str(), mode = format_args!("{mode:o}"), "write file");
        to_r(self.a.files.write(path.as_str(), data.as_slice(), mode))
    }

    fn dir_create(&self, path: RStr<'_>, mode: u32) -> RResult<(), PluginError> {
        to_r(self.a.files.create_dir(path.as_str(), mode))
    }

    fn remove(&self, path: RStr<'_>) -> RResult<(), PluginError> {
        tracing::debug!(plugin = %self.name, path = path.as_str(), "remove");
        to_r(self.a.files.remove(path.as_str()))
    }

    fn unit(&self, op: UnitOp, unit: RStr<'_>) -> RResult<RString, PluginError> {
        let unit = unit.as_str();
        let Some(action) = unit_action(op) else {
            tracing::info!(plugin = %self.name, "daemon-reload");
            return to_r(self.a.units.daemon_reload().map(|_| RString::new()));
        };
        if !valid_unit_name(unit) {
            return RResult::RErr(err(format!("invalid unit name '{}'", unit.escape_debug())));
        }
        if action != UnitAction::ActiveState {
            tracing::info!(plugin = %self.name, unit, op = action.as_str(), "unit operation");
        }
        to_r(self.a.units.unit(action, unit).map(RString::from))
    }

    fn dir_list(&self, path: RStr<'_>) -> RResult<ROption<RVec<RString>>, PluginError> {
        to_r(self.a.files.list(path.as_str()).map(|o| {
            o.map(|names| names.into_iter().map(RString::from).collect())
                .into()
        }))
    }

    fn file_stat(&self, path: RStr<'_>) -> RResult<ROption<FileStat>, PluginError> {
        to_r(
            self.a
                .files
                .stat(path.as_str())
                .map(|o| o.map(to_abi_stat).into()),
        )
    }

    fn run(&self, spec: CommandSpec) -> RResult<CommandOutput, PluginError> {
        self.run_command(spec, &[])
    }

    fn run_masked(
        &self,
        spec: CommandSpec,
        secret_args: RSlice<'_, u32>,
    ) -> RResult<CommandOutput, PluginError> {
        self.run_command(spec, secret_args.as_slice())
    }

    fn http(&self, request: RStr<'_>, body: RSlice<'_, u8>) -> RResult<HttpReply, PluginError> {
        let request: Request = match serde_json::from_str(request.as_str()) {
            Ok(r) => r,
            Err(e) => return RResult::RErr(err(format!("invalid HTTP request: {e}"))),
        };
        tracing::debug!(plugin = %self.name, method = %request.method, url = crate::net::shown_url(&request.url), "http request");
        match self.a.net.http(&self.name, &request, body.as_slice()) {
            Ok(resp) => {
                let head = ResponseHead {
                    status: resp.status,
                    headers: resp.headers,
                };
                RResult::ROk(HttpReply {
                    head: RString::from(serde_json::to_string(&head).unwrap_or_default()),
                    body: RVec::from(resp.body),
                })
            }
            Err(e) => RResult::RErr(err(e)),
        }
    }

    fn file_open(
        &self,
        path: RStr<'_>,
        flags: OpenFlags,
        mode: u32,
    ) -> RResult<ROption<i32>, PluginError> {
        self.file_open_impl(path.as_str(), flags, mode)
    }

    fn dir_open(&self, path: RStr<'_>) -> RResult<ROption<i32>, PluginError> {
        to_r(self.a.files.open_dir(path.as_str()).map(hand_over))
    }

    fn file_facts(&self, path: RStr<'_>) -> RResult<ROption<FileFacts>, PluginError> {
        to_r(
            self.a
                .files
                .facts(path.as_str())
                .map(|o| o.map(to_abi_facts).into()),
        )
    }

    fn chown(&self, path: RStr<'_>, uid: u32, gid: u32) -> RResult<(), PluginError> {
        tracing::debug!(plugin = %self.name, path = path.as_str(), uid, gid, "chown");
        to_r(self.a.files.chown(path.as_str(), uid, gid))
    }

    fn symlink(&self, target: RStr<'_>, path: RStr<'_>) -> RResult<(), PluginError> {
        tracing::debug!(plugin = %self.name, path = path.as_str(), target = target.as_str(), "symlink");
        to_r(self.a.files.symlink(target.as_str(), path.as_str()))
    }

    fn rename(&self, from: RStr<'_>, to: RStr<'_>, flags: u32) -> RResult<(), PluginError> {
        self.rename_impl(from.as_str(), to.as_str(), flags)
    }

    fn download(&self, request: RStr<'_>) -> RResult<RString, PluginError> {
        let download: Download = match serde_json::from_str(request.as_str()) {
            Ok(r) => r,
            Err(e) => return RResult::RErr(err(format!("invalid download request: {e}"))),
        };
        tracing::info!(plugin = %self.name, url = crate::net::shown_url(&download.request.url), target = %download.target, "download");
        let done = self.a.net.download(
            &self.name,
            &download,
            self.a.files.as_ref(),
            self.a.progress.as_ref(),
        );
        to_r(done.map(|r| RString::from(serde_json::to_string(&r).unwrap_or_default())))
    }
}

/// The file options an ABI [`OpenFlags`] stands for, or the 400 text of a set the
/// contract does not allow.
pub fn open_options(flags: OpenFlags, mode: u32) -> Result<OpenOptions, String> {
    let unknown = flags.bits & !OpenFlags::ALL.bits;
    if unknown != 0 {
        return Err(format!("unknown open flags {unknown:#x}"));
    }
    let has = |f: OpenFlags| flags.contains(f);
    let how = OpenOptions {
        read: has(OpenFlags::READ),
        write: has(OpenFlags::WRITE),
        create: has(OpenFlags::CREATE),
        truncate: has(OpenFlags::TRUNCATE),
        append: has(OpenFlags::APPEND),
        exclusive: has(OpenFlags::EXCLUSIVE),
        mode,
    };
    if !how.read && !how.write {
        return Err("an open needs READ or WRITE".to_string());
    }
    if how.writes() && !how.write {
        return Err("CREATE, TRUNCATE, APPEND and EXCLUSIVE need WRITE".to_string());
    }
    if how.exclusive && !how.create {
        return Err("EXCLUSIVE needs CREATE".to_string());
    }
    Ok(how)
}

fn bad(message: impl Into<String>) -> PluginError {
    PluginError::new(400, message.into())
}

/// Hands a descriptor over to the plugin, which owns it from then on.
fn hand_over(fd: Option<OwnedFd>) -> ROption<i32> {
    fd.map(IntoRawFd::into_raw_fd).into()
}

/// Converts the root view's facts into the ABI's.
pub fn to_abi_facts(f: Facts) -> FileFacts {
    FileFacts {
        kind: abi_kind(f.kind),
        mode: f.mode,
        size: f.size,
        mtime_secs: f.mtime_secs,
        mtime_nanos: f.mtime_nanos,
        uid: f.uid,
        gid: f.gid,
        link_target: RString::from(f.link_target),
    }
}

impl PluginHost {
    fn file_open_impl(
        &self,
        path: &str,
        flags: OpenFlags,
        mode: u32,
    ) -> RResult<ROption<i32>, PluginError> {
        let how = match open_options(flags, mode) {
            Ok(how) => how,
            Err(e) => return RResult::RErr(bad(format!("cannot open {path}: {e}"))),
        };
        if how.writes() {
            tracing::debug!(plugin = %self.name, path, flags = flags.bits, "open file for writing");
        }
        to_r(self.a.files.open(path, &how).map(hand_over))
    }

    fn rename_impl(&self, from: &str, to: &str, flags: u32) -> RResult<(), PluginError> {
        let known = RENAME_NOREPLACE | RENAME_EXCHANGE;
        if flags & !known != 0 || flags == known {
            return RResult::RErr(bad(format!(
                "cannot rename {from} to {to}: bad flags {flags:#x} (RENAME_NOREPLACE or \
                 RENAME_EXCHANGE, not both)"
            )));
        }
        tracing::debug!(plugin = %self.name, from, to, flags, "rename");
        to_r(self.a.files.rename(from, to, flags))
    }

    /// Runs a plugin's command. The secret arguments (indices `secret_args`) never leave:
    /// the log line names the program only, and the error text (whichever adapter wrote
    /// it: spawn failure, timeout, refusal) and the captured output get each secret
    /// replaced by `***`.
    fn run_command(
        &self,
        spec: CommandSpec,
        secret_args: &[u32],
    ) -> RResult<CommandOutput, PluginError> {
        let secrets = secret_values(&spec.argv, secret_args);
        let mask = |bytes: Vec<u8>| -> RVec<u8> {
            if secrets.is_empty() {
                bytes.into()
            } else {
                mask_secrets(&bytes, &secrets).into()
            }
        };
        let argv: Vec<String> = spec.argv.iter().map(|a| a.to_string()).collect();
        let program = argv.first().map(String::as_str).unwrap_or("");
        let program = mask_secrets_str(program, &secrets);
        tracing::debug!(plugin = %self.name, program, "run command");
        let timeout = Duration::from_millis(spec.timeout_ms.max(1));
        match self.a.commands.run(&argv, spec.stdin.as_slice(), timeout) {
            Ok(o) => RResult::ROk(CommandOutput {
                status: o.status,
                stdout: mask(o.stdout),
                stderr: mask(o.stderr),
            }),
            Err(e) => RResult::RErr(err(mask_secrets_str(&e.0, &secrets))),
        }
    }
}

/// Converts the root view's stat into the ABI's.
pub fn to_abi_stat(s: Stat) -> FileStat {
    FileStat {
        kind: abi_kind(s.kind),
        mode: s.mode,
        link_target: RString::from(s.link_target),
    }
}

fn abi_kind(k: StatKind) -> FileKind {
    match k {
        StatKind::File => FileKind::File,
        StatKind::Dir => FileKind::Dir,
        StatKind::Symlink => FileKind::Symlink,
        StatKind::Other => FileKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Refused;
    use crate::units::Unavailable;
    use plugin_api::Hook;
    use std::sync::Mutex;

    #[derive(Default)]
    struct MemState(Mutex<Option<Value>>);

    impl StateSlot for MemState {
        fn load(&self, _: &str) -> Result<Value, PlatformError> {
            Ok(self.0.lock().unwrap().clone().unwrap_or(Value::Null))
        }
        fn save(&self, _: &str, v: Value) -> Result<(), PlatformError> {
            *self.0.lock().unwrap() = Some(v);
            Ok(())
        }
    }

    fn host(root: &std::path::Path) -> PluginHost {
        host_with(root, Arc::new(Refused::new("test")))
    }

    fn host_with(root: &std::path::Path, commands: Arc<dyn Commands>) -> PluginHost {
        PluginHost::new(
            "demo",
            "demo",
            Adapters {
                files: Arc::new(RootFs::restricted(root, &["/etc/demo".to_string()])),
                units: Arc::new(Unavailable::new("test")),
                commands,
                state: Arc::new(MemState::default()),
                log: Arc::new(TracingLog),
                net: Arc::new(crate::net::NoNet),
                progress: Arc::new(crate::net::NoProgress),
            },
        )
    }

    /// Documents by slot key, as the daemon's state store keeps them.
    #[derive(Default)]
    struct Slots(Mutex<std::collections::BTreeMap<String, Value>>);

    impl StateSlot for Slots {
        fn load(&self, slot: &str) -> Result<Value, PlatformError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(slot)
                .cloned()
                .unwrap_or(Value::Null))
        }
        fn save(&self, slot: &str, v: Value) -> Result<(), PlatformError> {
            self.0.lock().unwrap().insert(slot.to_string(), v);
            Ok(())
        }
    }

    #[test]
    fn plugins_sharing_a_name_across_kinds_keep_their_own_state() {
        let root = tempfile::tempdir().unwrap();
        let slots = Arc::new(Slots::default());
        let host_of = |kind: Kind| {
            let manifest = plugin_api::Manifest {
                name: "debug".into(),
                kind,
                version: "1.0.0".into(),
                api_version: plugin_api::API_VERSION.into(),
                hooks: vec![Hook::Get],
                routes: vec![],
                dependencies: vec![],
                start_weight: 0,
                primary: false,
                paths: vec![],
                requires_application: None,
                variants: vec![],
                late_update_check: false,
                backup: None,
                debug_logs: vec![],
            };
            PluginHost::plugin_handle(
                &manifest,
                Adapters {
                    files: Arc::new(RootFs::new(root.path())),
                    units: Arc::new(Unavailable::new("test")),
                    commands: Arc::new(Refused::new("test")),
                    state: slots.clone(),
                    log: Arc::new(TracingLog),
                    net: Arc::new(crate::net::NoNet),
                    progress: Arc::new(crate::net::NoProgress),
                },
            )
        };
        let (provider, app, service) = (
            host_of(Kind::Provider),
            host_of(Kind::Application),
            host_of(Kind::Service),
        );
        provider
            .state_save(RStr::from_str(r#"{"config":{"server":"a"}}"#))
            .unwrap();
        app.state_save(RStr::from_str(r#"{"config":{"note":"b"}}"#))
            .unwrap();
        assert_eq!(
            provider.state_load().unwrap().as_str(),
            r#"{"config":{"server":"a"}}"#
        );
        assert_eq!(
            app.state_load().unwrap().as_str(),
            r#"{"config":{"note":"b"}}"#
        );
        assert_eq!(service.state_load().unwrap().as_str(), "null");
        let keys: Vec<String> = slots.0.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["application/debug", "provider/debug"]);
        assert_eq!(state_key(Kind::Service, "iscsi"), "iscsi");
    }

    #[test]
    fn unit_actions_and_abi_operations_convert_both_ways() {
        use UnitAction::*;
        for a in [Start, Stop, Restart, Reload, ActiveState, Kill] {
            assert_eq!(unit_action(abi_unit_op(a)), Some(a));
        }
        assert_eq!(unit_action(UnitOp::DaemonReload), None);
    }

    #[test]
    fn bad_unit_names_never_reach_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let e = h
            .unit(UnitOp::Start, RStr::from_str("../../x.service"))
            .unwrap_err();
        assert_eq!(e.message.as_str(), "invalid unit name '../../x.service'");
        // A good name reaches the adapter (which says why it cannot act).
        let e = h
            .unit(UnitOp::Start, RStr::from_str("demo.service"))
            .unwrap_err();
        assert!(
            e.message.as_str().contains("systemd is not reachable"),
            "{e:?}"
        );
    }

    #[test]
    fn state_round_trips_and_refuses_non_json() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        assert_eq!(h.state_load().unwrap().as_str(), "null");
        h.state_save(RStr::from_str("{\"a\":1}")).unwrap();
        assert_eq!(h.state_load().unwrap().as_str(), "{\"a\":1}");
        assert!(h.state_save(RStr::from_str("{nope")).is_err());
        assert_eq!(h.state_load().unwrap().as_str(), "{\"a\":1}");
    }

    #[test]
    fn writes_outside_the_declared_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        h.file_write(
            RStr::from_str("/etc/demo/x.conf"),
            RSlice::from_slice(b"1"),
            0o600,
        )
        .unwrap();
        let e = h
            .file_write(
                RStr::from_str("/etc/passwd"),
                RSlice::from_slice(b""),
                0o644,
            )
            .unwrap_err();
        assert!(e.message.as_str().contains("outside"), "{e:?}");
        assert!(!dir.path().join("etc/passwd").exists());
    }

    /// The ABI's open flags: a set the contract does not allow is a 400 before anything
    /// is touched; a good open hands over a descriptor the caller owns.
    #[test]
    #[allow(unsafe_code)] // one from_raw_fd, on the descriptor the host just handed over
    fn file_open_checks_its_flags_and_hands_the_descriptor_over() {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let path = RStr::from_str("/etc/demo/x");
        for (flags, text) in [
            (OpenFlags { bits: 64 }, "unknown open flags 0x40"),
            (OpenFlags { bits: 0 }, "an open needs READ or WRITE"),
            (OpenFlags::READ | OpenFlags::CREATE, "need WRITE"),
            (
                OpenFlags::WRITE | OpenFlags::EXCLUSIVE,
                "EXCLUSIVE needs CREATE",
            ),
        ] {
            let e = h.file_open(path, flags, 0o600).unwrap_err();
            assert_eq!(e.status, 400, "{e:?}");
            assert!(
                e.message.contains(text) && e.message.contains("/etc/demo/x"),
                "{e:?}"
            );
        }
        assert!(!dir.path().join("etc/demo").exists());
        let e = h
            .rename(path, RStr::from_str("/etc/demo/y"), 3)
            .unwrap_err();
        assert_eq!(e.status, 400, "{e:?}");

        let fd = h
            .file_open(path, OpenFlags::WRITE | OpenFlags::CREATE, 0o600)
            .unwrap()
            .unwrap();
        // SAFETY: the host handed over a fresh descriptor it no longer owns.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        std::io::Write::write_all(&mut f, b"through the fd").unwrap();
        drop(f);
        let fd = h.file_open(path, OpenFlags::READ, 0).unwrap().unwrap();
        // SAFETY: as above.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the fd");
        let facts = h.file_facts(path).unwrap().unwrap();
        assert_eq!(
            (facts.kind, facts.mode, facts.size),
            (FileKind::File, 0o600, 14)
        );
        let e = h
            .file_open(
                RStr::from_str("/etc/passwd"),
                OpenFlags::WRITE | OpenFlags::CREATE,
                0o644,
            )
            .unwrap_err();
        assert!(
            e.message.contains("outside what this plugin may write"),
            "{e:?}"
        );
    }

    const KEY: &str = "tskey-auth-k1234";

    fn spec(argv: &[&str], timeout_ms: u64) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|a| RString::from(*a)).collect(),
            stdin: RVec::new(),
            timeout_ms,
        }
    }

    /// With the real command adapter: whatever way the command ends, a secret argument
    /// never comes back, while the same command run unmasked shows it.
    #[test]
    fn secret_arguments_never_leave_in_errors_or_output() {
        let dir = tempfile::tempdir().unwrap();
        let h = host_with(dir.path(), Arc::new(crate::exec::RealCommands));
        let secret = RSlice::from_slice(&[3u32]);

        let missing = ["/nonexistent/vpn", "up", "--auth-key", KEY];
        let e = h.run_masked(spec(&missing, 5000), secret).unwrap_err();
        assert_eq!(
            e.message.as_str(),
            "Failed to run: /nonexistent/vpn up --auth-key ***: No such file or directory (os error 2)"
        );
        let shown = h.run(spec(&missing, 5000)).unwrap_err();
        assert!(shown.message.contains(KEY), "{shown:?}");

        let slow = ["sh", "-c", "exec sleep 5", KEY];
        let e = h.run_masked(spec(&slow, 100), secret).unwrap_err();
        assert_eq!(
            e.message.as_str(),
            "Failed to run: sh -c exec sleep 5 ***: timed out after 0.1s"
        );

        let failing = [
            "sh",
            "-c",
            "echo \"key $0\"; echo \"bad $0\" >&2; exit 1",
            KEY,
        ];
        let o = h.run_masked(spec(&failing, 5000), secret).unwrap();
        assert_eq!(o.status, 1);
        assert_eq!(o.stdout.as_slice(), b"key ***\n");
        assert_eq!(o.stderr.as_slice(), b"bad ***\n");
        let shown = h.run(spec(&failing, 5000)).unwrap();
        assert_eq!(shown.stderr.as_slice(), format!("bad {KEY}\n").as_bytes());
    }
}
