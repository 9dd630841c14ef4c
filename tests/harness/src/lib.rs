//! The per-plugin test harness: loads a built plugin library exactly as the daemon does
//! (`plugin_host::loader`) and hands it a [`HarnessHost`] that records every effect
//! (logs, units, files under a temporary root, state saves, commands) for the test to
//! inspect. [`run_generic_checks`] holds the conformance checks every plugin must pass;
//! the `incus-osd-plugin-check` binary runs them from the command line.

use std::path::{Path, PathBuf};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr};
use anyhow::Context;
use plugin_api::abi::{ByteSink, ByteSink_TO, ByteSource, ByteSource_TO, PluginBox};
use plugin_api::{Hook, Manifest};
use plugin_host::app_backup;
use plugin_host::loader::{self, PluginLibrary};
use serde_json::Value;

mod checks;
mod host;
mod strings;
pub mod testserver;

pub use checks::{assert_conformance, run_generic_checks, CheckOutcome, CheckStatus, CHECKS};
pub use host::{
    argv, CommandCall, Event, Failure, FileEffect, HarnessHost, LogLine, Reply, UnitCall,
};
pub use plugin_api::abi::{LogLevel, PluginError, UnitOp};
pub use strings::{control_character_cases, string_pointers, ControlCase};

/// A loaded plugin instance with its own [`HarnessHost`].
pub struct Harness {
    library: PluginLibrary,
    host: HarnessHost,
    plugin: PluginBox,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Opens the library with the daemon's loader and instantiates a new plugin instance
    /// with a fresh host. Loading the same path again gives another, independent instance.
    /// A failed load's error chain ends with the loader's [`loader::LoadError`].
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Harness> {
        Self::load_with(path, |_| {})
    }

    /// Like [`Harness::load`], letting `setup` prepare the host (files, state, scripted
    /// commands) before the plugin's constructor runs.
    pub fn load_with(
        path: impl AsRef<Path>,
        setup: impl FnOnce(&HarnessHost),
    ) -> anyhow::Result<Harness> {
        // A bare file name would make dlopen search the library path, not the directory.
        let path = std::path::absolute(path.as_ref())
            .with_context(|| format!("bad path {}", path.as_ref().display()))?;
        let path = path.as_path();
        let library =
            loader::open(path).with_context(|| format!("cannot load {}", path.display()))?;
        let host = HarnessHost::new(&library.manifest)
            .context("cannot create the harness's temporary root")?;
        setup(&host);
        let plugin = library
            .instantiate(host.handle())
            .with_context(|| format!("cannot instantiate {}", path.display()))?;
        Ok(Harness {
            library,
            host,
            plugin,
        })
    }

    /// The built plugin library `lib<lib_stem>.so` ([`built_plugin`]), loaded with a fresh
    /// host. Panics with the loader's reason when it does not load: what a plugin's own
    /// tests start from.
    #[track_caller]
    pub fn load_built(lib_stem: &str) -> Harness {
        Harness::load(built_plugin(lib_stem))
            .unwrap_or_else(|e| panic!("the plugin {lib_stem} does not load: {e:#}"))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.library.manifest
    }

    pub fn path(&self) -> &Path {
        &self.library.path
    }

    pub fn host(&self) -> &HarnessHost {
        &self.host
    }

    /// Calls `invoke(op, input)` and returns the output bytes as they are.
    pub fn invoke_raw(&self, op: &str, input: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.plugin
            .invoke(RStr::from_str(op), RSlice::from_slice(input))
            .into_result()
            .map(Into::into)
    }

    /// Calls `invoke(op, input)`; the output must be JSON (else a 500 naming the problem).
    /// Object keys come back sorted: use [`Harness::invoke_raw`] to check the exact bytes.
    pub fn invoke(&self, op: &str, input: &[u8]) -> Result<Value, PluginError> {
        let out = self.invoke_raw(op, input)?;
        serde_json::from_slice(&out).map_err(|e| {
            PluginError::new(
                500,
                format!("harness: the plugin's {op} output is not JSON: {e}"),
            )
        })
    }

    pub fn get(&self) -> Result<Value, PluginError> {
        self.invoke(Hook::Get.op(), b"")
    }

    /// GET's exact output text (field order as the plugin wrote it).
    pub fn get_raw(&self) -> Result<String, PluginError> {
        let out = self.invoke_raw(Hook::Get.op(), b"")?;
        String::from_utf8(out)
            .map_err(|e| PluginError::new(500, format!("harness: GET output is not UTF-8: {e}")))
    }

