//! The registry of loaded plugins, their start and stop, and dispatch of calls into them.
//!
//! Plugin calls are synchronous on the ABI side: each runs on a blocking thread with a
//! timeout. Every plugin's calls in flight are bounded ([`MAX_READS`] reads, [`MAX_CHANGES`]
//! changes running or waiting); beyond that a call is refused at once with a 503, so one
//! stuck plugin cannot take the blocking threads every other plugin needs. Changes to one
//! plugin are serialized (the lock is held until the call really ends, even after its
//! caller timed out), wait until that plugin started, and are refused once it stopped.
//! A plugin that panics or times out is marked degraded; the daemon keeps serving
//! everything else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr};
use bytes::Bytes;
use plugin_api::abi::{
    ByteSink, ByteSink_TO, ByteSource, ByteSource_TO, HostHandle, PluginBox, PluginError,
};
use plugin_api::sdk::PANIC_PREFIX;
use plugin_api::{Call, Hook, Kind, Manifest};
use serde::Serialize;
use tokio::sync::{mpsc, watch, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use super::cache::{Cache, Cached};
use super::loader::{self, LoadError};
use crate::lifecycle::{Lifecycle, StartMarkers};

/// A plugin that did not load, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    pub path: PathBuf,
    /// The plugin's name, when its manifest could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plugin's kind, when its manifest could be read (names repeat across kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    pub check: &'static str,
    pub reason: String,
}

/// An error from a plugin call, ready to be rendered by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub status: u16,
    pub message: String,
}

impl CallError {
    /// An error with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> CallError {
        CallError {
            status,
            message: message.into(),
        }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> CallError {
        CallError::new(500, message)
    }
}

impl From<PluginError> for CallError {
    fn from(e: PluginError) -> Self {
        CallError {
            status: e.status,
            message: e.message.into_string(),
        }
    }
}

/// How long a read call is awaited without parking the worker (see `Plugin::run`).
const SPIN: Duration = Duration::from_micros(100);

/// Reads (`get`, `backup`, `GET` routes) one plugin may have in flight. A read counts until
/// it really ends, also after its caller timed out.
pub const MAX_READS: usize = 32;

/// Changes one plugin may have running or waiting: one runs, the others wait their turn.
/// More are refused at once, so clients queuing behind a slow change hold nothing.
pub const MAX_CHANGES: usize = 4;

/// How long a provider's `fetch` or an application's action may run (a stalled download
/// fails long before).
pub const FETCH_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// How long plugin calls may take before they fail and the plugin is marked degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Calls that only read (`get`).
    pub read: Duration,
    /// Calls that change things (`put`, `start`, `reset`, ...): they may wait on systemd
    /// jobs and commands, and on the previous change to the same plugin.
    pub change: Duration,
}

impl Timeouts {
    /// The same limit for both.
    pub fn both(t: Duration) -> Timeouts {
        Timeouts { read: t, change: t }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            read: Duration::from_secs(30),
            change: Duration::from_secs(300),
        }
    }
}

/// Where a plugin is in the daemon's start and stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Run {
    /// Its start hook has not run yet (it may be waiting for its dependencies).
    Pending,
    /// Its start hook is running.
    Starting,
    /// Started, or its start hook failed or gave up: changes are taken.
    Started,
    /// Left out of this start (its start hook killed the daemon last time); changes are
    /// taken, so its configuration can be fixed.
    NotStarted,
    /// Stopped (or never to be started: the daemon is stopping): changes are refused.
    Stopped,
}

/// Why a plugin is degraded, and what clears it.
#[derive(Debug, Clone)]
struct Degraded {
    reason: String,
    /// The calls that timed out and are still running: it clears once the last of them
    /// ended. `None`: it stays until the daemon restarts (a panic, a crash in a start hook).
    cleared_by: Option<std::collections::BTreeSet<u64>>,
}

type Health = Arc<Mutex<Option<Degraded>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a plugin degraded. A lasting reason is not replaced by a passing one.
fn mark_degraded(health: &Health, plugin: &str, reason: String, cleared_by: Option<u64>) {
    let mut h = lock(health);
    tracing::error!(plugin, reason = %reason, "plugin degraded");
    match (h.as_mut(), cleared_by) {
        // A lasting reason stays.
        (Some(d), Some(_)) if d.cleared_by.is_none() => {}
        // Another stuck call: the plugin recovers only once every one of them ended.
        (
            Some(Degraded {
                reason: r,
                cleared_by: Some(calls),
            }),
            Some(call),
        ) => {
            calls.insert(call);
            *r = reason;
        }
        (_, cleared_by) => {
            *h = Some(Degraded {
                reason,
                cleared_by: cleared_by.map(|c| std::collections::BTreeSet::from([c])),
            })
        }
    }
}

/// A finished call's result, the same way for every call: a crash or a caught panic is a
/// 500 and leaves the plugin degraded until the daemon restarts.
fn outcome<T>(
    health: &Health,
    plugin: &str,
    op: &str,
    joined: Result<RResult<T, PluginError>, tokio::task::JoinError>,
) -> Result<T, CallError> {
    match joined {
        Err(join) => {
            let why = format!("'{op}' crashed: {join}");
            mark_degraded(health, plugin, why.clone(), None);
            Err(refused(500, format!("plugin '{plugin}': {why}")))
        }
        Ok(RResult::RErr(e)) => {
            if e.message.as_str().starts_with(PANIC_PREFIX) {
                mark_degraded(health, plugin, e.message.to_string(), None);
            }
            Err(e.into())
        }
        Ok(RResult::ROk(v)) => Ok(v),
    }
}

