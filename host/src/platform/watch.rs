//! Knowing cheaply whether files changed: an inotify watch over a few directories, asked
//! with one non-blocking read.
//!
//! `GET /1.0` reports the machine id and the other boot image, which an operator or an
//! update may change at any time, and it is the API's hottest path: re-reading them on
//! every request cost more than the rest of the request together, and even one system
//! call per request (asking inotify) cost a tenth of the throughput. A [`DirWatch`] says
//! whether anything happened in their directories since it last answered; a thread waits
//! for the events, so asking is one atomic operation, and the caller re-reads only then.
//! When inotify is not available, every question answers "changed", which is correct,
//! only slower.
#![allow(unsafe_code)] // audited: inotify_init1, inotify_add_watch and read on a descriptor this module owns

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
/// ancestor is watched, so the directory's creation is seen too. A thread waits for the
/// events and raises a flag; asking costs one atomic swap.
#[derive(Debug)]
pub struct DirWatch {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Something happened since the last [`DirWatch::changed`] that returned `true`.
    dirty: AtomicBool,
    /// The watch could not be set up (or kept): every question answers "changed".
    broken: AtomicBool,
}

impl DirWatch {
    /// A watch over `dirs` (real paths). It starts out "changed".
    pub fn new(dirs: Vec<PathBuf>) -> DirWatch {
        let shared = Arc::new(Shared {
            dirty: AtomicBool::new(true),
            broken: AtomicBool::new(false),
        });
        let started = arm(&dirs).and_then(|fd| {
            let theirs = shared.clone();
            std::thread::Builder::new()
                .name("incus-osd-watch".into())
                .spawn(move || watch(dirs, fd, theirs))
                .ok()
        });
        if started.is_none() {
            shared.broken.store(true, Ordering::Release);
        }
        DirWatch { shared }
    }

    /// Whether anything may have changed since the last call that returned `true` (or
    /// since creation). The watcher re-arms before it raises the flag, so a change made
    /// while the caller reads is reported by a later call. A change shows as soon as the
    /// watcher thread has run (microseconds after the write).
    pub fn changed(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire)
            || self.shared.dirty.swap(false, Ordering::AcqRel)
    }
}

/// The watcher thread: waits for events, re-arms (directories may have been created,
/// replaced or removed), raises the flag. It ends once its [`DirWatch`] is gone (checked
/// every half second).
fn watch(dirs: Vec<PathBuf>, mut fd: OwnedFd, shared: Arc<Shared>) {
    loop {
        if Arc::strong_count(&shared) == 1 {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 500) };
        if n <= 0 {
            continue;
        }
        if !drain(&fd) {
            continue;
        }
        match arm(&dirs) {
            Some(new) => fd = new,
            None => {
                shared.broken.store(true, Ordering::Release);
                return;
            }
        }
        shared.dirty.store(true, Ordering::Release);
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

    /// Waits (at most 2 s) for the watcher thread to report a change.
    fn sees_change(w: &DirWatch) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < until {
            if w.changed() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    /// Once the events of the last change are consumed (one change can be several
    /// events, reported once or twice), nothing more is reported while nothing happens.
    fn quiet(w: &DirWatch) -> bool {
        std::thread::sleep(std::time::Duration::from_millis(50));
        w.changed();
        std::thread::sleep(std::time::Duration::from_millis(50));
        !w.changed()
    }

    #[test]
    fn changes_in_watched_directories_and_their_creation_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let later = dir.path().join("boot/EFI/Linux");
        let w = DirWatch::new(vec![etc.clone(), later.clone()]);
        assert!(w.changed(), "a new watch starts out changed");
        assert!(quiet(&w));
        std::fs::write(etc.join("machine-id"), "a\n").unwrap();
        assert!(sees_change(&w));
        assert!(quiet(&w));
        // Replaced by a rename, as atomic writes do.
        std::fs::write(etc.join(".tmp"), "b\n").unwrap();
        std::fs::rename(etc.join(".tmp"), etc.join("machine-id")).unwrap();
        assert!(sees_change(&w));
        assert!(quiet(&w));
        // A directory that did not exist: its creation, then a file in it.
        std::fs::create_dir_all(&later).unwrap();
        assert!(sees_change(&w));
        assert!(quiet(&w));
        std::fs::write(later.join("IncusOS_1.efi"), "").unwrap();
        assert!(sees_change(&w));
        assert!(quiet(&w));
        std::fs::remove_file(later.join("IncusOS_1.efi")).unwrap();
        assert!(sees_change(&w));
        assert!(quiet(&w));
    }
}
