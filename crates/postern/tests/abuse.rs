//! Abuse controls: each stops the abuser and leaves everyone else alone.

mod common;

use common::{PASSWORD, PlainClient, Server, field, plain, test_user};

fn send_one(server: &Server, login: &str, rcpts: &[&str]) -> Vec<String> {
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    c.login(login, PASSWORD);
    let mut replies = vec![c.cmd(&format!("MAIL FROM:<{login}>"), "")];
    if !replies[0].starts_with("250") {
        return replies;
    }
    for r in rcpts {
        replies.push(c.cmd(&format!("RCPT TO:<{r}>"), ""));
    }
    if replies.iter().skip(1).any(|r| r.starts_with("250")) {
        c.cmd("DATA", "354");
        replies.push(c.cmd("Subject: x\r\n\r\nx\r\n.", ""));
    }
    replies
}

#[test]
fn an_account_over_its_own_hourly_limit_gets_450_while_another_sends() {
    let server = Server::start();
    // Alice's line gets a per-account limit in the extra-fields column.
    let passwd = server.dir.path().join("passwd");
    let text = std::fs::read_to_string(&passwd).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("alice@") {
                format!("{l}:::::: postern_messages_per_hour=1\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&passwd, text).unwrap();

    let first = send_one(&server, "alice@example.com", &["bob@example.com"]);
    assert!(first.last().unwrap().starts_with("250 2.0.0"), "{first:?}");
    let second = send_one(&server, "alice@example.com", &["bob@example.com"]);
    assert!(
        second[0].starts_with(
            "450 4.7.1 Sending limit reached: login alice@example.com may send 1 messages per hour"
        ),
        "{second:?}"
    );
    for _ in 0..3 {
        let other = send_one(&server, "bob@example.com", &["alice@example.com"]);
        assert!(
            other.last().unwrap().starts_with("250 2.0.0"),
            "bob is not limited: {other:?}"
        );
    }
    let line = server.wait_for_log("reason=rate_limited").unwrap();
    assert_eq!(field(&line, "auth").as_deref(), Some("alice@example.com"));
}

#[test]
fn the_recipient_limit_refuses_the_recipient_that_goes_over() {
    let server = Server::start_with("[limits]\nlogin_recipients_per_hour = 2\n");
    let replies = send_one(
        &server,
        "alice@example.com",
        &["bob@example.com", "alice@example.com", "carol@remote.test"],
    );
    assert!(
        replies[1].starts_with("250") && replies[2].starts_with("250"),
        "{replies:?}"
    );
    assert!(
        replies[3].starts_with("450 4.7.1") && replies[3].contains("2 recipients per hour"),
        "{replies:?}"
    );
    assert!(
        replies[4].starts_with("250 2.0.0"),
        "the message still goes to the first two: {replies:?}"
    );
    let next = send_one(&server, "alice@example.com", &["bob@example.com"]);
    assert!(next[1].starts_with("450 4.7.1"), "{next:?}");
}

#[test]
fn a_blocked_client_cannot_log_in_while_another_user_on_the_box_can() {
    let server = Server::start_with(
        "[limits]\nauth_failures_before_block = 5\nauth_failure_delay_ms = 10\n",
    );
    let wrong = plain(None, "alice@example.com", "guess");
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    for _ in 0..4 {
        c.cmd(&format!("AUTH PLAIN {wrong}"), "535 5.7.8");
    }
    c.cmd(&format!("AUTH PLAIN {wrong}"), "421 4.7.0");
    // The sixth attempt, with the right password, is refused too.
    let mut again = PlainClient::connect(server.addr("submission")).starttls();
    again.cmd(
        &format!("AUTH PLAIN {}", plain(None, "alice@example.com", PASSWORD)),
        "421 4.7.0",
    );

    // Another Unix user is another client on loopback, and logs in fine.
    if test_user("posterntest").is_none() {
        return;
    }
    let script = format!(
        "import smtplib, ssl\ns = smtplib.SMTP('127.0.0.1', {})\ns.starttls(context=ssl._create_unverified_context())\nprint(s.login('bob@example.com', '{PASSWORD}')[0])\n",
        server.addr("submission").port()
    );
    let out = common::python_as("posterntest", &script);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "235",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn failed_logins_are_answered_more_and_more_slowly() {
    // A step of 10 ms instead of the default 500: the same ladder, without the wait.
    let server = Server::start_with(
        "[limits]\nauth_failures_before_block = 10\nauth_failure_delay_ms = 10\n",
    );
    let wrong = plain(None, "alice@example.com", "guess");
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    for _ in 0..4 {
        c.cmd(&format!("AUTH PLAIN {wrong}"), "535");
    }
    server.wait_for_lines("event=auth_failed", 4);
    assert_eq!(auth_failure_delays(&server), ["0", "10", "20", "30"]);
    // A success resets the count: the next typo costs nothing again.
    c.login("alice@example.com", PASSWORD);
    let mut d = PlainClient::connect(server.addr("submission")).starttls();
    d.cmd(&format!("AUTH PLAIN {wrong}"), "535");
    server.wait_for_lines("event=auth_failed", 5);
    assert_eq!(auth_failure_delays(&server), ["0", "10", "20", "30", "0"]);
}

#[test]
fn guessing_one_login_from_several_clients_slows_down_too() {
    if test_user("posterntest").is_none() {
        return;
    }
    let server = Server::start_with("[limits]\nauth_failure_delay_ms = 10\n");
    let wrong = plain(None, "alice@example.com", "guess");
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    c.cmd(&format!("AUTH PLAIN {wrong}"), "535");
    c.cmd(&format!("AUTH PLAIN {wrong}"), "535");
    // Another client (another Unix user on loopback) guesses the same login.
    let script = format!(
        "import smtplib, ssl\ns = smtplib.SMTP('127.0.0.1', {})\ns.starttls(context=ssl._create_unverified_context())\ntry:\n    s.login('alice@example.com', 'guess')\nexcept smtplib.SMTPAuthenticationError as e:\n    print(e.smtp_code)\n",
        server.addr("submission").port()
    );
    let out = common::python_as("posterntest", &script);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "535");
    // smtplib tries PLAIN, then LOGIN: two more failures from the second client, slowed
    // by the login's count (counted per client alone they would be 0 and 10).
    server.wait_for_lines("event=auth_failed", 4);
    assert_eq!(auth_failure_delays(&server), ["0", "10", "20", "30"]);
}

/// The `delay_ms` of every `event=auth_failed` line so far, in order.
fn auth_failure_delays(server: &Server) -> Vec<String> {
    server
        .log_lines()
        .iter()
        .filter(|l| l.contains("event=auth_failed"))
        .filter_map(|l| field(l, "delay_ms"))
        .collect()
}