/// How a call that timed out ended later: the plugin recovers unless it panicked.
fn late_end<T>(health: &Health, plugin: &str, op: &str, call: u64, r: &RResult<T, PluginError>) {
    match r {
        RResult::RErr(e) if e.message.as_str().starts_with(PANIC_PREFIX) => {
            mark_degraded(health, plugin, e.message.to_string(), None);
            return;
        }
        RResult::RErr(e) => {
            tracing::warn!(plugin, op, error = %e.message, "a call that timed out failed later")
        }
        RResult::ROk(_) => tracing::info!(plugin, op, "a call that timed out finished later"),
    }
    let mut h = lock(health);
    let last = h
        .as_mut()
        .and_then(|d| d.cleared_by.as_mut())
        .is_some_and(|calls| {
            calls.remove(&call);
            calls.is_empty()
        });
    if last {
        *h = None;
        tracing::info!(plugin, "plugin recovered");
    }
}

/// What a call holds while it runs: its place in the plugin's bounds and, for a change,
/// the plugin's change lock. Released when the blocking call really ends.
struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    _lock: Option<OwnedMutexGuard<()>>,
}

/// What kind of call `Plugin::run` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Read,
    Change,
    /// A start or stop hook the daemon runs (no client waits for it).
    Lifecycle,
}

/// Whether a call that hit its timeout really ended meanwhile (see `Plugin::run`).
#[derive(Default)]
struct CallEnd {
    done: bool,
    timed_out: bool,
}

/// A plugin's instance: made when it was loaded, or (deferred: registered from the
/// manifest cache without opening its library) on its first call.
struct Instance {
    made: OnceLock<Result<Arc<PluginBox>, PluginError>>,
    deferred: Mutex<Option<Deferred>>,
}

/// What opening a deferred plugin needs.
struct Deferred {
    manifest: Manifest,
    /// The library's identity when it was registered: unchanged, its layout check (passed
    /// at an earlier start) is not repeated.
    file: loader::FileIdentity,
    path: PathBuf,
    /// The plugin's place in its library (a bundle carries several).
    index: usize,
    host: HostHandle,
    health: Health,
    failures: Failures,
}

type Failures = Arc<Mutex<Vec<LoadFailure>>>;

impl Instance {
    fn made(instance: PluginBox) -> Instance {
        Instance {
            made: OnceLock::from(Ok(Arc::new(instance))),
            deferred: Mutex::new(None),
        }
    }

    fn deferred(d: Deferred) -> Instance {
        Instance {
            made: OnceLock::new(),
            deferred: Mutex::new(Some(d)),
        }
    }

    fn is_open(&self) -> bool {
        matches!(self.made.get(), Some(Ok(_)))
    }

    /// The instance, opening the library first if it is deferred (blocking: call it on a
    /// blocking thread). Concurrent first calls open it once; a failed open stays failed.
    fn get(&self) -> Result<Arc<PluginBox>, PluginError> {
        self.made
            .get_or_init(|| match lock(&self.deferred).take() {
                Some(d) => open_deferred(d),
                // Only after an open that panicked (its call failed with the panic).
                None => Err(PluginError::new(
                    500,
                    "the plugin's library failed to open earlier; restart the daemon",
                )),
            })
            .clone()
    }
}

/// Opens a deferred plugin's library as the daemon does at start (trust checks, then the
/// library's own), checks its manifest is still the cached one, and instantiates it. A
/// failure degrades the plugin for good and lists it among the load failures.
fn open_deferred(d: Deferred) -> Result<Arc<PluginBox>, PluginError> {
    let name = d.manifest.name.clone();
    let opened = loader::open_trusted_known(&d.path, d.file).and_then(|lib| {
        let lib = lib.plugins.into_iter().nth(d.index).ok_or_else(|| {
            LoadError::Other(
                "the library changed since the daemon started: it carries fewer plugins; \
                 restart the daemon to load it"
                    .to_string(),
            )
        })?;
        if lib.manifest != d.manifest {
            return Err(LoadError::Other(format!(
                "the library changed since the daemon started: its manifest is no longer \
                 the one registered at start ({} version {}); restart the daemon to load it",
                lib.manifest.name, lib.manifest.version
            )));
        }
        lib.instantiate(d.host)
    });
    match opened {
        Ok(instance) => {
            tracing::info!(
                plugin = %name,
                kind = ?d.manifest.kind,
                version = %d.manifest.version,
                api_version = %d.manifest.api_version,
                path = %d.path.display(),
                deferred = true,
                "plugin loaded"
            );
            Ok(Arc::new(instance))
        }
        Err(e) => {
            let reason = format!("its library failed to open on first use: {e}");
            tracing::error!(
                path = %d.path.display(),
                plugin = %name,
                kind = d.manifest.kind.as_str(),
                check = e.check(),
                reason = %e,
                "plugin not loaded"
            );
            mark_degraded(&d.health, &name, reason.clone(), None);
            lock(&d.failures).push(LoadFailure {
                path: d.path.clone(),
                name: Some(name.clone()),
                kind: Some(d.manifest.kind),
                check: e.check(),
                reason: e.to_string(),
            });
            Err(PluginError::new(500, format!("plugin '{name}' {reason}")))
        }
    }
}

/// A loaded plugin.
pub struct Plugin {
    pub manifest: Manifest,
    pub path: PathBuf,
    instance: Arc<Instance>,
    mutate: Arc<tokio::sync::Mutex<()>>,
    reads: Arc<Semaphore>,
    changes: Arc<Semaphore>,
    health: Health,
    run: watch::Sender<Run>,
    /// Left out of this daemon's start (also when plugins are started again after a
    /// refused power action).
    left_out: AtomicBool,
    calls: AtomicU64,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("kind", &self.manifest.kind)
            .field("name", &self.manifest.name)
            .field("path", &self.path)
            .finish()
    }
}

