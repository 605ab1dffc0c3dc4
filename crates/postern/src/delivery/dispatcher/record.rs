//! What an outcome does to a queued recipient: its new state, its log line and
//! metrics, the report a bounce or delay notice gives, and when to try again.
//!
//! Pure but for the log lines, the metrics and the retry jitter: `now` is passed in. It
//! must not write to the queue or queue notifications; the dispatcher does both.

use std::time::Duration;

use postern_proto::reply::Enhanced;

use crate::config::Config;
use crate::delivery::dsn::{DsnAction, RecipientReport};
use crate::delivery::outcome::{MAILDIR_RELAY, Outcome};
use crate::queue::{Envelope, RecipientStatus};

/// Applies an outcome to recipient `i` and logs it. Returns a report when the
/// recipient bounced, for the notification to the sender.
pub(super) fn record(
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
    if relay == MAILDIR_RELAY {
        "local"
    } else {
        "remote"
    }
}

fn age(now: i64, since: i64) -> Duration {
    Duration::from_secs(now.saturating_sub(since).max(0) as u64)
}

/// The "still trying" notice, once, when the message has waited `delay_warning`.
pub(super) fn delay_warning_due(
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

/// The earliest retry among pending recipients.
pub(super) fn next_attempt(envelope: &Envelope) -> Option<i64> {
    envelope
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .map(|r| r.next_attempt)
        .min()
}

/// `retry_first`, doubling per attempt up to `retry_max`, plus up to 10 % jitter so
/// that retries after an outage do not all come at once.
pub(super) fn retry_delay(config: &Config, attempts: u32) -> i64 {
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
    use crate::queue::{Origin, QueueId};

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
