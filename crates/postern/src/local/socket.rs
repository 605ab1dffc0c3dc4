//! The submission socket: where `postern sendmail` hands over messages.
//!
//! # Security
//!
//! Any local user may connect (mode 0666). The peer's uid, gid and pid come from the
//! kernel (SO_PEERCRED). Reads are bounded in size and time, so a client cannot hold
//! memory or a task forever.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::request::{MAX_REQUEST_LINE, Request, Response, exit};
use super::submission;
use crate::accept_loop;
use crate::attribution::LocalClient;
use crate::context::{Context, Counted};
use crate::shutdown::{SessionGuard, Shutdown};

/// The whole submission (request and message) must arrive within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Every local user may submit mail.
pub const SUBMISSION_MODE: u32 = 0o666;

/// Accepts submissions until `shutdown`; each connection holds `session` until it ends.
pub async fn accept(
    ctx: Arc<Context>,
    listener: UnixListener,
    shutdown: Shutdown,
    session: SessionGuard,
) {
    accept_loop::run("local", listener, shutdown, Some(session), |stream| {
        handle(ctx.clone(), stream)
    })
    .await;
}

async fn handle(ctx: Arc<Context>, mut stream: UnixStream) {
    let _counted = Counted::new(ctx.clone(), "local");
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
            tracing::info!(event = "rejected", origin = "local", uid = client.user.uid, user = %client.user.name, reason = refusal.reason().as_str());
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
