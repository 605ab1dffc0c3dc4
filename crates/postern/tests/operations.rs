//! Operating a running server: SIGHUP reloads, `postern status`.

mod common;

use common::{PASSWORD, PlainClient, Server, field, plain};

fn reload_and_wait(server: &Server, event: &str) -> String {
    let before = server
        .log_lines()
        .iter()
        .filter(|l| l.contains(event))
        .count();
    server.signal("HUP");
    assert!(
        common::wait_until(|| server
            .log_lines()
            .iter()
            .filter(|l| l.contains(event))
            .count()
            > before),
        "no {event} after SIGHUP; log:\n{}",
        server.log_text()
    );
    server
        .log_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains(event))
        .unwrap_or_default()
}

#[test]
fn reload_with_a_changed_password_keeps_open_sessions() {
    let server = Server::start();
    let mut open = common::TlsClient::submission(&server, "alice@example.com");

    let out = server.cli(
        &["user", "passwd", "alice@example.com", "--password-stdin"],
        Some("n3w-secret"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reload_and_wait(&server, "event=reloaded");

    let mut fresh = PlainClient::connect(server.addr("submission")).starttls();
    let old = plain(None, "alice@example.com", PASSWORD);
    fresh.cmd(&format!("AUTH PLAIN {old}"), "535 5.7.8");
    fresh.login("alice@example.com", "n3w-secret");

    // The session that logged in before the reload is still logged in.
    open.begin("alice@example.com", &["bob@example.com"]);
    open.cmd("Subject: still here\r\n\r\nx\r\n.", "250");
    assert_eq!(server.wait_for_delivery("bob@example.com", 1).len(), 1);
}

#[test]
fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let server = Server::start();
    let path = server.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\nthis is not toml =\n")).unwrap();
    let line = reload_and_wait(&server, "event=reload_failed");
    assert!(
        field(&line, "error").unwrap().contains("postern.toml:"),
        "{line}"
    );

    let mut c = common::PlainClient::mx(&server);
    c.cmd("MAIL FROM:<x@remote.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    std::fs::write(&path, good).unwrap();
}

#[test]
fn reloaded_settings_apply_to_new_sessions_only() {
    let server = Server::start_with("[limits]\nmax_recipients = 2\n");
    let mut before = common::PlainClient::mx(&server);

    let path = server.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("max_recipients = 2", "max_recipients = 1");
    std::fs::write(&path, text).unwrap();
    reload_and_wait(&server, "event=reloaded");

    let mut after = common::PlainClient::mx(&server);
    after.cmd("MAIL FROM:<x@remote.test>", "250");
    after.cmd("RCPT TO:<alice@example.com>", "250");
    after.cmd("RCPT TO:<bob@example.com>", "452 4.5.3");

    before.cmd("MAIL FROM:<x@remote.test>", "250");
    before.cmd("RCPT TO:<alice@example.com>", "250");
    before.cmd("RCPT TO:<bob@example.com>", "250");
}

#[test]
fn a_listener_change_says_it_needs_a_restart() {
    let server = Server::start();
    let path = server.config_path();
    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen("name = \"mx\"", "name = \"inbound\"", 1);
    std::fs::write(&path, text).unwrap();
    let line = reload_and_wait(&server, "event=reload_needs_restart");
    assert_eq!(field(&line, "key").as_deref(), Some("listener"));
}

#[test]
fn status_reports_a_running_server_and_a_stopped_one() {
    let mut server = Server::start();
    let _open = PlainClient::connect(server.addr("mx"));
    assert!(common::wait_until(|| {
        String::from_utf8_lossy(&server.cli(&["status"], None).stdout).contains("connections: 1")
    }));
    let out = server.cli(&["status"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("postern is running (pid "), "{text}");
    assert!(text.contains("queue: 0 messages"), "{text}");
    server.terminate();
    let out = server.cli(&["status"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("postern is not running"));
}

#[test]
fn systemd_is_told_when_the_server_is_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut server = Server::start_setup(common::Setup {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Default::default()
    });
    let next = || {
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    // READY comes after the listeners: a client can connect at once.
    PlainClient::connect(server.addr("mx"));
    server.signal("HUP");
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    server.terminate();
    assert_eq!(next(), "STOPPING=1");
}

#[test]
fn maildir_files_belong_to_the_mail_user() {
    use std::os::unix::fs::MetadataExt as _;
    let Some(uid) = common::test_user("posterntest") else {
        return;
    };
    let server = Server::start_setup(common::Setup {
        delivery: "owner = \"posterntest\"".into(),
        ..Default::default()
    });
    // bob's passwd-file line names its own uid and gid, like Dovecot's userdb fields.
    let passwd = server.dir.path().join("passwd");
    let text: String = std::fs::read_to_string(&passwd)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("bob@") {
                format!("{l}:4242:4343::::\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&passwd, text).unwrap();
    for rcpt in ["alice@example.com", "bob@example.com"] {
        let mut c = common::PlainClient::mx(&server);
        c.cmd("MAIL FROM:<x@remote.test>", "250");
        c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
        c.cmd("DATA", "354");
        c.cmd("Subject: owned\r\n\r\nx\r\n.", "250");
        server.wait_for_delivery(rcpt, 1);
    }
    let owner_of = |rcpt: &str| {
        let new = server.maildir(rcpt).join("new");
        let file = std::fs::read_dir(&new)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        let meta = std::fs::metadata(file).unwrap();
        (
            meta.uid(),
            std::fs::metadata(server.maildir(rcpt)).unwrap().uid(),
        )
    };
    assert_eq!(owner_of("alice@example.com"), (uid, uid), "delivery.owner");
    assert_eq!(
        owner_of("bob@example.com"),
        (4242, 4242),
        "the passwd-file's uid wins"
    );
}
