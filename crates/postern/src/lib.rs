//! postern: a mail server for shared hosting.
//!
//! Mail comes in over SMTP (authenticated submission, or the MX role for local domains)
//! and is stored durably in the spool, then delivered. See `docs/flow.md` and DESIGN.md.

#![forbid(unsafe_code)]

pub mod auth;
pub mod queue;
pub mod delivery;
