//! Files under the root prefix: every OS path the daemon or a plugin names resolves inside
//! `root` (like `systemctl --root`, but enforced by the kernel).
//!
//! Every read, write, list, stat, mkdir and remove starts from a descriptor of the root and
//! resolves the path with `openat2(2)` and `RESOLVE_IN_ROOT`: symlinks are followed as in a
//! chroot (an absolute target resolves against the root, `..` stops at the root), so
//! nothing in the root can send an operation outside it. The last component is then acted
//! on relative to its resolved parent directory (`renameat`, `mkdirat`, `unlinkat`,
//! `fstatat`): a symlink there is replaced, removed or reported, never followed. A
//! recursive remove walks the tree with `O_NOFOLLOW` per level and removes symlinks
//! themselves, never their targets.
//!
//! A restricted view (a plugin's) may write only under its declared paths, and the check
//! is made twice: on the path as given, and on where it resolves. A declared directory that
//! is a symlink elsewhere does not extend the allow-list to its target.
//!
//! Atomic writes use a temporary file created with `O_CREAT | O_EXCL | O_NOFOLLOW` under an
//! unpredictable name (see [`temp_name`]); [`remove_temp_files`] clears the ones a killed
//! process left behind.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::sys;

/// Why a file operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("path {0:?} must be absolute and must not contain '..'")]
    BadPath(String),
    #[error("path {path:?} is outside what this plugin may write ({allowed})")]
    NotAllowed { path: String, allowed: String },
    #[error("path {path:?} resolves to {resolved:?} through a symlink, outside what this plugin may write ({allowed})")]
    Escapes {
        path: String,
        resolved: String,
        allowed: String,
    },
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

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
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

fn kind_of(st: &libc::stat) -> StatKind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => StatKind::File,
        libc::S_IFDIR => StatKind::Dir,
        libc::S_IFLNK => StatKind::Symlink,
        _ => StatKind::Other,
    }
}

/// An OS path split for the `*at` calls: the parent (relative to the root, possibly
/// empty) and the last component (`None` for `/` itself).
struct Split<'a> {
    parent: PathBuf,
    name: Option<&'a OsStr>,
}

/// A view of the filesystem rooted at `root`, optionally limited (for writes) to a set of
/// absolute OS path prefixes.
#[derive(Debug, Clone)]
pub struct RootFs {
    root: PathBuf,
    writable: Option<Vec<String>>,
    /// The root directory, opened on first use and kept (clones share it): every operation
    /// resolves relative to it, and reopening it per call cost a lookup of the whole root
    /// path each time.
    opened: Arc<OnceLock<Arc<OwnedFd>>>,
}

