//! Envelopes: who sent a queued message, to whom, where it came from, and the delivery
//! state of each recipient. Stored by the spool as JSON next to the message.
//!
//! This module holds data and small questions about it; it must not do I/O or decide
//! retry times (the schedule owns that).

use serde::{Deserialize, Serialize};

use super::QueueId;

/// The envelope of one queued message. The spool rewrites it whenever a recipient's
/// state changes; the message file itself never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub queue_id: QueueId,
    /// The reverse path without angle brackets; `""` is the null sender (`MAIL FROM:<>`).
    pub from: String,
    pub recipients: Vec<Recipient>,
    /// When the message was accepted, in Unix seconds.
    pub received_at: i64,
    /// Size of the message file in bytes.
    pub size: u64,
    pub origin: Origin,
    /// The sender has been told that delivery is delayed (sent once).
    #[serde(default)]
    pub delay_warned: bool,
}

/// Where a message entered the queue: needed for `Received:` headers, logs and abuse
/// reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Over SMTP: the client's IP address, the listener's name, and the login name when
    /// the client authenticated.
    Smtp {
        client: String,
        listener: String,
        login: Option<String>,
    },
    /// Through the local submission socket; the UID comes from the kernel.
    Local { uid: u32, user: String },
    /// Made by postern itself: a delivery status notification about another message.
    Notification { about: QueueId },
}

/// One recipient and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub status: RecipientStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, in Unix seconds; 0 means now.
    pub next_attempt: i64,
    /// The last temporary or permanent error, for `postern queue` and bounces.
    pub last_error: Option<String>,
    /// The server that gave `last_error` (`host:port`), when there was one.
    #[serde(default)]
    pub last_relay: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not yet delivered; may have been deferred.
    Pending,
    Delivered,
    /// Failed permanently (or gave up); a bounce is due or was sent.
    Bounced,
}

impl Envelope {
    /// A fresh envelope: every recipient pending, due now.
    pub fn new(
        queue_id: QueueId,
        from: String,
        recipients: Vec<String>,
        origin: Origin,
        size: u64,
        received_at: i64,
    ) -> Envelope {
        Envelope {
            queue_id,
            from,
            recipients: recipients.into_iter().map(Recipient::new).collect(),
            received_at,
            size,
            origin,
            delay_warned: false,
        }
    }

    /// True when no recipient is pending, so the message can leave the queue.
    pub fn is_done(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.status != RecipientStatus::Pending)
    }
}

impl Recipient {
    fn new(address: String) -> Recipient {
        Recipient {
            address,
            status: RecipientStatus::Pending,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            last_relay: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            QueueId::generate(),
            "alice@example.org".into(),
            vec!["bob@example.com".into(), "carol@example.net".into()],
            Origin::Local {
                uid: 1001,
                user: "alice".into(),
            },
            42,
            1_700_000_000,
        )
    }

    #[test]
    fn new_envelope_has_pending_recipients_due_now() {
        let env = sample();
        assert_eq!(env.recipients.len(), 2);
        for r in &env.recipients {
            assert_eq!(r.status, RecipientStatus::Pending);
            assert_eq!((r.attempts, r.next_attempt), (0, 0));
            assert_eq!(r.last_error, None);
        }
        assert!(!env.is_done());
    }

    #[test]
    fn done_when_no_recipient_is_pending() {
        let mut env = sample();
        env.recipients[0].status = RecipientStatus::Delivered;
        assert!(!env.is_done());
        env.recipients[1].status = RecipientStatus::Bounced;
        assert!(env.is_done());
    }

    #[test]
    fn json_round_trip() {
        let mut env = sample();
        env.origin = Origin::Smtp {
            client: "192.0.2.7".into(),
            listener: "submission".into(),
            login: Some("alice@example.org".into()),
        };
        let json = serde_json::to_string(&env).unwrap();
        assert!(json.contains("\"pending\""), "{json}");
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back, env);
    }
}
