//! The dispatcher: takes committed messages from the queue, delivers each pending
//! recipient, records every outcome durably, and schedules retries.
//!
//! Recipients at local domains go to their Maildir. Remote recipients stay queued until
//! outbound delivery exists (the next version); they are kept, never dropped.
//!
//! A recipient is marked delivered only after its Maildir file is durable, and that
//! mark is written before the message leaves the queue: a crash in between delivers
//! twice, never zero times.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::maildir;
use crate::auth::Credentials;
use crate::config::Config;
use crate::queue::{Envelope, QueueId, Recipient, RecipientStatus, Spool};

/// Messages delivered at the same time.
const PARALLEL_DELIVERIES: usize = 16;
/// First retry delay; it doubles per attempt up to `MAX_RETRY_DELAY`.
const FIRST_RETRY_DELAY: i64 = 60;
const MAX_RETRY_DELAY: i64 = 3600;
/// After this long in the queue a recipient that still fails is bounced.
const MAX_QUEUE_AGE: i64 = 5 * 24 * 3600;

/// A handle to tell the dispatcher about new messages.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<QueueId>,
}

impl Dispatcher {
    /// A newly committed message: deliver it now.
    pub fn notify(&self, id: QueueId) {
        // A closed channel means the server is stopping; the message is on disk and
        // is picked up again at the next start.
        let _ = self.tx.send(id);
    }
}

/// What deliveries need.
pub struct Deliverer {
    pub config: Config,
    pub spool: Spool,
    pub users: Arc<dyn Credentials>,
}

/// Starts the dispatcher task and queues `recovered` (messages found at start).
///
/// When `stop` turns true the dispatcher takes no new work and the returned task ends
/// once the deliveries in progress have finished, so that a clean shutdown never
/// leaves a delivered message in the queue (which would deliver it again).
pub fn start(
    deliverer: Arc<Deliverer>,
    recovered: Vec<QueueId>,
    stop: watch::Receiver<bool>,
) -> (Dispatcher, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    for id in recovered {
        let _ = tx.send(id);
    }
    let task = tokio::spawn(run(deliverer, rx, stop));
    (Dispatcher { tx }, task)
}

/// Deferred messages by the time (Unix seconds) to look at them again.
type Schedule = Arc<Mutex<BTreeMap<i64, Vec<QueueId>>>>;

async fn run(
    deliverer: Arc<Deliverer>,
    mut rx: mpsc::UnboundedReceiver<QueueId>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(PARALLEL_DELIVERIES));
    let in_flight: Arc<Mutex<HashSet<QueueId>>> = Arc::default();
    let schedule: Schedule = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let id = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            received = rx.recv() => match received {
                Some(id) => id,
                None => break,
            },
            _ = tick.tick() => {
                for id in take_due(&schedule, now()) {
                    spawn_delivery(&deliverer, &limit, &in_flight, &schedule, id);
                }
                continue;
            }
        };
        spawn_delivery(&deliverer, &limit, &in_flight, &schedule, id);
    }
    // Every permit back means no delivery is running any more. Deliveries that were
    // waiting for a permit go first (the semaphore is fair); the caller bounds the wait.
    let _ = limit.acquire_many(PARALLEL_DELIVERIES as u32).await;
}

fn take_due(schedule: &Schedule, now: i64) -> Vec<QueueId> {
    let mut map = schedule.lock().unwrap_or_else(|p| p.into_inner());
    let later = map.split_off(&(now + 1));
    let due = std::mem::replace(&mut *map, later);
    due.into_values().flatten().collect()
}

fn spawn_delivery(
    deliverer: &Arc<Deliverer>,
    limit: &Arc<Semaphore>,
    in_flight: &Arc<Mutex<HashSet<QueueId>>>,
    schedule: &Schedule,
    id: QueueId,
) {
    if !in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone())
    {
        return;
    }
    let (deliverer, limit, in_flight, schedule) = (
        deliverer.clone(),
        limit.clone(),
        in_flight.clone(),
        schedule.clone(),
    );
    tokio::spawn(async move {
        let Ok(_permit) = limit.acquire().await else {
            return;
        };
        match deliver_message(&deliverer, &id).await {
            Ok(Some(next)) => reschedule(&schedule, next, id.clone()),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(event = "queue_error", queue_id = %id, error = %e);
                reschedule(&schedule, now() + FIRST_RETRY_DELAY, id.clone());
            }
        }
        in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    });
}

fn reschedule(schedule: &Schedule, at: i64, id: QueueId) {
    let mut map = schedule.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(at).or_default().push(id);
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Delivers what is due in one message. Returns when to look at it again, if ever.
async fn deliver_message(
    d: &Deliverer,
    id: &QueueId,
) -> Result<Option<i64>, crate::queue::SpoolError> {
    let mut envelope = d.spool.load(id)?;
    let now = now();
    let due: Vec<usize> = (0..envelope.recipients.len())
        .filter(|&i| {
            let r = &envelope.recipients[i];
            r.status == RecipientStatus::Pending && r.next_attempt <= now
        })
        .collect();
    if due.is_empty() {
        return Ok(next_attempt(&envelope));
    }
    let message = Arc::new(d.spool.read_message(id)?);
    let mut changed = false;
    for i in due {
        let outcome = deliver_recipient(d, &envelope, &envelope.recipients[i], &message).await;
        changed |= record(&mut envelope, i, outcome, now);
    }
    if envelope.is_done() {
        d.spool.remove(id).await?;
        return Ok(None);
    }
    if changed {
        d.spool.update(&envelope).await?;
    }
    Ok(next_attempt(&envelope))
}

/// The earliest retry among pending local recipients.
fn next_attempt(envelope: &Envelope) -> Option<i64> {
    envelope
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending && r.next_attempt < i64::MAX)
        .map(|r| r.next_attempt)
        .min()
}

