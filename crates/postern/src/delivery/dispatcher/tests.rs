//! The dispatcher with a recording fake courier and a real spool in a temporary
//! directory: what it does with each kind of outcome, and how it behaves around
//! flushes and shutdown.
//!
//! Waits are on events (a courier call, a state of the spool) with a bound, never a
//! bare sleep.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_proto::reply::Enhanced;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Deliverer, Dispatcher, start};
use crate::auth::PasswdFile;
use crate::config::Config;
use crate::delivery::courier::{BoxFuture, Courier, Parcel};
use crate::delivery::outcome::Outcome;
use crate::delivery::settings::Settings;
use crate::queue::{Envelope, Origin, QueueId, RecipientStatus, Spool, SpoolError};

/// How long any expected event may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// One delivery the fake courier was asked for.
#[derive(Debug)]
struct Call {
    courier: &'static str,
    from: String,
    rcpts: Vec<String>,
    message: Arc<Vec<u8>>,
}

/// A courier that records every parcel, answers from a script per recipient (delivered
/// when the script has nothing more), and, when gated, holds each delivery until the
/// test lets one through.
struct FakeCourier {
    name: &'static str,
    script: Arc<Mutex<HashMap<String, VecDeque<Outcome>>>>,
    calls: mpsc::UnboundedSender<Call>,
    gate: Option<Arc<Semaphore>>,
}

impl Courier for FakeCourier {
    fn deliver<'a>(&'a self, parcel: &'a Parcel) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let _ = self.calls.send(Call {
                courier: self.name,
                from: parcel.from.clone(),
                rcpts: parcel.rcpts.clone(),
                message: Arc::clone(&parcel.message),
            });
            if let Some(gate) = &self.gate
                && let Ok(permit) = gate.acquire().await
            {
                permit.forget();
            }
            let mut script = self.script.lock().unwrap();
            parcel
                .rcpts
                .iter()
                .map(|rcpt| {
                    script
                        .get_mut(rcpt)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or_else(|| Outcome::delivered("fake", "250 ok"))
                })
                .collect()
        })
    }
}

/// A dispatcher on a temporary spool, with fake couriers for local (`localhost`) and
/// remote recipients.
struct Harness {
    _data: tempfile::TempDir,
    spool: Spool,
    dispatcher: Dispatcher,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    calls: mpsc::UnboundedReceiver<Call>,
    /// Deliveries the fake couriers may finish (when gated).
    gate: Arc<Semaphore>,
    script: Arc<Mutex<HashMap<String, VecDeque<Outcome>>>>,
}

struct Options {
    config: Config,
    gated: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: Config::development_defaults(),
            gated: false,
        }
    }
}

impl Harness {
    /// Queues `messages` (sender, recipients), then starts the dispatcher, which finds
    /// them as at a restart.
    async fn start(options: Options, messages: &[(&str, &[&str])]) -> (Harness, Vec<QueueId>) {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let mut ids = Vec::new();
        for (from, rcpts) in messages {
            ids.push(queue(&spool, from, rcpts).await);
        }
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let script: Arc<Mutex<HashMap<String, VecDeque<Outcome>>>> = Arc::default();
        let fake = |name| {
            Arc::new(FakeCourier {
                name,
                script: Arc::clone(&script),
                calls: calls_tx.clone(),
                gate: options.gated.then(|| Arc::clone(&gate)),
            })
        };
        let users = Arc::new(PasswdFile::new(data.path().join("no-passwd")));
        let settings = Arc::new(Settings::new(options.config, users));
        let deliverer =
            Deliverer::with_couriers(settings, spool.clone(), fake("local"), fake("remote"));
        let (stop, stopped) = watch::channel(false);
        let (dispatcher, task) = start(Arc::new(deliverer), ids.clone(), stopped);
        let harness = Harness {
            _data: data,
            spool,
            dispatcher,
            task,
            stop,
            calls,
            gate,
            script,
        };
        (harness, ids)
    }

    /// What the couriers answer for `rcpt`, in order, before they deliver.
    fn answer(&self, rcpt: &str, outcomes: Vec<Outcome>) {
        self.script
            .lock()
            .unwrap()
            .insert(rcpt.to_string(), outcomes.into());
    }

    /// The next courier call.
    async fn next_call(&mut self) -> Call {
        within(self.calls.recv())
            .await
            .expect("the couriers' sender is gone")
    }

    /// Lets `n` gated deliveries finish.
    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Resolves once every job sent before it has been taken by the dispatcher task
    /// (jobs are handled in order, and a delete is answered there and then).
    async fn settle(&self) {
        let unknown = QueueId::generate();
        let answer = within(self.dispatcher.delete(unknown)).await;
        assert!(answer.is_err_and(|e| e.contains("not in the queue")));
    }

