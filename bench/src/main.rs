//! `postern-bench`: an SMTP load generator.
//!
//! `--connections` workers each hold one SMTP session and send messages over it, one at a
//! time, `--messages-per-connection` before QUIT and a new session, until `--total`
//! messages have been attempted or `--duration` has passed. Every reply is checked; a
//! failure counts one error (by reply code) and closes that session, and the worker opens
//! a new one. At the end, one JSON line on stdout summarizes the run; the exit status is 1
//! if any error occurred, 2 on a usage error.

mod idle;
mod sink;
mod smtp;
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Parser, ValueEnum};
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::smtp::{Client, Error};
use crate::stats::{Stats, percentile};

/// At most this many error messages are printed to stderr (all are counted).
const PRINTED_ERRORS: usize = 10;
/// Pause after a failed connection attempt, so a refused port does not spin a core.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
#[command(name = "postern-bench", version, about = "An SMTP load generator")]
struct Options {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:2525")]
    addr: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Messages sent over one connection before QUIT and a new connection.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    messages_per_connection: u64,
    /// Messages to attempt in all (default: connections × messages per connection).
    #[arg(long, conflicts_with = "duration")]
    total: Option<u64>,
    /// Send for this many seconds instead of a number of messages.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Message size in bytes, headers included.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    recipients: u64,
    /// The recipients' domain.
    #[arg(long, default_value = "example.com")]
    rcpt_domain: String,
    /// The recipients' local part (default: the login's local part, else "bench"); `{n}`
    /// in it becomes the recipient's number, 1 to --recipients.
    #[arg(long)]
    rcpt_user: Option<String>,
    /// The envelope sender (default: the login, else bench@ the recipients' domain).
    #[arg(long)]
    from: Option<String>,
    /// No TLS, STARTTLS (required), or TLS from the first byte.
    #[arg(long, value_enum, default_value_t = TlsMode::None)]
    tls: TlsMode,
    /// Log in with AUTH PLAIN; the password may contain ':'.
    #[arg(long, value_name = "USER:PASSWORD", value_parser = parse_auth)]
    auth: Option<(String, String)>,
    /// Send MAIL, RCPT and DATA in one write when the server offers PIPELINING.
    #[arg(long)]
    pipelining: bool,
    /// The name given in EHLO.
    #[arg(long, default_value = "postern-bench.localhost")]
    helo: String,
    /// Seconds to wait for any one reply, connection or handshake.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Runtime threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Instead of sending: be an SMTP sink on ADDR that accepts every message and
    /// discards it, printing the counts as JSON lines when they change; runs until killed.
    #[arg(long, value_name = "ADDR")]
    sink: Option<SocketAddr>,
    /// Instead of sending: open N sessions and hold them idle, timing new clients
    /// meanwhile (see --probes, --hold); prints one JSON line.
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// With --idle: new clients to time while the sessions are held.
    #[arg(long, default_value_t = 50)]
    probes: usize,
    /// With --idle: seconds to keep holding the sessions after the probes.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    hold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsMode {
    None,
    Starttls,
    Implicit,
}

fn parse_auth(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user.to_string(), password.to_string())),
        _ => Err("expected USER:PASSWORD".to_string()),
    }
}

/// Everything the workers share, fixed before the run.
struct Plan {
    addr: SocketAddr,
    tls: TlsMode,
    connector: Option<TlsConnector>,
    ehlo: String,
    /// `AUTH PLAIN <initial response>`.
    auth: Option<String>,
    pipelining: bool,
    per_connection: u64,
    /// `MAIL FROM:<…>\r\n`, the `RCPT TO:<…>\r\n` lines.
    mail: String,
    rcpts: Vec<String>,
    /// The headers after Message-ID.
    headers: String,
    /// The body, dot-stuffed (no line starts with '.'), then the `.` line.
    body: Vec<u8>,
    timeout: Duration,
}

/// When to stop: after a number of attempts, or at a deadline.
enum Work {
    Remaining(AtomicU64),
    Until(Instant),
}