impl RootFs {
    /// Unrestricted view (the daemon's own use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootFs {
            root: root.into(),
            writable: None,
            opened: Arc::default(),
        }
    }

    /// A view whose writes are limited to `prefixes` (a plugin's declared paths).
    pub fn restricted(root: impl Into<PathBuf>, prefixes: &[String]) -> Self {
        RootFs {
            root: root.into(),
            writable: Some(prefixes.to_vec()),
            opened: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps an absolute OS path to the real path under the root, *lexically*: symlinks in
    /// the root are not looked at. Only for finding where a file lives when nothing on the
    /// way is a symlink (tests, the harness's inspection API); every operation of this type
    /// resolves inside the root instead.
    pub fn resolve(&self, os_path: &str) -> Result<PathBuf, FsError> {
        let mut out = self.root.clone();
        out.push(Self::relative(os_path)?);
        Ok(out)
    }

    /// The path relative to the root (`/etc/x` -> `etc/x`, `/` -> ``).
    fn relative(os_path: &str) -> Result<PathBuf, FsError> {
        let p = Path::new(os_path);
        if !p.is_absolute() {
            return Err(FsError::BadPath(os_path.to_string()));
        }
        let mut out = PathBuf::new();
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

    fn split(rel: &Path) -> Split<'_> {
        Split {
            parent: rel.parent().map(Path::to_path_buf).unwrap_or_default(),
            name: rel.file_name(),
        }
    }

    fn open_root(&self, op: &'static str, os_path: &str) -> Result<Arc<OwnedFd>, FsError> {
        if let Some(fd) = self.opened.get() {
            return Ok(fd.clone());
        }
        let fd =
            sys::open(&self.root, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| FsError::Io {
                op,
                path: os_path.to_string(),
                source: io::Error::new(
                    e.kind(),
                    format!("cannot open the root {}: {e}", self.root.display()),
                ),
            })?;
        Ok(self.opened.get_or_init(|| Arc::new(fd)).clone())
    }

    /// Opens `rel` (relative to the root) resolving inside the root.
    fn open_in(root: BorrowedFd<'_>, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        sys::openat2(root, rel, flags, 0, sys::IN_ROOT)
    }

    /// Where the open directory `fd` is, as an OS path (`/` is the root). Fails closed: a
    /// location the kernel does not report under the root is an error.
    fn os_path_of(root: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
        let root_real = sys::fd_path(root)?;
        let real = sys::fd_path(fd)?;
        let rest = real.strip_prefix(&root_real).map_err(|_| {
            io::Error::other(format!(
                "{} is not under the root {}",
                real.display(),
                root_real.display()
            ))
        })?;
        Ok(Path::new("/").join(rest))
    }

    fn allowed_text(prefixes: &[String]) -> String {
        if prefixes.is_empty() {
            "no paths declared".to_string()
        } else {
            prefixes.join(", ")
        }
    }

    /// The allow-list check on the path as given.
    fn check_writable(&self, os_path: &str) -> Result<PathBuf, FsError> {
        let rel = Self::relative(os_path)?;
        if let Some(prefixes) = &self.writable {
            let p = Path::new(os_path);
            if !prefixes.iter().any(|pre| p.starts_with(pre)) {
                return Err(FsError::NotAllowed {
                    path: os_path.to_string(),
                    allowed: Self::allowed_text(prefixes),
                });
            }
        }
        Ok(rel)
    }

    /// The allow-list check on where the entry `name` of directory `dir` really is: under
    /// a declared path, or (with `ancestor_ok`, for directories created on the way) one of
    /// a declared path's parents.
    fn check_resolved(
        &self,
        os_path: &str,
        root: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: Option<&OsStr>,
        ancestor_ok: bool,
    ) -> Result<(), FsError> {
        let Some(prefixes) = &self.writable else {
            return Ok(());
        };
        let mut resolved = Self::os_path_of(root, dir).map_err(io_err("resolve", os_path))?;
        if let Some(n) = name {
            resolved.push(n);
        }
        let ok = prefixes.iter().any(|pre| {
            resolved.starts_with(pre) || (ancestor_ok && Path::new(pre).starts_with(&resolved))
        });
        if ok {
            Ok(())
        } else {
            Err(FsError::Escapes {
                path: os_path.to_string(),
                resolved: resolved.display().to_string(),
                allowed: Self::allowed_text(prefixes),
            })
        }
    }

    /// Opens directory `rel` inside the root for reading, creating it and its missing
    /// parents (mode 0755) when `create`. Each directory created is checked against the
    /// allow-list where it really lands.
    fn dir_in(
        &self,
        os_path: &str,
        root: BorrowedFd<'_>,
        rel: &Path,
        create: bool,
    ) -> Result<OwnedFd, FsError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        match Self::open_in(root, rel, flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if create && not_found(&e) => {}
            Err(e) => return Err(io_err("open", os_path)(e)),
        }
        let mut dir = Self::open_in(root, Path::new(""), flags).map_err(io_err("open", os_path))?;
        let mut sub = PathBuf::new();
        for c in rel.components() {
            sub.push(c);
            match Self::open_in(root, &sub, flags) {
                Ok(fd) => dir = fd,
                Err(e) if not_found(&e) => {
                    let name = c.as_os_str();
                    self.check_resolved(os_path, root, dir.as_fd(), Some(name), true)?;
                    match sys::mkdirat(dir.as_fd(), name, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err("mkdir", os_path)(e)),
                    }
                    dir = Self::open_in(root, &sub, flags).map_err(io_err("mkdir", os_path))?;
                }
                Err(e) => return Err(io_err("open", os_path)(e)),
            }
        }
        Ok(dir)
    }

    /// Where the directory `os_path` really is on this machine, for code that must work on
    /// it by path (an archive walk): resolved inside the root as every operation is (a
    /// symlink on the way resolves against the root), and, in a restricted view, refused
    /// with [`FsError::Escapes`] when it resolves outside the writable paths. `Ok(None)`
    /// when it does not exist. The answer holds as long as nothing replaces a directory on
    /// the way with a symlink meanwhile.
    pub fn host_dir(&self, os_path: &str) -> Result<Option<PathBuf>, FsError> {
        let rel = Self::relative(os_path)?;
        let root = self.open_root("open", os_path)?;
        let fd = match Self::open_in(root.as_fd(), &rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("open", os_path)(e)),
        };
        self.check_resolved(os_path, root.as_fd(), fd.as_fd(), None, false)?;
        let resolved =
            Self::os_path_of(root.as_fd(), fd.as_fd()).map_err(io_err("resolve", os_path))?;
        Ok(Some(
            self.root
                .join(resolved.strip_prefix("/").unwrap_or(&resolved)),
        ))
    }

    /// Reads a file; `Ok(None)` when it does not exist.
    pub fn read(&self, os_path: &str) -> Result<Option<Vec<u8>>, FsError> {
        let rel = Self::relative(os_path)?;
        let root = self.open_root("read", os_path)?;
        let fd = match Self::open_in(root.as_fd(), &rel, libc::O_RDONLY) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("read", os_path)(e)),
        };
        let mut data = vec![];
        fs::File::from(fd)
            .read_to_end(&mut data)
            .map_err(io_err("read", os_path))?;
        Ok(Some(data))
    }

    /// Kind, permission bits and symlink target of a path (a final symlink is not
    /// followed); `Ok(None)` when it does not exist.
    pub fn stat(&self, os_path: &str) -> Result<Option<Stat>, FsError> {
        Ok(self.facts(os_path)?.map(Stat::from))
    }

    /// Sorted entry names of a directory; `Ok(None)` when it does not exist.
    pub fn list(&self, os_path: &str) -> Result<Option<Vec<String>>, FsError> {
        let rel = Self::relative(os_path)?;
        let root = self.open_root("list", os_path)?;
        let fd = match Self::open_in(root.as_fd(), &rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err("list", os_path)(e)),
        };
        let mut names: Vec<String> = sys::read_dir(fd.as_fd())
            .map_err(io_err("list", os_path))?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(Some(names))
    }

    /// Atomically replaces a file: temp file in the same directory, fsync, rename, fsync of
    /// the directory. Missing parents are created with mode 0755. A symlink at the path
    /// itself is replaced by the file, not followed.
    pub fn write(&self, os_path: &str, data: &[u8], mode: u32) -> Result<(), FsError> {
        let rel = self.check_writable(os_path)?;
        let split = Self::split(&rel);
        let Some(name) = split.name else {
            return Err(io_err("write", os_path)(io::Error::other(
                "the root is a directory",
            )));
        };
        let root = self.open_root("write", os_path)?;
        let dir = self.dir_in(os_path, root.as_fd(), &split.parent, true)?;
        self.check_resolved(os_path, root.as_fd(), dir.as_fd(), Some(name), false)?;
        write_in(dir.as_fd(), name, data, mode).map_err(io_err("write", os_path))
    }

    /// Creates a directory and its parents; the last one gets `mode`.
    pub fn create_dir(&self, os_path: &str, mode: u32) -> Result<(), FsError> {
        let rel = self.check_writable(os_path)?;
        let root = self.open_root("mkdir", os_path)?;
        let dir = self.dir_in(os_path, root.as_fd(), &rel, true)?;
        self.check_resolved(os_path, root.as_fd(), dir.as_fd(), None, false)?;
        sys::fchmod(dir.as_fd(), mode).map_err(io_err("mkdir", os_path))
    }

    /// Removes a file, a symlink (not what it points to) or a whole tree (never leaving it
    /// through a symlink). Absent is fine.
    pub fn remove(&self, os_path: &str) -> Result<(), FsError> {
        let rel = self.check_writable(os_path)?;
        let split = Self::split(&rel);
        let Some(name) = split.name else {
            return Err(io_err("remove", os_path)(io::Error::other(
                "refusing to remove the root",
            )));
        };
        let root = self.open_root("remove", os_path)?;
        let dir = match Self::open_in(root.as_fd(), &split.parent, libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(io_err("remove", os_path)(e)),
        };
        self.check_resolved(os_path, root.as_fd(), dir.as_fd(), Some(name), false)?;
        remove_at(dir.as_fd(), name).map_err(io_err("remove", os_path))
    }

    /// Removes leftover temporary files of atomic writes (see [`temp_name`]) at `os_path`:
    /// everywhere under it when it is a directory (without following symlinks), else next
    /// to it, only the ones of that file. Returns how many were removed.
    pub fn remove_temp_files(&self, os_path: &str) -> Result<usize, FsError> {
        let rel = self.check_writable(os_path)?;
        let root = self.open_root("clean", os_path)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        match Self::open_in(root.as_fd(), &rel, flags) {
            Ok(dir) => {
                self.check_resolved(os_path, root.as_fd(), dir.as_fd(), None, false)?;
                return remove_temp_files_under(dir.as_fd(), None, true)
                    .map_err(io_err("clean", os_path));
            }
            Err(e) if not_found(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => return Err(io_err("clean", os_path)(e)),
        }
        let split = Self::split(&rel);
        let Some(name) = split.name else {
            return Ok(0);
        };
        let dir = match Self::open_in(root.as_fd(), &split.parent, flags) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(0),
            Err(e) => return Err(io_err("clean", os_path)(e)),
        };
        self.check_resolved(os_path, root.as_fd(), dir.as_fd(), Some(name), false)?;
        remove_temp_files_under(dir.as_fd(), Some(name), false).map_err(io_err("clean", os_path))
    }
}