    fn load(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        self.spool.load(id)
    }
}

/// Commits a small message from `from` to `rcpts`.
async fn queue(spool: &Spool, from: &str, rcpts: &[&str]) -> QueueId {
    let message = b"From: someone@sender.test\r\nSubject: test\r\n\r\nbody\r\n".to_vec();
    let envelope = Envelope::new(
        QueueId::generate(),
        from.to_string(),
        rcpts.iter().map(|r| r.to_string()).collect(),
        Origin::Local {
            uid: 1000,
            user: "alice".into(),
        },
        message.len() as u64,
        chrono::Utc::now().timestamp(),
    );
    spool.commit(&envelope, Arc::new(message)).await.unwrap();
    envelope.queue_id
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("timed out waiting for the dispatcher")
}

/// Waits until `condition` holds, looking again every few milliseconds.
async fn eventually(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn is_gone(result: Result<Envelope, SpoolError>) -> bool {
    matches!(result, Err(SpoolError::NotFound { .. }))
}

fn deferred(text: &str) -> Outcome {
    Outcome::deferred(Enhanced(4, 4, 1), text, Some("192.0.2.1:25".into()))
}

fn bounced(text: &str) -> Outcome {
    Outcome::bounced(Enhanced(5, 1, 1), text, Some("192.0.2.1:25".into()))
}

#[tokio::test]
async fn a_temporary_failure_is_recorded_and_retried_on_schedule() {
    let mut options = Options {
        gated: true,
        ..Options::default()
    };
    // The first retry is due a second later (the schedule is looked at every second).
    options.config.queue.retry_first = Duration::from_secs(1);
    let (mut h, ids) =
        Harness::start(options, &[("alice@sender.test", &["bob@remote.test"])]).await;
    h.answer("bob@remote.test", vec![deferred("451 4.4.1 try later")]);

    let first = h.next_call().await;
    assert_eq!(
        (first.courier, first.rcpts.as_slice()),
        ("remote", &["bob@remote.test".to_string()][..])
    );
    h.release(1);
    // The retry comes by itself; while it is held, the queue shows the first attempt.
    let retry = h.next_call().await;
    assert_eq!(retry.rcpts, ["bob@remote.test"]);
    let envelope = h.load(&ids[0]).unwrap();
    let rcpt = &envelope.recipients[0];
    assert_eq!(rcpt.status, RecipientStatus::Pending);
    assert_eq!(rcpt.attempts, 1);
    assert_eq!(rcpt.last_error.as_deref(), Some("451 4.4.1 try later"));
    assert!(rcpt.next_attempt > envelope.received_at);

    h.release(1);
    eventually(|| is_gone(h.load(&ids[0]))).await;
}

#[tokio::test]
async fn a_permanent_failure_bounces_to_the_sender() {
    let options = Options {
        gated: true,
        ..Options::default()
    };
    let (mut h, ids) =
        Harness::start(options, &[("alice@sender.test", &["bob@remote.test"])]).await;
    h.answer("bob@remote.test", vec![bounced("550 5.1.1 no such user")]);

    h.next_call().await;
    h.release(1);
    let notice = h.next_call().await;
    assert_eq!(notice.from, "", "a notification has the null sender");
    assert_eq!(notice.rcpts, ["alice@sender.test"]);
    let text = String::from_utf8_lossy(&notice.message);
    assert!(
        text.contains("Undelivered Mail Returned to Sender"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("bob@remote.test"), "{text}");
    // The original is done with (it leaves the queue after its notification is
    // queued, so perhaps only now); the notification is queued about it.
    eventually(|| is_gone(h.load(&ids[0]))).await;
    let queued = h.spool.list().unwrap();
    assert_eq!(queued.len(), 1);
    let notification = h.load(&queued[0]).unwrap();
    assert_eq!(
        notification.origin,
        Origin::Notification {
            about: ids[0].clone()
        }
    );

    h.release(1);
    eventually(|| h.spool.list().unwrap().is_empty()).await;
}

#[tokio::test]
async fn a_bounce_for_the_null_sender_sends_no_notification() {
    let options = Options {
        gated: true,
        ..Options::default()
    };
    let (mut h, ids) = Harness::start(options, &[("", &["bob@remote.test"])]).await;
    h.answer("bob@remote.test", vec![bounced("550 5.1.1 no such user")]);

    h.next_call().await;
    h.release(1);
    // A notification would be queued before the original leaves the queue, and held
    // at the gate: nothing may be left.
    eventually(|| is_gone(h.load(&ids[0]))).await;
    assert_eq!(h.spool.list().unwrap(), Vec::<QueueId>::new());
    h.settle().await;
    assert!(
        h.calls.try_recv().is_err(),
        "no other delivery was asked for"
    );
}

#[tokio::test]
async fn each_recipient_of_a_partly_failed_attempt_gets_its_own_outcome() {
    let rcpts: &[&str] = &[
        "ann@one.test",
        "ben@one.test",
        "cat@two.test",
        "dan@localhost",
    ];
    let (mut h, ids) = Harness::start(Options::default(), &[("alice@sender.test", rcpts)]).await;
    h.answer("ben@one.test", vec![deferred("451 4.4.1 try later")]);
    h.answer("cat@two.test", vec![bounced("550 5.1.1 no such user")]);

    // Local recipients go to the local courier; the remote ones by domain, together.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let call = h.next_call().await;
        calls.push((call.courier, call.from, call.rcpts, call.message));
    }
    let parcels: Vec<(&str, &str, Vec<String>)> = calls
        .iter()
        .map(|(courier, from, rcpts, _)| (*courier, from.as_str(), rcpts.clone()))
        .collect();
    assert_eq!(
        parcels,
        [
            (
                "local",
                "alice@sender.test",
                vec!["dan@localhost".to_string()]
            ),
            (
                "remote",
                "alice@sender.test",
                vec!["ann@one.test".to_string(), "ben@one.test".to_string()]
            ),
            (
                "remote",
                "alice@sender.test",
                vec!["cat@two.test".to_string()]
            ),
            ("remote", "", vec!["alice@sender.test".to_string()]),
        ]
    );
    // The notice reports the bounce, not the deferral.
    let notice = String::from_utf8_lossy(&calls[3].3);
    assert!(
        notice.contains("Final-Recipient: rfc822; cat@two.test"),
        "{notice}"
    );
    assert!(!notice.contains("ben@one.test"), "{notice}");

    eventually(|| {
        h.load(&ids[0])
            .is_ok_and(|e| e.recipients.iter().all(|r| r.attempts == 1))
    })
    .await;
    let envelope = h.load(&ids[0]).unwrap();
    let states: Vec<(&str, RecipientStatus)> = envelope
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.status))
        .collect();
    assert_eq!(
        states,
        [
            ("ann@one.test", RecipientStatus::Delivered),
            ("ben@one.test", RecipientStatus::Pending),
            ("cat@two.test", RecipientStatus::Bounced),
            ("dan@localhost", RecipientStatus::Delivered),
        ]
    );
}

