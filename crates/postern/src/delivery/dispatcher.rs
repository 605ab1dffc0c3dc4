//! The dispatcher: takes committed messages from the queue, delivers each pending
//! recipient (local Maildir, or the next hop over SMTP), records every outcome
//! durably, schedules retries, and queues bounces.
//!
//! Order of durable writes: a recipient is marked delivered only after the Maildir file
//! or the remote `250` exists; a bounce is committed to the queue before the original
//! message's state says it was bounced. A crash in between delivers or bounces twice,
//! never zero times.
//!
//! Concurrency: at most `delivery.max_connections` deliveries at once, and at most
//! `delivery.max_per_destination` to one domain. A message waits for its domain's slot
//! before it takes a global one, so a dead destination never holds the slots that
//! other destinations need.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::dsn::{self, DsnAction, RecipientReport};
use super::maildir;
use super::outcome::Outcome;
use super::smtp_client;
use postern_proto::reply::Enhanced;

use crate::auth::Credentials;
use crate::config::Config;
use crate::dns::Resolver;
use crate::queue::{Envelope, Origin, QueueId, RecipientStatus, Spool, SpoolError};

/// What deliveries need.
pub struct Deliverer {
    /// Replaced on reload (SIGHUP); a delivery uses the settings it started with.
    config: std::sync::RwLock<Arc<Config>>,
    users: std::sync::RwLock<Arc<dyn Credentials>>,
    pub spool: Spool,
    pub resolver: Arc<dyn Resolver>,
    /// TLS for outbound STARTTLS.
    pub tls: Arc<rustls::ClientConfig>,
    /// Idle outbound connections, reused for the next message to the same server.
    pub pool: smtp_client::ConnectionPool,
    /// Maildir deliveries, whose directory fsyncs are shared (group commit).
    maildirs: maildir::Publisher,
}

