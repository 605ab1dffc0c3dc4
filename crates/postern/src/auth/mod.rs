//! Authentication: who may log in, and which mailboxes exist.
//!
//! Owns the [`Credentials`] trait the server asks (shaped like chasquid's auth backend), the
//! passwd-file backend ([`passwd_file`]) and the password schemes ([`scheme`]). It does not
//! know SMTP: the server maps the answers to replies (`235`, `535 5.7.8`, and `454 4.7.0` for
//! any [`AuthError`]).
//!
//! # Security
//!
//! Exposed to logins and passwords typed by anyone who reaches a listener. It trusts the
//! passwd-file (written by root or `postern user`) and nothing a client says. It never logs,
//! prints or stores a password, and no error message contains one or a stored hash. A backend
//! it cannot read gives [`AuthError`] (a temporary failure), never "wrong password" or "no such
//! user". [`verify_padded`] pads every failed check to the same duration with jitter, and
//! unknown users cost a hash computation too, so timing does not tell whether a login exists;
//! hashes and `{PLAIN}` passwords are compared in constant time. Successes are not padded:
//! the reply (`235`) tells the client anyway, and only someone who knows the password gets
//! one. A password that verified is remembered briefly as a keyed hash
//! ([`recently_verified`]), so repeated logins skip the slow hash.

pub mod guard;
pub mod passwd_file;
pub mod reader;
pub mod recently_verified;
pub mod scheme;

use std::time::{Duration, Instant};

use rand::Rng;

pub use passwd_file::PasswdFile;
pub use scheme::SchemeError;

/// The outcome of checking a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The login exists and the password matches.
    Accepted,
    /// The login does not exist or the password does not match (the caller must not say which).
    Rejected,
}

/// Why a credentials backend could not answer. Every variant is temporary for the client:
/// the caller answers `454 4.7.0` (or `451` for a recipient lookup), never `535` or `550`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The backend is unavailable (file unreadable, malformed, …).
    #[error("credentials backend unavailable: {0}")]
    Unavailable(String),
    /// The user exists but the stored hash cannot be used (unknown scheme, malformed hash).
    #[error("the stored password hash of {login} cannot be used: {source}")]
    BadHash {
        /// The canonical login whose line needs fixing.
        login: String,
        /// What is wrong with the hash.
        #[source]
        source: SchemeError,
    },
}

/// A user account as the rest of the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The lower-case canonical address from the passwd-file.
    pub login: String,
    /// Per-account sending limits from the passwd-file's extra fields, overriding
    /// `[limits]` for this login.
    pub limits: AccountLimits,
    /// The uid and gid fields of the passwd-file line (Dovecot's userdb uid/gid), which
    /// own the account's Maildir files.
    pub owner: Option<(u32, u32)>,
}

/// `postern_messages_per_hour=N` and `postern_recipients_per_hour=N` in the extra-fields
/// column of a passwd-file line (Dovecot ignores fields it does not know).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountLimits {
    pub messages_per_hour: Option<u32>,
    pub recipients_per_hour: Option<u32>,
}

impl AccountLimits {
    /// Reads the extra fields (space-separated `key=value`); unknown keys are Dovecot's.
    pub fn from_extra_fields(extra: &str) -> AccountLimits {
        let mut limits = AccountLimits::default();
        for field in extra.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let value = value.parse().ok();
            match key {
                "postern_messages_per_hour" => limits.messages_per_hour = value,
                "postern_recipients_per_hour" => limits.recipients_per_hour = value,
                _ => {}
            }
        }
        limits
    }
}

/// A source of accounts and passwords.
pub trait Credentials: Send + Sync {
    /// Checks a login and password. Login comparison is case-insensitive. Blocking (hashing is
    /// slow): callers run it in `spawn_blocking`, through [`verify_padded`].
    fn verify(&self, login: &str, password: &str) -> Result<Verification, AuthError>;

    /// Looks up a mailbox by address, case-insensitively.
    fn lookup(&self, address: &str) -> Result<Option<Account>, AuthError>;

    /// The domains (lower case) of the mailboxes whose account carries `uid` as owner:
    /// what a local Unix user may have its mail DKIM-signed for.
    fn domains_owned_by(&self, uid: u32) -> Result<Vec<String>, AuthError>;
}

