//! Byte transcripts against a scripted fake server, each fed whole, byte by byte, and
//! split at every offset: all must give the same actions. Then the client against this
//! crate's own server session, in memory.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::reply::Reply;
use crate::server::{Action, Question, Session, SessionConfig};

fn config(starttls: bool) -> ClientConfig {
    ClientConfig {
        helo_name: "client.test".into(),
        starttls,
    }
}

fn message(from: &str, rcpts: &[&str], body: &[u8]) -> (Envelope, Vec<u8>) {
    let envelope = Envelope {
        from: from.into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        size: body.len() as u64,
        eight_bit: body.iter().any(|&b| b >= 0x80),
        smtputf8: false,
    };
    (envelope, body.to_vec())
}

/// Answers each expected piece of client output with a scripted reply. A step that
/// expects `""` answers as soon as the step before it is done (the greeting).
struct FakeServer {
    script: VecDeque<(&'static str, &'static str)>,
    received: Vec<u8>,
    /// Replies not yet delivered to the client.
    pending: Vec<u8>,
}

impl FakeServer {
    fn new(script: &[(&'static str, &'static str)]) -> FakeServer {
        let mut s = FakeServer {
            script: script.iter().copied().collect(),
            received: Vec::new(),
            pending: Vec::new(),
        };
        s.receive(b"");
        s
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.received.extend_from_slice(bytes);
        while let Some(&(expect, reply)) = self.script.front() {
            if !self.received.starts_with(expect.as_bytes()) {
                assert!(
                    expect.as_bytes().starts_with(&self.received),
                    "client sent {:?}, the script expects {expect:?}",
                    String::from_utf8_lossy(&self.received)
                );
                return;
            }
            self.received.drain(..expect.len());
            self.pending.extend_from_slice(reply.as_bytes());
            self.script.pop_front();
        }
        assert!(
            self.received.is_empty(),
            "client sent {:?} after the end of the script",
            String::from_utf8_lossy(&self.received)
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Split {
    Whole,
    Bytewise,
    /// Server output is cut once, at this offset of everything the server sends.
    At(usize),
}

/// Drives the client like the delivery code would: it sends the queued messages, one
/// per `Ready`, then quits.
struct Driver {
    client: Client,
    server: FakeServer,
    messages: VecDeque<(Envelope, Vec<u8>)>,
    log: Vec<String>,
    outcomes: Vec<TransactionOutcome>,
    split: Split,
    delivered: usize,
}

impl Driver {
    fn run(
        config: ClientConfig,
        script: &[(&'static str, &'static str)],
        messages: &[(Envelope, Vec<u8>)],
        split: Split,
    ) -> Driver {
        let mut d = Driver {
            client: Client::new(config),
            server: FakeServer::new(script),
            messages: messages.iter().cloned().collect(),
            log: Vec::new(),
            outcomes: Vec::new(),
            split,
            delivered: 0,
        };
        loop {
            d.drain();
            if d.server.pending.is_empty() {
                break;
            }
            let chunk = std::mem::take(&mut d.server.pending);
            d.deliver(&chunk);
        }
        assert!(
            d.server.script.is_empty(),
            "script steps left: {:?}",
            d.server.script
        );
        d
    }

    fn deliver(&mut self, chunk: &[u8]) {
        let pieces: Vec<&[u8]> = match self.split {
            Split::Whole => vec![chunk],
            Split::Bytewise => chunk.chunks(1).collect(),
            Split::At(k) if k > self.delivered && k < self.delivered + chunk.len() => {
                let (a, b) = chunk.split_at(k - self.delivered);
                vec![a, b]
            }
            Split::At(_) => vec![chunk],
        };
        for piece in pieces {
            self.client.handle_bytes(piece);
            self.delivered += piece.len();
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.client.poll_action() {
            match action {
                ClientAction::Send(bytes) => {
                    self.log
                        .push(format!("C: {}", String::from_utf8_lossy(&bytes)));
                    self.server.receive(&bytes);
                }
                ClientAction::StartTls => {
                    self.log.push("StartTls".into());
                    self.client.handle_tls_established();
                }
                ClientAction::Ready(ext) => {
                    self.log.push(ready(&ext));
                    self.next_message();
                }
                ClientAction::Delivered(outcome) => {
                    self.log.push(delivered(&outcome));
                    self.outcomes.push(outcome);
                }
                ClientAction::Failed(f) => self.log.push(format!("Failed: {f}")),
                ClientAction::Closed => self.log.push("Closed".into()),
            }
        }
    }

    fn next_message(&mut self) {
        while let Some((envelope, body)) = self.messages.pop_front() {
            match self.client.send(&envelope, &body) {
                Ok(()) => return,
                Err(e) => self.log.push(format!("Refused: {e}")),
            }
        }
        self.client.quit();
    }
}

fn ready(ext: &Extensions) -> String {
    let mut words = Vec::new();
    if ext.pipelining {
        words.push("PIPELINING".to_string());
    }
    if let Some(n) = ext.size {
        words.push(format!("SIZE={n}"));
    }
    for (on, word) in [
        (ext.eight_bit_mime, "8BITMIME"),
        (ext.smtputf8, "SMTPUTF8"),
        (ext.starttls, "STARTTLS"),
        (ext.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
    ] {
        if on {
            words.push(word.to_string());
        }
    }
    format!("Ready[{}]", words.join(" "))
}

fn delivered(o: &TransactionOutcome) -> String {
    let rcpts: Vec<String> = o.rcpts.iter().map(ToString::to_string).collect();
    let data = o
        .data
        .as_ref()
        .map_or("none".to_string(), ToString::to_string);
    format!(
        "Delivered mail={} rcpts=[{}] data={data}",
        o.mail,
        rcpts.join(" | ")
    )
}

/// Runs the script with the server's output whole, byte by byte and cut at every
/// offset; all runs must log the same. Returns the whole run.
fn transcript(
    config: ClientConfig,
    script: &[(&'static str, &'static str)],
    messages: &[(Envelope, Vec<u8>)],
) -> Driver {
    let whole = Driver::run(config.clone(), script, messages, Split::Whole);
    let total = whole.delivered;
    let splits = std::iter::once(Split::Bytewise).chain((1..total).map(Split::At));
    for split in splits {
        let d = Driver::run(config.clone(), script, messages, split);
        assert_eq!(d.log, whole.log, "server output {split:?}");
    }
    whole
}

const GREETING: &str = "220 mx.test ESMTP\r\n";
const EHLO: &str = "EHLO client.test\r\n";
const EHLO_PIPELINING: &str = "250-mx.test greets client.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n";
const READY_PIPELINING: &str = "Ready[PIPELINING SIZE=1000 8BITMIME SMTPUTF8 ENHANCEDSTATUSCODES]";
const EHLO_LOCK_STEP: &str = "250-mx.test\r\n250 8BITMIME\r\n";
const EHLO_STARTTLS: &str = "250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
const QUIT: (&str, &str) = ("QUIT\r\n", "221 2.0.0 bye\r\n");

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

#[test]
fn plain_session_with_pipelining() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=10\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
                "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n250 2.1.5 Recipient ok\r\n354 2.0.0 End data\r\n",
            ),
            ("Hi\r\n..dot\r\n.\r\n", "250 2.0.0 Ok: queued as Q1\r\n"),
            QUIT,
        ],
        &[message(
            "a@x.test",
            &["b@y.test", "c@y.test"],
            b"Hi\r\n.dot\r\n",
        )],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            READY_PIPELINING,
            "C: MAIL FROM:<a@x.test> SIZE=10\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
            "C: Hi\r\n..dot\r\n.\r\n",
            "Delivered mail=250 2.1.0 Sender ok rcpts=[250 2.1.5 Recipient ok | 250 2.1.5 Recipient ok] data=250 2.0.0 Ok: queued as Q1",
            READY_PIPELINING,
            "C: QUIT\r\n",
            "Closed",
        ]
    );
    assert_eq!(d.outcomes[0].outcome_for(1).text, "Ok: queued as Q1");
    assert!(!d.client.is_tls());
}

