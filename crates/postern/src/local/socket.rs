//! The submission socket: where `postern sendmail` hands over messages.
//!
//! # Security
//!
//! Any local user may connect (mode 0666). The peer's uid, gid and pid come from the
//! kernel (SO_PEERCRED). Reads are bounded in size and time, so a client cannot hold
//! memory or a task forever.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use super::attribution::LocalClient;
use super::request::{MAX_REQUEST_LINE, Request, Response, exit};
use super::submission;
use crate::server::Context;

/// The whole submission (request and message) must arrive within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Every local user may submit mail.
pub const SUBMISSION_MODE: u32 = 0o666;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another postern server is already listening there")]
    InUse { path: PathBuf },
    #[error(
        "{path}: exists and is not a socket; remove it or choose another local_submission.socket"
    )]
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
    // The mode comes from the umask at creation, not a chmod afterwards: a chmod by path
    // would follow a link swapped in at that path (the directory may belong to the
    // service user of an earlier run).
    let umask = nix::sys::stat::Mode::from_bits_truncate(0o777 & !mode);
    let previous = nix::sys::stat::umask(umask);
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    bound.map_err(io_err)
}

/// Accepts submissions until `shutdown`; each connection holds an `alive` sender.
pub async fn serve(
    ctx: Arc<Context>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    let alive = alive.clone();
                    tokio::spawn(async move {
                        handle(ctx, stream).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    tracing::warn!(event = "accept_failed", listener = "local", error = %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

async fn handle(ctx: Arc<Context>, mut stream: UnixStream) {
    let _counted = crate::server::connection::Counted::new(ctx.clone(), "local");
    handle_submission(&ctx, &mut stream).await;
}

async fn handle_submission(ctx: &Context, stream: &mut UnixStream) {
    let client = match peer(stream).await {
        Some(c) => c,
        None => {
            let r = Response::new(
                exit::TEMPORARY,
                "cannot identify the submitting user; try again",
            );
            return respond(stream, &r).await;
        }
    };
    // The same connection limits as SMTP, per Unix user: the socket is open to everyone.
    let limits = &ctx.settings().config.limits;
    let key = format!("uid:{}", client.user.uid);
    let _ticket = match ctx.admission.admit(&key, limits, std::time::Instant::now()) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            tracing::info!(event = "rejected", origin = "local", uid = client.user.uid, user = %client.user.name, reason = refusal.reason());
            let r = Response::new(
                exit::TEMPORARY,
                "too many submissions at once from your user; try again in a moment",
            );
            return respond(stream, &r).await;
        }
    };
    let max = ctx.settings().config.limits.max_message_size;
    let received = tokio::time::timeout(READ_TIMEOUT, read_submission(stream, max)).await;
    let response = match received {
        Err(_) => Response::new(
            exit::TEMPORARY,
            "timed out waiting for the message; try again",
        ),
        Ok(Err(r)) => r,
        Ok(Ok((request, message))) => submission::submit(ctx, &client, request, &message).await,
    };
    respond(stream, &response).await;
}

/// Who is on the other end, from the kernel and /proc.
async fn peer(stream: &UnixStream) -> Option<LocalClient> {
    let cred = stream.peer_cred().ok()?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    tokio::task::spawn_blocking(move || LocalClient::from_peer(uid, gid, pid))
        .await
        .ok()
}

/// Reads the request line and the message (until the client shuts down its side).
async fn read_submission(
    stream: &mut UnixStream,
    max_message: usize,
) -> Result<(Request, Vec<u8>), Response> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let n = (&mut reader)
        .take(MAX_REQUEST_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| Response::new(exit::TEMPORARY, format!("reading the request: {e}")))?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(Response::new(
            exit::USAGE,
            "malformed request: expected one JSON line",
        ));
    }
    let request: Request = serde_json::from_slice(&line)
        .map_err(|e| Response::new(exit::USAGE, format!("malformed request: {e}")))?;
    let mut message = Vec::new();
    // One byte over the limit is enough to know it is too big.
    let limit = max_message as u64 + 1;
    (&mut reader)
        .take(limit)
        .read_to_end(&mut message)
        .await
        .map_err(|e| Response::new(exit::TEMPORARY, format!("reading the message: {e}")))?;
    if message.len() > max_message {
        return Err(Response::new(
            exit::DATA_ERROR,
            format!("message too big: the limit is {max_message} bytes"),
        ));
    }
    Ok((request, message))
}

async fn respond(stream: &mut UnixStream, response: &Response) {
    let Ok(mut line) = serde_json::to_vec(response) else {
        return;
    };
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
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
