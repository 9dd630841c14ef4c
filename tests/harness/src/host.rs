//! [`HarnessHost`]: a host that records every effect a plugin has instead of touching the
//! machine. Files go to a temporary root through the daemon's own [`RootFs`], so the
//! manifest's write allow-list is enforced exactly as in production.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use plugin_api::abi::{HostHandle, LogLevel, UnitOp};
use plugin_api::Manifest;
use plugin_host::exec::{self, Commands, Output};
use plugin_host::files::{AtomicFile, AtomicWrite, Facts, FsError, OpenOptions, RootFs, Stat};
use plugin_host::net::Net;
use plugin_host::units::{UnitAction, Units};
use plugin_host::{Adapters, Files, LogSink, PlatformError, PluginHost, StateSlot};
use serde_json::Value;

/// A log line a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// A unit operation a plugin asked for (recorded whether it succeeded or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCall {
    pub op: UnitOp,
    pub unit: String,
}

impl UnitCall {
    pub fn new(op: UnitOp, unit: &str) -> Self {
        UnitCall {
            op,
            unit: unit.to_string(),
        }
    }
}

/// A change a plugin made under the root (successful ones only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEffect {
    Written {
        path: String,
        mode: u32,
    },
    DirCreated {
        path: String,
        mode: u32,
    },
    Removed {
        path: String,
    },
    /// A file opened for writing through a descriptor (since 1.3); what is written through
    /// it is not recorded.
    OpenedForWrite {
        path: String,
    },
    /// An owner change (since 1.3); `u32::MAX` kept that id.
    Chowned {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// A symlink made (since 1.3).
    Symlinked {
        path: String,
        target: String,
    },
    /// A rename (since 1.3), with its `renameat2` flags.
    Renamed {
        from: String,
        to: String,
        flags: u32,
    },
}

impl FileEffect {
    pub fn written(path: &str, mode: u32) -> Self {
        FileEffect::Written {
            path: path.to_string(),
            mode,
        }
    }

    pub fn dir_created(path: &str, mode: u32) -> Self {
        FileEffect::DirCreated {
            path: path.to_string(),
            mode,
        }
    }

    pub fn removed(path: &str) -> Self {
        FileEffect::Removed {
            path: path.to_string(),
        }
    }
}

/// A command line as [`HarnessHost::commands`] records it: `argv(&["usbip", "port"])`.
pub fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A command a plugin ran (recorded whether it was scripted or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCall {
    pub argv: Vec<String>,
    pub stdin: Vec<u8>,
    pub timeout_ms: u64,
}

/// One effect of a plugin's, in the order the effects happened: [`HarnessHost::events`]
/// shows what ran before what across units, commands and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A unit operation (as in [`HarnessHost::units`]).
    Unit(UnitCall),
    /// A command's argv (as in [`HarnessHost::commands`]).
    Command(Vec<String>),
    /// A file change (as in [`HarnessHost::file_effects`]).
    File(FileEffect),
}

