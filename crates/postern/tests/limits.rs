//! Connection limits and hostile input at scale: the server refuses cleanly, stays
//! within its memory, and keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{PASSWORD, PlainClient, Server, field, test_user};

#[test]
fn one_client_cannot_take_every_connection() {
    let server = Server::start_with("[limits]\nmax_connections_per_client = 3\n");
    let held: Vec<PlainClient> = (0..3)
        .map(|_| PlainClient::connect(server.addr("mx")))
        .collect();
    let mut extra = TcpStream::connect(server.addr("mx")).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    let _ = extra.read_to_string(&mut reply);
    assert!(
        reply.starts_with("421 4.7.0 Too many connections"),
        "{reply:?}"
    );
    let line = server
        .wait_for_log("reason=too_many_connections_from_client")
        .unwrap();
    assert_eq!(
        field(&line, "key"),
        Some(format!("uid:{}", common::my_uid())),
        "on loopback the client is the Unix user"
    );

    // Another Unix user on the same 127.0.0.1 is a different client.
    if test_user("posterntest").is_some() {
        let script = format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {}))\nprint(s.recv(100).decode().strip())\n",
            server.addr("mx").port()
        );
        let out = common::python_as("posterntest", &script);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("220 "),
            "{out:?}"
        );
    }
    drop(held);
    assert!(common::wait_until(|| {
        let mut c = TcpStream::connect(server.addr("mx")).unwrap();
        let mut buf = [0u8; 3];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut buf).is_ok() && &buf == b"220"
    }));
}

#[test]
fn two_thousand_idle_connections_stay_under_64_mib() {
    // The test process and the server (which inherits the limit) need the descriptors.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let want = 8192.min(hard);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard).unwrap();
    if want < 4200 {
        common::skip_or_fail(
            "two_thousand_idle_connections_stay_under_64_mib",
            &format!("the descriptor limit ({hard}) is too low for 2,000 connections"),
        );
        return;
    }
    let server =
        Server::start_with("[limits]\nmax_connections = 5000\nmax_connections_per_client = 5000\n");
    let before = server.rss_kib();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut c = TcpStream::connect(server.addr("mx")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greeting = [0u8; 4];
        c.read_exact(&mut greeting).unwrap();
        idle.push(c);
    }
    let after = server.rss_kib();
    eprintln!("RSS with 2,000 idle connections: {after} KiB (was {before} KiB)");
    assert!(after < 64 * 1024, "RSS {after} KiB over the 64 MiB bound");
    // Everyone else is still served.
    let _served = common::PlainClient::mx(&server);
    drop(idle);
}

#[test]
fn nul_and_8_bit_bytes_in_commands_get_500() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("mx"));
    c.send_raw(b"EHLO a\x00b\r\n");
    assert!(
        c.read_reply().starts_with("50"),
        "NUL in a command is refused"
    );
    c.send_raw(b"MAIL FROM:<\xff\xfe@x.test>\r\n");
    assert!(c.read_reply().starts_with("500"));
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@remote.test>", "250");
}

#[test]
fn absurd_size_values_are_refused() {
    let server = Server::start();
    let mut c = common::PlainClient::mx(&server);
    c.cmd(
        "MAIL FROM:<a@remote.test> SIZE=99999999999999999999999999",
        "501",
    );
    c.cmd("MAIL FROM:<a@remote.test> SIZE=-1", "501");
    c.cmd(
        "MAIL FROM:<a@remote.test> SIZE=18446744073709551615",
        "552 5.3.4",
    );
    c.cmd("MAIL FROM:<a@remote.test> SIZE=100", "250");
}

#[test]
fn auth_with_huge_base64_is_refused_and_the_session_goes_on() {
    let server = Server::start();
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    let huge = "QUFB".repeat(5000);
    c.cmd(&format!("AUTH PLAIN {huge}"), "500 5.5.2 Line too long");
    c.cmd("AUTH PLAIN", "334");
    c.cmd(&huge, "500 5.5.2");
    c.login("alice@example.com", PASSWORD);
}

#[test]
fn ten_thousand_rcpts_are_answered_and_bounded() {
    let server = Server::start();
    let stream = TcpStream::connect(server.addr("mx")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let reader_stream = stream;
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut r = reader_stream;
        let _ = r.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    let mut batch = String::from("EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n");
    for i in 0..10_000 {
        batch.push_str(&format!("RCPT TO:<user{}@example.com>\r\n", i % 2));
    }
    batch.push_str("QUIT\r\n");
    writer.write_all(batch.as_bytes()).unwrap();
    let replies = reader.join().unwrap();
    assert_eq!(
        replies.matches("\r\n250 2.1.5").count() + replies.starts_with("250 2.1.5") as usize,
        0,
        "user0/1 do not exist"
    );
    let refused = replies.matches("550 5.1.1").count();
    let full = replies.matches("452 4.5.3").count();
    assert_eq!(refused + full, 10_000, "every RCPT got an answer");
    assert!(
        replies.ends_with("221 2.0.0 mail.example.com closing connection\r\n"),
        "the session ended normally"
    );
}