impl Deliverer {
    pub fn new(
        config: Config,
        spool: Spool,
        users: Arc<dyn Credentials>,
        resolver: Arc<dyn Resolver>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Deliverer {
        Deliverer {
            config: std::sync::RwLock::new(Arc::new(config)),
            users: std::sync::RwLock::new(users),
            spool,
            resolver,
            tls,
            pool: smtp_client::ConnectionPool::default(),
            maildirs: maildir::Publisher::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn users(&self) -> Arc<dyn Credentials> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New settings from a reload, for the deliveries that start from now on.
    pub fn replace(&self, config: Config, users: Arc<dyn Credentials>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
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
    /// A first attempt made on the committing thread that did not simply deliver
    /// everything: record its outcomes (bounces, retries) like any other attempt.
    Conclude {
        accepted: Box<Accepted>,
        outcomes: Vec<(usize, Outcome)>,
        attempted_at: i64,
        in_flight: InFlight,
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
            .all(|(_, outcome)| matches!(outcome, Outcome::Delivered { .. }))
    }

    /// Logs the deliveries and marks those recipients delivered in `envelope`. The
    /// others stay pending, as if never tried: if the message is queued, its first
    /// attempt tries them again, and defers or bounces them with the usual notices.
    pub fn record(self, envelope: &mut Envelope) {
        for (i, outcome) in self.outcomes {
            if matches!(outcome, Outcome::Delivered { .. }) {
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
    /// The first delivery attempt of a message being committed, to run on the blocking
    /// thread that commits it, right after the commit ([`Spool::commit_then`]).
    /// `envelope` and `message` must be what is committed.
    ///
    /// Mail whose recipients are all local is delivered there and then: no hand-over to
    /// the dispatcher task and to another blocking thread, which on a busy MX cost more
    /// CPU than the Maildir writes. Anything else (remote recipients, every delivery
    /// slot busy) goes to the dispatcher task, in memory.
    pub fn first_attempt(
        &self,
        envelope: Envelope,
        message: Arc<Vec<u8>>,
    ) -> impl FnOnce() + Send + 'static {
        let state = Arc::clone(&self.state);
        move || {
            let accepted = Accepted { envelope, message };
            if let Some(accepted) = deliver_locally_now(&state, accepted) {
                // A closed channel means the server is stopping; the message is on disk
                // and is picked up again at the next start.
                let _ = state.jobs.send(Job::Deliver {
                    id: accepted.envelope.queue_id.clone(),
                    force: false,
                    accepted: Some(Box::new(accepted)),
                });
            }
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
    /// `None` when this does not apply (a remote recipient): queue the message.
    /// Otherwise the outcomes, unrecorded: see [`AtOnce::record`].
    ///
    /// Takes no delivery slot (`delivery.max_connections` bounds the queue's deliveries):
    /// like the queue commit it replaces, it is part of a session, which the connection
    /// limits bound already.
    pub fn deliver_at_once(&self, envelope: &Envelope, message: &[u8]) -> Option<AtOnce> {
        let config = self.state.d.config();
        if !all_local(&config, envelope) {
            return None;
        }
        let attempted_at = now();
        let everyone = (0..envelope.recipients.len()).collect();
        let (outcomes, _) = deliver_to_mailboxes(&self.state.d, envelope, everyone, message, false);
        Some(AtOnce {
            config,
            outcomes,
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
/// once the deliveries in progress have finished, so that a clean shutdown never
/// leaves a delivered message in the queue (which would deliver it again).
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
                Some(Job::Conclude { accepted, outcomes, attempted_at, in_flight }) => {
                    spawn_conclusion(&state, &mut tasks, *accepted, outcomes, attempted_at, in_flight);
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
    // Attempts already made must still be recorded, or their deliveries would be made
    // again at the next start; nothing new is started.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        if let Job::Conclude {
            accepted,
            outcomes,
            attempted_at,
            in_flight,
        } = job
        {
            spawn_conclusion(
                &state,
                &mut tasks,
                *accepted,
                outcomes,
                attempted_at,
                in_flight,
            );
        }
    }
    // Let the deliveries in progress finish; the caller bounds the wait.
    while tasks.join_next().await.is_some() {}
}

/// Records, in a task, the outcomes of an attempt made elsewhere (see `Job::Conclude`).
fn spawn_conclusion(
    state: &Arc<State>,
    tasks: &mut tokio::task::JoinSet<()>,
    accepted: Accepted,
    outcomes: Vec<(usize, Outcome)>,
    attempted_at: i64,
    in_flight: InFlight,
) {
    let state = Arc::clone(state);
    tasks.spawn(async move {
        let Accepted { envelope, message } = accepted;
        let concluded = conclude(&state, envelope, &message, outcomes, false, attempted_at).await;
        after_attempt(&state, in_flight, concluded);
    });
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
    let (outcomes, removed) = deliver_due(state, &envelope, &due, &message).await;
    conclude(state, envelope, &message, outcomes, removed, now).await
}

/// Records the outcomes of an attempt made at `now` (`removed`: the message has left the
/// queue already), notifies the sender of bounces and delays, and saves the envelope or
/// removes the finished message. Returns when to look at it again, if ever.
async fn conclude(
    state: &State,
    mut envelope: Envelope,
    message: &[u8],
    outcomes: Vec<(usize, Outcome)>,
    removed: bool,
    now: i64,
) -> Result<Option<i64>, SpoolError> {
    let d = &state.d;
    let id = &envelope.queue_id.clone();
    let mut bounces = Vec::new();
    for (i, outcome) in outcomes {
        if let Some(report) = record(&d.config(), &mut envelope, i, outcome, now) {
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
                r.next_attempt = now + retry_delay(&d.config(), r.attempts);
            }
        }
    }
    if let Some(delayed) = delay_warning_due(&d.config(), &envelope, now) {
        match notify_sender(state, &envelope, message, &delayed).await {
            Ok(()) => envelope.delay_warned = true,
            Err(e) => tracing::error!(event = "notification_failed", queue_id = %id, error = %e),
        }
    }
    if envelope.is_done() {
        if !removed {
            d.spool.remove(id).await?;
        }
        return Ok(None);
    }
    d.spool.update(&envelope).await?;
    Ok(next_attempt(&envelope))
}

/// Delivers the due recipients: the local ones together in one blocking task, the
/// remote ones grouped by domain (one transaction for all recipients of a domain).
/// Also says whether the message has been taken out of the queue already (see
/// [`deliver_locally`]).
async fn deliver_due(
    state: &State,
    envelope: &Envelope,
    due: &[usize],
    message: &Arc<Vec<u8>>,
) -> (Vec<(usize, Outcome)>, bool) {
    let d = &state.d;
    let config = d.config();
    let (local, remote): (Vec<usize>, Vec<usize>) = due.iter().partition(|&&i| {
        config.is_local_domain(&domain_of(&envelope.recipients[i].address).to_lowercase())
    });
    let mut outcomes = Vec::new();
    let mut removed = false;
    if !local.is_empty() {
        let finishes = remote.is_empty() && due.len() == pending_count(envelope);
        let delivered;
        (delivered, removed) = deliver_locally(state, envelope, local, message, finishes).await;
        outcomes.extend(delivered);
    }
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in remote {
        let domain = domain_of(&envelope.recipients[i].address).to_lowercase();
        by_domain.entry(domain).or_default().push(i);
    }
    for (domain, indexes) in by_domain {
        let destination = destination_slots(state, &domain);
        let _destination_slot = destination.acquire().await;
        let _slot = state.slots.acquire().await;
        let rcpts: Vec<String> = indexes
            .iter()
            .map(|&i| envelope.recipients[i].address.clone())
            .collect();
        let results =
            smtp_client::deliver_domain(d, &envelope.from, &domain, &rcpts, message).await;
        outcomes.extend(indexes.into_iter().zip(results));
    }
    (outcomes, removed)
}

/// Delivers to the local recipients `indexes` one after the other, in one blocking task.
/// When `finishes` (these are all the recipients left) and every one of them was
/// delivered, the same task also takes the message out of the queue and says so: most
/// mail for local mailboxes is then done with one hand-over to a blocking thread and
/// back, instead of one for the Maildir files and another for the removal.
async fn deliver_locally(
    state: &State,
    envelope: &Envelope,
    indexes: Vec<usize>,
    message: &Arc<Vec<u8>>,
    finishes: bool,
) -> (Vec<(usize, Outcome)>, bool) {
    let _slot = state.slots.acquire().await;
    let (d, envelope, message) = (Arc::clone(&state.d), envelope.clone(), Arc::clone(message));
    let attempted = indexes.clone();
    let task = tokio::task::spawn_blocking(move || {
        deliver_to_mailboxes(&d, &envelope, indexes, &message, finishes)
    });
    match task.await {
        Ok(done) => done,
        // A panic in the task: nothing is known to be delivered, so try again later.
        Err(e) => {
            let reply = format!("local delivery failed: {e}");
            let outcome = Outcome::deferred(Enhanced(4, 3, 0), reply, maildir_relay());
            (
                attempted
                    .into_iter()
                    .map(|i| (i, outcome.clone()))
                    .collect(),
                false,
            )
        }
    }
}

/// The body of [`deliver_locally`], on a blocking thread: delivers to the local recipients
/// `indexes`, and when `finishes` and all were delivered, removes the message from the
/// queue. Returns the outcomes and whether the message was removed.
fn deliver_to_mailboxes(
    d: &Deliverer,
    envelope: &Envelope,
    indexes: Vec<usize>,
    message: &[u8],
    finishes: bool,
) -> (Vec<(usize, Outcome)>, bool) {
    let outcomes: Vec<(usize, Outcome)> = indexes
        .into_iter()
        .map(|i| {
            let address = &envelope.recipients[i].address;
            (i, deliver_local(d, envelope, address, message))
        })
        .collect();
    let all_delivered = outcomes
        .iter()
        .all(|(_, outcome)| matches!(outcome, Outcome::Delivered { .. }));
    // If the removal fails here, the caller tries again (and reports the error).
    let removed = finishes && all_delivered && d.spool.remove_blocking(&envelope.queue_id).is_ok();
    (outcomes, removed)
}

/// [`Dispatcher::first_attempt`] on the committing (blocking) thread, for a message whose
/// recipients are all local. Gives the message back untouched when it is not all local
/// or when every delivery slot is busy; the dispatcher task takes it then.
fn deliver_locally_now(state: &Arc<State>, accepted: Accepted) -> Option<Accepted> {
    let config = state.d.config();
    if !all_local(&config, &accepted.envelope) {
        return Some(accepted);
    }
    let Ok(slot) = state.slots.try_acquire() else {
        return Some(accepted);
    };
    // A new queue ID cannot be in flight; if it somehow is, that attempt has it.
    let in_flight = InFlight::claim(state, &accepted.envelope.queue_id)?;
    let now = now();
    // Recipients delivered before the message was queued are marked so already.
    let pending = (0..accepted.envelope.recipients.len())
        .filter(|&i| accepted.envelope.recipients[i].status == RecipientStatus::Pending)
        .collect();
    let (outcomes, removed) = deliver_to_mailboxes(
        &state.d,
        &accepted.envelope,
        pending,
        &accepted.message,
        true,
    );
    drop(slot);
    if removed {
        let mut envelope = accepted.envelope;
        for (i, outcome) in outcomes {
            record(&config, &mut envelope, i, outcome, now);
        }
        return None;
    }
    // Someone was not delivered (or the removal failed): the dispatcher task records it,
    // bounces or schedules the retry, as after any attempt.
    let _ = state.jobs.send(Job::Conclude {
        accepted: Box::new(accepted),
        outcomes,
        attempted_at: now,
        in_flight,
    });
    None
}

/// Whether every recipient of `envelope` is at a local domain.
fn all_local(config: &Config, envelope: &Envelope) -> bool {
    envelope
        .recipients
        .iter()
        .all(|r| config.is_local_domain(&domain_of(&r.address).to_lowercase()))
}

/// Recipients still waiting for delivery.
fn pending_count(envelope: &Envelope) -> usize {
    envelope
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .count()
}

fn destination_slots(state: &State, domain: &str) -> Arc<Semaphore> {
    let per = state.d.config().outbound.max_per_destination.max(1);
    lock(&state.destinations)
        .entry(domain.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(per)))
        .clone()
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// The earliest retry among pending recipients.
fn next_attempt(envelope: &Envelope) -> Option<i64> {
    envelope
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .map(|r| r.next_attempt)
        .min()
}

/// Local outcomes name the Maildir as their relay in logs.
fn maildir_relay() -> Option<String> {
    Some("maildir".to_string())
}

/// Delivers to one local mailbox. Blocking.
fn deliver_local(d: &Deliverer, envelope: &Envelope, address: &str, message: &[u8]) -> Outcome {
    let account = match d.users().lookup(address) {
        Ok(Some(account)) => account,
        Ok(None) => {
            return Outcome::bounced(
                Enhanced(5, 1, 1),
                "the mailbox does not exist (any more)",
                maildir_relay(),
            );
        }
        Err(e) => {
            return Outcome::deferred(
                Enhanced(4, 3, 0),
                format!("user database unavailable: {e}"),
                maildir_relay(),
            );
        }
    };
    let path = match maildir::expand_template(&d.config().maildir, &account.login) {
        Ok(p) => p,
        Err(e) if e.is_temporary() => {
            return Outcome::deferred(Enhanced(4, 3, 5), e.to_string(), maildir_relay());
        }
        Err(e) => return Outcome::bounced(Enhanced(5, 1, 3), e.to_string(), maildir_relay()),
    };
    let prefix = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        envelope.from, account.login
    );
    let owner = account
        .owner
        .map(|(uid, gid)| maildir::Owner { uid, gid })
        .or_else(|| configured_owner(&d.config()))
        .filter(|o| can_give_to(o, &account.login));
    let hostname = &d.config().hostname;
    let written = d
        .maildirs
        .deliver(&path, hostname, prefix.as_bytes(), message, owner);
    maildir_outcome(written)
}

/// Only root can give a file to another user. Once the server runs as its service user,
/// a Maildir owner other than that user cannot be honoured: the file stays the service
/// user's (and a warning says how to fix it) rather than the mail being held back.
fn can_give_to(owner: &maildir::Owner, login: &str) -> bool {
    let me = nix::unistd::geteuid();
    if me.is_root() || owner.uid == me.as_raw() {
        return true;
    }
    tracing::warn!(
        event = "maildir_owner_ignored",
        rcpt = %login,
        owner_uid = owner.uid,
        msg = "running as the service user, which cannot give files to another user: set user = the mail user (e.g. user = \"vmail\")"
    );
    false
}

/// `delivery.owner`, resolved to its uid and primary gid.
fn configured_owner(config: &Config) -> Option<maildir::Owner> {
    let name = config.maildir_owner.as_deref()?;
    let user = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(maildir::Owner {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

fn maildir_outcome(written: Result<PathBuf, maildir::MaildirError>) -> Outcome {
    match written {
        Ok(_) => Outcome::Delivered {
            relay: "maildir".into(),
            reply: "delivered".into(),
        },
        Err(e) if e.is_temporary() => {
            Outcome::deferred(Enhanced(4, 3, 0), e.to_string(), maildir_relay())
        }
        Err(e) => Outcome::bounced(Enhanced(5, 3, 0), e.to_string(), maildir_relay()),
    }
}

/// Applies an outcome to recipient `i` and logs it. Returns a report when the
/// recipient bounced, for the notification to the sender.
fn record(
    config: &Config,
    envelope: &mut Envelope,
    i: usize,
    outcome: Outcome,
    now: i64,
) -> Option<RecipientReport> {
    let queue_id = envelope.queue_id.clone();
    let received_at = envelope.received_at;
    let expired = now - envelope.received_at >= config.queue.max_age.as_secs() as i64;
    let rcpt = &mut envelope.recipients[i];
    rcpt.attempts += 1;
    let (status, reply, relay) = match outcome {
        Outcome::Delivered { relay, reply } => {
            rcpt.status = RecipientStatus::Delivered;
            crate::metrics::delivery("delivered", kind_of(&relay), age(now, received_at));
            tracing::info!(event = "delivered", queue_id = %queue_id, rcpt = %rcpt.address, relay = %relay, dsn = "2.0.0", reply = %reply);
            return None;
        }
        Outcome::Deferred {
            status,
            reply,
            relay,
        } if !expired => {
            crate::metrics::delivery(
                "deferred",
                kind_of(relay.as_deref().unwrap_or("")),
                age(now, received_at),
            );
            rcpt.next_attempt = now + retry_delay(config, rcpt.attempts);
            tracing::info!(event = "deferred", queue_id = %queue_id, rcpt = %rcpt.address, relay = relay.as_deref().unwrap_or("none"), dsn = %status, reply = %reply);
            rcpt.last_error = Some(reply);
            rcpt.last_relay = relay;
            return None;
        }
        // Still failing after the maximum queue lifetime: give up (RFC 3463 4.4.7).
        Outcome::Deferred { reply, relay, .. } => (
            Enhanced(5, 4, 7),
            format!("delivery time expired; last error: {reply}"),
            relay,
        ),
        Outcome::Bounced {
            status,
            reply,
            relay,
        } => (status, reply, relay),
    };
    rcpt.status = RecipientStatus::Bounced;
    crate::metrics::delivery(
        "bounced",
        kind_of(relay.as_deref().unwrap_or("")),
        age(now, received_at),
    );
    tracing::info!(event = "bounced", queue_id = %queue_id, rcpt = %rcpt.address, relay = relay.as_deref().unwrap_or("none"), dsn = %status, reply = %reply);
    rcpt.last_error = Some(reply.clone());
    rcpt.last_relay = relay.clone();
    Some(RecipientReport {
        address: rcpt.address.clone(),
        action: DsnAction::Failed,
        status,
        remote_mta: relay,
        diagnostic: Some(reply),
        last_attempt: chrono::DateTime::from_timestamp(now, 0),
        will_retry_until: None,
    })
}

fn kind_of(relay: &str) -> &'static str {
    if relay == "maildir" {
        "local"
    } else {
        "remote"
    }
}

fn age(now: i64, since: i64) -> Duration {
    Duration::from_secs(now.saturating_sub(since).max(0) as u64)
}

/// The "still trying" notice, once, when the message has waited `delay_warning`.
fn delay_warning_due(
    config: &Config,
    envelope: &Envelope,
    now: i64,
) -> Option<Vec<RecipientReport>> {
    let after = config.queue.delay_warning.as_secs() as i64;
    if after == 0 || envelope.delay_warned || now - envelope.received_at < after {
        return None;
    }
    let until = chrono::DateTime::from_timestamp(
        envelope.received_at + config.queue.max_age.as_secs() as i64,
        0,
    );
    let pending: Vec<RecipientReport> = envelope
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .map(|r| RecipientReport {
            address: r.address.clone(),
            action: DsnAction::Delayed,
            status: Enhanced(4, 4, 7),
            remote_mta: r.last_relay.clone(),
            diagnostic: r.last_error.clone(),
            last_attempt: chrono::DateTime::from_timestamp(now, 0),
            will_retry_until: until,
        })
        .collect();
    (!pending.is_empty()).then_some(pending)
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

/// `retry_first`, doubling per attempt up to `retry_max`, plus up to 10 % jitter so
/// that retries after an outage do not all come at once.
fn retry_delay(config: &Config, attempts: u32) -> i64 {
    let first = config.queue.retry_first.as_secs().max(1) as i64;
    let max = (config.queue.retry_max.as_secs() as i64).max(first);
    let base = first
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(max);
    base + rand::random_range(0..=base / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let config = Config::development_defaults();
        assert!((300..=330).contains(&retry_delay(&config, 1)));
        assert!((600..=660).contains(&retry_delay(&config, 2)));
        assert!((3600..=3960).contains(&retry_delay(&config, 30)));
    }

    #[test]
    fn expired_deferrals_bounce_and_report() {
        let config = Config::development_defaults();
        let mut envelope = Envelope::new(
            QueueId::generate(),
            "a@example.com".into(),
            vec!["b@remote.test".into()],
            Origin::Local {
                uid: 0,
                user: "root".into(),
            },
            10,
            0,
        );
        let far_future = config.queue.max_age.as_secs() as i64 + 1;
        let report = record(
            &config,
            &mut envelope,
            0,
            Outcome::deferred(Enhanced(4, 4, 1), "no answer", None),
            far_future,
        )
        .unwrap();
        assert_eq!(report.status, Enhanced(5, 4, 7));
        assert_eq!(envelope.recipients[0].status, RecipientStatus::Bounced);
        let mut fresh = envelope.clone();
        fresh.recipients[0].status = RecipientStatus::Pending;
        fresh.received_at = far_future;
        assert!(
            record(
                &config,
                &mut fresh,
                0,
                Outcome::deferred(Enhanced(4, 4, 1), "no answer", None),
                far_future
            )
            .is_none()
        );
        assert!(fresh.recipients[0].next_attempt > far_future);
    }
}
