//! Who may send where: relay denied without a login (loopback included), local
//! mailboxes open to the world, AUTH only inside TLS, senders owned by their login.

mod common;

use common::{PASSWORD, PlainClient, Server, Setup, field, plain};

const RELAY_DENIED: &str = "550 5.7.1 Relaying denied";

#[test]
fn relay_from_loopback_on_mx_is_denied_then_accepted_after_auth() {
    let server = Server::start();
    let mut c = common::PlainClient::mx(&server);
    c.cmd("MAIL FROM:<anyone@remote.test>", "250");
    let reply = c.cmd("RCPT TO:<victim@remote.test>", RELAY_DENIED);
    assert!(
        reply.contains("587"),
        "the reply says how to succeed: {reply}"
    );
    assert!(reply.contains("AUTH"), "{reply}");
    let line = server.wait_for_log("event=rejected").unwrap();
    assert_eq!(field(&line, "reason").as_deref(), Some("relay_denied"));
    assert_eq!(field(&line, "client").as_deref(), Some("127.0.0.1"));
    assert_eq!(field(&line, "rcpt").as_deref(), Some("victim@remote.test"));
    assert_eq!(field(&line, "from").as_deref(), Some("anyone@remote.test"));

    // The same recipient, after STARTTLS and AUTH on the same listener.
    let mut c = PlainClient::connect(server.addr("mx")).starttls();
    c.login("alice@example.com", PASSWORD);
    c.cmd("MAIL FROM:<alice@example.com>", "250");
    c.cmd("RCPT TO:<victim@remote.test>", "250 2.1.5");
}

#[test]
fn unauthenticated_mail_to_a_local_mailbox_lands_intact() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("mx"));
    c.cmd("EHLO sender.remote.test", "250");
    c.begin("someone@remote.test", &["Alice@EXAMPLE.com"]);
    let body = "From: someone@remote.test\r\nTo: alice@example.com\r\nSubject: hello\r\n\r\nLine one\r\n..dot-stuffed\r\nLast line\r\n";
    c.send_raw(body.as_bytes());
    let reply = c.cmd(".", "250 2.0.0 Ok: queued as ");
    let queue_id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    c.cmd("QUIT", "221");

    let mails = server.wait_for_delivery("alice@example.com", 1);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    let expected_body = body.replace("\r\n", "\n").replace("\n..dot", "\n.dot");
    assert!(mail.ends_with(&expected_body), "message changed:\n{mail}");
    // On loopback the kernel names the Unix user behind the client socket.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap();
    let expected_start = format!(
        "Return-Path: <someone@remote.test>\nDelivered-To: alice@example.com\nReceived: from sender.remote.test ([127.0.0.1] uid {} user {})\n\tby mail.example.com (postern) with ESMTP id ",
        me.uid, me.name
    );
    assert!(mail.starts_with(&expected_start), "{mail}");
    assert!(mail.contains(&format!("id {queue_id}")), "{mail}");
    assert!(!mail.contains("Message-ID"), "MX mail is not rewritten");

    let accepted = server.wait_for_log("event=accepted").unwrap();
    assert_eq!(field(&accepted, "auth").as_deref(), Some("-"));
    assert_eq!(
        field(&accepted, "queue_id").as_deref(),
        Some(queue_id.as_str())
    );
    let delivered = server.wait_for_log("event=delivered").unwrap();
    assert_eq!(field(&delivered, "relay").as_deref(), Some("maildir"));
    assert_eq!(
        field(&delivered, "rcpt").as_deref(),
        Some("Alice@example.com")
    );
    assert!(
        common::wait_until(|| server.queued().is_empty()),
        "a delivered message leaves the queue"
    );
}

#[test]
fn unknown_local_mailbox_is_refused_with_550_5_1_1() {
    let server = Server::start();
    let mut c = common::PlainClient::mx(&server);
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1");
    let line = server.wait_for_log("reason=unknown_user").unwrap();
    assert_eq!(field(&line, "rcpt").as_deref(), Some("nobody@example.com"));
}