fn refused(status: u16, message: String) -> CallError {
    CallError { status, message }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Its identity: kind and name.
    pub fn id(&self) -> PluginId {
        (self.manifest.kind, self.manifest.name.clone())
    }

    /// Why the plugin is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        lock(&self.health).as_ref().map(|d| d.reason.clone())
    }

    /// Where the plugin is in the daemon's start and stop.
    pub fn run_state(&self) -> Run {
        *self.run.borrow()
    }

    /// Whether its library is open: loaded at start, or deferred and called since.
    pub fn is_open(&self) -> bool {
        self.instance.is_open()
    }

    /// Where `GET` shows the outcome of a change to this plugin.
    fn result_url(&self) -> String {
        match self.manifest.kind.collection() {
            Some(c) => format!("GET /1.0/{c}/{}", self.manifest.name),
            None => "GET /1.0/system/provider".to_string(),
        }
    }

    fn refuse_if_stopped(&self, op: &str) -> Result<(), CallError> {
        if self.run_state() == Run::Stopped {
            return Err(refused(
                503,
                format!(
                    "plugin '{}' is stopped (the daemon is shutting down or the system is \
                     rebooting): '{op}' was not started",
                    self.manifest.name
                ),
            ));
        }
        Ok(())
    }

    /// A read's place within [`MAX_READS`], or a 503 at once.
    fn admit_read(&self, op: &str) -> Result<Held, CallError> {
        let permit = self.reads.clone().try_acquire_owned().map_err(|_| {
            refused(
                503,
                format!(
                    "plugin '{}' already has {MAX_READS} calls in flight (it may be stuck): \
                     '{op}' was not started, try again later",
                    self.manifest.name
                ),
            )
        })?;
        Ok(Held {
            _permit: Some(permit),
            _lock: None,
        })
    }

    /// A change's place within [`MAX_CHANGES`] (or a 503 at once), then its turn: once the
    /// plugin started, holding the change lock. Refused if the plugin stopped meanwhile.
    async fn admit_change(&self, op: &str) -> Result<Held, CallError> {
        let name = &self.manifest.name;
        let permit = self.changes.clone().try_acquire_owned().map_err(|_| {
            refused(
                503,
                format!(
                    "plugin '{name}' is busy: {MAX_CHANGES} changes are already running or \
                     waiting; '{op}' was not started, try again later"
                ),
            )
        })?;
        // One deadline for both waits: for the plugin to have started, then for its turn.
        let until = tokio::time::Instant::now() + self.timeouts.change;
        let mut run = self.run.subscribe();
        let started = tokio::time::timeout_at(
            until,
            run.wait_for(|r| !matches!(r, Run::Pending | Run::Starting)),
        )
        .await
        .is_ok();
        if !started {
            return Err(refused(
                503,
                format!(
                    "plugin '{name}' is still starting: '{op}' was not started, try again later"
                ),
            ));
        }
        self.refuse_if_stopped(op)?;
        let guard = tokio::time::timeout_at(until, self.mutate.clone().lock_owned())
            .await
            .map_err(|_| {
                refused(
                    503,
                    format!(
                        "plugin '{name}' is busy: an earlier change is still running; '{op}' \
                         was not started, try again later"
                    ),
                )
            })?;
        self.refuse_if_stopped(op)?;
        Ok(Held {
            _permit: Some(permit),
            _lock: Some(guard),
        })
    }

    /// Runs `f` on a blocking thread with what it holds, within `limit`.
    ///
    /// A change that passes its limit is not reported as failed: it cannot be cancelled
    /// and may still take effect, so the answer (504) says it is still running and where
    /// its result shows. The plugin is degraded until that call ends; then it recovers
    /// (unless the call panicked). `on_end` runs on the blocking thread once `f` returned.
    async fn run<T: Send + 'static>(
        &self,
        op: &str,
        kind: CallKind,
        limit: Duration,
        held: Held,
        on_end: Option<Box<dyn FnOnce() + Send>>,
        f: impl FnOnce(&PluginBox) -> RResult<T, PluginError> + Send + 'static,
    ) -> Result<T, CallError> {
        let id = self.calls.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(Mutex::new(CallEnd::default()));
        let task = {
            let (inst, end, health) = (self.instance.clone(), end.clone(), self.health.clone());
            let (plugin, op) = (self.manifest.name.clone(), op.to_string());
            tokio::task::spawn_blocking(move || {
                let r = match inst.get() {
                    Ok(i) => f(&i),
                    Err(e) => RResult::RErr(e),
                };
                drop(held);
                let mut e = lock(&end);
                e.done = true;
                if e.timed_out {
                    late_end(&health, &plugin, &op, id, &r);
                }
                drop(e);
                if let Some(on_end) = on_end {
                    on_end();
                }
                r
            })
        };
        let mut task = task;
        if kind == CallKind::Read {
            // A read usually answers within microseconds: stay awake for it briefly rather
            // than parking the worker and paying a wake-up on each side.
            let spin_until = Instant::now() + SPIN;
            while !task.is_finished() && Instant::now() < spin_until {
                tokio::task::yield_now().await;
            }
        }
        let name = &self.manifest.name;
        let joined = match tokio::time::timeout(limit, &mut task).await {
            Ok(j) => j,
            Err(_) => {
                // Either it ended just now (then its result counts), or it is noted as
                // timed out and the plugin degraded under the same lock, so the blocking
                // side sees both when it ends.
                let timed_out = {
                    let mut e = lock(&end);
                    (!e.done).then(|| {
                        e.timed_out = true;
                        self.timed_out(op, kind, limit, id)
                    })
                };
                if let Some(err) = timed_out {
                    return Err(err);
                }
                task.await
            }
        };
        outcome(&self.health, name, op, joined)
    }

    /// The answer for a call that passed its limit; the plugin is degraded until it ends.
    fn timed_out(&self, op: &str, kind: CallKind, limit: Duration, id: u64) -> CallError {
        let name = &self.manifest.name;
        let secs = limit.as_secs_f64();
        let why = format!("'{op}' did not finish within {secs}s");
        mark_degraded(&self.health, name, why.clone(), Some(id));
        if kind == CallKind::Change {
            refused(
                504,
                format!(
                    "plugin '{name}': '{op}' is still running after {secs}s; it was not \
                     cancelled and may still take effect: {} shows the result once it \
                     finished",
                    self.result_url()
                ),
            )
        } else {
            refused(500, format!("plugin '{name}': {why}"))
        }
    }

    /// Makes `call` with JSON `input`; returns the plugin's JSON output. Whether the call
    /// changes state (and so is bounded, ordered and gated as a change) is the call's
    /// own decision ([`Call::changes_state`]).
    pub async fn call(&self, call: Call<'_>, input: Bytes) -> Result<Vec<u8>, CallError> {
        let op = call.op();
        let (kind, held, limit) = if call.changes_state() {
            let held = self.admit_change(op).await?;
            // A provider's fetch moves whole OS images: the host's network layer cuts a
            // stalled transfer, so the call itself gets hours, not the change timeout. An
            // application's action too (building a Ceph cluster pulls images and makes
            // containers): upstream answers it when it is done, however long that takes.
            let limit = if matches!(call, Call::Hook(Hook::Fetch | Hook::Action)) {
                FETCH_LIMIT.max(self.timeouts.change)
            } else {
                self.timeouts.change
            };
            (CallKind::Change, held, limit)
        } else {
            (CallKind::Read, self.admit_read(op)?, self.timeouts.read)
        };
        let op_owned = op.to_string();
        self.run(op, kind, limit, held, None, move |inst| {
            inst.invoke(RStr::from_str(&op_owned), RSlice::from_slice(&input))
                .map(|v| v.into_vec())
        })
        .await
    }

    /// Calls a hook.
    pub async fn hook(&self, hook: Hook, input: Bytes) -> Result<Vec<u8>, CallError> {
        self.call(Call::Hook(hook), input).await
    }

    /// Runs the start or stop hook, holding the change lock the caller took.
    async fn lifecycle_hook(
        &self,
        hook: Hook,
        lock: OwnedMutexGuard<()>,
        limit: Duration,
        on_end: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Vec<u8>, CallError> {
        let held = Held {
            _permit: None,
            _lock: Some(lock),
        };
        self.run(
            hook.op(),
            CallKind::Lifecycle,
            limit,
            held,
            on_end,
            move |inst| {
                inst.invoke(RStr::from_str(hook.op()), RSlice::from_slice(&[]))
                    .map(|v| v.into_vec())
            },
        )
        .await
    }

    /// Starts a backup. The archive arrives as chunks on the returned channel; the call's
    /// result follows once the plugin returns. Nothing is buffered whole. A backup is a
    /// read: it counts against [`MAX_READS`] until it ends.
    pub async fn backup(
        &self,
        options: Bytes,
    ) -> (
        mpsc::Receiver<Bytes>,
        tokio::task::JoinHandle<Result<(), CallError>>,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let held = match self.admit_read("backup") {
            Ok(h) => h,
            Err(e) => return (rx, tokio::spawn(async move { Err(e) })),
        };
        let inst = self.instance.clone();
        let (plugin, health) = (self.manifest.name.clone(), self.health.clone());
        let task = tokio::task::spawn_blocking(move || {
            let _held = held;
            let inst = match inst.get() {
                Ok(i) => i,
                Err(e) => return RResult::RErr(e),
            };
            let mut sink = ChannelSink { tx };
            inst.backup(
                RSlice::from_slice(&options),
                ByteSink_TO::from_ptr(&mut sink, TD_Opaque),
            )
        });
        // No timeout here: an archive may take long to stream; the client sets the pace.
        let handle = tokio::spawn(async move {
            let r = outcome(&health, &plugin, "backup", task.await);
            if let Err(e) = &r {
                tracing::warn!(plugin, error = %e.message, "backup failed");
            }
            r
        });
        (rx, handle)
    }

    /// Restores from a stream of chunks (a change).
    pub async fn restore(
        &self,
        chunks: mpsc::Receiver<Result<Bytes, String>>,
    ) -> Result<(), CallError> {
        let held = self.admit_change("restore").await?;
        self.run(
            "restore",
            CallKind::Change,
            self.timeouts.change,
            held,
            None,
            move |inst| {
                let mut source = ChannelSource {
                    rx: chunks,
                    current: Bytes::new(),
                };
                inst.restore(ByteSource_TO::from_ptr(&mut source, TD_Opaque))
            },
        )
        .await
    }

    /// Moves `from` -> `to` only if the plugin is in `from`.
    fn run_if(&self, from: Run, to: Run) -> bool {
        self.run.send_if_modified(|r| {
            if *r == from {
                *r = to;
                true
            } else {
                false
            }
        })
    }

    /// Starts this plugin once `deps` started (or gave up).
    async fn start(
        self: Arc<Self>,
        deps: Vec<Arc<Plugin>>,
        markers: Arc<StartMarkers>,
        left_out: bool,
        lifecycle: Arc<Lifecycle>,
    ) {
        for d in deps {
            let mut rx = d.run.subscribe();
            let _ = rx
                .wait_for(|r| !matches!(r, Run::Pending | Run::Starting))
                .await;
        }
        let lock = self.mutate.clone().lock_owned().await;
        // Under the change lock, so a stop cannot slip in between the check and the hook.
        if lifecycle.is_stopping() {
            self.run_if(Run::Pending, Run::Stopped);
            return;
        }
        let next = if left_out {
            Run::NotStarted
        } else {
            Run::Starting
        };
        if !self.run_if(Run::Pending, next) || left_out {
            return;
        }
        let name = self.manifest.name.clone();
        // Applications are started by the applications subsystem once installed (with
        // their install context), and stopped by it first at shutdown.
        if self.manifest.has(Hook::Start) && self.manifest.kind != Kind::Application {
            let marker = StartMarkers::key(self.manifest.kind, &name);
            markers.set(&marker);
            let on_end: Box<dyn FnOnce() + Send> = {
                let markers = markers.clone();
                Box::new(move || markers.clear(&marker))
            };
            let limit = self.timeouts.change;
            match self
                .lifecycle_hook(Hook::Start, lock, limit, Some(on_end))
                .await
            {
                Ok(_) => tracing::debug!(plugin = %name, "started"),
                Err(e) => tracing::error!(plugin = %name, error = %e.message, "start failed"),
            }
        } else {
            drop(lock);
            tracing::debug!(plugin = %name, "started");
        }
        self.run_if(Run::Starting, Run::Started);
    }
}

