//! Opening a plugin library and checking it, layer by layer, before anything runs.
//!
//! Order of checks (each failure is a [`LoadError`] naming the check):
//! 1. the file opens as a shared library;
//! 2. it exports the plugin-api version symbol, and that version is compatible
//!    (same major, equal or lower minor);
//! 3. it carries an abi_stable header whose root-module layout fits ours (the same, or
//!    that of an older minor version: see `plugin_api::abi::check_layout`);
//! 4. its manifest parses and validates;
//! 5. (later, [`PluginLibrary::instantiate`]) its constructor succeeds and does not panic.
//!
//! Libraries are never unloaded: a loaded library is leaked on purpose.

use std::ffi::CStr;
use std::os::raw::c_char;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use plugin_api::abi::{HostHandle, PluginBox, PluginModuleRef};
use plugin_api::version::{check_compatible, VERSION_SYMBOL};
use plugin_api::Manifest;

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
    #[error("a plugin named '{name}' is already loaded from {other}")]
    Duplicate { name: String, other: String },
    #[error("{0}")]
    Other(String),
}

impl LoadError {
    /// A stable short name of the check that failed (used by the API and the tests).
    pub fn check(&self) -> &'static str {
        match self {
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

/// Opens and checks a plugin library (steps 1 to 4).
pub fn open(path: &Path) -> Result<PluginLibrary, LoadError> {
    let raw = RawLibrary::load_at(path).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary(err.to_string()),
        other => LoadError::NotALibrary(other.to_string()),
    })?;
    // Never unloaded: function pointers and statics of the library stay valid forever.
    let raw: &'static RawLibrary = Box::leak(Box::new(raw));

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
    plugin_api::abi::check_root_module(layout)
        .map_err(|report| LoadError::Layout(summarize_layout_error(&report)))?;
    // SAFETY: the root module's layout was checked just above.
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

/// Lists the plugin files of a directory: `libincus_osd_plugin_*.so`, sorted by name.
/// Other files are ignored. A missing directory lists nothing.
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
        if is_plugin_file_name(name) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Plugin libraries are named `libincus_osd_plugin_<anything>.so`.
pub fn is_plugin_file_name(name: &str) -> bool {
    name.starts_with(PLUGIN_FILE_PREFIX)
        && name.ends_with(".so")
        && name.len() > PLUGIN_FILE_PREFIX.len() + 3
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
    fn garbage_is_not_a_library() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libincus_osd_plugin_garbage.so");
        std::fs::write(&p, b"this is not an ELF file").unwrap();
        let err = open(&p).unwrap_err();
        assert_eq!(err.check(), "open", "{err}");
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
