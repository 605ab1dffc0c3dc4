//! Brute-force defence: failed logins counted per client, and a block once there are
//! too many.
//!
//! The client is its IP address, except on loopback, where every customer's code
//! shares 127.0.0.1: there it is the attributed Unix user, so one site's password
//! guessing cannot lock every other site out. While blocked, even a correct password
//! is refused. Time is passed in, so this is testable without waiting.
//!
//! A client's login attempts also take turns ([`FailureGuard::turn`]): one password check
//! per client at a time, with the failure delay inside the turn. Otherwise 40 parallel
//! connections would all be checked before the first failure was counted, and each would
//! wait out its delay at the same time as the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

#[derive(Debug, Default)]
pub struct FailureGuard {
    clients: Mutex<HashMap<String, Failures>>,
    /// One lock per client with a login attempt in progress.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A client's turn to have a password checked; the next attempt waits until it is dropped.
pub struct Turn<'a> {
    guard: &'a FailureGuard,
    client: String,
    held: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut turns = self.guard.turns.lock().unwrap_or_else(|p| p.into_inner());
        // Nobody else holds or waits for this client's lock: forget it.
        if turns
            .get(&self.client)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            turns.remove(&self.client);
        }
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

impl FailureGuard {
    /// Waits for `client`'s turn: its earlier attempts have been checked and counted.
    pub async fn turn(&self, client: &str) -> Turn<'_> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(turns.entry(client.to_string()).or_default())
        };
        let held = lock.lock_owned().await;
        Turn {
            guard: self,
            client: client.to_string(),
            held: Some(held),
        }
    }

    /// How long `client` stays blocked, if it is.
    pub fn blocked_for(&self, client: &str, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let until = clients.get(client)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure. Returns the block length when this failure starts a block.
    /// Failures older than `block` are forgotten, so a user who mistypes now and then
    /// is never blocked. A `limit` of 0 disables blocking.
    pub fn record_failure(
        &self,
        client: &str,
        limit: u32,
        block: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|_, f| {
            now.saturating_duration_since(f.first) < block
                || f.blocked_until.is_some_and(|u| u > now)
        });
        let entry = clients.entry(client.to_string()).or_insert(Failures {
            count: 0,
            first: now,
            blocked_until: None,
        });
        entry.count += 1;
        if limit > 0 && entry.count >= limit && entry.blocked_until.is_none_or(|u| u <= now) {
            entry.blocked_until = Some(now + block);
            return Some(block);
        }
        None
    }

    /// Failed logins counted for `client` now.
    pub fn count(&self, client: &str) -> u32 {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(client).map_or(0, |f| f.count)
    }

    /// A successful login clears the client's failures.
    pub fn record_success(&self, client: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.remove(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clients_attempts_take_turns_and_others_do_not_wait() {
        let g = Arc::new(FailureGuard::default());
        let first = g.turn("uid:1001").await;
        // Another client is not held up.
        drop(g.turn("203.0.113.9").await);
        let waiting = {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let _second = g.turn("uid:1001").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the second attempt waits for the first"
        );
        drop(first);
        waiting.await.unwrap();
        assert!(
            g.turns.lock().unwrap().is_empty(),
            "no lock is kept for idle clients"
        );
    }

    const BLOCK: Duration = Duration::from_secs(600);

    #[test]
    fn blocks_after_the_limit_until_the_time_has_passed() {
        let g = FailureGuard::default();
        let t0 = Instant::now();
        for i in 0..2 {
            assert_eq!(
                g.record_failure("203.0.113.9", 3, BLOCK, t0 + Duration::from_secs(i)),
                None
            );
        }
        assert_eq!(g.blocked_for("203.0.113.9", t0), None);
        assert_eq!(
            g.record_failure("203.0.113.9", 3, BLOCK, t0 + Duration::from_secs(2)),
            Some(BLOCK)
        );
        assert_eq!(
            g.blocked_for("203.0.113.9", t0 + Duration::from_secs(2)),
            Some(BLOCK)
        );
        assert_eq!(
            g.blocked_for("198.51.100.1", t0),
            None,
            "other clients are not blocked"
        );
        assert_eq!(
            g.blocked_for("203.0.113.9", t0 + Duration::from_secs(2) + BLOCK),
            None
        );
    }

    #[test]
    fn success_clears_and_old_failures_are_forgotten() {
        let g = FailureGuard::default();
        let t0 = Instant::now();
        g.record_failure("uid:1001", 2, BLOCK, t0);
        g.record_success("uid:1001");
        assert_eq!(g.record_failure("uid:1001", 2, BLOCK, t0), None);
        assert_eq!(
            g.record_failure("uid:1001", 2, BLOCK, t0 + BLOCK + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            g.record_failure("x", 0, BLOCK, t0),
            None,
            "0 disables blocking"
        );
    }
}