#[test]
fn lock_step_without_pipelining() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_LOCK_STEP),
            ("MAIL FROM:<> BODY=8BITMIME\r\n", "250 ok\r\n"),
            ("RCPT TO:<b@y.test>\r\n", "550 5.1.1 no such user\r\n"),
            ("RCPT TO:<c@y.test>\r\n", "250 ok\r\n"),
            ("DATA\r\n", "354 go ahead\r\n"),
            ("caf\u{e9}\r\n.\r\n", "250 queued\r\n"),
            QUIT,
        ],
        &[message(
            "",
            &["b@y.test", "c@y.test"],
            "café\r\n".as_bytes(),
        )],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            "Ready[8BITMIME]",
            "C: MAIL FROM:<> BODY=8BITMIME\r\n",
            "C: RCPT TO:<b@y.test>\r\n",
            "C: RCPT TO:<c@y.test>\r\n",
            "C: DATA\r\n",
            "C: café\r\n.\r\n",
            "Delivered mail=250 ok rcpts=[550 5.1.1 no such user | 250 ok] data=250 queued",
            "Ready[8BITMIME]",
            "C: QUIT\r\n",
            "Closed",
        ]
    );
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, "502 5.5.1 Command not implemented\r\n"),
            ("HELO client.test\r\n", "250 mx.test\r\n"),
            ("MAIL FROM:<a@x.test>\r\n", "250 ok\r\n"),
            ("RCPT TO:<b@y.test>\r\n", "250 ok\r\n"),
            ("DATA\r\n", "354 go\r\n"),
            ("x\r\n.\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[..3],
        [
            "C: EHLO client.test\r\n",
            "C: HELO client.test\r\n",
            "Ready[]"
        ]
    );
    assert_eq!(d.client.extensions(), &Extensions::default());
}

