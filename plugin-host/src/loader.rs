//! Opening a plugin library and checking it, layer by layer, before anything runs.
//!
//! Order of checks (each failure is a [`LoadError`] naming the check):
//! 0. (the daemon, [`open_trusted`]) the file and its directory are trusted: owned by root
//!    or by the user the daemon runs as, not writable by group or others, and the file is
//!    a regular file, not a symlink (like sshd's `StrictModes`). The checks are made on the
//!    opened descriptors and the library is loaded through that same descriptor, so the
//!    file cannot be swapped between the check and the load;
//! 1. the file opens as a shared library;
//! 2. it exports the plugin-api version symbol, and that version is compatible
//!    (same major, equal or lower minor);
//! 3. it carries an abi_stable header whose root-module layout fits ours (the same, or
//!    that of an older minor version: see `plugin_api::abi::check_layout`);
//! 4. its manifest parses and validates;
//! 5. (later, [`PluginLibrary::instantiate`]) its constructor succeeds and does not panic.
//!
//! Libraries are never unloaded: a loaded library is leaked on purpose.
#![allow(unsafe_code)] // audited: dlopen of a checked library and its version symbol, each block with a SAFETY comment

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::raw::c_char;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use plugin_api::abi::{HostHandle, PluginBox, PluginModuleRef};
use plugin_api::version::{check_compatible, VERSION_SYMBOL};
use plugin_api::Manifest;

use crate::sys;

/// Why a plugin was not loaded. `Display` is short: the check, then expected/found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a loadable shared library: {0}")]
    NotALibrary(String),
    #[error("not an incus-osd plugin: the library exports no `{VERSION_SYMBOL}` symbol")]
    NoVersionSymbol,
    #[error("{0}")]
    Version(String),
    #[error("not an abi_stable plugin: {0}")]
    NotAbiStable(String),
    #[error("root module layout mismatch: {0}")]
    Layout(String),
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("constructor failed: {0}")]
    Constructor(String),
    #[error("untrusted: {0}")]
    Untrusted(String),
    #[error("plugin '{name}' in {refused} is not loaded: a plugin of that name was already loaded from {loaded} (the first plugin directory wins; within a directory, the first file by name)")]
    Duplicate {
        name: String,
        loaded: String,
        refused: String,
    },
    #[error("{0}")]
    Other(String),
}

impl LoadError {
    /// A stable short name of the check that failed (used by the API and the tests).
    pub fn check(&self) -> &'static str {
        match self {
            LoadError::Untrusted(_) => "trust",
            LoadError::NotALibrary(_) => "open",
            LoadError::NoVersionSymbol => "version-symbol",
            LoadError::Version(_) => "api-version",
            LoadError::NotAbiStable(_) => "abi-header",
            LoadError::Layout(_) => "layout",
            LoadError::Manifest(_) => "manifest",
            LoadError::Constructor(_) => "constructor",
            LoadError::Duplicate { .. } => "duplicate-name",
            LoadError::Other(_) => "other",
        }
    }
}

