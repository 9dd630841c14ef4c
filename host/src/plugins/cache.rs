//! The manifest cache: what each plugin library's manifest was when it was last opened and
//! checked, so that a library that did not change since need not be opened at start.
//!
//! An entry holds when the library file has the same identity (device, inode, size, mtime
//! and ctime) and the daemon is the same build (its executable's identity and the
//! plugin-api version). A cache that is missing, unreadable, corrupt or written by another
//! build is ignored (and rewritten); it never stops the daemon.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use plugin_api::Manifest;
use plugin_host::loader::FileIdentity;
use serde::{Deserialize, Serialize};

/// The cache's file name in the daemon's state directory.
pub const FILE: &str = "plugin-cache.json";

/// A file's identity, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    inode: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl From<FileIdentity> for Identity {
    fn from(f: FileIdentity) -> Self {
        Identity {
            dev: f.dev,
            inode: f.inode,
            size: f.size,
            mtime_ns: f.mtime_ns,
            ctime_ns: f.ctime_ns,
        }
    }
}

/// The build of the daemon that wrote a cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Daemon {
    exe: Option<Identity>,
    api_version: String,
}

impl Daemon {
    fn this() -> Daemon {
        let exe = std::fs::metadata("/proc/self/exe").ok().map(|m| Identity {
            dev: m.dev(),
            inode: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
        });
        Daemon {
            exe,
            api_version: plugin_api::API_VERSION.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    file: Identity,
    #[serde(flatten)]
    library: Cached,
}

/// What the cache knows of a library: its plugins' manifests, in the library's order, and
/// for a bundle the crates it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    pub manifests: Vec<Manifest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundled: Vec<String>,
}

/// The part of the stored cache that every build reads the same way.
#[derive(Debug, Deserialize)]
struct Head {
    daemon: Daemon,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    daemon: Daemon,
    libraries: BTreeMap<PathBuf, Entry>,
}

/// The cache read at start, and the one to write once every library was seen.
#[derive(Debug)]
pub struct Cache {
    path: Option<PathBuf>,
    daemon: Daemon,
    old: BTreeMap<PathBuf, Entry>,
    new: BTreeMap<PathBuf, Entry>,
    changed: bool,
}

impl Cache {
    /// No cache: every library is opened at start.
    pub fn none() -> Cache {
        Cache {
            path: None,
            daemon: Daemon::this(),
            old: BTreeMap::new(),
            new: BTreeMap::new(),
            changed: false,
        }
    }

    fn unreadable(&mut self, path: &Path, e: &serde_json::Error) {
        tracing::warn!(path = %path.display(), error = %e, "plugin cache is unreadable: not used");
        self.changed = true;
    }

    /// Reads the cache at `path`; one that cannot be used is ignored (and logged).
    pub fn read(path: &Path) -> Cache {
        let mut c = Cache::none();
        c.path = Some(path.to_path_buf());
        match std::fs::read(path) {
            // The daemon's identity first: another build may have written another format.
            Ok(bytes) => match serde_json::from_slice::<Head>(&bytes) {
                Ok(h) if h.daemon != c.daemon => {
                    tracing::info!(path = %path.display(), "plugin cache is from another build of the daemon: not used");
                    c.changed = true;
                }
                Ok(_) => match serde_json::from_slice::<Stored>(&bytes) {
                    Ok(s) => c.old = s.libraries,
                    Err(e) => c.unreadable(path, &e),
                },
                Err(e) => c.unreadable(path, &e),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => c.changed = true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the plugin cache: not used");
                c.changed = true;
            }
        }
        c
    }

    /// What the cache knows of `path` if the file still has identity `file` (and every
    /// manifest still validates); it is kept for the next cache.
    pub fn hit(&mut self, path: &Path, file: FileIdentity) -> Option<Cached> {
        let e = self.old.get(path)?;
        if e.file != Identity::from(file) || e.library.manifests.is_empty() {
            return None;
        }
        // The stored manifests must still pass the checks the library's did.
        for m in &e.library.manifests {
            let json = serde_json::to_string(m).ok()?;
            if Manifest::parse(&json).ok()? != *m {
                return None;
            }
        }
        self.new.insert(path.to_path_buf(), e.clone());
        Some(e.library.clone())
    }

    /// Records what a library just opened and checked carries.
    pub fn record(&mut self, path: &Path, file: FileIdentity, library: Cached) {
        let file = Identity::from(file);
        let same = self
            .old
            .get(path)
            .is_some_and(|e| e.file == file && e.library == library);
        self.changed |= !same;
        self.new.insert(path.to_path_buf(), Entry { file, library });
    }

    /// Writes the cache (atomically: a temporary file renamed over it) if it changed.
    /// Failures are logged: the next start opens the libraries again.
    pub fn write(self) {
        let Some(path) = &self.path else { return };
        // Unchanged when every library was seen as recorded and none went away.
        if !self.changed && self.new.keys().eq(self.old.keys()) {
            return;
        }
        let stored = Stored {
            daemon: self.daemon,
            libraries: self.new,
        };
        if let Err(e) = write_atomic(path, &stored) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the plugin cache");
        }
    }
}

fn write_atomic(path: &Path, stored: &Stored) -> std::io::Result<()> {
    let json = serde_json::to_vec(stored).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Cached {
        let m = Manifest::parse(
            r#"{"name": "usbip", "kind": "service", "version": "1.0.0",
                "api_version": "1.0.0", "hooks": ["get", "put"]}"#,
        )
        .unwrap();
        Cached {
            manifests: vec![m],
            bundled: vec![],
        }
    }

    fn file(mtime_ns: i64) -> FileIdentity {
        FileIdentity {
            dev: 1,
            inode: 2,
            size: 3,
            mtime_ns,
            ctime_ns: 5,
        }
    }

    #[test]
    fn a_recorded_library_hits_until_its_file_or_the_daemon_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let lib = Path::new("/usr/lib/incus-osd/plugins/libincus_osd_plugin_usbip.so");
        let mut c = Cache::read(&path);
        assert_eq!(c.hit(lib, file(4)), None);
        c.record(lib, file(4), manifest());
        c.write();

        let mut c = Cache::read(&path);
        assert_eq!(c.hit(lib, file(4)), Some(manifest()));
        assert_eq!(c.hit(lib, file(9)), None, "touched");

        // Another daemon build's cache, or a corrupt one: not used.
        let mut stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        stored["daemon"]["api_version"] = "1.0.0".into();
        std::fs::write(&path, stored.to_string()).unwrap();
        assert_eq!(Cache::read(&path).hit(lib, file(4)), None);
        std::fs::write(&path, "{").unwrap();
        let mut c = Cache::read(&path);
        assert_eq!(c.hit(lib, file(4)), None);
        // Rewritten on the next write.
        c.record(lib, file(4), manifest());
        c.write();
        assert_eq!(Cache::read(&path).hit(lib, file(4)), Some(manifest()));
    }
}