    pub fn put(&self, body: &Value) -> Result<Value, PluginError> {
        self.put_raw(body.to_string().as_bytes())
    }

    pub fn put_raw(&self, body: &[u8]) -> Result<Value, PluginError> {
        self.invoke(Hook::Put.op(), body)
    }

    /// `PUT` of `config` as a client sends it: `{"state": {}, "config": config}`.
    pub fn put_config(&self, config: &Value) -> Result<Value, PluginError> {
        self.put(&serde_json::json!({"state": {}, "config": config}))
    }

    /// [`Harness::put_config`], which must succeed, then [`HarnessHost::clear_effects`]: the
    /// service is set up as `config` says and the test looks only at what comes next.
    #[track_caller]
    pub fn apply_config(&self, config: &Value) {
        if let Err(e) = self.put_config(config) {
            panic!("PUT of {config} failed: {} {}", e.status, e.message);
        }
        self.host.clear_effects();
    }

    /// PUTs `config` ([`Harness::put_config`]) and asserts it is refused as bad input, with
    /// nothing half-applied: a 400 with exactly `message`, no effect since the last
    /// [`HarnessHost::clear_effects`] ([`HarnessHost::assert_untouched`]) and the state
    /// document as it was before. Returns the error for further checks (that it quotes no
    /// secret, say).
    #[track_caller]
    pub fn assert_config_refused(&self, config: &Value, message: &str) -> PluginError {
        let before = self.host.state();
        let err = match self.put_config(config) {
            Ok(out) => panic!("PUT of {config} was accepted ({out}), expected a 400: {message}"),
            Err(e) => e,
        };
        assert_eq!(
            (err.status, err.message.as_str()),
            (400, message),
            "PUT of {config}"
        );
        self.host.assert_untouched(message);
        assert_eq!(
            self.host.state(),
            before,
            "{message}: the state document changed"
        );
        err
    }

    /// Daemon start (boot).
    pub fn start(&self) -> Result<Value, PluginError> {
        self.invoke(Hook::Start.op(), b"")
    }

    /// Daemon shutdown.
    pub fn stop(&self) -> Result<Value, PluginError> {
        self.invoke(Hook::Stop.op(), b"")
    }

    /// `POST /1.0/services/<name>/:reset` as the daemon answers it: a plugin whose manifest
    /// does not advertise `reset` is not called, the answer is 500
    /// [`plugin_api::sdk::RESET_NOT_SUPPORTED`] (upstream's text). Call
    /// [`Harness::invoke`] with `"reset"` to reach the plugin regardless.
    pub fn reset(&self) -> Result<Value, PluginError> {
        if !self.manifest().has(Hook::Reset) {
            return Err(PluginError::new(500, plugin_api::sdk::RESET_NOT_SUPPORTED));
        }
        self.invoke(Hook::Reset.op(), b"")
    }

    /// The [`plugin_api::application::AppContext`] the harness passes to the application
    /// hooks it calls itself: installed under the plugin's name, no image.
    pub fn app_context(&self) -> Vec<u8> {
        let ctx = plugin_api::application::AppContext {
            name: self.manifest().name.clone(),
            ..Default::default()
        };
        serde_json::to_vec(&ctx).expect("a context encodes")
    }

    /// `:factory-reset` as the daemon runs it (upstream's order): stop, the plugin's wipe,
    /// start, initialize, each as far as the manifest lists it. An application without a
    /// wipe hook answers 500 "not supported".
    pub fn factory_reset(&self) -> Result<(), PluginError> {
        if !self.manifest().has(Hook::Wipe) {
            if self.manifest().has(Hook::FactoryReset) {
                // A plugin built for a contract before 1.3 resets itself (the daemon does
                // the same).
                return self.invoke(Hook::FactoryReset.op(), b"").map(drop);
            }
            return Err(PluginError::new(500, plugin_api::sdk::NOT_SUPPORTED));
        }
        let ctx = self.app_context();
        for hook in [Hook::Stop, Hook::Wipe, Hook::Start, Hook::Initialize] {
            // A hook the manifest does not list is not called (the daemon does the same).
            if self.manifest().has(hook) {
                self.invoke(hook.op(), &ctx)?;
            }
        }
        Ok(())
    }

    /// Streams a backup with `options` (JSON, e.g. `{"complete": true}`) into memory, as
    /// the daemon makes it: of a declared backup (the manifest's `backup`) with the shared
    /// code ([`plugin_host::app_backup`], dry run first) from the host's root, else through
    /// the plugin's own stream.
    pub fn backup(&self, options: &Value) -> Result<Vec<u8>, PluginError> {
        self.backup_raw(options.to_string().as_bytes())
    }