#[test]
fn ehlo_and_helo_refused_fail_the_session() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, "500 5.5.2 what\r\n"),
            ("HELO client.test\r\n", "550 5.7.1 go away\r\n"),
        ],
        &[],
    );
    assert_eq!(
        d.log.last().map(String::as_str),
        Some("Failed: server replied 550 5.7.1 go away")
    );
    // A transient refusal of EHLO is not a reason to try HELO.
    let d = transcript(
        config(true),
        &[("", GREETING), (EHLO, "451 4.3.0 try later\r\n")],
        &[],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            "Failed: server replied 451 4.3.0 try later"
        ]
    );
}

#[test]
fn bad_greeting_fails_with_the_reply() {
    let d = transcript(
        config(true),
        &[("", "554-mx.test\r\n554 5.7.1 no service for you\r\n")],
        &[],
    );
    assert_eq!(
        d.log,
        ["Failed: server replied 554 5.7.1 mx.test no service for you"]
    );
}

#[test]
fn starttls_then_ehlo_again_with_new_extensions() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_STARTTLS),
            ("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n"),
            (
                EHLO,
                "250-mx.test\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 SIZE 500\r\n",
            ),
            QUIT,
        ],
        &[],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            "C: STARTTLS\r\n",
            "StartTls",
            "C: EHLO client.test\r\n",
            "Ready[PIPELINING SIZE=500]",
            "C: QUIT\r\n",
            "Closed",
        ]
    );
    assert!(d.client.is_tls());
    assert!(!d.client.extensions().starttls);
}

#[test]
fn starttls_refused_continues_in_plaintext() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_STARTTLS),
            ("STARTTLS\r\n", "454 4.7.0 TLS not available\r\n"),
            QUIT,
        ],
        &[],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            "C: STARTTLS\r\n",
            "Ready[PIPELINING STARTTLS]",
            "C: QUIT\r\n",
            "Closed",
        ]
    );
    assert!(!d.client.is_tls());
}

#[test]
fn starttls_is_not_used_unless_configured() {
    let d = transcript(
        config(false),
        &[("", GREETING), (EHLO, EHLO_STARTTLS), QUIT],
        &[],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            "Ready[PIPELINING STARTTLS]",
            "C: QUIT\r\n",
            "Closed"
        ]
    );
}

#[test]
fn replies_injected_before_the_tls_handshake_are_discarded() {
    // RFC 3207 §4.2: what came in plaintext after the 220 must not be read as the answer
    // to the EHLO sent inside TLS.
    let mut c = Client::new(config(true));
    c.handle_bytes(format!("{GREETING}{EHLO_STARTTLS}").as_bytes());
    c.handle_bytes(b"220 go\r\n250-mx.test\r\n250 8BITMIME\r\n");
    let actions = drain(&mut c);
    assert_eq!(actions.last(), Some(&ClientAction::StartTls));
    c.handle_bytes(b"250 more injected\r\n");
    assert_eq!(c.poll_action(), None);
    c.handle_tls_established();
    assert_eq!(
        drain(&mut c),
        [ClientAction::Send(b"EHLO client.test\r\n".to_vec())]
    );
    c.handle_bytes(b"250-mx.test\r\n250 PIPELINING\r\n");
    let ext = Extensions {
        pipelining: true,
        ..Extensions::default()
    };
    assert_eq!(drain(&mut c), [ClientAction::Ready(ext)]);
}

// ---------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------

#[test]
fn mixed_recipient_replies_decide_each_recipient() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n",
                "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n451 4.3.0 try later\r\n354 go\r\n",
            ),
            ("x\r\n.\r\n", "250 2.0.0 queued\r\n"),
            QUIT,
        ],
        &[message(
            "a@x.test",
            &["b@y.test", "c@y.test", "d@y.test"],
            b"x\r\n",
        )],
    );
    let o = &d.outcomes[0];
    assert_eq!(o.outcome_for(0).to_string(), "250 2.0.0 queued");
    assert_eq!(o.outcome_for(1).to_string(), "550 5.1.1 no such user");
    assert_eq!(o.outcome_for(2).to_string(), "451 4.3.0 try later");
    assert!(o.outcome_for(2).is_transient());
    assert_eq!(o.outcome_for(3).to_string(), "250 2.0.0 queued");
}

