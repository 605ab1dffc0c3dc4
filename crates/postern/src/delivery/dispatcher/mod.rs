//! The dispatcher: takes committed messages from the queue, hands each pending
//! recipient to a courier (the Maildir courier for local domains, the remote courier
//! for the rest), records every outcome durably, schedules retries, and queues bounces.
//!
//! It owns the job loop, the retry schedule and the in-flight marks (one attempt at a
//! time per message). It must not deliver by itself: it knows couriers only through the
//! [`Courier`] trait, and it never speaks SMTP or writes a Maildir.
//!
//! Order of durable writes: a recipient is marked delivered only after the courier said
//! so (the Maildir file or the remote `250` exists); a bounce is committed to the queue
//! before the original message's state says it was bounced. A crash in between delivers
//! or bounces twice, never zero times.
//!
//! Concurrency: at most `delivery.max_connections` deliveries at once, and at most
//! `delivery.max_per_destination` to one domain. A message waits for its domain's slot
//! before it takes a global one, so a dead destination never holds the slots that
//! other destinations need.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_proto::reply::Enhanced;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::courier::maildir::MaildirCourier;
use super::courier::remote::RemoteCourier;
use super::courier::{Courier, Parcel};
use super::dsn::{self, DsnAction, RecipientReport};
use super::outcome::Outcome;
use super::settings::Settings;
use crate::auth::Credentials;
use crate::config::Config;
use crate::dns::Resolver;
use crate::queue::{Envelope, Origin, QueueId, RecipientStatus, Spool, SpoolError};

mod record;
#[cfg(test)]
mod tests;

use record::{delay_warning_due, next_attempt, record, retry_delay};

/// What deliveries need: the settings, the queue and a courier for each kind of
/// destination.
pub struct Deliverer {
    settings: Arc<Settings>,
    pub spool: Spool,
    /// Recipients at local domains.
    local: Arc<dyn Courier>,
    /// Everyone else.
    remote: Arc<dyn Courier>,
}

