//! Outbound delivery to scripted SMTP sinks on loopback, reached through
//! `delivery.routes` and `relay_host`: intact delivery, retries, bounces, timeouts,
//! mixed replies, crash safety and the queue commands.

mod common;

use std::collections::HashSet;

use common::sink::{Script, Sink};
use common::{PASSWORD, PlainClient, Server, Setup, field};
use mail_parser::MimeHeaders as _;

/// Short retries, `delivery` lines, and routes for the given domains to their sinks.
fn start(routes: &[(&str, &Sink)], delivery: &str) -> Server {
    start_retrying(routes, delivery, 1)
}

fn start_retrying(routes: &[(&str, &Sink)], delivery: &str, retry: u64) -> Server {
    let mut extra = format!(
        "[queue]\nretry_first = {retry}\nretry_max = {}\n\n[delivery.routes]\n",
        retry * 2
    );
    for (domain, sink) in routes {
        extra.push_str(&format!("\"{domain}\" = \"{}\"\n", sink.addr));
    }
    Server::start_setup(Setup {
        delivery: delivery.to_string(),
        extra,
        ..Setup::default()
    })
}

/// Sends one message from alice (authenticated) to `rcpts`; returns its queue ID.
fn submit(server: &Server, rcpts: &[&str], body: &str) -> String {
    let mut c = common::TlsClient::submission(server, "alice@example.com");
    c.cmd("MAIL FROM:<alice@example.com>", "250");
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>"), "250");
    }
    c.cmd("DATA", "354");
    // Dot-stuffing on the way in; the outbound client must stuff again on the way out.
    let stuffed = body.replace("\r\n.", "\r\n..");
    let reply = c.cmd(&format!("{stuffed}\r\n."), "250 2.0.0 Ok: queued as ");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}

fn log_lines_with(server: &Server, needle: &str) -> Vec<String> {
    server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

#[test]
fn a_message_reaches_the_sink_intact() {
    let sink = Sink::start(Script::default());
    let server = start(&[("remote.test", &sink)], "");
    let body = "From: alice@example.com\r\nTo: bob@remote.test\r\nSubject: out\r\n\r\nfirst line\r\n.leading dot\r\n\r\n8-bit: caf\u{e9}\r\nlast";
    let id = submit(&server, &["bob@remote.test"], body);
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1, "log:\n{}", server.log_text());
    assert_eq!(got[0].from, "alice@example.com");
    assert_eq!(got[0].rcpts, ["bob@remote.test"]);
    let text = got[0].text();
    assert!(
        text.starts_with("Received: from client.test ([127.0.0.1]"),
        "{text}"
    );
    assert!(text.contains(&format!("with ESMTPSA id {id}")), "{text}");
    assert!(
        text.ends_with(&format!("{body}\r\n")),
        "body changed:\n{text}"
    );

    let line = server.wait_for_log("event=delivered").unwrap();
    assert_eq!(field(&line, "queue_id"), Some(id));
    assert_eq!(field(&line, "relay"), Some(sink.addr.to_string()));
    assert_eq!(field(&line, "dsn").as_deref(), Some("2.0.0"));
    assert!(field(&line, "reply").unwrap().starts_with("250"));
    assert!(common::wait_until(|| server.queued().is_empty()));
}

#[test]
fn relay_host_is_used_when_no_route_matches() {
    let sink = Sink::start(Script::default());
    let server = start(&[], &format!("relay_host = \"{}\"", sink.addr));
    submit(
        &server,
        &["someone@elsewhere.test"],
        "Subject: via relay\r\n\r\nx",
    );
    assert_eq!(sink.wait_for(1).len(), 1, "log:\n{}", server.log_text());
}

