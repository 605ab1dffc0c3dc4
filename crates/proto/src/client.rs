//! The client side of an SMTP session, for outbound delivery, as a state machine without
//! I/O.
//!
//! # Use
//!
//! Create a [`Client`] once the connection is open; it waits for the server's greeting.
//! Then repeat:
//!
//! 1. Feed what the socket delivered to [`Client::handle_bytes`], or call
//!    [`Client::handle_eof`] when the server closed the connection.
//! 2. Drain [`Client::poll_action`] until it returns `None`, and act on each
//!    [`ClientAction`]:
//!    - `Send(bytes)`: append the bytes to the output buffer;
//!    - `StartTls`: flush the output, do the TLS handshake, then call
//!      [`Client::handle_tls_established`] — it queues the new EHLO, so keep draining;
//!    - `Ready(extensions)`: the session is idle: call [`Client::send`] with the next
//!      message, or [`Client::quit`];
//!    - `Delivered(outcome)`: a transaction ended; [`TransactionOutcome::outcome_for`]
//!      gives the reply that decides each recipient. `Ready` follows once the session
//!      can take the next message;
//!    - `Failed(failure)`: the session cannot go on: close the connection;
//!    - `Closed`: QUIT was answered: close the connection.
//! 3. When `poll_action` returns `None`, flush the output and read again.
//!
//! # The dialog
//!
//! Greeting `220` → `EHLO` (`HELO` if EHLO is refused with 5xx) → `STARTTLS` when
//! configured and offered → TLS handshake → `EHLO` again → `Ready`. A transaction is
//! `MAIL`, one `RCPT` per recipient, `DATA`, the dot-stuffed message. With PIPELINING
//! (RFC 2920) `MAIL`, the `RCPT`s and `DATA` go out in one write and the replies are
//! matched to them in order; without it, each command waits for the reply to the one
//! before. A transaction that ends before the message was sent is closed with `RSET`.
//! [`Client::send`] refuses, before sending anything, a message the server has said it
//! cannot take (SIZE, 8BITMIME, SMTPUTF8).
//!
//! # Security
//!
//! The server is not trusted. Reply lines and whole replies have bounded sizes, a reply
//! that does not parse ends the session, and so does a `421` at any point. Bytes that
//! arrive after the `220` to STARTTLS, before the handshake, are discarded: they came in
//! plaintext and could have been injected (STARTTLS response injection, RFC 3207 §4.2).
//! Addresses with control characters are refused, so they cannot add a command line.
//!
//! The client reads no clock: the caller applies the timeouts of RFC 5321 §4.5.3.2.

use std::collections::VecDeque;
use std::fmt;

use crate::command::{Body, MailParams};
use crate::reply::Enhanced;

/// Longest reply line accepted, line ending included. RFC 5321 §4.5.3.1.5 sets 512, but
/// servers send longer text; 4096 tolerates them and still bounds the input buffer.
pub const MAX_REPLY_LINE: usize = 4096;

/// Longest reply, all its lines together, so a multi-line reply cannot grow without end.
/// An EHLO reply, the longest a server normally sends, is a few hundred octets.
pub const MAX_REPLY_SIZE: usize = 64 * 1024;

/// Longest address: a path is at most 256 octets with its brackets (RFC 5321 §4.5.3.1.3).
pub const MAX_ADDRESS: usize = 254;

/// What the delivery code tells the client about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our host name, for EHLO and HELO.
    pub helo_name: String,
    /// Use STARTTLS when the server offers it.
    pub starttls: bool,
}

/// One message to send in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path without brackets; `""` is the null sender.
    pub from: String,
    /// Forward paths without brackets.
    pub rcpts: Vec<String>,
    /// The message size in octets, declared with `SIZE=` (RFC 1870).
    pub size: u64,
    /// The body has octets above 127.
    pub eight_bit: bool,
    /// An address is not ASCII. The client also checks the addresses itself.
    pub smtputf8: bool,
}

/// The EHLO keywords the client acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `SIZE` (RFC 1870 §4): `None` if not offered; `Some(0)` offered without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub enhanced_status_codes: bool,
}

/// A reply from the server, its lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// The `class.subject.detail` code at the start of the text (RFC 3463), when the text
    /// starts with one; it is removed from `text`.
    pub enhanced: Option<Enhanced>,
    /// The text of all lines joined with `" "`.
    pub text: String,
}

