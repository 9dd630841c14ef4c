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
    }
}
