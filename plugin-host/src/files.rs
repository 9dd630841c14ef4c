//! Files under the root prefix: every OS path the daemon or a plugin names resolves under
//! `root` (like `systemctl --root`), with `..` refused and writes limited to an allow-list.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why a file operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("path {0:?} must be absolute and must not contain '..'")]
    BadPath(String),
    #[error("path {path:?} is outside what this plugin may write ({allowed})")]
    NotAllowed { path: String, allowed: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

/// What [`RootFs::stat`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: StatKind,
    pub mode: u32,
    pub link_target: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A view of the filesystem rooted at `root`, optionally limited (for writes) to a set of
/// absolute OS path prefixes.
#[derive(Debug, Clone)]
pub struct RootFs {
    root: PathBuf,
    writable: Option<Vec<String>>,
}

impl RootFs {
    /// Unrestricted view (the daemon's own use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootFs {
            root: root.into(),
            writable: None,
        }
    }

    /// A view whose writes are limited to `prefixes` (a plugin's declared paths).
    pub fn restricted(root: impl Into<PathBuf>, prefixes: &[String]) -> Self {
        RootFs {
            root: root.into(),
            writable: Some(prefixes.to_vec()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps an absolute OS path to the real path under the root.
    pub fn resolve(&self, os_path: &str) -> Result<PathBuf, FsError> {
        let p = Path::new(os_path);
        if !p.is_absolute() {
            return Err(FsError::BadPath(os_path.to_string()));
        }
        let mut out = self.root.clone();
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(FsError::BadPath(os_path.to_string()))
                }
            }
        }
        Ok(out)
    }

    fn check_writable(&self, os_path: &str) -> Result<PathBuf, FsError> {
        let real = self.resolve(os_path)?;
        if let Some(prefixes) = &self.writable {
            let p = Path::new(os_path);
            if !prefixes.iter().any(|pre| p.starts_with(pre)) {
                return Err(FsError::NotAllowed {
                    path: os_path.to_string(),
                    allowed: if prefixes.is_empty() {
                        "no paths declared".to_string()
                    } else {
                        prefixes.join(", ")
                    },
                });
            }
        }
        Ok(real)
    }

    /// Reads a file; `Ok(None)` when it does not exist.
    pub fn read(&self, os_path: &str) -> Result<Option<Vec<u8>>, FsError> {
        let real = self.resolve(os_path)?;
        match fs::read(&real) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", os_path)(e)),
        }
    }

    /// Kind, permission bits and symlink target of a path (a final symlink is not
    /// followed); `Ok(None)` when it does not exist.
    pub fn stat(&self, os_path: &str) -> Result<Option<Stat>, FsError> {
        let real = self.resolve(os_path)?;
        let meta = match fs::symlink_metadata(&real) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", os_path)(e)),
        };
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            StatKind::Symlink
        } else if ft.is_dir() {
            StatKind::Dir
        } else if ft.is_file() {
            StatKind::File
        } else {
            StatKind::Other
        };
        let link_target = if ft.is_symlink() {
            fs::read_link(&real)
                .map_err(io_err("readlink", os_path))?
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        Ok(Some(Stat {
            kind,
            mode: meta.permissions().mode() & 0o7777,
            link_target,
        }))
    }

    /// Sorted entry names of a directory; `Ok(None)` when it does not exist.
    pub fn list(&self, os_path: &str) -> Result<Option<Vec<String>>, FsError> {
        let real = self.resolve(os_path)?;
        let entries = match fs::read_dir(&real) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("list", os_path)(e)),
        };
        let mut names = vec![];
        for e in entries {
            let e = e.map_err(io_err("list", os_path))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(Some(names))
    }

    /// Atomically replaces a file: temp file in the same directory, fsync, rename, fsync of
    /// the directory. Missing parents are created with mode 0755.
    pub fn write(&self, os_path: &str, data: &[u8], mode: u32) -> Result<(), FsError> {
        let real = self.check_writable(os_path)?;
        atomic_write(&real, data, mode).map_err(io_err("write", os_path))
    }

    /// Creates a directory and its parents; the last one gets `mode`.
    pub fn create_dir(&self, os_path: &str, mode: u32) -> Result<(), FsError> {
        let real = self.check_writable(os_path)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&real)
            .and_then(|_| fs::set_permissions(&real, fs::Permissions::from_mode(mode)))
            .map_err(io_err("mkdir", os_path))
    }

    /// Removes a file, a symlink or a whole tree. Absent is fine.
    pub fn remove(&self, os_path: &str) -> Result<(), FsError> {
        let real = self.check_writable(os_path)?;
        let res = match fs::symlink_metadata(&real) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => fs::remove_dir_all(&real),
            Ok(_) => fs::remove_file(&real),
        };
        res.map_err(io_err("remove", os_path))
    }
}

/// Writes `data` to `path` atomically and durably, with permission bits `mode`.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have masked bits off: set them exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_the_root_and_dotdot_is_refused() {
        let fs = RootFs::new("/tmp/r");
        assert_eq!(fs.resolve("/etc/x").unwrap(), PathBuf::from("/tmp/r/etc/x"));
        assert!(fs.resolve("/etc/../x").is_err());
        assert!(fs.resolve("etc/x").is_err());
    }

    #[test]
    fn writes_are_atomic_with_exact_mode_and_limited_to_declared_paths() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::restricted(dir.path(), &["/etc/iscsi".to_string()]);
        fs.write("/etc/iscsi/a/b.conf", b"x=1\n", 0o600).unwrap();
        let real = dir.path().join("etc/iscsi/a/b.conf");
        assert_eq!(std::fs::read(&real).unwrap(), b"x=1\n");
        assert_eq!(
            std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = fs.write("/etc/passwd", b"", 0o644).unwrap_err();
        assert!(matches!(err, FsError::NotAllowed { .. }), "{err}");
        // `/etc/iscsix` is not inside `/etc/iscsi`.
        assert!(fs.write("/etc/iscsix", b"", 0o644).is_err());
        assert_eq!(fs.read("/etc/iscsi/missing").unwrap(), None);
        assert_eq!(fs.list("/etc/iscsi").unwrap().unwrap(), ["a"]);
        assert_eq!(fs.list("/etc/none").unwrap(), None);
        let st = fs.stat("/etc/iscsi/a/b.conf").unwrap().unwrap();
        assert_eq!((st.kind, st.mode), (StatKind::File, 0o600));
        std::os::unix::fs::symlink("../../sdb", dir.path().join("etc/iscsi/link")).unwrap();
        let st = fs.stat("/etc/iscsi/link").unwrap().unwrap();
        assert_eq!(
            (st.kind, st.link_target.as_str()),
            (StatKind::Symlink, "../../sdb")
        );
        assert_eq!(fs.stat("/etc/none").unwrap(), None);
        fs.remove("/etc/iscsi").unwrap();
        assert!(!dir.path().join("etc/iscsi").exists());
        fs.remove("/etc/iscsi").unwrap();
    }
}