impl ServerReply {
    /// A 2xx or 3xx reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// A 4xx reply: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

impl fmt::Display for ServerReply {
    /// `550 5.1.1 text`, as for logs and bounces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// What the client needs the caller to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Write these bytes: commands, or the dot-stuffed message ending in `CRLF.CRLF`.
    Send(Vec<u8>),
    /// Flush the output, do the TLS handshake, then call `handle_tls_established`.
    StartTls,
    /// The session is idle: call `send` with a message, or `quit`.
    Ready(Extensions),
    /// A transaction ended, accepted or not.
    Delivered(TransactionOutcome),
    /// The session cannot go on: close the connection.
    Failed(Failure),
    /// QUIT was answered, or the server closed the connection after it.
    Closed,
}

/// What the server answered in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionOutcome {
    /// The reply to MAIL.
    pub mail: ServerReply,
    /// One reply per envelope recipient, in order. If MAIL was refused, each is a copy of
    /// the MAIL reply.
    pub rcpts: Vec<ServerReply>,
    /// The reply after the final dot, or the refusal of DATA itself. `None` if no
    /// recipient was accepted (the client then sent RSET).
    pub data: Option<ServerReply>,
}

impl TransactionOutcome {
    /// The reply that decides recipient `i`: its RCPT reply if negative, else the DATA
    /// reply. An index past the recipients gets the DATA reply, or else the MAIL reply.
    pub fn outcome_for(&self, i: usize) -> &ServerReply {
        match (self.rcpts.get(i), &self.data) {
            (Some(rcpt), _) if !rcpt.is_positive() => rcpt,
            (_, Some(data)) => data,
            (Some(rcpt), None) => rcpt,
            (None, None) => &self.mail,
        }
    }
}

/// Why the session, or one message, cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server refused the session, e.g. a `554` greeting or a `421`.
    Reply(ServerReply),
    /// The server broke the protocol (a reply that does not parse, is too long or comes
    /// unasked), or the caller called `send` when the session was not ready.
    Protocol(String),
    /// Decided locally before sending anything: the message cannot go to this server as
    /// it is. The session stays ready for another message.
    Refused(Refusal),
}

/// Why the client will not send a message to this server, decided before sending
/// anything: each is a case the caller may act on (a bounce with its own status code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The envelope has no recipients.
    NoRecipients,
    /// An address that is empty, too long or holds a control character, so it cannot go
    /// into a command line.
    BadAddress(String),
    /// RFC 1870 §6.1: the message is over the server's fixed `SIZE` limit.
    TooBig { size: u64, limit: u64 },
    /// RFC 6152 §3: 8-bit content, and the server does not offer 8BITMIME.
    Needs8BitMime,
    /// RFC 6531 §3.2: a non-ASCII address, and the server does not offer SMTPUTF8.
    NeedsSmtpUtf8,
}

impl Refusal {
    /// The enhanced status code that reports this refusal (RFC 3463; 5.6.7 is RFC 6531's):
    /// 5.3.4 message too big for the system, 5.6.7 non-ASCII addresses not permitted,
    /// 5.6.3 conversion required but not supported for the rest.
    pub fn enhanced(&self) -> Enhanced {
        match self {
            Refusal::TooBig { .. } => Enhanced(5, 3, 4),
            Refusal::NeedsSmtpUtf8 => Enhanced(5, 6, 7),
            Refusal::NoRecipients | Refusal::BadAddress(_) | Refusal::Needs8BitMime => {
                Enhanced(5, 6, 3)
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoRecipients => write!(f, "the envelope has no recipients"),
            Refusal::BadAddress(address) => write!(
                f,
                "address {address:?} is empty, longer than {MAX_ADDRESS} octets or contains a control character"
            ),
            Refusal::TooBig { size, limit } => write!(
                f,
                "message of {size} octets is over the server's SIZE limit of {limit} octets"
            ),
            Refusal::Needs8BitMime => write!(
                f,
                "message has 8-bit content but the server does not offer 8BITMIME"
            ),
            Refusal::NeedsSmtpUtf8 => write!(
                f,
                "an address is not ASCII but the server does not offer SMTPUTF8"
            ),
        }
    }
}

impl Failure {
    /// Trying again later cannot help: a 5xx refusal, or a local refusal.
    pub fn is_permanent(&self) -> bool {
        match self {
            Failure::Reply(reply) => reply.code >= 500,
            Failure::Protocol(_) => false,
            Failure::Refused(_) => true,
        }
    }