#[test]
fn a_451_is_deferred_then_delivered_on_retry() {
    let sink = Sink::start(Script {
        data_replies: ["451 4.3.0 try again later".to_string()].into(),
        ..Script::default()
    });
    let server = start(&[("remote.test", &sink)], "");
    submit(&server, &["bob@remote.test"], "Subject: retry\r\n\r\nx");
    let deferred = server.wait_for_log("event=deferred").unwrap();
    assert_eq!(field(&deferred, "dsn").as_deref(), Some("4.3.0"));
    assert!(
        field(&deferred, "reply")
            .unwrap()
            .contains("try again later")
    );
    assert_eq!(
        sink.wait_for(1).len(),
        1,
        "delivered on retry; log:\n{}",
        server.log_text()
    );
    server.wait_for_log("event=delivered").unwrap();
}

#[test]
fn a_550_bounces_to_the_local_sender_as_rfc_3464() {
    let sink = Sink::start(Script {
        rcpt: Box::new(|_| "550 5.1.1 <bob@remote.test>: no such user here".into()),
        ..Script::default()
    });
    let server = start(&[("remote.test", &sink)], "");
    let id = submit(
        &server,
        &["bob@remote.test"],
        "Subject: doomed\r\n\r\nsecret body text",
    );
    let bounced = server.wait_for_log("event=bounced").unwrap();
    assert_eq!(field(&bounced, "dsn").as_deref(), Some("5.1.1"));
    let mails = server.wait_for_delivery("alice@example.com", 1);
    assert_eq!(
        mails.len(),
        1,
        "the bounce reaches alice; log:\n{}",
        server.log_text()
    );
    let dsn = mails[0].replace('\n', "\r\n");
    let parsed = mail_parser::MessageParser::default()
        .parse(dsn.as_bytes())
        .expect("parses");
    assert!(mails[0].starts_with("Return-Path: <>\n"), "{}", mails[0]);
    assert_eq!(
        parsed.content_type().map(|c| c.subtype()),
        Some(Some("report"))
    );
    assert!(mails[0].contains("report-type=delivery-status"));
    assert!(mails[0].contains("Final-Recipient: rfc822; bob@remote.test"));
    assert!(mails[0].contains("Status: 5.1.1"));
    assert!(mails[0].contains("Diagnostic-Code: smtp; 550 5.1.1"));
    assert!(mails[0].contains(&format!("X-Postern-Queue-ID: {id}")));
    assert!(
        mails[0].contains("Subject: doomed"),
        "original headers included"
    );
    assert!(!mails[0].contains("secret body text"), "but not the body");
    assert!(common::wait_until(|| server.queued().is_empty()));
}

#[test]
fn no_bounce_for_the_null_sender() {
    let sink = Sink::start(Script {
        rcpt: Box::new(|_| "550 5.1.1 no".into()),
        ..Script::default()
    });
    let server = start(&[("remote.test", &sink)], "");
    let mut c = common::TlsClient::submission(&server, "alice@example.com");
    c.begin("", &["bob@remote.test"]);
    c.cmd("Subject: a bounce\r\n\r\nx\r\n.", "250");
    server.wait_for_log("event=bounced").unwrap();
    assert!(common::wait_until(|| server.queued().is_empty()));
    assert!(log_lines_with(&server, "event=notification_queued").is_empty());
}

#[test]
fn a_silent_server_times_out_while_other_domains_keep_flowing() {
    let silent = Sink::start(Script {
        silent: true,
        ..Script::default()
    });
    let good = Sink::start(Script::default());
    let server = start(
        &[("dead.test", &silent), ("remote.test", &good)],
        "timeout = 2\nconnect_timeout = 2",
    );
    submit(&server, &["x@dead.test"], "Subject: stuck\r\n\r\nx");
    submit(&server, &["bob@remote.test"], "Subject: flows\r\n\r\nx");
    assert_eq!(good.wait_for(1).len(), 1, "the good domain is not held up");
    let deferred = server.wait_for_log("rcpt=x@dead.test").unwrap();
    assert!(deferred.contains("event=deferred"), "{deferred}");
    assert!(
        field(&deferred, "reply").unwrap().contains("timed out"),
        "{deferred}"
    );
}

