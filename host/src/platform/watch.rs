//! Knowing cheaply whether files changed: an inotify watch over a few directories, asked
//! with one non-blocking read.
//!
//! `GET /1.0` reports the machine id and the other boot image, which an operator or an
//! update may change at any time, and it is the API's hottest path: re-reading them on
//! every request cost more than the rest of the request together. A [`DirWatch`] says
//! whether anything happened in their directories since it last answered; the caller
//! re-reads only then. When inotify is not available, every question answers "changed",
//! which is correct, only slower.
#![allow(unsafe_code)] // audited: inotify_init1, inotify_add_watch and read on a descriptor this module owns

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a watched directory reports: its entries appearing, going, being rewritten or
/// changing attributes, and the directory itself going away.
const EVENTS: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// A watch over directories that may not exist yet: for each, its deepest existing
/// ancestor is watched, so the directory's creation is seen too.
#[derive(Debug)]
pub struct DirWatch {
    dirs: Vec<PathBuf>,
    fd: Option<OwnedFd>,
}

impl DirWatch {
    /// A watch over `dirs` (real paths). It starts out "changed".
    pub fn new(dirs: Vec<PathBuf>) -> DirWatch {
        DirWatch { dirs, fd: None }
    }

    /// Whether anything may have changed since the last call that returned `true` (or
    /// since creation). After a `true`, the watch is set up again before the caller reads,
    /// so a change made while it reads is reported by the next call.
    pub fn changed(&mut self) -> bool {
        let Some(fd) = &self.fd else {
            self.fd = arm(&self.dirs);
            return true;
        };
        if !drain(fd) {
            return false;
        }
        // Directories may have been created, replaced or removed: watch afresh.
        self.fd = arm(&self.dirs);
        true
    }
}

/// A new inotify descriptor watching each directory (or its deepest existing ancestor).
/// `None` when inotify cannot be used.
fn arm(dirs: &[PathBuf]) -> Option<OwnedFd> {
    // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "inotify unavailable: files are read on every request"
        );
        return None;
    }
    // SAFETY: `raw` is a descriptor we just created and own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for dir in dirs {
        let existing = deepest_existing(dir)?;
        let c = CString::new(existing.as_os_str().as_bytes()).ok()?;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), EVENTS) } < 0 {
            return None;
        }
    }
    Some(fd)
}

fn deepest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|p| p.is_dir()).map(Path::to_path_buf)
}

/// Reads every pending event; true when there was at least one (or the descriptor
/// failed, which also means "look again").
fn drain(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 4096];
    let mut any = false;
    loop {
        // SAFETY: reads at most `buf.len()` bytes into a buffer we own exclusively.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            any = true;
            continue;
        }
        if n == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => any,
            Some(libc::EINTR) => continue,
            _ => true,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_in_watched_directories_and_their_creation_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let later = dir.path().join("boot/EFI/Linux");
        let mut w = DirWatch::new(vec![etc.clone(), later.clone()]);
        assert!(w.changed(), "a new watch starts out changed");
        assert!(!w.changed());
        std::fs::write(etc.join("machine-id"), "a\n").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        // Replaced by a rename, as atomic writes do.
        std::fs::write(etc.join(".tmp"), "b\n").unwrap();
        std::fs::rename(etc.join(".tmp"), etc.join("machine-id")).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        // A directory that did not exist: its creation, then a file in it.
        std::fs::create_dir_all(&later).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::write(later.join("IncusOS_1.efi"), "").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::remove_file(later.join("IncusOS_1.efi")).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
    }
}
