//! `postern sendmail` through the submission socket: no password, every message
//! attributed to the Unix user the kernel names.

mod common;

use common::{Server, field, test_user};

const TEST_USER: &str = "posterntest";

fn exit_code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sendmail_t_as_an_unprivileged_user_is_delivered_and_attributed() {
    let Some(uid) = test_user(TEST_USER) else {
        return;
    };
    let server = Server::start();
    let message = b"To: Alice <alice@example.com>\nBcc: bob@example.com\nSubject: from cron\n\nline one\nline two\n";
    let out = server.sendmail(Some(TEST_USER), &["-t", "-i"], message);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));

    let alice = server.wait_for_delivery("alice@example.com", 1);
    let bob = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(
        (alice.len(), bob.len()),
        (1, 1),
        "Bcc recipients get the message too"
    );
    let mail = &alice[0];
    assert!(
        mail.contains(&format!(
            "Received: by mail.example.com (postern, from userid {uid}); "
        )),
        "{mail}"
    );
    assert!(
        mail.contains("From: \"Postern Test\" <posterntest@mail.example.com>\n"),
        "{mail}"
    );
    assert!(
        mail.contains("\nDate: ") && mail.contains("\nMessage-ID: <"),
        "{mail}"
    );
    assert!(
        !mail.contains("Bcc"),
        "Bcc is removed from the delivered copy:\n{mail}"
    );
    assert!(mail.ends_with("\nline one\nline two\n"), "{mail}");

    let line = server.wait_for_log("event=accepted").unwrap();
    assert_eq!(field(&line, "origin").as_deref(), Some("local"));
    assert_eq!(field(&line, "uid"), Some(uid.to_string()));
    assert_eq!(field(&line, "user").as_deref(), Some(TEST_USER));
    assert_eq!(field(&line, "nrcpt").as_deref(), Some("2"));
    assert!(field(&line, "pid").is_some());
    assert!(
        field(&line, "cmd").unwrap().contains("sendmail -t -i"),
        "{line}"
    );
}

#[test]
fn recipients_as_arguments_and_the_lone_dot_rule() {
    let server = Server::start();
    let out = server.sendmail(
        None,
        &["-f", "alice@example.com", "bob@example.com"],
        b"Subject: dot\n\nbefore\n.\nafter\n",
    );
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let mail = &server.wait_for_delivery("bob@example.com", 1)[0];
    assert!(
        mail.starts_with("Return-Path: <alice@example.com>\n"),
        "{mail}"
    );
    assert!(
        mail.contains("before\n") && !mail.contains("after"),
        "without -i a lone dot ends the input:\n{mail}"
    );
}

#[test]
fn php_mail_delivers_and_the_log_names_the_script() {
    if !common::available(
        "php_mail",
        &[("php (php-cli)", common::find_program("php"))],
    ) {
        return;
    }
    let server = Server::start();
    let script = server.dir.path().join("contact.php");
    std::fs::write(
        &script,
        "<?php\n$ok = mail('alice@example.com', 'Contact form', \"Hello from PHP\\n\", 'From: webmaster@example.com');\nexit($ok ? 0 : 1);\n",
    )
    .unwrap();
    let sendmail_path = format!("{} sendmail -t -i", server.public_binary().display());
    let out = std::process::Command::new("php")
        .arg("-d")
        .arg(format!("sendmail_path={sendmail_path}"))
        .args(["-d", "mail.add_x_header=1"])
        .arg(&script)
        .env("POSTERN_CONFIG", server.config_path())
        .output()
        .expect("php");
    assert!(out.status.success(), "php failed: {}", stderr(&out));
    let mail = &server.wait_for_delivery("alice@example.com", 1)[0];
    assert!(
        mail.contains("Subject: Contact form") && mail.contains("Hello from PHP"),
        "{mail}"
    );
    let line = server.wait_for_log("event=accepted").unwrap();
    assert_eq!(field(&line, "origin").as_deref(), Some("local"));
    assert!(
        field(&line, "script").unwrap().ends_with("contact.php"),
        "{line}"
    );
    assert!(
        field(&line, "parent_cmd").unwrap().contains("contact.php"),
        "{line}"
    );
}