#[test]
fn mixed_replies_per_recipient_in_one_transaction() {
    let sink = Sink::start(Script {
        rcpt: Box::new(|to| match to {
            "ok@remote.test" => "250 2.1.5 Ok".into(),
            "gone@remote.test" => "550 5.1.1 no such user".into(),
            _ => "451 4.2.1 mailbox busy".into(),
        }),
        ..Script::default()
    });
    let server = start(&[("remote.test", &sink)], "");
    submit(
        &server,
        &["ok@remote.test", "gone@remote.test", "busy@remote.test"],
        "Subject: mixed\r\n\r\nx",
    );
    let got = sink.wait_for(1);
    assert_eq!(
        got[0].rcpts,
        ["ok@remote.test"],
        "one transaction, only the accepted recipient"
    );
    server.wait_for_log("event=bounced").unwrap();
    let deferred = server.wait_for_log("rcpt=busy@remote.test").unwrap();
    assert!(
        deferred.contains("event=deferred") && deferred.contains("dsn=4.2.1"),
        "{deferred}"
    );
    let bounce = &server.wait_for_delivery("alice@example.com", 1)[0];
    assert!(
        bounce.contains("gone@remote.test")
            && !bounce.contains("Final-Recipient: rfc822; ok@remote.test"),
        "{bounce}"
    );
}

#[test]
fn kill_9_during_a_burst_loses_nothing() {
    let sink = Sink::start(Script::default());
    let mut server = start(&[("remote.test", &sink)], "");
    let total = 30;
    for i in 0..total {
        submit(
            &server,
            &["bob@remote.test"],
            &format!("Subject: burst {i}\r\n\r\nmessage {i}"),
        );
        if i == total / 2 {
            server.kill9();
            server.restart();
        }
    }
    server.kill9();
    server.restart();
    let unique = distinct_subjects(&sink, "Subject: burst ", total);
    assert_eq!(
        unique,
        total,
        "every acknowledged message arrives (duplicates allowed); log:\n{}",
        server.log_text()
    );
}

#[test]
fn postern_to_postern_uses_starttls() {
    let receiver = Server::start();
    let sender = Server::start_setup(Setup {
        domain: Some("sender.test".into()),
        extra: format!(
            "[delivery.routes]\n\"example.com\" = \"{}\"\n",
            receiver.addr("mx")
        ),
        ..Setup::default()
    });
    let mut c = PlainClient::connect(sender.addr("submission")).starttls();
    c.login("alice@sender.test", PASSWORD);
    c.begin("alice@sender.test", &["bob@example.com"]);
    c.cmd("Subject: between servers\r\n\r\nhello\r\n.", "250");
    let mails = receiver.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "sender log:\n{}", sender.log_text());
    assert!(
        mails[0].contains("with ESMTPS id"),
        "STARTTLS was used:\n{}",
        mails[0]
    );
    assert!(mails[0].contains("Subject: between servers"));
}

