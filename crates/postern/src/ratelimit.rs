//! Messages and recipients per hour, counted per sender identity: a login, a local
//! Unix user, a remote IP address.
//!
//! A sliding window: each key keeps the times of its recent sends, at most `limit` of
//! them, so memory stays bounded by the limit. On loopback every application shares
//! 127.0.0.1, so there limits are kept per login and per attributed Unix user, never per
//! IP. Time is passed in, so the counting is testable without waiting an hour.

use crate::admission::{client_key, client_network};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::AccountLimits;
use crate::config::Limits;

const WINDOW: Duration = Duration::from_secs(3600);

/// Whose sending is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Login(String),
    Uid(u32),
    Ip(IpAddr),
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    Messages,
    Recipients,
}

impl Measure {
    /// What is counted, in a reply: "messages" or "recipients".
    pub fn noun(self) -> &'static str {
        match self {
            Measure::Messages => "messages",
            Measure::Recipients => "recipients",
        }
    }
}

/// One identity and its hourly limits (0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub key: RateKey,
    /// For replies and logs, e.g. `login alice@example.com`.
    pub who: String,
    pub messages: u32,
    pub recipients: u32,
}

impl Budget {
    pub fn limit(&self, measure: Measure) -> u32 {
        match measure {
            Measure::Messages => self.messages,
            Measure::Recipients => self.recipients,
        }
    }
}

/// The budgets a sender's mail counts against: its login (with the account's own
/// limits when the passwd-file sets them), its Unix user, and its IP address unless
/// that is loopback.
pub fn budgets(
    limits: &Limits,
    login: Option<(&str, AccountLimits)>,
    uid: Option<(u32, &str)>,
    ip: Option<IpAddr>,
) -> Vec<Budget> {
    let mut out = Vec::new();
    if let Some((login, account)) = login {
        out.push(Budget {
            key: RateKey::Login(login.to_lowercase()),
            who: format!("login {login}"),
            messages: account
                .messages_per_hour
                .unwrap_or(limits.login_messages_per_hour),
            recipients: account
                .recipients_per_hour
                .unwrap_or(limits.login_recipients_per_hour),
        });
    }
    if let Some((uid, name)) = uid {
        out.push(Budget {
            key: RateKey::Uid(uid),
            who: format!("uid {uid} ({name})"),
            messages: limits.uid_messages_per_hour,
            recipients: limits.uid_recipients_per_hour,
        });
    }
    // An IPv6 client is counted by its /64, as connections and failed logins are.
    if let Some(ip) = ip.map(client_network).filter(|ip| !ip.is_loopback()) {
        out.push(Budget {
            key: RateKey::Ip(ip),
            who: format!("client {}", client_key(ip)),
            messages: limits.ip_messages_per_hour,
            recipients: limits.ip_recipients_per_hour,
        });
    }
    out
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    sent: Mutex<HashMap<(RateKey, Measure), VecDeque<Instant>>>,
}

impl RateLimiter {
    /// `Err(wait)` when adding `count` would take `key` over `limit` in the last hour;
    /// `wait` is how long until enough of the window frees up. A limit of 0 means none.
    pub fn check(
        &self,
        key: &RateKey,
        measure: Measure,
        limit: u32,
        count: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        if limit == 0 {
            return Ok(());
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        match sent.get_mut(&(key.clone(), measure)) {
            Some(times) => fits(times, limit, count, now),
            None if count <= limit => Ok(()),
            None => Err(WINDOW),
        }
    }

    /// Counts one message with `recipients` recipients against every budget, but only if
    /// it fits in all of them; else counts nothing and says which budget refuses, for
    /// which measure, and how long until it would fit. Checking and counting under one
    /// lock is what keeps parallel sessions of one sender from all passing the check
    /// before any of them is counted.
    pub fn reserve_message(
        &self,
        budgets: &[Budget],
        recipients: u32,
        now: Instant,
    ) -> Result<(), (Budget, Measure, Duration)> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = |b: &Budget| {
            [(Measure::Messages, 1), (Measure::Recipients, recipients)]
                .into_iter()
                .map(|(measure, count)| (b.limit(measure), measure, count))
                .filter(|&(limit, _, _)| limit > 0)
                .collect::<Vec<_>>()
        };
        for budget in budgets {
            for (limit, measure, count) in wanted(budget) {
                let times = sent.entry((budget.key.clone(), measure)).or_default();
                fits(times, limit, count, now).map_err(|wait| (budget.clone(), measure, wait))?;
            }
        }
        for budget in budgets {
            for (limit, measure, count) in wanted(budget) {
                let times = sent.entry((budget.key.clone(), measure)).or_default();
                push(times, limit, count, now);
            }
        }
        Ok(())
    }

    /// Checks every budget; the first one over its limit decides.
    pub fn check_all(
        &self,
        budgets: &[Budget],
        measure: Measure,
        count: u32,
        now: Instant,
    ) -> Result<(), (Budget, Duration)> {
        for budget in budgets {
            let limit = budget.limit(measure);
            if let Err(wait) = self.check(&budget.key, measure, limit, count, now) {
                return Err((budget.clone(), wait));
            }
        }
        Ok(())
    }

