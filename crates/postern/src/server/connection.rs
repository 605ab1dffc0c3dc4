//! One client connection: read bytes, feed the protocol session, act on what it asks,
//! write the replies. The session decides protocol; the policy decides who may do what;
//! this file only moves bytes and answers.
//!
//! # Security
//!
//! Everything read here comes from the network. Reads are bounded by the session's
//! line and message limits and by the timeouts of RFC 5321 §4.5.3.2; a client that
//! stalls is dropped with `421`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::sasl::Credentials as SaslCredentials;
use postern_proto::server::{Action, Question, Session, SessionConfig, Transaction, Wants};
use postern_proto::{ForwardPath, Reply, ReversePath};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::{Refusal, client_key};
use crate::attribution::{UnixUser, canonical, is_from_this_host, local_owner};
use crate::auth::{AccountLimits, Verification};
use crate::buffer_budget::Held;
use crate::config::{Listener, Role};
use crate::context::{Context, Counted, Settings};
use crate::facts;
use crate::intake;
use crate::metrics;
use crate::policy::{self, Reason, Verdict};
use crate::ratelimit::Measure;
use crate::shutdown::Shutdown;
use crate::stream::Stream;

/// A TLS handshake that takes longer is a stalled or hostile client.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Protocol errors before the connection is closed with `421`.
const MAX_ERRORS: usize = 10;

pub struct Connection {
    ctx: Arc<Context>,
    /// The settings when the connection started; a reload affects later connections.
    settings: Arc<Settings>,
    listener: Listener,
    client: IpAddr,
    /// The Unix user owning the client socket, for loopback clients (attribution only).
    owner: Option<UnixUser>,
    /// The logged-in account's own sending limits (passwd-file extra fields).
    account_limits: AccountLimits,
    /// Recipients accepted so far in the open transaction.
    tx_recipients: u32,
    stream: Option<Stream>,
    session: Session,
    out: Vec<u8>,
    /// A policy refusal already logged with its reason, so the reply is not logged again.
    logged_refusal: Option<Reply>,
    shutdown: Shutdown,
    shutting_down: bool,
    /// When the client must have finished what the session waits for (see [`Clock`]).
    clock: Clock,
    /// The bytes of the message being received, held against the server's budget.
    buffered: Held,
}

/// The deadline of a session's wait. A command must be complete within
/// `command_timeout` of the last reply, however slowly its bytes trickle in; DATA gets
/// `data_timeout` and then as much more as its bytes earn at `min_data_rate` (never more
/// than `data_timeout` ahead), as Postfix's `smtpd_per_record_deadline` and
/// `smtpd_min_data_rate` do. A client sending a byte now and then cannot hold a session
/// forever.
struct Clock {
    deadline: Instant,
    /// What the deadline was set for; a change starts a new wait.
    waiting_for: Wants,
}

impl Clock {
    fn new(limits: &crate::config::Limits) -> Clock {
        Clock {
            deadline: Instant::now() + Duration::from_secs(limits.command_timeout),
            waiting_for: Wants::Command,
        }
    }

    fn limit(limits: &crate::config::Limits, wants: Wants) -> Duration {
        Duration::from_secs(match wants {
            Wants::Data => limits.data_timeout,
            _ => limits.command_timeout,
        })
    }

    /// A new wait starts: a reply was sent, or the session now waits for something else.
    fn restart(&mut self, limits: &crate::config::Limits, wants: Wants) {
        self.deadline = Instant::now() + Self::limit(limits, wants);
        self.waiting_for = wants;
    }

    /// `read` bytes of DATA arrived: they earn time at the minimum rate.
    fn earn(&mut self, limits: &crate::config::Limits, read: usize) {
        if limits.min_data_rate == 0 {
            return self.restart(limits, Wants::Data);
        }
        let earned = Duration::from_secs_f64(read as f64 / limits.min_data_rate as f64);
        let cap = Instant::now() + Self::limit(limits, Wants::Data);
        self.deadline = (self.deadline + earned).min(cap);
    }
}