#[test]
fn all_recipients_refused_with_pipelining_sends_rset() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
                "250 2.1.0 ok\r\n550 5.1.1 no b\r\n550 5.1.1 no c\r\n554 5.5.1 No valid recipients\r\n",
            ),
            ("RSET\r\n", "250 2.0.0 Reset state\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test", "c@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[3..],
        [
            "Delivered mail=250 2.1.0 ok rcpts=[550 5.1.1 no b | 550 5.1.1 no c] data=none",
            "C: RSET\r\n",
            READY_PIPELINING,
            "C: QUIT\r\n",
            "Closed",
        ]
    );
    assert_eq!(d.outcomes[0].outcome_for(1).text, "no c");
}

#[test]
fn all_recipients_refused_in_lock_step_sends_rset_not_data() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_LOCK_STEP),
            ("MAIL FROM:<a@x.test>\r\n", "250 ok\r\n"),
            ("RCPT TO:<b@y.test>\r\n", "550 5.1.1 no b\r\n"),
            ("RSET\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[4..],
        [
            "Delivered mail=250 ok rcpts=[550 5.1.1 no b] data=none",
            "C: RSET\r\n",
            "Ready[8BITMIME]",
            "C: QUIT\r\n",
            "Closed",
        ]
    );
}

#[test]
fn data_accepted_without_recipients_gets_an_empty_message_then_rset() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
                "250 ok\r\n550 5.1.1 no b\r\n354 go\r\n",
            ),
            (".\r\n", "554 5.5.1 no valid recipients\r\n"),
            ("RSET\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[3..6],
        [
            "C: .\r\n",
            "Delivered mail=250 ok rcpts=[550 5.1.1 no b] data=none",
            "C: RSET\r\n",
        ]
    );
}

#[test]
fn mail_refused_with_pipelining_reads_every_reply_then_rset() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
                "553 5.7.1 not your address\r\n503 5.5.1 send MAIL first\r\n503 5.5.1 send MAIL first\r\n503 5.5.1 send MAIL first\r\n",
            ),
            ("RSET\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test", "c@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[3],
        "Delivered mail=553 5.7.1 not your address rcpts=[553 5.7.1 not your address | 553 5.7.1 not your address] data=none"
    );
    assert_eq!(d.log[4], "C: RSET\r\n");
}

#[test]
fn mail_refused_in_lock_step_sends_no_rcpt() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_LOCK_STEP),
            ("MAIL FROM:<a@x.test>\r\n", "451 4.7.1 greylisted\r\n"),
            ("RSET\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[2..5],
        [
            "C: MAIL FROM:<a@x.test>\r\n",
            "Delivered mail=451 4.7.1 greylisted rcpts=[451 4.7.1 greylisted] data=none",
            "C: RSET\r\n",
        ]
    );
    assert!(d.outcomes[0].outcome_for(0).is_transient());
}

#[test]
fn data_refused_decides_the_accepted_recipients() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n550 5.1.1 no c\r\n452 4.3.1 Insufficient system storage\r\n",
            ),
            ("RSET\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test", "c@y.test"], b"x\r\n")],
    );
    let o = &d.outcomes[0];
    assert_eq!(
        o.outcome_for(0).to_string(),
        "452 4.3.1 Insufficient system storage"
    );
    assert_eq!(o.outcome_for(1).to_string(), "550 5.1.1 no c");
    assert_eq!(d.log[4], "C: RSET\r\n");
}

#[test]
fn refused_after_the_message_needs_no_rset() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("x\r\n.\r\n", "554 5.7.1 spam\r\n"),
            QUIT,
        ],
        &[message("a@x.test", &["b@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[4..],
        [
            "Delivered mail=250 ok rcpts=[250 ok] data=554 5.7.1 spam",
            READY_PIPELINING,
            "C: QUIT\r\n",
            "Closed",
        ]
    );
}

#[test]
fn two_messages_on_one_connection() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=5\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("one\r\n.\r\n", "250 queued as 1\r\n"),
            (
                "MAIL FROM:<c@x.test> SIZE=5\r\nRCPT TO:<d@y.test>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("two\r\n.\r\n", "250 queued as 2\r\n"),
            QUIT,
        ],
        &[
            message("a@x.test", &["b@y.test"], b"one\r\n"),
            message("c@x.test", &["d@y.test"], b"two\r\n"),
        ],
    );
    let texts: Vec<&str> = d
        .outcomes
        .iter()
        .map(|o| o.outcome_for(0).text.as_str())
        .collect();
    assert_eq!(texts, ["queued as 1", "queued as 2"]);
    assert_eq!(d.log.iter().filter(|l| l.starts_with("Ready")).count(), 3);
}