struct ChannelSink {
    tx: mpsc::Sender<Bytes>,
}

impl ByteSink for ChannelSink {
    fn write(&mut self, chunk: RSlice<'_, u8>) -> RResult<(), PluginError> {
        match self
            .tx
            .blocking_send(Bytes::copy_from_slice(chunk.as_slice()))
        {
            Ok(()) => RResult::ROk(()),
            Err(_) => RResult::RErr(PluginError::new(500, "the client went away")),
        }
    }
}

/// The archive a restore reads. A feeder that fails sends an error: the plugin's read fails
/// with it, so a cut-off archive is never taken for a whole one.
struct ChannelSource {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl ByteSource for ChannelSource {
    fn read(&mut self, mut buf: RSliceMut<'_, u8>) -> RResult<usize, PluginError> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return RResult::RErr(PluginError::new(500, e)),
                None => return RResult::ROk(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        RResult::ROk(n)
    }
}

/// A plugin's identity: its kind and its name together. Names are unique within a kind
/// only: upstream has a `debug` provider and a `debug` application.
pub type PluginId = (Kind, String);

/// Loaded plugins by identity (kind, then name), plus the ones that failed to load.
#[derive(Debug, Default)]
pub struct Registry {
    plugins: BTreeMap<PluginId, Arc<Plugin>>,
    failures: Failures,
    /// Libraries opened while loading (the others were deferred).
    opened: usize,
}

impl Registry {
    /// Scans `dirs` in order and loads every plugin library found. Only trusted files
    /// load (see [`loader::open_trusted`]); a directory that is not trusted is refused as
    /// a whole. When two libraries declare the same plugin (the same kind and name; a
    /// provider and an application may share a name), the first one loaded wins:
    /// the first directory in `dirs`, then the first file by name. A library that fails any
    /// check is recorded in [`Registry::failures`] and logged; it never stops the daemon.
    /// `host_for` builds the host handle for a plugin from its manifest.
    pub fn load(
        dirs: &[PathBuf],
        timeouts: Timeouts,
        host_for: impl Fn(&Manifest) -> HostHandle,
    ) -> Registry {
        Registry::load_cached(dirs, timeouts, Cache::none(), |_| true, host_for)
    }

