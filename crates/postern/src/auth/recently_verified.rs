//! A short-lived memory of the last password that verified for one account, so that a
//! client logging in again and again (one message per connection, as PHP scripts do) costs
//! one slow hash computation per [`REMEMBER_FOR`], not one per login. Dovecot's auth cache
//! does the same for its `auth_cache_ttl`.
//!
//! # Security
//!
//! The password itself is never kept: only an HMAC-SHA256 of it under a key drawn at
//! random when the process starts and never written anywhere, so a memory dump does not
//! give a hash that can be attacked offline without the key. Only successes are
//! remembered: a wrong password always costs the full hash (and the failure padding), so
//! the memory cannot speed up guessing. Each [`RecentlyVerified`] belongs to one load of
//! the passwd-file: any change to the file (a new password, a deleted account) or a
//! reload starts from an empty memory.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use ring::hmac;

/// How long a verified password is remembered. A password changed through the
/// passwd-file takes effect at once regardless (the file change empties the memory).
pub const REMEMBER_FOR: Duration = Duration::from_secs(300);

/// The last password that verified for one account, as a keyed hash, and when.
#[derive(Default)]
pub struct RecentlyVerified {
    last: Mutex<Option<(hmac::Tag, Instant)>>,
}

impl RecentlyVerified {
    /// Whether `password` is the one that verified less than [`REMEMBER_FOR`] before `now`.
    /// Compares in constant time.
    pub fn matches(&self, password: &str, now: Instant) -> bool {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((tag, at)) = last.as_ref() else {
            return false;
        };
        let fresh = now
            .checked_duration_since(*at)
            .is_some_and(|age| age < REMEMBER_FOR);
        fresh && hmac::verify(key(), password.as_bytes(), tag.as_ref()).is_ok()
    }

    /// Remembers `password` as verified at `now`, replacing any earlier one.
    pub fn remember(&self, password: &str, now: Instant) {
        let tag = hmac::sign(key(), password.as_bytes());
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((tag, now));
    }
}

/// The process's HMAC key, drawn on first use.
fn key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let secret: [u8; 32] = rand::rng().random();
        hmac::Key::new(hmac::HMAC_SHA256, &secret)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_the_verified_password_and_only_for_a_while() {
        let memory = RecentlyVerified::default();
        let t0 = Instant::now();
        assert!(!memory.matches("secret", t0), "empty memory matched");
        memory.remember("secret", t0);
        assert!(memory.matches("secret", t0 + Duration::from_secs(1)));
        assert!(!memory.matches("Secret", t0 + Duration::from_secs(1)));
        assert!(!memory.matches("", t0));
        assert!(
            !memory.matches("secret", t0 + REMEMBER_FOR),
            "expired entry matched"
        );
        memory.remember("other", t0);
        assert!(!memory.matches("secret", t0), "replaced entry matched");
        assert!(memory.matches("other", t0));
    }
}