#[test]
fn message_over_the_size_limit_is_refused_without_sending() {
    let big = vec![b'x'; 1001];
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("x\r\n.\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[
            message("a@x.test", &["b@y.test"], &big),
            message("a@x.test", &["b@y.test"], b"x\r\n"),
        ],
    );
    assert_eq!(
        d.log[1..3],
        [
            READY_PIPELINING,
            "Refused: not sent: message of 1001 octets is over the server's SIZE limit of 1000 octets",
        ]
    );
    assert!(d.log[3].starts_with("C: MAIL FROM:<a@x.test> SIZE=3\r\n"));
}

#[test]
fn eight_bit_or_utf8_to_a_server_without_the_extension_is_refused() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, "250-mx.test\r\n250 PIPELINING\r\n"),
            QUIT,
        ],
        &[
            message("a@x.test", &["b@y.test"], "café\r\n".as_bytes()),
            message("a@x.test", &["jörg@bücher.test"], b"x\r\n"),
        ],
    );
    assert_eq!(
        d.log,
        [
            "C: EHLO client.test\r\n",
            "Ready[PIPELINING]",
            "Refused: not sent: message has 8-bit content but the server does not offer 8BITMIME",
            "Refused: not sent: an address is not ASCII but the server does not offer SMTPUTF8",
            "C: QUIT\r\n",
            "Closed",
        ]
    );
}

#[test]
fn mail_parameters_follow_the_message_and_the_extensions() {
    transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<> SIZE=7 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<jörg@bücher.test>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("café\r\n.\r\n", "250 ok\r\n"),
            QUIT,
        ],
        &[message("", &["jörg@bücher.test"], "café\r\n".as_bytes())],
    );
}

#[test]
fn a_421_mid_session_fails_it() {
    let d = transcript(
        config(true),
        &[
            ("", GREETING),
            (EHLO, EHLO_PIPELINING),
            (
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
                "250 ok\r\n421 4.3.2 Service shutting down\r\n250 ignored\r\n",
            ),
        ],
        &[message("a@x.test", &["b@y.test"], b"x\r\n")],
    );
    assert_eq!(
        d.log[3..],
        ["Failed: server replied 421 4.3.2 Service shutting down"]
    );
}

#[test]
fn bare_lf_line_ends_from_the_server_are_tolerated() {
    let d = transcript(
        config(true),
        &[
            ("", "220 mx.test\n"),
            (EHLO, "250-mx.test\n250 PIPELINING\r\n"),
            ("QUIT\r\n", "221 bye\n"),
        ],
        &[],
    );
    assert_eq!(d.log[1], "Ready[PIPELINING]");
    assert_eq!(d.log.last().map(String::as_str), Some("Closed"));
}

