//! Couriers: what takes one message to some recipients of one destination and says,
//! per recipient, how it went.
//!
//! [`Courier`] is the one interface the dispatcher delivers through. Two implement it:
//! [`maildir::MaildirCourier`] writes into local mailboxes, [`remote::RemoteCourier`]
//! speaks SMTP to the next hop. Each owns what its deliveries need (the Maildir
//! publisher and mailbox owners; the resolver, TLS client settings and connection
//! pool) and reads the current settings when a delivery starts.
//!
//! A courier must not know about the queue: it does not load, update or remove queued
//! messages, schedule retries or send bounces, and it never imports the dispatcher. It
//! reports each recipient's [`Outcome`]; what follows is the dispatcher's decision.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::outcome::Outcome;

pub mod maildir;
pub mod remote;

/// A boxed, sendable future, so that the trait can be used as `dyn Courier`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message on its way to some recipients of one destination: one domain for the
/// remote courier (one SMTP transaction), any local recipients for the Maildir courier.
#[derive(Debug, Clone)]
pub struct Parcel {
    /// The envelope sender; `""` is the null sender.
    pub from: String,
    /// The recipients, as queued.
    pub rcpts: Vec<String>,
    /// The message as queued (CRLF line ends).
    pub message: Arc<Vec<u8>>,
}

/// Takes parcels to their recipients.
pub trait Courier: Send + Sync {
    /// Delivers `parcel`: one outcome per recipient, in the order of `parcel.rcpts`.
    /// Never fails as a whole: what goes wrong is a deferred or bounced outcome.
    fn deliver<'a>(&'a self, parcel: &'a Parcel) -> BoxFuture<'a, Vec<Outcome>>;

    /// Delivers `parcel` on the calling thread, which may block, when this courier can
    /// do so without a runtime (the Maildir courier can): the outcomes, as `deliver`
    /// gives them. `None` when it cannot; the message must then be queued.
    fn deliver_now(&self, parcel: &Parcel) -> Option<Vec<Outcome>> {
        let _ = parcel;
        None
    }
}
