//! Delivery: takes queued messages to their destination (local Maildir, or remote SMTP)
//! and reports per-recipient outcomes back to the queue.
//!
//! It must not accept mail or decide policy: what reaches it was already accepted.

pub mod dispatcher;
pub mod dsn;
pub mod maildir;
pub mod next_hop;
pub mod smtp_client;
#[cfg(test)]
pub mod stub_resolver;
