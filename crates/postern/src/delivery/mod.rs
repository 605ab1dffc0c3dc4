//! Delivery: takes accepted messages to their destination and reports per-recipient
//! outcomes back to the queue.
//!
//! The [`dispatcher`] runs the queue's deliveries (job loop, schedule, retries,
//! bounces) and hands recipients to a [`courier`]: the Maildir courier for local
//! domains, the remote courier (SMTP to the [`next_hop`]) for the rest. Each attempt
//! ends in an [`outcome`] per recipient; bounces and delay notices are built by [`dsn`].
//!
//! It must not accept mail or decide policy: what reaches it was already accepted.

pub mod courier;
pub mod dispatcher;
pub mod dsn;
pub mod maildir;
pub mod next_hop;
pub mod outcome;
pub mod settings;
