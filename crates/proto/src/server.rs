//! The server side of an SMTP session, as a state machine without I/O.
//!
//! # Use
//!
//! Create a [`Session`]; it queues the greeting. Then repeat:
//!
//! 1. Feed what the socket delivered to [`Session::handle_bytes`].
//! 2. Drain [`Session::poll_action`] until it returns `None`, and act on each
//!    [`Action`]:
//!    - `Send(reply)`: append the reply to the output buffer;
//!    - `Ask(question)`: decide (policy or authentication) and answer with
//!      [`Session::handle_verdict`] or [`Session::handle_auth`] — this may queue more
//!      actions, so keep draining;
//!    - `Spool(transaction)`: store the message durably, then answer with
//!      [`Session::handle_spooled`];
//!    - `StartTls`: flush the output, do the TLS handshake, then call
//!      [`Session::handle_tls_established`];
//!    - `Close`: flush the output and close the connection.
//! 3. When `poll_action` returns `None`, flush the output and read again, with the
//!    timeout [`Session::wants`] suggests.
//!
//! Replies to pipelined commands come out in order, because the session stops reading
//! input while it waits for an answer. The session reads no clock and spawns nothing.

use std::collections::VecDeque;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{Command, CommandError, MailParams, parse_command};
use crate::data::{DataDecoder, DataOutcome};
use crate::reply::Reply;
use crate::sasl::{self, Credentials, Mechanism, SaslError};

/// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// What the server tells the session about this connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name, for the greeting and replies.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// STARTTLS can be offered (a certificate is loaded).
    pub starttls_available: bool,
    /// The connection is TLS from the first byte (`submissions`).
    pub implicit_tls: bool,
    /// Protocol errors after which the connection is closed with `421`.
    pub max_errors: usize,
}

/// What the session needs the server to do next.
#[derive(Debug)]
pub enum Action {
    Send(Reply),
    Ask(Question),
    StartTls,
    Spool(Transaction),
    Close,
}

/// A decision the session cannot take alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// May this sender start a transaction? Answer with `handle_verdict`.
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    /// May this recipient be added? Answer with `handle_verdict`.
    Rcpt { from: ReversePath, to: ForwardPath },
    /// Are these credentials good? Answer with `handle_auth`.
    Auth(Credentials),
}

/// One complete mail transaction, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub from: ReversePath,
    pub params: MailParams,
    pub rcpts: Vec<ForwardPath>,
    /// The message as received: dot-unstuffed, CRLF line endings.
    pub body: Vec<u8>,
}

/// What kind of input the session waits for, so the server can pick a timeout
/// (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Command,
    Data,
    /// Waiting for the server's answer to an action; input is buffered meanwhile.
    Answer,
    Closed,
}

#[derive(Debug)]
enum Phase {
    AwaitingHelo,
    AwaitingMail,
    AwaitingRcpt,
    ReceivingData(DataDecoder),
    Sasl(SaslStep),
    Waiting(Pending),
    TlsHandshake,
    Closed,
}

#[derive(Debug)]
enum SaslStep {
    Plain,
    LoginUser,
    LoginPassword { login: String },
}

#[derive(Debug)]
enum Pending {
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Auth,
    Spool,
}

/// One SMTP server session. See the module documentation for the call order.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    input: Vec<u8>,
    /// Discarding the rest of an over-long line, up to its LF.
    discarding_line: bool,
    actions: VecDeque<Action>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    login: Option<String>,
    tx: Option<OpenTransaction>,
    errors: usize,
}

#[derive(Debug)]
struct OpenTransaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<ForwardPath>,
}

enum LineError {
    TooLong(usize),
    BareLineEnding,
}

impl Session {
    /// A new session; its greeting is the first action.
    pub fn new(config: SessionConfig) -> Session {
        let mut s = Session {
            tls: config.implicit_tls,
            config,
            phase: Phase::AwaitingHelo,
            input: Vec::new(),
            discarding_line: false,
            actions: VecDeque::new(),
            helo: None,
            esmtp: false,
            login: None,
            tx: None,
            errors: 0,
        };
        let greeting = Reply::greeting(&s.config.hostname);
        s.send(greeting);
        s
    }

