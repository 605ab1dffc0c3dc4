//! `postern queue list|show|flush|delete` (and `mailq`): look at the queue, and act on
//! it through the running server's control socket, so a delete never races a delivery.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Local};

use super::QueueAction;
use crate::config::Config;
use crate::control;
use crate::queue::{Envelope, Origin, QueueId, RecipientStatus, Spool, SpoolError};

pub fn run(explicit: Option<&Path>, action: QueueAction) -> anyhow::Result<()> {
    let config = Config::load(&Config::locate(explicit))?;
    match action {
        QueueAction::List => list(&config),
        QueueAction::Show { id } => show(&config, &parse_id(&id)?),
        QueueAction::Flush { id } => flush(&config, id.as_deref()),
        QueueAction::Delete { id } => delete(&config, &parse_id(&id)?),
    }
}

fn parse_id(text: &str) -> anyhow::Result<QueueId> {
    QueueId::parse(text).with_context(|| {
        format!("{text:?} is not a queue ID (18 hex digits, as `postern queue list` shows)")
    })
}

fn open_spool(config: &Config) -> anyhow::Result<Spool> {
    Spool::open(&config.data_dir).with_context(|| {
        format!(
            "cannot read the queue under {} (run as root or as the user postern runs as)",
            config.data_dir.display()
        )
    })
}

pub fn list(config: &Config) -> anyhow::Result<()> {
    let spool = open_spool(config)?;
    let mut envelopes = Vec::new();
    for id in spool.list()? {
        match spool.load(&id) {
            Ok(e) => envelopes.push(e),
            // Delivered and removed while we were listing.
            Err(SpoolError::NotFound { .. }) => {}
            Err(e) => eprintln!("postern: {}", terminal_safe(&e.to_string())),
        }
    }
    if envelopes.is_empty() {
        println!("Mail queue is empty");
        return Ok(());
    }
    let mut out = Vec::new();
    writeln!(
        out,
        "{:<18}  {:<19}  {:>9}  SENDER",
        "QUEUE ID", "ARRIVED", "SIZE"
    )?;
    let mut pending = 0;
    for e in &envelopes {
        write_summary(&mut out, e)?;
        pending += e
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
            .count();
    }
    let n = envelopes.len();
    writeln!(
        out,
        "-- {n} message{}, {pending} recipient{} pending",
        plural(n),
        plural(pending)
    )?;
    print_safely(&out)
}

/// Prints text that holds what clients and remote servers wrote (addresses, replies,
/// headers) with every control character escaped: an escape sequence in a bounce reply
/// must not reach the administrator's terminal.
fn print_safely(text: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(terminal_safe(&String::from_utf8_lossy(text)).as_bytes())?;
    Ok(())
}

/// `text` with control characters (but line feeds and tabs) written as `\xNN` or
/// `\u{NNNN}`.
pub fn terminal_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => safe.push(c),
            c if c.is_control() && (c as u32) < 0x100 => {
                safe.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => safe.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => safe.push(c),
        }
    }
    safe
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn time(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn sender(e: &Envelope) -> &str {
    if e.from.is_empty() {
        "<> (notification)"
    } else {
        &e.from
    }
}

fn write_summary(out: &mut impl Write, e: &Envelope) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<18}  {:<19}  {:>9}  {}",
        e.queue_id,
        time(e.received_at),
        e.size,
        sender(e)
    )?;
    for r in &e.recipients {
        let state = match r.status {
            RecipientStatus::Delivered => "delivered".to_string(),
            RecipientStatus::Bounced => "bounced".to_string(),
            RecipientStatus::Pending if r.attempts == 0 => "pending".to_string(),
            RecipientStatus::Pending => format!(
                "deferred, {} attempt{}, next {}",
                r.attempts,
                plural(r.attempts as usize),
                time(r.next_attempt)
            ),
        };
        write!(out, "{:<20}  {}: {state}", "", r.address)?;
        match &r.last_error {
            Some(err) => writeln!(out, " ({err})")?,
            None => writeln!(out)?,
        }
    }
    Ok(())
}

fn show(config: &Config, id: &QueueId) -> anyhow::Result<()> {
    let spool = open_spool(config)?;
    let e = spool.load(id)?;
    let mut out = Vec::new();
    writeln!(out, "Queue ID:  {}", e.queue_id)?;
    writeln!(out, "Arrived:   {}", time(e.received_at))?;
    writeln!(out, "Size:      {} bytes", e.size)?;
    writeln!(out, "Sender:    {}", sender(&e))?;
    let origin = match &e.origin {
        Origin::Smtp {
            client,
            listener,
            login,
        } => format!(
            "SMTP from {client} on listener {listener}, {}",
            login
                .as_deref()
                .map_or("not authenticated".to_string(), |l| format!("login {l}"))
        ),
        Origin::Local { uid, user } => format!("local submission by uid {uid} ({user})"),
        Origin::Notification { about } => format!("delivery status notification about {about}"),
    };
    writeln!(out, "Origin:    {origin}")?;
    writeln!(out, "Recipients:")?;
    for r in &e.recipients {
        writeln!(out, "  {}", r.address)?;
        writeln!(
            out,
            "    status:   {:?}, {} attempt{}",
            r.status,
            r.attempts,
            plural(r.attempts as usize)
        )?;
        if r.status == RecipientStatus::Pending && r.attempts > 0 {
            writeln!(out, "    next:     {}", time(r.next_attempt))?;
        }
        if let Some(err) = &r.last_error {
            writeln!(
                out,
                "    last:     {err}{}",
                r.last_relay
                    .as_deref()
                    .map(|h| format!(" (from {h})"))
                    .unwrap_or_default()
            )?;
        }
    }
    writeln!(out, "Headers:")?;
    let message = spool.read_message(id)?;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        writeln!(out, "  {}", String::from_utf8_lossy(line))?;
    }
    print_safely(&out)
}

/// What the control socket said, or that no server is listening.
pub enum ControlAnswer {
    Done(String),
    NotRunning,
}

pub fn control_command(config: &Config, line: &str) -> anyhow::Result<ControlAnswer> {
    let path = control::socket_path(&config.data_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        // Nothing listens there: the server is not running.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(ControlAnswer::NotRunning);
        }
        Err(e) => bail!(
            "cannot reach the server at {}: {e} (run as root or as the service user)",
            path.display()
        ),
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let answer = answer.trim();
    match answer.strip_prefix("ok") {
        Some(rest) => Ok(ControlAnswer::Done(rest.trim().to_string())),
        None => bail!("{}", answer.strip_prefix("error ").unwrap_or(answer)),
    }
}

pub fn flush(config: &Config, id: Option<&str>) -> anyhow::Result<()> {
    let line = match id {
        Some(id) => format!("flush {}", parse_id(id)?),
        None => "flush".to_string(),
    };
    match control_command(config, &line)? {
        ControlAnswer::Done(text) => println!("{}", terminal_safe(&text)),
        ControlAnswer::NotRunning => {
            bail!("the server is not running; queued mail is delivered when it starts")
        }
    }
    Ok(())
}

fn delete(config: &Config, id: &QueueId) -> anyhow::Result<()> {
    match control_command(config, &format!("delete {id}"))? {
        ControlAnswer::Done(text) => println!("{}", terminal_safe(&text)),
        // No server, so no delivery can race us: remove the files directly.
        ControlAnswer::NotRunning => {
            let spool = open_spool(config)?;
            spool.load(id)?;
            tokio::runtime::Builder::new_current_thread()
                .build()?
                .block_on(spool.remove(id))?;
            println!("deleted {id}");
        }
    }
    Ok(())
}
