//! `postern status`: is the server running, since when, connections now, queue size,
//! asked of the running server through its control socket.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Local, Utc};

use super::queue::{ControlAnswer, control_command};
use crate::config::Config;
use crate::control;

pub fn run(explicit: Option<&Path>) -> ExitCode {
    let config = match Config::load(&Config::locate(explicit)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(2);
        }
    };
    match control_command(&config, "status") {
        Ok(ControlAnswer::Done(fields)) => {
            print!("{}", describe(&fields, Utc::now()));
            ExitCode::SUCCESS
        }
        Ok(ControlAnswer::NotRunning) => {
            println!(
                "postern is not running (nothing answers on {})",
                control::socket_path(&config.data_dir).display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("postern: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Renders the server's `since=… pid=… connections=… queue=…` for people.
fn describe(fields: &str, now: DateTime<Utc>) -> String {
    let get = |key: &str| {
        fields
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("?")
    };
    let since = DateTime::parse_from_rfc3339(get("since")).ok();
    let started = since.map_or_else(
        || get("since").to_string(),
        |t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    );
    let uptime = since.map_or_else(String::new, |t| {
        let secs = (now - t.with_timezone(&Utc)).num_seconds().max(0);
        format!(" (up {}h {:02}m)", secs / 3600, secs % 3600 / 60)
    });
    format!(
        "postern is running (pid {}) since {started}{uptime}\nconnections: {}\nqueue: {} messages\n",
        get("pid"),
        get("connections"),
        get("queue"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_server_answer() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T03:04:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = describe(
            "since=2026-11-28T00:00:00Z pid=42 connections=3 queue=7",
            now,
        );
        assert!(text.contains("(pid 42)"), "{text}");
        assert!(text.contains("(up 3h 04m)"), "{text}");
        assert!(text.contains("connections: 3\nqueue: 7 messages"), "{text}");
    }
}
