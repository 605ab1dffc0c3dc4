//! Prometheus metrics (`[metrics] addr`): what the server does, for graphs and alerts.
//!
//! (Being written: the functions below are the call sites' interface.)

use std::net::SocketAddr;
use std::time::Duration;

/// A client connected to `listener` ("mx", "submission", …, or "local").
pub fn connection_opened(_listener: &str) {}

/// That client left.
pub fn connection_closed(_listener: &str) {}

/// A message was queued; `origin` is "smtp" or "local".
pub fn message_accepted(_origin: &'static str) {}

/// A command or message was refused; `reason` is the log line's `reason=`.
pub fn message_rejected(_reason: &str) {}

/// A login failed on `listener`.
pub fn auth_failed(_listener: &str) {}

/// One recipient's delivery attempt ended: "delivered", "deferred" or "bounced";
/// `kind` is "local" or "remote"; `since_arrival` is the time since the message was
/// accepted.
pub fn delivery(_outcome: &'static str, _kind: &'static str, _since_arrival: Duration) {}

/// The queue's size and the age of its oldest message.
pub fn queue_state(_messages: usize, _oldest: Duration) {}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {message}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub message: String,
}

/// Starts the HTTP endpoint serving `/metrics` on `addr`.
pub fn install(_addr: SocketAddr) -> Result<(), MetricsError> {
    Ok(())
}
