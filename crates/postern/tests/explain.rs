//! `postern explain` agrees with what the running server answers, for a table of
//! cases: the same policy code decides both.

mod common;

use common::{PASSWORD, PlainClient, Server};

struct Case {
    listener: &'static str,
    auth: Option<&'static str>,
    from: &'static str,
    rcpt: &'static str,
    /// The reply explain and the server must both give, at MAIL or at RCPT.
    expected: &'static str,
}

const CASES: &[Case] = &[
    Case {
        listener: "mx",
        auth: None,
        from: "x@remote.test",
        rcpt: "alice@example.com",
        expected: "250 2.1.5",
    },
    Case {
        listener: "mx",
        auth: None,
        from: "x@remote.test",
        rcpt: "victim@remote.test",
        expected: "550 5.7.1 Relaying denied",
    },
    Case {
        listener: "mx",
        auth: None,
        from: "x@remote.test",
        rcpt: "nobody@example.com",
        expected: "550 5.1.1",
    },
    Case {
        listener: "mx",
        auth: None,
        from: "x@remote.test",
        rcpt: "victim%remote.test@example.com",
        expected: "550 5.7.1",
    },
    Case {
        listener: "mx",
        auth: Some("alice@example.com"),
        from: "alice@example.com",
        rcpt: "victim@remote.test",
        expected: "250 2.1.5",
    },
    Case {
        listener: "submission",
        auth: None,
        from: "alice@example.com",
        rcpt: "bob@example.com",
        expected: "530 5.7.0",
    },
    Case {
        listener: "submission",
        auth: Some("alice@example.com"),
        from: "bob@example.com",
        rcpt: "x@remote.test",
        expected: "553 5.7.1",
    },
    Case {
        listener: "submission",
        auth: Some("alice@example.com"),
        from: "alice@example.com",
        rcpt: "x@remote.test",
        expected: "250 2.1.5",
    },
    Case {
        listener: "submissions",
        auth: Some("alice@example.com"),
        from: "<>",
        rcpt: "nobody@example.com",
        expected: "550 5.1.1",
    },
];

/// Runs `postern explain` and returns (the decisive reply line, exit code).
fn explain(server: &Server, case: &Case) -> (String, i32) {
    let mut args = vec![
        "explain",
        "--listener",
        case.listener,
        "--from",
        case.from,
        "--rcpt",
        case.rcpt,
        "--ip",
        "127.0.0.1",
    ];
    if let Some(login) = case.auth {
        args.extend(["--auth", login]);
    }
    let out = server.cli(&args, None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let decisive = text
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(_, reply)| reply.to_string()))
        .find(|reply| !reply.starts_with('2'))
        .or_else(|| {
            text.lines()
                .rev()
                .find_map(|l| l.split_once(" -> ").map(|(_, r)| r.to_string()))
        })
        .unwrap_or_else(|| {
            panic!(
                "no reply in explain output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (decisive, out.status.code().unwrap_or(-1))
}

/// The same transaction against the server; returns the first refusal, or the RCPT reply.
fn ask_server(server: &Server, case: &Case) -> String {
    let mut replies = Vec::new();
    let mut run = |c: &mut dyn FnMut(&str) -> String| {
        replies.push(c(&format!(
            "MAIL FROM:<{}>",
            case.from.trim_matches(['<', '>'])
        )));
        if replies[0].starts_with('2') {
            replies.push(c(&format!("RCPT TO:<{}>", case.rcpt)));
        }
    };
    match (case.listener, case.auth) {
        ("submissions", Some(login)) => {
            let mut c = common::TlsClient::connect_tls(server.addr("submissions"));
            c.cmd("EHLO client.test", "250");
            c.login(login, PASSWORD);
            run(&mut |line| c.cmd(line, ""));
        }
        (listener, Some(login)) => {
            let mut c = PlainClient::connect(server.addr(listener)).starttls();
            c.login(login, PASSWORD);
            run(&mut |line| c.cmd(line, ""));
        }
        (listener, None) => {
            let mut c = PlainClient::connect(server.addr(listener));
            c.cmd("EHLO client.test", "250");
            run(&mut |line| c.cmd(line, ""));
        }
    }
    replies
        .into_iter()
        .find(|r| !r.starts_with('2'))
        .unwrap_or_else(|| "250 2.1.5 Recipient ok".into())
}

#[test]
fn explain_agrees_with_the_server_for_every_case() {
    let server = Server::start();
    for case in CASES {
        let (explained, code) = explain(&server, case);
        let answered = ask_server(&server, case);
        let label = format!(
            "{} auth={:?} {} -> {}",
            case.listener, case.auth, case.from, case.rcpt
        );
        assert!(
            explained.starts_with(case.expected),
            "{label}: explain said {explained:?}"
        );
        assert!(
            answered.starts_with(case.expected),
            "{label}: server said {answered:?}"
        );
        assert_eq!(explained.trim_end(), answered.trim_end(), "{label}");
        assert_eq!(
            code,
            if case.expected.starts_with('2') { 0 } else { 1 },
            "{label}: exit code"
        );
    }
}

#[test]
fn explain_usage_errors_exit_2() {
    let server = Server::start();
    let out = server.cli(
        &[
            "explain",
            "--listener",
            "nope",
            "--from",
            "a@b.test",
            "--rcpt",
            "c@d.test",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no listener named"));
    let out = server.cli(&["explain", "--listener", "mx", "--from", "a@b.test"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing option is a usage error"
    );
    let out = server.cli(
        &[
            "explain",
            "--listener",
            "mx",
            "--from",
            "a@b.test",
            "--rcpt",
            "bad@@x",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn explain_local_submission_by_uid() {
    let server = Server::start();
    let out = server.cli(
        &[
            "explain",
            "--listener",
            "local",
            "--uid",
            "0",
            "--from",
            "",
            "--rcpt",
            "someone@remote.test",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("local submission (sendmail) by uid 0 (root)"),
        "{text}"
    );
}

/// Intake's DKIM rule, as explain shows it: a login is signed for its own domain, a
/// local user only for the domains of the mailboxes its uid owns.
#[test]
fn explain_says_whether_intake_would_sign() {
    let server = Server::start();
    server.add_dkim_key("example.com");
    let dkim_line = |args: &[&str]| {
        let mut all = vec![
            "explain",
            "--rcpt",
            "bob@example.com",
            "--from",
            "alice@example.com",
        ];
        all.extend_from_slice(args);
        let out = server.cli(&all, None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("dkim:"))
            .unwrap_or_else(|| panic!("no dkim: line in\n{text}"))
            .to_string()
    };
    let login = dkim_line(&["--listener", "submission", "--auth", "alice@example.com"]);
    assert!(login.contains("signed with the keys"), "{login}");
    // uid 1 owns no mailbox: its mail with From: at example.com goes unsigned.
    let local = dkim_line(&["--listener", "local", "--uid", "1"]);
    assert!(
        local.contains("not signed") && local.contains("example.com"),
        "{local}"
    );
}