#[test]
fn garbage_replies_fail_with_a_protocol_error() {
    let cases: [(&'static str, &str); 7] = [
        ("hello\r\n", "\"hello\""),
        ("22\r\n", "\"22\""),
        ("220x\r\n", "\"220x\""),
        ("620 six hundred\r\n", "\"620 six hundred\""),
        ("2a0 x\r\n", "\"2a0 x\""),
        ("220-a\r\n250 b\r\n", "different codes: \"250 b\""),
        ("\x00\u{ff}\r\n", "\"\\x00\\xc3\\xbf\""),
    ];
    for (greeting, detail) in cases {
        let d = transcript(config(true), &[("", greeting)], &[]);
        assert_eq!(d.log.len(), 1, "{greeting:?}");
        assert!(
            d.log[0].starts_with("Failed: protocol error: ") && d.log[0].ends_with(detail),
            "{greeting:?}: {}",
            d.log[0]
        );
    }
}

#[test]
fn reply_line_limits() {
    // 4096 octets with the CRLF is the longest line accepted.
    let longest: &'static str = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE - 6)).leak();
    let d = transcript(
        config(true),
        &[("", longest), (EHLO, "250 mx\r\n"), QUIT],
        &[],
    );
    assert_eq!(d.log[1], "Ready[]");

    let too_long: &'static str = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE - 5)).leak();
    let d = transcript(config(true), &[("", too_long)], &[]);
    assert_eq!(
        d.log,
        ["Failed: protocol error: reply line longer than 4096 octets"]
    );

    let never_ending: &'static str = "2".repeat(MAX_REPLY_LINE * 2).leak();
    let d = transcript(config(true), &[("", never_ending)], &[]);
    assert_eq!(
        d.log,
        ["Failed: protocol error: reply line longer than 4096 octets"]
    );
}

#[test]
fn a_reply_of_many_lines_is_bounded() {
    let line = format!("220-{}\r\n", "x".repeat(1000));
    let mut c = Client::new(config(true));
    for _ in 0..(MAX_REPLY_SIZE / 1000 + 1) {
        c.handle_bytes(line.as_bytes());
    }
    assert_eq!(
        drain(&mut c),
        [ClientAction::Failed(Failure::Protocol(
            "reply longer than 65536 octets".into()
        ))]
    );
    c.handle_bytes(b"220 ok\r\n");
    assert_eq!(c.poll_action(), None);
}

// ---------------------------------------------------------------------------------------
// Calls out of order, idle and end of connection
// ---------------------------------------------------------------------------------------

fn drain(c: &mut Client) -> Vec<ClientAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

/// A client that is ready, after a pipelining EHLO.
fn ready_client() -> Client {
    let mut c = Client::new(config(true));
    c.handle_bytes(format!("{GREETING}{EHLO_PIPELINING}").as_bytes());
    drain(&mut c);
    c
}

#[test]
fn send_before_ready_is_an_error_and_sends_nothing() {
    let mut c = Client::new(config(true));
    let (envelope, body) = message("a@x.test", &["b@y.test"], b"x\r\n");
    let err = c.send(&envelope, &body).unwrap_err();
    assert!(matches!(err, Failure::Protocol(_)));
    assert!(!err.is_permanent());
    assert_eq!(c.poll_action(), None);
}

#[test]
fn bad_envelopes_are_refused_and_the_session_stays_ready() {
    let mut c = ready_client();
    for (from, rcpts) in [
        ("a@x.test", vec![]),
        ("a@x.test\r\nRCPT TO:<evil@z.test>", vec!["b@y.test"]),
        ("a@x.test", vec!["b@y.test", ""]),
        ("a@x.test", vec!["b@y.test\n"]),
    ] {
        let (envelope, body) = message(from, &rcpts, b"x\r\n");
        let err = c.send(&envelope, &body).unwrap_err();
        assert!(
            matches!(
                err,
                Failure::Refused(Refusal::NoRecipients | Refusal::BadAddress(_))
            ),
            "{from:?} {rcpts:?}"
        );
        assert!(err.is_permanent());
        assert_eq!(c.poll_action(), None);
    }
    let (envelope, body) = message("a@x.test", &["b@y.test"], b"x\r\n");
    assert_eq!(c.send(&envelope, &body), Ok(()));
}

#[test]
fn refusals_are_typed_and_carry_their_status_code() {
    let mut c = ready_client();
    let (envelope, body) = message("a@x.test", &["b@y.test"], &[b'x'; 1001]);
    let err = c.send(&envelope, &body).unwrap_err();
    let Failure::Refused(refusal) = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        refusal,
        Refusal::TooBig {
            size: 1001,
            limit: 1000
        }
    );
    assert_eq!(refusal.enhanced(), Enhanced(5, 3, 4));
    // An address that mentions an extension is still only a bad address.
    let (envelope, body) = message("a@x.test", &["SIZE\nSMTPUTF8@y.test\n"], b"x\r\n");
    let err = c.send(&envelope, &body).unwrap_err();
    let Failure::Refused(refusal) = err else {
        panic!("{err:?}");
    };
    assert!(matches!(refusal, Refusal::BadAddress(_)), "{refusal:?}");
    assert_eq!(refusal.enhanced(), Enhanced(5, 6, 3));
    assert_eq!(Refusal::NeedsSmtpUtf8.enhanced(), Enhanced(5, 6, 7));
    assert_eq!(Refusal::Needs8BitMime.enhanced(), Enhanced(5, 6, 3));
}

#[test]
fn quit_during_a_transaction_waits_for_its_end() {
    let mut c = ready_client();
    let (envelope, body) = message("a@x.test", &["b@y.test"], b"x\r\n");
    c.send(&envelope, &body).unwrap();
    c.quit();
    c.handle_bytes(b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n");
    let actions = drain(&mut c);
    assert!(matches!(actions[2], ClientAction::Delivered(_)));
    assert_eq!(actions[3..], [ClientAction::Send(b"QUIT\r\n".to_vec())]);
    c.handle_eof();
    assert_eq!(drain(&mut c), [ClientAction::Closed]);
}

#[test]
fn unsolicited_replies_while_idle_end_the_session() {
    let mut c = ready_client();
    c.handle_bytes(b"421 4.4.2 mx.test Timeout; closing\r\n");
    assert_eq!(
        drain(&mut c),
        [ClientAction::Failed(Failure::Reply(ServerReply {
            code: 421,
            enhanced: Some(Enhanced(4, 4, 2)),
            text: "mx.test Timeout; closing".into(),
        }))]
    );
    let mut c = ready_client();
    c.handle_bytes(b"250 surprise\r\n");
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[..],
        [ClientAction::Failed(Failure::Protocol(_))]
    ));
}

