//! Backups of an application that declares its data directory (the manifest's `backup`, a
//! [`BackupSpec`]): what the daemon's `:backup` and `:restore` do and what the harness's
//! backup check does, in one place.
//!
//! The archive is the SDK's format ([`plugin_api::sdk::archive`]: a gzip tar of the
//! directory, entries relative to it). The directory is resolved inside the root prefix as
//! every host file operation is ([`RootFs`]): a symlink on the way that leads anywhere but
//! the declared root itself is refused.
//!
//! - [`check`] is the dry run that surfaces an error before the first byte is sent;
//!   [`write`] streams the archive;
//! - [`prepare`] extracts an upload next to the directory, every entry checked (a bad
//!   archive changes nothing); [`Prepared::apply`] stops the spec's units in order, swaps
//!   the tree in, and starts the units again in order (also when the swap failed).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use plugin_api::application::BackupSpec;
use plugin_api::sdk::archive::{self, Exclusions, Limits, PreparedRestore, Summary};
use plugin_api::sdk::{Error, Result};

use crate::files::RootFs;
use crate::units::{UnitAction, Units};

/// The view of the root prefix whose only writable path is the backup root.
fn view(root_prefix: &Path, spec: &BackupSpec) -> RootFs {
    let root = spec.root.trim_end_matches('/').to_string();
    RootFs::restricted(root_prefix, &[root])
}

/// Where the backup root really is; `Ok(None)` when it does not exist.
fn resolve(fs: &RootFs, spec: &BackupSpec) -> Result<Option<PathBuf>> {
    fs.host_dir(&spec.root)
        .map_err(|e| Error::internal(format!("backup root {}: {e}", spec.root)))
}

fn existing(root_prefix: &Path, spec: &BackupSpec) -> Result<PathBuf> {
    resolve(&view(root_prefix, spec), spec)?
        .ok_or_else(|| Error::internal(format!("backup root {} does not exist", spec.root)))
}

