//! The shipped fail2ban filter matches the real server's log lines.

mod common;

use common::{PlainClient, Server, available, find_program, plain};

#[test]
fn the_fail2ban_filter_matches_real_auth_failures_and_nothing_else() {
    if !available(
        "fail2ban",
        &[("fail2ban-regex (fail2ban)", find_program("fail2ban-regex"))],
    ) {
        return;
    }
    let server = Server::start_with(
        "[limits]\nauth_failures_before_block = 3\nauth_failure_delay_ms = 10\n",
    );
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    // The second login name tries to plant another client= in the line.
    for login in ["alice@example.com", "x client=10.9.9.9", "bob@example.com"] {
        c.send_raw(format!("AUTH PLAIN {}\r\n", plain(None, login, "wrong")).as_bytes());
        c.read_reply();
    }
    let mut again = PlainClient::connect(server.addr("submission")).starttls();
    again.cmd(
        &format!("AUTH PLAIN {}", plain(None, "alice@example.com", "wrong")),
        "421",
    );
    server.wait_for_log("reason=auth_blocked").unwrap();
    // A whole normal session adds lines that must not match: a message accepted and
    // delivered, and a refused relay attempt (event=rejected, but not auth_blocked).
    let mut ok = common::PlainClient::mx(&server);
    ok.cmd("MAIL FROM:<x@remote.test>", "250");
    ok.cmd("RCPT TO:<elsewhere@remote.test>", "550");
    ok.cmd("RCPT TO:<alice@example.com>", "250");
    ok.cmd("DATA", "354");
    let reply = ok.cmd("Subject: fine\r\n\r\nx\r\n.", "250 2.0.0 Ok: queued as ");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    ok.cmd("QUIT", "221");
    // Copy the log only once those lines are in it.
    let delivered = server.wait_for_lines(&format!("event=delivered queue_id={id} "), 1);
    assert_eq!(delivered.len(), 1, "log:\n{}", server.log_text());
    let text = server.log_text();
    for event in ["event=accepted", "event=delivered", "reason=relay_denied"] {
        assert!(
            text.contains(event),
            "no {event} line to test against:\n{text}"
        );
    }

    let log = server.dir.path().join("postern.log");
    std::fs::write(&log, text + "\n").unwrap();
    let filter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/fail2ban/filter.d/postern.conf");
    let out = std::process::Command::new("fail2ban-regex")
        .args(["--print-all-matched"])
        .arg(&log)
        .arg(&filter)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Three failed logins, and the blocked client's refusal.
    assert!(report.contains(" 4 matched,"), "{report}");
    let matched: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.contains("Matched line(s):"))
        .take_while(|l| !l.contains("Missed line(s):"))
        .filter(|l| l.starts_with("|  ts="))
        .collect();
    assert_eq!(matched.len(), 4, "{report}");
    assert!(
        matched.iter().all(|l| l.contains("client=127.0.0.1 ")),
        "{matched:?}"
    );
    // Exactly the four: three failures and the blocked client's refusal.
    let failures = matched
        .iter()
        .filter(|l| l.contains("event=auth_failed"))
        .count();
    let blocked = matched
        .iter()
        .filter(|l| l.contains("reason=auth_blocked"))
        .count();
    assert_eq!((failures, blocked), (3, 1), "{matched:#?}");
}
