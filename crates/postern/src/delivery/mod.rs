//! Delivery: takes queued messages to their destination (local Maildir, later remote
//! SMTP) and reports per-recipient outcomes back to the queue.
//!
//! It must not accept mail or decide policy: what reaches it was already accepted.

pub mod dispatcher;
pub mod dsn;
pub mod maildir;
pub mod next_hop;
pub mod outcome;
pub mod smtp_client;
