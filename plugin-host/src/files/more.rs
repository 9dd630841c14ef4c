//! The file capabilities of contract 1.3: descriptors handed to a plugin (a streamed read
//! or write, a directory for `*at` calls), full facts, chown, symlink and rename. Each
//! resolves inside the root and applies the write allow-list exactly as the older calls
//! do (see the module documentation of [`super`]).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{io_err, kind_of, not_found, FsError, RootFs, Stat, StatKind};
use crate::sys;

/// What [`RootFs::facts`] reports: everything a backup keeps about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: StatKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Size in bytes (a symlink's is the length of its target).
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    pub uid: u32,
    pub gid: u32,
    /// A symlink's target as written; empty otherwise.
    pub link_target: String,
}

impl From<Facts> for Stat {
    fn from(f: Facts) -> Stat {
        Stat {
            kind: f.kind,
            mode: f.mode,
            link_target: f.link_target,
        }
    }
}

/// How [`RootFs::open`] opens a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    /// Create a missing file (with `mode`) and its missing parents (0755).
    pub create: bool,
    pub truncate: bool,
    pub append: bool,
    /// With `create`: an existing file is an error.
    pub exclusive: bool,
    /// Permission bits of a created file.
    pub mode: u32,
}

impl OpenOptions {
    /// Whether the open may change anything (then the write allow-list applies).
    pub fn writes(&self) -> bool {
        self.write || self.create || self.truncate || self.append || self.exclusive
    }
}

/// The refusal of a change through a file with several names: a hard link planted in a
/// declared directory would otherwise lead a write or an owner change to a file elsewhere.
fn one_name(st: &libc::stat) -> io::Result<()> {
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1 {
        return Err(io::Error::other(format!(
            "it has {} hard links: a file with several names is not changed in place",
            st.st_nlink
        )));
    }
    Ok(())
}

/// `fd` if it is a regular file (with one name when `writes`), else an error saying what
/// it is (a FIFO opened non-blocking, a device, a directory).
fn regular(fd: OwnedFd, writes: bool) -> io::Result<OwnedFd> {
    let st = sys::fstat(fd.as_fd())?;
    let what = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            if writes {
                one_name(&st)?;
            }
            return Ok(fd);
        }
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFSOCK => "a socket",
        _ => "not a regular file",
    };
    Err(io::Error::other(format!("{what}, not a regular file")))
}

/// A clearer text for the errors of an open that does not follow a final symlink.
fn no_follow(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => io::Error::other("a symbolic link (not followed for writing)"),
        // O_WRONLY on a FIFO without a reader.
        Some(libc::ENXIO) => io::Error::other("a FIFO, not a regular file"),
        _ => e,
    }
}

impl RootFs {
    /// The directory holding the entry `os_path` names, for a change there: the path is
    /// checked against the allow-list as given and where the directory resolves (the entry
    /// itself is not followed). The directory is created with its parents (0755) when
    /// `create`; `Ok(None)` when it is missing otherwise.
    fn writable_entry(
        &self,
        op: &'static str,
        os_path: &str,
        create: bool,
    ) -> Result<Option<(OwnedFd, OsString)>, FsError> {
        let rel = self.check_writable(os_path)?;
        let split = Self::split(&rel);
        let Some(name) = split.name else {
            return Err(io_err(op, os_path)(io::Error::other(
                "the root itself cannot be changed",
            )));
        };
        let root = self.open_root(op, os_path)?;
        let dir = match self.dir_in(os_path, root.as_fd(), &split.parent, create) {
            Ok(fd) => fd,
            Err(FsError::Io { source, .. }) if !create && not_found(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.check_resolved(os_path, root.as_fd(), dir.as_fd(), Some(name), false)?;
        Ok(Some((dir, name.to_os_string())))
    }

    /// [`RootFs::writable_entry`] whose directory must exist.
    fn existing_entry(
        &self,
        op: &'static str,
        os_path: &str,
    ) -> Result<(OwnedFd, OsString), FsError> {
        self.writable_entry(op, os_path, false)?.ok_or_else(|| {
            io_err(op, os_path)(io::Error::new(
                io::ErrorKind::NotFound,
                "its directory does not exist",
            ))
        })
    }

    /// Opens a regular file, as [`crate::host_ops`]'s `file_open` describes: a read-only
    /// open anywhere under the root (a final symlink followed inside it), a writing one
    /// only where the allow-list permits (a final symlink refused). Never blocks on a FIFO;
    /// anything but a regular file is refused. `Ok(None)` when it (or, without `create`,
    /// its directory) does not exist.
    pub fn open(&self, os_path: &str, o: &OpenOptions) -> Result<Option<OwnedFd>, FsError> {
        if !o.writes() {
            let rel = Self::relative(os_path)?;
            let root = self.open_root("open", os_path)?;
            let flags = libc::O_RDONLY | libc::O_NONBLOCK;
            let fd = match Self::open_in(root.as_fd(), &rel, flags) {
                Ok(fd) => fd,
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(io_err("open", os_path)(e)),
            };
            return self.finish_open(fd, o, os_path).map(Some);
        }
        let Some((dir, name)) = self.writable_entry("open", os_path, o.create)? else {
            return Ok(None);
        };
        let mut flags = if o.read { libc::O_RDWR } else { libc::O_WRONLY };
        flags |= libc::O_NOFOLLOW | libc::O_NONBLOCK;
        if o.append {
            flags |= libc::O_APPEND;
        }
        let create = |dir: BorrowedFd<'_>| -> io::Result<OwnedFd> {
            let fd = sys::openat(
                dir,
                &name,
                flags | libc::O_CREAT | libc::O_EXCL,
                o.mode & 0o7777,
            )?;
            // The umask may have masked bits off: set them exactly.
            sys::fchmod(fd.as_fd(), o.mode & 0o7777)?;
            Ok(fd)
        };
        let opened = if o.create && o.exclusive {
            create(dir.as_fd())
        } else {
            match sys::openat(dir.as_fd(), &name, flags, 0) {
                Err(e) if not_found(&e) && o.create => match create(dir.as_fd()) {
                    // Created by someone else in between: open that one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        sys::openat(dir.as_fd(), &name, flags, 0)
                    }
                    other => other,
                },
                Err(e) if not_found(&e) => return Ok(None),
                other => other,
            }
        };
        let fd = opened.map_err(|e| io_err("open", os_path)(no_follow(e)))?;
        self.finish_open(fd, o, os_path).map(Some)
    }