/// The least time a failed verification takes (chasquid's `AuthDuration`). Long enough to
/// cover a default SHA-512-crypt hash; slower schemes can still leak a little.
pub const AUTH_DURATION: Duration = Duration::from_millis(100);

/// Pads a failed verification (wrong password, unknown user, backend error) to a minimum
/// duration with jitter ([`AUTH_DURATION`] plus up to 20 %), so timing doesn't reveal
/// whether the user exists. A success returns as soon as it is known. Blocking
/// (`std::thread::sleep`).
pub fn verify_padded(
    backend: &dyn Credentials,
    login: &str,
    password: &str,
) -> Result<Verification, AuthError> {
    let deadline = Instant::now() + padded_duration();
    let outcome = backend.verify(login, password);
    if !matches!(outcome, Ok(Verification::Accepted)) {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
    outcome
}

/// [`AUTH_DURATION`] plus a random 0 to 20 % of it.
fn padded_duration() -> Duration {
    let jitter_max = AUTH_DURATION / 5;
    let jitter = rand::rng().random_range(Duration::ZERO..=jitter_max);
    AUTH_DURATION + jitter
}

/// The canonical form of a login or address: lower case, so that lookups ignore case.
fn canonical(login: &str) -> String {
    login.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers immediately with a fixed outcome, after an optional delay.
    struct Fake {
        delay: Duration,
        fail: bool,
    }

    impl Credentials for Fake {
        fn verify(&self, login: &str, password: &str) -> Result<Verification, AuthError> {
            std::thread::sleep(self.delay);
            if self.fail {
                return Err(AuthError::Unavailable("down".into()));
            }
            if login == "a@example.com" && password == "right" {
                return Ok(Verification::Accepted);
            }
            Ok(Verification::Rejected)
        }

        fn domains_owned_by(&self, _uid: u32) -> Result<Vec<String>, AuthError> {
            Ok(Vec::new())
        }

        fn lookup(&self, _address: &str) -> Result<Option<Account>, AuthError> {
            Ok(None)
        }
    }

    fn timed(
        backend: &Fake,
        login: &str,
        password: &str,
    ) -> (Duration, Result<Verification, AuthError>) {
        let start = Instant::now();
        let outcome = verify_padded(backend, login, password);
        (start.elapsed(), outcome)
    }

    #[test]
    fn failures_keep_their_outcome_and_last_at_least_the_auth_duration() {
        let fast = Fake {
            delay: Duration::ZERO,
            fail: false,
        };
        for (login, password, expected) in [
            ("a@example.com", "wrong", Verification::Rejected),
            ("nobody@example.com", "right", Verification::Rejected),
        ] {
            let (took, outcome) = timed(&fast, login, password);
            assert_eq!(outcome.unwrap(), expected);
            assert!(took >= AUTH_DURATION, "{took:?}");
            // The jitter is at most 20 %; allow generous slack for a loaded machine.
            assert!(took < AUTH_DURATION * 3, "{took:?}");
        }
    }

    #[test]
    fn successes_are_not_padded() {
        let fast = Fake {
            delay: Duration::ZERO,
            fail: false,
        };
        let (took, outcome) = timed(&fast, "a@example.com", "right");
        assert_eq!(outcome.unwrap(), Verification::Accepted);
        assert!(took < AUTH_DURATION, "{took:?}");
    }

    #[test]
    fn padding_applies_to_errors_too() {
        let failing = Fake {
            delay: Duration::ZERO,
            fail: true,
        };
        let (took, outcome) = timed(&failing, "a@example.com", "right");
        assert!(matches!(outcome, Err(AuthError::Unavailable(_))));
        assert!(took >= AUTH_DURATION, "{took:?}");
    }

    #[test]
    fn slow_backends_are_not_padded_further() {
        let slow = Fake {
            delay: AUTH_DURATION * 2,
            fail: false,
        };
        let (took, outcome) = timed(&slow, "a@example.com", "right");
        assert_eq!(outcome.unwrap(), Verification::Accepted);
        assert!(took < AUTH_DURATION * 4, "{took:?}");
    }

    #[test]
    fn padded_durations_vary_within_twenty_percent() {
        let durations: Vec<Duration> = (0..50).map(|_| padded_duration()).collect();
        assert!(
            durations
                .iter()
                .all(|d| *d >= AUTH_DURATION && *d <= AUTH_DURATION * 6 / 5)
        );
        assert!(durations.iter().any(|d| *d != durations[0]), "no jitter");
    }
}