#[test]
fn auth_is_neither_advertised_nor_accepted_before_starttls() {
    let server = Server::start();
    for listener in ["mx", "submission"] {
        let mut c = PlainClient::connect(server.addr(listener));
        let ehlo = c.cmd("EHLO client.test", "250");
        assert!(ehlo.contains("STARTTLS"), "{ehlo}");
        assert!(!ehlo.contains("AUTH"), "{ehlo}");
        c.cmd(
            &format!("AUTH PLAIN {}", plain(None, "alice@example.com", PASSWORD)),
            "538 5.7.11",
        );
        c.cmd("AUTH LOGIN", "538 5.7.11");
    }
}

#[test]
fn submission_requires_auth_before_mail() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    c.cmd(
        "MAIL FROM:<alice@example.com>",
        "530 5.7.0 Authentication required",
    );
    server.wait_for_log("reason=auth_required").unwrap();
}

#[test]
fn authzid_different_from_the_login_is_refused() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    let auth = plain(Some("bob@example.com"), "alice@example.com", PASSWORD);
    c.cmd(&format!("AUTH PLAIN {auth}"), "535 5.7.8");
    // Empty and equal authzids are fine.
    let auth = plain(Some("alice@example.com"), "alice@example.com", PASSWORD);
    c.cmd(&format!("AUTH PLAIN {auth}"), "235 2.7.0");
}

#[test]
fn sasl_cancel_and_bad_base64_get_501() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    c.cmd("AUTH PLAIN", "334");
    c.cmd("*", "501");
    c.cmd("AUTH PLAIN not*base64", "501");
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6");
    c.cmd("*", "501");
}

#[test]
fn sender_not_owned_by_the_login_is_refused_with_553() {
    let server = Server::start();
    let mut c = common::TlsClient::submission(&server, "alice@example.com");
    c.cmd("MAIL FROM:<bob@example.com>", "553 5.7.1");
    c.cmd("MAIL FROM:<ALICE@example.com>", "250");
    let line = server.wait_for_log("reason=sender_mismatch").unwrap();
    assert_eq!(field(&line, "from").as_deref(), Some("bob@example.com"));
}

#[test]
fn open_relay_tricks_never_relay_or_misdeliver() {
    let server = Server::start();
    let mut c = common::PlainClient::mx(&server);
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    for (rcpt, code) in [
        ("<victim%remote.test@example.com>", "550 5.7.1"),
        ("<remote.test!victim@example.com>", "550 5.7.1"),
        ("<\"victim@remote.test\"@example.com>", "550 5.7.1"),
        ("<victim@remote.test@example.com>", "501 5.1.3"),
        ("<@example.com:victim@remote.test>", "501 5.1.3"),
        ("<alice@example.com.>", "501 5.1.3"),
        ("<victim@[127.0.0.1]>", RELAY_DENIED),
        ("<alice@EXAMPLE.COM>", "250"),
    ] {
        c.cmd(&format!("RCPT TO:{rcpt}"), code);
    }
}

#[test]
fn repeated_login_failures_block_the_client_even_with_the_right_password() {
    let server =
        Server::start_with("[limits]\nauth_failures_before_block = 3\nauth_block_seconds = 600\n");
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    let wrong = plain(None, "alice@example.com", "wrong");
    c.cmd(&format!("AUTH PLAIN {wrong}"), "535 5.7.8");
    c.cmd(&format!("AUTH PLAIN {wrong}"), "535 5.7.8");
    c.cmd(
        &format!("AUTH PLAIN {wrong}"),
        "421 4.7.0 Too many failed logins",
    );
    assert!(c.is_closed());
    server.wait_for_log("event=auth_blocked").unwrap();

    let mut again = PlainClient::connect(server.addr("submission")).starttls();
    let right = plain(None, "alice@example.com", PASSWORD);
    again.cmd(&format!("AUTH PLAIN {right}"), "421 4.7.0");
    let line = server.wait_for_log("reason=auth_blocked").unwrap();
    assert_eq!(field(&line, "client").as_deref(), Some("127.0.0.1"));
}

