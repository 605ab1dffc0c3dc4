//! A tiny SMTP client: send commands, read one complete (possibly multi-line) reply,
//! check its code. Plain TCP and TLS look the same to it, and STARTTLS swaps the one for
//! the other. Every reply is parsed and checked; nothing the server sends can panic it.

use std::fmt;
use std::io;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;

/// The longest reply line accepted (RFC 5321 says 512 octets; be generous).
const MAX_LINE: u64 = 4096;
/// The most lines in one reply (an EHLO reply has a dozen).
const MAX_LINES: usize = 100;

/// A byte stream the client can run on: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A complete reply: its code and the text of each line (after `250-` / `250 `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether an EHLO reply advertises `keyword` (case-insensitive, first word of a line).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
    }
}

/// Why a session failed. [`Error::key`] is what the summary counts errors by.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Timeout,
    /// The server closed the connection where a reply was due.
    Closed,
    /// A line that is not `DDD`, `DDD-text` or `DDD text`, or a code change mid-reply.
    Malformed(String),
    /// A well-formed reply with a code other than the expected one.
    Unexpected(Reply),
    /// The server did not advertise an extension the options require.
    NotOffered(&'static str),
}

impl Error {
    /// The reply code (`"550"`), or the kind of failure (`"timeout"`, `"io"`, …).
    pub fn key(&self) -> String {
        match self {
            Error::Io(_) => "io".to_string(),
            Error::Timeout => "timeout".to_string(),
            Error::Closed => "closed".to_string(),
            Error::Malformed(_) => "malformed".to_string(),
            Error::Unexpected(reply) => reply.code.to_string(),
            Error::NotOffered(what) => format!("no-{}", what.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Timeout => f.write_str("timed out waiting for the server"),
            Error::Closed => f.write_str("connection closed by the server"),
            Error::Malformed(line) => write!(f, "malformed reply line {line:?}"),
            Error::Unexpected(reply) => write!(
                f,
                "unexpected reply {} {}",
                reply.code,
                reply.lines.last().map(String::as_str).unwrap_or("")
            ),
            Error::NotOffered(what) => write!(f, "the server does not offer {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

/// One line of a reply: its code, whether it is the last line, and its text.
pub fn parse_line(line: &[u8]) -> Result<(u16, bool, &str), Error> {
    let malformed = || Error::Malformed(String::from_utf8_lossy(line).into_owned());
    let line = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line);
    let (digits, rest) = line.split_at_checked(3).ok_or_else(malformed)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return Err(malformed());
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (last, text) = match rest.split_first() {
        None => (true, &[][..]),
        Some((b' ', text)) => (true, text),
        Some((b'-', text)) => (false, text),
        Some(_) => return Err(malformed()),
    };
    let text = std::str::from_utf8(text).map_err(|_| malformed())?;
    Ok((code, last, text))
}

/// An SMTP connection: a buffered stream and the per-reply timeout.
pub struct Client {
    io: BufReader<Box<dyn Io>>,
    timeout: Duration,
    line: Vec<u8>,
}

impl Client {
    pub fn new(io: Box<dyn Io>, timeout: Duration) -> Client {
        Client {
            io: BufReader::new(io),
            timeout,
            line: Vec::with_capacity(256),
        }
    }

    /// Reads one complete reply, however many lines it has.
    pub async fn read_reply(&mut self) -> Result<Reply, Error> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_reply_inner())
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, Error> {
        let mut reply = Reply {
            code: 0,
            lines: Vec::new(),
        };
        loop {
            self.line.clear();
            let n = (&mut self.io)
                .take(MAX_LINE)
                .read_until(b'\n', &mut self.line)
                .await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            if !self.line.ends_with(b"\n") || reply.lines.len() >= MAX_LINES {
                return Err(Error::Malformed(
                    String::from_utf8_lossy(&self.line).into_owned(),
                ));
            }
            let (code, last, text) = parse_line(&self.line)?;
            if !reply.lines.is_empty() && code != reply.code {
                return Err(Error::Malformed(
                    String::from_utf8_lossy(&self.line).into_owned(),
                ));
            }
            reply.code = code;
            reply.lines.push(text.to_string());
            if last {
                return Ok(reply);
            }
        }
    }

    /// Reads a reply and checks that its code is `code`.
    pub async fn expect(&mut self, code: u16) -> Result<Reply, Error> {
        self.expect_any(&[code]).await
    }

    /// Reads a reply and checks that its code is one of `codes`.
    pub async fn expect_any(&mut self, codes: &[u16]) -> Result<Reply, Error> {
        let reply = self.read_reply().await?;
        if codes.contains(&reply.code) {
            Ok(reply)
        } else {
            Err(Error::Unexpected(reply))
        }
    }

    /// Writes `data` as it is (commands must end in CRLF) and flushes.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        let timeout = self.timeout;
        let write = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(Error::Io)
    }

    /// Sends one command line (CRLF added) and expects `code`.
    pub async fn command(&mut self, line: &str, code: u16) -> Result<Reply, Error> {
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        self.send(&data).await?;
        self.expect(code).await
    }

    /// The TLS handshake on this connection (after `220` to STARTTLS, or right after
    /// connecting for implicit TLS).
    pub async fn into_tls(
        self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> Result<Client, Error> {
        if !self.io.buffer().is_empty() {
            // Anything buffered was sent in the clear before the handshake.
            return Err(Error::Malformed(
                "data after the STARTTLS reply".to_string(),
            ));
        }
        let timeout = self.timeout;
        let tls = tokio::time::timeout(timeout, connector.connect(name, self.io.into_inner()))
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(Client::new(Box::new(tls), timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reply_lines() {
        assert_eq!(parse_line(b"250 OK\r\n").unwrap(), (250, true, "OK"));
        assert_eq!(
            parse_line(b"250-PIPELINING\r\n").unwrap(),
            (250, false, "PIPELINING")
        );
        assert_eq!(parse_line(b"354\r\n").unwrap(), (354, true, ""));
        assert_eq!(parse_line(b"221 bye\n").unwrap(), (221, true, "bye"));
    }

    #[test]
    fn refuses_malformed_lines() {
        for line in [
            &b"\r\n"[..],
            b"25\r\n",
            b"2x0 OK\r\n",
            b"650 OK\r\n",
            b"250_OK\r\n",
            b"250 \xff\r\n",
        ] {
            assert!(
                matches!(parse_line(line), Err(Error::Malformed(_))),
                "{line:?}"
            );
        }
    }

    async fn client_reading(data: &'static [u8]) -> Client {
        let (mut server, client) = tokio::io::duplex(4096);
        server.write_all(data).await.unwrap();
        drop(server);
        Client::new(Box::new(client), Duration::from_secs(5))
    }

    #[tokio::test]
    async fn reads_multiline_replies() {
        let mut client = client_reading(
            b"250-mx.example\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n354 go\r\n",
        )
        .await;
        let reply = client.expect(250).await.unwrap();
        assert_eq!(reply.lines.len(), 3);
        assert!(reply.has_extension("pipelining"));
        assert!(reply.has_extension("AUTH"));
        assert!(!reply.has_extension("mx.example"));
        assert!(matches!(
            client.expect(250).await,
            Err(Error::Unexpected(Reply { code: 354, .. }))
        ));
        assert!(matches!(client.read_reply().await, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn refuses_a_code_change_mid_reply() {
        let mut client = client_reading(b"250-one\r\n550 two\r\n").await;
        let error = client.read_reply().await.unwrap_err();
        assert_eq!(error.key(), "malformed");
    }

    #[tokio::test]
    async fn refuses_a_truncated_reply() {
        let mut client = client_reading(b"250-one\r\n250 two").await;
        assert!(matches!(
            client.read_reply().await,
            Err(Error::Malformed(_))
        ));
    }
}