#[test]
fn the_server_closing_the_connection_fails_the_session() {
    let mut c = ready_client();
    c.handle_eof();
    assert_eq!(
        drain(&mut c),
        [ClientAction::Failed(Failure::Protocol(
            "the server closed the connection".into()
        ))]
    );
    c.handle_eof();
    c.quit();
    assert_eq!(c.poll_action(), None);
}

// ---------------------------------------------------------------------------------------
// Replies and dot-stuffing
// ---------------------------------------------------------------------------------------

fn parse(reply: &str) -> ServerReply {
    let mut reader = ReplyReader::default();
    let mut result = None;
    for line in reply.split_terminator("\r\n") {
        result = reader.push(line.as_bytes()).unwrap();
    }
    result.unwrap().into_server_reply()
}

#[test]
fn enhanced_codes_are_parsed_from_the_text() {
    let r = parse("550-5.1.1 first\r\n550 5.1.1 second\r\n");
    assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
    assert_eq!(r.text, "first second");
    assert_eq!(r.to_string(), "550 5.1.1 first second");
    assert_eq!(parse("250 2.0.0\r\n").to_string(), "250 2.0.0");
    assert_eq!(parse("250\r\n").to_string(), "250");
    for text in [
        "220 mx.test ESMTP",
        "550 5.1.1000 x",
        "550 3.1.1 x",
        "250 1.2 x",
    ] {
        let r = parse(&format!("{text}\r\n"));
        assert_eq!(r.enhanced, None, "{text}");
        assert_eq!(r.to_string(), text);
    }
}

#[test]
fn server_reply_classes() {
    let r = |code| ServerReply {
        code,
        enhanced: None,
        text: String::new(),
    };
    assert!(r(250).is_positive() && r(354).is_positive() && !r(451).is_positive());
    assert!(r(451).is_transient() && !r(550).is_transient());
    assert!(Failure::Reply(r(550)).is_permanent());
    assert!(!Failure::Reply(r(451)).is_permanent());
}