/// Shortens abi_stable's layout report (a dump of both type layouts, often over a hundred
/// lines) to what differs: each `Error:<what>` with the `Expected:` (the plugin's) and
/// `Found:` (the host's) values that follow it, e.g.
/// `mismatched package: plugin has x, host has incus-osd-plugin-api`.
fn summarize_layout_error(full: &str) -> String {
    let lines: Vec<&str> = full.lines().map(str::trim).collect();
    let value_after = |i: usize| {
        lines[i + 1..]
            .iter()
            .find(|l| !l.is_empty())
            .copied()
            .unwrap_or("?")
    };
    let mut parts: Vec<String> = vec![];
    let mut i = 0;
    while i < lines.len() {
        if let Some(what) = lines[i].strip_prefix("Error:") {
            let mut part = what.trim().to_string();
            let mut j = i + 1;
            while j < lines.len() && !lines[j].starts_with("Error:") {
                if lines[j] == "Expected:" {
                    part.push_str(&format!(": plugin has {}", value_after(j)));
                } else if lines[j] == "Found:" {
                    part.push_str(&format!(", host has {}", value_after(j)));
                }
                j += 1;
            }
            if !parts.contains(&part) {
                parts.push(part);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    let mut out = if parts.is_empty() {
        lines
            .iter()
            .find(|l| !l.is_empty())
            .copied()
            .unwrap_or("")
            .to_string()
    } else {
        parts.join("; ")
    };
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// A plugin library that passed every static check.
pub struct PluginLibrary {
    pub path: PathBuf,
    pub manifest: Manifest,
    module: PluginModuleRef,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// A library that passed every static check: one plugin, or a bundle of several (see
/// `plugin_api::export_bundle!`).
#[derive(Debug)]
pub struct Library {
    pub path: PathBuf,
    /// Its plugins, in the library's order.
    pub plugins: Vec<PluginLibrary>,
    /// For a bundle, the crates whose plugins it carries (their own libraries,
    /// `lib<crate>.so`, are skipped in a directory holding it); empty for one plugin.
    pub bundled: Vec<String>,
}

impl Library {
    /// The one plugin of a library that is not a bundle.
    pub fn single(self) -> Result<PluginLibrary, LoadError> {
        if !self.bundled.is_empty() {
            return Err(LoadError::Other(format!(
                "{} is a bundle of {} plugins ({}); load one plugin's own library",
                self.path.display(),
                self.plugins.len(),
                self.bundled.join(", ")
            )));
        }
        self.plugins
            .into_iter()
            .next()
            .ok_or_else(|| LoadError::Manifest("the library carries no plugin".to_string()))
    }
}

/// Opens and checks the library of one plugin (steps 1 to 4), without the trust checks (the
/// harness and tests load what the developer just built). A bundle is refused.
pub fn open(path: &Path) -> Result<PluginLibrary, LoadError> {
    open_library(path)?.single()
}

/// Opens and checks a library, one plugin or a bundle, without the trust checks.
pub fn open_library(path: &Path) -> Result<Library, LoadError> {
    check(dlopen(path, path)?, path)
}

/// Opens and checks the library of one plugin as the daemon does: the trust checks (step
/// 0) on the opened file and directory, then steps 1 to 4 on that same file.
pub fn open_trusted(path: &Path) -> Result<PluginLibrary, LoadError> {
    open_library_trusted(path)?.single()
}

/// [`open_trusted`] for a library of one plugin or a bundle.
pub fn open_library_trusted(path: &Path) -> Result<Library, LoadError> {
    let (fd, _) = open_trusted_file(path)?;
    // Load the very file that was checked, through its descriptor.
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let raw = dlopen(&by_fd, path)?;
    // The loader knows the library by that name for as long as it stays loaded (forever):
    // keep the descriptor open so the name is never reused for another file.
    std::mem::forget(fd);
    check(raw, path)
}

/// Opens a library the daemon opened and checked before, as [`open_library_trusted`] does,
/// except that when the opened file's identity is `known` (recorded once every check
/// passed, by this same build of the daemon) abi_stable's layout check, the slowest step,
/// is not run again: the same bytes were checked against the same host. Every other check
/// runs; a file with another identity gets them all. (A library already open, a bundle
/// some of whose plugins were opened before, is the same library again: the dynamic
/// loader knows the file.)
pub fn open_trusted_known(path: &Path, known: FileIdentity) -> Result<Library, LoadError> {
    let (fd, st) = open_trusted_file(path)?;
    let unchanged = FileIdentity::of(&st) == known;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let raw = dlopen(&by_fd, path)?;
    std::mem::forget(fd);
    check_with(raw, path, !unchanged)
}

/// How many times the layout check ran in this process (for tests of
/// [`open_trusted_known`]).
pub fn layout_checks_run() -> u64 {
    LAYOUT_CHECKS.load(std::sync::atomic::Ordering::Relaxed)
}

static LAYOUT_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The identity of a file as `fstat` gives it: a file replaced, rewritten or touched gets
/// another one (the daemon's manifest cache keys on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileIdentity {
    // The field types of `stat` differ between targets.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &libc::stat) -> FileIdentity {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        FileIdentity {
            dev: st.st_dev as u64,
            inode: st.st_ino as u64,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        }
    }
}

/// The trust checks of [`open_trusted`] (step 0, the directory and the file) without
/// opening the library; returns the file's identity.
pub fn check_trusted(path: &Path) -> Result<FileIdentity, LoadError> {
    let (_, st) = open_trusted_file(path)?;
    Ok(FileIdentity::of(&st))
}

/// Opens `path` for reading after the trust checks on its directory and on the opened file.
fn open_trusted_file(path: &Path) -> Result<(std::os::fd::OwnedFd, libc::stat), LoadError> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => {
            return Err(LoadError::NotALibrary(format!(
                "{}: not a file path",
                path.display()
            )))
        }
    };
    let dirfd = open_trusted_dir(dir)?;
    let fd = match sys::openat(dirfd.as_fd(), name, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(LoadError::Untrusted(format!(
                "{} is a symbolic link; install the library file itself",
                path.display()
            )))
        }
        Err(e) => return Err(not_opened(path, e)),
    };
    let st = sys::fstat(fd.as_fd()).map_err(|e| not_opened(path, e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(LoadError::Untrusted(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    check_trust(&st, "plugin library", path)?;
    Ok((fd, st))
}

fn not_opened(path: &Path, e: std::io::Error) -> LoadError {
    LoadError::NotALibrary(format!("cannot open {}: {e}", path.display()))
}

/// Opens a plugin directory and checks it is trusted (step 0 for the directory).
fn open_trusted_dir(dir: &Path) -> Result<std::os::fd::OwnedFd, LoadError> {
    let fd = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| not_opened(dir, e))?;
    let st = sys::fstat(fd.as_fd()).map_err(|e| not_opened(dir, e))?;
    check_trust(&st, "plugin directory", dir)?;
    Ok(fd)
}

/// The trust check of a plugin directory alone, so that a refused directory is reported
/// once rather than once per library in it ([`open_trusted`] checks it again).
pub fn check_dir(dir: &Path) -> Result<(), LoadError> {
    open_trusted_dir(dir).map(drop)
}

/// The trust rule for a plugin file or directory (see the module docs): owner root or the
/// daemon's own user, no write permission for group or others.
fn check_trust(st: &libc::stat, what: &str, path: &Path) -> Result<(), LoadError> {
    let me = sys::euid();
    let rule = if me == 0 {
        "plugin libraries and their directory must be owned by root and not writable by group or others".to_string()
    } else {
        format!("plugin libraries and their directory must be owned by root or uid {me} (the daemon's user) and not writable by group or others")
    };
    if st.st_uid != 0 && st.st_uid != me {
        return Err(LoadError::Untrusted(format!(
            "{what} {} is owned by uid {}; {rule}",
            path.display(),
            st.st_uid
        )));
    }
    let writable = match (st.st_mode & 0o020 != 0, st.st_mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        (false, true) => "others",
        (false, false) => return Ok(()),
    };
    Err(LoadError::Untrusted(format!(
        "{what} {} is writable by {writable} (mode {:04o}); {rule}",
        path.display(),
        st.st_mode & 0o7777
    )))
}

/// Step 1: `dlopen(dl_path)`; errors name `path`. The library is never unloaded.
fn dlopen(dl_path: &Path, path: &Path) -> Result<&'static RawLibrary, LoadError> {
    let raw = RawLibrary::load_at(dl_path).map_err(|e| {
        let msg = match e {
            LibraryError::OpenError { err, .. } => err.to_string(),
            other => other.to_string(),
        };
        let msg = msg.replace(&*dl_path.to_string_lossy(), &path.to_string_lossy());
        LoadError::NotALibrary(msg)
    })?;
    // Never unloaded: function pointers and statics of the library stay valid forever.
    Ok(Box::leak(Box::new(raw)))
}

/// Steps 2 to 4 on a loaded library.
fn check(raw: &'static RawLibrary, path: &Path) -> Result<Library, LoadError> {
    check_with(raw, path, true)
}

/// Steps 2 to 4, the layout check only when `layout_check` (see [`open_trusted_known`]).
fn check_with(
    raw: &'static RawLibrary,
    path: &Path,
    layout_check: bool,
) -> Result<Library, LoadError> {
    // SAFETY: the symbol is declared by the SDK as `extern "C" fn() -> *const c_char`
    // returning a NUL-terminated static string; a foreign library exporting the same name
    // with another type is outside what we can defend against.
    let declared = unsafe {
        let f = raw
            .get::<extern "C" fn() -> *const c_char>(VERSION_SYMBOL.as_bytes())
            .map_err(|_| LoadError::NoVersionSymbol)?;
        let p = f();
        if p.is_null() {
            return Err(LoadError::Version(
                "the plugin-api version symbol returned nothing".into(),
            ));
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    check_compatible(plugin_api::API_VERSION, &declared)
        .map_err(|e| LoadError::Version(e.to_string()))?;

    // SAFETY: the abi_stable header symbol, if present, was exported by
    // `export_root_module` (through the SDK's export macros); the library stays loaded.
    let header = unsafe { lib_header_from_raw_library(raw) }.map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => {
            LoadError::NotAbiStable("the library exports no abi_stable root module".to_string())
        }
        other => LoadError::NotAbiStable(first_line(&other.to_string())),
    })?;
    // abi_stable's own `init_root_module` would check the layout with the host as the side
    // that may be shorter, refusing every plugin of an older minor version once the
    // contract grew; `check_root_module` checks it the other way round (see there).
    let layout = header.layout().ok_or_else(|| {
        LoadError::NotAbiStable("the root module carries no layout to check".to_string())
    })?;
    if layout_check {
        LAYOUT_CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        plugin_api::abi::check_root_module(layout)
            .map_err(|report| LoadError::Layout(summarize_layout_error(&report)))?;
    } else {
        tracing::debug!(path = %path.display(), "layout check not repeated: the library is unchanged since it passed under this daemon build");
    }
    // SAFETY: the root module's layout was checked just above, or (see
    // `open_trusted_known`) for this very file by this very build of the daemon.
    let module = unsafe { header.init_root_module_with_unchecked_layout::<PluginModuleRef>() }
        .map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber {
                expected_version,
                actual_version,
                ..
            } => LoadError::Version(format!(
                "abi_stable module version mismatch: expected {expected_version}, found {actual_version}"
            )),
            other => LoadError::NotAbiStable(first_line(&other.to_string())),
        })?;

    // A bundle (since 1.4) lists its plugins' modules; their layout is the root module's,
    // checked above.
    let modules = module.plugins().map(|f| f().into_vec()).unwrap_or_default();
    if modules.is_empty() {
        let plugin = plugin_of(module, path, &declared)?;
        // A bundle whose link let one of its plugins' exports win over its own: it would
        // pass for that one plugin, and every other would be missing without a word.
        let bundle_named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_bundle_file_name);
        if bundle_named {
            return Err(LoadError::Manifest(format!(
                "named as a bundle, but its root module is the one plugin '{}': a bundle must \
                 be linked with -Wl,--allow-multiple-definition so that its own exports win",
                plugin.manifest.name
            )));
        }
        return Ok(Library {
            path: path.to_path_buf(),
            plugins: vec![plugin],
            bundled: vec![],
        });
    }
    let json = (module.manifest())();
    let bundle: plugin_api::abi::BundleManifest = serde_json::from_str(json.as_str())
        .map_err(|e| LoadError::Manifest(format!("a bundle's own manifest: {e}")))?;
    if bundle.bundle.len() != modules.len() {
        return Err(LoadError::Manifest(format!(
            "the bundle names {} crates but carries {} plugins",
            bundle.bundle.len(),
            modules.len()
        )));
    }
    let plugins = modules
        .into_iter()
        .map(|m| plugin_of(m, path, &declared))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Library {
        path: path.to_path_buf(),
        plugins,
        bundled: bundle.bundle,
    })
}

