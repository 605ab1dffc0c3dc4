//! The remote courier: takes one message to the recipients of one domain over SMTP,
//! to the next hops that `next_hop` finds, driving the sans-IO client of
//! `postern-proto`.
//!
//! It owns the resolver, the TLS client settings and the pool of idle connections.
//! Every recipient gets an [`Outcome`]: delivered, deferred (try again later) or
//! bounced (permanent). Connection problems try the next hop, and when no hop
//! answers, the recipients are deferred. It must not touch the queue.
//!
//! # Security
//!
//! Talks to servers on the Internet: every read has a timeout, replies are parsed by
//! the bounded protocol core, and STARTTLS is opportunistic (see `stream.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::client::{
    self, ClientAction, ClientConfig, Failure, ServerReply, TransactionOutcome,
};
use postern_proto::reply::Enhanced;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{BoxFuture, Courier, Parcel};
use crate::delivery::next_hop::{self, Routing, Target};
use crate::delivery::outcome::Outcome;
use crate::delivery::settings::Settings;
use crate::dns::Resolver;
use crate::stream::Stream;

/// Delivers over SMTP to the next hops of the recipients' domain.
pub struct RemoteCourier {
    settings: Arc<Settings>,
    resolver: Arc<dyn Resolver>,
    /// TLS for outbound STARTTLS.
    tls: Arc<rustls::ClientConfig>,
    /// Idle outbound connections, reused for the next message to the same server.
    pool: ConnectionPool,
}

impl RemoteCourier {
    pub fn new(
        settings: Arc<Settings>,
        resolver: Arc<dyn Resolver>,
        tls: Arc<rustls::ClientConfig>,
    ) -> RemoteCourier {
        RemoteCourier {
            settings,
            resolver,
            tls,
            pool: ConnectionPool::default(),
        }
    }

    /// Delivers `message` to `rcpts` (all at `domain`). One outcome per recipient, in order.
    async fn deliver_domain(
        &self,
        from: &str,
        domain: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Vec<Outcome> {
        let config = self.settings.config();
        let routing = Routing {
            routes: config.routes.clone(),
            relay_host: config.relay_host.clone(),
        };
        let targets = match next_hop::resolve(&routing, self.resolver.as_ref(), domain).await {
            Ok(targets) => targets,
            Err(e) => {
                let outcome = if e.is_permanent() {
                    Outcome::bounced(e.status(), e.to_string(), None)
                } else {
                    Outcome::deferred(e.status(), e.to_string(), None)
                };
                return vec![outcome; rcpts.len()];
            }
        };
        let envelope = client::Envelope {
            from: from.to_string(),
            rcpts: rcpts.to_vec(),
            size: message.len() as u64,
            eight_bit: !message.is_ascii(),
            smtputf8: !from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()),
        };
        let mut last = (
            Enhanced(4, 4, 1),
            String::from("no next hop answered"),
            None,
        );
        for target in &targets {
            let relay = target_label(target);
            // A connection left open by the previous message to this host saves a
            // handshake; if the server has closed it meanwhile, connect afresh.
            let keep = config.outbound.connection_idle;
            if let Some(mut idle) = self.pool.take(target.addr, keep)
                && let Ok(outcomes) = idle.transact(self, target, &envelope, message).await
            {
                if idle.ready {
                    self.pool.put(target.addr, idle, keep);
                }
                return outcomes;
            }
            match attempt(self, target, &envelope, message, true).await {
                Ok(outcomes) => return outcomes,
                Err(AttemptError::Tls(e)) if config.outbound.plaintext_fallback => {
                    tracing::info!(event = "tls_failed", relay = %relay, error = %e, msg = "retrying without TLS");
                    match attempt(self, target, &envelope, message, false).await {
                        Ok(outcomes) => return outcomes,
                        Err(e) => last = (e.status(), e.to_string(), Some(relay)),
                    }
                }
                Err(e) => last = (e.status(), e.to_string(), Some(relay)),
            }
        }
        let (status, reply, relay) = last;
        vec![Outcome::deferred(status, reply, relay); rcpts.len()]
    }
}

