//! Hostile input against the real binary: SMTP smuggling, over-long lines, oversized
//! messages, too many recipients, garbage. The server must refuse cleanly and keep
//! serving everyone else.

mod common;

use common::{PlainClient, Server};

fn open_transaction(server: &Server) -> PlainClient {
    let mut c = common::PlainClient::mx(server);
    c.begin("someone@remote.test", &["alice@example.com"]);
    c
}

#[test]
fn smtp_smuggling_variants_produce_no_second_message() {
    let server = Server::start();
    for ending in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"] {
        let mut c = open_transaction(&server);
        let attack = format!(
            "Subject: first\r\n\r\nfirst{ending}MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
        );
        c.send_raw(attack.as_bytes());
        let reply = c.read_reply();
        assert!(reply.starts_with("550 5.6.0"), "{ending:?}: {reply:?}");
        assert!(c.is_closed(), "{ending:?}: the connection must be closed");
    }
    // A normal message afterwards proves the server is fine; nothing reached bob.
    let mut c = open_transaction(&server);
    c.cmd("Subject: normal\r\n\r\nok\r\n.", "250");
    server.wait_for_delivery("alice@example.com", 1);
    assert!(server.delivered("bob@example.com").is_empty());
    let all = server.delivered("alice@example.com");
    assert_eq!(all.len(), 1, "only the normal message is delivered");
    assert!(!all[0].contains("smuggled"));
}

#[test]
fn over_long_command_line_gets_500() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("mx"));
    c.cmd(&format!("EHLO {}", "a".repeat(600)), "500 5.5.2");
    c.cmd("EHLO client.test", "250");
}

#[test]
fn over_long_text_line_is_refused() {
    let server = Server::start();
    let mut c = open_transaction(&server);
    c.cmd(
        &format!("Subject: x\r\n\r\n{}\r\n.", "x".repeat(1200)),
        "550 5.6.0",
    );
    c.cmd("NOOP", "250");
}

#[test]
fn oversized_message_gets_552_at_mail_and_at_data() {
    let server = Server::start_with("[limits]\nmax_message_size = 2000\nmax_recipients = 2\n");
    let mut c = PlainClient::connect(server.addr("mx"));
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(ehlo.contains("SIZE 2000"), "{ehlo}");
    c.cmd("MAIL FROM:<someone@remote.test> SIZE=5000", "552 5.3.4");
    c.begin("someone@remote.test", &["alice@example.com"]);
    let big = "y".repeat(900);
    c.cmd(
        &format!("Subject: big\r\n\r\n{big}\r\n{big}\r\n{big}\r\n."),
        "552 5.3.4",
    );
    c.cmd("NOOP", "250");
    server.wait_for_log("reason=message_too_big").unwrap();
    assert!(server.queued().is_empty());
}

#[test]
fn too_many_recipients_get_452() {
    let server = Server::start_with("[limits]\nmax_recipients = 2\n");
    let mut c = common::PlainClient::mx(&server);
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("RCPT TO:<bob@example.com>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "452 4.5.3");
}

#[test]
fn garbage_gets_500_and_the_server_keeps_serving_others() {
    let server = Server::start();
    let mut bad = PlainClient::connect(server.addr("mx"));
    bad.send_raw(b"\x00\xff\xfe garbage\r\n");
    assert!(bad.read_reply().starts_with("500 5.5.2"));
    // Meanwhile another client is served normally.
    let mut good = common::PlainClient::mx(&server);
    // The bad client keeps erring and is cut off with 421.
    let mut last = String::new();
    for _ in 0..12 {
        bad.send_raw(b"BLAH\r\n");
        last = bad.read_reply();
        if last.starts_with("421") {
            break;
        }
    }
    assert!(last.starts_with("421 4.7.0"), "{last:?}");
    assert!(bad.is_closed());
    good.cmd("NOOP", "250");
}

#[test]
fn pipelined_commands_get_their_replies_in_order() {
    let server = Server::start();
    let mut c = common::PlainClient::mx(&server);
    c.send_raw(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n");
    c.expect("250 2.1.0");
    c.expect("550 5.1.1");
    c.expect("250 2.1.5");
    c.expect("354");
    c.cmd("Subject: p\r\n\r\nx\r\n.", "250");
}

#[test]
fn plaintext_injected_after_starttls_is_discarded() {
    let server = Server::start();
    let mut c = common::PlainClient::mx(&server);
    // STARTTLS with a command pipelined behind it in the same packet.
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n");
    c.expect("220");
    let mut tls = c.into_tls_after_220();
    // Had the injected MAIL been kept, this would be a nested MAIL (503 after EHLO).
    tls.cmd("EHLO client.test", "250");
    tls.cmd("MAIL FROM:<a@remote.test>", "250");
}

#[test]
fn idle_and_trickling_clients_are_dropped_with_421() {
    let server = Server::start_with("[limits]\ncommand_timeout = 1\ndata_timeout = 1\n");
    let mut idle = PlainClient::connect(server.addr("mx"));
    assert!(idle.read_reply().starts_with("421 4.4.2"));
    assert!(idle.is_closed());
    // Half a command, then nothing (slowloris).
    let mut slow = PlainClient::connect(server.addr("mx"));
    slow.send_raw(b"EHL");
    assert!(slow.read_reply().starts_with("421 4.4.2"));
    // Stalled in the middle of DATA: nothing is queued.
    let mut stalled = open_transaction(&server);
    stalled.send_raw(b"Subject: half\r\n");
    assert!(stalled.read_reply().starts_with("421 4.4.2"));
    assert!(server.queued().is_empty());
    server.wait_for_log("event=timeout").unwrap();
}

/// The smuggling scanner's `<CRLF><NUL>.<CRLF>`: refused on every listener (a next hop
/// that drops NUL would see the end of the data there), and in `sendmail` input.
#[test]
fn nul_in_the_data_is_refused_on_every_door() {
    let server = Server::start();
    let attack = b"Subject: nul\r\n\r\nfirst\r\n\0.\r\nMAIL FROM:<evil@remote.test>\r\n.\r\n";
    let mut mx = open_transaction(&server);
    mx.send_raw(attack);
    let reply = mx.read_reply();
    assert!(
        reply.starts_with("550 5.6.0") && reply.contains("NUL"),
        "{reply:?}"
    );
    let mut sub = common::TlsClient::submission(&server, "alice@example.com");
    sub.begin("alice@example.com", &["bob@example.com"]);
    sub.send_raw(attack);
    let reply = sub.read_reply();
    assert!(reply.starts_with("550 5.6.0"), "{reply:?}");
    // The session goes on: the next message is accepted.
    sub.cmd("MAIL FROM:<alice@example.com>", "250");

    let out = server.sendmail(
        None,
        &["bob@example.com"],
        b"Subject: nul\n\nfirst\n\0.\nsecond\n",
    );
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NUL"));
    assert!(server.delivered("alice@example.com").is_empty());
    assert!(server.delivered("bob@example.com").is_empty());
}

/// `sendmail -t` with a To: holding literal backslash sequences (a non-interpreting
/// printf): refused with 65 and a reason, never read as a group that drops the real
/// recipient and adds another.
#[test]
fn sendmail_t_refuses_a_malformed_address_list_instead_of_guessing() {
    let server = Server::start();
    let out = server.sendmail(
        None,
        &["-t", "-i"],
        b"To: alice@example.com\\r\\nBcc: bob@example.com\nSubject: x\n\nbody\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("To: field is not a valid address list"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(server.delivered("alice@example.com").is_empty());
    assert!(server.delivered("bob@example.com").is_empty());
}
