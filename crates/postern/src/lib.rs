//! postern: a mail server for shared hosting.
//!
//! Mail comes in through one of two doors — SMTP ([`server`]: authenticated submission,
//! or the MX role for local domains) and the local submission socket ([`local`]) —
//! passes the [`policy`], and ends in one [`intake`], which delivers it at once or
//! commits it to the [`queue`] spool for [`delivery`]. The [`daemon`] builds and starts
//! all of it. The protocol itself lives, without I/O, in `postern-proto`. See
//! `docs/flow.md`.

#![forbid(unsafe_code)]

pub mod accept_loop;
pub mod admission;
pub mod attribution;
pub mod auth;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod dns;
pub mod facts;
pub mod group_commit;
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
pub mod shutdown;
pub mod stream;
pub mod unix_socket;
