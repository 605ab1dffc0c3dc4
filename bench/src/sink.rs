//! `postern-bench --sink ADDR`: an SMTP server that accepts every message and discards
//! it, for the relayed workloads (the server under test delivers to it).
//!
//! It answers EHLO with PIPELINING and 8BITMIME (no STARTTLS, no CHUNKING), 250 to MAIL,
//! RCPT, RSET and NOOP, 354 then 250 to DATA, 221 to QUIT. It counts the messages it
//! accepted and prints `{"sink_messages":N,"sink_recipients":R}` on stdout whenever the
//! counts changed (checked every 100 ms). It runs until killed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The longest line read; a longer one closes the session.
const MAX_LINE: usize = 64 * 1024;
/// How often the counts are checked for printing.
const REPORT_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Counts {
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
}

/// Binds `addr` and serves until the process is killed.
pub async fn run(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "postern-bench: sink listening on {}",
        listener.local_addr()?
    );
    let counts = Arc::new(Counts::default());
    tokio::spawn(report(counts.clone()));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("postern-bench: sink accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let _ = session(tcp, &counts).await;
        });
    }
}

async fn report(counts: Arc<Counts>) {
    let mut last = (0, 0);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tick.tick().await;
        let now = (
            counts.messages.load(Ordering::Relaxed),
            counts.recipients.load(Ordering::Relaxed),
        );
        if now != last {
            println!(
                "{{\"sink_messages\":{},\"sink_recipients\":{}}}",
                now.0, now.1
            );
            last = now;
        }
    }
}

/// One SMTP session: answers every command, discards the data, counts the messages.
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    counts: &Counts,
) -> std::io::Result<()> {
    let mut io = BufReader::new(io);
    io.write_all(b"220 postern-bench sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(128);
    let mut recipients = 0u64;
    loop {
        if !read_line(&mut io, &mut line).await? {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match &verb[..] {
            b"EHLO" => {
                b"250-postern-bench sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"
            }
            b"HELO" => b"250 postern-bench sink\r\n",
            b"MAIL" => {
                recipients = 0;
                b"250 2.1.0 ok\r\n"
            }
            b"RCPT" => {
                recipients += 1;
                b"250 2.1.5 ok\r\n"
            }
            b"RSET" => {
                recipients = 0;
                b"250 2.0.0 ok\r\n"
            }
            b"NOOP" => b"250 2.0.0 ok\r\n",
            b"DATA" => {
                io.write_all(b"354 go ahead\r\n").await?;
                io.flush().await?;
                loop {
                    if !read_line(&mut io, &mut line).await? {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                }
                counts.messages.fetch_add(1, Ordering::Relaxed);
                counts.recipients.fetch_add(recipients, Ordering::Relaxed);
                recipients = 0;
                b"250 2.0.0 discarded\r\n"
            }
            b"QUIT" => {
                io.write_all(b"221 2.0.0 bye\r\n").await?;
                io.flush().await?;
                return Ok(());
            }
            _ => b"502 5.5.1 not implemented\r\n",
        };
        io.write_all(reply).await?;
        // Only flush when the client has nothing more pipelined for us.
        if io.buffer().is_empty() {
            io.flush().await?;
        }
    }
}

/// Reads one line (with its end) into `line`; false at the end of the stream.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    io: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    loop {
        let buf = io.fill_buf().await?;
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        io.consume(take);
        if done {
            return Ok(true);
        }
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn counts_messages_and_recipients() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let counts = Counts::default();
        let (mut rd, mut wr) = tokio::io::split(client);
        let script = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n\
            Subject: x\r\n\r\n..dot\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
        wr.write_all(script).await.unwrap();
        session(server, &counts).await.unwrap();
        let mut out = String::new();
        rd.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("220 "), "{out}");
        assert!(out.ends_with("221 2.0.0 bye\r\n"), "{out}");
        assert_eq!(out.matches("250 2.0.0 discarded").count(), 2, "{out}");
        assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
        assert_eq!(counts.recipients.load(Ordering::Relaxed), 3);
    }
}
