//! Byte transcripts through the pure session, each fed whole, pipelined, and split at
//! every offset: all three must give the same replies.

use super::*;
use crate::address::Domain;

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.com".into(),
        max_message_size: 1000,
        max_recipients: 3,
        starttls_available: true,
        implicit_tls: false,
        max_errors: 5,
    }
}

/// Drives a session like the server would, with a fake policy: mail to
/// `example.com` is local, other domains need a login, the password is `secret`.
struct Driver {
    session: Session,
    output: String,
    spooled: Vec<Transaction>,
    closed: bool,
}

impl Driver {
    fn new(config: SessionConfig) -> Driver {
        let mut d = Driver {
            session: Session::new(config),
            output: String::new(),
            spooled: Vec::new(),
            closed: false,
        };
        d.drain();
        d
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.session.handle_bytes(bytes);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(r) => self
                    .output
                    .push_str(&String::from_utf8(r.to_bytes()).unwrap()),
                Action::Ask(Question::Mail { .. }) => {
                    self.session.handle_verdict(Reply::sender_ok())
                }
                Action::Ask(Question::Rcpt { to, .. }) => {
                    let local = matches!(&to, ForwardPath::Mailbox(m)
                        if m.domain() == &Domain::Name("example.com".into()));
                    let reply = if local || self.session.login().is_some() {
                        Reply::recipient_ok()
                    } else {
                        Reply::relay_denied()
                    };
                    self.session.handle_verdict(reply);
                }
                Action::Ask(Question::Auth(c)) => {
                    let ok = c.password == "secret" && c.authzid.is_none();
                    self.session.handle_auth(if ok {
                        Ok(c.login.to_lowercase())
                    } else {
                        Err(Reply::auth_failed())
                    });
                }
                Action::Spool(tx) => {
                    self.spooled.push(tx);
                    let id = format!("Q{}", self.spooled.len());
                    self.session.handle_spooled(Ok(id));
                }
                Action::StartTls => {
                    self.output.push_str("<TLS>\r\n");
                    self.session.handle_tls_established();
                }
                Action::Close => self.closed = true,
            }
        }
    }
}

/// Runs `input` whole, then byte by byte, and checks both give `expected`.
fn transcript(input: &str, expected: &str) -> Driver {
    transcript_with(config(), input, expected)
}

fn transcript_with(config: SessionConfig, input: &str, expected: &str) -> Driver {
    let mut whole = Driver::new(config.clone());
    whole.feed(input.as_bytes());
    assert_eq!(whole.output, expected, "input fed whole");

    let mut bytewise = Driver::new(config.clone());
    for b in input.as_bytes() {
        bytewise.feed(std::slice::from_ref(b));
    }
    assert_eq!(bytewise.output, expected, "input fed byte by byte");

    for split in 0..input.len() {
        let mut two = Driver::new(config.clone());
        two.feed(&input.as_bytes()[..split]);
        two.feed(&input.as_bytes()[split..]);
        assert_eq!(two.output, expected, "input split at {split}");
    }
    whole
}

const GREETING: &str = "220 mx.example.com ESMTP postern\r\n";
const EHLO_PLAIN: &str = "250-mx.example.com greets c\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n";
const EHLO_TLS: &str = "250-mx.example.com greets c\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n";

#[test]
fn local_delivery_without_auth_is_accepted() {
    let d = transcript(
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nHi\r\n.\r\nQUIT\r\n",
        &format!(
            "{GREETING}{EHLO_PLAIN}250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 mx.example.com closing connection\r\n"
        ),
    );
    assert_eq!(d.spooled.len(), 1);
    assert_eq!(d.spooled[0].body, b"Hi\r\n");
    assert!(d.closed);
}

#[test]
fn relay_denied_without_auth() {
    transcript(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n",
        &format!(
            "{GREETING}{EHLO_PLAIN}250 2.1.0 Sender ok\r\n{}554 5.5.1 No valid recipients\r\n",
            String::from_utf8(Reply::relay_denied().to_bytes()).unwrap()
        ),
    );
}

#[test]
fn auth_is_not_offered_or_accepted_before_tls() {
    transcript(
        "EHLO c\r\nAUTH PLAIN AHVAZXhhbXBsZS5jb20Ac2VjcmV0\r\n",
        &format!(
            "{GREETING}{EHLO_PLAIN}538 5.7.11 Encryption required: issue STARTTLS first, then AUTH\r\n"
        ),
    );
}

