//! [`Host`]: the safe wrapper over the capabilities the host hands a plugin, and command
//! running (with secret arguments masked).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use abi_stable::std_types::{ROption, RSlice, RStr, RString, RVec};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Error, Result};
use crate::abi::{
    CommandOutput, CommandSpec, FileFacts, HostHandle, LogLevel, OpenFlags, UnitOp, KEEP_ID,
    RENAME_EXCHANGE, RENAME_NOREPLACE, SECRET_MASK,
};
use crate::net::{Download, DownloadResult, Request, Response, ResponseHead};

/// A command's captured result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status; -1 when the process was killed by a signal.
    pub status: i32,
    /// Standard output, as text (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error, as text (invalid UTF-8 replaced).
    pub stderr: String,
}

/// The capabilities the host gives a plugin. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostHandle>,
    /// Held while the SDK-persisted config is read, changed and saved (a PUT, or
    /// [`Host::update_config`]), shared by every clone.
    config_lock: Arc<Mutex<()>>,
}

impl Host {
    /// Wraps the ABI handle (done by the export macros, and by test harnesses).
    pub fn from_handle(handle: HostHandle) -> Self {
        Host {
            inner: Arc::new(handle),
            config_lock: Arc::new(Mutex::new(())),
        }
    }

    pub(super) fn config_lock(&self) -> MutexGuard<'_, ()> {
        self.config_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the plugin's own saved config (the one the SDK persists, GET shows and a PUT
    /// replaces) without a PUT: `change` gets the config as saved now and says whether it
    /// changed it; a changed config is saved, and `true` returned. It runs under the same
    /// lock as the SDK's PUT handling, so a concurrent PUT is never overwritten with a
    /// stale copy; the plugin's `validate` and `update` hooks are not called. For a plugin
    /// that must correct its own config, such as a provider dropping a pinned certificate
    /// its server no longer presents (since 1.2).
    pub fn update_config<C>(&self, change: impl FnOnce(&mut C) -> bool) -> Result<bool>
    where
        C: Serialize + DeserializeOwned + Default,
    {
        let _guard = self.config_lock();
        let mut stored: super::adapters::Stored<C> = self.load_state()?;
        if !change(&mut stored.config) {
            return Ok(false);
        }
        self.save_state(&stored)?;
        Ok(true)
    }

