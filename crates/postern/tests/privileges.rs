//! Started as root, `serve` binds, hands its data to the service user, and runs as that
//! user; the passwd-file stays root-only and is still re-read through the privileged
//! reader.

mod common;

use std::os::unix::fs::MetadataExt as _;

use common::{PASSWORD, PlainClient, Server, Setup, plain, test_user};

fn uid_of_process(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A server started as root that switches to `posterntest` once it has bound.
fn as_service_user() -> Server {
    let server = Server::start_setup(Setup {
        top: "user = \"posterntest\"".into(),
        maildir: Some("data/mail/%d/%n/Maildir".into()),
        ..Setup::default()
    });
    server
        .wait_for_log("event=privileges_dropped user=posterntest")
        .unwrap();
    server
}

#[test]
fn serve_runs_as_the_service_user_and_still_reads_a_root_only_passwd_file() {
    let Some(uid) = test_user("posterntest") else {
        return;
    };
    let server = as_service_user();
    assert_eq!(
        uid_of_process(server.pid()),
        uid,
        "the server runs as the service user"
    );
    let passwd = server.dir.path().join("passwd");
    assert_eq!(std::fs::metadata(&passwd).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&passwd).unwrap().uid(),
        0,
        "root-only passwd-file"
    );

    // Logins work, and a password changed by root afterwards is picked up.
    let mut c = common::TlsClient::submission(&server, "alice@example.com");
    let out = server.cli(
        &["user", "passwd", "alice@example.com", "--password-stdin"],
        Some("changed"),
    );
    assert!(out.status.success());
    let mut d = PlainClient::connect(server.addr("submission")).starttls();
    d.cmd(
        &format!("AUTH PLAIN {}", plain(None, "alice@example.com", PASSWORD)),
        "535",
    );
    d.login("alice@example.com", "changed");

    // Mail is queued and delivered as the service user.
    c.begin("alice@example.com", &["bob@example.com"]);
    c.cmd("Subject: unprivileged\r\n\r\nx\r\n.", "250");
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "log:\n{}", server.log_text());
    let new = server.maildir("bob@example.com").join("new");
    let file = std::fs::read_dir(new)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(std::fs::metadata(file).unwrap().uid(), uid);
    assert_eq!(
        std::fs::metadata(server.data_dir().join("queue"))
            .unwrap()
            .uid(),
        uid
    );
}

/// The process has exited (a zombie until reaped, or gone).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// As the packaged service user, SIGTERM stops the server (and its root passwd reader)
/// at once: systemd must not wait for its stop timeout and SIGKILL.
#[test]
fn sigterm_stops_a_server_that_dropped_its_privileges() {
    if test_user("posterntest").is_none() {
        return;
    }
    let mut server = as_service_user();
    // The reader has answered at least once (users were loaded through it).
    let c = common::TlsClient::submission(&server, "alice@example.com");
    drop(c);
    let pid = server.pid();
    server.signal("TERM");
    assert!(
        common::wait_until(|| has_exited(pid)),
        "still running after SIGTERM; log:\n{}",
        server.log_text()
    );
    assert!(server.wait_exit().success());
    assert!(server.wait_for_log("event=stopped").is_some());
}