    fn not_ready() -> Failure {
        Failure::Protocol("send() called while the session is not ready".into())
    }

    fn unexpected(what: &str, reply: &ServerReply) -> Failure {
        Failure::Protocol(format!("unexpected reply {what}: {reply}"))
    }

    fn line_too_long() -> Failure {
        Failure::Protocol(format!("reply line longer than {MAX_REPLY_LINE} octets"))
    }

    fn server_closed() -> Failure {
        Failure::Protocol("the server closed the connection".into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Reply(reply) => write!(f, "server replied {reply}"),
            Failure::Protocol(text) => write!(f, "protocol error: {text}"),
            Failure::Refused(text) => write!(f, "not sent: {text}"),
        }
    }
}

impl std::error::Error for Failure {}

/// One SMTP client session. See the module documentation for the call order.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    phase: Phase,
    /// Server bytes not yet read: at most an incomplete reply line.
    input: Vec<u8>,
    reader: ReplyReader,
    actions: VecDeque<ClientAction>,
    extensions: Extensions,
    tls: bool,
    /// `quit` was called while busy: send QUIT instead of the next `Ready`.
    quit_requested: bool,
}

/// Named for what the client waits for.
#[derive(Debug)]
enum Phase {
    /// The server's `220` (RFC 5321 §3.1).
    AwaitingGreeting,
    AwaitingEhlo,
    AwaitingHelo,
    AwaitingStartTls,
    /// The caller's `handle_tls_established`; server bytes are discarded meanwhile.
    TlsHandshake,
    /// The caller's `send` or `quit`.
    Ready,
    AwaitingMail(Box<Request>),
    Transaction(Box<Transaction>),
    AwaitingRset,
    AwaitingQuit,
    /// Closed or failed: all input is ignored.
    Done,
}

/// A message handed to `send`, until the reply to MAIL.
#[derive(Debug)]
struct Request {
    pipelined: bool,
    rcpts: Vec<String>,
    /// Dot-stuffed, ending in `CRLF.CRLF`.
    message: Vec<u8>,
}

/// A transaction after the reply to MAIL.
#[derive(Debug)]
struct Transaction {
    request: Request,
    mail: ServerReply,
    rcpt_replies: Vec<ServerReply>,
    step: Step,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The reply to the RCPT for `rcpt_replies.len()`.
    Rcpt,
    /// The reply to DATA.
    Data,
    /// The reply after the message.
    DataEnd,
    /// The reply to the empty message sent because DATA got `354` with no recipient.
    AbortedDataEnd,
}

/// What follows a finished transaction.
enum Ending {
    Complete,
    /// The server may still hold transaction state: reset it (RFC 5321 §4.1.1.5).
    Aborted,
}

impl Transaction {
    /// MAIL and at least one RCPT were accepted.
    fn accepted_any(&self) -> bool {
        self.mail.is_positive() && self.rcpt_replies.iter().any(ServerReply::is_positive)
    }

    fn into_outcome(self, data: Option<ServerReply>) -> TransactionOutcome {
        let rcpts = if self.mail.is_positive() {
            self.rcpt_replies
        } else {
            vec![self.mail.clone(); self.request.rcpts.len()]
        };
        TransactionOutcome {
            mail: self.mail,
            rcpts,
            data,
        }
    }
}

