//! Many large messages arriving at once do not take the server's memory with them: past
//! `limits.max_buffered_data`, a transfer is refused (`452 4.3.1`) and its buffer freed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};

use common::Server;

const CLIENTS: usize = 20;
/// Each client's message: 5 MB, never ended with the final dot.
const EACH: usize = 5 * 1024 * 1024;

/// Opens a transaction and sends `EACH` bytes of DATA without ending it. Returns the
/// connection, still open, and what the server said after the 354.
fn send_without_the_dot(server: &Server) -> (TcpStream, String) {
    let mut stream = common::raw_data_stream(server, "someone@remote.test", "alice@example.com");
    let line = [vec![b'x'; 998], b"\r\n".to_vec()].concat();
    let mut sent = 0;
    while sent < EACH {
        if stream.write_all(&line).is_err() {
            break; // refused and closed
        }
        sent += line.len();
    }
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        said.extend_from_slice(&buf[..n]);
    }
    (stream, String::from_utf8_lossy(&said).into_owned())
}

#[test]
fn concurrent_large_transfers_stay_within_the_buffer_budget() {
    let server = Server::start_with(&format!(
        "[limits]\nmax_buffered_data = {}\nmax_message_size = 26214400\n",
        8 * 1024 * 1024
    ));
    let server = Arc::new(server);
    let before = server.rss_kib();
    // All transfers stay open until the RSS is measured.
    let written = Arc::new(Barrier::new(CLIENTS + 1));
    let done = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (server, written, done) = (server.clone(), written.clone(), done.clone());
            std::thread::spawn(move || {
                let (open, said) = send_without_the_dot(&server);
                written.wait();
                done.wait();
                drop(open);
                said
            })
        })
        .collect();
    written.wait();
    let during = server.rss_kib();
    done.wait();
    let replies: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let refused = replies.iter().filter(|r| r.contains("452 4.3.1")).count();
    assert!(
        refused > 0,
        "{} MB at once with an 8 MiB budget: some transfers must be refused",
        (CLIENTS * EACH) >> 20
    );
    let grown_mib = during.saturating_sub(before) / 1024;
    // 8 MiB of budget, buffers that grow by doubling, and the clients' socket buffers:
    // far below the 100 MB that was sent.
    assert!(
        grown_mib < 48,
        "the server grew by {grown_mib} MiB while {} MB were in flight",
        (CLIENTS * EACH) >> 20
    );
    assert!(server.log_text().contains("reason=buffer_full"));
    // Once they are gone, mail flows again.
    let out = server.sendmail(None, &["alice@example.com"], b"Subject: after\n\nx\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