#[test]
fn the_login_limit_refuses_mail_with_450() {
    let server = Server::start_with("[limits]\nlogin_messages_per_hour = 1\n");
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    c.login("ALICE@example.com", PASSWORD);
    c.begin("alice@example.com", &["bob@example.com"]);
    c.cmd("Subject: one\r\n\r\nx\r\n.", "250");
    let reply = c.cmd(
        "MAIL FROM:<alice@example.com>",
        "450 4.7.1 Sending limit reached",
    );
    assert!(reply.contains("try again in"), "{reply}");
    let line = server.wait_for_log("reason=rate_limited").unwrap();
    assert_eq!(
        field(&line, "auth").as_deref(),
        Some("alice@example.com"),
        "the login is logged in its canonical form"
    );
}

#[test]
fn parallel_sessions_of_one_login_cannot_both_take_its_last_message() {
    let server = Server::start_with("[limits]\nlogin_messages_per_hour = 1\n");
    let open = || {
        let mut c = common::TlsClient::submission(&server, "alice@example.com");
        c.begin("alice@example.com", &["bob@example.com"]);
        c
    };
    // Both are past MAIL and RCPT before either message is stored.
    let (mut first, mut second) = (open(), open());
    first.cmd("Subject: one\r\n\r\nx\r\n.", "250");
    let reply = second.cmd(
        "Subject: two\r\n\r\nx\r\n.",
        "450 4.7.1 Sending limit reached",
    );
    assert!(reply.contains("try again in"), "{reply}");
    assert_eq!(server.wait_for_delivery("bob@example.com", 1).len(), 1);
    assert!(server.wait_for_log("reason=rate_limited").is_some());
}

#[test]
fn postmaster_is_accepted_and_goes_to_the_configured_address() {
    let server = Server::start_setup(common::Setup {
        top: "postmaster = \"bob@example.com\"".into(),
        ..Default::default()
    });
    let mut c = common::PlainClient::mx(&server);
    c.begin(
        "someone@remote.test",
        &["postmaster", "PostMaster@Example.com"],
    );
    c.cmd("Subject: abuse report\r\n\r\nx\r\n.", "250");
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "log:\n{}", server.log_text());
    assert!(mails[0].contains("Subject: abuse report"));
}

#[test]
fn mx_mail_gets_our_authentication_results_and_forged_ones_are_removed() {
    let test = "mx_mail_gets_our_authentication_results_and_forged_ones_are_removed";
    if !common::root(test, "a private /etc/resolv.conf (no DNS beyond loopback)") {
        return;
    }
    for verify in [true, false] {
        // With DNS unreachable the checks cannot pass or fail: each says temperror, and
        // the header is written all the same.
        let server = Server::start_setup(Setup {
            extra: format!("[inbound]\nverify = {verify}\n"),
            dns_offline: true,
            ..Setup::default()
        });
        let mut c = PlainClient::connect(server.addr("mx"));
        c.cmd("EHLO sender.remote.test", "250");
        c.begin("someone@remote.test", &["alice@example.com"]);
        c.cmd(
            "Authentication-Results: MAIL.example.com; dkim=pass header.d=bank.test\r\nAuthentication-Results: other.test; spf=pass\r\nFrom: someone@remote.test\r\nSubject: ar\r\n\r\nx\r\n.",
            "250",
        );
        let mail = &server.wait_for_delivery("alice@example.com", 1)[0];
        assert!(
            !mail.contains("header.d=bank.test"),
            "the forged verdict is gone:\n{mail}"
        );
        assert!(
            mail.contains("Authentication-Results: other.test; spf=pass"),
            "another server's stays:\n{mail}"
        );
        let our = mail
            .matches("Authentication-Results: mail.example.com;")
            .count();
        assert_eq!(our, verify as usize, "{mail}");
        if verify {
            assert!(mail.contains("spf=temperror"), "{mail}");
            assert!(mail.contains("dmarc=temperror"), "{mail}");
        }
    }
}
