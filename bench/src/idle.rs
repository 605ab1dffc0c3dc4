//! `--idle N`: opens N sessions (greeting and EHLO, plus STARTTLS and AUTH when
//! configured, through the same `connect` as the load), holds them open, and while they
//! are held times `--probes` new clients from connect to the EHLO reply, one after the
//! other. Then checks that every held session still answers (NOOP) and prints one JSON
//! line. The server's memory is measured from outside (bench/run.sh) while the sessions
//! are held: `--hold SECS` keeps them open that long after the probes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::stats::{percentile, sort};
use crate::{Plan, Session, connect, millis};

/// Sessions being set up at once: enough to open 10,000 in a few seconds without
/// looking like a flood to the server's per-client connection rate.
const OPENING_AT_ONCE: usize = 200;

#[derive(Debug, Serialize)]
pub struct IdleSummary {
    /// Sessions asked for, opened, and still answering NOOP at the end.
    requested: usize,
    held: usize,
    still_answering: usize,
    /// Sessions that could not be opened, by error.
    open_errors: std::collections::BTreeMap<String, u64>,
    /// Seconds to open them all.
    open_s: f64,
    /// New clients while the others were held: connect through the EHLO reply.
    probe_ms: Probe,
}

#[derive(Debug, Serialize)]
struct Probe {
    count: usize,
    errors: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

pub async fn run(plan: Arc<Plan>, count: usize, probes: usize, hold: Duration) -> IdleSummary {
    let start = Instant::now();
    let (sessions, open_errors) = open_all(&plan, count).await;
    let open_s = start.elapsed().as_secs_f64();
    eprintln!("postern-bench: holding {} idle sessions", sessions.len());

    let mut probe_ms = Vec::with_capacity(probes);
    let mut probe_errors = 0;
    for _ in 0..probes {
        let start = Instant::now();
        match connect(&plan).await {
            Ok(session) => {
                probe_ms.push(millis(start.elapsed()));
                drop(session);
            }
            Err(e) => {
                eprintln!("postern-bench: probe: {e}");
                probe_errors += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(hold).await;

    let held = sessions.len();
    let still_answering = still_answering(sessions).await;
    sort(&mut probe_ms);
    IdleSummary {
        requested: count,
        held,
        still_answering,
        open_errors,
        open_s,
        probe_ms: Probe {
            count: probe_ms.len(),
            errors: probe_errors,
            p50: percentile(&probe_ms, 50.0),
            p99: percentile(&probe_ms, 99.0),
            max: probe_ms.last().copied(),
        },
    }
}

/// Opens `count` sessions, at most [`OPENING_AT_ONCE`] at a time.
async fn open_all(
    plan: &Arc<Plan>,
    count: usize,
) -> (Vec<Session>, std::collections::BTreeMap<String, u64>) {
    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (plan, gate) = (Arc::clone(plan), Arc::clone(&gate));
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                connect(&plan).await
            })
        })
        .collect();
    let mut sessions = Vec::with_capacity(count);
    let mut errors = std::collections::BTreeMap::new();
    for task in tasks {
        match task.await {
            Ok(Ok(session)) => sessions.push(session),
            Ok(Err(e)) => *errors.entry(e.key()).or_default() += 1,
            Err(_) => *errors.entry("task".to_string()).or_default() += 1,
        }
    }
    (sessions, errors)
}

/// How many of the sessions answer NOOP with 250.
async fn still_answering(sessions: Vec<Session>) -> usize {
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.client.command("NOOP", 250).await.is_ok() }))
        .collect();
    let mut answering = 0;
    for task in tasks {
        if matches!(task.await, Ok(true)) {
            answering += 1;
        }
    }
    answering
}
