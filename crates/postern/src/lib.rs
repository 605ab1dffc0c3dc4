//! postern: a mail server for shared hosting.
//!
//! Mail comes in over SMTP (authenticated submission, or the MX role for local
//! domains), passes the [`policy`], is stored durably by the [`queue`] spool, and is
//! delivered by [`delivery`]. The protocol itself lives, without I/O, in
//! `postern-proto`. See `docs/flow.md`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod facts;
pub mod group_commit;
pub mod headers;
pub mod intake;
pub mod local;
pub mod logfmt;
pub mod mailauth;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod privileges;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod stream;