fn with_exclusions<T>(spec: &BackupSpec, f: impl FnOnce(&Exclusions<'_>) -> T) -> T {
    let always: Vec<&str> = spec.excluded.iter().map(String::as_str).collect();
    let unless: Vec<&str> = spec
        .excluded_unless_complete
        .iter()
        .map(String::as_str)
        .collect();
    f(&Exclusions {
        always: &always,
        unless_complete: &unless,
    })
}

/// The dry run of [`write`]: walks the tree, stats everything and opens every file the
/// backup would read, and reports the first error.
pub fn check(root_prefix: &Path, spec: &BackupSpec, complete: bool) -> Result<Summary> {
    let dir = existing(root_prefix, spec)?;
    with_exclusions(spec, |ex| archive::backup_check(&dir, ex, complete))
}

/// Streams the archive of the backup root to `writer`, leaving out `spec.excluded`, and
/// `spec.excluded_unless_complete` unless `complete`.
pub fn write(
    root_prefix: &Path,
    spec: &BackupSpec,
    complete: bool,
    writer: impl Write,
) -> Result<Summary> {
    let dir = existing(root_prefix, spec)?;
    with_exclusions(spec, |ex| archive::backup_dir(&dir, writer, ex, complete))
}

/// A restore extracted beside the backup root, not yet swapped in (dropping it removes
/// it).
#[derive(Debug)]
pub struct Prepared {
    restore: PreparedRestore,
    units: Vec<String>,
}

/// Extracts the archive read from `reader` beside the backup root (created, mode 0755,
/// when missing, and removed again if the archive is refused), checking every entry against `limits` (whose `root_path` is set to the
/// spec's root: an absolute link target under it is kept). On error nothing is swapped
/// and the extraction is removed.
pub fn prepare(
    root_prefix: &Path,
    spec: &BackupSpec,
    reader: impl Read,
    limits: &Limits,
) -> Result<Prepared> {
    let fs = view(root_prefix, spec);
    let (dir, created) = match resolve(&fs, spec)? {
        Some(dir) => (dir, false),
        None => {
            fs.create_dir(&spec.root, 0o755)
                .map_err(|e| Error::internal(format!("backup root {}: {e}", spec.root)))?;
            (existing(root_prefix, spec)?, true)
        }
    };
    let limits = Limits {
        root_path: Some(PathBuf::from(spec.root.trim_end_matches('/'))),
        ..limits.clone()
    };
    match archive::prepare_restore(reader, &dir, &limits) {
        Ok(restore) => Ok(Prepared {
            restore,
            units: spec.units.clone(),
        }),
        Err(e) => {
            if created {
                // The empty root made for this restore goes with it.
                let _ = fs.remove(&spec.root);
            }
            Err(e)
        }
    }
}

impl Prepared {
    /// What the archive held.
    pub fn summary(&self) -> Summary {
        self.restore.summary()
    }

    /// Stops the spec's units in order, swaps the restored tree in, and starts the units
    /// again in order, whatever happened before. A unit that does not stop leaves the tree
    /// as it was. The first error (stop, swap, then start) is returned.
    pub fn apply(self, units: &dyn Units) -> Result<Summary> {
        let unit_error = |action: UnitAction, unit: &str, e: crate::PlatformError| {
            Error::internal(format!("cannot {} {unit}: {e}", action.as_str()))
        };
        let mut result = Ok(());
        for unit in &self.units {
            if let Err(e) = units.unit(UnitAction::Stop, unit) {
                result = Err(unit_error(UnitAction::Stop, unit, e));
                break;
            }
        }
        let swapped = match result {
            Ok(()) => self.restore.swap(),
            Err(e) => Err(e),
        };
        let mut started = Ok(());
        for unit in &self.units {
            if let Err(e) = units.unit(UnitAction::Start, unit) {
                if started.is_ok() {
                    started = Err(unit_error(UnitAction::Start, unit, e));
                }
            }
        }
        let summary = swapped?;
        started.map(|()| summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::Mutex;

    use crate::PlatformError;

    fn spec() -> BackupSpec {
        BackupSpec {
            root: "/var/lib/demo".into(),
            excluded: vec!["unix.socket".into()],
            excluded_unless_complete: vec!["cache".into()],
            units: vec!["demo.socket".into(), "demo.service".into()],
        }
    }

    /// Units that record what they were asked, failing the ones named.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        failing: Vec<String>,
    }

    impl Units for Recorder {
        fn unit(
            &self,
            action: UnitAction,
            unit: &str,
        ) -> std::result::Result<String, PlatformError> {
            let call = format!("{} {unit}", action.as_str());
            self.calls.lock().unwrap().push(call.clone());
            if self.failing.contains(&call) {
                return Err(PlatformError("refused".into()));
            }
            Ok(String::new())
        }
        fn daemon_reload(&self) -> std::result::Result<(), PlatformError> {
            Ok(())
        }
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    /// A demo tree: files with modes and an old mtime, a subdirectory, a symlink, and the
    /// excluded names.
    fn populate(dir: &Path) {
        fs::create_dir_all(dir.join("db")).unwrap();
        fs::write(dir.join("db/main.db"), "rows").unwrap();
        fs::set_permissions(dir.join("db/main.db"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.join("config.yaml"), "a: 1").unwrap();
        fs::set_permissions(dir.join("config.yaml"), fs::Permissions::from_mode(0o640)).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        fs::File::options()
            .write(true)
            .open(dir.join("config.yaml"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::os::unix::fs::symlink("db/main.db", dir.join("current")).unwrap();
        fs::write(dir.join("unix.socket"), "not data").unwrap();
        fs::create_dir(dir.join("cache")).unwrap();
        fs::write(dir.join("cache/blob"), "cached").unwrap();
    }

    fn demo() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("var/lib/demo");
        populate(&dir);
        (tmp, dir)
    }

    /// Every entry of a tree with its kind, mode, mtime and content (or link target).
    fn listing(dir: &Path) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir.join(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for n in names {
                let r = if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                };
                let p = dir.join(&r);
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    "dir".to_string()
                } else {
                    format!("{:?} mtime {}", fs::read_to_string(&p).unwrap(), m.mtime())
                };
                let mode = if m.is_symlink() { 0 } else { m.mode() & 0o7777 };
                out.push(format!("{r} {mode:o} {what}"));
                if m.is_dir() {
                    walk(dir, &r, out);
                }
            }
        }
        let mut out = vec![];
        walk(dir, "", &mut out);
        out
    }

    fn backup(root: &Path, complete: bool) -> Vec<u8> {
        check(root, &spec(), complete).unwrap();
        let mut out = vec![];
        write(root, &spec(), complete, &mut out).unwrap();
        out
    }

    #[test]
    fn a_round_trip_keeps_modes_mtimes_and_links_and_leaves_out_the_exclusions() {
        let (tmp, dir) = demo();
        let before = listing(&dir);
        let archive = backup(tmp.path(), false);

        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("stray"), "after the backup").unwrap();
        let units = Recorder::default();
        let prepared =
            prepare(tmp.path(), &spec(), archive.as_slice(), &Limits::default()).unwrap();
        assert!(units.calls().is_empty(), "nothing stopped before apply");
        assert!(dir.join("stray").exists(), "nothing swapped before apply");
        prepared.apply(&units).unwrap();
        assert_eq!(
            units.calls(),
            [
                "stop demo.socket",
                "stop demo.service",
                "start demo.socket",
                "start demo.service"
            ]
        );
        let expected: Vec<String> = before
            .into_iter()
            .filter(|l| !l.starts_with("unix.socket") && !l.starts_with("cache"))
            .collect();
        assert_eq!(listing(&dir), expected);
        assert!(expected
            .iter()
            .any(|l| l.contains("config.yaml 640") && l.contains("mtime 1600000000")));
        assert!(expected.iter().any(|l| l == "current 0 -> db/main.db"));
        // Nothing left beside the root.
        assert_eq!(fs::read_dir(dir.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_complete_backup_keeps_what_only_a_complete_one_has() {
        let (tmp, dir) = demo();
        let plain = backup(tmp.path(), false);
        let complete = backup(tmp.path(), true);
        for (archive, cached) in [(plain, false), (complete, true)] {
            let other = tempfile::tempdir().unwrap();
            prepare(
                other.path(),
                &spec(),
                archive.as_slice(),
                &Limits::default(),
            )
            .unwrap()
            .apply(&Recorder::default())
            .unwrap();
            let restored = other.path().join("var/lib/demo");
            assert_eq!(restored.join("cache/blob").exists(), cached);
            assert!(!restored.join("unix.socket").exists());
        }
        assert!(dir.join("cache/blob").exists());
    }

    #[test]
    fn a_hostile_archive_changes_nothing() {
        let (tmp, dir) = demo();
        let before = listing(&dir);
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, "escape", "/etc").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        tar.append_data(&mut h, "escape/passwd", &b"evil"[..])
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        let hostile = gz.finish().unwrap();

        let err = prepare(tmp.path(), &spec(), hostile.as_slice(), &Limits::default()).unwrap_err();
        assert_eq!(err.status, 400, "{err:?}");
        assert_eq!(listing(&dir), before);
        assert_eq!(fs::read_dir(dir.parent().unwrap()).unwrap().count(), 1);

        // A truncated archive too.
        let good = backup(tmp.path(), false);
        let err = prepare(
            tmp.path(),
            &spec(),
            &good[..good.len() / 2],
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.status, 400, "{err:?}");
        assert_eq!(listing(&dir), before);
    }

    #[test]
    fn units_are_started_again_when_a_stop_fails_and_the_tree_stays() {
        let (tmp, dir) = demo();
        let archive = backup(tmp.path(), false);
        fs::write(dir.join("new"), "after").unwrap();
        let units = Recorder {
            failing: vec!["stop demo.service".into()],
            ..Default::default()
        };
        let err = prepare(tmp.path(), &spec(), archive.as_slice(), &Limits::default())
            .unwrap()
            .apply(&units)
            .unwrap_err();
        assert_eq!(err.message, "cannot stop demo.service: refused");
        assert_eq!(
            units.calls(),
            [
                "stop demo.socket",
                "stop demo.service",
                "start demo.socket",
                "start demo.service"
            ]
        );
        assert!(dir.join("new").exists(), "the tree was not swapped");
        assert_eq!(fs::read_dir(dir.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_root_reached_through_a_symlink_is_refused_and_a_missing_one_is_created_by_a_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("etc");
        populate(&elsewhere);
        fs::create_dir_all(tmp.path().join("var/lib")).unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("var/lib/demo")).unwrap();
        let err = check(tmp.path(), &spec(), false).unwrap_err();
        assert!(err.message.contains("through a symlink"), "{err:?}");
        assert!(write(tmp.path(), &spec(), false, std::io::sink()).is_err());

        let (src, _) = demo();
        let archive = backup(src.path(), false);
        assert!(prepare(tmp.path(), &spec(), archive.as_slice(), &Limits::default()).is_err());
        assert_eq!(
            fs::read_to_string(elsewhere.join("config.yaml")).unwrap(),
            "a: 1"
        );

        let empty = tempfile::tempdir().unwrap();
        let err = check(empty.path(), &spec(), false).unwrap_err();
        assert_eq!(err.message, "backup root /var/lib/demo does not exist");
        let err = prepare(empty.path(), &spec(), &archive[..10], &Limits::default()).unwrap_err();
        assert_eq!(err.status, 400, "{err:?}");
        assert!(
            !empty.path().join("var/lib/demo").exists(),
            "a refused restore leaves no root"
        );
        prepare(
            empty.path(),
            &spec(),
            archive.as_slice(),
            &Limits::default(),
        )
        .unwrap()
        .apply(&Recorder::default())
        .unwrap();
        assert_eq!(
            fs::read_to_string(empty.path().join("var/lib/demo/db/main.db")).unwrap(),
            "rows"
        );
    }
}