    /// [`Registry::load`] with a manifest cache: every library passes the trust checks;
    /// then one whose file and manifest are in `cache` (unchanged since) is registered
    /// from its cached manifest without being opened, unless `open_at_start` wants it
    /// open (plugins with start or stop hooks other than applications always are). Such
    /// a deferred plugin's library is opened, checked and instantiated on its first
    /// call. The cache is written back once every library was seen.
    pub fn load_cached(
        dirs: &[PathBuf],
        timeouts: Timeouts,
        mut cache: Cache,
        open_at_start: impl Fn(&Manifest) -> bool,
        host_for: impl Fn(&Manifest) -> HostHandle,
    ) -> Registry {
        let mut reg = Registry::default();
        for dir in dirs {
            match loader::scan_dir(dir) {
                Ok(files) if files.is_empty() => {}
                Ok(files) => {
                    if let Err(e) = loader::check_dir(dir) {
                        reg.fail(dir, None, e);
                        continue;
                    }
                    // Crates a bundle of this directory carries: their own libraries are
                    // skipped unopened (bundles come first in the listing).
                    let mut bundled: BTreeMap<String, PathBuf> = BTreeMap::new();
                    let mut skipped: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
                    for f in files {
                        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                        if let Some(bundle) =
                            loader::crate_of_file(name).and_then(|c| bundled.get(c))
                        {
                            skipped
                                .entry(bundle.clone())
                                .or_default()
                                .push(name.to_string());
                            continue;
                        }
                        let carried =
                            reg.load_one(&f, timeouts, &mut cache, &open_at_start, &host_for);
                        for c in carried {
                            bundled.insert(c, f.clone());
                        }
                    }
                    // One line per bundle: an operator who dropped a newer build of a
                    // bundled plugin here sees why it is not the one loaded.
                    for (bundle, libraries) in skipped {
                        tracing::info!(
                            bundle = %bundle.display(),
                            skipped = %libraries.join(" "),
                            "plugin libraries skipped: their plugins are loaded from the bundle (to replace one, put it in an earlier plugin directory)"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot read plugin directory")
                }
            }
        }
        cache.write();
        reg.check_dependencies();
        reg
    }

    /// How many libraries were opened while loading (the others were deferred).
    pub fn opened_at_load(&self) -> usize {
        self.opened
    }

    fn fail(&mut self, path: &Path, id: Option<PluginId>, e: LoadError) {
        let (kind, name) = id.unzip();
        tracing::error!(
            path = %path.display(),
            plugin = name.as_deref().unwrap_or(""),
            kind = kind.map_or("", Kind::as_str),
            check = e.check(),
            reason = %e,
            "plugin not loaded"
        );
        lock(&self.failures).push(LoadFailure {
            path: path.to_path_buf(),
            name,
            kind,
            check: e.check(),
            reason: e.to_string(),
        });
    }

    /// Loads the plugins of one library; returns the crates it carries if it is a bundle.
    fn load_one(
        &mut self,
        path: &Path,
        timeouts: Timeouts,
        cache: &mut Cache,
        open_at_start: &impl Fn(&Manifest) -> bool,
        host_for: &impl Fn(&Manifest) -> HostHandle,
    ) -> Vec<String> {
        let file = match loader::check_trusted(path) {
            Ok(f) => f,
            Err(e) => {
                self.fail(path, None, e);
                return vec![];
            }
        };
        let cached = cache.hit(path, file);
        if let Some(c) = &cached {
            // Deferred only when none of its plugins is wanted open at start.
            let wanted = |m: &Manifest| {
                let always =
                    m.kind != Kind::Application && (m.has(Hook::Start) || m.has(Hook::Stop));
                always || open_at_start(m)
            };
            if !c.manifests.iter().any(wanted) {
                for (index, manifest) in c.manifests.iter().enumerate() {
                    self.register_deferred(manifest.clone(), path, file, index, timeouts, host_for);
                }
                return c.bundled.clone();
            }
        }
        self.opened += 1;
        // A library the cache knows unchanged passed every check at an earlier start of
        // this build: its layout check is not repeated (the other checks are).
        let opened = match &cached {
            Some(_) => loader::open_trusted_known(path, file),
            None => loader::open_library_trusted(path),
        };
        let lib = match opened {
            Ok(l) => l,
            Err(e) => {
                self.fail(path, None, e);
                return vec![];
            }
        };
        let found = Cached {
            manifests: lib.plugins.iter().map(|p| p.manifest.clone()).collect(),
            bundled: lib.bundled.clone(),
        };
        if cached.as_ref().is_some_and(|c| *c != found) {
            let e = LoadError::Other(
                "the library's manifest is not the one the plugin cache recorded for it".into(),
            );
            let id = lib
                .plugins
                .first()
                .map(|p| (p.manifest.kind, p.manifest.name.clone()));
            self.fail(path, id, e);
            return vec![];
        }
        cache.record(path, file, found);
        for plugin in lib.plugins {
            let id = (plugin.manifest.kind, plugin.manifest.name.clone());
            if let Some(other) = self.plugins.get(&id) {
                let e = LoadError::Duplicate {
                    name: id.1.clone(),
                    loaded: other.path.display().to_string(),
                    refused: path.display().to_string(),
                };
                self.fail(path, Some(id), e);
                continue;
            }
            match plugin.instantiate(host_for(&plugin.manifest)) {
                Ok(i) => self.add(plugin.manifest, path, i, timeouts),
                Err(e) => self.fail(path, Some(id), e),
            }
        }
        lib.bundled
    }

    /// Registers a plugin from its cached manifest, its library opened on first use.
    fn register_deferred(
        &mut self,
        manifest: Manifest,
        path: &Path,
        file: loader::FileIdentity,
        index: usize,
        timeouts: Timeouts,
        host_for: &impl Fn(&Manifest) -> HostHandle,
    ) {
        let id = (manifest.kind, manifest.name.clone());
        if let Some(other) = self.plugins.get(&id) {
            let e = LoadError::Duplicate {
                name: id.1.clone(),
                loaded: other.path.display().to_string(),
                refused: path.display().to_string(),
            };
            return self.fail(path, Some(id), e);
        }
        tracing::info!(
            plugin = %manifest.name,
            kind = ?manifest.kind,
            version = %manifest.version,
            path = %path.display(),
            "plugin registered from the cache (opened on first use)"
        );
        let health: Health = Arc::new(Mutex::new(None));
        let deferred = Deferred {
            host: host_for(&manifest),
            manifest: manifest.clone(),
            file,
            path: path.to_path_buf(),
            index,
            health: health.clone(),
            failures: self.failures.clone(),
        };
        self.insert(
            manifest,
            path,
            Instance::deferred(deferred),
            health,
            timeouts,
        );
    }

    /// Registers an instantiated plugin (replacing one of the same kind and name). The
    /// loader uses it for libraries, after refusing duplicates; tests and the SDK's
    /// in-process users use it for plugins built into the same binary.
    pub fn add(
        &mut self,
        manifest: Manifest,
        path: &Path,
        instance: PluginBox,
        timeouts: Timeouts,
    ) {
        tracing::info!(
            plugin = %manifest.name,
            kind = ?manifest.kind,
            version = %manifest.version,
            api_version = %manifest.api_version,
            path = %path.display(),
            "plugin loaded"
        );
        let health = Arc::new(Mutex::new(None));
        self.insert(manifest, path, Instance::made(instance), health, timeouts);
    }

    fn insert(
        &mut self,
        manifest: Manifest,
        path: &Path,
        instance: Instance,
        health: Health,
        timeouts: Timeouts,
    ) {
        self.plugins.insert(
            (manifest.kind, manifest.name.clone()),
            Arc::new(Plugin {
                manifest,
                path: path.to_path_buf(),
                instance: Arc::new(instance),
                mutate: Arc::new(tokio::sync::Mutex::new(())),
                reads: Arc::new(Semaphore::new(MAX_READS)),
                changes: Arc::new(Semaphore::new(MAX_CHANGES)),
                health,
                run: watch::Sender::new(Run::Pending),
                left_out: AtomicBool::new(false),
                calls: AtomicU64::new(0),
                timeouts,
            }),
        );
    }

    /// The plugin that meets `plugin`'s dependency `dep`: a plugin of the same kind named
    /// `dep`, or for an application, an application that lists `dep` among its variants
    /// (`incus` is met by the plugin that also installs as `incus-lts-7.0`, and the other
    /// way round).
    pub fn dependency(&self, plugin: &Plugin, dep: &str) -> Option<&Arc<Plugin>> {
        let kind = plugin.manifest.kind;
        self.get(kind, dep).or_else(|| {
            (kind == Kind::Application)
                .then(|| {
                    self.of_kind(kind)
                        .find(|p| p.manifest.variants.iter().any(|v| v == dep))
                })
                .flatten()
        })
    }

    /// Refuses plugins whose dependencies are not loaded (repeated until stable, since
    /// refusing one may strand another). [`Registry::load`] runs it; embedders that
    /// [`Registry::add`] plugins run it once they added them all.
    pub fn check_dependencies(&mut self) {
        loop {
            let missing: Vec<(PluginId, String)> = self
                .plugins
                .iter()
                .filter_map(|(id, p)| {
                    p.manifest
                        .dependencies
                        .iter()
                        .find(|d| self.dependency(p, d).is_none())
                        .map(|d| (id.clone(), d.clone()))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            for (id, dep) in missing {
                let p = self.plugins.remove(&id).expect("present");
                let kind = id.0.as_str();
                self.fail(
                    &p.path.clone(),
                    Some(id),
                    LoadError::Other(format!(
                        "missing dependency: {kind} plugin '{dep}' is not loaded"
                    )),
                );
            }
        }
    }

    /// The loaded plugin of `kind` named `name` (names repeat across kinds).
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(&(kind, name.to_string()))
    }

    /// Plugins of `kind`, sorted by name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins
            .values()
            .filter(move |p| p.manifest.kind == kind)
    }

    /// Every plugin, by kind, then name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// The libraries that failed to load, at start or (deferred ones) on first use.
    pub fn failures(&self) -> Vec<LoadFailure> {
        lock(&self.failures).clone()
    }

    /// Start order: dependencies first, then by start weight, then by name (then kind).
    pub fn start_order(&self) -> Vec<Arc<Plugin>> {
        let mut sorted: Vec<Arc<Plugin>> = self.plugins.values().cloned().collect();
        sorted.sort_by(|a, b| {
            (a.manifest.start_weight, a.name(), a.manifest.kind).cmp(&(
                b.manifest.start_weight,
                b.name(),
                b.manifest.kind,
            ))
        });
        // Stable topological pass: a plugin goes after everything it depends on.
        let mut out: Vec<Arc<Plugin>> = Vec::with_capacity(sorted.len());
        let mut placed: BTreeSet<PluginId> = BTreeSet::new();
        while out.len() < sorted.len() {
            let before = out.len();
            for p in &sorted {
                if !placed.contains(&p.id())
                    && p.manifest.dependencies.iter().all(|d| {
                        self.dependency(p, d)
                            .is_some_and(|dep| placed.contains(&dep.id()))
                    })
                {
                    placed.insert(p.id());
                    out.push(p.clone());
                }
            }
            if out.len() == before {
                // A dependency cycle: keep the remaining ones in weight order.
                for p in &sorted {
                    if placed.insert(p.id()) {
                        out.push(p.clone());
                    }
                }
            }
        }
        out
    }

    /// Starts every plugin: each one's start hook runs once the plugins it depends on
    /// started or gave up, so a start hook that blocks (until `--plugin-change-timeout`)
    /// delays only its own plugin and those depending on it. Plugins whose start marker
    /// ([`StartMarkers::key`]) is in `left_out` (their start hook killed the daemon last
    /// time) are not started and stay degraded.
    /// Nothing starts once `lifecycle` is stopping. Returns when every plugin started or
    /// gave up.
    pub async fn start_all(
        &self,
        markers: Arc<StartMarkers>,
        left_out: &BTreeSet<String>,
        lifecycle: Arc<Lifecycle>,
    ) {
        let order = self.start_order();
        let position: BTreeMap<PluginId, usize> =
            order.iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, p) in order.iter().enumerate() {
            p.run_if(Run::Stopped, Run::Pending);
            if left_out.contains(&StartMarkers::key(p.manifest.kind, p.name()))
                && !p.left_out.swap(true, Ordering::Relaxed)
            {
                let why = "not started: its start hook was running when the daemon last \
                           ended without stopping (a crash?); fix its configuration, then \
                           restart the daemon to start it again";
                tracing::error!(plugin = %p.name(), "{why}");
                mark_degraded(&p.health, p.name(), why.to_string(), None);
            }
            let left = p.left_out.load(Ordering::Relaxed);
            // Only dependencies earlier in the order are awaited (a cycle cannot deadlock).
            let deps = p
                .manifest
                .dependencies
                .iter()
                .filter_map(|d| self.dependency(p, d))
                .filter(|d| position.get(&d.id()).is_some_and(|&j| j < i))
                .cloned()
                .collect();
            tasks.spawn(
                p.clone()
                    .start(deps, markers.clone(), left, lifecycle.clone()),
            );
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(()) => {}
                // Cancelled: the daemon is stopping (the runtime ends its tasks); not a fault.
                Err(e) if e.is_cancelled() => {
                    tracing::debug!(error = %e, "a plugin's start task was cancelled")
                }
                Err(e) => tracing::error!(error = %e, "a plugin's start task failed"),
            }
        }
    }

