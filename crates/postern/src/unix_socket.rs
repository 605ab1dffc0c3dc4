//! Creating a Unix-domain listening socket safely: the local submission socket and the
//! control socket both come from here.
//!
//! # Security
//!
//! The socket's directory may belong to the service user of an earlier run, so nothing
//! here follows a path twice: a stale socket is replaced only when nothing answers on
//! it and it is a socket, and the mode comes from the umask at creation, never from a
//! `chmod` by path that a link swapped in could redirect.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another postern server is already listening there")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; remove it or choose another socket path")]
    NotASocket { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Creates the socket with `mode`, replacing a stale one left by a server that died,
/// but never a live one or a file that is not a socket.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let io_err = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let umask = nix::sys::stat::Mode::from_bits_truncate(0o777 & !mode);
    let previous = nix::sys::stat::umask(umask);
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    bound.map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_and_regular_file_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/submit.sock");
        let first = bind(&path, 0o666).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        assert!(matches!(bind(&path, 0o666), Err(SocketError::InUse { .. })));
        drop(first);
        // The file stays behind after the listener is gone: stale, so replaced.
        assert!(path.exists());
        bind(&path, 0o666).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind(&file, 0o666),
            Err(SocketError::NotASocket { .. })
        ));
        assert!(file.exists());
    }
}
