//! The queue: queue IDs, envelopes with per-recipient state, and the spool that stores
//! them durably on disk.
//!
//! It owns everything about a message between "accepted" and "done". It must not know
//! about SMTP sessions or delivery: the session hands it an envelope and the message
//! bytes, delivery reads them back and reports per-recipient results through `update`.

pub mod envelope;
pub mod queue_id;
pub mod spool;
pub mod spool_file;

pub use envelope::{Envelope, Origin, Recipient, RecipientStatus};
pub use queue_id::QueueId;
pub use spool::{Spool, SpoolError};
