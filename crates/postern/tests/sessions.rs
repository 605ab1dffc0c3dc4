//! Sessions end: a client dripping bytes cannot hold one forever, and a flood of idle
//! SMTP connections does not lock `sendmail` out.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;

/// Sends `bytes` one at a time, `gap` apart, until the server closes the connection;
/// returns what the server said, or `None` when it never closed.
fn drip(stream: &mut TcpStream, bytes: &[u8], gap: Duration) -> Option<String> {
    stream.set_read_timeout(Some(gap)).unwrap();
    let mut said = Vec::new();
    for &b in bytes {
        if stream.write_all(&[b]).is_err() {
            return Some(String::from_utf8_lossy(&said).into_owned());
        }
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&said).into_owned()),
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(String::from_utf8_lossy(&said).into_owned()),
        }
    }
    None
}

fn connect_after_greeting(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr("mx")).unwrap();
    let mut greeting = [0u8; 512];
    let n = stream.read(&mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220"));
    stream
}

#[test]
fn a_command_dripped_a_byte_at_a_time_still_times_out() {
    let server = Server::start_with("[limits]\ncommand_timeout = 2\n");
    let mut stream = connect_after_greeting(&server);
    // 40 bytes, 300 ms apart: 12 s, far past the 2 s a command may take. Each byte
    // arrives well within 2 s of the one before.
    let line = [b"NOOP ".as_slice(), &[b'x'; 33], b"\r\n"].concat();
    let said = drip(&mut stream, &line, Duration::from_millis(300))
        .expect("the server must close a session whose command never completes in time");
    assert!(said.contains("421 4.4.2"), "{said:?}");
}

#[test]
fn data_dripped_below_the_minimum_rate_times_out() {
    let server = Server::start_with("[limits]\ndata_timeout = 2\nmin_data_rate = 500\n");
    let mut stream = common::raw_data_stream(&server, "someone@remote.test", "alice@example.com");
    let said = drip(&mut stream, &[b'x'; 40], Duration::from_millis(300))
        .expect("the server must close a DATA transfer far below the minimum rate");
    assert!(said.contains("421 4.4.2"), "{said:?}");
    assert!(server.delivered("alice@example.com").is_empty());
}

#[test]
fn idle_smtp_connections_do_not_lock_sendmail_out() {
    let server = Server::start_with("[limits]\nmax_connections = 3\n");
    let idle: Vec<TcpStream> = (0..3).map(|_| connect_after_greeting(&server)).collect();
    // The SMTP listeners are full…
    let mut turned_away = TcpStream::connect(server.addr("mx")).unwrap();
    let mut reply = String::new();
    turned_away.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("421"), "{reply:?}");
    // …and sendmail still gets through.
    let out = server.sendmail(None, &["alice@example.com"], b"Subject: cron\n\nx\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.wait_for_delivery("alice@example.com", 1).len(), 1);
    drop(idle);
}
