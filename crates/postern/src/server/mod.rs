//! The SMTP front door: bind the listeners, accept, and run one [`connection`] task per
//! client.
//!
//! This layer moves bytes and answers the protocol session's questions through the
//! policy, auth and queue modules; it decides nothing itself.
//!
//! # Security
//!
//! Listeners face the Internet. No client address is trusted (loopback included);
//! passwords are accepted only inside TLS; every refusal is logged with the client IP.

pub mod connection;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::accept_loop;
use crate::config::{Config, Listener};
use crate::context::Context;
use crate::shutdown::{SessionGuard, Shutdown};

#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot bind {addr}: {source}")]
pub struct BindError {
    name: String,
    addr: SocketAddr,
    source: std::io::Error,
}

/// A bound listener, ready to accept.
pub struct Bound {
    pub listener: Listener,
    pub socket: TcpListener,
}

impl Bound {
    /// The address actually bound (a configured port 0 becomes the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or(self.listener.addr)
    }
}

/// Binds every configured listener, or fails naming the one that could not be bound.
pub async fn bind(config: &Config) -> Result<Vec<Bound>, BindError> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.addr)
            .await
            .map_err(|source| BindError {
                name: listener.name.clone(),
                addr: listener.addr,
                source,
            })?;
        bound.push(Bound {
            listener: listener.clone(),
            socket,
        });
    }
    Ok(bound)
}

/// Accepts on one listener until `shutdown`, one [`connection`] task per client; each
/// task holds `session` until it ends.
pub async fn accept(ctx: Arc<Context>, bound: Bound, shutdown: Shutdown, session: SessionGuard) {
    let Bound { listener, socket } = bound;
    let name = listener.name.clone();
    let stop = shutdown.clone();
    accept_loop::run(&name, socket, shutdown, Some(session), |(tcp, peer)| {
        connection::serve(ctx.clone(), listener.clone(), tcp, peer, stop.clone())
    })
    .await;
}