#[test]
fn starttls_then_auth_plain_then_relay() {
    // AHVAZXhhbXBsZS5jb20Ac2VjcmV0 = "\0u@example.com\0secret"
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\nSTARTTLS\r\n");
    d.feed(b"EHLO c\r\nAUTH PLAIN AHVAZXhhbXBsZS5jb20Ac2VjcmV0\r\nMAIL FROM:<u@example.com>\r\nRCPT TO:<x@remote.test>\r\n");
    assert_eq!(
        d.output,
        format!(
            "{GREETING}{EHLO_PLAIN}220 2.0.0 Ready to start TLS\r\n<TLS>\r\n{EHLO_TLS}235 2.7.0 Authentication successful\r\n250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n"
        )
    );
    assert_eq!(d.session.login(), Some("u@example.com"));
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    // The injected MAIL must not be answered: it was sent in the clear before the
    // handshake (RFC 3207 §4.2, CVE-2011-0411).
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    assert_eq!(
        d.output,
        format!("{GREETING}{EHLO_PLAIN}220 2.0.0 Ready to start TLS\r\n<TLS>\r\n")
    );
    d.feed(b"MAIL FROM:<a@b.test>\r\n");
    assert!(
        d.output
            .ends_with("503 5.5.1 Bad sequence of commands: send EHLO first\r\n")
    );
}

#[test]
fn auth_login_two_steps() {
    let mut c = config();
    c.implicit_tls = true;
    // dUBleGFtcGxlLmNvbQ== = u@example.com, c2VjcmV0 = secret
    transcript_with(
        c,
        "EHLO c\r\nAUTH LOGIN\r\ndUBleGFtcGxlLmNvbQ==\r\nc2VjcmV0\r\n",
        &format!(
            "{GREETING}{EHLO_TLS}334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n"
        ),
    );
}

#[test]
fn auth_cancel_bad_base64_and_wrong_password() {
    let mut c = config();
    c.implicit_tls = true;
    transcript_with(
        c,
        "EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH PLAIN AHUAd3Jvbmc=\r\nAUTH CRAM-MD5\r\n",
        &format!(
            "{GREETING}{EHLO_TLS}334 \r\n501 5.0.0 Authentication cancelled\r\n501 5.5.2 Cannot decode the base64 response\r\n{}504 5.5.4 Unrecognized authentication mechanism: use PLAIN or LOGIN\r\n",
            String::from_utf8(Reply::auth_failed().to_bytes()).unwrap()
        ),
    );
}

#[test]
fn sequence_errors_get_503() {
    transcript(
        "MAIL FROM:<a@b.test>\r\nEHLO c\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
        &format!(
            "{GREETING}503 5.5.1 Bad sequence of commands: send EHLO first\r\n{EHLO_PLAIN}503 5.5.1 Bad sequence of commands: send MAIL FROM first\r\n503 5.5.1 Bad sequence of commands: send MAIL FROM and RCPT TO first\r\n"
        ),
    );
}

#[test]
fn too_many_recipients_get_452() {
    let d = transcript(
        "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n.\r\n",
        &format!(
            "{GREETING}250 mx.example.com greets c\r\n250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n250 2.1.5 Recipient ok\r\n250 2.1.5 Recipient ok\r\n{}354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n",
            String::from_utf8(Reply::too_many_recipients(3).to_bytes()).unwrap()
        ),
    );
    assert_eq!(d.spooled[0].rcpts.len(), 3);
}

#[test]
fn declared_size_over_the_limit_gets_552() {
    transcript(
        "EHLO c\r\nMAIL FROM:<a@b.test> SIZE=1001\r\n",
        &format!("{GREETING}{EHLO_PLAIN}552 5.3.4 Message too big: the limit is 1000 bytes\r\n"),
    );
}

#[test]
fn oversized_data_gets_552_and_the_session_goes_on() {
    let body = "x".repeat(600);
    let d = transcript(
        &format!(
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n{body}\r\n{body}\r\n.\r\nNOOP\r\n"
        ),
        &format!(
            "{GREETING}{EHLO_PLAIN}250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Message too big: the limit is 1000 bytes\r\n250 2.0.0 Ok\r\n"
        ),
    );
    assert!(d.spooled.is_empty());
}

#[test]
fn smuggled_second_message_is_never_spooled() {
    for ending in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n"] {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nfirst{ending}MAIL FROM:<evil@b.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nsecond\r\n.\r\n"
        );
        let d = transcript(
            &input,
            &format!(
                "{GREETING}{EHLO_PLAIN}250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n{}",
                String::from_utf8(Reply::bare_line_ending_in_data().to_bytes()).unwrap()
            ),
        );
        assert!(d.spooled.is_empty(), "{ending:?}");
        assert!(d.closed, "{ending:?}");
    }
}

#[test]
fn nul_in_data_is_refused_and_nothing_is_spooled() {
    let d = transcript(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nfirst\r\n\0.\r\nsecond\r\n.\r\nNOOP\r\n",
        &format!(
            "{GREETING}{EHLO_PLAIN}250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n{}250 2.0.0 Ok\r\n",
            String::from_utf8(Reply::nul_in_data().to_bytes()).unwrap()
        ),
    );
    assert!(d.spooled.is_empty());
    assert!(!d.closed);
}

#[test]
fn over_long_command_line_gets_500_and_is_skipped() {
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    transcript(
        &format!("{long}NOOP\r\n"),
        &format!(
            "{GREETING}500 5.5.2 Line too long: a command line may have at most 512 octets\r\n250 2.0.0 Ok\r\n"
        ),
    );
}