impl Courier for RemoteCourier {
    /// The recipients of `parcel` must all be at one domain: they share one transaction.
    fn deliver<'a>(&'a self, parcel: &'a Parcel) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let Some(first) = parcel.rcpts.first() else {
                return Vec::new();
            };
            let domain = first.rsplit_once('@').map_or("", |(_, d)| d).to_lowercase();
            self.deliver_domain(&parcel.from, &domain, &parcel.rcpts, &parcel.message)
                .await
        })
    }
}

/// Connections kept open after a message, for the next message to the same address
/// (Postfix's connection cache): a burst of mail to one provider needs one handshake,
/// not one per message.
#[derive(Default)]
struct ConnectionPool {
    idle: std::sync::Mutex<HashMap<SocketAddr, Vec<(Outbound, Instant)>>>,
}

/// Idle connections kept per address.
const IDLE_PER_TARGET: usize = 4;

impl ConnectionPool {
    /// An idle connection to `addr` used less than `keep` ago
    /// (`delivery.connection_idle`).
    fn take(&self, addr: SocketAddr, keep: Duration) -> Option<Outbound> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < keep {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next message, and drops connections idle for `keep`.
    fn put(&self, addr: SocketAddr, conn: Outbound, keep: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in idle.values_mut() {
            list.retain(|(_, since)| since.elapsed() < keep);
        }
        idle.retain(|_, list| !list.is_empty());
        let list = idle.entry(addr).or_default();
        if list.len() < IDLE_PER_TARGET {
            list.push((conn, Instant::now()));
        }
    }
}

fn target_label(target: &Target) -> String {
    target.addr.to_string()
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("connection lost: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Session(String),
}

impl AttemptError {
    /// RFC 3463: 4.4.1 no answer, 4.4.2 bad connection, 4.7.5 cryptographic failure.
    fn status(&self) -> Enhanced {
        match self {
            AttemptError::Connect(_) | AttemptError::Timeout(_) => Enhanced(4, 4, 1),
            AttemptError::Tls(_) => Enhanced(4, 7, 5),
            AttemptError::Io(_) | AttemptError::Session(_) => Enhanced(4, 4, 2),
        }
    }
}

/// A new connection to one target: greeting, EHLO, STARTTLS if offered and `use_tls`,
/// the transaction. A connection that ends the transaction ready for another goes to
/// the pool; any other is closed with QUIT.
async fn attempt(
    courier: &RemoteCourier,
    target: &Target,
    envelope: &client::Envelope,
    message: &[u8],
    use_tls: bool,
) -> Result<Vec<Outcome>, AttemptError> {
    let config = courier.settings.config();
    let outbound = &config.outbound;
    let tcp = tokio::time::timeout(outbound.connect_timeout, TcpStream::connect(target.addr))
        .await
        .map_err(|_| AttemptError::Timeout("connecting"))?
        .map_err(AttemptError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Outbound {
        stream: Some(Stream::Plain(tcp)),
        client: client::Client::new(ClientConfig {
            helo_name: config.hostname.clone(),
            starttls: use_tls,
        }),
        timeout: outbound.timeout,
        relay: target_label(target),
        ready: false,
    };
    // Each read has its own timeout, but a server that trickles bytes could still hold
    // the connection (and a delivery slot) for ever: the whole attempt has a deadline.
    let deadline = outbound.timeout.saturating_mul(6);
    let outcomes =
        tokio::time::timeout(deadline, conn.transact(courier, target, envelope, message))
            .await
            .map_err(|_| AttemptError::Timeout("for the whole transaction"))??;
    if conn.ready {
        courier
            .pool
            .put(target.addr, conn, outbound.connection_idle);
    } else {
        conn.close().await;
    }
    Ok(outcomes)
}

struct Outbound {
    stream: Option<Stream>,
    client: client::Client,
    timeout: Duration,
    relay: String,
    /// Between transactions, ready for the next MAIL FROM.
    ready: bool,
}

impl Outbound {
    /// Runs one transaction, from wherever the session is (a new connection, or an idle
    /// one from the pool), until its outcome is known and the session is ready again.
    async fn transact(
        &mut self,
        courier: &RemoteCourier,
        target: &Target,
        envelope: &client::Envelope,
        message: &[u8],
    ) -> Result<Vec<Outcome>, AttemptError> {
        let mut results: Option<Vec<Outcome>> = None;
        if self.ready {
            self.ready = false;
            self.begin(envelope, message, &mut results);
        }
        let mut buf = vec![0u8; 8192];
        loop {
            while let Some(action) = self.client.poll_action() {
                match action {
                    ClientAction::Send(bytes) => self.write(&bytes).await?,
                    ClientAction::StartTls => self.start_tls(courier, target).await?,
                    ClientAction::Ready(_) if results.is_none() => {
                        self.begin(envelope, message, &mut results);
                    }
                    ClientAction::Ready(_) => {
                        self.ready = true;
                        return results.ok_or(AttemptError::Session("no outcome".into()));
                    }
                    ClientAction::Delivered(outcome) => {
                        results = Some(self.outcomes(&outcome, envelope.rcpts.len()));
                    }
                    ClientAction::Failed(failure) => {
                        return results.ok_or_else(|| AttemptError::Session(describe(&failure)));
                    }
                    ClientAction::Closed => {
                        return results.ok_or(AttemptError::Session("closed".into()));
                    }
                }
            }
            match self.read(&mut buf).await {
                Ok(0) | Err(_) if results.is_some() => {
                    return results.ok_or(AttemptError::Session("closed".into()));
                }
                Ok(0) => {
                    return Err(AttemptError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => self.client.handle_bytes(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the transaction, or records why the server cannot take this message.
    fn begin(
        &mut self,
        envelope: &client::Envelope,
        message: &[u8],
        results: &mut Option<Vec<Outcome>>,
    ) {
        if let Err(failure) = self.client.send(envelope, message) {
            *results = Some(refused(&failure, &self.relay, envelope.rcpts.len()));
            // The session could go on, but this connection has served its purpose.
            self.client.quit();
        }
    }

    /// QUIT, politely but without waiting long for the answer.
    async fn close(&mut self) {
        self.client.quit();
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                while let Some(action) = self.client.poll_action() {
                    match action {
                        ClientAction::Send(bytes) if self.write(&bytes).await.is_err() => return,
                        ClientAction::Closed | ClientAction::Failed(_) => return,
                        _ => {}
                    }
                }
                match self.read(&mut buf).await {
                    Ok(n) if n > 0 => self.client.handle_bytes(&buf[..n]),
                    _ => return,
                }
            }
        })
        .await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), AttemptError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(AttemptError::Session("no connection".into()));
        };
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| AttemptError::Timeout("sending"))?
            .map_err(AttemptError::Io)
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, AttemptError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(AttemptError::Session("no connection".into()));
        };
        tokio::time::timeout(self.timeout, stream.read(buf))
            .await
            .map_err(|_| AttemptError::Timeout("waiting for the server"))?
            .map_err(AttemptError::Io)
    }

    async fn start_tls(
        &mut self,
        courier: &RemoteCourier,
        target: &Target,
    ) -> Result<(), AttemptError> {
        let stream = self
            .stream
            .take()
            .ok_or_else(|| AttemptError::Session("no connection".into()))?;
        let name = ServerName::try_from(target.host.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(target.addr.ip().into()));
        let connector = TlsConnector::from(courier.tls.clone());
        let upgraded = tokio::time::timeout(self.timeout, stream.connect_tls(&connector, name))
            .await
            .map_err(|_| AttemptError::Tls(std::io::ErrorKind::TimedOut.into()))?
            .map_err(AttemptError::Tls)?;
        self.stream = Some(upgraded);
        self.client.handle_tls_established();
        Ok(())
    }

    fn outcomes(&self, outcome: &TransactionOutcome, count: usize) -> Vec<Outcome> {
        (0..count)
            .map(|i| outcome_of(outcome.outcome_for(i), &self.relay))
            .collect()
    }
}

/// Why a server cannot take a message at all, for each of its `count` recipients:
/// refused before sending, or a failure instead of a transaction.
fn refused(failure: &Failure, relay: &str, count: usize) -> Vec<Outcome> {
    let (status, text) = match failure {
        Failure::Refused(refusal) => (refusal.enhanced(), refusal.to_string()),
        other => (Enhanced(5, 0, 0), describe(other)),
    };
    vec![Outcome::bounced(status, text, Some(relay.to_string())); count]
}

fn outcome_of(reply: &ServerReply, relay: &str) -> Outcome {
    let text = reply.to_string();
    if reply.is_positive() {
        return Outcome::delivered(relay, text);
    }
    let relay = Some(relay.to_string());
    if reply.is_transient() {
        Outcome::deferred(reply.enhanced.unwrap_or(Enhanced(4, 0, 0)), text, relay)
    } else {
        Outcome::bounced(reply.enhanced.unwrap_or(Enhanced(5, 0, 0)), text, relay)
    }
}

fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Reply(reply) => reply.to_string(),
        Failure::Protocol(why) => why.clone(),
        Failure::Refused(refusal) => refusal.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::client::Refusal;

    use super::*;

    fn reply(code: u16, enhanced: Option<Enhanced>, text: &str) -> ServerReply {
        ServerReply {
            code,
            enhanced,
            text: text.to_string(),
        }
    }

    #[test]
    fn replies_become_outcomes_with_their_status_code() {
        let relay = "192.0.2.1:25";
        assert_eq!(
            outcome_of(&reply(250, Some(Enhanced(2, 0, 0)), "queued"), relay),
            Outcome::delivered(relay, "250 2.0.0 queued")
        );
        assert_eq!(
            outcome_of(&reply(451, Some(Enhanced(4, 7, 1)), "greylisted"), relay),
            Outcome::deferred(
                Enhanced(4, 7, 1),
                "451 4.7.1 greylisted",
                Some(relay.into())
            )
        );
        // Without an enhanced code, the class of the reply decides.
        assert_eq!(
            outcome_of(&reply(450, None, "busy"), relay),
            Outcome::deferred(Enhanced(4, 0, 0), "450 busy", Some(relay.into()))
        );
        assert_eq!(
            outcome_of(&reply(550, None, "no"), relay),
            Outcome::bounced(Enhanced(5, 0, 0), "550 no", Some(relay.into()))
        );
    }

    #[test]
    fn refusals_bounce_with_their_own_status_code() {
        let status = |failure: Failure| {
            let outcomes = refused(&failure, "r", 2);
            assert_eq!(outcomes.len(), 2, "one per recipient");
            match &outcomes[0] {
                Outcome::Bounced { status, .. } => *status,
                other => panic!("{other:?}"),
            }
        };
        let too_big = Refusal::TooBig { size: 10, limit: 5 };
        assert_eq!(status(Failure::Refused(too_big)), Enhanced(5, 3, 4));
        assert_eq!(
            status(Failure::Refused(Refusal::NeedsSmtpUtf8)),
            Enhanced(5, 6, 7)
        );
        assert_eq!(
            status(Failure::Refused(Refusal::Needs8BitMime)),
            Enhanced(5, 6, 3)
        );
        // An address that happens to name an extension is no size problem.
        assert_eq!(
            status(Failure::Refused(Refusal::BadAddress("SIZE\n@x".into()))),
            Enhanced(5, 6, 3)
        );
        assert_eq!(
            status(Failure::Protocol("garbage".into())),
            Enhanced(5, 0, 0)
        );
    }
}