    // --- Getters ---

    /// The name the client gave in EHLO or HELO.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The login of an authenticated client.
    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The client greeted with EHLO (not HELO).
    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    pub fn wants(&self) -> Wants {
        match self.phase {
            Phase::Closed => Wants::Closed,
            Phase::Waiting(_) | Phase::TlsHandshake => Wants::Answer,
            Phase::ReceivingData(_) => Wants::Data,
            _ => Wants::Command,
        }
    }

    // --- Inputs ---

    /// Feeds bytes read from the client.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Answers a `Question::Mail` or `Question::Rcpt`: a positive reply accepts.
    pub fn handle_verdict(&mut self, reply: Reply) {
        let accepted = reply.is_positive();
        match self.take_pending() {
            Some(Pending::Mail { from, params }) => {
                self.phase = if accepted {
                    self.tx = Some(OpenTransaction {
                        from,
                        params,
                        rcpts: Vec::new(),
                    });
                    Phase::AwaitingRcpt
                } else {
                    Phase::AwaitingMail
                };
            }
            Some(Pending::Rcpt { to }) => {
                if accepted && let Some(tx) = self.tx.as_mut() {
                    tx.rcpts.push(to);
                }
                self.phase = Phase::AwaitingRcpt;
            }
            other => return self.unexpected_answer(other),
        }
        self.send(reply);
        self.process();
    }

    /// Answers a `Question::Auth`: on success the account's canonical login (which may
    /// differ in case from what the client typed), or the reply to send. A refusal
    /// counts as a protocol error, so guessing passwords ends the connection.
    pub fn handle_auth(&mut self, result: Result<String, Reply>) {
        if self
            .take_pending_if(|p| matches!(p, Pending::Auth))
            .is_none()
        {
            return;
        }
        self.phase = Phase::AwaitingMail;
        match result {
            Ok(login) => {
                self.login = Some(login);
                self.send(Reply::auth_ok());
            }
            Err(reply) if reply.code == 421 => {
                self.send(reply);
                self.close();
            }
            Err(reply) => self.protocol_error(reply),
        }
        self.process();
    }

    /// Answers an `Action::Spool`: the queue ID once the message is durable, or the
    /// reply to send when it could not be stored.
    pub fn handle_spooled(&mut self, result: Result<String, Reply>) {
        if self
            .take_pending_if(|p| matches!(p, Pending::Spool))
            .is_none()
        {
            return;
        }
        self.phase = Phase::AwaitingMail;
        match result {
            Ok(queue_id) => self.send(Reply::queued(&queue_id)),
            Err(reply) => self.send(reply),
        }
        self.process();
    }

    /// The TLS handshake after `Action::StartTls` succeeded. The session starts over
    /// (RFC 3207 §4.2): everything the client said before is forgotten.
    pub fn handle_tls_established(&mut self) {
        if !matches!(self.phase, Phase::TlsHandshake) {
            return;
        }
        self.tls = true;
        self.input.clear();
        self.discarding_line = false;
        self.helo = None;
        self.esmtp = false;
        self.login = None;
        self.tx = None;
        self.phase = Phase::AwaitingHelo;
    }

    // --- Outputs ---

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // --- Input processing ---

    fn process(&mut self) {
        loop {
            match &mut self.phase {
                Phase::Waiting(_) | Phase::TlsHandshake | Phase::Closed => return,
                Phase::ReceivingData(decoder) => {
                    let (used, outcome) = decoder.feed(&self.input);
                    self.input.drain(..used);
                    match outcome {
                        Some(outcome) => self.finish_data(outcome),
                        None => return,
                    }
                }
                _ => match self.take_line() {
                    None => return,
                    Some(Ok(line)) => self.handle_line(&line),
                    Some(Err(error)) => self.line_error(error),
                },
            }
        }
    }

