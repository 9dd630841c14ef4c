//! The registry of loaded plugins, their lifecycle, and dispatch of calls into them.
//!
//! Plugin calls are synchronous on the ABI side: each runs on a blocking thread with a
//! timeout. Mutating calls to one plugin are serialized (the lock is held until the call
//! really ends, even after its caller timed out). A plugin that panics or times out is
//! marked degraded; the daemon keeps serving everything else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr};
use bytes::Bytes;
use plugin_api::abi::{
    ByteSink, ByteSink_TO, ByteSource, ByteSource_TO, HostHandle, PluginBox, PluginError,
};
use plugin_api::sdk::PANIC_PREFIX;
use plugin_api::{Hook, Kind, Manifest};
use serde::Serialize;
use tokio::sync::mpsc;

use super::loader::{self, LoadError};

/// A plugin that did not load, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    pub path: PathBuf,
    /// The plugin's name, when its manifest could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub check: &'static str,
    pub reason: String,
}

/// An error from a plugin call, ready to be rendered by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub status: u16,
    pub message: String,
}

impl From<PluginError> for CallError {
    fn from(e: PluginError) -> Self {
        CallError {
            status: e.status,
            message: e.message.into_string(),
        }
    }
}

/// How long a read call is awaited without parking the worker (see `Plugin::finish`).
const SPIN: Duration = Duration::from_micros(100);

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

    fn for_call(&self, mutating: bool) -> Duration {
        if mutating {
            self.change
        } else {
            self.read
        }
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

/// A loaded plugin.
pub struct Plugin {
    pub manifest: Manifest,
    pub path: PathBuf,
    instance: Arc<PluginBox>,
    mutate: Arc<tokio::sync::Mutex<()>>,
    degraded: Mutex<Option<String>>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("path", &self.path)
            .finish()
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Why the plugin is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn mark_degraded(&self, why: String) {
        tracing::error!(plugin = %self.manifest.name, reason = %why, "plugin degraded");
        *self.degraded.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    async fn lock_if(
        &self,
        mutating: bool,
        op: &str,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, CallError> {
        if !mutating {
            return Ok(None);
        }
        match tokio::time::timeout(self.timeouts.change, self.mutate.clone().lock_owned()).await {
            Ok(g) => Ok(Some(g)),
            Err(_) => Err(CallError {
                status: 500,
                message: format!(
                    "plugin '{}' is busy: an earlier change is still running, '{op}' not started",
                    self.manifest.name
                ),
            }),
        }
    }

    /// Waits for a blocking plugin call, applying the timeout and the degraded rules.
    async fn finish<T>(
        &self,
        op: &str,
        mutating: bool,
        task: tokio::task::JoinHandle<RResult<T, PluginError>>,
    ) -> Result<T, CallError> {
        let limit = self.timeouts.for_call(mutating);
        if !mutating {
            // A read usually answers within microseconds: stay awake for it briefly rather
            // than parking the worker and paying a wake-up on each side.
            let spin_until = std::time::Instant::now() + SPIN;
            while !task.is_finished() && std::time::Instant::now() < spin_until {
                tokio::task::yield_now().await;
            }
        }
        match tokio::time::timeout(limit, task).await {
            Err(_) => {
                let why = format!("'{op}' did not finish within {}s", limit.as_secs_f64());
                self.mark_degraded(why.clone());
                Err(CallError {
                    status: 500,
                    message: format!("plugin '{}': {why}", self.manifest.name),
                })
            }
            Ok(Err(join)) => {
                let why = format!("'{op}' crashed: {join}");
                self.mark_degraded(why.clone());
                Err(CallError {
                    status: 500,
                    message: format!("plugin '{}': {why}", self.manifest.name),
                })
            }
            Ok(Ok(RResult::RErr(e))) => {
                if e.message.as_str().starts_with(PANIC_PREFIX) {
                    self.mark_degraded(e.message.to_string());
                }
                Err(e.into())
            }
            Ok(Ok(RResult::ROk(v))) => Ok(v),
        }
    }

    /// Calls `op` with JSON `input`; returns the plugin's JSON output.
    pub async fn call(&self, op: &str, input: Bytes, mutating: bool) -> Result<Vec<u8>, CallError> {
        let guard = self.lock_if(mutating, op).await?;
        let inst = self.instance.clone();
        let op_owned = op.to_string();
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            inst.invoke(RStr::from_str(&op_owned), RSlice::from_slice(&input))
                .map(|v| v.into_vec())
        });
        self.finish(op, mutating, task).await
    }

    /// Calls a hook.
    pub async fn hook(&self, hook: Hook, input: Bytes) -> Result<Vec<u8>, CallError> {
        self.call(hook.op(), input, hook.is_mutating()).await
    }

    /// Starts a backup. The archive arrives as chunks on the returned channel; the call's
    /// result follows once the plugin returns. Nothing is buffered whole.
    pub async fn backup(
        &self,
        options: Bytes,
    ) -> (
        mpsc::Receiver<Bytes>,
        tokio::task::JoinHandle<Result<(), CallError>>,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let inst = self.instance.clone();
        let plugin = self.manifest.name.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut sink = ChannelSink { tx };
            let r = inst.backup(
                RSlice::from_slice(&options),
                ByteSink_TO::from_ptr(&mut sink, TD_Opaque),
            );
            if let RResult::RErr(e) = &r {
                tracing::warn!(plugin, error = %e.message, "backup failed");
            }
            r
        });
        // No timeout here: an archive may take long to stream; the client sets the pace.
        let handle = tokio::spawn(async move {
            task.await
                .map_err(|e| CallError {
                    status: 500,
                    message: format!("backup crashed: {e}"),
                })?
                .into_result()
                .map_err(CallError::from)
        });
        (rx, handle)
    }

    /// Restores from a stream of chunks.
    pub async fn restore(&self, chunks: mpsc::Receiver<Bytes>) -> Result<(), CallError> {
        let guard = self.lock_if(true, "restore").await?;
        let inst = self.instance.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut source = ChannelSource {
                rx: chunks,
                current: Bytes::new(),
            };
            inst.restore(ByteSource_TO::from_ptr(&mut source, TD_Opaque))
        });
        self.finish("restore", true, task).await
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

