//! A message that got `250` survives `kill -9` and is delivered after the restart.

mod common;

use common::{PlainClient, Server, field};

#[test]
fn message_acknowledged_before_kill_9_is_delivered_after_restart() {
    // The first attempt, right after the commit, may have recorded its deferral before
    // the kill; a short retry keeps the wait after the restart short.
    let mut server = Server::start_with("[queue]\nretry_first = 1\n");
    // A regular file where the Maildir tree should go makes delivery fail
    // (temporarily), so the message is still in the queue when the server dies.
    let blocker = server.dir.path().join("mail");
    std::fs::write(&blocker, b"not a directory").unwrap();

    let queue_id = send_from_outside(
        &server,
        &["alice@example.com"],
        "Subject: survive\r\n\r\nstill here",
    );
    server.kill9();

    assert_eq!(
        server.queued().len(),
        1,
        "the acknowledged message is on disk"
    );
    std::fs::remove_file(&blocker).unwrap();
    server.restart();

    let mails = server.wait_for_delivery("alice@example.com", 1);
    assert_eq!(mails.len(), 1, "log:\n{}", server.log_text());
    assert!(mails[0].contains("still here"));
    assert!(mails[0].contains(&format!("id {queue_id}")));
    let recovered = server.wait_for_log("event=queue_recovered messages=1");
    assert!(
        recovered.is_some(),
        "the restart found the message in the queue"
    );
}

#[test]
fn failed_maildir_delivery_is_deferred_and_kept() {
    let server = Server::start();
    std::fs::write(server.dir.path().join("mail"), b"blocker").unwrap();
    send_from_outside(&server, &["alice@example.com"], "Subject: later\r\n\r\nx");
    let deferred = server.wait_for_log("event=deferred").unwrap();
    assert_eq!(
        field(&deferred, "rcpt").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(field(&deferred, "relay").as_deref(), Some("maildir"));
    assert!(field(&deferred, "dsn").unwrap().starts_with("4."));
    assert_eq!(
        server.queued().len(),
        1,
        "a failed delivery never loses the message"
    );
}

#[test]
fn sigterm_lets_a_message_in_progress_finish_and_closes_idle_sessions_with_421() {
    let mut server = Server::start();
    let mut idle = PlainClient::connect(server.addr("mx"));
    idle.cmd("EHLO idle.test", "250");
    let mut busy = PlainClient::connect(server.addr("mx"));
    busy.cmd("EHLO busy.test", "250");
    busy.cmd("MAIL FROM:<someone@remote.test>", "250");
    busy.cmd("RCPT TO:<alice@example.com>", "250");
    busy.cmd("DATA", "354");
    busy.send_raw(b"Subject: in flight\r\n\r\n");

    server.signal("TERM");
    assert!(idle.read_reply().starts_with("421 4.3.2"));
    server.wait_for_log("event=stopping").unwrap();
    busy.cmd("still arriving\r\n.", "250 2.0.0 Ok: queued as ");
    busy.send_raw(b"NOOP\r\n");
    assert!(busy.read_reply().starts_with("421 4.3.2"));
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        server.queued().len() + server.delivered("alice@example.com").len(),
        1
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut server = Server::start();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

/// Sends one message over the MX listener to `rcpts`; returns its queue ID.
fn send_from_outside(server: &Server, rcpts: &[&str], message: &str) -> String {
    let mut c = PlainClient::connect(server.addr("mx"));
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    for rcpt in rcpts {
        c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    }
    c.cmd("DATA", "354");
    let reply = c.cmd(&format!("{message}\r\n."), "250 2.0.0 Ok: queued as ");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}

/// The names in the queue directory (committed items, free files, anything).
fn queue_entries(server: &Server) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(server.data_dir().join("queue")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn mail_for_local_mailboxes_is_delivered_before_the_250_and_never_queued() {
    let server = Server::start();
    let both = ["alice@example.com", "bob@example.com"];
    let queue_id = send_from_outside(&server, &both, "Subject: at once\r\n\r\nx");
    // Already there when the 250 arrives: no waiting.
    for rcpt in ["alice@example.com", "bob@example.com"] {
        let mails = server.delivered(rcpt);
        assert_eq!(mails.len(), 1, "{rcpt}; log:\n{}", server.log_text());
        assert!(mails[0].contains(&format!("id {queue_id}")));
    }
    // Not even a recycled queue file: the queue was never written.
    assert_eq!(queue_entries(&server), Vec::<String>::new());
    // Logged as usual, accepted first.
    let delivered = server.wait_for_log("event=delivered").unwrap();
    assert_eq!(field(&delivered, "relay").as_deref(), Some("maildir"));
    let lines = server.log_lines();
    let position = |event: &str| {
        lines
            .iter()
            .position(|l| l.contains(event) && l.contains(&queue_id))
    };
    assert!(position("event=accepted") < position("event=delivered"));
}

#[test]
fn a_mailbox_that_fails_leaves_the_message_queued_for_it_alone() {
    let server = Server::start();
    // bob's Maildir cannot be made (a file is in the way); alice's can.
    let bob = server.maildir("bob@example.com");
    std::fs::create_dir_all(bob.parent().unwrap()).unwrap();
    std::fs::write(&bob, b"not a directory").unwrap();

    let both = ["alice@example.com", "bob@example.com"];
    send_from_outside(&server, &both, "Subject: half\r\n\r\nx");
    assert_eq!(server.delivered("alice@example.com").len(), 1);
    let deferred = server.wait_for_log("event=deferred").unwrap();
    assert_eq!(field(&deferred, "rcpt").as_deref(), Some("bob@example.com"));
    assert_eq!(server.queued().len(), 1, "kept for bob");

    // Once bob's Maildir can be made, he gets it, and alice gets no second copy.
    std::fs::remove_file(&bob).unwrap();
    let flushed = server.cli(&["queue", "flush"], None);
    assert!(flushed.status.success(), "{flushed:?}");
    let bobs = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(bobs.len(), 1, "log:\n{}", server.log_text());
    assert!(common::wait_until(|| server.queued().is_empty()));
    assert_eq!(server.delivered("alice@example.com").len(), 1);
}
