//! Real `.journal` files from export-format entries, written by `systemd-journal-remote`.
//!
//! `systemd-journal-remote --output=<file>.journal --split-mode=none -` reads the
//! [journal export format](https://systemd.io/JOURNAL_EXPORT_FORMATS/) on stdin and keeps
//! each entry's `__REALTIME_TIMESTAMP`, `__MONOTONIC_TIMESTAMP` and `_BOOT_ID`, so a
//! fixture can hold several boots: `journalctl --file=<f> --list-boots` shows them and
//! `-b -1` selects the previous one.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::output_with_input;

/// The first wall-clock timestamp [`journal_from_text`] gives entries without one
/// (2023-11-14T22:13:20Z, in µs); each following entry gets one second more.
pub const DEFAULT_REALTIME_US: u64 = 1_700_000_000_000_000;
/// The `_BOOT_ID` of entries that name none.
pub const DEFAULT_BOOT_ID: &str = "00000000000000000000000000000b01";
/// The `_MACHINE_ID` of entries that name none.
pub const DEFAULT_MACHINE_ID: &str = "0000000000000000000000000000a001";
/// The `_HOSTNAME` of entries that name none.
pub const DEFAULT_HOSTNAME: &str = "incus-os-test";

/// One journal entry: ordered `(field, value)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalEntry {
    pub fields: Vec<(String, Vec<u8>)>,
}

impl JournalEntry {
    /// An entry with `MESSAGE=message`.
    pub fn new(message: impl Into<String>) -> JournalEntry {
        JournalEntry::default().field("MESSAGE", message.into())
    }

    /// Sets a field (replacing an earlier value of the same field).
    pub fn field(mut self, name: &str, value: impl Into<Vec<u8>>) -> JournalEntry {
        self.fields.retain(|(n, _)| n != name);
        self.fields.push((name.to_string(), value.into()));
        self
    }

    /// `_BOOT_ID` (32 hex digits).
    pub fn boot(self, boot_id: &str) -> JournalEntry {
        self.field("_BOOT_ID", boot_id)
    }

    /// `__REALTIME_TIMESTAMP`, µs since the epoch.
    pub fn realtime_us(self, us: u64) -> JournalEntry {
        self.field("__REALTIME_TIMESTAMP", us.to_string())
    }

    /// `__MONOTONIC_TIMESTAMP`, µs since its boot.
    pub fn monotonic_us(self, us: u64) -> JournalEntry {
        self.field("__MONOTONIC_TIMESTAMP", us.to_string())
    }

    /// `_SYSTEMD_UNIT`.
    pub fn unit(self, unit: &str) -> JournalEntry {
        self.field("_SYSTEMD_UNIT", unit)
    }

    /// `SYSLOG_IDENTIFIER`.
    pub fn identifier(self, id: &str) -> JournalEntry {
        self.field("SYSLOG_IDENTIFIER", id)
    }

    /// `PRIORITY` (0 emerg … 7 debug).
    pub fn priority(self, priority: u8) -> JournalEntry {
        self.field("PRIORITY", priority.to_string())
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Serialises entries in the export format (values with a newline, or not UTF-8, in its
/// binary form), filling in what an entry lacks: `__REALTIME_TIMESTAMP` (from
/// [`DEFAULT_REALTIME_US`], one second apart), `__MONOTONIC_TIMESTAMP` (one second apart
/// within each boot), `_BOOT_ID`, `_MACHINE_ID`, `_HOSTNAME`.
pub fn export_text(entries: &[JournalEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut per_boot: std::collections::HashMap<Vec<u8>, u64> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        let mut e = e.clone();
        if !e.has("_BOOT_ID") {
            e = e.boot(DEFAULT_BOOT_ID);
        }
        if !e.has("__REALTIME_TIMESTAMP") {
            e = e.realtime_us(DEFAULT_REALTIME_US + i as u64 * 1_000_000);
        }
        let boot = e.get("_BOOT_ID").unwrap_or_default().to_vec();
        let n = per_boot.entry(boot).or_insert(0);
        *n += 1;
        if !e.has("__MONOTONIC_TIMESTAMP") {
            e = e.monotonic_us(*n * 1_000_000);
        }
        if !e.has("_MACHINE_ID") {
            e = e.field("_MACHINE_ID", DEFAULT_MACHINE_ID);
        }
        if !e.has("_HOSTNAME") {
            e = e.field("_HOSTNAME", DEFAULT_HOSTNAME);
        }
        for (name, value) in &e.fields {
            let text = std::str::from_utf8(value).is_ok_and(|s| !s.contains('\n'));
            out.extend_from_slice(name.as_bytes());
            if text {
                out.push(b'=');
                out.extend_from_slice(value);
            } else {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// A journal file in a temporary directory, deleted on drop. Derefs to its path.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl JournalFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the file (for `journalctl --directory`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl std::ops::Deref for JournalFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for JournalFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// A real journal file holding `entries` (defaults filled in as by [`export_text`]).
pub fn journal_from_text(entries: &[JournalEntry]) -> Result<JournalFile> {
    journal_from_export(&export_text(entries))
}

/// A real journal file from raw export-format text (a fixture file's contents).
pub fn journal_from_export(export: &[u8]) -> Result<JournalFile> {
    let dir = tempfile::Builder::new()
        .prefix("incus-osd-journal-")
        .tempdir()?;
    let path = dir.path().join("test.journal");
    write_export(&path, export)?;
    Ok(JournalFile { path, _dir: dir })
}

/// Writes `entries` into the journal file `path` (which must end in `.journal`; an
/// existing file is appended to).
pub fn write_journal(path: impl AsRef<Path>, entries: &[JournalEntry]) -> Result<()> {
    write_export(path.as_ref(), &export_text(entries))
}

fn write_export(path: &Path, export: &[u8]) -> Result<()> {
    if path.extension() != Some(std::ffi::OsStr::new("journal")) {
        bail!("journal file name must end in .journal: {}", path.display());
    }
    let mut cmd = Command::new(crate::JOURNAL_REMOTE);
    cmd.arg(format!("--output={}", path.display()))
        .arg("--split-mode=none")
        .arg("-");
    let out = output_with_input(&mut cmd, Some(export), Duration::from_secs(60))
        .context("running systemd-journal-remote (package systemd-journal-remote)")?;
    out.into_result("systemd-journal-remote")?;
    if !path.is_file() {
        bail!("systemd-journal-remote wrote no {}", path.display());
    }
    Ok(())
}
