//! Helpers shared by the fuzz targets in `fuzz_targets/`: the alphabet mapping, a session
//! driver that says yes to everything, and the invariants every target checks.

use postern_proto::Reply;
use postern_proto::command::Command;
use postern_proto::server::{Action, Question, Session, SessionConfig, Transaction};

/// The octets of RFC 5321 command lines. Mapping random input into it (as smtp-proto's
/// fuzzer does) gets the fuzzer past the verb and into the argument grammar quickly.
pub const SMTP_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz:=-<>@.,; \r\n\"";

/// Each input octet replaced by `SMTP_ALPHABET[octet % len]`.
pub fn into_smtp_alphabet(data: &[u8]) -> Vec<u8> {
    data.iter()
        .map(|&b| SMTP_ALPHABET[b as usize % SMTP_ALPHABET.len()])
        .collect()
}

/// Splits at the value of the first octet (clamped): the fuzzer controls the cut point.
/// Returns `None` for empty input.
pub fn split_at_first_octet(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some(rest.split_at((first as usize).min(rest.len())))
}

/// Panics unless every LF is preceded by a CR and every CR is followed by an LF.
pub fn assert_crlf_only(text: &[u8]) {
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && text[i - 1] == b'\r', "bare LF at {i} in {text:?}"),
            b'\r' => assert_eq!(text.get(i + 1), Some(&b'\n'), "bare CR at {i} in {text:?}"),
            _ => {}
        }
    }
}

/// The canonical line of a MAIL or RCPT command, `None` for other commands.
pub fn render_command(command: &Command) -> Option<String> {
    match command {
        Command::Mail { from, params } => Some(format!("MAIL FROM:<{from}>{params}")),
        Command::Rcpt { to } => Some(format!("RCPT TO:<{to}>")),
        _ => None,
    }
}

/// A reply as it goes on the wire: one or more lines `CODE[-| ]...CRLF`, with the enhanced
/// code wherever DESIGN.md wants one, and no CR or LF smuggled into the text.
pub fn assert_reply_well_formed(reply: &Reply) {
    let bytes = reply.to_bytes();
    assert!(bytes.ends_with(b"\r\n"), "{reply:?}");
    assert_crlf_only(&bytes);
    let code = reply.code.to_string();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(line.starts_with(code.as_bytes()), "{reply:?}");
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        let ok_sep = line.get(3) == Some(&sep) || (line.len() == 5 && lines.len() == 1);
        assert!(ok_sep, "bad separator in {reply:?}");
    }
    assert!((200..600).contains(&reply.code), "{reply:?}");
    match reply.enhanced {
        // RFC 3463 has classes 2, 4 and 5 only: an intermediate 3xx reply carries 2.x.x.
        Some(e) => {
            let class = u16::from(e.0);
            assert!(
                class == reply.code / 100 || (class == 2 && reply.code / 100 == 3),
                "{reply:?}"
            );
        }
        // RFC 2034: the greeting, EHLO/HELO and SASL challenges carry no enhanced code.
        None => assert!(matches!(reply.code, 220 | 250 | 334), "{reply:?}"),
    }
}

/// What the session asked for, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Reply(Vec<u8>),
    Ask(Question),
    Spool(Transaction),
    StartTls,
    Close,
}

/// Drives a session like the server would, answering every question with yes.
pub struct Driver {
    pub session: Session,
    pub events: Vec<Event>,
    max_recipients: usize,
}

impl Driver {
    pub fn new(config: SessionConfig) -> Driver {
        let max_recipients = config.max_recipients;
        let mut d = Driver {
            session: Session::new(config),
            events: Vec::new(),
            max_recipients,
        };
        d.drain();
        d
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.session.handle_bytes(bytes);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(reply) => {
                    assert_reply_well_formed(&reply);
                    self.events.push(Event::Reply(reply.to_bytes()));
                }
                Action::Ask(question) => {
                    self.events.push(Event::Ask(question.clone()));
                    match question {
                        Question::Mail { .. } => self.session.handle_verdict(Reply::sender_ok()),
                        Question::Rcpt { .. } => self.session.handle_verdict(Reply::recipient_ok()),
                        // The account's login is the one the client gave.
                        Question::Auth(c) => self.session.handle_auth(Ok(c.login)),
                    }
                }
                Action::Spool(tx) => {
                    assert!(!tx.rcpts.is_empty(), "spooled without recipients");
                    assert!(tx.rcpts.len() <= self.max_recipients, "too many recipients");
                    assert_crlf_only(&tx.body);
                    self.events.push(Event::Spool(tx));
                    self.session.handle_spooled(Ok("Q".into()));
                }
                Action::StartTls => {
                    self.events.push(Event::StartTls);
                    self.session.handle_tls_established();
                }
                Action::Close => self.events.push(Event::Close),
            }
        }
    }
}

/// A session on an implicit-TLS listener (AUTH reachable, no STARTTLS), with small limits
/// so that the fuzzer reaches them.
pub fn implicit_tls_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.com".into(),
        max_message_size: 200,
        max_recipients: 3,
        starttls_available: false,
        implicit_tls: true,
        max_errors: 20,
    }
}

/// A plaintext listener that offers STARTTLS.
pub fn starttls_config() -> SessionConfig {
    SessionConfig {
        starttls_available: true,
        implicit_tls: false,
        ..implicit_tls_config()
    }
}
