//! What the doors (SMTP sessions, the local submission socket), intake and the control
//! socket share while the daemon runs: the [`Settings`] a reload replaces, and the
//! long-lived [`Context`] (queue, dispatcher, counters).
//!
//! It holds state only; the daemon builds it, and nothing here starts a task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::auth::Credentials;
use crate::auth::guard::FailureGuard;
use crate::config::Config;
use crate::delivery::dispatcher::Dispatcher;
use crate::mailauth::sign::Signer;
use crate::mailauth::verify::Verifier;
use crate::metrics;
use crate::queue::Spool;
use crate::ratelimit::RateLimiter;

/// What a reload (SIGHUP) replaces: a connection keeps the settings it started with.
pub struct Settings {
    pub config: Config,
    pub tls: TlsAcceptor,
    pub users: Arc<dyn Credentials>,
    /// DKIM signing of submitted mail.
    pub signer: Arc<Signer>,
    /// SPF, DKIM and DMARC verdicts on mail arriving on mx.
    pub verifier: Arc<Verifier>,
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
    pub admission: Arc<Admission>,
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

/// Counts a connection (metrics, `postern status`) for as long as it lives.
pub struct Counted(Arc<Context>, String);

impl Counted {
    pub fn new(ctx: Arc<Context>, listener: &str) -> Counted {
        metrics::connection_opened(listener);
        ctx.active.fetch_add(1, Ordering::Relaxed);
        Counted(ctx, listener.to_string())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::connection_closed(&self.1);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
