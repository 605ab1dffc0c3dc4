//! The SMTP listeners: bind, accept, and run one [`connection`] task per client.
//!
//! This layer moves bytes and answers the protocol session's questions through the
//! policy, auth and queue modules; it decides nothing itself.
//!
//! # Security
//!
//! Listeners face the Internet. No client address is trusted (loopback included);
//! passwords are accepted only inside TLS; every refusal is logged with the client IP.

pub mod admission;
pub mod connection;
pub mod control;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::auth::Credentials;
use crate::auth::guard::FailureGuard;
use crate::config::{Config, Listener};
use crate::delivery::dispatcher::Dispatcher;
use crate::queue::Spool;
use crate::ratelimit::RateLimiter;

/// What a reload (SIGHUP) replaces: a connection keeps the settings it started with.
pub struct Settings {
    pub config: Config,
    pub tls: TlsAcceptor,
    pub users: Arc<dyn Credentials>,
    /// DKIM signing of submitted mail.
    pub signer: Arc<crate::mailauth::sign::Signer>,
    /// SPF, DKIM and DMARC verdicts on mail arriving on mx.
    pub verifier: Arc<crate::mailauth::verify::Verifier>,
}

/// What every connection shares.
pub struct Context {
    settings: RwLock<Arc<Settings>>,
    pub spool: Spool,
    pub delivery: Dispatcher,
    /// Messages per hour per login and per Unix user.
    pub rates: RateLimiter,
    /// Failed logins per client.
    pub auth_failures: FailureGuard,
    pub started: chrono::DateTime<chrono::Utc>,
    /// Connections open now (SMTP and local submission).
    pub active: AtomicUsize,
    /// Connection limits, total and per client.
    pub admission: Arc<admission::Admission>,
}

impl Context {
    pub fn new(settings: Settings, spool: Spool, delivery: Dispatcher) -> Context {
        Context {
            settings: RwLock::new(Arc::new(settings)),
            spool,
            delivery,
            rates: RateLimiter::default(),
            auth_failures: FailureGuard::default(),
            started: chrono::Utc::now(),
            active: AtomicUsize::new(0),
            admission: Arc::default(),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }
}

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

/// Accepts on every listener until `shutdown` turns true, then waits up to `grace`
/// for the open sessions to finish (each ends at its next command with `421`).
pub async fn run(
    ctx: Arc<Context>,
    bound: Vec<Bound>,
    local: Option<UnixListener>,
    control_socket: UnixListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    tokio::spawn(control::serve(
        ctx.clone(),
        control_socket,
        shutdown.clone(),
    ));
    // Each connection task holds a sender; when all are dropped, all have ended.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    for b in bound {
        tokio::spawn(accept_loop(ctx.clone(), b, shutdown.clone(), alive.clone()));
    }
    if let Some(listener) = local {
        let (ctx, shutdown, alive) = (ctx.clone(), shutdown.clone(), alive.clone());
        tokio::spawn(crate::local::socket::serve(ctx, listener, shutdown, alive));
    }
    drop(alive);
    stopped(&mut shutdown).await;
    if tokio::time::timeout(grace, all_ended.recv()).await.is_err() {
        tracing::warn!(
            event = "shutdown_timeout",
            msg = "sessions still open after the grace period were cut off"
        );
    }
}

async fn accept_loop(
    ctx: Arc<Context>,
    bound: Bound,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut stop = shutdown.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            accepted = bound.socket.accept() => match accepted {
                Ok((tcp, peer)) => {
                    backoff = Duration::from_millis(10);
                    let ctx = ctx.clone();
                    let listener = bound.listener.clone();
                    let shutdown = shutdown.clone();
                    let alive = alive.clone();
                    tokio::spawn(async move {
                        connection::serve(ctx, listener, tcp, peer, shutdown).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then try again,
                    // rather than spin (mini-redis's backoff).
                    tracing::warn!(event = "accept_failed", listener = %bound.listener.name, error = %e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    loop {
        if *flag.borrow_and_update() {
            return;
        }
        if flag.changed().await.is_err() {
            return;
        }
    }
}
