//! Local submission: the `sendmail` command and the Unix socket it talks to.
//!
//! PHP's `mail()`, cron and scripts run `sendmail`, which needs no password: the
//! kernel tells the server which Unix user is on the other end of the socket
//! (SO_PEERCRED), and /proc tells which process. Every message records both.
//!
//! # Security
//!
//! The socket is world-writable (mode 0666) on purpose: every local user may submit.
//! Nothing the client says about itself is trusted; its uid comes from the kernel.
//! Submissions pass the same policy (recipient checks, limits) and the same spool as
//! SMTP mail. No setuid or setgid binary exists.

pub mod address_list;
pub mod message;
pub mod request;
pub mod sendmail;
pub mod socket;
pub mod submission;