    /// The line limit for what is in the buffer: SASL responses and AUTH commands may
    /// be longer than other commands (RFC 4954 §4).
    fn line_limit(&self) -> usize {
        let is_auth = self
            .input
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"AUTH "));
        if is_auth || matches!(self.phase, Phase::Sasl(_)) {
            sasl::MAX_SASL_LINE
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Takes one CRLF-terminated line from the input, without the CRLF.
    fn take_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        if self.discarding_line {
            match self.input.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.input.drain(..=i);
                    self.discarding_line = false;
                }
                None => {
                    self.input.clear();
                    return None;
                }
            }
        }
        let limit = self.line_limit();
        let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
            if self.input.len() >= limit {
                self.input.clear();
                self.discarding_line = true;
                return Some(Err(LineError::TooLong(limit)));
            }
            return None;
        };
        let raw: Vec<u8> = self.input.drain(..=lf).collect();
        if raw.len() > limit {
            return Some(Err(LineError::TooLong(limit)));
        }
        let Some(line) = raw.strip_suffix(b"\r\n") else {
            return Some(Err(LineError::BareLineEnding));
        };
        if line.contains(&b'\r') {
            return Some(Err(LineError::BareLineEnding));
        }
        Some(Ok(line.to_vec()))
    }

    /// A line that could not be read ends any SASL exchange in progress: its content
    /// is unknown, and the next line must not be taken for a SASL response.
    fn line_error(&mut self, error: LineError) {
        if matches!(self.phase, Phase::Sasl(_)) {
            self.phase = Phase::AwaitingMail;
        }
        match error {
            LineError::TooLong(limit) => self.protocol_error(Reply::line_too_long(limit)),
            LineError::BareLineEnding => self.protocol_error(Reply::bare_line_feed_in_command()),
        }
    }

    fn handle_line(&mut self, line: &[u8]) {
        if let Phase::Sasl(_) = self.phase {
            let Phase::Sasl(step) = std::mem::replace(&mut self.phase, Phase::AwaitingMail) else {
                return;
            };
            return self.handle_sasl_response(step, line);
        }
        match parse_command(line) {
            Ok(command) => self.handle_command(command),
            Err(e) => self.handle_command_error(e),
        }
    }

    fn handle_command_error(&mut self, error: CommandError) {
        match error {
            CommandError::Unrecognized => self.protocol_error(Reply::unrecognized()),
            CommandError::Http => {
                self.send(Reply::http_refused());
                self.close();
            }
            CommandError::Syntax(usage) => self.protocol_error(Reply::syntax(usage)),
            CommandError::Address(e) => self.protocol_error(Reply::bad_address(&e.to_string())),
            CommandError::UnknownParameter(p) => self.protocol_error(Reply::unknown_parameter(&p)),
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Ehlo(name) => self.ehlo(name),
            Command::Helo(name) => self.helo_cmd(name),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                self.reset_transaction();
                self.send(Reply::reset_ok());
            }
            Command::Noop => self.send(Reply::ok()),
            Command::Vrfy => self.send(Reply::vrfy()),
            Command::Help => self.send(Reply::help()),
            Command::Quit => {
                let reply = Reply::closing(&self.config.hostname);
                self.send(reply);
                self.close();
            }
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response),
            Command::NotImplemented(verb) => self.protocol_error(Reply::not_implemented(&verb)),
        }
    }

    // --- Verbs ---

    fn ehlo(&mut self, name: String) {
        self.tx = None;
        let mut lines = vec![
            format!("{} greets {}", self.config.hostname, name),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
        ];
        if self.config.starttls_available && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        // AUTH is never offered in the clear: passwords only travel inside TLS.
        if self.tls {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.helo = Some(name);
        self.esmtp = true;
        self.phase = Phase::AwaitingMail;
        self.send(Reply::ehlo(lines));
    }

    fn helo_cmd(&mut self, name: String) {
        self.tx = None;
        let reply = Reply::helo(&self.config.hostname, &name);
        self.helo = Some(name);
        self.esmtp = false;
        self.phase = Phase::AwaitingMail;
        self.send(reply);
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) {
        match self.phase {
            Phase::AwaitingHelo => {
                return self.protocol_error(Reply::bad_sequence("send EHLO first"));
            }
            Phase::AwaitingRcpt => {
                return self.protocol_error(Reply::bad_sequence(
                    "a transaction is already open; send RSET first",
                ));
            }
            _ => {}
        }
        // Parameters are ESMTP extensions: a client that said HELO may not use them.
        if !self.esmtp && params != MailParams::default() {
            return self.protocol_error(Reply::unknown_parameter("after HELO (use EHLO)"));
        }
        // RFC 1870 §6.2: refuse at once a message declared too big.
        if params
            .size
            .is_some_and(|size| size > self.config.max_message_size as u64)
        {
            return self.send(Reply::message_too_big(self.config.max_message_size as u64));
        }
        if !from.is_ascii() && !params.smtputf8 {
            return self.send(Reply::eight_bit_needs_smtputf8());
        }
        self.ask(
            Question::Mail {
                from: from.clone(),
                params: params.clone(),
            },
            Pending::Mail { from, params },
        );
    }

    fn rcpt(&mut self, to: ForwardPath) {
        let (Phase::AwaitingRcpt, Some(tx)) = (&self.phase, &self.tx) else {
            return self.protocol_error(Reply::bad_sequence("send MAIL FROM first"));
        };
        if tx.rcpts.len() >= self.config.max_recipients {
            return self.send(Reply::too_many_recipients(self.config.max_recipients));
        }
        if !to.is_ascii() && !tx.params.smtputf8 {
            return self.send(Reply::eight_bit_needs_smtputf8());
        }
        let from = tx.from.clone();
        self.ask(
            Question::Rcpt {
                from,
                to: to.clone(),
            },
            Pending::Rcpt { to },
        );
    }

    fn data(&mut self) {
        match (&self.phase, &self.tx) {
            (Phase::AwaitingRcpt, Some(tx)) if !tx.rcpts.is_empty() => {
                self.send(Reply::start_data());
                self.phase = Phase::ReceivingData(DataDecoder::new(self.config.max_message_size));
            }
            // RFC 2920 §3.1: with pipelining, DATA after refused recipients gets 554.
            (Phase::AwaitingRcpt, Some(_)) => self.send(Reply::no_valid_recipients()),
            _ => self.protocol_error(Reply::bad_sequence("send MAIL FROM and RCPT TO first")),
        }
    }

    fn finish_data(&mut self, outcome: DataOutcome) {
        let tx = self.tx.take();
        self.phase = Phase::AwaitingMail;
        match (outcome, tx) {
            (DataOutcome::Complete(body), Some(tx)) => {
                self.phase = Phase::Waiting(Pending::Spool);
                self.actions.push_back(Action::Spool(Transaction {
                    from: tx.from,
                    params: tx.params,
                    rcpts: tx.rcpts,
                    body,
                }));
            }
            (DataOutcome::Complete(_), None) => self.send(Reply::no_valid_recipients()),
            (DataOutcome::TooBig, _) => {
                self.send(Reply::message_too_big(self.config.max_message_size as u64))
            }
            (DataOutcome::LineTooLong, _) => {
                self.send(Reply::data_line_too_long(crate::data::MAX_TEXT_LINE))
            }
            (DataOutcome::NulOctet, _) => self.send(Reply::nul_in_data()),
            (DataOutcome::BareLineEnding, _) => {
                self.send(Reply::bare_line_ending_in_data());
                self.close();
            }
        }
    }

    fn starttls(&mut self) {
        if !self.esmtp {
            return self.protocol_error(Reply::bad_sequence("send EHLO first"));
        }
        if self.tls {
            return self.protocol_error(Reply::bad_sequence("TLS is already active"));
        }
        if !self.config.starttls_available {
            return self.protocol_error(Reply::not_implemented("STARTTLS"));
        }
        self.send(Reply::ready_for_tls());
        // RFC 3207 §4.2: whatever the client sent after STARTTLS, before the
        // handshake, is discarded: it could be an injected command.
        self.input.clear();
        self.phase = Phase::TlsHandshake;
        self.actions.push_back(Action::StartTls);
    }

    fn auth(&mut self, mechanism: &str, initial_response: Option<String>) {
        if matches!(self.phase, Phase::AwaitingHelo) {
            return self.protocol_error(Reply::bad_sequence("send EHLO first"));
        }
        if !self.esmtp {
            return self.protocol_error(Reply::bad_sequence(
                "send EHLO first: AUTH is an ESMTP extension",
            ));
        }
        if self.login.is_some() {
            return self.protocol_error(Reply::auth_already());
        }
        if self.tx.is_some() {
            return self.protocol_error(Reply::bad_sequence(
                "AUTH is not allowed during a transaction",
            ));
        }
        if !self.tls {
            return self.protocol_error(Reply::auth_needs_tls());
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return self.protocol_error(Reply::auth_unknown_mechanism());
        };
        match (mechanism, initial_response) {
            (Mechanism::Plain, Some(resp)) => {
                self.handle_sasl_response(SaslStep::Plain, resp.as_bytes())
            }
            (Mechanism::Plain, None) => self.sasl_challenge(SaslStep::Plain, ""),
            (Mechanism::Login, Some(resp)) => {
                self.handle_sasl_response(SaslStep::LoginUser, resp.as_bytes())
            }
            (Mechanism::Login, None) => self.sasl_challenge(SaslStep::LoginUser, "Username:"),
        }
    }

    fn sasl_challenge(&mut self, step: SaslStep, text: &str) {
        self.send(Reply::sasl_challenge(&sasl::encode_challenge(text)));
        self.phase = Phase::Sasl(step);
    }

    fn handle_sasl_response(&mut self, step: SaslStep, line: &[u8]) {
        self.phase = Phase::AwaitingMail;
        let decoded = std::str::from_utf8(line)
            .map_err(|_| SaslError::BadBase64)
            .and_then(sasl::decode_response);
        let credentials = decoded.and_then(|bytes| match step {
            SaslStep::Plain => sasl::decode_plain(&bytes).map(Some),
            SaslStep::LoginUser => {
                let login = sasl::decode_login_field(bytes)?;
                self.sasl_challenge(SaslStep::LoginPassword { login }, "Password:");
                Ok(None)
            }
            SaslStep::LoginPassword { login } => Ok(Some(Credentials {
                mechanism: Mechanism::Login,
                authzid: None,
                login,
                password: sasl::decode_login_field(bytes)?,
            })),
        });
        match credentials {
            Ok(Some(credentials)) => self.ask(Question::Auth(credentials), Pending::Auth),
            Ok(None) => {}
            Err(SaslError::Cancelled) => self.protocol_error(Reply::auth_cancelled()),
            Err(SaslError::BadBase64) => self.protocol_error(Reply::auth_bad_base64()),
            Err(SaslError::Malformed) => self.protocol_error(Reply::auth_malformed()),
        }
    }

    // --- Helpers ---

    fn send(&mut self, reply: Reply) {
        self.actions.push_back(Action::Send(reply));
    }

    fn ask(&mut self, question: Question, pending: Pending) {
        self.phase = Phase::Waiting(pending);
        self.actions.push_back(Action::Ask(question));
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.input.clear();
        self.actions.push_back(Action::Close);
    }

    /// Sends an error reply, and closes the connection once the client has made too
    /// many errors (RFC 5321 §4.3.2 lets a server close on a misbehaving client).
    fn protocol_error(&mut self, reply: Reply) {
        self.send(reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.send(Reply::too_many_errors());
            self.close();
        }
    }

    fn reset_transaction(&mut self) {
        self.tx = None;
        self.phase = if self.helo.is_some() {
            Phase::AwaitingMail
        } else {
            Phase::AwaitingHelo
        };
    }

    fn take_pending(&mut self) -> Option<Pending> {
        self.take_pending_if(|_| true)
    }

    fn take_pending_if(&mut self, pred: impl Fn(&Pending) -> bool) -> Option<Pending> {
        match &self.phase {
            Phase::Waiting(p) if pred(p) => {}
            _ => return None,
        }
        match std::mem::replace(&mut self.phase, Phase::AwaitingMail) {
            Phase::Waiting(p) => Some(p),
            _ => None,
        }
    }

    /// An answer that matches no question is a bug in the server; the session ignores it
    /// rather than act on a state it is not in.
    fn unexpected_answer(&mut self, taken: Option<Pending>) {
        debug_assert!(
            taken.is_none(),
            "answer does not match the pending question"
        );
        if let Some(p) = taken {
            self.phase = Phase::Waiting(p);
        }
    }
}

#[cfg(test)]
mod tests;