/// Serves one accepted TCP connection to its end.
pub async fn serve(
    ctx: Arc<Context>,
    listener: Listener,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: one client, one name.
    let peer = canonical(peer);
    let _ = tcp.set_nodelay(true);
    let _counted = Counted::new(ctx.clone(), &listener.name);
    let settings = ctx.settings();
    let owner = socket_owner(&tcp, peer).await;
    let client_key = owner
        .as_ref()
        .map_or_else(|| client_key(peer.ip()), |o| format!("uid:{}", o.uid));
    let _ticket = match ctx
        .admission
        .admit(&client_key, &settings.config.limits, Instant::now())
    {
        Ok(ticket) => ticket,
        Err(refusal) => return turn_away(tcp, &listener, peer.ip(), &client_key, refusal).await,
    };
    let implicit_tls = listener.role == Role::Submissions;
    let stream = if implicit_tls {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, Stream::Plain(tcp).upgrade(&settings.tls))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return log_tls_failure(&listener, peer.ip(), &e.to_string()),
            Err(_) => return log_tls_failure(&listener, peer.ip(), "handshake timed out"),
        }
    } else {
        Stream::Plain(tcp)
    };
    let session = Session::new(SessionConfig {
        hostname: settings.config.hostname.clone(),
        max_message_size: settings.config.limits.max_message_size,
        max_recipients: settings.config.limits.max_recipients,
        starttls_available: true,
        implicit_tls,
        max_errors: MAX_ERRORS,
    });
    let clock = Clock::new(&settings.config.limits);
    let buffered = ctx.buffered.share();
    let mut conn = Connection {
        ctx,
        settings,
        listener,
        client: peer.ip(),
        owner,
        account_limits: AccountLimits::default(),
        tx_recipients: 0,
        stream: Some(stream),
        session,
        out: Vec::new(),
        logged_refusal: None,
        shutdown,
        shutting_down: false,
        clock,
        buffered,
    };
    if let Err(e) = conn.run().await {
        tracing::debug!(event = "connection_error", client = %conn.client, error = %e);
    }
}

/// Says `421` and closes, without TLS (even on `submissions`: the refusal is no secret
/// and a handshake would cost what the limit is there to save).
async fn turn_away(
    mut tcp: TcpStream,
    listener: &Listener,
    client: IpAddr,
    key: &str,
    refusal: Refusal,
) {
    let reason = refusal.reason().as_str();
    metrics::message_rejected(reason);
    tracing::info!(event = "rejected", listener = %listener.name, client = %client, reason, key = %key);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tcp.write_all(&Reply::too_many_connections().to_bytes()),
    )
    .await;
}

/// Who owns the client socket of a connection made from this host, when the kernel says.
async fn socket_owner(tcp: &TcpStream, peer: SocketAddr) -> Option<UnixUser> {
    let local = tcp.local_addr().ok()?;
    let (peer, local) = (canonical(peer), canonical(local));
    if !is_from_this_host(peer.ip(), local.ip()) {
        return None;
    }
    tokio::task::spawn_blocking(move || local_owner(peer, local).map(UnixUser::lookup))
        .await
        .ok()
        .flatten()
}

fn log_tls_failure(listener: &Listener, client: IpAddr, error: &str) {
    tracing::info!(event = "tls_failed", listener = %listener.name, client = %client, error = %error);
}