/// A file being written in place of another: the bytes go to a temporary file next to the
/// target (see [`temp_name`]), and only [`AtomicWrite::commit`] puts it in the target's
/// place. Dropped without a commit, the temporary file is removed and the target is as it
/// was.
pub trait AtomicWrite: Write + Send {
    /// fsync, rename over the target, fsync of the directory.
    fn commit(self: Box<Self>) -> Result<(), FsError>;
}

/// [`RootFs::create_atomic`]'s writer.
#[derive(Debug)]
pub struct AtomicFile {
    dir: OwnedFd,
    tmp: OsString,
    name: OsString,
    file: Option<fs::File>,
    path: String,
}

impl AtomicFile {
    /// Creates the temporary file for `name` in `dir` (`O_CREAT | O_EXCL | O_NOFOLLOW`)
    /// with permission bits `mode`.
    fn create(dir: OwnedFd, name: &OsStr, mode: u32, path: &str) -> io::Result<AtomicFile> {
        let (tmp, fd) = create_temp(dir.as_fd(), name, mode)?;
        let me = AtomicFile {
            dir,
            tmp,
            name: name.to_os_string(),
            file: Some(fs::File::from(fd)),
            path: path.to_string(),
        };
        // The umask may have masked bits off: set them exactly.
        sys::fchmod(me.file()?.as_fd(), mode)?;
        Ok(me)
    }

