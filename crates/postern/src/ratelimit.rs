//! Messages per hour, counted per sender identity (a login, a local Unix user).
//!
//! A sliding window: each key keeps the times of its recent messages, at most `limit`
//! of them, so memory stays bounded by the limit. On loopback every application shares
//! 127.0.0.1, so limits are kept per login and per attributed UID, never per IP there.
//! Time is passed in, so the counting is testable without waiting an hour.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(3600);

/// Whose messages are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Login(String),
    Uid(u32),
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    sent: Mutex<HashMap<RateKey, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// `Err(wait)` when `key` has sent `limit` messages in the last hour; `wait` is
    /// how long until the oldest of them leaves the window. A limit of 0 means none.
    pub fn check(&self, key: &RateKey, limit: u32, now: Instant) -> Result<(), Duration> {
        if limit == 0 {
            return Ok(());
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = sent.get_mut(key) else {
            return Ok(());
        };
        expire(times, now);
        if times.len() < limit as usize {
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        Err((oldest + WINDOW).saturating_duration_since(now))
    }

    /// Counts one accepted message.
    pub fn record(&self, key: RateKey, limit: u32, now: Instant) {
        if limit == 0 {
            return;
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let times = sent.entry(key).or_default();
        expire(times, now);
        times.push_back(now);
        while times.len() > limit as usize {
            times.pop_front();
        }
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_within_an_hour_and_frees_up_after() {
        let limiter = RateLimiter::default();
        let key = RateKey::Uid(1001);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limiter.check(&key, 3, t0 + Duration::from_secs(i)).is_ok());
            limiter.record(key.clone(), 3, t0 + Duration::from_secs(i));
        }
        let wait = limiter
            .check(&key, 3, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(3590));
        assert!(limiter.check(&key, 3, t0 + WINDOW).is_ok());
    }

    #[test]
    fn keys_are_counted_apart_and_zero_means_no_limit() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        limiter.record(RateKey::Login("a@example.com".into()), 1, now);
        assert!(
            limiter
                .check(&RateKey::Login("a@example.com".into()), 1, now)
                .is_err()
        );
        assert!(
            limiter
                .check(&RateKey::Login("b@example.com".into()), 1, now)
                .is_ok()
        );
        assert!(limiter.check(&RateKey::Uid(1), 0, now).is_ok());
    }
}