    /// Writes a line to the daemon's log at `level`; the host adds the plugin's name.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, RStr::from_str(message));
    }
    /// [`Host::log`] at [`LogLevel::Error`].
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message)
    }
    /// [`Host::log`] at [`LogLevel::Warn`].
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message)
    }
    /// [`Host::log`] at [`LogLevel::Info`].
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message)
    }
    /// [`Host::log`] at [`LogLevel::Debug`].
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

    /// Replaces a file atomically with `data` and permission bits `mode` (parents are
    /// created). Only paths the manifest declares are writable. Not journaled: inside a
    /// hook, write through [`super::Undo`].
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        self.inner
            .file_write(RStr::from_str(path), RSlice::from_slice(data), mode)
            .into_result()?;
        Ok(())
    }

    /// Creates a directory (and its parents) with `mode`; declared paths only.
    pub fn create_dir(&self, path: &str, mode: u32) -> Result<()> {
        self.inner
            .dir_create(RStr::from_str(path), mode)
            .into_result()?;
        Ok(())
    }

    /// Removes a file or a tree; absent is fine. Declared paths only.
    pub fn remove(&self, path: &str) -> Result<()> {
        self.inner.remove(RStr::from_str(path)).into_result()?;
        Ok(())
    }

    /// Opens a regular file through the host (since 1.3; see
    /// [`crate::abi::HostOps::file_open`]): a read-only open anywhere under the root, a
    /// writing one only under the manifest's paths. `None` when it does not exist (and
    /// `flags` has no `CREATE`). The file is read and written directly, never held whole.
    pub fn open(&self, path: &str, flags: OpenFlags, mode: u32) -> Result<Option<File>> {
        let fd = self
            .inner
            .file_open(RStr::from_str(path), flags, mode)
            .into_result()?;
        fd.into_option()
            .map(|fd| take_fd(fd).map(File::from))
            .transpose()
    }

    /// A file opened for reading, to stream it (since 1.3); `None` if absent.
    pub fn open_read(&self, path: &str) -> Result<Option<File>> {
        self.open(path, OpenFlags::READ, 0)
    }

    /// A file opened for writing, created (with `mode`, parents 0755) when missing and
    /// emptied otherwise (since 1.3). Declared paths only. Not atomic: see
    /// [`Host::write_atomic`].
    pub fn create_file(&self, path: &str, mode: u32) -> Result<File> {
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        self.open(path, flags, mode)?
            .ok_or_else(|| Error::internal(format!("the host did not create {path}")))
    }

    /// A file opened for appending, created (with `mode`) when missing (since 1.3).
    /// Declared paths only.
    pub fn open_append(&self, path: &str, mode: u32) -> Result<File> {
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::APPEND;
        self.open(path, flags, mode)?
            .ok_or_else(|| Error::internal(format!("the host did not create {path}")))
    }

    /// Replaces the file at `path` atomically with what `fill` writes (since 1.3): the
    /// bytes go to a new temporary file in the same directory (`.<name>.<hex>.incus-osd-tmp`,
    /// created exclusively with `mode`), which is synced and renamed over `path` only once
    /// `fill` succeeded; on any error it is removed and `path` is as it was. Declared paths
    /// only. Not journaled: inside a hook, register the rollback yourself.
    pub fn write_atomic(
        &self,
        path: &str,
        mode: u32,
        fill: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<()> {
        let tmp = temp_path(path)?;
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
        let mut file = self
            .open(&tmp, flags, mode)?
            .ok_or_else(|| Error::internal(format!("the host did not create {tmp}")))?;
        let written = fill(&mut file).and_then(|()| {
            file.flush()?;
            file.sync_all()
                .map_err(|e| Error::internal(format!("cannot sync {tmp}: {e}")))
        });
        drop(file);
        match written.and_then(|()| self.rename(&tmp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.remove(&tmp);
                Err(e)
            }
        }
    }

    /// [`Host::write_atomic`] with the bytes read from `input` to its end; returns how
    /// many were written (since 1.3).
    pub fn write_stream(&self, path: &str, mode: u32, input: &mut dyn Read) -> Result<u64> {
        let mut n = 0;
        self.write_atomic(path, mode, |file| {
            n = std::io::copy(input, file)
                .map_err(|e| Error::internal(format!("cannot write {path}: {e}")))?;
            Ok(())
        })?;
        Ok(n)
    }

    /// A directory under the manifest's paths as a descriptor, for `*at` calls and the
    /// descriptor-based functions of [`super::archive`] (since 1.3); `None` if absent.
    pub fn open_dir(&self, path: &str) -> Result<Option<OwnedFd>> {
        let fd = self.inner.dir_open(RStr::from_str(path)).into_result()?;
        fd.into_option().map(take_fd).transpose()
    }

    /// Kind, mode, size, mtime, owner and link target of a path, not following a final
    /// symlink (since 1.3); `None` if it does not exist.
    pub fn facts(&self, path: &str) -> Result<Option<FileFacts>> {
        let f = self.inner.file_facts(RStr::from_str(path)).into_result()?;
        Ok(f.into_option())
    }

    /// Changes owner and group (`None` keeps one) of a path, not following a final
    /// symlink (since 1.3). Declared paths only.
    pub fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        self.inner
            .chown(
                RStr::from_str(path),
                uid.unwrap_or(KEEP_ID),
                gid.unwrap_or(KEEP_ID),
            )
            .into_result()?;
        Ok(())
    }

    /// Creates a symlink at `path` with the text `target` (since 1.3); an existing entry
    /// at `path` is an error. Declared paths only.
    pub fn symlink(&self, target: &str, path: &str) -> Result<()> {
        self.inner
            .symlink(RStr::from_str(target), RStr::from_str(path))
            .into_result()?;
        Ok(())
    }

    /// Renames `from` to `to` atomically, replacing `to` if it exists (since 1.3). Both
    /// under the manifest's paths, on one filesystem.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_with(from, to, 0)
    }

    /// [`Host::rename`] that fails when `to` exists (since 1.3).
    pub fn rename_noreplace(&self, from: &str, to: &str) -> Result<()> {
        self.rename_with(from, to, RENAME_NOREPLACE)
    }

    /// Swaps two existing entries in one atomic step (since 1.3): a finished directory
    /// and the one it replaces, say.
    pub fn exchange(&self, a: &str, b: &str) -> Result<()> {
        self.rename_with(a, b, RENAME_EXCHANGE)
    }

    fn rename_with(&self, from: &str, to: &str, flags: u32) -> Result<()> {
        self.inner
            .rename(RStr::from_str(from), RStr::from_str(to), flags)
            .into_result()?;
        Ok(())
    }

    /// Any systemd unit operation: the unit's `ActiveState` for [`UnitOp::ActiveState`],
    /// an empty string otherwise. Jobs are waited for.
    pub fn unit(&self, op: UnitOp, unit: &str) -> Result<String> {
        Ok(self
            .inner
            .unit(op, RStr::from_str(unit))
            .into_result()?
            .into_string())
    }
    /// Starts a unit (nothing happens to a running one).
    pub fn start_unit(&self, unit: &str) -> Result<()> {
        self.unit(UnitOp::Start, unit).map(drop)
    }
    /// Stops a unit.
    pub fn stop_unit(&self, unit: &str) -> Result<()> {
        self.unit(UnitOp::Stop, unit).map(drop)
    }
    /// Restarts a unit (starts it if it is not running).
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
    /// The unit's `ActiveState` (`active`, `inactive`, `failed`, ...); see
    /// [`super::is_active`].
    pub fn unit_active_state(&self, unit: &str) -> Result<String> {
        self.unit(UnitOp::ActiveState, unit)
    }

    /// Makes one HTTP request through the host (since 1.2; see
    /// [`crate::abi::HostOps::http`]). Any status comes back; an error means no response.
    pub fn http(&self, request: &Request, body: &[u8]) -> Result<Response> {
        let json = serde_json::to_string(request)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let reply = self
            .inner
            .http(RStr::from_str(&json), RSlice::from_slice(body))
            .into_result()?;
        let head: ResponseHead = serde_json::from_str(reply.head.as_str())
            .map_err(|e| Error::internal(format!("host sent an unreadable response head: {e}")))?;
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body: reply.body.into_vec(),
        })
    }

    /// Streams a file to disk through the host (since 1.2; see
    /// [`crate::abi::HostOps::download`]): verified against `download.sha256`, written
    /// atomically, the old file kept on any failure.
    pub fn download(&self, download: &Download) -> Result<DownloadResult> {
        let json = serde_json::to_string(download)
            .map_err(|e| Error::internal(format!("cannot encode download: {e}")))?;
        let out = self.inner.download(RStr::from_str(&json)).into_result()?;
        serde_json::from_str(out.as_str())
            .map_err(|e| Error::internal(format!("host sent an unreadable download result: {e}")))
    }

    /// Runs a command with a timeout; a non-zero exit is returned, not an error.
    pub fn run(&self, argv: &[&str], timeout: std::time::Duration) -> Result<Output> {
        let out = self.inner.run(command_spec(argv, timeout)).into_result()?;
        Ok(out.into())
    }

    /// [`Host::run`] with `stdin` written to the command's standard input (a signed
    /// message to verify, a certificate to print): data that need not touch the disk.
    pub fn run_with_input(
        &self,
        argv: &[&str],
        stdin: &[u8],
        timeout: std::time::Duration,
    ) -> Result<Output> {
        let mut spec = command_spec(argv, timeout);
        spec.stdin = RVec::from(stdin.to_vec());
        let out = self.inner.run(spec).into_result()?;
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

    /// [`Host::run_with_input`] for a tool whose output is binary (DER, a raw signature):
    /// fails unless it exits 0, with [`Host::run_ok`]'s error text, and returns its standard
    /// output byte for byte.
    pub fn run_ok_bytes(
        &self,
        argv: &[&str],
        stdin: &[u8],
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>> {
        let mut spec = command_spec(argv, timeout);
        spec.stdin = RVec::from(stdin.to_vec());
        let out = self.inner.run(spec).into_result()?;
        let stdout = out.stdout.to_vec();
        succeeded(&argv.join(" "), Output::from(out))?;
        Ok(stdout)
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
    /// An ordinary argument, shown as it is.
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

/// Takes ownership of a descriptor the host handed over.
#[allow(unsafe_code)] // the one from_raw_fd of the SDK; see the SAFETY comment
fn take_fd(fd: i32) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(Error::internal(format!(
            "the host handed over a bad descriptor ({fd})"
        )));
    }
    // SAFETY: the host opened this descriptor for this call and handed it over: it no
    // longer owns or closes it, and nothing else in the process holds it, so it is ours
    // alone to own (and close once).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A temporary name next to `path` for [`Host::write_atomic`], in the host's pattern for
/// such files (`.<name>.<32 hex digits>.incus-osd-tmp`, name cut to 100 bytes), so that
/// the host's clean-up of leftovers knows it. Unique within the process (a counter) and
/// across processes (the pid and the clock); created exclusively, so never an existing
/// file.
fn temp_path(path: &str) -> Result<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (dir, name) = path
        .rsplit_once('/')
        .filter(|(_, n)| !n.is_empty())
        .ok_or_else(|| Error::bad_request(format!("{path} is not a file path")))?;
    let mut cut = name.len().min(100);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!(
        "{dir}/.{}.{:08x}{:016x}{:08x}.incus-osd-tmp",
        &name[..cut],
        std::process::id(),
        nanos,
        count as u32
    ))
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