    fn file(&self) -> io::Result<&fs::File> {
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("the file was already committed"))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AtomicWrite for AtomicFile {
    fn commit(mut self: Box<Self>) -> Result<(), FsError> {
        let path = self.path.clone();
        let res = (|| {
            self.file()?.sync_all()?;
            sys::renameat(self.dir.as_fd(), &self.tmp, &self.name)?;
            // Renamed: nothing left to remove, whatever the directory's fsync says.
            self.file = None;
            sys::fsync(self.dir.as_fd())
        })();
        res.map_err(io_err("write", &path))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = sys::unlinkat(self.dir.as_fd(), &self.tmp, false);
        }
    }
}

impl RootFs {
    /// A streaming writer replacing the file at `os_path` atomically (see
    /// [`AtomicWrite`]): the same allow-list checks and root-contained resolution as
    /// [`RootFs::write`], missing parents created (0755).
    pub fn create_atomic(&self, os_path: &str, mode: u32) -> Result<AtomicFile, FsError> {
        let rel = self.check_writable(os_path)?;
        let split = Self::split(&rel);
        let Some(name) = split.name else {
            return Err(io_err("write", os_path)(io::Error::other(
                "the root is a directory",
            )));
        };
        let root = self.open_root("write", os_path)?;
        let dir = self.dir_in(os_path, root.as_fd(), &split.parent, true)?;
        self.check_resolved(os_path, root.as_fd(), dir.as_fd(), Some(name), false)?;
        AtomicFile::create(dir, name, mode, os_path).map_err(io_err("write", os_path))
    }