    /// Marks every plugin started without running start hooks (for embedders and tests
    /// that do not exercise start-up).
    pub fn mark_all_started(&self) {
        for p in self.plugins.values() {
            p.run_if(Run::Pending, Run::Started);
        }
    }

    /// Stops every plugin in reverse start order: from then on its changes are refused;
    /// a change already running ends first, then its stop hook runs. Each plugin gets at
    /// most `per_plugin` (and never more than `--plugin-change-timeout`), all of them
    /// together `budget`; a plugin that does not stop in time is logged and left behind.
    /// Plugins that never started are not stopped.
    pub async fn stop_all(&self, budget: Duration, per_plugin: Duration) {
        let deadline = Instant::now() + budget;
        for p in self.start_order().into_iter().rev() {
            let was = p.run.send_replace(Run::Stopped);
            if !matches!(was, Run::Starting | Run::Started) {
                continue;
            }
            let limit = || {
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(per_plugin)
                    .min(p.timeouts.change)
            };
            let waited = limit();
            if waited.is_zero() {
                tracing::error!(plugin = %p.name(), "stop skipped: the shutdown budget is spent");
                continue;
            }
            let Ok(lock) = tokio::time::timeout(waited, p.mutate.clone().lock_owned()).await else {
                tracing::error!(
                    plugin = %p.name(),
                    "stop skipped: its start hook or a change was still running after {}s",
                    waited.as_secs_f64()
                );
                continue;
            };
            // A deferred plugin never opened has nothing to stop.
            if !p.manifest.has(Hook::Stop) || p.manifest.kind == Kind::Application || !p.is_open() {
                continue;
            }
            match p.lifecycle_hook(Hook::Stop, lock, limit(), None).await {
                Ok(_) => tracing::debug!(plugin = %p.name(), "stopped"),
                Err(e) => tracing::error!(plugin = %p.name(), error = %e.message, "stop failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> RResult<(), PluginError> {
        RResult::ROk(())
    }

    #[test]
    fn a_feeder_error_fails_the_read_instead_of_ending_the_archive() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        tx.try_send(Err("cannot read the stored archive: EIO".into()))
            .unwrap();
        drop(tx);
        let mut source = ChannelSource {
            rx,
            current: Bytes::new(),
        };
        let mut buf = [0u8; 8];
        assert_eq!(source.read(RSliceMut::from_mut_slice(&mut buf)).unwrap(), 3);
        let e = source
            .read(RSliceMut::from_mut_slice(&mut buf))
            .unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (500, "cannot read the stored archive: EIO")
        );
    }

    /// Every call's result goes through `outcome` (backups included): a caught panic
    /// degrades the plugin for good, a plain error does not.
    #[test]
    fn a_panic_in_any_call_degrades_the_plugin_and_an_error_does_not() {
        let health: Health = Arc::default();
        let err = outcome::<()>(
            &health,
            "p",
            "backup",
            Ok(RResult::RErr(PluginError::new(500, "disk full"))),
        )
        .unwrap_err();
        assert_eq!(err.message, "disk full");
        assert!(lock(&health).is_none());
        let panic = format!("{PANIC_PREFIX} in backup: boom");
        outcome::<()>(
            &health,
            "p",
            "backup",
            Ok(RResult::RErr(PluginError::new(500, panic.clone()))),
        )
        .unwrap_err();
        let h = lock(&health);
        let d = h.as_ref().expect("degraded");
        assert_eq!(
            (d.reason.as_str(), d.cleared_by.is_none()),
            (panic.as_str(), true)
        );
    }

    #[test]
    fn a_plugin_recovers_only_once_every_stuck_call_ended() {
        let health: Health = Arc::default();
        mark_degraded(&health, "p", "'get' did not finish".into(), Some(1));
        mark_degraded(&health, "p", "'get' did not finish".into(), Some(2));
        late_end(&health, "p", "get", 2, &ok());
        assert!(lock(&health).is_some(), "call 1 still holds a thread");
        late_end(&health, "p", "get", 1, &ok());
        assert!(lock(&health).is_none());
    }

    #[test]
    fn a_lasting_reason_is_not_cleared_by_a_late_end() {
        let health: Health = Arc::default();
        mark_degraded(&health, "p", "'get' did not finish".into(), Some(1));
        mark_degraded(&health, "p", "plugin panicked in put".into(), None);
        mark_degraded(&health, "p", "'get' did not finish".into(), Some(2));
        late_end(&health, "p", "get", 1, &ok());
        late_end(&health, "p", "get", 2, &ok());
        assert_eq!(
            lock(&health).as_ref().map(|d| d.reason.as_str()),
            Some("plugin panicked in put")
        );
    }
}
