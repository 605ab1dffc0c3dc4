//! Custody: the last step of intake, between "everything said yes" and the `250` (or
//! `sendmail`'s exit 0).
//!
//! Mail whose recipients are all local is delivered into their Maildirs at once, before
//! the acknowledgement, as an LMTP server does ([`Dispatcher::deliver_at_once`]): it never
//! enters the queue. That saves the queue file's write, fsync, rename and removal: one of
//! the two file fsyncs per message, and much of the CPU a message costs (measured in
//! `docs/benchmarks.md`). Everything else, and
//! local mail whose delivery did not fully succeed, is committed to the queue
//! ([`Spool::commit_then`]), and its first delivery attempt starts on the thread that
//! committed it ([`Dispatcher::first_attempt`]).
//!
//! Either way the message is on stable storage before this returns `Ok`, and a crash
//! before the acknowledgement can only make the client send it again.

use std::sync::Arc;

use crate::delivery::dispatcher::Dispatcher;
use crate::queue::{Envelope, Spool, SpoolError};

/// Makes an accepted message durable: delivered at once, or queued. `log_accepted` writes
/// the `accepted` line, before any line about the message's delivery. Only when this
/// returns `Ok` may the caller acknowledge the message.
pub async fn take(
    spool: &Spool,
    delivery: &Dispatcher,
    mut envelope: Envelope,
    message: Arc<Vec<u8>>,
    log_accepted: impl FnOnce() + Send + 'static,
) -> Result<(), SpoolError> {
    // Checked here first, so that other mail is not handed to a blocking thread twice.
    let at_once = if delivery.is_all_local(&envelope) {
        let (delivery, envelope, message) =
            (delivery.clone(), envelope.clone(), Arc::clone(&message));
        tokio::task::spawn_blocking(move || delivery.deliver_at_once(&envelope, &message)).await?
    } else {
        None
    };
    match at_once {
        Some(at_once) if at_once.all_delivered() => {
            log_accepted();
            at_once.record(&mut envelope);
            return Ok(());
        }
        // Some Maildir failed: the ones delivered are recorded (and logged) as such, and
        // the message is queued for the others.
        Some(partly) => partly.record(&mut envelope),
        None => {}
    }
    let first_attempt = delivery.first_attempt(envelope.clone(), Arc::clone(&message));
    let then = move || {
        log_accepted();
        first_attempt();
    };
    spool.commit_then(&envelope, message, then).await
}