    /// Opens the file at `os_path` for reading, resolved inside the root; `Ok(None)` when
    /// it does not exist.
    pub fn open_file(&self, os_path: &str) -> Result<Option<fs::File>, FsError> {
        let rel = Self::relative(os_path)?;
        let root = self.open_root("read", os_path)?;
        // Non-blocking, so that a FIFO planted at the path cannot hang the open; anything
        // but a regular file is refused.
        match Self::open_in(root.as_fd(), &rel, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(fd) => {
                let file = fs::File::from(fd);
                let meta = file.metadata().map_err(io_err("read", os_path))?;
                if !meta.is_file() {
                    return Err(io_err("read", os_path)(io::Error::other(
                        "not a regular file",
                    )));
                }
                Ok(Some(file))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_err("read", os_path)(e)),
        }
    }

    /// `os_path` itself opened `O_PATH`, resolved inside the root (a symlink at or on the
    /// way to it resolves against the root): for reaching a unix socket through
    /// `/proc/self/fd/<fd>`, which then cannot lead outside the root.
    pub fn open_path(&self, os_path: &str) -> Result<OwnedFd, FsError> {
        let rel = Self::relative(os_path)?;
        let root = self.open_root("open", os_path)?;
        Self::open_in(root.as_fd(), &rel, libc::O_PATH).map_err(io_err("open", os_path))
    }

    /// The directory holding `os_path`, resolved inside the root, and the last component:
    /// for reaching an entry (a unix socket) by `/proc/self/fd/<dir>/<name>`, which cannot
    /// leave the root.
    pub fn parent_of(&self, os_path: &str) -> Result<(OwnedFd, OsString), FsError> {
        let rel = Self::relative(os_path)?;
        let split = Self::split(&rel);
        let Some(name) = split.name else {
            return Err(FsError::BadPath(os_path.to_string()));
        };
        let root = self.open_root("open", os_path)?;
        let dir = Self::open_in(
            root.as_fd(),
            &split.parent,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(io_err("open", os_path))?;
        Ok((dir, name.to_os_string()))
    }
}

/// A directory opened once, for a writer that owns it (the daemon's state store): files
/// in it are read and written relative to the descriptor, so the writes land in this
/// directory whatever later happens to its path.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the host directory `path`, creating it and missing parents with `mode` first.
    pub fn create(path: &Path, mode: u32) -> io::Result<Dir> {
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), mode)
            .create(path)?;
        Ok(Dir {
            fd: sys::open(path, libc::O_RDONLY | libc::O_DIRECTORY)?,
            path: path.to_path_buf(),
        })
    }

    /// Where the directory was when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads file `name`; `Ok(None)` when it does not exist. A symlink is not followed.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let fd = match sys::openat(
            self.fd.as_fd(),
            OsStr::new(name),
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut data = vec![];
        fs::File::from(fd).read_to_end(&mut data)?;
        Ok(Some(data))
    }

    /// Atomically replaces file `name` (see [`write_in`]).
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        write_in(self.fd.as_fd(), OsStr::new(name), data, mode)
    }

    /// Entry names, unsorted.
    pub fn list(&self) -> io::Result<Vec<OsString>> {
        sys::read_dir(self.fd.as_fd())
    }

    /// Removes file (or symlink) `name`; absent is fine.
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        ignore_not_found(sys::unlinkat(self.fd.as_fd(), name, false))
    }

    /// Removes the leftover temporary files of atomic writes in this directory (see
    /// [`remove_temp_files`]).
    pub fn remove_temp_files(&self) -> io::Result<usize> {
        remove_temp_files(self.fd.as_fd())
    }
}

