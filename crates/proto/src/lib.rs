//! The SMTP protocol for postern, without I/O.
//!
//! Bytes go in, replies and requests for decisions come out: see [`server::Session`].
//! Nothing here knows about sockets, files, configuration or time, so every rule can be
//! tested as a byte transcript and fuzzed.

#![forbid(unsafe_code)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod sasl;
pub mod server;

pub use address::{Domain, ForwardPath, Mailbox, ReversePath};
pub use reply::{Enhanced, Reply};
