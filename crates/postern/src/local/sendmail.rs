//! The `sendmail` command: Sendmail-compatible options, the message from standard
//! input, handed to the running server through the submission socket.
//!
//! There is no offline fallback and nothing setuid: when the server is not running,
//! `sendmail` says so and exits 69, and the caller (PHP, cron) keeps the message.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::request::{Request, Response, exit};

/// What the command line asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub request: Request,
    /// `-i` / `-oi`: a line with a single dot does not end the input.
    pub ignore_dots: bool,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Deliver,
    /// `-bp`: list the queue (`mailq`).
    ListQueue,
    /// `-q`: flush the queue.
    FlushQueue,
}

/// Parses Sendmail's options. Unknown options are a usage error (exit 64), so a typo
/// is never mistaken for a recipient.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if arg == "--" {
            push_recipients(&mut o.request.recipients, &args[i..]);
            break;
        }
        let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            push_recipients(
                &mut o.request.recipients,
                std::slice::from_ref(&args[i - 1]),
            );
            continue;
        };
        // Options that take a value, attached (-fuser@x) or separate (-f user@x).
        if let Some(key) = flag.chars().next().filter(|c| "fFBCNRVXr".contains(*c)) {
            let attached = &flag[key.len_utf8()..];
            let value = if attached.is_empty() {
                let v = args.get(i).ok_or(format!("option -{key} needs a value"))?;
                i += 1;
                v.clone()
            } else {
                attached.to_string()
            };
            match key {
                'f' | 'r' => o.request.sender = Some(strip_brackets(&value)),
                'F' => o.request.full_name = Some(value),
                // -B body type, -C config, -N dsn, -R ret, -V envid, -X log: accepted, ignored.
                _ => {}
            }
            continue;
        }
        match flag {
            "t" => o.request.extract_recipients = true,
            "i" | "oi" => o.ignore_dots = true,
            "bp" => o.mode = Mode::ListQueue,
            "bm" | "v" | "U" | "G" => {}
            f if f.starts_with('q') => o.mode = Mode::FlushQueue,
            // -oXXX: old Sendmail settings (-odb, -oem, -oQ…), ignored as Postfix does.
            f if f.starts_with('o') => {}
            f => return Err(format!("unknown option -{f}")),
        }
    }
    Ok(o)
}

/// Arguments may hold several comma-separated addresses.
fn push_recipients(out: &mut Vec<String>, args: &[String]) {
    for arg in args {
        out.extend(
            arg.split(',')
                .map(|a| strip_brackets(a.trim()))
                .filter(|a| !a.is_empty()),
        );
    }
}

fn strip_brackets(a: &str) -> String {
    let a = a.trim();
    a.strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(a)
        .to_string()
}

/// Reads the message. Without `-i`, a line holding only a dot ends it (Sendmail).
pub fn read_message(input: impl Read, ignore_dots: bool) -> std::io::Result<Vec<u8>> {
    let mut reader = BufReader::new(input);
    let mut message = Vec::new();
    if ignore_dots {
        reader.read_to_end(&mut message)?;
        return Ok(message);
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(message);
        }
        if line == b".\n" || line == b".\r\n" || line == b"." {
            return Ok(message);
        }
        message.extend_from_slice(&line);
    }
}

/// How long to wait for the server to store the message and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Hands the message to the server and returns its answer. Connection problems become
/// answers too (69: not running; 75: try again).
pub fn submit(socket: &Path, request: &Request, message: &[u8]) -> Response {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return Response::new(
                exit::UNAVAILABLE,
                format!(
                    "the postern server is not running or not reachable ({}: {e}); start it (postern serve, or systemctl start postern) and send again",
                    socket.display()
                ),
            );
        }
    };
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
    let sent = send_request(&mut stream, request, message);
    // Even when sending failed (the server refused early, e.g. a message too big), it
    // may have answered why: read that answer first.
    match read_response(&mut stream) {
        Some(response) => response,
        None => Response::new(
            exit::TEMPORARY,
            match sent {
                Err(e) => format!("the server closed the connection ({e}); try again later"),
                Ok(()) => "the server did not answer; try again later".to_string(),
            },
        ),
    }
}

fn send_request(stream: &mut UnixStream, request: &Request, message: &[u8]) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.write_all(message)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)
}

fn read_response(stream: &mut UnixStream) -> Option<Response> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str(line.trim_end()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn php_style_invocation() {
        let o = parse_args(&args(&["-t", "-i"])).unwrap();
        assert!(o.request.extract_recipients);
        assert!(o.ignore_dots);
        assert!(o.request.recipients.is_empty());
    }

    #[test]
    fn sender_name_and_recipients_attached_or_separate() {
        let o = parse_args(&args(&[
            "-oi",
            "-fme@example.com",
            "-F",
            "Web Site",
            "-odb",
            "a@example.com, b@example.com",
            "<c@example.com>",
        ]))
        .unwrap();
        assert_eq!(o.request.sender.as_deref(), Some("me@example.com"));
        assert_eq!(o.request.full_name.as_deref(), Some("Web Site"));
        assert_eq!(
            o.request.recipients,
            ["a@example.com", "b@example.com", "c@example.com"]
        );
        assert!(o.ignore_dots);
        let o = parse_args(&args(&["-f", "<>", "x@example.com"])).unwrap();
        assert_eq!(o.request.sender.as_deref(), Some(""));
    }

    #[test]
    fn queue_modes_and_unknown_options() {
        assert_eq!(parse_args(&args(&["-bp"])).unwrap().mode, Mode::ListQueue);
        assert_eq!(parse_args(&args(&["-q"])).unwrap().mode, Mode::FlushQueue);
        assert!(parse_args(&args(&["-Z"])).is_err());
        assert!(parse_args(&args(&["-f"])).is_err());
        let o = parse_args(&args(&["--", "-odd@example.com"])).unwrap();
        assert_eq!(o.request.recipients, ["-odd@example.com"]);
    }

    #[test]
    fn a_lone_dot_ends_input_unless_i() {
        let input = b"Subject: x\n\nbody\n.\nafter\n";
        assert_eq!(
            read_message(&input[..], false).unwrap(),
            b"Subject: x\n\nbody\n"
        );
        assert_eq!(read_message(&input[..], true).unwrap(), input);
        assert_eq!(read_message(&b"a\n..\nb"[..], false).unwrap(), b"a\n..\nb");
    }

    #[test]
    fn no_server_is_exit_69_with_a_hint() {
        let r = submit(
            Path::new("/nonexistent/postern.sock"),
            &Request::default(),
            b"x",
        );
        assert_eq!(r.exit, exit::UNAVAILABLE);
        assert!(r.message.contains("not running"), "{}", r.message);
    }
}
