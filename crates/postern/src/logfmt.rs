//! Log lines in logfmt on stderr: `ts=… level=… event=… key=value …`, one event a line.
//!
//! fail2ban filters and the tests parse these lines (CONTRACT.md "Log lines"), so the
//! format is fixed here, in one place: values with spaces, quotes or `=` are quoted,
//! and newlines are escaped so that one event is always one line.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the logfmt subscriber on stderr. `POSTERN_LOG=debug` shows more.
pub fn init() {
    let level = match std::env::var("POSTERN_LOG").as_deref() {
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        Ok("warn") => Level::WARN,
        _ => Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .event_format(Logfmt)
        .try_init();
}

pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let name = fields.event.as_deref().unwrap_or("log");
        write!(writer, "ts={ts} level={level} event={}", quote(name))?;
        for (key, value) in &fields.pairs {
            write!(writer, " {key}={}", quote(value))?;
        }
        if let Some(msg) = &fields.message {
            write!(writer, " msg={}", quote(msg))?;
        }
        writeln!(writer)
    }
}

#[derive(Default)]
struct Fields {
    event: Option<String>,
    message: Option<String>,
    pairs: Vec<(&'static str, String)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "event" => self.event = Some(value),
            "message" => self.message = Some(value),
            name => self.pairs.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// Quotes a value when logfmt needs it; an empty value is `""`.
pub fn quote(value: &str) -> String {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if !needs_quotes {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn plain_values_stay_bare() {
        assert_eq!(quote("127.0.0.1"), "127.0.0.1");
        assert_eq!(quote("user@example.com"), "user@example.com");
    }

    #[test]
    fn spaces_quotes_and_newlines_are_quoted_and_escaped() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quote("two\nlines"), "\"two\\nlines\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("k=v"), "\"k=v\"");
    }
}