impl Client {
    /// A new session, waiting for the server's greeting.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            phase: Phase::AwaitingGreeting,
            input: Vec::new(),
            reader: ReplyReader::default(),
            actions: VecDeque::new(),
            extensions: Extensions::default(),
            tls: false,
            quit_requested: false,
        }
    }

    // --- Getters ---

    /// What the server offered in its last EHLO reply (nothing after HELO).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    // --- Inputs ---

    /// Feeds bytes read from the server, in any chunks.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if !self.reads_input() {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self) {
        match self.phase {
            Phase::AwaitingQuit => self.close(),
            Phase::Done => {}
            _ => self.fail(Failure::server_closed()),
        }
    }

    /// The TLS handshake after `ClientAction::StartTls` succeeded. The session starts
    /// over (RFC 3207 §4.2): the extensions offered in plaintext are forgotten and EHLO
    /// is sent again.
    pub fn handle_tls_established(&mut self) {
        if !matches!(self.phase, Phase::TlsHandshake) {
            return;
        }
        self.tls = true;
        self.extensions = Extensions::default();
        self.input.clear();
        self.reader = ReplyReader::default();
        self.send_ehlo();
    }

    /// Starts a transaction; only after `ClientAction::Ready`. A message this server
    /// cannot take is refused with `Failure::Refused` before anything is sent, and the
    /// session stays ready.
    pub fn send(&mut self, envelope: &Envelope, body: &[u8]) -> Result<(), Failure> {
        if !matches!(self.phase, Phase::Ready) {
            return Err(Failure::not_ready());
        }
        self.check_envelope(envelope)?;
        let pipelined = self.extensions.pipelining;
        let mut commands = self.mail_command(envelope);
        if pipelined {
            // RFC 2920 §3.1: MAIL and RCPT may be grouped, and DATA ends the group.
            for rcpt in &envelope.rcpts {
                commands.extend_from_slice(&rcpt_command(rcpt));
            }
            commands.extend_from_slice(b"DATA\r\n");
        }
        self.write(commands);
        self.phase = Phase::AwaitingMail(Box::new(Request {
            pipelined,
            rcpts: envelope.rcpts.clone(),
            message: dot_stuff(body),
        }));
        Ok(())
    }

    /// Ends the session with QUIT: now if the session is ready, else once the work in
    /// progress is done (instead of the next `Ready`). `Closed` follows the reply.
    pub fn quit(&mut self) {
        match self.phase {
            Phase::Ready => self.send_quit(),
            Phase::AwaitingQuit | Phase::Done => {}
            _ => self.quit_requested = true,
        }
    }

    // --- Outputs ---

    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    // --- Input processing ---

    fn reads_input(&self) -> bool {
        !matches!(self.phase, Phase::TlsHandshake | Phase::Done)
    }

    /// Reads every complete reply line in the input.
    fn process(&mut self) {
        let mut used = 0;
        while self.reads_input() {
            let rest = &self.input[used..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                // Even the shortest ending would make this line too long.
                if rest.len() >= MAX_REPLY_LINE {
                    self.fail(Failure::line_too_long());
                }
                break;
            };
            if lf + 1 > MAX_REPLY_LINE {
                self.fail(Failure::line_too_long());
                break;
            }
            // Servers should end lines with CRLF; a bare LF is tolerated.
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let read = self.reader.push(line);
            used += lf + 1;
            match read {
                Ok(Some(reply)) => self.handle_reply(reply),
                Ok(None) => {}
                Err(e) => self.fail(Failure::Protocol(e)),
            }
        }
        if self.reads_input() {
            self.input.drain(..used);
        } else {
            // After STARTTLS's 220 or a failure nothing more is read from this stream.
            self.input.clear();
        }
    }

    fn handle_reply(&mut self, raw: RawReply) {
        // RFC 5321 §3.8: 421 means the server is closing the connection, whatever the
        // command was. After QUIT, any reply is the end.
        if raw.code == 421 && !matches!(self.phase, Phase::AwaitingQuit) {
            return self.fail(Failure::Reply(raw.into_server_reply()));
        }
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::AwaitingGreeting => self.on_greeting(raw),
            Phase::AwaitingEhlo => self.on_ehlo(raw),
            Phase::AwaitingHelo => self.on_helo(raw),
            Phase::AwaitingStartTls => self.on_starttls(raw),
            Phase::AwaitingMail(request) => self.on_mail(*request, raw.into_server_reply()),
            Phase::Transaction(tx) => self.on_transaction_reply(*tx, raw.into_server_reply()),
            Phase::AwaitingRset => self.on_rset(raw),
            Phase::AwaitingQuit => self.close(),
            Phase::Ready | Phase::TlsHandshake | Phase::Done => {
                self.fail(Failure::unexpected("while idle", &raw.into_server_reply()))
            }
        }
    }

    // --- Session setup ---

    /// RFC 5321 §3.1: `220` opens the session; anything else (`554`) refuses it.
    fn on_greeting(&mut self, raw: RawReply) {
        if raw.code != 220 {
            return self.fail(Failure::Reply(raw.into_server_reply()));
        }
        self.send_ehlo();
    }

    fn send_ehlo(&mut self) {
        let command = format!("EHLO {}\r\n", self.config.helo_name);
        self.write(command.into_bytes());
        self.phase = Phase::AwaitingEhlo;
    }

    /// RFC 5321 §3.2: a server that does not know EHLO refuses it with 5xx; HELO follows.
    fn on_ehlo(&mut self, raw: RawReply) {
        match raw.code / 100 {
            2 => {
                self.extensions = parse_extensions(&raw.lines);
                self.after_ehlo();
            }
            5 => {
                let command = format!("HELO {}\r\n", self.config.helo_name);
                self.write(command.into_bytes());
                self.phase = Phase::AwaitingHelo;
            }
            _ => self.fail(Failure::Reply(raw.into_server_reply())),
        }
    }

    fn on_helo(&mut self, raw: RawReply) {
        if raw.code / 100 != 2 {
            return self.fail(Failure::Reply(raw.into_server_reply()));
        }
        self.extensions = Extensions::default();
        self.become_ready();
    }

    fn after_ehlo(&mut self) {
        if self.config.starttls && self.extensions.starttls && !self.tls {
            self.write(b"STARTTLS\r\n".to_vec());
            self.phase = Phase::AwaitingStartTls;
        } else {
            self.become_ready();
        }
    }

    /// RFC 3207 §4: `220` starts the handshake; a refusal (`454`) leaves the session in
    /// plaintext with the extensions it has.
    fn on_starttls(&mut self, raw: RawReply) {
        if raw.code == 220 {
            // `process` discards whatever the server sent after this reply.
            self.phase = Phase::TlsHandshake;
            self.actions.push_back(ClientAction::StartTls);
        } else {
            self.become_ready();
        }
    }

    fn become_ready(&mut self) {
        if self.quit_requested {
            return self.send_quit();
        }
        self.phase = Phase::Ready;
        self.actions
            .push_back(ClientAction::Ready(self.extensions.clone()));
    }

    // --- Transaction ---

    fn check_envelope(&self, envelope: &Envelope) -> Result<(), Failure> {
        if envelope.rcpts.is_empty() {
            return Err(Failure::Refused(Refusal::NoRecipients));
        }
        if !address_is_sendable(&envelope.from) && !envelope.from.is_empty() {
            return Err(Failure::Refused(Refusal::BadAddress(envelope.from.clone())));
        }
        if let Some(bad) = envelope.rcpts.iter().find(|r| !address_is_sendable(r)) {
            return Err(Failure::Refused(Refusal::BadAddress(bad.clone())));
        }
        if let Some(limit) = self.extensions.size
            && limit > 0
            && envelope.size > limit
        {
            return Err(Failure::Refused(Refusal::TooBig {
                size: envelope.size,
                limit,
            }));
        }
        if envelope.eight_bit && !self.extensions.eight_bit_mime {
            return Err(Failure::Refused(Refusal::Needs8BitMime));
        }
        if needs_smtputf8(envelope) && !self.extensions.smtputf8 {
            return Err(Failure::Refused(Refusal::NeedsSmtpUtf8));
        }
        Ok(())
    }

    fn mail_command(&self, envelope: &Envelope) -> Vec<u8> {
        // Declare only what the server offers (RFC 1870 §6, RFC 6152 §2, RFC 6531 §3.4).
        let params = MailParams {
            size: self.extensions.size.map(|_| envelope.size),
            body: (envelope.eight_bit && self.extensions.eight_bit_mime)
                .then_some(Body::EightBitMime),
            smtputf8: needs_smtputf8(envelope) && self.extensions.smtputf8,
        };
        format!("MAIL FROM:<{}>{params}\r\n", envelope.from).into_bytes()
    }

    fn on_mail(&mut self, request: Request, reply: ServerReply) {
        if !is_final(&reply) {
            return self.fail(Failure::unexpected("to MAIL", &reply));
        }
        let accepted = reply.is_positive();
        let tx = Transaction {
            request,
            mail: reply,
            rcpt_replies: Vec::new(),
            step: Step::Rcpt,
        };
        if tx.request.pipelined {
            // The RCPT and DATA replies are on their way: read them all.
            self.phase = Phase::Transaction(Box::new(tx));
        } else if accepted {
            self.send_rcpt(tx);
        } else {
            self.finish(tx, None, Ending::Aborted);
        }
    }

    /// Lock-step: the RCPT for the next recipient.
    fn send_rcpt(&mut self, tx: Transaction) {
        if let Some(rcpt) = tx.request.rcpts.get(tx.rcpt_replies.len()) {
            self.write(rcpt_command(rcpt));
        }
        self.phase = Phase::Transaction(Box::new(tx));
    }

    fn on_transaction_reply(&mut self, tx: Transaction, reply: ServerReply) {
        match tx.step {
            Step::Rcpt => self.on_rcpt(tx, reply),
            Step::Data => self.on_data(tx, reply),
            Step::DataEnd => self.on_data_end(tx, reply),
            Step::AbortedDataEnd => self.on_aborted_data_end(tx, reply),
        }
    }

    fn on_rcpt(&mut self, mut tx: Transaction, reply: ServerReply) {
        if !is_final(&reply) {
            return self.fail(Failure::unexpected("to RCPT", &reply));
        }
        tx.rcpt_replies.push(reply);
        if tx.rcpt_replies.len() < tx.request.rcpts.len() {
            if tx.request.pipelined {
                self.phase = Phase::Transaction(Box::new(tx));
            } else {
                self.send_rcpt(tx);
            }
            return;
        }
        if !tx.request.pipelined {
            if !tx.accepted_any() {
                return self.finish(tx, None, Ending::Aborted);
            }
            self.write(b"DATA\r\n".to_vec());
        }
        tx.step = Step::Data;
        self.phase = Phase::Transaction(Box::new(tx));
    }

    fn on_data(&mut self, mut tx: Transaction, reply: ServerReply) {
        if reply.code == 354 {
            if tx.accepted_any() {
                let message = std::mem::take(&mut tx.request.message);
                self.write(message);
                tx.step = Step::DataEnd;
            } else {
                // RFC 2920 §3.1 says DATA must be refused when no recipient was
                // accepted; this server did not: send an empty message to end DATA.
                self.write(b".\r\n".to_vec());
                tx.step = Step::AbortedDataEnd;
            }
            self.phase = Phase::Transaction(Box::new(tx));
            return;
        }
        if reply.is_positive() || !is_final(&reply) {
            return self.fail(Failure::unexpected("to DATA", &reply));
        }
        let data = tx.accepted_any().then_some(reply);
        self.finish(tx, data, Ending::Aborted);
    }

    /// RFC 5321 §4.1.1.4: after the final dot the transaction is over, whatever the
    /// reply; no RSET is needed.
    fn on_data_end(&mut self, tx: Transaction, reply: ServerReply) {
        if !is_final(&reply) {
            return self.fail(Failure::unexpected("after the message", &reply));
        }
        self.finish(tx, Some(reply), Ending::Complete);
    }

    fn on_aborted_data_end(&mut self, tx: Transaction, reply: ServerReply) {
        if !is_final(&reply) {
            return self.fail(Failure::unexpected("after the empty message", &reply));
        }
        self.finish(tx, None, Ending::Aborted);
    }

    fn finish(&mut self, tx: Transaction, data: Option<ServerReply>, ending: Ending) {
        let outcome = tx.into_outcome(data);
        self.actions.push_back(ClientAction::Delivered(outcome));
        match ending {
            Ending::Complete => self.become_ready(),
            Ending::Aborted => {
                self.write(b"RSET\r\n".to_vec());
                self.phase = Phase::AwaitingRset;
            }
        }
    }

    fn on_rset(&mut self, raw: RawReply) {
        if raw.code / 100 != 2 {
            return self.fail(Failure::Reply(raw.into_server_reply()));
        }
        self.become_ready();
    }

    // --- Helpers ---

    fn write(&mut self, bytes: Vec<u8>) {
        self.actions.push_back(ClientAction::Send(bytes));
    }

    fn send_quit(&mut self) {
        self.quit_requested = false;
        self.write(b"QUIT\r\n".to_vec());
        self.phase = Phase::AwaitingQuit;
    }

    fn close(&mut self) {
        self.phase = Phase::Done;
        self.actions.push_back(ClientAction::Closed);
    }

    fn fail(&mut self, failure: Failure) {
        self.phase = Phase::Done;
        self.reader = ReplyReader::default();
        self.actions.push_back(ClientAction::Failed(failure));
    }
}