    /// Counts `count` sends.
    pub fn record(&self, key: RateKey, measure: Measure, limit: u32, count: u32, now: Instant) {
        if limit == 0 {
            return;
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        push(sent.entry((key, measure)).or_default(), limit, count, now);
    }
}

/// Whether `count` more sends fit in `limit` with the sends `times` of the last hour;
/// else how long until they would.
fn fits(
    times: &mut VecDeque<Instant>,
    limit: u32,
    count: u32,
    now: Instant,
) -> Result<(), Duration> {
    expire(times, now);
    let used = times.len() as u32;
    if used.saturating_add(count) <= limit {
        return Ok(());
    }
    // The send fits once `used + count - limit` of the oldest entries have expired.
    let must_expire = (used + count - limit) as usize;
    let freed_at = times.get(must_expire.saturating_sub(1)).copied();
    Err(freed_at.map_or(WINDOW, |t| (t + WINDOW).saturating_duration_since(now)))
}

/// Counts `count` sends at `now`, keeping at most `limit` times.
fn push(times: &mut VecDeque<Instant>, limit: u32, count: u32, now: Instant) {
    expire(times, now);
    for _ in 0..count.min(limit) {
        times.push_back(now);
    }
    while times.len() > limit as usize {
        times.pop_front();
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

    const M: Measure = Measure::Messages;

    #[test]
    fn the_limit_holds_within_an_hour_and_frees_up_after() {
        let limiter = RateLimiter::default();
        let key = RateKey::Uid(1001);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(
                limiter
                    .check(&key, M, 3, 1, t0 + Duration::from_secs(i))
                    .is_ok()
            );
            limiter.record(key.clone(), M, 3, 1, t0 + Duration::from_secs(i));
        }
        let wait = limiter
            .check(&key, M, 3, 1, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(3590));
        assert!(limiter.check(&key, M, 3, 1, t0 + WINDOW).is_ok());
    }

    #[test]
    fn keys_and_measures_are_counted_apart_and_zero_means_no_limit() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        limiter.record(RateKey::Login("a@example.com".into()), M, 1, 1, now);
        assert!(
            limiter
                .check(&RateKey::Login("a@example.com".into()), M, 1, 1, now)
                .is_err()
        );
        assert!(
            limiter
                .check(
                    &RateKey::Login("a@example.com".into()),
                    Measure::Recipients,
                    1,
                    1,
                    now
                )
                .is_ok()
        );
        assert!(
            limiter
                .check(&RateKey::Login("b@example.com".into()), M, 1, 1, now)
                .is_ok()
        );
        assert!(limiter.check(&RateKey::Uid(1), M, 0, 1, now).is_ok());
    }

    #[test]
    fn recipients_count_in_bulk() {
        let limiter = RateLimiter::default();
        let key = RateKey::Ip("203.0.113.9".parse().unwrap());
        let now = Instant::now();
        assert!(
            limiter
                .check(&key, Measure::Recipients, 10, 11, now)
                .is_err(),
            "one message over the limit"
        );
        limiter.record(key.clone(), Measure::Recipients, 10, 8, now);
        assert!(limiter.check(&key, Measure::Recipients, 10, 2, now).is_ok());
        assert!(
            limiter
                .check(&key, Measure::Recipients, 10, 3, now)
                .is_err()
        );
    }

    fn budget(key: RateKey, messages: u32, recipients: u32) -> Budget {
        Budget {
            who: format!("{key:?}"),
            key,
            messages,
            recipients,
        }
    }

    #[test]
    fn a_reservation_counts_everywhere_or_nowhere() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        let login = budget(RateKey::Login("a@example.com".into()), 2, 0);
        let uid = budget(RateKey::Uid(1001), 0, 3);
        let both = [login.clone(), uid.clone()];
        assert!(limiter.reserve_message(&both, 2, now).is_ok());
        // The uid's recipients would overflow: refused, and the login is not charged.
        let (refusing, measure, _) = limiter.reserve_message(&both, 2, now).unwrap_err();
        assert_eq!((refusing, measure), (uid, Measure::Recipients));
        assert!(
            limiter.check(&login.key, M, 2, 1, now).is_ok(),
            "charged anyway"
        );
        // One more message with one recipient fits both, then the login is full.
        assert!(limiter.reserve_message(&both, 1, now).is_ok());
        let (refusing, measure, wait) = limiter.reserve_message(&both, 0, now).unwrap_err();
        assert_eq!((refusing, measure, wait), (login, M, WINDOW));
    }

    #[test]
    fn budgets_skip_loopback_ips_and_apply_account_overrides() {
        let limits = Limits {
            login_messages_per_hour: 100,
            ip_messages_per_hour: 50,
            ..Limits::default()
        };
        let account = AccountLimits {
            messages_per_hour: Some(5),
            recipients_per_hour: None,
        };
        let b = budgets(
            &limits,
            Some(("Alice@Example.com", account)),
            None,
            Some("127.0.0.1".parse().unwrap()),
        );
        assert_eq!(b.len(), 1, "no IP budget on loopback");
        assert_eq!(b[0].key, RateKey::Login("alice@example.com".into()));
        assert_eq!(b[0].messages, 5, "the account's own limit wins");
        let b = budgets(
            &limits,
            None,
            Some((1001, "www")),
            Some("198.51.100.7".parse().unwrap()),
        );
        assert_eq!(b.iter().map(|b| b.messages).collect::<Vec<_>>(), [0, 50]);
    }
}