    /// Like [`Harness::backup`] with raw option bytes.
    pub fn backup_raw(&self, options: &[u8]) -> Result<Vec<u8>, PluginError> {
        if let Some(spec) = &self.manifest().backup {
            #[derive(serde::Deserialize, Default)]
            struct Options {
                #[serde(default)]
                complete: bool,
            }
            let opts: Options = plugin_api::sdk::decode_or_default(options)?;
            let root = self.host.root();
            app_backup::check(root, spec, opts.complete)?;
            let mut out = Vec::new();
            app_backup::write(root, spec, opts.complete, &mut out)?;
            return Ok(out);
        }
        let mut sink = VecSink(Vec::new());
        self.plugin
            .backup(
                RSlice::from_slice(options),
                ByteSink_TO::from_ptr(&mut sink, TD_Opaque),
            )
            .into_result()?;
        Ok(sink.0)
    }

    /// Restores from an in-memory archive as the daemon does: a declared backup with the
    /// shared code (extracted beside the root, the spec's units stopped, swapped in,
    /// started again through this host's units), then the plugin's `restored` hook; else
    /// through the plugin's own stream.
    pub fn restore(&self, archive: &[u8]) -> Result<(), PluginError> {
        if let Some(spec) = &self.manifest().backup {
            let limits = plugin_api::sdk::archive::Limits::default();
            app_backup::prepare(self.host.root(), spec, archive, &limits)?.apply(&self.host)?;
            if self.manifest().has(Hook::Restored) {
                self.invoke(Hook::Restored.op(), &self.app_context())?;
            }
            return Ok(());
        }
        let mut source = SliceSource(archive);
        self.plugin
            .restore(ByteSource_TO::from_ptr(&mut source, TD_Opaque))
            .into_result()
    }
}

struct VecSink(Vec<u8>);

impl ByteSink for VecSink {
    fn write(&mut self, chunk: RSlice<'_, u8>) -> RResult<(), PluginError> {
        self.0.extend_from_slice(chunk.as_slice());
        RResult::ROk(())
    }
}

struct SliceSource<'a>(&'a [u8]);

impl ByteSource for SliceSource<'_> {
    fn read(&mut self, mut buf: RSliceMut<'_, u8>) -> RResult<usize, PluginError> {
        let n = buf.len().min(self.0.len());
        buf.as_mut_slice()[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        RResult::ROk(n)
    }
}

/// The target directory holding the running executable's artifacts: `target/<profile>`
/// (also for test binaries in `target/<profile>/deps`).
fn exe_artifact_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The path of the built plugin library `lib<lib_stem>.so` in this build's target
/// directory (`CARGO_TARGET_DIR` is honoured). Panics when it is not built, and when it is
/// older than one of its sources: `cargo test` does not rebuild the cdylibs the tests
/// load, so after an edit a test would otherwise run the old plugin.
pub fn built_plugin(lib_stem: &str) -> PathBuf {
    let path = find_built_plugin(lib_stem);
    if let Err(why) = check_fresh(&path, lib_stem) {
        panic!("{why}");
    }
    path
}

fn find_built_plugin(lib_stem: &str) -> PathBuf {
    let file = format!("lib{lib_stem}.so");
    let mut candidates = vec![];
    let exe_dir = exe_artifact_dir();
    if let Some(dir) = &exe_dir {
        candidates.push(dir.join(&file));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let target = PathBuf::from(target);
        let profile = exe_dir
            .as_deref()
            .and_then(Path::file_name)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("debug"));
        candidates.push(target.join(profile).join(&file));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            panic!(
                "plugin library {file} not built: run `cargo build --workspace` first (looked in: {})",
                looked.join(", ")
            )
        })
}

/// `Err` naming the sources changed since `lib` was built and the command that rebuilds
/// it. Goes by the dep-info file cargo writes next to the library (`lib<stem>.d`, the
/// workspace sources it was built from); without one there is nothing to compare.
fn check_fresh(lib: &Path, lib_stem: &str) -> Result<(), String> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(lib) else {
        return Ok(());
    };
    let Ok(dep_info) = std::fs::read_to_string(lib.with_extension("d")) else {
        return Ok(());
    };
    let sources = dep_info
        .lines()
        .next()
        .and_then(|l| l.split_once(": "))
        .map(|(_, deps)| split_dep_list(deps))
        .unwrap_or_default();
    let newer: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| modified(p).is_some_and(|t| t > built))
        .collect();
    if newer.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = newer
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    let more = if newer.len() > 3 { ", ..." } else { "" };
    let build = match package_of(lib_stem, &sources) {
        Some(package) => format!("cargo build -p {package}"),
        None => "cargo build --workspace".to_string(),
    };
    Err(format!(
        "plugin library {} is older than its sources ({}{more} changed since): `cargo test` \
         does not rebuild plugin libraries, run `{build}` first",
        lib.display(),
        shown.join(", ")
    ))
}