impl RootFs {
    /// Opens (creating when missing, the last one with `mode`) a directory under the root
    /// for a writer that owns it, resolved inside the root like every other operation.
    pub fn create_dir_handle(&self, os_path: &str, mode: u32) -> Result<Dir, FsError> {
        self.create_dir(os_path, mode)?;
        let rel = Self::relative(os_path)?;
        let root = self.open_root("open", os_path)?;
        let fd = self.dir_in(os_path, root.as_fd(), &rel, false)?;
        self.check_resolved(os_path, root.as_fd(), fd.as_fd(), None, false)?;
        Ok(Dir {
            fd,
            path: self.resolve(os_path)?,
        })
    }
}

/// Removes `name` in `dir`: a file or symlink is unlinked; a directory is emptied
/// depth-first through descriptors opened with `O_NOFOLLOW` (a symlink inside is removed,
/// never entered), then removed. Absent is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match sys::lstatat(dir, name) {
        Ok(st) => st,
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if kind_of(&st) != StatKind::Dir {
        return ignore_not_found(sys::unlinkat(dir, name, false));
    }
    let sub = match sys::openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if not_found(&e) => return Ok(()),
        // Replaced by a symlink or a file since the stat: remove that instead.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            return ignore_not_found(sys::unlinkat(dir, name, false))
        }
        Err(e) => return Err(e),
    };
    for entry in sys::read_dir(sub.as_fd())? {
        remove_at(sub.as_fd(), &entry)?;
    }
    ignore_not_found(sys::unlinkat(dir, name, true))
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if not_found(&e) => Ok(()),
        other => other,
    }
}

/// Marks the end of every temporary file name (see [`temp_name`]).
pub const TEMP_SUFFIX: &str = ".incus-osd-tmp";

/// Random hex digits in a temporary file name.
const TEMP_RANDOM_HEX: usize = 32;

/// At most this many bytes of the target's name go into its temporary file's name (so the
/// temporary name stays under the 255-byte limit).
const TEMP_NAME_MAX: usize = 100;

/// The temporary file name for an atomic write of `name`:
/// `.<name>.<32 random hex digits>.incus-osd-tmp` (`<name>` cut to 100 bytes). Hidden, with
/// a suffix no configuration directory includes (`*.conf`, `*.service`, `*.res`), so a
/// leftover is inert until [`remove_temp_files`] clears it.
pub fn temp_name(name: &OsStr) -> io::Result<OsString> {
    let cut = cut_name(name);
    let mut out = Vec::with_capacity(cut.len() + TEMP_RANDOM_HEX + TEMP_SUFFIX.len() + 2);
    out.push(b'.');
    out.extend_from_slice(cut);
    out.push(b'.');
    out.extend_from_slice(crate::random::hex(TEMP_RANDOM_HEX / 2)?.as_bytes());
    out.extend_from_slice(TEMP_SUFFIX.as_bytes());
    Ok(OsStr::from_bytes(&out).to_os_string())
}

/// The part of `name` that goes into its temporary file's name.
fn cut_name(name: &OsStr) -> &[u8] {
    let bytes = name.as_bytes();
    let mut cut = bytes.len().min(TEMP_NAME_MAX);
    // Keep UTF-8 names whole where they are UTF-8.
    if let Ok(s) = std::str::from_utf8(bytes) {
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
    }
    &bytes[..cut]
}