#[test]
fn queue_commands_list_flush_and_delete_on_the_running_server() {
    let sink = Sink::start(Script {
        rcpt: Box::new(|_| "451 4.7.1 greylisted".into()),
        ..Script::default()
    });
    let server = start_retrying(&[("remote.test", &sink)], "", 3600);
    let first = submit(&server, &["bob@remote.test"], "Subject: one\r\n\r\nx");
    let second = submit(&server, &["carol@remote.test"], "Subject: two\r\n\r\nx");
    assert!(common::wait_until(|| log_lines_with(
        &server,
        "event=deferred"
    )
    .len()
        >= 2));

    // The deferral is logged just before its new state is written: wait for both.
    common::wait_until(|| {
        let out = server.cli(&["queue", "list"], None);
        String::from_utf8_lossy(&out.stdout)
            .matches(": deferred")
            .count()
            == 2
    });
    let out = server.cli(&["queue", "list"], None);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains(&first) && listing.contains(&second),
        "{listing}"
    );
    assert!(
        listing.contains("bob@remote.test: deferred, 1 attempt"),
        "{listing}"
    );
    assert!(listing.contains("451 4.7.1 greylisted"), "{listing}");
    assert!(
        listing.contains("-- 2 messages, 2 recipients pending"),
        "{listing}"
    );

    let out = server.cli(&["queue", "show", &first], None);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("login alice@example.com") && shown.contains("Subject: one"),
        "{shown}"
    );

    let out = server.cli(&["queue", "delete", &second], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server
            .wait_for_log(&format!("event=deleted queue_id={second}"))
            .is_some()
    );

    sink.script(|s| s.rcpt = Box::new(|_| "250 2.1.5 Ok".into()));
    let out = server.cli(&["queue", "flush"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1);
    assert!(got[0].text().contains("Subject: one"));
    assert!(common::wait_until(|| server.queued().is_empty()));
    let out = server.cli(&["queue", "list"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Mail queue is empty"));
}

#[test]
fn consecutive_messages_to_one_server_reuse_the_connection() {
    let sink = Sink::start(Script::default());
    // Kept open far longer than the test takes, however slow the machine.
    let server = start(&[("remote.test", &sink)], "connection_idle = \"1h\"");
    for i in 0..3 {
        submit(
            &server,
            &["bob@remote.test"],
            &format!("Subject: reuse {i}\r\n\r\nx"),
        );
        assert_eq!(
            sink.wait_for(i + 1).len(),
            i + 1,
            "log:\n{}",
            server.log_text()
        );
    }
    assert_eq!(
        sink.connections(),
        1,
        "one connection carried all three messages"
    );
}

#[test]
fn a_failed_starttls_handshake_falls_back_to_plaintext_only_when_allowed() {
    let broken = || {
        Sink::start(Script {
            broken_starttls: true,
            ..Script::default()
        })
    };
    let lenient = broken();
    let server = start(&[("remote.test", &lenient)], "");
    submit(&server, &["bob@remote.test"], "Subject: fallback\r\n\r\nx");
    assert_eq!(
        lenient.wait_for(1).len(),
        1,
        "delivered in plaintext; log:\n{}",
        server.log_text()
    );
    server.wait_for_log("event=tls_failed").unwrap();

    let strict_sink = broken();
    let strict = start(
        &[("remote.test", &strict_sink)],
        "plaintext_fallback = false",
    );
    submit(
        &strict,
        &["bob@remote.test"],
        "Subject: no fallback\r\n\r\nx",
    );
    let deferred = strict.wait_for_log("event=deferred").unwrap();
    assert_eq!(
        field(&deferred, "dsn").as_deref(),
        Some("4.7.5"),
        "{deferred}"
    );
    assert!(strict_sink.received().is_empty());
}

#[test]
fn sigterm_during_deliveries_exits_zero_and_loses_nothing() {
    // The sink takes a second to answer each message, so deliveries are in flight when
    // the signal arrives; the test checks that one was.
    let sink = Sink::start(Script {
        data_delay: std::time::Duration::from_secs(1),
        ..Script::default()
    });
    let mut server = start(&[("remote.test", &sink)], "");
    let total = 8;
    for i in 0..total {
        submit(
            &server,
            &["bob@remote.test"],
            &format!("Subject: term {i}\r\n\r\nx"),
        );
    }
    assert!(sink.wait_for_pending(), "no delivery started");
    let before = std::time::Instant::now();
    server.signal("TERM");
    let after = std::time::Instant::now();
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    let answers = sink.answers();
    assert!(
        answers.iter().any(|a| a.pending_throughout(before, after)),
        "no delivery was in progress when SIGTERM arrived: {answers:?}"
    );
    server.restart();
    let unique = distinct_subjects(&sink, "Subject: term ", total);
    assert_eq!(unique, total, "log:\n{}", server.log_text());
}

/// Waits (at most 30 s) until the sink has `total` different subjects starting with
/// `prefix`, and returns how many it has: duplicates are allowed, losses are not.
fn distinct_subjects(sink: &Sink, prefix: &str, total: usize) -> usize {
    let count = || {
        sink.received()
            .iter()
            .filter_map(|m| {
                m.text()
                    .lines()
                    .find(|l| l.starts_with(prefix))
                    .map(str::to_string)
            })
            .collect::<HashSet<_>>()
            .len()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count() < total && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    count()
}