/// The paths of a dep-info line (`a b\ c` is `a` and `b c`).
fn split_dep_list(deps: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ' ' => out.extend((!cur.is_empty()).then(|| PathBuf::from(std::mem::take(&mut cur)))),
            c => cur.push(c),
        }
    }
    out.extend((!cur.is_empty()).then(|| PathBuf::from(cur)));
    out
}

/// The cargo package whose library is `lib_stem`, from the crate root among `sources`
/// (`<package>/src/lib.rs`) and its `Cargo.toml`.
fn package_of(lib_stem: &str, sources: &[PathBuf]) -> Option<String> {
    sources
        .iter()
        .filter(|p| p.ends_with("src/lib.rs"))
        .filter_map(|p| std::fs::read_to_string(p.parent()?.parent()?.join("Cargo.toml")).ok())
        .find(|toml| toml.contains(&format!("name = \"{lib_stem}\"")))
        .and_then(|toml| {
            toml.lines().find_map(|l| {
                l.strip_prefix("name = \"")?
                    .strip_suffix('"')
                    .map(str::to_string)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake build: `lib<stem>.so` with its dep-info, built from `pkg/src/lib.rs` and
    /// `pkg/src/a b.rs` of package `demo-pkg`; the library is `lib_age` old, the sources
    /// `src_age`.
    fn fake_build(lib_age: u64, src_age: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("pkg/src")).unwrap();
        std::fs::write(
            d.join("pkg/Cargo.toml"),
            "[package]\nname = \"demo-pkg\"\n\n[lib]\nname = \"demo\"\n",
        )
        .unwrap();
        let now = std::time::SystemTime::now();
        let age = |s| now - std::time::Duration::from_secs(s);
        for src in ["pkg/src/lib.rs", "pkg/src/a b.rs"] {
            let f = std::fs::File::create(d.join(src)).unwrap();
            f.set_modified(age(src_age)).unwrap();
        }
        let lib = d.join("libdemo.so");
        std::fs::File::create(&lib)
            .unwrap()
            .set_modified(age(lib_age))
            .unwrap();
        let esc = |p: PathBuf| p.display().to_string().replace(' ', "\\ ");
        std::fs::write(
            d.join("libdemo.d"),
            format!(
                "{}: {} {}\n\n",
                lib.display(),
                esc(d.join("pkg/src/lib.rs")),
                esc(d.join("pkg/src/a b.rs"))
            ),
        )
        .unwrap();
        (dir, lib)
    }

    #[test]
    fn a_library_older_than_its_sources_is_refused_with_the_build_command() {
        let (_dir, lib) = fake_build(100, 10);
        let err = check_fresh(&lib, "demo").unwrap_err();
        assert!(
            err.starts_with(&format!(
                "plugin library {} is older than its sources (",
                lib.display()
            )),
            "{err}"
        );
        assert!(err.contains("pkg/src/a b.rs"), "{err}");
        assert!(
            err.ends_with("`cargo test` does not rebuild plugin libraries, run `cargo build -p demo-pkg` first"),
            "{err}"
        );
    }

    #[test]
    fn a_library_newer_than_its_sources_or_without_dep_info_is_taken() {
        let (_dir, lib) = fake_build(10, 100);
        check_fresh(&lib, "demo").unwrap();
        let (_dir2, stale) = fake_build(100, 10);
        std::fs::remove_file(stale.with_extension("d")).unwrap();
        check_fresh(&stale, "demo").unwrap();
    }

    #[test]
    fn the_sink_collects_and_the_source_reads_in_chunks() {
        let mut sink = VecSink(Vec::new());
        {
            let mut to = ByteSink_TO::from_ptr(&mut sink, TD_Opaque);
            to.write(RSlice::from_slice(b"abc")).unwrap();
            to.write(RSlice::from_slice(b"de")).unwrap();
        }
        assert_eq!(sink.0, b"abcde");

        let data = b"0123456789";
        let mut source = SliceSource(data);
        let mut to = ByteSource_TO::from_ptr(&mut source, TD_Opaque);
        let mut buf = [0u8; 4];
        let mut got = vec![];
        loop {
            let n = to.read(RSliceMut::from_mut_slice(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
    }
}