    /// The checks and settings after the open itself: a regular file, truncated when
    /// asked (only now, so that nothing else is ever truncated), blocking again.
    fn finish_open(&self, fd: OwnedFd, o: &OpenOptions, os_path: &str) -> Result<OwnedFd, FsError> {
        let res = (|| {
            let fd = regular(fd, o.writes())?;
            if o.truncate {
                std::fs::File::from(fd.try_clone()?).set_len(0)?;
            }
            sys::set_blocking(fd.as_fd())?;
            Ok(fd)
        })();
        res.map_err(io_err("open", os_path))
    }

    /// A directory under the allow-list (checked as given and where it resolves inside the
    /// root), opened `O_RDONLY | O_DIRECTORY`; `Ok(None)` when it does not exist.
    pub fn open_dir(&self, os_path: &str) -> Result<Option<OwnedFd>, FsError> {
        let rel = self.check_writable(os_path)?;
        let root = self.open_root("open", os_path)?;
        let fd = match Self::open_in(root.as_fd(), &rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("open", os_path)(e)),
        };
        self.check_resolved(os_path, root.as_fd(), fd.as_fd(), None, false)?;
        Ok(Some(fd))
    }

    /// Kind, mode, size, mtime, owner and link target of a path (a final symlink is not
    /// followed); `Ok(None)` when it does not exist. Any path under the root.
    pub fn facts(&self, os_path: &str) -> Result<Option<Facts>, FsError> {
        let rel = Self::relative(os_path)?;
        let root = self.open_root("stat", os_path)?;
        let split = Self::split(&rel);
        let dir = match Self::open_in(root.as_fd(), &split.parent, libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("stat", os_path)(e)),
        };
        let name = split.name.unwrap_or_default();
        let st = match sys::lstatat(dir.as_fd(), name) {
            Ok(st) => st,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("stat", os_path)(e)),
        };
        let kind = kind_of(&st);
        let link_target = if kind == StatKind::Symlink {
            sys::readlinkat(dir.as_fd(), name)
                .map_err(io_err("readlink", os_path))?
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        Ok(Some(Facts {
            kind,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
            mtime_secs: st.st_mtime,
            mtime_nanos: st.st_mtime_nsec as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            link_target,
        }))
    }

    /// Changes owner and group of a path without following a final symlink (`u32::MAX`
    /// keeps one). Declared paths only.
    pub fn chown(&self, os_path: &str, uid: u32, gid: u32) -> Result<(), FsError> {
        let (dir, name) = self.existing_entry("chown", os_path)?;
        let st = sys::lstatat(dir.as_fd(), &name).map_err(io_err("chown", os_path))?;
        one_name(&st).map_err(io_err("chown", os_path))?;
        sys::lchownat(dir.as_fd(), &name, uid, gid).map_err(io_err("chown", os_path))
    }

    /// Creates a symlink at `os_path` with the text `target`; an existing entry there is
    /// an error. Declared paths only; the directory must exist.
    pub fn symlink(&self, target: &str, os_path: &str) -> Result<(), FsError> {
        let (dir, name) = self.existing_entry("symlink", os_path)?;
        sys::symlinkat(OsStr::new(target), dir.as_fd(), &name).map_err(|e| {
            let e = if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(e.kind(), "it already exists")
            } else {
                e
            };
            io_err("symlink", os_path)(e)
        })
    }

    /// Renames `from` to `to` atomically (`renameat2` with `flags`: `RENAME_NOREPLACE`,
    /// `RENAME_EXCHANGE`), then syncs both directories. Both ends declared; neither's
    /// final symlink followed.
    pub fn rename(&self, from: &str, to: &str, flags: u32) -> Result<(), FsError> {
        let (from_dir, from_name) = self.existing_entry("rename", from)?;
        let (to_dir, to_name) = self.existing_entry("rename", to)?;
        let shown = format!("{from} to {to}");
        sys::renameat2(
            from_dir.as_fd(),
            &from_name,
            to_dir.as_fd(),
            &to_name,
            flags,
        )
        .map_err(|e| {
            let e = match e.raw_os_error() {
                Some(libc::EEXIST) => io::Error::new(e.kind(), format!("{to} already exists")),
                Some(libc::ENOTEMPTY) => {
                    io::Error::new(e.kind(), format!("{to} is a directory that is not empty"))
                }
                Some(libc::EXDEV) => io::Error::other("not on the same filesystem"),
                _ => e,
            };
            io_err("rename", &shown)(e)
        })?;
        sys::fsync(from_dir.as_fd()).map_err(io_err("rename", &shown))?;
        sys::fsync(to_dir.as_fd()).map_err(io_err("rename", &shown))
    }
}