impl Connection {
    async fn run(&mut self) -> std::io::Result<()> {
        tracing::debug!(event = "connect", listener = %self.listener.name, client = %self.client);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !self.act().await? {
                return Ok(());
            }
            // Stored, refused or never started: no message is held in memory.
            if self.session.wants() != Wants::Data {
                self.buffered.release();
            }
            self.flush().await?;
            let Some(n) = self.read(&mut buf).await? else {
                return Ok(());
            };
            if !self.buffer(n) {
                return self.refuse_data().await;
            }
            self.session.handle_bytes(&buf[..n]);
        }
    }

    /// Holds `n` more bytes of DATA against the server's budget (nothing for commands).
    /// False when the budget is spent.
    fn buffer(&mut self, n: usize) -> bool {
        if self.session.wants() != Wants::Data {
            return true;
        }
        let limit = self.settings.config.limits.max_buffered_data;
        self.buffered.grow(n, limit)
    }

    /// Too much mail is arriving at once: this message is refused for now and the
    /// connection closed, which frees what it held.
    async fn refuse_data(&mut self) -> std::io::Result<()> {
        let reply = Reply::too_much_data_in_flight();
        tracing::warn!(event = "rejected", listener = %self.listener.name, client = %self.client, reason = Reason::BufferFull.as_str(), buffered = self.ctx.buffered.used());
        metrics::message_rejected(Reason::BufferFull.as_str());
        self.out.extend_from_slice(&reply.to_bytes());
        self.flush().await
    }

    /// Drains the session's actions. Returns false when the connection must close.
    async fn act(&mut self) -> std::io::Result<bool> {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(reply) => self.send(reply),
                Action::Ask(question) => self.answer(question).await,
                Action::Spool(tx) => {
                    let result = self.take_in(tx).await;
                    self.session.handle_spooled(result);
                }
                Action::StartTls => self.start_tls().await?,
                Action::Close => {
                    self.flush().await?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Reads once, with the timeout for what the session waits for. `None`: the client
    /// left, timed out, or the server is shutting down.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            let wants = self.session.wants();
            if wants == Wants::Closed {
                return Ok(None);
            }
            if wants != self.clock.waiting_for {
                self.clock.restart(&self.settings.config.limits, wants);
            }
            let limit = self
                .clock
                .deadline
                .saturating_duration_since(Instant::now());
            // A shutdown lets a message being received finish, and stops the rest at
            // the next command.
            if self.shutting_down && self.session.wants() == Wants::Command {
                return self
                    .close_with(Reply::shutting_down(&self.settings.config.hostname))
                    .await;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            let read = tokio::time::timeout(limit, stream.read(buf));
            let outcome = if self.shutting_down {
                read.await
            } else {
                tokio::select! {
                    r = read => r,
                    _ = self.shutdown.requested() => {
                        self.shutting_down = true;
                        continue;
                    }
                }
            };
            return match outcome {
                Ok(Ok(0)) => Ok(None),
                Ok(Ok(n)) => {
                    if wants == Wants::Data {
                        self.clock.earn(&self.settings.config.limits, n);
                    }
                    Ok(Some(n))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    tracing::info!(event = "timeout", listener = %self.listener.name, client = %self.client);
                    self.close_with(Reply::timeout(&self.settings.config.hostname))
                        .await
                }
            };
        }
    }

    async fn close_with(&mut self, reply: Reply) -> std::io::Result<Option<usize>> {
        self.out.extend_from_slice(&reply.to_bytes());
        self.flush().await?;
        Ok(None)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        // A client that sends but never reads would otherwise hold this task forever.
        let limit = Duration::from_secs(self.settings.config.limits.command_timeout);
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(result) => {
                result?;
                // A reply went out: the client's next command has its full time.
                let wants = self.session.wants();
                self.clock.restart(&self.settings.config.limits, wants);
            }
            Err(_) => {
                tracing::info!(event = "timeout", listener = %self.listener.name, client = %self.client, msg = "client does not read its replies");
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
        self.out.clear();
        Ok(())
    }

    fn send(&mut self, reply: Reply) {
        if reply.code >= 400 && self.logged_refusal.take().as_ref() != Some(&reply) {
            let reason = session_refusal_reason(&reply).as_str();
            metrics::message_rejected(reason);
            tracing::info!(
                event = "rejected",
                listener = %self.listener.name,
                client = %self.client,
                reason,
                reply = %reply,
            );
        }
        self.out.extend_from_slice(&reply.to_bytes());
    }

    async fn start_tls(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.upgrade(&self.settings.tls)).await {
            Ok(Ok(tls)) => {
                self.stream = Some(tls);
                self.session.handle_tls_established();
                Ok(())
            }
            Ok(Err(e)) => {
                log_tls_failure(&self.listener, self.client, &e.to_string());
                Err(e)
            }
            Err(_) => {
                log_tls_failure(&self.listener, self.client, "handshake timed out");
                Err(std::io::ErrorKind::TimedOut.into())
            }
        }
    }

    // --- Answers ---

    async fn answer(&mut self, question: Question) {
        match question {
            Question::Mail { from, .. } => {
                let mut verdict = policy::check_sender(
                    self.listener.role,
                    self.session.login(),
                    self.settings.config.sender_scope,
                    &from,
                );
                if verdict.is_accepted()
                    && let Some(limited) = self.rate_limit(Measure::Messages, 1)
                {
                    verdict = limited;
                }
                if verdict.is_accepted() {
                    self.tx_recipients = 0;
                }
                self.log_verdict(&verdict, &from, None);
                self.session.handle_verdict(verdict.reply);
            }
            Question::Rcpt { from, to } => {
                let facts = facts::recipient_facts(
                    &self.settings.config,
                    self.settings.users.as_ref(),
                    &to,
                );
                let submitter = policy::Submitter::from_login(self.session.login());
                let mut verdict = policy::check_recipient(submitter, &to, facts);
                if verdict.is_accepted()
                    && let Some(limited) =
                        self.rate_limit(Measure::Recipients, self.tx_recipients + 1)
                {
                    verdict = limited;
                }
                if verdict.is_accepted() {
                    self.tx_recipients += 1;
                }
                self.log_verdict(&verdict, &from, Some(&to));
                self.session.handle_verdict(verdict.reply);
            }
            Question::Auth(credentials) => {
                let result = self.authenticate(credentials).await;
                self.session.handle_auth(result);
            }
        }
    }

    fn log_verdict(&mut self, verdict: &Verdict, from: &ReversePath, rcpt: Option<&ForwardPath>) {
        if verdict.is_accepted() {
            return;
        }
        let rcpt = rcpt.map(ToString::to_string);
        self.origin()
            .log_rejected(verdict.reason, &from.to_string(), rcpt.as_deref());
        self.logged_refusal = Some(verdict.reply.clone());
    }

    /// Over an hourly limit of messages (`count` 1 at MAIL) or recipients?
    fn rate_limit(&self, measure: Measure, count: u32) -> Option<Verdict> {
        let (budget, wait) = self
            .ctx
            .rates
            .check_all(
                &self.origin().budgets(&self.settings.config.limits),
                measure,
                count,
                Instant::now(),
            )
            .err()?;
        Some(policy::rate_limited(
            &budget.who,
            budget.limit(measure),
            measure.noun(),
            wait,
        ))
    }

    /// The key failed logins are counted under: the attributed Unix user on loopback
    /// (all sites share 127.0.0.1), else the IP address.
    fn failure_key(&self) -> String {
        match &self.owner {
            Some(owner) => format!("uid:{}", owner.uid),
            None => client_key(self.client),
        }
    }

    async fn authenticate(&mut self, credentials: SaslCredentials) -> Result<String, Reply> {
        let mechanism = credentials.mechanism.as_str();
        let login = credentials.login.to_lowercase();
        let key = self.failure_key();
        // One check at a time per client, its failure delay included: parallel
        // connections cannot get more checks than the limit, or share one delay.
        let ctx = Arc::clone(&self.ctx);
        let _turn = ctx.auth_failures.turn(&key).await;
        if let Some(left) = self.ctx.auth_failures.blocked_for(&key, Instant::now()) {
            let reason = Reason::AuthBlocked.as_str();
            metrics::message_rejected(reason);
            tracing::info!(event = "rejected", listener = %self.listener.name, client = %self.client, reason, user = %login);
            let reply = Reply::auth_blocked(left.as_secs().div_ceil(60).max(1));
            self.logged_refusal = Some(reply.clone());
            return Err(reply);
        }
        if let Some(authzid) = &credentials.authzid
            && !authzid.eq_ignore_ascii_case(&credentials.login)
        {
            return Err(self
                .auth_failure(&login, mechanism, Reply::authzid_mismatch())
                .await);
        }
        let users = self.settings.users.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::auth::verify_padded(users.as_ref(), &credentials.login, &credentials.password)
        })
        .await;
        match checked {
            Ok(Ok(Verification::Accepted)) => {
                self.ctx.auth_failures.record_success(&key);
                self.ctx
                    .auth_failures
                    .record_success(&format!("login:{login}"));
                if let Ok(Some(account)) = self.settings.users.lookup(&login) {
                    self.account_limits = account.limits;
                }
                tracing::info!(event = "auth", listener = %self.listener.name, client = %self.client, user = %login, mechanism);
                Ok(login)
            }
            Ok(Ok(Verification::Rejected)) => Err(self
                .auth_failure(&login, mechanism, Reply::auth_failed())
                .await),
            Ok(Err(e)) => {
                tracing::warn!(event = "auth_unavailable", client = %self.client, user = %login, error = %e);
                Err(Reply::auth_temporary_failure())
            }
            Err(e) => {
                tracing::error!(event = "auth_unavailable", client = %self.client, error = %e);
                Err(Reply::auth_temporary_failure())
            }
        }
    }

    /// Logs a failed login (fail2ban reads these lines), counts it against the client,
    /// waits longer for each failure in a row (a tarpit for password guessing), and
    /// returns the reply: `421` when this failure starts a block.
    async fn auth_failure(&mut self, login: &str, mechanism: &str, reply: Reply) -> Reply {
        metrics::auth_failed(&self.listener.name);
        let limits = &self.settings.config.limits;
        let block = Duration::from_secs(limits.auth_block_seconds);
        let key = self.failure_key();
        let failures = &self.ctx.auth_failures;
        let now = Instant::now();
        let blocked = failures.record_failure(&key, limits.auth_failures_before_block, block, now);
        // Failures are also counted per login, so guessing one password from many
        // addresses slows down too. A login is never blocked outright: that would let
        // anyone lock a customer out of their own mailbox.
        let login_key = format!("login:{login}");
        failures.record_failure(&login_key, 0, block, now);
        let delay = tarpit(
            failures.count(&key).max(failures.count(&login_key)),
            Duration::from_millis(limits.auth_failure_delay_ms),
        );
        tracing::info!(
            event = "auth_failed",
            listener = %self.listener.name,
            client = %self.client,
            user = %login,
            mechanism,
            uid = self.owner.as_ref().map(|o| o.uid),
            delay_ms = delay.as_millis() as u64,
        );
        let reply = match blocked {
            Some(block) => {
                tracing::warn!(event = "auth_blocked", client = %self.client, key = %key, seconds = block.as_secs());
                Reply::auth_blocked(block.as_secs().div_ceil(60).max(1))
            }
            None => reply,
        };
        tokio::time::sleep(delay).await;
        self.logged_refusal = Some(reply.clone());
        reply
    }

    // --- The message ---

    /// Who this client is, for intake, the limits and the log lines.
    fn origin(&self) -> intake::Origin {
        intake::Origin::Smtp(intake::SmtpClient {
            listener: self.listener.name.clone(),
            role: self.listener.role,
            ip: self.client,
            helo: self.session.helo().unwrap_or("").to_string(),
            esmtp: self.session.is_esmtp(),
            tls: self.session.is_tls(),
            login: self.session.login().map(str::to_string),
            account_limits: self.account_limits,
            owner: self.owner.clone(),
        })
    }

    /// Hands the message to intake; only its `Ok` may be `250`'d.
    async fn take_in(&mut self, tx: Transaction) -> Result<String, Reply> {
        let submission = intake::Submission {
            origin: self.origin(),
            sender: tx.from,
            recipients: tx.rcpts,
            message: tx.body,
        };
        match intake::accept(&self.ctx, &self.settings, submission).await {
            Ok(queue_id) => Ok(queue_id.to_string()),
            Err(verdict) => {
                // Intake logged it.
                self.logged_refusal = Some(verdict.reply.clone());
                Err(verdict.reply)
            }
        }
    }
}

/// `step` (`limits.auth_failure_delay_ms`, half a second by default) more for each failed
/// login in a row from one client, at most 8 steps: nothing for a single typo, slow for
/// a guessing script.
fn tarpit(failures: u32, step: Duration) -> Duration {
    step.saturating_mul(failures.saturating_sub(1).min(8))
}

/// The reason for a refusal the protocol session made on its own.
fn session_refusal_reason(reply: &Reply) -> Reason {
    let enhanced = reply.enhanced.map(|e| (e.1, e.2));
    match (reply.code, enhanced) {
        (552, _) => Reason::MessageTooBig,
        (452, _) => Reason::TooManyRecipients,
        (550, Some((6, 0))) => Reason::BadMessageData,
        (421, Some((4, 2))) => Reason::Timeout,
        (421, Some((3, 2))) => Reason::ShuttingDown,
        (421, _) => Reason::TooManyErrors,
        (451, _) => Reason::SpoolFailed,
        (538, _) => Reason::AuthWithoutTls,
        (553, Some((6, 7))) => Reason::SmtputfRequired,
        (501, _) if reply.text().starts_with("Authentication") => Reason::AuthCancelled,
        _ => Reason::ProtocolError,
    }
}
