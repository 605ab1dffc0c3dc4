//! Group commit: many callers that each need the same expensive, blocking step (a
//! directory fsync after their rename) share one run of it.
//!
//! A caller [`submit`](GroupCommit::submit)s a job and waits for its result. Jobs that
//! arrive while a batch is being worked on wait for the next batch, so under load each
//! batch holds everything that queued up during the previous one, and one fsync makes a
//! whole batch durable; alone, a job is worked on at once, with no added delay. One
//! thread works on batches at a time, which also keeps the callers from contending for
//! the directory's lock.
//!
//! Callers already on a blocking thread use [`submit_blocking`](GroupCommit::submit_blocking):
//! when no batch is being worked on, the caller works on its own batch itself (it is the
//! leader), which saves handing the job to another thread and back; the textbook
//! leader/follower group commit.
//!
//! Used by the spool (`queue/spool.rs`) and the Maildir delivery
//! (`delivery/maildir.rs`). The work function must return one result per job, in order:
//! nobody is told "done" before the batch's work, fsync included, has returned.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Works on a batch of jobs; returns one result per job, in order.
type Work<J, R> = dyn Fn(Vec<J>) -> Vec<R> + Send + Sync;

/// Why a job has no result: the work function panicked or returned too few results.
#[derive(Debug, thiserror::Error)]
#[error("the batch this job was in failed without a result for it")]
pub struct NoResult;

/// Batches jobs of type `J` for a blocking work function giving results of type `R`.
pub struct GroupCommit<J, R> {
    state: Mutex<State<J, R>>,
    work: Box<Work<J, R>>,
}

struct State<J, R> {
    waiting: Vec<(J, oneshot::Sender<R>)>,
    /// A blocking task is draining `waiting`.
    running: bool,
}

impl<J: Send + 'static, R: Send + 'static> GroupCommit<J, R> {
    pub fn new(work: impl Fn(Vec<J>) -> Vec<R> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(GroupCommit {
            state: Mutex::new(State {
                waiting: Vec::new(),
                running: false,
            }),
            work: Box::new(work),
        })
    }

    /// Queues `job` for the next batch and waits for its result. Must be called within a
    /// Tokio runtime. If the returned future is dropped, the job is still worked on.
    pub async fn submit(self: &Arc<Self>, job: J) -> Result<R, NoResult> {
        let (done, result) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push((job, done));
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let me = Arc::clone(self);
            tokio::task::spawn_blocking(move || me.drain());
        }
        result.await.map_err(|_| NoResult)
    }

    /// [`submit`](GroupCommit::submit) for a caller on a blocking thread (never on an
    /// async worker thread: it blocks). If no batch is being worked on, works on one
    /// itself, including its own job; jobs that arrived meanwhile are left to a blocking
    /// task, so that the leader's own caller is not held up by later work.
    pub fn submit_blocking(self: &Arc<Self>, job: J) -> Result<R, NoResult> {
        let (done, result) = oneshot::channel();
        let lead = {
            let mut state = self.lock();
            state.waiting.push((job, done));
            !std::mem::replace(&mut state.running, true)
        };
        if lead && self.work_on_one_batch() {
            let me = Arc::clone(self);
            tokio::task::spawn_blocking(move || me.drain());
        }
        result.blocking_recv().map_err(|_| NoResult)
    }

    /// Works on batches until nothing is waiting.
    fn drain(&self) {
        while self.work_on_one_batch() {}
    }

    /// Works on everything waiting now, as one batch. Returns whether more has arrived
    /// since (the caller must work on it); otherwise marks the worker stopped.
    fn work_on_one_batch(&self) -> bool {
        let batch = {
            let mut state = self.lock();
            if state.waiting.is_empty() {
                state.running = false;
                return false;
            }
            std::mem::take(&mut state.waiting)
        };
        let (jobs, senders): (Vec<J>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        // A panic must not leave `running` set with jobs nobody works on: the callers of
        // this batch get `NoResult`, and work goes on.
        if let Ok(results) = catch_unwind(AssertUnwindSafe(|| (self.work)(jobs))) {
            for (sender, result) in senders.into_iter().zip(results) {
                // The caller may have gone; the job was done all the same.
                let _ = sender.send(result);
            }
        }
        let mut state = self.lock();
        if state.waiting.is_empty() {
            state.running = false;
            false
        } else {
            true
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<J, R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_batches_and_each_gets_its_own_result() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let doubler = GroupCommit::new(move |jobs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            // Long enough for the other callers to queue up behind this batch.
            std::thread::sleep(Duration::from_millis(20));
            jobs.into_iter().map(|j| j * 2).collect()
        });
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                let doubler = Arc::clone(&doubler);
                tokio::spawn(async move { (i, doubler.submit(i).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.unwrap();
            assert_eq!(result.unwrap(), i * 2);
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!((1..50).contains(&batches), "{batches} batches for 50 jobs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_callers_lead_batches_and_mix_with_async_ones() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let doubler = GroupCommit::new(move |jobs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            jobs.into_iter().map(|j| j * 2).collect()
        });
        let blocking: Vec<_> = (0..30u32)
            .map(|i| {
                let doubler = Arc::clone(&doubler);
                tokio::task::spawn_blocking(move || (i, doubler.submit_blocking(i)))
            })
            .collect();
        let asynchronous: Vec<_> = (30..40u32)
            .map(|i| {
                let doubler = Arc::clone(&doubler);
                tokio::spawn(async move { (i, doubler.submit(i).await) })
            })
            .collect();
        for task in blocking {
            let (i, result) = task.await.unwrap();
            assert_eq!(result.unwrap(), i * 2);
        }
        for task in asynchronous {
            let (i, result) = task.await.unwrap();
            assert_eq!(result.unwrap(), i * 2);
        }
        // Alone, a blocking caller gets its result, and the worker stops once nothing is
        // waiting. (A worker from the burst above may still be between sending its last
        // results and marking itself stopped: wait for that, with a bound.)
        let doubler2 = Arc::clone(&doubler);
        let alone = tokio::task::spawn_blocking(move || doubler2.submit_blocking(21));
        assert_eq!(alone.await.unwrap().unwrap(), 42);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while doubler.lock().running {
            assert!(
                std::time::Instant::now() < deadline,
                "a batch worker is still marked running"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(batches.load(Ordering::SeqCst) < 41, "no batching at all");
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_jobs_and_later_jobs_still_run() {
        let flaky = GroupCommit::new(|jobs: Vec<u32>| {
            assert!(!jobs.contains(&13), "unlucky");
            jobs
        });
        assert!(flaky.submit(13).await.is_err());
        assert_eq!(flaky.submit(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn too_few_results_fail_the_jobs_left_over() {
        let short = GroupCommit::new(|_jobs: Vec<u32>| Vec::<u32>::new());
        assert!(short.submit(1).await.is_err());
    }
}