#[test]
fn garbage_gets_500_and_too_many_errors_close_with_421() {
    let d = transcript(
        "foo\r\nbar\r\n\x01\x02\r\nbaz\r\nqux\r\nNOOP\r\n",
        &format!(
            "{GREETING}{}421 4.7.0 Too many errors on this connection; closing\r\n",
            "500 5.5.2 Command unrecognized\r\n".repeat(5)
        ),
    );
    assert!(d.closed);
}

#[test]
fn bare_lf_in_a_command_is_an_error() {
    transcript(
        "NOOP\nNOOP\r\n",
        &format!(
            "{GREETING}500 5.5.2 Bare LF or CR in command: end every line with CRLF\r\n250 2.0.0 Ok\r\n"
        ),
    );
}

#[test]
fn http_request_closes_the_connection() {
    let d = transcript(
        "GET / HTTP/1.1\r\nHost: x\r\n",
        &format!("{GREETING}421 4.7.0 This is an SMTP server, not an HTTP server; closing\r\n"),
    );
    assert!(d.closed);
}

#[test]
fn non_ascii_address_needs_smtputf8() {
    transcript(
        "EHLO c\r\nMAIL FROM:<jörg@bücher.example>\r\nMAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n",
        &format!(
            "{GREETING}{EHLO_PLAIN}553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM\r\n250 2.1.0 Sender ok\r\n"
        ),
    );
}

#[test]
fn rset_drops_the_transaction() {
    let d = transcript(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.com>\r\nRSET\r\nDATA\r\n",
        &format!(
            "{GREETING}{EHLO_PLAIN}250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n250 2.0.0 Reset state\r\n503 5.5.1 Bad sequence of commands: send MAIL FROM and RCPT TO first\r\n"
        ),
    );
    assert!(d.spooled.is_empty());
}

#[test]
fn vrfy_help_noop_and_unimplemented_verbs() {
    transcript(
        "VRFY x\r\nHELP\r\nNOOP\r\nEXPN list\r\n",
        &format!(
            "{GREETING}252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n{}250 2.0.0 Ok\r\n502 5.5.1 EXPN is not implemented here\r\n",
            String::from_utf8(Reply::help().to_bytes()).unwrap()
        ),
    );
}

#[test]
fn wants_tracks_the_phase() {
    let mut s = Session::new(config());
    assert_eq!(s.wants(), Wants::Command);
    s.handle_bytes(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    assert_eq!(s.wants(), Wants::Answer);
    s.handle_verdict(Reply::sender_ok());
    s.handle_bytes(b"RCPT TO:<b@example.com>\r\n");
    s.handle_verdict(Reply::recipient_ok());
    s.handle_bytes(b"DATA\r\n");
    assert_eq!(s.wants(), Wants::Data);
}

#[test]
fn helo_clients_get_no_extensions() {
    transcript(
        "HELO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.test> SIZE=10\r\nMAIL FROM:<a@b.test>\r\n",
        &format!(
            "{GREETING}250 mx.example.com greets c\r\n503 5.5.1 Bad sequence of commands: send EHLO first\r\n555 5.5.4 Unsupported parameter after HELO (use EHLO)\r\n250 2.1.0 Sender ok\r\n"
        ),
    );
}

#[test]
fn failed_logins_count_as_errors_and_end_the_connection() {
    let mut c = config();
    c.implicit_tls = true;
    c.max_errors = 3;
    let d = transcript_with(
        c,
        "EHLO c\r\nAUTH PLAIN AHUAd3Jvbmc=\r\nAUTH PLAIN AHUAd3Jvbmc=\r\nAUTH PLAIN AHUAd3Jvbmc=\r\nAUTH PLAIN AHVAZXhhbXBsZS5jb20Ac2VjcmV0\r\n",
        &format!(
            "{GREETING}{EHLO_TLS}{fail}{fail}{fail}421 4.7.0 Too many errors on this connection; closing\r\n",
            fail = String::from_utf8(Reply::auth_failed().to_bytes()).unwrap()
        ),
    );
    assert!(d.closed);
    assert_eq!(d.session.login(), None);
}

#[test]
fn the_login_is_the_canonical_one_from_the_answer() {
    let mut c = config();
    c.implicit_tls = true;
    // "\0U@Example.COM\0secret"
    let d = transcript_with(
        c,
        "EHLO c\r\nAUTH PLAIN AFVARXhhbXBsZS5DT00Ac2VjcmV0\r\n",
        &format!("{GREETING}{EHLO_TLS}235 2.7.0 Authentication successful\r\n"),
    );
    assert_eq!(d.session.login(), Some("u@example.com"));
}

#[test]
fn an_over_long_sasl_response_ends_the_exchange() {
    let mut c = config();
    c.implicit_tls = true;
    let huge = "QUFB".repeat(4000);
    transcript_with(
        c,
        &format!("EHLO c\r\nAUTH PLAIN\r\n{huge}\r\nAUTH PLAIN AHVAZXhhbXBsZS5jb20Ac2VjcmV0\r\n"),
        &format!(
            "{GREETING}{EHLO_TLS}334 \r\n500 5.5.2 Line too long: a command line may have at most 12288 octets\r\n235 2.7.0 Authentication successful\r\n"
        ),
    );
}
