//! The API socket and private directories.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::daemon::StartError;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.display().to_string();
    move |source| StartError::Io { what, path, source }
}

/// Creates `dir` (and parents) and sets its mode exactly.
pub fn private_dir(dir: &Path, mode: u32) -> Result<(), StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
        .map_err(io("cannot create directory", dir))
}

/// Binds the API socket: its directory 0700, the socket 0600. A stale socket is removed;
/// a live one (another daemon answers) is refused.
pub fn bind_socket(path: &Path) -> Result<UnixListener, StartError> {
    if let Some(dir) = path.parent() {
        private_dir(dir, 0o700)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StartError::AlreadyRunning(path.display().to_string()));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io("cannot remove stale socket", path))?;
        }
        Ok(_) => {
            return Err(StartError::Io {
                what: "refusing to replace",
                path: path.display().to_string(),
                source: std::io::Error::other("it exists and is not a socket"),
            })
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(io("cannot listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot set the mode of", path))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_daemon_on_a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/incus-os/unix.socket");
        let l = bind_socket(&sock).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock), 0o600);
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        let err = bind_socket(&sock).unwrap_err();
        assert!(matches!(err, StartError::AlreadyRunning(_)), "{err}");
        drop(l); // the socket file stays behind: stale
        assert!(sock.exists());
        let _l2 = bind_socket(&sock).unwrap();
    }
}