/// Dot-stuffs a message for DATA (RFC 5321 §4.5.2) and appends the end-of-data line.
///
/// The body should have CRLF line ends. A bare CR or LF is sent as CRLF, because CR and
/// LF may only travel together (RFC 5321 §2.3.8) and a receiver that ends lines on a bare
/// one could be made to see a different end of data (SMTP smuggling). A last line without
/// its CRLF gets one.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    let mut bytes = body.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' | b'\n' => {
                if b == b'\r' {
                    bytes.next_if_eq(&b'\n');
                }
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = false;
            }
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn rcpt_command(rcpt: &str) -> Vec<u8> {
    format!("RCPT TO:<{rcpt}>\r\n").into_bytes()
}

/// An address that can go into a command line as it is.
fn address_is_sendable(address: &str) -> bool {
    !address.is_empty() && address.len() <= MAX_ADDRESS && !address.chars().any(char::is_control)
}

fn needs_smtputf8(envelope: &Envelope) -> bool {
    envelope.smtputf8 || !envelope.from.is_ascii() || envelope.rcpts.iter().any(|r| !r.is_ascii())
}

/// A reply that ends a command: 2xx, 4xx or 5xx (RFC 5321 §4.2.1).
fn is_final(reply: &ServerReply) -> bool {
    matches!(reply.code / 100, 2 | 4 | 5)
}