#[test]
fn dot_stuff_cases() {
    let cases: [(&[u8], &[u8]); 10] = [
        (b"", b".\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".a\r\n.b", b"..a\r\n..b\r\n.\r\n"),
        (b"a.b\r\n..\r\n", b"a.b\r\n...\r\n.\r\n"),
        // Bare line ends are sent as CRLF, so no receiver can see them end the data.
        (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r.\r", b"a\r\n..\r\n.\r\n"),
        (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
    ];
    for (body, stuffed) in cases {
        assert_eq!(
            dot_stuff(body).escape_ascii().to_string(),
            stuffed.escape_ascii().to_string(),
            "{}",
            body.escape_ascii()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Against our own server session
// ---------------------------------------------------------------------------------------

/// What the server spooled: sender, recipients and body of each message.
type Spooled = Vec<(String, Vec<String>, Vec<u8>)>;

/// Pipes the client and a `Session` with a policy that accepts everything, moving at
/// most `chunk` octets at a time each way.
fn deliver_to_session(messages: &[(Envelope, Vec<u8>)], chunk: usize) -> (Spooled, Vec<String>) {
    let mut server = Session::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 1 << 20,
        max_recipients: 10,
        starttls_available: false,
        implicit_tls: false,
        max_errors: 3,
    });
    let mut client = Client::new(config(true));
    let mut queue: VecDeque<_> = messages.iter().cloned().collect();
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    let mut spooled = Vec::new();
    let mut log = Vec::new();
    loop {
        while let Some(action) = server.poll_action() {
            match action {
                Action::Send(reply) => to_client.extend(reply.to_bytes()),
                Action::Ask(Question::Mail { .. }) => server.handle_verdict(Reply::sender_ok()),
                Action::Ask(Question::Rcpt { .. }) => server.handle_verdict(Reply::recipient_ok()),
                Action::Spool(tx) => {
                    let rcpts = tx.rcpts.iter().map(ToString::to_string).collect();
                    spooled.push((tx.from.to_string(), rcpts, tx.body));
                    server.handle_spooled(Ok(format!("Q{}", spooled.len())));
                }
                Action::Close => {}
                other => panic!("unexpected server action {other:?}"),
            }
        }
        while let Some(action) = client.poll_action() {
            match action {
                ClientAction::Send(bytes) => to_server.extend(bytes),
                ClientAction::Ready(_) => match queue.pop_front() {
                    Some((envelope, body)) => client.send(&envelope, &body).unwrap(),
                    None => client.quit(),
                },
                ClientAction::Delivered(o) => log.push(delivered(&o)),
                ClientAction::Closed => log.push("Closed".into()),
                other => panic!("unexpected client action {other:?}"),
            }
        }
        if to_client.is_empty() && to_server.is_empty() {
            break;
        }
        for piece in std::mem::take(&mut to_server).chunks(chunk) {
            server.handle_bytes(piece);
        }
        for piece in std::mem::take(&mut to_client).chunks(chunk) {
            client.handle_bytes(piece);
        }
    }
    (spooled, log)
}

#[test]
fn delivers_to_our_own_server() {
    let messages = [
        message(
            "a@x.test",
            &["b@example.com", "c@example.com"],
            b".\r\nHi\r\n..x\r\n",
        ),
        message("", &["jörg@bücher.test"], "no line end: café".as_bytes()),
    ];
    let (spooled, log) = deliver_to_session(&messages, 7);
    assert_eq!(
        spooled,
        [
            (
                "a@x.test".to_string(),
                vec!["b@example.com".to_string(), "c@example.com".to_string()],
                b".\r\nHi\r\n..x\r\n".to_vec()
            ),
            (
                String::new(),
                vec!["jörg@bücher.test".to_string()],
                "no line end: café\r\n".as_bytes().to_vec()
            ),
        ]
    );
    assert_eq!(
        log,
        [
            "Delivered mail=250 2.1.0 Sender ok rcpts=[250 2.1.5 Recipient ok | 250 2.1.5 Recipient ok] data=250 2.0.0 Ok: queued as Q1",
            "Delivered mail=250 2.1.0 Sender ok rcpts=[250 2.1.5 Recipient ok] data=250 2.0.0 Ok: queued as Q2",
            "Closed",
        ]
    );
}

/// A body of CRLF lines, often starting with a dot, sometimes 8-bit, maybe without the
/// last CRLF.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        any::<bool>(),
        prop::collection::vec(
            // SMTP text: no line ends inside a line, and no NUL (the server refuses it).
            any::<u8>().prop_filter("no line end or NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
            0..80,
        ),
    )
        .prop_map(|(dot, mut bytes)| {
            if dot {
                bytes.insert(0, b'.');
            }
            bytes
        });
    (prop::collection::vec(line, 0..12), any::<bool>()).prop_map(|(lines, crlf_at_end)| {
        let mut body = lines.join(&b"\r\n"[..]);
        if crlf_at_end && !lines.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        body
    })
}

/// Reply-like fragments and random octets, so that both the parser and the states
/// behind well-formed replies get exercised.
fn server_output() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        4 => prop::sample::select(vec![
            "250 2.1.0 ok\r\n", "354 go\r\n", "550 5.1.1 no\r\n", "452 4.3.1 full\r\n",
            "421 4.3.2 bye\r\n", "221 bye\r\n", "250-", "250", "\r", "\n", " ", "5",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(fragment, 0..60).prop_map(|f| f.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn our_server_receives_the_exact_body(
        bodies in prop::collection::vec(body(), 1..4),
        rcpts in prop::collection::vec("[a-z]{1,8}@example\\.com", 1..4),
        chunk in 1usize..64,
    ) {
        let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let messages: Vec<_> = bodies.iter().map(|b| message("s@x.test", &rcpt_refs, b)).collect();
        let (spooled, log) = deliver_to_session(&messages, chunk);
        prop_assert_eq!(spooled.len(), bodies.len());
        for ((from, to, got), sent) in spooled.iter().zip(&bodies) {
            let mut expected = sent.clone();
            if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(from, "s@x.test");
            prop_assert_eq!(to, &rcpts);
            prop_assert_eq!(got, &expected);
        }
        prop_assert_eq!(log.last().map(String::as_str), Some("Closed"));
    }

    #[test]
    fn any_server_output_is_survived(
        input in server_output(),
        chunk in 1usize..300,
        pipelining in any::<bool>(),
    ) {
        let mut c = Client::new(config(true));
        let mut prefix = format!("{GREETING}250-mx\r\n250-SIZE 100\r\n").into_bytes();
        if pipelining {
            prefix.extend_from_slice(b"250-PIPELINING\r\n");
        }
        prefix.extend_from_slice(b"250 8BITMIME\r\n");
        c.handle_bytes(&prefix);
        drain(&mut c);
        let (envelope, body) = message("a@x.test", &["b@y.test", "c@y.test"], b"x\r\n");
        c.send(&envelope, &body).unwrap();
        let mut ended = false;
        for piece in input.chunks(chunk) {
            c.handle_bytes(piece);
            for action in drain(&mut c) {
                prop_assert!(!ended, "action after the end: {:?}", action);
                match action {
                    ClientAction::Failed(_) | ClientAction::Closed => ended = true,
                    ClientAction::Ready(_) => {
                        let _ = c.send(&envelope, &body);
                    }
                    _ => {}
                }
            }
        }
    }
}