struct ChannelSource {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ByteSource for ChannelSource {
    fn read(&mut self, mut buf: RSliceMut<'_, u8>) -> RResult<usize, PluginError> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return RResult::ROk(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        RResult::ROk(n)
    }
}

/// Loaded plugins by name, plus the ones that failed to load.
#[derive(Debug, Default)]
pub struct Registry {
    plugins: BTreeMap<String, Arc<Plugin>>,
    failures: Vec<LoadFailure>,
}

impl Registry {
    /// Scans `dirs` in order and loads every plugin library found. Only trusted files
    /// load (see [`loader::open_trusted`]); a directory that is not trusted is refused as
    /// a whole. When two libraries declare the same plugin name, the first one loaded wins:
    /// the first directory in `dirs`, then the first file by name. A library that fails any
    /// check is recorded in [`Registry::failures`] and logged; it never stops the daemon.
    /// `host_for` builds the host handle for a plugin from its manifest.
    pub fn load(
        dirs: &[PathBuf],
        timeouts: Timeouts,
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
                    for f in files {
                        reg.load_one(&f, timeouts, &host_for);
                    }
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot read plugin directory")
                }
            }
        }
        reg.check_dependencies();
        reg
    }

    fn fail(&mut self, path: &Path, name: Option<String>, e: LoadError) {
        tracing::error!(
            path = %path.display(),
            plugin = name.as_deref().unwrap_or(""),
            check = e.check(),
            reason = %e,
            "plugin not loaded"
        );
        self.failures.push(LoadFailure {
            path: path.to_path_buf(),
            name,
            check: e.check(),
            reason: e.to_string(),
        });
    }

    fn load_one(
        &mut self,
        path: &Path,
        timeouts: Timeouts,
        host_for: &impl Fn(&Manifest) -> HostHandle,
    ) {
        let lib = match loader::open_trusted(path) {
            Ok(l) => l,
            Err(e) => return self.fail(path, None, e),
        };
        let name = lib.manifest.name.clone();
        if let Some(other) = self.plugins.get(&name) {
            let e = LoadError::Duplicate {
                name: name.clone(),
                loaded: other.path.display().to_string(),
                refused: path.display().to_string(),
            };
            return self.fail(path, Some(name), e);
        }
        let instance = match lib.instantiate(host_for(&lib.manifest)) {
            Ok(i) => i,
            Err(e) => return self.fail(path, Some(name), e),
        };
        self.add(lib.manifest, path, instance, timeouts);
    }

    /// Registers an instantiated plugin. The loader uses it for libraries; tests and the
    /// SDK's in-process users use it for plugins built into the same binary.
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
        self.plugins.insert(
            manifest.name.clone(),
            Arc::new(Plugin {
                manifest,
                path: path.to_path_buf(),
                instance: Arc::new(instance),
                mutate: Arc::new(tokio::sync::Mutex::new(())),
                degraded: Mutex::new(None),
                timeouts,
            }),
        );
    }

    /// Refuses plugins whose dependencies are not loaded (repeated until stable, since
    /// refusing one may strand another).
    fn check_dependencies(&mut self) {
        loop {
            let missing: Vec<(String, String)> = self
                .plugins
                .values()
                .filter_map(|p| {
                    p.manifest
                        .dependencies
                        .iter()
                        .find(|d| !self.plugins.contains_key(*d))
                        .map(|d| (p.manifest.name.clone(), d.clone()))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            for (name, dep) in missing {
                let p = self.plugins.remove(&name).expect("present");
                self.fail(
                    &p.path.clone(),
                    Some(name),
                    LoadError::Other(format!("missing dependency: plugin '{dep}' is not loaded")),
                );
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// Plugins of `kind`, sorted by name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins
            .values()
            .filter(move |p| p.manifest.kind == kind)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }

    /// Start order: dependencies first, then by start weight, then by name.
    pub fn start_order(&self) -> Vec<Arc<Plugin>> {
        let mut sorted: Vec<Arc<Plugin>> = self.plugins.values().cloned().collect();
        sorted.sort_by(|a, b| {
            (a.manifest.start_weight, a.name()).cmp(&(b.manifest.start_weight, b.name()))
        });
        // Stable topological pass: a plugin goes after everything it depends on.
        let mut out: Vec<Arc<Plugin>> = Vec::with_capacity(sorted.len());
        let mut placed = std::collections::BTreeSet::new();
        while out.len() < sorted.len() {
            let before = out.len();
            for p in &sorted {
                if !placed.contains(p.name())
                    && p.manifest
                        .dependencies
                        .iter()
                        .all(|d| placed.contains(d.as_str()))
                {
                    placed.insert(p.name().to_string());
                    out.push(p.clone());
                }
            }
            if out.len() == before {
                // A dependency cycle: keep the remaining ones in weight order.
                for p in &sorted {
                    if placed.insert(p.name().to_string()) {
                        out.push(p.clone());
                    }
                }
            }
        }
        out
    }

    /// Runs every plugin's start hook in start order. Failures are logged, not fatal.
    pub async fn start_all(&self) {
        for p in self.start_order() {
            if !p.manifest.has(Hook::Start) {
                continue;
            }
            match p.hook(Hook::Start, Bytes::new()).await {
                Ok(_) => tracing::debug!(plugin = %p.name(), "started"),
                Err(e) => tracing::error!(plugin = %p.name(), error = %e.message, "start failed"),
            }
        }
    }

    /// Runs every plugin's stop hook in reverse start order.
    pub async fn stop_all(&self) {
        for p in self.start_order().into_iter().rev() {
            if !p.manifest.has(Hook::Stop) {
                continue;
            }
            match p.hook(Hook::Stop, Bytes::new()).await {
                Ok(_) => tracing::debug!(plugin = %p.name(), "stopped"),
                Err(e) => tracing::error!(plugin = %p.name(), error = %e.message, "stop failed"),
            }
        }
    }
}
