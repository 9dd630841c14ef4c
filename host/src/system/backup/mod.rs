//! System backup and restore (`POST /1.0/system/:backup` and `:restore`): the archive
//! format and its checks here, as plain functions over directories and readers; the work
//! that involves the running daemon (applications, keys, host name, the swap and the
//! reboot) in [`apply`].
//!
//! The archive is upstream's: a gzip tar with one entry per regular file directly under
//! the state directory, named by its base name, mode 0600, no directories. This daemon adds
//! one entry per installed application that can back itself up,
//! `application.<name>.tar.gz`, holding that application's own archive (see
//! `docs/backup.md`).

pub mod apply;
pub mod stage;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use stage::{stage, Limits, Skip, StageError, Staged};

/// Files of the state directory that are the daemon's runtime, not state: never backed
/// up, never restored.
pub const RUNTIME_FILES: &[&str] = &[crate::plugins::cache::FILE];

/// Directories of the state directory that are the daemon's runtime (upload spools, the
/// plugins' start markers, a Secure Boot key update being applied): left out of a backup.
/// Any other directory refuses the backup.
pub const RUNTIME_DIRS: &[&str] = &["uploads", "starting", "secureboot-updates"];

/// The prefix and suffix of an application's entry.
pub const APP_PREFIX: &str = "application.";
pub const APP_SUFFIX: &str = ".tar.gz";

/// Upstream's text for a directory in the state directory.
pub const HAS_DIRECTORIES: &str = "backup cannot contain directories";
/// Upstream's text for an entry that is not a regular file.
pub const NOT_REGULAR: &str = "backup cannot contain anything other than regular files";

/// The application an entry name carries the archive of, if it is one.
pub fn app_entry(name: &str) -> Option<&str> {
    name.strip_prefix(APP_PREFIX)
        .and_then(|n| n.strip_suffix(APP_SUFFIX))
        .filter(|n| !n.is_empty())
}

/// The entry name of application `name`'s archive.
pub fn app_entry_name(name: &str) -> String {
    format!("{APP_PREFIX}{name}{APP_SUFFIX}")
}

/// Whether `name` is a temporary file of an interrupted save (the current pattern, or the
/// `.state.json.tmp.<pid>` files of older daemons).
pub fn is_temp(name: &str) -> bool {
    name.ends_with(plugin_host::files::TEMP_SUFFIX)
        || name
            .strip_prefix(".state.json.tmp.")
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a name found in the state directory (or in an archive) is the daemon's runtime
/// rather than state.
pub fn is_runtime(name: &str) -> bool {
    RUNTIME_FILES.contains(&name) || RUNTIME_DIRS.contains(&name) || is_temp(name)
}

/// One file of the state directory a backup carries.
#[derive(Debug)]
pub struct StateFile {
    pub name: String,
    pub file: File,
    pub size: u64,
}

/// The regular files directly under `dir`, sorted by name, opened (not following links):
/// the runtime files left out; a directory that is not a runtime one refuses the backup
/// with upstream's text, and so does anything that is neither a file nor a directory.
pub fn state_files(dir: &Path) -> Result<Vec<StateFile>, String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    names.sort();
    let mut out = vec![];
    for name in names {
        let Some(text) = name.to_str() else {
            return Err(format!(
                "the state directory holds a file whose name is not UTF-8: {name:?}"
            ));
        };
        if is_runtime(text) {
            continue;
        }
        let path = dir.join(&name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if meta.is_dir() {
            return Err(HAS_DIRECTORIES.into());
        }
        if !meta.is_file() {
            return Err(NOT_REGULAR.into());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let size = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        out.push(StateFile {
            name: text.to_string(),
            file,
            size,
        });
    }
    Ok(out)
}

/// One flat entry: name, mode 0600, size, no owner, no time (as upstream writes them).
fn header(name: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_mode(0o600);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

/// Appends `size` bytes of `data` as entry `name`; a file that shrank on the way is an
/// error (the archive would be corrupt), one that grew is cut at `size`.
fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    data: impl Read,
) -> Result<(), String> {
    let h = header(name, size).map_err(|e| format!("{name}: {e}"))?;
    let mut data = data.take(size);
    tar.append(&h, &mut data)
        .map_err(|e| format!("cannot write {name} into the backup: {e}"))?;
    if data.limit() > 0 {
        return Err(format!("{name} shrank while it was backed up"));
    }
    Ok(())
}

/// Writes the backup: the state files, then each application's archive (a file, rewound,
/// and its size), as a gzip tar streamed to `out`.
pub fn write_backup(
    files: Vec<StateFile>,
    apps: Vec<(String, File, u64)>,
    out: impl Write,
) -> Result<(), String> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for f in files {
        append(&mut tar, &f.name, f.size, f.file)?;
    }
    for (name, file, size) in apps {
        append(&mut tar, &app_entry_name(&name), size, file)?;
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map(drop)
        .map_err(|e| format!("cannot finish the backup: {e}"))
}

/// An anonymous file (0600) in `dir`, gone when dropped. `dir` must exist: unlike the
/// uploads helper, its mode is not touched (it may be `/var/lib`).
pub fn temp_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let file = tempfile::tempfile_in(dir)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests;