/// If `entry` is a temporary file name made by [`temp_name`], the (possibly cut) name of
/// the file it was for.
pub fn temp_target(entry: &OsStr) -> Option<&[u8]> {
    let b = entry.as_bytes();
    let rest = b.strip_prefix(b".")?.strip_suffix(TEMP_SUFFIX.as_bytes())?;
    let split = rest.len().checked_sub(TEMP_RANDOM_HEX + 1)?;
    let (target, random) = rest.split_at(split);
    (random[0] == b'.' && random[1..].iter().all(u8::is_ascii_hexdigit) && !target.is_empty())
        .then_some(target)
}

fn is_temp_for(entry: &OsStr, name: &OsStr) -> bool {
    temp_target(entry) == Some(cut_name(name))
}

/// Removes temporary files in the directory `dir` (only those of `only` when given),
/// descending into subdirectories when `recursive` (never through a symlink). Returns how
/// many were removed.
fn remove_temp_files_under(
    dir: BorrowedFd<'_>,
    only: Option<&OsStr>,
    recursive: bool,
) -> io::Result<usize> {
    let mut removed = 0;
    for entry in sys::read_dir(dir)? {
        let st = match sys::lstatat(dir, &entry) {
            Ok(st) => st,
            Err(e) if not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        let kind = kind_of(&st);
        if kind == StatKind::Dir {
            if recursive {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                if let Ok(sub) = sys::openat(dir, &entry, flags, 0) {
                    removed += remove_temp_files_under(sub.as_fd(), None, true)?;
                }
            }
            continue;
        }
        let wanted = match only {
            Some(name) => is_temp_for(&entry, name),
            None => temp_target(&entry).is_some(),
        };
        if wanted {
            ignore_not_found(sys::unlinkat(dir, &entry, false))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the leftover temporary files of atomic writes in directory `dir` (not below
/// it). Returns how many were removed.
pub fn remove_temp_files(dir: BorrowedFd<'_>) -> io::Result<usize> {
    remove_temp_files_under(dir, None, false)
}

/// Creates a new temporary file for `name` in `dir` (`O_CREAT | O_EXCL | O_NOFOLLOW`,
/// never an existing file or a symlink planted at its name).
fn create_temp(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<(OsString, OwnedFd)> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let mut attempt = 0;
    loop {
        let tmp = temp_name(name)?;
        match sys::openat(dir, &tmp, flags, mode & 0o777) {
            Ok(fd) => return Ok((tmp, fd)),
            // Someone holds that name (a 2^-128 chance unless it was planted): another one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `data` as `name` in the open directory `dir`, atomically and durably, with
/// permission bits `mode`: a new temporary file (`O_CREAT | O_EXCL | O_NOFOLLOW`, never an
/// existing file or a symlink planted at its name), written, fsynced, renamed over `name`,
/// then the directory fsynced. On failure the temporary file is removed and `name` is
/// untouched.
pub fn write_in(dir: BorrowedFd<'_>, name: &OsStr, data: &[u8], mode: u32) -> io::Result<()> {
    let (tmp, fd) = create_temp(dir, name, mode)?;
    let mut f = fs::File::from(fd);
    let res = (|| {
        // The umask may have masked bits off: set them exactly.
        sys::fchmod(f.as_fd(), mode)?;
        f.write_all(data)?;
        f.sync_all()?;
        sys::renameat(dir, &tmp, name)?;
        sys::fsync(dir)
    })();
    if res.is_err() {
        let _ = sys::unlinkat(dir, &tmp, false);
    }
    res
}

/// Writes `data` to `path` atomically and durably, with permission bits `mode` (see
/// [`write_in`]). Missing parent directories are created (0755). `path` is a host path,
/// taken as given: for OS paths under a root prefix use [`RootFs::write`].
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o755)
        .create(dir)?;
    let dirfd = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    write_in(dirfd.as_fd(), name, data, mode)
}

mod more;
pub use more::{Facts, OpenOptions};

#[cfg(test)]
mod tests;
