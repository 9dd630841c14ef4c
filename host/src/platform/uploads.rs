//! Where uploaded archives wait on disk before a plugin reads them.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// An anonymous file (0600) in `dir`, which is created 0700 if missing. On Linux the file
/// never has a name (`O_TMPFILE`; elsewhere it is unlinked at once), so it is gone when
/// the handle is dropped, and nothing is left behind even if the daemon is killed.
///
/// `dir` should be on the state disk, not a tmpfs: an upload may be large.
pub fn anonymous_file(dir: &Path) -> io::Result<File> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let file = tempfile::tempfile_in(dir)?;
    // `O_TMPFILE` takes the umask's mode: make it private before anything is written.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Room an upload must leave on the state disk: a tenth of it, at most 1 GiB. Uploads are
/// refused before they eat into it, so the state document and the plugins' files can
/// still be saved whatever clients send.
pub fn reserve(total: u64) -> u64 {
    (total / 10).min(1 << 30)
}

/// Whether the filesystem holding `file` still has more than the [`reserve`] free.
pub fn has_room(file: &File) -> io::Result<bool> {
    let (free, total) = space(file)?;
    Ok(free > reserve(total))
}

/// The bytes free (for an unprivileged writer) and the size of the filesystem holding the
/// open file or directory `file`.
#[allow(unsafe_code)] // audited: fstatvfs into a zeroed struct we own, on a descriptor we hold
pub fn space(file: &File) -> io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: statvfs is plain data; fstatvfs fills it for a valid descriptor.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a struct that outlives the call.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn the_file_has_no_name_and_is_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("uploads");
        let mut f = anonymous_file(&dir).unwrap();
        f.write_all(b"archive").unwrap();
        f.rewind().unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "archive");
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name left");
        // This test's disk is not full.
        assert!(has_room(&f).unwrap());
    }

    #[test]
    fn the_reserve_is_a_tenth_of_the_disk_at_most_one_gib() {
        assert_eq!(reserve(8 << 30), 858_993_459);
        assert_eq!(reserve(100 << 30), 1 << 30);
        assert_eq!(reserve(0), 0);
    }
}