#[test]
fn header_injection_creates_no_extra_recipient() {
    let server = Server::start();
    // A line break in -f.
    let out = server.sendmail(
        None,
        &[
            "-f",
            "alice@example.com\nBcc: bob@example.com",
            "alice@example.com",
        ],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 67, "{}", stderr(&out));
    // A line break in a recipient argument.
    let out = server.sendmail(
        None,
        &["alice@example.com\r\nRCPT TO:<bob@example.com>"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 67, "{}", stderr(&out));
    // A bare CR in a To: value, hiding a Bcc from some parsers.
    let out = server.sendmail(
        None,
        &["-t"],
        b"To: alice@example.com\rBcc: bob@example.com\nSubject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 65, "{}", stderr(&out));
    // "Bcc:" folded into a subject is text, not a field.
    let out = server.sendmail(
        None,
        &["-t"],
        b"To: alice@example.com\nSubject: hi\n Bcc: bob@example.com\n\nx\n",
    );
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(server.wait_for_delivery("alice@example.com", 1).len(), 1);
    assert!(
        server.delivered("bob@example.com").is_empty(),
        "bob was never really named"
    );
    // The Maildir file is there before the accepted line is logged: wait for the line,
    // then count. The refused messages were answered before it was sent, so their lines
    // (had they any) would be there already.
    assert_eq!(
        server.wait_for_lines("event=accepted", 1).len(),
        1,
        "only the last message was queued"
    );
}

#[test]
fn errors_have_the_sysexits_codes_and_say_what_to_do() {
    let server = Server::start();
    let out = server.sendmail(None, &[], b"Subject: nobody\n\nx\n");
    assert_eq!(exit_code(&out), 64);
    assert!(stderr(&out).contains("no recipients"), "{}", stderr(&out));
    let out = server.sendmail(None, &["nobody@example.com"], b"Subject: x\n\nx\n");
    assert_eq!(exit_code(&out), 67);
    assert!(stderr(&out).contains("no such mailbox"), "{}", stderr(&out));
    let out = server.sendmail(None, &["-Z"], b"");
    assert_eq!(exit_code(&out), 64);
    assert!(server.queued().is_empty());
}

#[test]
fn server_down_is_exit_69_and_leaves_nothing_behind() {
    let mut server = Server::start();
    server.terminate();
    let out = server.sendmail(None, &["alice@example.com"], b"Subject: x\n\nx\n");
    assert_eq!(exit_code(&out), 69, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not running") && err.lines().count() == 1,
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir().join("queue"))
        .unwrap()
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_20_mb_message_and_an_empty_message() {
    let server = Server::start();
    let line = "x".repeat(76) + "\n";
    let big = format!("Subject: big\n\n{}", line.repeat(20 * 1024 * 1024 / 77));
    let out = server.sendmail(None, &["-i", "alice@example.com"], big.as_bytes());
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let out = server.sendmail(None, &["bob@example.com"], b"");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let mails = server.wait_for_delivery("alice@example.com", 1);
    assert!(mails[0].len() > 20_000_000);
    let empty = &server.wait_for_delivery("bob@example.com", 1)[0];
    assert!(
        empty.contains("\nDate: ") && empty.contains("\nMessage-ID: "),
        "{empty}"
    );

    let small = Server::start_with("[limits]\nmax_message_size = 1000\n");
    let out = small.sendmail(None, &["-i", "alice@example.com"], big.as_bytes());
    assert_eq!(exit_code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("too big"));
}

#[test]
fn the_per_uid_limit_refuses_with_75() {
    let server = Server::start_with("[limits]\nuid_messages_per_hour = 2\n");
    for _ in 0..2 {
        let out = server.sendmail(None, &["alice@example.com"], b"Subject: x\n\nx\n");
        assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    }
    let out = server.sendmail(None, &["alice@example.com"], b"Subject: x\n\nx\n");
    assert_eq!(exit_code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("try again in"), "{}", stderr(&out));
    let line = server.wait_for_log("reason=rate_limited").unwrap();
    assert_eq!(field(&line, "origin").as_deref(), Some("local"));
    assert_eq!(field(&line, "uid"), Some(common::my_uid().to_string()));
}

#[test]
fn a_loopback_smtp_session_is_attributed_to_its_unix_user() {
    let Some(uid) = test_user(TEST_USER) else {
        return;
    };
    let server = Server::start_with("[limits]\nuid_messages_per_hour = 1\n");
    let script = format!(
        "import smtplib\nfor i in range(2):\n    s = smtplib.SMTP('127.0.0.1', {})\n    try:\n        s.sendmail('someone@remote.test', ['alice@example.com'], 'Subject: tcp\\r\\n\\r\\nx\\r\\n')\n        print('sent')\n    except smtplib.SMTPException as e:\n        print('refused', e)\n    s.quit()\n",
        server.addr("mx").port()
    );
    let out = common::python_as(TEST_USER, &script);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("sent\nrefused"),
        "{printed}{}",
        stderr(&out)
    );

    let line = server.wait_for_log("event=accepted").unwrap();
    assert_eq!(field(&line, "uid"), Some(uid.to_string()), "{line}");
    assert_eq!(field(&line, "user").as_deref(), Some(TEST_USER));
    assert_eq!(field(&line, "auth").as_deref(), Some("-"));
    let mail = &server.wait_for_delivery("alice@example.com", 1)[0];
    assert!(
        mail.contains(&format!("([127.0.0.1] uid {uid} user {TEST_USER})")),
        "{mail}"
    );
    // The second message hit the per-uid limit, counted for TCP as for sendmail.
    let refused = server.wait_for_log("reason=rate_limited").unwrap();
    assert_eq!(field(&refused, "uid"), Some(uid.to_string()));
}

#[test]
fn sendmail_bp_lists_the_queue_and_q_flushes_it() {
    let server = Server::start();
    // A message that cannot be delivered yet: its Maildir is blocked by a file.
    std::fs::write(server.dir.path().join("mail"), b"blocker").unwrap();
    let out = server.sendmail(None, &["alice@example.com"], b"Subject: waiting\n\nx\n");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    server.wait_for_log("event=deferred").unwrap();
    // The log line comes just before the new state is written; wait for it.
    common::wait_until(|| {
        String::from_utf8_lossy(&server.sendmail(None, &["-bp"], b"").stdout).contains("deferred")
    });
    let out = server.sendmail(None, &["-bp"], b"");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("alice@example.com: deferred, 1 attempt"),
        "{listing}{}",
        stderr(&out)
    );
    std::fs::remove_file(server.dir.path().join("mail")).unwrap();
    let out = server.sendmail(None, &["-q"], b"");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(server.wait_for_delivery("alice@example.com", 1).len(), 1);
}

#[test]
fn too_many_recipients_or_a_message_over_the_hourly_limit_is_refused_for_good() {
    let server = Server::start_with("[limits]\nmax_recipients = 2\nuid_recipients_per_hour = 3\n");
    let out = server.sendmail(
        None,
        &[
            "alice@example.com",
            "bob@example.com",
            "postmaster@example.com",
        ],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 77, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at most 2 per message"),
        "{}",
        stderr(&out)
    );
    let out = server.sendmail(
        None,
        &["alice@example.com", "bob@example.com"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    // Two more would exceed the hour's 3: temporary. But no single message may ever
    // carry more than the hourly limit: that is permanent.
    let out = server.sendmail(
        None,
        &["alice@example.com", "bob@example.com"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 75, "{}", stderr(&out));
    let wide = Server::start_with("[limits]\nuid_recipients_per_hour = 1\n");
    let out = wide.sendmail(
        None,
        &["alice@example.com", "bob@example.com"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(exit_code(&out), 77, "{}", stderr(&out));
}

/// One of this host's own addresses, not loopback (the client binds it as its source).
fn host_address() -> Option<std::net::IpAddr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|i| {
            i.address?
                .as_sockaddr_in()
                .map(|a| std::net::IpAddr::V4(a.ip()))
        })
        .find(|ip| !ip.is_loopback())
}

/// A client that binds the host's own (non-loopback) address is still from this host:
/// attributed to its uid and counted against its limit, like a loopback client.
#[test]
fn a_client_from_the_hosts_own_address_is_attributed_too() {
    let Some(uid) = test_user(TEST_USER) else {
        return;
    };
    let Some(source) = host_address() else {
        common::skip_or_fail(
            "a_client_from_the_hosts_own_address_is_attributed_too",
            "this host has no address but loopback (.ci/run gives it one)",
        );
        return;
    };
    let server = Server::start_with("[limits]\nuid_messages_per_hour = 1\n");
    let script = format!(
        "import smtplib\nfor i in range(2):\n    s = smtplib.SMTP('127.0.0.1', {}, source_address=('{source}', 0))\n    try:\n        s.sendmail('someone@remote.test', ['alice@example.com'], 'Subject: own address\\r\\n\\r\\nx\\r\\n')\n        print('sent')\n    except smtplib.SMTPException as e:\n        print('refused', e)\n    s.quit()\n",
        server.addr("mx").port()
    );
    let out = common::python_as(TEST_USER, &script);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("sent\nrefused"),
        "the second message must hit the uid limit: {printed}{}",
        stderr(&out)
    );
    let line = server.wait_for_log("event=accepted").unwrap();
    assert_eq!(field(&line, "client"), Some(source.to_string()), "{line}");
    assert_eq!(field(&line, "uid"), Some(uid.to_string()), "{line}");
}