impl Work {
    /// Takes the right to attempt one more message.
    fn claim(&self) -> bool {
        match self {
            Work::Remaining(n) => n
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            Work::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

/// An open session and how many messages it has carried.
struct Session {
    client: Client,
    pipelining: bool,
    sent: u64,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let plan = match plan(&options) {
        Ok(plan) => Arc::new(plan),
        Err(message) => {
            eprintln!("postern-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let work = match options.duration {
        Some(secs) => match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Work::Until(Instant::now() + d),
            _ => {
                eprintln!("postern-bench: --duration must be a positive number of seconds");
                return ExitCode::from(2);
            }
        },
        None => Work::Remaining(AtomicU64::new(
            options
                .total
                .unwrap_or(options.connections * options.messages_per_connection),
        )),
    };
    let threads = options
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("postern-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };

    if let Some(addr) = options.sink {
        return match runtime.block_on(sink::run(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postern-bench: sink on {addr}: {e}");
                ExitCode::from(2)
            }
        };
    }

    if let Some(count) = options.idle {
        let hold = Duration::try_from_secs_f64(options.hold).unwrap_or_default();
        let summary = runtime.block_on(idle::run(plan, count, options.probes, hold));
        return match serde_json::to_string(&summary) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postern-bench: cannot write the summary: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let start = Instant::now();
    let stats = runtime.block_on(run(plan, Arc::new(work), options.connections));
    let elapsed = start.elapsed().as_secs_f64();
    let summary = summary(stats, elapsed);
    match serde_json::to_string(&summary) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("postern-bench: cannot write the summary: {e}");
            return ExitCode::FAILURE;
        }
    }
    if summary.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn plan(options: &Options) -> Result<Plan, String> {
    let timeout = Duration::try_from_secs_f64(options.timeout)
        .map_err(|_| "--timeout must be a positive number of seconds".to_string())?;
    let connector = match options.tls {
        TlsMode::None => None,
        TlsMode::Starttls | TlsMode::Implicit => Some(TlsConnector::from(
            postern::stream::opportunistic_client_config()
                .map_err(|e| format!("TLS configuration: {e}"))?,
        )),
    };
    let login = options.auth.as_ref().map(|(user, _)| user.as_str());
    let rcpt_user = options.rcpt_user.clone().unwrap_or_else(|| {
        login
            .and_then(|l| l.split('@').next())
            .unwrap_or("bench")
            .to_string()
    });
    let from = match (&options.from, login) {
        (Some(from), _) => from.clone(),
        (None, Some(login)) => login.to_string(),
        (None, None) => format!("bench@{}", options.rcpt_domain),
    };
    let rcpt_addrs: Vec<String> = (1..=options.recipients)
        .map(|n| {
            let user = rcpt_user.replace("{n}", &n.to_string());
            format!("{user}@{}", options.rcpt_domain)
        })
        .collect();
    let headers = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: postern-bench\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        to = rcpt_addrs.join(">, <"),
    );
    // Message-ID: <c.n@postern-bench> is about 30 bytes.
    let body_size = options.size.saturating_sub(headers.len() + 30);
    Ok(Plan {
        addr: options.addr,
        tls: options.tls,
        connector,
        ehlo: format!("EHLO {}", options.helo),
        auth: options.auth.as_ref().map(|(user, password)| {
            let response =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            format!("AUTH PLAIN {response}")
        }),
        pipelining: options.pipelining,
        per_connection: options.messages_per_connection,
        mail: format!("MAIL FROM:<{from}>\r\n"),
        rcpts: rcpt_addrs
            .iter()
            .map(|a| format!("RCPT TO:<{a}>\r\n"))
            .collect(),
        headers,
        body: body(body_size),
        timeout,
    })
}

/// `size` bytes of 78-byte text lines (76 characters and CRLF), then the `.` line.
fn body(size: usize) -> Vec<u8> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut body = Vec::with_capacity(size + 5);
    let mut i = 0;
    while body.len() < size {
        let line = (size - body.len()).clamp(3, 78);
        for _ in 0..line - 2 {
            body.push(CHARS[i % CHARS.len()]);
            i += 1;
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    body
}

async fn run(plan: Arc<Plan>, work: Arc<Work>, connections: u64) -> Stats {
    let printed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|n| tokio::spawn(worker(plan.clone(), work.clone(), printed.clone(), n)))
        .collect();
    let mut stats = Stats::default();
    for worker in workers {
        match worker.await {
            Ok(s) => stats.merge(s),
            Err(e) => {
                eprintln!("postern-bench: a worker failed: {e}");
                stats.error("worker".to_string());
            }
        }
    }
    stats
}

/// One connection's loop: open a session when there is none, send, count.
async fn worker(plan: Arc<Plan>, work: Arc<Work>, printed: Arc<AtomicUsize>, n: u64) -> Stats {
    let mut stats = Stats::default();
    let failed = |stats: &mut Stats, what: &str, e: Error| {
        if printed.fetch_add(1, Ordering::Relaxed) < PRINTED_ERRORS {
            eprintln!("postern-bench: connection {n}: {what}: {e}");
        }
        stats.error(e.key());
    };
    let mut session: Option<Session> = None;
    let mut seq = 0u64;
    while work.claim() {
        let s = match session.as_mut() {
            Some(s) => s,
            None => {
                let start = Instant::now();
                match connect(&plan).await {
                    Ok(s) => {
                        stats.connect_ms.push(millis(start.elapsed()));
                        session.insert(s)
                    }
                    Err(e) => {
                        failed(&mut stats, "session setup", e);
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                }
            }
        };
        seq += 1;
        let start = Instant::now();
        match send_message(s, &plan, &format!("{n}.{seq}")).await {
            Ok(()) => {
                stats.latency_ms.push(millis(start.elapsed()));
                stats.messages += 1;
                s.sent += 1;
                if s.sent >= plan.per_connection
                    && let Some(s) = session.take()
                    && let Err(e) = quit(s).await
                {
                    failed(&mut stats, "QUIT", e);
                }
            }
            Err(e) => {
                failed(&mut stats, "message", e);
                session = None;
            }
        }
    }
    if let Some(s) = session.take()
        && let Err(e) = quit(s).await
    {
        failed(&mut stats, "QUIT", e);
    }
    stats
}

/// TCP connect, greeting, EHLO, then STARTTLS and EHLO again, then AUTH, as configured.
async fn connect(plan: &Plan) -> Result<Session, Error> {
    let tcp = tokio::time::timeout(plan.timeout, TcpStream::connect(plan.addr))
        .await
        .map_err(|_| Error::Timeout)??;
    tcp.set_nodelay(true)?;
    let mut client = Client::new(Box::new(tcp), plan.timeout);
    let tls_name = || ServerName::IpAddress(plan.addr.ip().into());
    if let (TlsMode::Implicit, Some(connector)) = (plan.tls, &plan.connector) {
        client = client.into_tls(connector, tls_name()).await?;
    }
    client.expect(220).await?;
    let mut ehlo = client.command(&plan.ehlo, 250).await?;
    if let (TlsMode::Starttls, Some(connector)) = (plan.tls, &plan.connector) {
        if !ehlo.has_extension("STARTTLS") {
            return Err(Error::NotOffered("STARTTLS"));
        }
        client.command("STARTTLS", 220).await?;
        client = client.into_tls(connector, tls_name()).await?;
        ehlo = client.command(&plan.ehlo, 250).await?;
    }
    if let Some(auth) = &plan.auth {
        client.command(auth, 235).await?;
    }
    Ok(Session {
        client,
        pipelining: plan.pipelining && ehlo.has_extension("PIPELINING"),
        sent: 0,
    })
}

/// MAIL, RCPT × n, DATA, the message: one write for the commands when pipelining.
async fn send_message(session: &mut Session, plan: &Plan, id: &str) -> Result<(), Error> {
    let client = &mut session.client;
    if session.pipelining {
        let mut batch = String::with_capacity(plan.mail.len() + 40 * plan.rcpts.len() + 6);
        batch.push_str(&plan.mail);
        plan.rcpts.iter().for_each(|r| batch.push_str(r));
        batch.push_str("DATA\r\n");
        client.send(batch.as_bytes()).await?;
        client.expect(250).await?;
        for _ in &plan.rcpts {
            client.expect_any(&[250, 251]).await?;
        }
        client.expect(354).await?;
    } else {
        client.send(plan.mail.as_bytes()).await?;
        client.expect(250).await?;
        for rcpt in &plan.rcpts {
            client.send(rcpt.as_bytes()).await?;
            client.expect_any(&[250, 251]).await?;
        }
        client.command("DATA", 354).await?;
    }
    let message_id = format!("Message-ID: <{id}@postern-bench>\r\n");
    let mut data = Vec::with_capacity(message_id.len() + plan.headers.len() + plan.body.len());
    data.extend_from_slice(message_id.as_bytes());
    data.extend_from_slice(plan.headers.as_bytes());
    data.extend_from_slice(&plan.body);
    client.send(&data).await?;
    client.expect(250).await?;
    Ok(())
}

async fn quit(mut session: Session) -> Result<(), Error> {
    session.client.command("QUIT", 221).await.map(drop)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Three decimals are plenty for milliseconds and seconds.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The one JSON line printed at the end, its keys in this order.
#[derive(Debug, Serialize)]
struct Summary {
    messages: u64,
    errors: u64,
    errors_by_code: BTreeMap<String, u64>,
    connections: usize,
    elapsed_s: f64,
    msgs_per_s: f64,
    latency_ms: Latency,
    connect_ms: ConnectTime,
    client_cpu_s: Option<f64>,
}

/// MAIL FROM to the final 250, per accepted message.
#[derive(Debug, Serialize)]
struct Latency {
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
}

/// TCP connect through EHLO, STARTTLS and AUTH, per session.
#[derive(Debug, Serialize)]
struct ConnectTime {
    p50: Option<f64>,
    p99: Option<f64>,
}

fn summary(mut stats: Stats, elapsed_s: f64) -> Summary {
    stats::sort(&mut stats.latency_ms);
    stats::sort(&mut stats.connect_ms);
    let p = |samples: &[f64], p| percentile(samples, p).map(round);
    Summary {
        messages: stats.messages,
        errors: stats.error_count(),
        connections: stats.connect_ms.len(),
        elapsed_s: round(elapsed_s),
        msgs_per_s: round(stats.messages as f64 / elapsed_s.max(1e-9)),
        latency_ms: Latency {
            p50: p(&stats.latency_ms, 50.0),
            p90: p(&stats.latency_ms, 90.0),
            p99: p(&stats.latency_ms, 99.0),
            p999: p(&stats.latency_ms, 99.9),
        },
        connect_ms: ConnectTime {
            p50: p(&stats.connect_ms, 50.0),
            p99: p(&stats.connect_ms, 99.0),
        },
        client_cpu_s: cpu_seconds().map(round),
        errors_by_code: stats.errors,
    }
}

/// User plus system CPU time of this process so far.
fn cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike as _;
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Some(micros as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_size_and_no_leading_dots() {
        for size in [0, 1, 3, 78, 79, 4000] {
            let body = body(size);
            assert!(body.ends_with(b"\r\n.\r\n") || body == b".\r\n");
            assert!(
                body.len() - 3 >= size && body.len() - 3 <= size + 2,
                "{size}"
            );
            assert!(
                body.split(|&b| b == b'\n')
                    .filter(|l| l.starts_with(b"."))
                    .count()
                    == 1
            );
        }
    }

    #[test]
    fn auth_splits_at_the_first_colon() {
        assert_eq!(
            parse_auth("a@b:p:q"),
            Ok(("a@b".to_string(), "p:q".to_string()))
        );
        assert!(parse_auth("nopassword").is_err());
        assert!(parse_auth(":p").is_err());
    }

    #[test]
    fn options_are_consistent() {
        use clap::CommandFactory as _;
        Options::command().debug_assert();
    }
}
