//! Runs the real `postern-bench` binary against an in-process SMTP sink (tokio, on a
//! loopback port) that answers every command and writes nothing, and checks its summary.

use std::net::SocketAddr;
use std::process::Command;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_postern-bench");

/// How the sink answers RCPT TO.
#[derive(Clone, Copy)]
enum Rcpt {
    Accept,
    Refuse,
}

/// Starts the sink on `runtime`; returns its address.
fn sink(runtime: &tokio::runtime::Runtime, rcpt: Rcpt) -> SocketAddr {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = session(tcp, rcpt).await;
            });
        }
    });
    addr
}

async fn session(tcp: tokio::net::TcpStream, rcpt: Rcpt) -> std::io::Result<()> {
    let mut io = BufReader::new(tcp);
    io.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match (verb.as_str(), rcpt) {
            ("EHLO", _) => b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH PLAIN\r\n",
            ("AUTH", _) => b"235 2.7.0 ok\r\n",
            ("RCPT", Rcpt::Refuse) => b"550 5.1.1 no such user\r\n",
            ("MAIL" | "RCPT" | "RSET" | "NOOP", _) => b"250 2.0.0 ok\r\n",
            ("DATA", _) => {
                io.write_all(b"354 go ahead\r\n").await?;
                loop {
                    line.clear();
                    if io.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                b"250 2.0.0 queued\r\n"
            }
            ("QUIT", _) => {
                io.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"500 5.5.2 what?\r\n",
        };
        io.write_all(reply).await?;
    }
}

/// Runs the bench against `addr` with `args`; returns its exit success and summary.
fn bench(addr: SocketAddr, args: &[&str]) -> (bool, serde_json::Value) {
    let output = Command::new(BIN)
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .output()
        .expect("run postern-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let summary = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: stdout: {stdout}\nstderr: {stderr}"));
    (output.status.success(), summary)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn two_connections_of_five_messages() {
    let runtime = runtime();
    let addr = sink(&runtime, Rcpt::Accept);
    let (ok, summary) = bench(
        addr,
        &["--connections", "2", "--messages-per-connection", "5"],
    );
    assert!(ok, "{summary}");
    assert_eq!(summary["messages"], 10, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    // Workers share the message total, so a fast worker may open a further session
    // while the other is still busy: at least the two asked for, never one a message.
    let connections = summary["connections"].as_u64().unwrap_or(0);
    assert!((2..=5).contains(&connections), "{summary}");
    for key in ["p50", "p90", "p99", "p999"] {
        assert!(summary["latency_ms"][key].as_f64().is_some(), "{summary}");
    }
    assert!(summary["connect_ms"]["p99"].as_f64().is_some(), "{summary}");
    assert!(summary["client_cpu_s"].as_f64().is_some(), "{summary}");
}

#[test]
fn pipelining_auth_and_several_recipients() {
    let runtime = runtime();
    let addr = sink(&runtime, Rcpt::Accept);
    let (ok, summary) = bench(
        addr,
        &[
            "--connections",
            "3",
            "--messages-per-connection",
            "2",
            "--total",
            "7",
            "--recipients",
            "3",
            "--rcpt-user",
            "user{n}",
            "--auth",
            "alice@example.com:secret",
            "--pipelining",
            "--size",
            "10000",
        ],
    );
    assert!(ok, "{summary}");
    assert_eq!(summary["messages"], 7, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    // 7 messages, 2 per connection: at least 4 sessions.
    assert!(summary["connections"].as_u64() >= Some(4), "{summary}");
}

#[test]
fn refused_recipients_are_counted_by_code() {
    let runtime = runtime();
    let addr = sink(&runtime, Rcpt::Refuse);
    let (ok, summary) = bench(
        addr,
        &["--connections", "2", "--messages-per-connection", "3"],
    );
    assert!(!ok, "{summary}");
    assert_eq!(summary["messages"], 0, "{summary}");
    assert_eq!(summary["errors"], 6, "{summary}");
    assert_eq!(summary["errors_by_code"]["550"], 6, "{summary}");
    // Each refusal closes the session: a new one for every message.
    assert_eq!(summary["connections"], 6, "{summary}");
    assert!(summary["latency_ms"]["p50"].is_null(), "{summary}");
}