/// Step 4 for one plugin's module: its manifest parses, validates, and names the version
/// the library declares.
fn plugin_of(
    module: PluginModuleRef,
    path: &Path,
    declared: &str,
) -> Result<PluginLibrary, LoadError> {
    let json = (module.manifest())();
    let manifest =
        Manifest::parse(json.as_str()).map_err(|e| LoadError::Manifest(e.to_string()))?;
    if manifest.api_version != declared {
        return Err(LoadError::Manifest(format!(
            "manifest says plugin-api {} but the library declares {declared}",
            manifest.api_version
        )));
    }
    Ok(PluginLibrary {
        path: path.to_path_buf(),
        manifest,
        module,
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

impl PluginLibrary {
    /// Runs the plugin's constructor (step 5), handing it its host capabilities.
    pub fn instantiate(&self, host: HostHandle) -> Result<PluginBox, LoadError> {
        (self.module.instantiate())(host)
            .into_result()
            .map_err(|e| LoadError::Constructor(e.message.into_string()))
    }
}

/// Lists the plugin files of a directory: bundles (`libincus_osd_bundle_*.so`) first, then
/// plugin libraries (`libincus_osd_plugin_*.so`), each sorted by name. Other files are
/// ignored. A missing directory lists nothing.
pub fn scan_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = vec![];
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if (is_plugin_file_name(name) || is_bundle_file_name(name)) && path.is_file() {
            out.push(path);
        }
    }
    let bundle_last = |p: &PathBuf| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        !is_bundle_file_name(name)
    };
    out.sort_by(|a, b| (bundle_last(a), a).cmp(&(bundle_last(b), b)));
    Ok(out)
}