impl Deliverer {
    /// The server's couriers: local mail into Maildirs, the rest over SMTP with
    /// `resolver` and `tls`.
    pub fn new(
        config: Config,
        spool: Spool,
        users: Arc<dyn Credentials>,
        resolver: Arc<dyn Resolver>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Deliverer {
        let settings = Arc::new(Settings::new(config, users));
        let local = Arc::new(MaildirCourier::new(Arc::clone(&settings)));
        let remote = Arc::new(RemoteCourier::new(Arc::clone(&settings), resolver, tls));
        Deliverer::with_couriers(settings, spool, local, remote)
    }

    /// Deliveries through the given couriers.
    pub fn with_couriers(
        settings: Arc<Settings>,
        spool: Spool,
        local: Arc<dyn Courier>,
        remote: Arc<dyn Courier>,
    ) -> Deliverer {
        Deliverer {
            settings,
            spool,
            local,
            remote,
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.settings.config()
    }

    /// New settings from a reload, for the deliveries that start from now on.
    pub fn replace(&self, config: Config, users: Arc<dyn Credentials>) {
        self.settings.replace(config, users);
    }

    /// The courier for the recipients at `domain` (lower case).
    fn courier_for(&self, config: &Config, domain: &str) -> &dyn Courier {
        if config.is_local_domain(domain) {
            self.local.as_ref()
        } else {
            self.remote.as_ref()
        }
    }
}

enum Job {
    Deliver {
        id: QueueId,
        force: bool,
        /// The message as just committed, when it is still in memory.
        accepted: Option<Box<Accepted>>,
    },
    FlushAll,
    Delete {
        id: QueueId,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The outcomes of [`Dispatcher::deliver_at_once`].
pub struct AtOnce {
    config: Arc<Config>,
    outcomes: Vec<(usize, Outcome)>,
    attempted_at: i64,
}

impl AtOnce {
    /// Whether every recipient got the message: then it needs no queueing.
    pub fn all_delivered(&self) -> bool {
        self.outcomes
            .iter()
            .all(|(_, outcome)| outcome.is_delivered())
    }

    /// Logs the deliveries and marks those recipients delivered in `envelope`. The
    /// others stay pending, as if never tried: if the message is queued, its first
    /// attempt tries them again, and defers or bounces them with the usual notices.
    pub fn record(self, envelope: &mut Envelope) {
        for (i, outcome) in self.outcomes {
            if outcome.is_delivered() {
                record(&self.config, envelope, i, outcome, self.attempted_at);
            }
        }
    }
}

/// A message just committed to the queue, handed over in memory so that its first
/// delivery attempt does not read back what was just written.
struct Accepted {
    envelope: Envelope,
    message: Arc<Vec<u8>>,
}

/// A handle to the dispatcher task.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<Job>,
    state: Arc<State>,
}

impl Dispatcher {
    /// The first delivery attempt of a message being committed, to run right after the
    /// commit ([`Spool::commit_then`]): hands the message to the dispatcher task, in
    /// memory. `envelope` and `message` must be what is committed.
    pub fn first_attempt(
        &self,
        envelope: Envelope,
        message: Arc<Vec<u8>>,
    ) -> impl FnOnce() + Send + 'static {
        let jobs = self.tx.clone();
        move || {
            // A closed channel means the server is stopping; the message is on disk
            // and is picked up again at the next start.
            let _ = jobs.send(Job::Deliver {
                id: envelope.queue_id.clone(),
                force: false,
                accepted: Some(Box::new(Accepted { envelope, message })),
            });
        }
    }

    /// Whether every recipient of `envelope` is local, so that
    /// [`deliver_at_once`](Dispatcher::deliver_at_once) applies.
    pub fn is_all_local(&self, envelope: &Envelope) -> bool {
        all_local(&self.state.d.config(), envelope)
    }

    /// Delivers a message whose recipients are all local straight into their Maildirs,
    /// before it is acknowledged and without queueing it, as an LMTP server does: the
    /// Maildir file, fsynced and linked into `new/` with `new/` fsynced, is as durable as
    /// a queue file, and the queue file's writes, fsyncs and removal are saved. Blocking.
    ///
    /// `None` when this does not apply (a remote recipient, or a local courier that
    /// cannot deliver at once): queue the message. Otherwise the outcomes, unrecorded:
    /// see [`AtOnce::record`].
    ///
    /// Takes no delivery slot (`delivery.max_connections` bounds the queue's deliveries):
    /// like the queue commit it replaces, it is part of a session, which the connection
    /// limits bound already.
    pub fn deliver_at_once(&self, envelope: &Envelope, message: &Arc<Vec<u8>>) -> Option<AtOnce> {
        let config = self.state.d.config();
        if !all_local(&config, envelope) {
            return None;
        }
        let attempted_at = now();
        let everyone: Vec<usize> = (0..envelope.recipients.len()).collect();
        let parcel = parcel(envelope, &everyone, message);
        let outcomes = self.state.d.local.deliver_now(&parcel)?;
        Some(AtOnce {
            config,
            outcomes: pair(everyone, outcomes),
            attempted_at,
        })
    }

    /// Retry now, ignoring the retry schedule: one message, or all.
    pub fn flush(&self, id: Option<QueueId>) {
        let _ = self.tx.send(match id {
            Some(id) => Job::Deliver {
                id,
                force: true,
                accepted: None,
            },
            None => Job::FlushAll,
        });
    }

    /// Removes a message from the queue, unless it is being delivered right now.
    pub async fn delete(&self, id: QueueId) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Job::Delete { id, done })
            .map_err(|_| "the server is stopping".to_string())?;
        answer
            .await
            .map_err(|_| "the server is stopping".to_string())?
    }
}

/// Deferred messages by the time (Unix seconds) to look at them again.
type Schedule = BTreeMap<i64, Vec<QueueId>>;

struct State {
    d: Arc<Deliverer>,
    jobs: mpsc::UnboundedSender<Job>,
    slots: Semaphore,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Mutex<HashSet<QueueId>>,
    schedule: Mutex<Schedule>,
    /// `queue flush` requests so far.
    flushes: AtomicU64,
}

