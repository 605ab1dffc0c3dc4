//! The accept loop under descriptor exhaustion: it backs off instead of spinning, and
//! serves again once descriptors are free.

mod common;

use std::net::TcpStream;
use std::process::Command;

use common::{PlainClient, Server};

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sets the soft limit only: lowering the hard one could not be undone without
/// CAP_SYS_RESOURCE.
fn set_open_files_limit(pid: u32, limit: &str) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn accept_failures(server: &Server) -> Vec<String> {
    server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("event=accept_failed"))
        .collect()
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    if !common::available(
        "out_of_descriptors_the_accept_loop_backs_off_and_recovers",
        &[("prlimit", common::find_program("prlimit"))],
    ) {
        return;
    }
    let server = Server::start();
    let pid = server.pid();
    let addr = server.addr("mx");
    // A few descriptors to spare, then none.
    set_open_files_limit(pid, &(open_descriptors(pid) + 4).to_string());
    let mut held = Vec::new();
    for _ in 0..16 {
        if let Ok(stream) = TcpStream::connect(addr) {
            held.push(stream);
        }
    }
    // The waits double while the process is out of descriptors: 10 ms up to 1 s.
    assert!(
        common::wait_until(|| accept_failures(&server)
            .iter()
            .any(|l| l.contains("retry_ms=1000"))),
        "the accept loop should back off up to 1 s; it logged:\n{}",
        accept_failures(&server).join("\n")
    );
    let failures = accept_failures(&server);
    assert!(
        failures
            .iter()
            .any(|l| l.contains("Too many open files") || l.contains("os error 24")),
        "{failures:?}"
    );
    // 10, 20, 40, ... 640 ms, then 1 s (a connection accepted in between starts again at
    // 10 ms): a few dozen lines at most. A loop that retried at once would have logged
    // thousands by now.
    assert!(
        failures.len() <= 40,
        "{} accept failures logged before the wait reached 1 s: the loop spins",
        failures.len()
    );
    drop(held);
    let hard = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4).map(str::to_string)
        })
        .expect("the hard limit in /proc/PID/limits");
    set_open_files_limit(pid, &hard);
    let mut c = PlainClient::connect(addr);
    c.cmd("EHLO client.test", "250");
    c.cmd("QUIT", "221");
}