#[tokio::test]
async fn a_flush_during_an_attempt_retries_the_message_when_it_ends() {
    let options = Options {
        gated: true,
        ..Options::default()
    };
    let (mut h, ids) =
        Harness::start(options, &[("alice@sender.test", &["bob@remote.test"])]).await;
    // Deferred twice: without the flushes, the next attempt would be minutes away.
    h.answer(
        "bob@remote.test",
        vec![deferred("451 4.4.1 busy"), deferred("451 4.4.1 busy")],
    );

    h.next_call().await;
    h.dispatcher.flush(None);
    h.settle().await;
    h.release(1);
    h.next_call().await;

    h.dispatcher.flush(Some(ids[0].clone()));
    h.settle().await;
    h.release(1);
    h.next_call().await;

    h.release(1);
    eventually(|| is_gone(h.load(&ids[0]))).await;
}

#[tokio::test]
async fn shutdown_records_the_attempts_in_progress_and_ends_the_task() {
    let options = Options {
        gated: true,
        ..Options::default()
    };
    let messages: &[(&str, &[&str])] = &[
        ("alice@sender.test", &["bob@one.test"]),
        ("alice@sender.test", &["cat@two.test"]),
    ];
    let (mut h, ids) = Harness::start(options, messages).await;
    h.answer("cat@two.test", vec![deferred("451 4.4.1 try later")]);
    h.next_call().await;
    h.next_call().await;

    h.stop.send(true).unwrap();
    // Once the dispatcher has stopped taking jobs, its channel is closed.
    within(async {
        while h.dispatcher.delete(QueueId::generate()).await
            != Err("the server is stopping".to_string())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    h.release(2);
    within(h.task).await.unwrap();

    assert!(is_gone(h.spool.load(&ids[0])), "the delivery is recorded");
    let deferred = h.spool.load(&ids[1]).unwrap();
    assert_eq!(
        deferred.recipients[0].attempts, 1,
        "the deferral is recorded"
    );
    assert_eq!(deferred.recipients[0].status, RecipientStatus::Pending);
}
