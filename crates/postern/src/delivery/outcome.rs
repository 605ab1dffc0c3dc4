//! The result of one delivery attempt for one recipient, as every courier reports it
//! and the dispatcher records it.
//!
//! It owns the three ways an attempt can end (delivered, deferred, bounced) and the
//! facts a log line and a delivery status notification need: the enhanced status code
//! (RFC 3463, the protocol crate's [`Enhanced`]), the reply text and the relay that
//! answered. It must not decide what happens next (retry, bounce notice): that is the
//! dispatcher's.

use postern_proto::reply::Enhanced;

/// Names local deliveries as their relay, in logs and notifications.
pub const MAILDIR_RELAY: &str = "maildir";

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The message is in the mailbox, or a server answered `250` after the data.
    Delivered { relay: String, reply: String },
    /// Not delivered now; may succeed later (a class 4 status).
    Deferred {
        status: Enhanced,
        reply: String,
        relay: Option<String>,
    },
    /// Will not be delivered (a class 5 status).
    Bounced {
        status: Enhanced,
        reply: String,
        relay: Option<String>,
    },
}

impl Outcome {
    pub fn delivered(relay: impl Into<String>, reply: impl Into<String>) -> Outcome {
        Outcome::Delivered {
            relay: relay.into(),
            reply: reply.into(),
        }
    }

    pub fn deferred(status: Enhanced, reply: impl Into<String>, relay: Option<String>) -> Outcome {
        Outcome::Deferred {
            status,
            reply: reply.into(),
            relay,
        }
    }

    pub fn bounced(status: Enhanced, reply: impl Into<String>, relay: Option<String>) -> Outcome {
        Outcome::Bounced {
            status,
            reply: reply.into(),
            relay,
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }
}
