//! The control socket: how `postern queue flush|delete` act on the running server's
//! queue without racing its deliveries.
//!
//! One line in (`status`, `flush`, `flush ID`, `delete ID`), one line out (`ok …` or
//! `error …`). The socket lives in `data_dir` with mode 0600, and the peer must be root
//! or the server's own user.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::accept_loop;
use crate::context::Context;
use crate::queue::QueueId;
use crate::shutdown::Shutdown;
use crate::unix_socket::{self, SocketError};

pub const SOCKET_NAME: &str = "control.sock";
const MAX_LINE: u64 = 256;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

pub fn bind(data_dir: &Path) -> Result<UnixListener, SocketError> {
    unix_socket::bind(&socket_path(data_dir), 0o600)
}

/// Answers commands until `shutdown`. Not counted as a session: a command in progress
/// does not hold up the stop.
pub async fn serve(ctx: Arc<Context>, listener: UnixListener, shutdown: Shutdown) {
    accept_loop::run("control", listener, shutdown, None, |stream| {
        let ctx = ctx.clone();
        async move { handle(&ctx, stream).await }
    })
    .await;
}

async fn handle(ctx: &Context, mut stream: UnixStream) {
    if !peer_allowed(&stream) {
        let _ = stream.write_all(b"error permission denied\n").await;
        return;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(&mut stream).take(MAX_LINE);
    let read = reader.read_line(&mut line);
    let answer = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(_)) => execute(ctx, line.trim()).await,
        _ => "error no command received".to_string(),
    };
    drop(reader);
    let _ = stream.write_all(format!("{answer}\n").as_bytes()).await;
}

/// Root, or the user the server runs as.
fn peer_allowed(stream: &UnixStream) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == 0 || cred.uid() == me)
}

async fn execute(ctx: &Context, line: &str) -> String {
    let mut words = line.split_whitespace();
    let (command, argument) = (words.next().unwrap_or(""), words.next());
    let id = argument.map(|a| QueueId::parse(a).ok_or(a));
    match (command, id) {
        ("status", None) => {
            let queue = ctx
                .spool
                .list()
                .map_or_else(|e| format!("unknown ({e})"), |l| l.len().to_string());
            format!(
                "ok since={} pid={} connections={} queue={queue}",
                ctx.started
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                std::process::id(),
                ctx.active.load(std::sync::atomic::Ordering::Relaxed),
            )
        }
        ("flush", None) => {
            ctx.delivery.flush(None);
            "ok flushing the whole queue".to_string()
        }
        ("flush", Some(Ok(id))) => {
            ctx.delivery.flush(Some(id.clone()));
            format!("ok flushing {id}")
        }
        ("delete", Some(Ok(id))) => match ctx.delivery.delete(id.clone()).await {
            Ok(()) => format!("ok deleted {id}"),
            Err(e) => format!("error {e}"),
        },
        (_, Some(Err(bad))) => format!("error {bad:?} is not a queue ID"),
        _ => "error unknown command; use status, flush [ID] or delete ID".to_string(),
    }
}
