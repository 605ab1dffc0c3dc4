//! The one accept loop of every listening socket (SMTP over TCP, the local submission
//! socket, the control socket), with one error policy.
//!
//! A failed `accept` is either about one connection (the client gave up: try the next
//! one at once) or about the whole process (out of file descriptors or memory: the
//! pending connection stays in the backlog, so trying again at once would spin at full
//! CPU and flood the log). For the second kind the loop waits, doubling the wait from
//! 10 ms to 1 s while it lasts, as mini-redis does.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::shutdown::{SessionGuard, Shutdown};

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A socket that hands out connections.
pub trait Listen: Send + 'static {
    type Connection: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send;
}

impl Listen for TcpListener {
    type Connection = (TcpStream, std::net::SocketAddr);
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send {
        self.accept()
    }
}

impl Listen for UnixListener {
    type Connection = UnixStream;
    async fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts until `shutdown`, running `serve` for each connection in its own task. Each
/// task holds a guard from `track` (when given) until `serve` returns, so the daemon can
/// wait for open sessions to finish.
pub async fn run<L, F, Fut>(
    name: &str,
    listener: L,
    mut shutdown: Shutdown,
    track: Option<SessionGuard>,
    serve: F,
) where
    L: Listen,
    F: Fn(L::Connection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept_one() => accepted,
            _ = shutdown.requested() => return,
        };
        match accepted {
            Ok(connection) => {
                backoff = FIRST_BACKOFF;
                let guard = track.clone();
                let session = serve(connection);
                tokio::spawn(async move {
                    session.await;
                    drop(guard);
                });
            }
            Err(e) if exhausts_the_process(&e) => {
                tracing::warn!(event = "accept_failed", listener = %name, error = %e, retry_ms = backoff.as_millis() as u64);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.requested() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::debug!(event = "accept_failed", listener = %name, error = %e);
            }
        }
    }
}

/// Anything but an error about the one connection being accepted (the client reset
/// it, a firewall refused it) is about the process: out of descriptors, buffers or
/// memory, or worse. Those back off.
fn exhausts_the_process(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let about_one_connection = error.raw_os_error().map(Errno::from_raw).is_some_and(|e| {
        matches!(
            e,
            Errno::ECONNABORTED | Errno::ECONNRESET | Errno::EPROTO | Errno::EPERM | Errno::EINTR
        )
    });
    !about_one_connection
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_backs_off_a_client_that_gave_up_does_not() {
        let emfile = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        let enfile = io::Error::from_raw_os_error(nix::errno::Errno::ENFILE as i32);
        let aborted = io::Error::from_raw_os_error(nix::errno::Errno::ECONNABORTED as i32);
        assert!(exhausts_the_process(&emfile));
        assert!(exhausts_the_process(&enfile));
        assert!(!exhausts_the_process(&aborted));
    }
}