/// The EHLO keywords (RFC 5321 §4.1.1.1): one per line after the first, which names the
/// server.
fn parse_extensions(lines: &[String]) -> Extensions {
    let mut ext = Extensions::default();
    for line in lines.iter().skip(1) {
        let mut words = line.split_ascii_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => ext.pipelining = true,
            // RFC 1870 §4: no number, or 0, means no fixed limit.
            "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => ext.eight_bit_mime = true,
            "SMTPUTF8" => ext.smtputf8 = true,
            "STARTTLS" => ext.starttls = true,
            "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
            _ => {}
        }
    }
    ext
}

// --- Reply parsing ---

/// A complete reply with its lines as sent, before enhanced codes are taken out.
#[derive(Debug)]
struct RawReply {
    code: u16,
    lines: Vec<String>,
}

impl RawReply {
    /// Takes the enhanced code off every line (RFC 2034 §3 puts it on each) and keeps
    /// the first line's.
    fn into_server_reply(self) -> ServerReply {
        let mut enhanced = None;
        let mut texts = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            match split_enhanced(line) {
                Some((code, text)) => {
                    enhanced = enhanced.or(Some(code));
                    texts.push(text);
                }
                None => texts.push(line.as_str()),
            }
        }
        ServerReply {
            code: self.code,
            enhanced,
            text: texts.join(" "),
        }
    }
}