/// Bundles of plugins are named `libincus_osd_bundle_<anything>.so`.
pub fn is_bundle_file_name(name: &str) -> bool {
    named(name, BUNDLE_FILE_PREFIX)
}

/// `<prefix><something>.so`.
fn named(name: &str, prefix: &str) -> bool {
    name.starts_with(prefix) && name.ends_with(".so") && name.len() > prefix.len() + 3
}

/// The file-name prefix of bundles.
pub const BUNDLE_FILE_PREFIX: &str = "libincus_osd_bundle_";

/// The crate a library file was built from (`libfoo_bar.so` is crate `foo_bar`), as a
/// bundle names the crates it carries.
pub fn crate_of_file(name: &str) -> Option<&str> {
    name.strip_prefix("lib")?.strip_suffix(".so")
}

/// Plugin libraries are named `libincus_osd_plugin_<anything>.so`.
pub fn is_plugin_file_name(name: &str) -> bool {
    named(name, PLUGIN_FILE_PREFIX)
}

/// The file-name prefix of plugin libraries.
pub const PLUGIN_FILE_PREFIX: &str = "libincus_osd_plugin_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_file_names() {
        assert!(is_plugin_file_name("libincus_osd_plugin_iscsi.so"));
        assert!(!is_plugin_file_name("libincus_osd_plugin_.so"));
        assert!(!is_plugin_file_name("libfixture_faulty.so"));
        assert!(!is_plugin_file_name("libincus_osd_plugin_iscsi.rlib"));
    }

    #[test]
    fn bundles_are_listed_first_and_name_their_crates_by_file() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "libincus_osd_plugin_a.so",
            "libincus_osd_plugin_z.so",
            "libincus_osd_bundle_z.so",
            "libincus_osd_bundle_b.so",
            "libincus_osd_bundle_.so",
            "libother.so",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let names: Vec<String> = scan_dir(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "libincus_osd_bundle_b.so",
                "libincus_osd_bundle_z.so",
                "libincus_osd_plugin_a.so",
                "libincus_osd_plugin_z.so"
            ]
        );
        assert_eq!(
            crate_of_file("libincus_osd_plugin_iscsi.so"),
            Some("incus_osd_plugin_iscsi")
        );
        assert_eq!(crate_of_file("incus_osd_plugin_iscsi.so"), None);
    }

    #[test]
    fn garbage_is_not_a_library() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libincus_osd_plugin_garbage.so");
        std::fs::write(&p, b"this is not an ELF file").unwrap();
        let err = open(&p).unwrap_err();
        assert_eq!(err.check(), "open", "{err}");
    }

    /// A plugin directory (0755) holding one garbage "library" (0644).
    fn plugin_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let lib = dir.join("libincus_osd_plugin_x.so");
        std::fs::write(&lib, b"not ELF").unwrap();
        chmod(&lib, 0o644);
        (top, dir, lib)
    }

    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[track_caller]
    fn untrusted(path: &Path) -> String {
        match open_trusted(path) {
            Err(e @ LoadError::Untrusted(_)) => {
                assert_eq!(e.check(), "trust");
                e.to_string()
            }
            other => panic!("expected a trust refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_trusted_file_gets_to_the_library_checks_and_errors_name_its_path() {
        let (_top, _dir, lib) = plugin_dir();
        let err = open_trusted(&lib).unwrap_err();
        assert_eq!(err.check(), "open", "{err}");
        // Loaded through /proc/self/fd, reported under its real name.
        let msg = err.to_string();
        assert!(msg.contains(&*lib.to_string_lossy()), "{msg}");
        assert!(!msg.contains("/proc/self/fd"), "{msg}");
    }

    #[test]
    fn group_or_world_writable_files_and_directories_are_refused() {
        let (_top, dir, lib) = plugin_dir();
        chmod(&lib, 0o664);
        let msg = untrusted(&lib);
        assert!(
            msg.contains("plugin library") && msg.contains("writable by group (mode 0664)"),
            "{msg}"
        );
        chmod(&lib, 0o646);
        assert!(untrusted(&lib).contains("writable by others (mode 0646)"));
        chmod(&lib, 0o755);
        assert_eq!(open_trusted(&lib).unwrap_err().check(), "open");
        for mode in [0o777, 0o1777, 0o775] {
            chmod(&dir, mode);
            let msg = untrusted(&lib);
            assert!(msg.contains("plugin directory"), "{msg}");
            assert!(msg.contains(&format!("(mode {mode:04o})")), "{msg}");
            assert_eq!(check_dir(&dir).unwrap_err().check(), "trust");
        }
        chmod(&dir, 0o755);
        check_dir(&dir).unwrap();
    }

    #[test]
    fn symlinks_and_non_files_are_refused() {
        let (top, dir, _lib) = plugin_dir();
        // A link to a library that would pass every check itself.
        let elsewhere = top.path().join("libincus_osd_plugin_y.so");
        std::fs::write(&elsewhere, b"not ELF").unwrap();
        chmod(&elsewhere, 0o644);
        let link = dir.join("libincus_osd_plugin_y.so");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(untrusted(&link).contains("is a symbolic link"));
        assert_eq!(open_trusted(&elsewhere).unwrap_err().check(), "open");
        let sub = dir.join("libincus_osd_plugin_z.so");
        std::fs::create_dir(&sub).unwrap();
        assert!(untrusted(&sub).contains("not a regular file"));
    }

    #[test]
    fn files_of_another_user_are_refused() {
        let (_top, dir, lib) = plugin_dir();
        let other = if sys::euid() == 4242 { 4243 } else { 4242 };
        if std::os::unix::fs::chown(&lib, Some(other), None).is_err() {
            // Only root can give a file away; say so rather than pass silently.
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let msg = untrusted(&lib);
        assert!(msg.contains(&format!("is owned by uid {other}")), "{msg}");
        std::os::unix::fs::chown(&lib, Some(sys::euid()), None).unwrap();
        std::os::unix::fs::chown(&dir, Some(other), None).unwrap();
        assert!(untrusted(&lib).contains("plugin directory"));
    }

    #[test]
    fn layout_report_is_shortened_to_what_differs() {
        let dump = "package:'x' version:'0.1.0'\n  field: a\n".repeat(60);
        let report = format!(
            "{dump}Error:mismatched package\nExpected:\n    fixture-x\nFound:\n    incus-osd-plugin-api\n"
        );
        assert_eq!(
            summarize_layout_error(&report),
            "mismatched package: plugin has fixture-x, host has incus-osd-plugin-api"
        );
        let twice =
            format!("{report}{report}Error:mismatched field name\nExpected:\n a\nFound:\n b\n");
        assert_eq!(
            summarize_layout_error(&twice),
            "mismatched package: plugin has fixture-x, host has incus-osd-plugin-api; mismatched field name: plugin has a, host has b"
        );
    }
}