/// What a scripted command returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    /// Exit 0 with `stdout`.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Reply {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// A non-zero exit with `stderr`.
    pub fn fail(status: i32, stderr: impl Into<String>) -> Self {
        Reply {
            status,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// How a scripted command fails without exiting, with the real command adapter's error
/// text (`plugin_host::exec`), which names the whole command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The program could not be started (as a missing binary).
    Spawn,
    /// The command ran past its timeout and was killed.
    Timeout,
}

struct Rule {
    prefix: Vec<String>,
    /// `None`: run the command on this machine ([`HarnessHost::on_command_real`]).
    reply: Option<Result<Reply, Failure>>,
    /// `None`: answers forever; `Some(n)`: answers `n` more times.
    remaining: Option<usize>,
}

#[derive(Default)]
struct Record {
    logs: Vec<LogLine>,
    units: Vec<UnitCall>,
    unit_states: BTreeMap<String, String>,
    failing_units: BTreeMap<String, String>,
    files: Vec<FileEffect>,
    state: Value,
    saves: usize,
    /// `saves` when the effects were last cleared.
    saves_at_clear: usize,
    fail_next_save: Option<String>,
    commands: Vec<CommandCall>,
    /// Units, commands and file effects together, in order.
    events: Vec<Event>,
    rules: Vec<Rule>,
    /// A CA the network client trusts as if it were a public one.
    public_ca: Option<String>,
}

struct Inner {
    root: tempfile::TempDir,
    fs: RootFs,
    manifest: Manifest,
    record: Mutex<Record>,
}

/// The inspectable host. Cheap to clone: every clone shares the same recorded state, so a
/// test keeps one while the plugin holds the handle built by [`HarnessHost::handle`].
#[derive(Clone)]
pub struct HarnessHost {
    inner: Arc<Inner>,
}

impl HarnessHost {
    /// A host with a fresh temporary root whose writes are limited to `manifest.paths`.
    pub fn new(manifest: &Manifest) -> std::io::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("incus-osd-harness")
            .tempdir()?;
        let fs = RootFs::restricted(root.path(), &manifest.paths);
        Ok(HarnessHost {
            inner: Arc::new(Inner {
                root,
                fs,
                manifest: manifest.clone(),
                record: Mutex::new(Record::default()),
            }),
        })
    }

    /// The ABI handle to give a plugin; it shares this host's state. It is the daemon's
    /// own `HostOps` implementation (`plugin_host::PluginHost`) over recording adapters,
    /// so unit-name checks, the write allow-list and error texts are the daemon's.
    pub fn handle(&self) -> HostHandle {
        let me = Arc::new(self.clone());
        PluginHost::plugin_handle(
            &self.inner.manifest,
            Adapters {
                files: me.clone(),
                units: me.clone(),
                commands: me.clone(),
                state: me.clone(),
                log: me.clone(),
                net: me,
                progress: Arc::new(plugin_host::net::NoProgress),
            },
        )
    }

    /// From now on the network client trusts `ca_pem` as if it were one of the public
    /// CAs: requests that name neither a CA nor a pin accept servers it issued (the
    /// [`crate::testserver::TestServer`]s', [`crate::testserver::TestServer::ca_pem`]).
    pub fn trust_as_public_ca(&self, ca_pem: &str) {
        self.record().public_ca = Some(ca_pem.to_string());
    }

    /// The daemon's network client, over this host's root.
    fn client(&self) -> Result<plugin_host::net::Client, PlatformError> {
        let client = plugin_host::net::Client::new(self.root());
        match self.record().public_ca.clone() {
            Some(ca) => client.trusting(&ca).map_err(PlatformError),
            None => Ok(client),
        }
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.inner.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The temporary directory standing for `/`.
    pub fn root(&self) -> &Path {
        self.inner.root.path()
    }

    /// Where an OS path (`/etc/iscsi/x`) lives under the temporary root.
    pub fn real_path(&self, os_path: &str) -> PathBuf {
        self.inner
            .fs
            .resolve(os_path)
            .unwrap_or_else(|e| panic!("bad OS path {os_path:?}: {e}"))
    }

    /// Reads a file under the root, `None` if absent.
    pub fn read_file(&self, os_path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.real_path(os_path)).ok()
    }

    /// A file's text under the root; panics when it is missing or not UTF-8.
    #[track_caller]
    pub fn read_text(&self, os_path: &str) -> String {
        let data = self
            .read_file(os_path)
            .unwrap_or_else(|| panic!("{os_path} is missing"));
        String::from_utf8(data).unwrap_or_else(|e| panic!("{os_path} is not UTF-8: {e}"))
    }

    /// The permission bits (`0o7777`) of a file or directory under the root; panics when
    /// it is missing.
    #[track_caller]
    pub fn mode(&self, os_path: &str) -> u32 {
        let real = self.real_path(os_path);
        std::fs::metadata(&real)
            .unwrap_or_else(|e| panic!("{}: {e}", real.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    /// Creates a file under the root (bypassing the allow-list: this is the test's setup).
    pub fn put_file(&self, os_path: &str, data: &[u8], mode: u32) {
        let real = self.real_path(os_path);
        plugin_host::files::atomic_write(&real, data, mode)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", real.display()));
    }

    // --- scripting -----------------------------------------------------------------------

    /// Answers every command whose argv starts with `prefix` with `reply`. The longest
    /// matching prefix wins; among equal prefixes the latest registration wins.
    pub fn on_command(&self, prefix: &[&str], reply: Reply) {
        self.add_rule(prefix, Some(Ok(reply)), None);
    }

    /// Runs the commands whose argv starts with `prefix` on this machine, with their stdin
    /// and timeout (recorded like any other). For tools whose real answer is the point of
    /// the test (openssl verifying a signature) and whose arguments name no file: paths
    /// are not translated to the temporary root.
    pub fn on_command_real(&self, prefix: &[&str]) {
        self.add_rule(prefix, None, None);
    }

    /// Like [`HarnessHost::on_command`] but answers only the next `times` matching commands;
    /// such one-shot answers take precedence over permanent ones.
    pub fn on_command_times(&self, prefix: &[&str], times: usize, reply: Reply) {
        self.add_rule(prefix, Some(Ok(reply)), Some(times));
    }

    /// Like [`HarnessHost::on_command`], but the matching commands fail without exiting:
    /// they cannot be started, or they time out.
    pub fn on_command_failure(&self, prefix: &[&str], failure: Failure) {
        self.add_rule(prefix, Some(Err(failure)), None);
    }

    fn add_rule(
        &self,
        prefix: &[&str],
        reply: Option<Result<Reply, Failure>>,
        remaining: Option<usize>,
    ) {
        self.record().rules.push(Rule {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            reply,
            remaining,
        });
    }

    /// Makes the next `state_save` fail with `message` (500).
    pub fn fail_next_save(&self, message: &str) {
        self.record().fail_next_save = Some(message.to_string());
    }

    /// Makes every operation on `unit` fail with `message` (500) until cleared, as a
    /// broken unit would: a failed start or restart leaves it `failed`; `ActiveState`
    /// queries still answer.
    pub fn fail_unit(&self, unit: &str, message: &str) {
        self.record()
            .failing_units
            .insert(unit.to_string(), message.to_string());
    }

    pub fn clear_unit_failure(&self, unit: &str) {
        self.record().failing_units.remove(unit);
    }

    /// Sets a unit's `ActiveState` (e.g. `active` for a unit already running).
    pub fn set_unit_state(&self, unit: &str, state: &str) {
        self.record()
            .unit_states
            .insert(unit.to_string(), state.to_string());
    }

    /// Replaces the persisted state document (as if saved by an earlier run); does not
    /// count as a save.
    pub fn set_state(&self, state: Value) {
        self.record().state = state;
    }

    /// Saves `config` as if an earlier run had applied it: the state document
    /// `{"config": config}` the SDK keeps for a service (not a save, nothing applied).
    pub fn set_saved_config(&self, config: &Value) {
        self.set_state(serde_json::json!({ "config": config }));
    }

    /// Forgets the recorded logs, unit calls, file effects and commands (not the state
    /// document, the save count, unit states or scripts).
    pub fn clear_effects(&self) {
        let mut r = self.record();
        r.logs.clear();
        r.units.clear();
        r.files.clear();
        r.commands.clear();
        r.events.clear();
        r.saves_at_clear = r.saves;
    }

    // --- inspection ----------------------------------------------------------------------

    pub fn logs(&self) -> Vec<LogLine> {
        self.record().logs.clone()
    }

    /// The messages logged at `level`, in order.
    pub fn logged(&self, level: LogLevel) -> Vec<String> {
        self.record()
            .logs
            .iter()
            .filter(|l| l.level == level)
            .map(|l| l.message.clone())
            .collect()
    }

    /// The messages logged at [`LogLevel::Warn`], in order.
    pub fn warnings(&self) -> Vec<String> {
        self.logged(LogLevel::Warn)
    }

    /// Asserts that no log line contains any of `secrets`.
    #[track_caller]
    pub fn assert_not_logged(&self, secrets: &[&str]) {
        for line in self.logs() {
            for secret in secrets {
                assert!(
                    !line.message.contains(secret),
                    "a secret was logged: {line:?}"
                );
            }
        }
    }

    /// Every unit operation asked for, in order (including `ActiveState` queries).
    pub fn units(&self) -> Vec<UnitCall> {
        self.record().units.clone()
    }

    /// The unit operations that change something, in order: [`HarnessHost::units`]
    /// without the `ActiveState` queries.
    pub fn unit_changes(&self) -> Vec<UnitCall> {
        self.record()
            .units
            .iter()
            .filter(|c| c.op != UnitOp::ActiveState)
            .cloned()
            .collect()
    }

    /// A unit's `ActiveState` as the harness tracks it (`inactive` by default).
    pub fn unit_state(&self, unit: &str) -> String {
        self.record()
            .unit_states
            .get(unit)
            .cloned()
            .unwrap_or_else(|| "inactive".to_string())
    }

    pub fn file_effects(&self) -> Vec<FileEffect> {
        self.record().files.clone()
    }

    /// OS paths of the files written, in order.
    pub fn files_written(&self) -> Vec<String> {
        self.file_effects()
            .into_iter()
            .filter_map(|e| match e {
                FileEffect::Written { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }

    /// OS paths removed, in order.
    pub fn files_removed(&self) -> Vec<String> {
        self.file_effects()
            .into_iter()
            .filter_map(|e| match e {
                FileEffect::Removed { path } => Some(path),
                _ => None,
            })
            .collect()
    }

    /// Where the daemon keeps this plugin's document in its state (under `plugins`): the
    /// same key as the daemon's (`plugin_host::state_key` of its kind and name).
    pub fn state_key(&self) -> String {
        plugin_host::state_key(self.inner.manifest.kind, &self.inner.manifest.name)
    }

    /// The persisted state document (`null` until the plugin saves one).
    pub fn state(&self) -> Value {
        self.record().state.clone()
    }

    /// How many times the state document was saved successfully.
    pub fn save_count(&self) -> usize {
        self.record().saves
    }

    /// Asserts that the plugin touched nothing since the last [`HarnessHost::clear_effects`]
    /// (or since it loaded): no command, no unit operation, no file written or removed, no
    /// state saved. `context` names the case in the failure message.
    #[track_caller]
    pub fn assert_untouched(&self, context: &str) {
        let r = self.record();
        assert!(
            r.commands.is_empty(),
            "{context}: commands run: {:?}",
            r.commands
        );
        assert!(
            r.units.is_empty(),
            "{context}: unit operations: {:?}",
            r.units
        );
        assert!(
            r.files.is_empty(),
            "{context}: files touched: {:?}",
            r.files
        );
        assert_eq!(r.saves, r.saves_at_clear, "{context}: state saved");
    }

    /// The argv of every command run, in order.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.record()
            .commands
            .iter()
            .map(|c| c.argv.clone())
            .collect()
    }

    /// Unit operations, commands and file effects in the one order they happened (since
    /// the last [`HarnessHost::clear_effects`]), for a test of what runs before what.
    pub fn events(&self) -> Vec<Event> {
        self.record().events.clone()
    }

    /// Every command run, with its stdin and timeout.
    pub fn command_calls(&self) -> Vec<CommandCall> {
        self.record().commands.clone()
    }

    fn record_effect(&self, effect: FileEffect) {
        let mut r = self.record();
        r.events.push(Event::File(effect.clone()));
        r.files.push(effect);
    }

    fn effect<T>(
        &self,
        res: Result<T, FsError>,
        effect: impl FnOnce() -> FileEffect,
    ) -> Result<T, FsError> {
        if res.is_ok() {
            self.record_effect(effect());
        }
        res
    }
}

impl Record {
    fn take_reply(&mut self, argv: &[String]) -> Option<Option<Result<Reply, Failure>>> {
        let matches = |r: &Rule| r.remaining != Some(0) && argv.starts_with(&r.prefix);
        // Best rule: one-shot before permanent, then longest prefix, then latest.
        let idx = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| matches(r))
            .max_by_key(|(i, r)| (r.remaining.is_some(), r.prefix.len(), *i))
            .map(|(i, _)| i)?;
        let rule = &mut self.rules[idx];
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        Some(rule.reply.clone())
    }
}

impl Net for HarnessHost {
    fn http(
        &self,
        plugin: &str,
        request: &plugin_api::net::Request,
        body: &[u8],
    ) -> Result<plugin_api::net::Response, PlatformError> {
        self.client()?.http(plugin, request, body)
    }

    fn download(
        &self,
        plugin: &str,
        download: &plugin_api::net::Download,
        files: &dyn Files,
        progress: &dyn plugin_host::net::Progress,
    ) -> Result<plugin_api::net::DownloadResult, PlatformError> {
        self.client()?.download(plugin, download, files, progress)
    }
}

impl LogSink for HarnessHost {
    fn log(&self, _plugin: &str, level: LogLevel, message: &str) {
        self.record().logs.push(LogLine {
            level,
            message: message.to_string(),
        });
    }
}

impl HarnessHost {
    /// Refuses a slot other than the plugin's own: the host hands each plugin exactly one.
    fn own_slot(&self, slot: &str) -> Result<(), PlatformError> {
        let own = self.state_key();
        if slot == own {
            Ok(())
        } else {
            Err(PlatformError(format!(
                "state slot {slot:?} is not this plugin's ({own:?})"
            )))
        }
    }
}

impl StateSlot for HarnessHost {
    fn load(&self, slot: &str) -> Result<Value, PlatformError> {
        self.own_slot(slot)?;
        Ok(self.record().state.clone())
    }

    fn save(&self, slot: &str, value: Value) -> Result<(), PlatformError> {
        self.own_slot(slot)?;
        let mut r = self.record();
        if let Some(message) = r.fail_next_save.take() {
            return Err(PlatformError(message));
        }
        r.state = value;
        r.saves += 1;
        Ok(())
    }
}

impl Files for HarnessHost {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, FsError> {
        self.inner.fs.read(path)
    }

    fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FsError> {
        let res = self.inner.fs.write(path, data, mode);
        self.effect(res, || FileEffect::Written {
            path: path.to_string(),
            mode,
        })
    }

    fn create_dir(&self, path: &str, mode: u32) -> Result<(), FsError> {
        let res = self.inner.fs.create_dir(path, mode);
        self.effect(res, || FileEffect::DirCreated {
            path: path.to_string(),
            mode,
        })
    }

    fn remove(&self, path: &str) -> Result<(), FsError> {
        let res = self.inner.fs.remove(path);
        self.effect(res, || FileEffect::Removed {
            path: path.to_string(),
        })
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>, FsError> {
        self.inner.fs.list(path)
    }

    fn stat(&self, path: &str) -> Result<Option<Stat>, FsError> {
        self.inner.fs.stat(path)
    }

    fn create_atomic(&self, path: &str, mode: u32) -> Result<Box<dyn AtomicWrite>, FsError> {
        let file = self.inner.fs.create_atomic(path, mode)?;
        Ok(Box::new(RecordedAtomic {
            host: self.clone(),
            file,
            path: path.to_string(),
            mode,
        }))
    }

    fn open(&self, path: &str, how: &OpenOptions) -> Result<Option<std::os::fd::OwnedFd>, FsError> {
        let res = self.inner.fs.open(path, how);
        if how.writes() {
            if let Ok(Some(_)) = &res {
                self.record_effect(FileEffect::OpenedForWrite {
                    path: path.to_string(),
                });
            }
        }
        res
    }

    fn open_dir(&self, path: &str) -> Result<Option<std::os::fd::OwnedFd>, FsError> {
        self.inner.fs.open_dir(path)
    }

    fn facts(&self, path: &str) -> Result<Option<Facts>, FsError> {
        self.inner.fs.facts(path)
    }

    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsError> {
        let res = self.inner.fs.chown(path, uid, gid);
        self.effect(res, || FileEffect::Chowned {
            path: path.to_string(),
            uid,
            gid,
        })
    }

    fn symlink(&self, target: &str, path: &str) -> Result<(), FsError> {
        let res = self.inner.fs.symlink(target, path);
        self.effect(res, || FileEffect::Symlinked {
            path: path.to_string(),
            target: target.to_string(),
        })
    }

    fn rename(&self, from: &str, to: &str, flags: u32) -> Result<(), FsError> {
        let res = self.inner.fs.rename(from, to, flags);
        self.effect(res, || FileEffect::Renamed {
            from: from.to_string(),
            to: to.to_string(),
            flags,
        })
    }
}

/// A streaming atomic write that is recorded as [`FileEffect::Written`] once committed.
struct RecordedAtomic {
    host: HarnessHost,
    file: AtomicFile,
    path: String,
    mode: u32,
}

impl std::io::Write for RecordedAtomic {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl AtomicWrite for RecordedAtomic {
    fn commit(self: Box<Self>) -> Result<(), FsError> {
        let RecordedAtomic {
            host,
            file,
            path,
            mode,
        } = *self;
        let res = Box::new(file).commit();
        host.effect(res, || FileEffect::Written { path, mode })
    }
}

impl Units for HarnessHost {
    fn unit(&self, action: UnitAction, unit: &str) -> Result<String, PlatformError> {
        let op = plugin_host::host_ops::abi_unit_op(action);
        let unit = unit.to_string();
        let mut r = self.record();
        let call = UnitCall {
            op,
            unit: unit.clone(),
        };
        r.events.push(Event::Unit(call.clone()));
        r.units.push(call);
        if let Some(message) = r.failing_units.get(&unit).cloned() {
            if op != UnitOp::ActiveState {
                if matches!(op, UnitOp::Start | UnitOp::Restart) {
                    r.unit_states.insert(unit, "failed".to_string());
                }
                return Err(PlatformError(message));
            }
        }
        let new_state = match op {
            UnitOp::Start | UnitOp::Restart => "active",
            UnitOp::Stop => "inactive",
            // Killed processes leave the unit failed, as with real systemd.
            UnitOp::Kill => "failed",
            UnitOp::Reload | UnitOp::DaemonReload => return Ok(String::new()),
            UnitOp::ActiveState => {
                let state = r.unit_states.get(&unit).map_or("inactive", String::as_str);
                return Ok(state.to_string());
            }
        };
        r.unit_states.insert(unit, new_state.to_string());
        Ok(String::new())
    }

    fn daemon_reload(&self) -> Result<(), PlatformError> {
        let call = UnitCall {
            op: UnitOp::DaemonReload,
            unit: String::new(),
        };
        let mut r = self.record();
        r.events.push(Event::Unit(call.clone()));
        r.units.push(call);
        Ok(())
    }
}

impl Commands for HarnessHost {
    fn run(
        &self,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, PlatformError> {
        let mut r = self.record();
        r.events.push(Event::Command(argv.to_vec()));
        r.commands.push(CommandCall {
            argv: argv.to_vec(),
            stdin: stdin.to_vec(),
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
        });
        match r.take_reply(argv) {
            Some(None) => {
                drop(r);
                exec::run_with_timeout(argv, stdin, timeout)
            }
            Some(Some(Ok(reply))) => Ok(Output {
                status: reply.status,
                stdout: reply.stdout.into_bytes(),
                stderr: reply.stderr.into_bytes(),
            }),
            // ENOENT, as for a missing binary.
            Some(Some(Err(Failure::Spawn))) => Err(exec::spawn_failed(
                argv,
                &std::io::Error::from_raw_os_error(2),
            )),
            Some(Some(Err(Failure::Timeout))) => Err(exec::timed_out(argv, timeout)),
            None => Err(PlatformError(format!(
                "command not scripted in the harness: {}",
                argv.join(" ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::RStr;

    fn manifest(kind: plugin_api::Kind) -> Manifest {
        let mut m =
            plugin_api::sdk::__provider_manifest::<Nothing>("1.0.0", plugin_api::API_VERSION);
        m.kind = kind;
        m
    }

    struct Nothing;

    impl plugin_api::Provider for Nothing {
        const NAME: &'static str = "debug";
        type Config = Value;
        type State = Value;
        fn new(_: plugin_api::Host) -> plugin_api::Result<Self> {
            Ok(Nothing)
        }
        fn state(&self, _: &Value) -> plugin_api::Result<Value> {
            Ok(Value::Null)
        }
    }

    #[test]
    fn the_harness_keys_a_plugins_state_as_the_daemon_does_and_serves_only_that_slot() {
        let host = HarnessHost::new(&manifest(plugin_api::Kind::Provider)).unwrap();
        assert_eq!(host.state_key(), "provider/debug");
        let app = HarnessHost::new(&manifest(plugin_api::Kind::Application)).unwrap();
        assert_eq!(app.state_key(), "application/debug");

        host.handle()
            .state_save(RStr::from_str(r#"{"config":{}}"#))
            .unwrap();
        assert_eq!(host.state(), serde_json::json!({"config": {}}));
        // A handle asking for another slot (the service `debug`'s) is refused.
        let me = Arc::new(host.clone());
        let other = PluginHost::handle(
            "debug",
            "debug",
            Adapters {
                files: me.clone(),
                units: me.clone(),
                commands: me.clone(),
                state: me.clone(),
                log: me.clone(),
                net: me,
                progress: Arc::new(plugin_host::net::NoProgress),
            },
        );
        let e = other.state_load().unwrap_err();
        assert!(e.message.contains("is not this plugin's"), "{}", e.message);
        assert_eq!(host.save_count(), 1);
    }
}