/// Collects the lines of one reply (RFC 5321 §4.2.1).
#[derive(Debug, Default)]
struct ReplyReader {
    code: Option<u16>,
    lines: Vec<String>,
    size: usize,
}

impl ReplyReader {
    /// Adds one line, without its line ending; returns the reply after its last line.
    fn push(&mut self, line: &[u8]) -> Result<Option<RawReply>, String> {
        let (code, last, text) = parse_reply_line(line)?;
        // RFC 5321 §4.2.1: every line of a reply has the same code.
        if self.code.is_some_and(|c| c != code) {
            return Err(format!(
                "reply lines with different codes: {}",
                quoted(line)
            ));
        }
        self.size += line.len();
        if self.size > MAX_REPLY_SIZE {
            return Err(format!("reply longer than {MAX_REPLY_SIZE} octets"));
        }
        self.code = Some(code);
        self.lines.push(String::from_utf8_lossy(text).into_owned());
        if !last {
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        *self = ReplyReader::default();
        Ok(Some(RawReply { code, lines }))
    }
}

/// `NNN text` (last line), `NNN-text` (more follow) or a bare `NNN`.
fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, &[u8]), String> {
    let bad = || format!("reply does not parse: {}", quoted(line));
    let (digits, rest) = line.split_at_checked(3).ok_or_else(bad)?;
    // RFC 5321 §4.2.1: the first digit is 2 to 5.
    let code = match *digits {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(bad()),
    };
    match rest.split_first() {
        None => Ok((code, true, b"")),
        Some((b' ', text)) => Ok((code, true, text)),
        Some((b'-', text)) => Ok((code, false, text)),
        Some(_) => Err(bad()),
    }
}

/// The start of a line from the server, escaped, for an error message.
fn quoted(line: &[u8]) -> String {
    let shown = line.get(..64).unwrap_or(line);
    format!("\"{}\"", shown.escape_ascii())
}

/// `class.subject.detail` at the start of `text`, and the text after it.
fn split_enhanced(text: &str) -> Option<(Enhanced, &str)> {
    let (token, rest) = text.split_once(' ').unwrap_or((text, ""));
    Enhanced::parse(token).map(|code| (code, rest))
}

#[cfg(test)]
mod tests;