/// Starts the dispatcher task and queues `recovered` (messages found at start).
///
/// When `stop` turns true the dispatcher takes no new work and the returned task ends
/// once the deliveries in progress have finished and their outcomes are recorded, so
/// that a clean shutdown never leaves a delivered message in the queue (which would
/// deliver it again).
pub fn start(
    deliverer: Arc<Deliverer>,
    recovered: Vec<QueueId>,
    stop: watch::Receiver<bool>,
) -> (Dispatcher, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    for id in recovered {
        let _ = tx.send(Job::Deliver {
            id,
            force: false,
            accepted: None,
        });
    }
    let state = Arc::new(State {
        slots: Semaphore::new(deliverer.config().outbound.max_connections.max(1)),
        d: deliverer,
        jobs: tx.clone(),
        destinations: Mutex::default(),
        in_flight: Mutex::default(),
        schedule: Mutex::default(),
        flushes: AtomicU64::new(0),
    });
    let task = tokio::spawn(run(Arc::clone(&state), rx, stop));
    (Dispatcher { tx, state }, task)
}

async fn run(
    state: Arc<State>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop_requested(&mut stop) => break,
            job = rx.recv() => match job {
                Some(Job::Deliver { id, force, accepted }) => {
                    spawn_delivery(&state, &mut tasks, id, force, accepted);
                }
                Some(Job::FlushAll) => {
                    // First, so that an attempt in progress that is not scheduled yet
                    // is retried as soon as it ends (see `after_attempt`).
                    state.flushes.fetch_add(1, Ordering::SeqCst);
                    let all = std::mem::take(&mut *lock(&state.schedule));
                    for id in all.into_values().flatten() {
                        spawn_delivery(&state, &mut tasks, id, true, None);
                    }
                }
                Some(Job::Delete { id, done }) => {
                    let _ = done.send(delete(&state, &id).await);
                }
                None => break,
            },
            _ = tick.tick() => {
                for id in take_due(&state.schedule, now()) {
                    spawn_delivery(&state, &mut tasks, id, false, None);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Nothing new is started: jobs still waiting are dropped (a message is picked up
    // again at the next start, a `queue delete` hears that the server is stopping).
    rx.close();
    while rx.try_recv().is_ok() {}
    // The attempts in progress finish and record their outcomes, or their deliveries
    // would be made again at the next start; the caller bounds the wait.
    while tasks.join_next().await.is_some() {}
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn take_due(schedule: &Mutex<Schedule>, now: i64) -> Vec<QueueId> {
    let mut map = lock(schedule);
    let later = map.split_off(&(now + 1));
    let due = std::mem::replace(&mut *map, later);
    due.into_values().flatten().collect()
}

fn reschedule(state: &State, at: i64, id: QueueId) {
    lock(&state.schedule).entry(at).or_default().push(id);
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn spawn_delivery(
    state: &Arc<State>,
    tasks: &mut tokio::task::JoinSet<()>,
    id: QueueId,
    force: bool,
    accepted: Option<Box<Accepted>>,
) {
    let Some(in_flight) = InFlight::claim(state, &id) else {
        if force {
            // Being delivered right now: retried as soon as that attempt ends.
            state.flushes.fetch_add(1, Ordering::SeqCst);
        }
        return;
    };
    let state = state.clone();
    tasks.spawn(async move {
        let attempt = deliver_message(&state, &id, force, accepted).await;
        after_attempt(&state, in_flight, attempt);
    });
}

/// Schedules what an attempt left to do, or its retry after a queue error, and ends the
/// attempt. If the queue was flushed while the attempt ran (the flush could not include
/// it), a forced attempt follows at once.
fn after_attempt(state: &State, attempt: InFlight, result: Result<Option<i64>, SpoolError>) {
    let id = attempt.1.clone();
    let again = match result {
        Ok(Some(next)) => {
            reschedule(state, next, id.clone());
            true
        }
        Ok(None) | Err(SpoolError::NotFound { .. }) => false,
        Err(e) => {
            tracing::error!(event = "queue_error", queue_id = %id, error = %e);
            let retry = state.d.config().queue.retry_first.as_secs() as i64;
            reschedule(state, now() + retry.max(1), id.clone());
            true
        }
    };
    let started_at_flush = attempt.2;
    drop(attempt);
    // Looked at only now, after the reschedule: a flush that took the schedule before it
    // has counted itself already.
    if again && state.flushes.load(Ordering::SeqCst) != started_at_flush {
        let _ = state.jobs.send(Job::Deliver {
            id,
            force: true,
            accepted: None,
        });
    }
}

/// The mark of a message being delivered: one attempt at a time per message, and no
/// `queue delete` meanwhile. Dropping it clears the mark, even when the delivery
/// panicked, so the message is never stuck (not retried, not deletable) until the next
/// restart. Also holds the count of flushes when the attempt started.
struct InFlight(Arc<State>, QueueId, u64);

impl InFlight {
    /// Marks `id`, unless an attempt for it is in progress already.
    fn claim(state: &Arc<State>, id: &QueueId) -> Option<InFlight> {
        let flushes = state.flushes.load(Ordering::SeqCst);
        lock(&state.in_flight)
            .insert(id.clone())
            .then(|| InFlight(Arc::clone(state), id.clone(), flushes))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.in_flight).remove(&self.1);
    }
}

async fn delete(state: &State, id: &QueueId) -> Result<(), String> {
    if lock(&state.in_flight).contains(id) {
        return Err(format!(
            "{id} is being delivered right now; try again in a moment"
        ));
    }
    if state.d.spool.load(id).is_err() {
        return Err(format!("{id} is not in the queue"));
    }
    for ids in lock(&state.schedule).values_mut() {
        ids.retain(|x| x != id);
    }
    state.d.spool.remove(id).await.map_err(|e| e.to_string())?;
    tracing::info!(event = "deleted", queue_id = %id);
    Ok(())
}

/// Delivers what is due in one message. Returns when to look at it again, if ever.
async fn deliver_message(
    state: &State,
    id: &QueueId,
    force: bool,
    accepted: Option<Box<Accepted>>,
) -> Result<Option<i64>, SpoolError> {
    let d = &state.d;
    let (envelope, in_memory) = match accepted {
        Some(accepted) => (accepted.envelope, Some(accepted.message)),
        None => (d.spool.load(id)?, None),
    };
    let now = now();
    let due: Vec<usize> = (0..envelope.recipients.len())
        .filter(|&i| {
            let r = &envelope.recipients[i];
            r.status == RecipientStatus::Pending && (force || r.next_attempt <= now)
        })
        .collect();
    if due.is_empty() {
        return Ok(next_attempt(&envelope));
    }
    let message = match in_memory {
        Some(message) => message,
        None => Arc::new(d.spool.read_message(id)?),
    };
    let outcomes = deliver_due(state, &envelope, &due, &message).await;
    conclude(state, envelope, &message, outcomes, now).await
}

/// Records the outcomes of an attempt made at `now`, notifies the sender of bounces and
/// delays, and saves the envelope or removes the finished message. Returns when to look
/// at it again, if ever.
async fn conclude(
    state: &State,
    mut envelope: Envelope,
    message: &[u8],
    outcomes: Vec<(usize, Outcome)>,
    now: i64,
) -> Result<Option<i64>, SpoolError> {
    let d = &state.d;
    let config = d.config();
    let id = &envelope.queue_id.clone();
    let mut bounces = Vec::new();
    for (i, outcome) in outcomes {
        if let Some(report) = record(&config, &mut envelope, i, outcome, now) {
            bounces.push(report);
        }
    }
    if !bounces.is_empty()
        && let Err(e) = notify_sender(state, &envelope, message, &bounces).await
    {
        // No notification, so no bounce yet: those recipients wait and fail again at
        // the next attempt. The delivered ones are saved as delivered all the same, so
        // they are not delivered twice.
        tracing::error!(event = "notification_failed", queue_id = %id, error = %e);
        for r in envelope
            .recipients
            .iter_mut()
            .filter(|r| r.status == RecipientStatus::Bounced)
        {
            if bounces.iter().any(|b| b.address == r.address) {
                r.status = RecipientStatus::Pending;
                r.next_attempt = now + retry_delay(&config, r.attempts);
            }
        }
    }
    if let Some(delayed) = delay_warning_due(&config, &envelope, now) {
        match notify_sender(state, &envelope, message, &delayed).await {
            Ok(()) => envelope.delay_warned = true,
            Err(e) => tracing::error!(event = "notification_failed", queue_id = %id, error = %e),
        }
    }
    if envelope.is_done() {
        d.spool.remove(id).await?;
        return Ok(None);
    }
    d.spool.update(&envelope).await?;
    Ok(next_attempt(&envelope))
}

/// Hands the due recipients to their couriers: the local ones together, the remote ones
/// grouped by domain (one transaction for all recipients of a domain), each holding a
/// delivery slot, and the remote ones also their domain's.
async fn deliver_due(
    state: &State,
    envelope: &Envelope,
    due: &[usize],
    message: &Arc<Vec<u8>>,
) -> Vec<(usize, Outcome)> {
    let d = &state.d;
    let config = d.config();
    let (local, remote): (Vec<usize>, Vec<usize>) = due
        .iter()
        .partition(|&&i| config.is_local_domain(&domain_of(&envelope.recipients[i].address)));
    let mut outcomes = Vec::new();
    if !local.is_empty() {
        let _slot = state.slots.acquire().await;
        let parcel = parcel(envelope, &local, message);
        outcomes.extend(pair(local, d.local.deliver(&parcel).await));
    }
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in remote {
        let domain = domain_of(&envelope.recipients[i].address);
        by_domain.entry(domain).or_default().push(i);
    }
    for (domain, indexes) in by_domain {
        let destination = destination_slots(state, &domain);
        let _destination_slot = destination.acquire().await;
        let _slot = state.slots.acquire().await;
        let parcel = parcel(envelope, &indexes, message);
        let courier = d.courier_for(&config, &domain);
        outcomes.extend(pair(indexes, courier.deliver(&parcel).await));
    }
    outcomes
}

/// The parcel for recipients `indexes` of `envelope`.
fn parcel(envelope: &Envelope, indexes: &[usize], message: &Arc<Vec<u8>>) -> Parcel {
    Parcel {
        from: envelope.from.clone(),
        rcpts: indexes
            .iter()
            .map(|&i| envelope.recipients[i].address.clone())
            .collect(),
        message: Arc::clone(message),
    }
}

/// Pairs a courier's outcomes with the recipients they are for. A recipient the
/// courier gave no outcome for is deferred, so that it is tried again later rather
/// than at every tick.
fn pair(indexes: Vec<usize>, outcomes: Vec<Outcome>) -> Vec<(usize, Outcome)> {
    let mut outcomes = outcomes.into_iter();
    indexes
        .into_iter()
        .map(|i| {
            let outcome = outcomes.next().unwrap_or_else(|| {
                Outcome::deferred(Enhanced(4, 3, 0), "the courier gave no outcome", None)
            });
            (i, outcome)
        })
        .collect()
}

/// Whether every recipient of `envelope` is at a local domain.
fn all_local(config: &Config, envelope: &Envelope) -> bool {
    envelope
        .recipients
        .iter()
        .all(|r| config.is_local_domain(&domain_of(&r.address)))
}

fn destination_slots(state: &State, domain: &str) -> Arc<Semaphore> {
    let per = state.d.config().outbound.max_per_destination.max(1);
    lock(&state.destinations)
        .entry(domain.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(per)))
        .clone()
}

/// The domain of `address`, in lower case.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_lowercase()
}

/// Queues a delivery status notification to the sender, never for the null sender
/// (that would let two servers bounce bounces at each other forever).
async fn notify_sender(
    state: &State,
    envelope: &Envelope,
    message: &[u8],
    reports: &[RecipientReport],
) -> Result<(), SpoolError> {
    if envelope.from.is_empty() {
        return Ok(());
    }
    let d = &state.d;
    let config = d.config();
    let now = chrono::Utc::now();
    let notification = dsn::build(&dsn::Notification {
        hostname: &config.hostname,
        queue_id: envelope.queue_id.as_str(),
        original_sender: &envelope.from,
        arrival: chrono::DateTime::from_timestamp(envelope.received_at, 0).unwrap_or(now),
        recipients: reports,
        original: message,
        now,
    });
    let queue_id = QueueId::generate();
    let size = notification.len() as u64;
    let bounce = Envelope::new(
        queue_id.clone(),
        String::new(),
        vec![envelope.from.clone()],
        Origin::Notification {
            about: envelope.queue_id.clone(),
        },
        size,
        now.timestamp(),
    );
    let notification = Arc::new(notification);
    d.spool.commit(&bounce, Arc::clone(&notification)).await?;
    tracing::info!(event = "notification_queued", queue_id = %queue_id, about = %envelope.queue_id, to = %envelope.from, kind = match reports.first().map(|r| r.action) { Some(DsnAction::Delayed) => "delayed", _ => "bounce" });
    let _ = state.jobs.send(Job::Deliver {
        id: queue_id,
        force: false,
        accepted: Some(Box::new(Accepted {
            envelope: bounce,
            message: notification,
        })),
    });
    Ok(())
}