enum Outcome {
    Delivered {
        relay: String,
    },
    Deferred {
        dsn: &'static str,
        reply: String,
    },
    Bounced {
        dsn: &'static str,
        reply: String,
    },
    /// Remote recipient: kept until outbound delivery is available.
    AwaitingOutbound,
}

async fn deliver_recipient(
    d: &Deliverer,
    envelope: &Envelope,
    rcpt: &Recipient,
    message: &Arc<Vec<u8>>,
) -> Outcome {
    let domain = rcpt.address.rsplit_once('@').map_or("", |(_, d)| d);
    if !d.config.is_local_domain(domain) {
        return Outcome::AwaitingOutbound;
    }
    let account = match d.users.lookup(&rcpt.address) {
        Ok(Some(account)) => account,
        Ok(None) => {
            return Outcome::Bounced {
                dsn: "5.1.1",
                reply: "mailbox does not exist (any more)".into(),
            };
        }
        Err(e) => {
            return Outcome::Deferred {
                dsn: "4.3.0",
                reply: format!("user database unavailable: {e}"),
            };
        }
    };
    let path = match maildir::expand_template(&d.config.maildir, &account.login) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Deferred {
                dsn: "4.3.5",
                reply: e.to_string(),
            };
        }
    };
    let prefix = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        envelope.from, account.login
    );
    write_maildir(d.config.hostname.clone(), path, prefix, message.clone()).await
}

async fn write_maildir(
    hostname: String,
    path: PathBuf,
    prefix: String,
    message: Arc<Vec<u8>>,
) -> Outcome {
    let written = tokio::task::spawn_blocking(move || {
        maildir::deliver(&path, &hostname, prefix.as_bytes(), &message)
    })
    .await;
    match written {
        Ok(Ok(_)) => Outcome::Delivered {
            relay: "maildir".into(),
        },
        Ok(Err(e)) if e.is_temporary() => Outcome::Deferred {
            dsn: "4.3.0",
            reply: e.to_string(),
        },
        Ok(Err(e)) => Outcome::Bounced {
            dsn: "5.3.0",
            reply: e.to_string(),
        },
        Err(e) => Outcome::Deferred {
            dsn: "4.3.0",
            reply: format!("delivery task failed: {e}"),
        },
    }
}

/// Applies an outcome to recipient `i` and logs it. Returns whether the envelope changed.
fn record(envelope: &mut Envelope, i: usize, outcome: Outcome, now: i64) -> bool {
    let queue_id = envelope.queue_id.clone();
    let received_at = envelope.received_at;
    let rcpt = &mut envelope.recipients[i];
    match outcome {
        Outcome::Delivered { relay } => {
            rcpt.status = RecipientStatus::Delivered;
            tracing::info!(event = "delivered", queue_id = %queue_id, rcpt = %rcpt.address, relay = %relay, dsn = "2.0.0", reply = "delivered");
        }
        Outcome::Deferred { dsn, reply } if now - received_at < MAX_QUEUE_AGE => {
            rcpt.attempts += 1;
            rcpt.next_attempt = now + retry_delay(rcpt.attempts);
            tracing::info!(event = "deferred", queue_id = %queue_id, rcpt = %rcpt.address, relay = "maildir", dsn, reply = %reply);
            rcpt.last_error = Some(reply);
        }
        Outcome::Deferred { reply, .. } => bounce(rcpt, &queue_id, "5.4.7", reply),
        Outcome::Bounced { dsn, reply } => bounce(rcpt, &queue_id, dsn, reply),
        Outcome::AwaitingOutbound => {
            if rcpt.next_attempt == i64::MAX {
                return false;
            }
            rcpt.next_attempt = i64::MAX;
            rcpt.last_error = Some(
                "remote delivery is not available in this version; the message stays queued".into(),
            );
            tracing::info!(event = "deferred", queue_id = %queue_id, rcpt = %rcpt.address, relay = "none", dsn = "4.4.0", reply = "remote delivery is not available in this version; the message stays queued");
        }
    }
    true
}

/// Gives up on a recipient. (The bounce message to the sender comes with outbound
/// delivery; until then the log line is the record.)
fn bounce(rcpt: &mut Recipient, queue_id: &QueueId, dsn: &str, reply: String) {
    rcpt.status = RecipientStatus::Bounced;
    tracing::info!(event = "bounced", queue_id = %queue_id, rcpt = %rcpt.address, relay = "maildir", dsn, reply = %reply);
    rcpt.last_error = Some(reply);
}

/// 1, 2, 4, … minutes, at most an hour, plus up to 10 % jitter so that retries after
/// an outage do not all come at once.
fn retry_delay(attempts: u32) -> i64 {
    let base = FIRST_RETRY_DELAY
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY);
    base + rand::random_range(0..=base / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert!((60..=66).contains(&retry_delay(1)));
        assert!((120..=132).contains(&retry_delay(2)));
        assert!((3600..=3960).contains(&retry_delay(30)));
    }
}
