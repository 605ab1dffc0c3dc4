//! Intake: the one cleanup step both doors end in, as Postfix's `cleanup` is for smtpd and
//! pickup. An SMTP session (after DATA) and the local submission socket (after reading
//! `sendmail`'s message) each build a [`Submission`] — who sent it ([`Origin`]), the
//! envelope sender, the recipients, the message — and hand it to [`accept`], which does,
//! once for every origin and in this order:
//!
//! 1. inbound verdicts (SPF, DKIM, DMARC) for mail from outside (mx, no login), and
//!    the DMARC `p=reject` refusal when enforcement is on;
//! 2. removal of forged `Authentication-Results:` fields that carry our host name;
//! 3. our trace header (`Received:`), the verdicts, and `Date:`/`Message-ID:` where a
//!    submission lacks them;
//! 4. the DKIM decision ([`crate::policy::dkim`]) and the signature;
//! 5. the envelope and the rate reservation;
//! 6. custody: delivered at once or queued (`custody`), then the `accepted` line.
//!
//! A door turns the result into its own reply (`250`/`4xx`/`5xx`, or a sysexits code).
//! Intake does not know how a door talks to its client beyond the [`Origin`] facts.
//! Every refusal made here is logged here, with the same keys as the doors' own.

mod custody;
pub mod headers;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use chrono::Local;
use postern_proto::{ForwardPath, Reply, ReversePath};

use crate::attribution::{LocalClient, UnixUser};
use crate::auth::AccountLimits;
use crate::config::{Config, Limits, Role};
use crate::context::{Context, Settings};
use crate::facts;
use crate::mailauth::sign::author_domain;
use crate::mailauth::verify::strip_forged_results;
use crate::metrics;
use crate::policy::dkim::{self, Signatory, Signing};
use crate::policy::{self, Reason, Verdict};
use crate::queue::{self, Envelope, QueueId};
use crate::ratelimit::{self, Budget};

/// One message handed over by a door.
pub struct Submission {
    pub origin: Origin,
    pub sender: ReversePath,
    /// As accepted by the door, in order; each is delivered once.
    pub recipients: Vec<ForwardPath>,
    /// The message as received (CRLF line ends), without anything we add.
    pub message: Vec<u8>,
}

/// Who handed a message over, with what a door knows about them.
pub enum Origin {
    Smtp(SmtpClient),
    Local(LocalSubmitter),
}

/// An SMTP client at the end of its transaction.
pub struct SmtpClient {
    pub listener: String,
    pub role: Role,
    pub ip: IpAddr,
    pub helo: String,
    pub esmtp: bool,
    pub tls: bool,
    pub login: Option<String>,
    /// The login's own sending limits (passwd-file extra fields).
    pub account_limits: AccountLimits,
    /// The Unix user owning a loopback client's socket, when the kernel says.
    pub owner: Option<UnixUser>,
}

/// A local user on the submission socket (`sendmail`).
pub struct LocalSubmitter {
    pub client: LocalClient,
    /// The script PHP names in `X-PHP-Originating-Script:`.
    pub script: Option<String>,
}

impl Origin {
    /// The hourly budgets this origin's mail counts against.
    pub fn budgets(&self, limits: &Limits) -> Vec<Budget> {
        match self {
            Origin::Smtp(c) => ratelimit::budgets(
                limits,
                c.login.as_deref().map(|l| (l, c.account_limits)),
                c.owner.as_ref().map(|o| (o.uid, o.name.as_str())),
                Some(c.ip),
            ),
            Origin::Local(l) => ratelimit::budgets(
                limits,
                None,
                Some((l.client.user.uid, l.client.user.name.as_str())),
                None,
            ),
        }
    }

    /// Logs a refusal (`event=rejected`) with this origin's keys, and counts it.
    pub fn log_rejected(&self, reason: Reason, from: &str, rcpt: Option<&str>) {
        metrics::message_rejected(reason.as_str());
        match self {
            Origin::Smtp(c) => tracing::info!(
                event = "rejected",
                listener = %c.listener,
                client = %c.ip,
                reason = reason.as_str(),
                from = %from,
                rcpt = rcpt.unwrap_or_default(),
                auth = c.login.as_deref().unwrap_or("-"),
                uid = c.owner.as_ref().map(|o| o.uid),
                user = c.owner.as_ref().map(|o| o.name.as_str()),
            ),
            Origin::Local(l) => tracing::info!(
                event = "rejected",
                origin = "local",
                uid = l.client.user.uid,
                user = %l.client.user.name,
                pid = l.client.process.as_ref().map(|p| p.pid),
                reason = reason.as_str(),
                from = %from,
                rcpt = rcpt,
            ),
        }
    }

    fn log_accepted(&self, envelope: &Envelope) {
        let (queue_id, from) = (&envelope.queue_id, &envelope.from);
        let (nrcpt, size) = (envelope.recipients.len(), envelope.size);
        match self {
            Origin::Smtp(c) => tracing::info!(
                event = "accepted",
                queue_id = %queue_id,
                from = %from,
                nrcpt,
                size,
                listener = %c.listener,
                client = %c.ip,
                auth = c.login.as_deref().unwrap_or("-"),
                uid = c.owner.as_ref().map(|o| o.uid),
                user = c.owner.as_ref().map(|o| o.name.as_str()),
            ),
            Origin::Local(l) => {
                let client = &l.client;
                tracing::info!(
                    event = "accepted",
                    queue_id = %queue_id,
                    from = %from,
                    nrcpt,
                    size,
                    origin = "local",
                    uid = client.user.uid,
                    user = %client.user.name,
                    pid = client.process.as_ref().map(|p| p.pid),
                    cmd = client.process.as_ref().map(|p| p.cmd.as_str()),
                    script = l.script.as_deref(),
                    parent_pid = client.parent.as_ref().map(|p| p.pid),
                    parent_cmd = client.parent.as_ref().map(|p| p.cmd.as_str()),
                    cwd = client.parent.as_ref().and_then(|p| p.cwd.as_deref()),
                );
            }
        }
    }

    /// A submission (logged in, or local) gets `Date:`/`Message-ID:` where missing and
    /// may be signed; mail from outside is passed on as it came.
    fn is_submission(&self) -> bool {
        match self {
            Origin::Smtp(c) => c.login.is_some(),
            Origin::Local(_) => true,
        }
    }

    /// Mail from outside, which gets SPF, DKIM and DMARC verdicts.
    fn is_inbound(&self) -> bool {
        matches!(self, Origin::Smtp(c) if c.login.is_none() && c.role == Role::Mx)
    }

    fn queue_origin(&self) -> queue::Origin {
        match self {
            Origin::Smtp(c) => queue::Origin::Smtp {
                client: c.ip.to_string(),
                listener: c.listener.clone(),
                login: c.login.clone(),
            },
            Origin::Local(l) => queue::Origin::Local {
                uid: l.client.user.uid,
                user: l.client.user.name.clone(),
            },
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Origin::Smtp(_) => "smtp",
            Origin::Local(_) => "local",
        }
    }

    /// The key whose failures `log` lines name (the client IP or the local uid).
    fn log_key(&self) -> String {
        match self {
            Origin::Smtp(c) => c.ip.to_string(),
            Origin::Local(l) => format!("uid:{}", l.client.user.uid),
        }
    }
}

/// Takes a message into postern's custody, or says why not. `Ok` means it is on stable
/// storage (delivered, or committed to the queue) and the door may acknowledge it.
pub async fn accept(
    ctx: &Context,
    settings: &Settings,
    submission: Submission,
) -> Result<QueueId, Verdict> {
    let Submission {
        origin,
        sender,
        recipients,
        mut message,
    } = submission;
    let origin = Arc::new(origin);
    let config = &settings.config;
    let from = sender.to_string();
    let refuse = |verdict: Verdict| {
        origin.log_rejected(verdict.reason, &from, None);
        verdict
    };
    check_author(config, &origin, &message).map_err(refuse)?;
    let verdicts = inbound_verdicts(settings, &origin, &from, &message)
        .await
        .map_err(refuse)?;
    if let Cow::Owned(stripped) = strip_forged_results(&message, &config.hostname) {
        message = stripped;
    }
    let queue_id = QueueId::generate();
    let mut prefix = trace_header(config, &origin, &recipients, queue_id.as_str());
    prefix.push_str(&verdicts);
    if origin.is_submission() {
        let now = Local::now();
        let missing =
            headers::missing_submission_headers(&message, &config.hostname, queue_id.as_str(), now);
        prefix.push_str(&missing);
    }
    let signature = dkim_signature(settings, &origin, &prefix, &message).map_err(refuse)?;
    let mut stored = (signature + &prefix).into_bytes();
    stored.extend_from_slice(&message);
    drop(message);
    let stored = Arc::new(stored);
    let envelope = Envelope::new(
        queue_id.clone(),
        from.clone(),
        facts::delivery_addresses(config, settings.users.as_ref(), &recipients),
        origin.queue_origin(),
        stored.len() as u64,
        chrono::Utc::now().timestamp(),
    );
    reserve_budget(ctx, config, &origin, recipients.len()).map_err(refuse)?;
    let log_accepted = {
        let (origin, envelope) = (Arc::clone(&origin), envelope.clone());
        move || origin.log_accepted(&envelope)
    };
    if let Err(e) = custody::take(&ctx.spool, &ctx.delivery, envelope, stored, log_accepted).await {
        tracing::error!(event = "spool_failed", queue_id = %queue_id, client = %origin.log_key(), error = %e);
        return Err(refuse(Verdict::refuse(
            Reply::spool_failed(),
            Reason::SpoolFailed,
        )));
    }
    metrics::message_accepted(origin.metric_label());
    Ok(queue_id)
}

/// On the submission listeners, the `From:` of a logged-in client's message must be the
/// login's, as its envelope sender is: else any customer could put a bank's address
/// where the recipient reads it, with our server's name in the trace.
fn check_author(config: &Config, origin: &Origin, message: &[u8]) -> Result<(), Verdict> {
    let Origin::Smtp(SmtpClient {
        login: Some(login),
        role,
        ..
    }) = origin
    else {
        return Ok(());
    };
    if !role.requires_auth() {
        return Ok(());
    }
    let authors = headers::author_addresses(message);
    let verdict = policy::check_author(login, config.sender_scope, &authors);
    if verdict.is_accepted() {
        Ok(())
    } else {
        Err(verdict)
    }
}

/// SPF, DKIM and DMARC on mail from outside: our `Authentication-Results:` header, or a
/// refusal when the author's domain says `p=reject` and enforcement is on.
async fn inbound_verdicts(
    settings: &Settings,
    origin: &Origin,
    from: &str,
    message: &[u8],
) -> Result<String, Verdict> {
    let Origin::Smtp(client) = origin else {
        return Ok(String::new());
    };
    if !origin.is_inbound() || !settings.config.inbound.verify {
        return Ok(String::new());
    }
    let verdict = settings
        .verifier
        .check(client.ip, &client.helo, from, message)
        .await;
    match verdict.reject {
        Some(reason) => Err(Verdict::refuse(
            Reply::dmarc_rejected(&reason),
            Reason::DmarcReject,
        )),
        None => Ok(verdict.header),
    }
}

/// `Received:` as RFC 5321 §4.4 and RFC 3848 want it, or the local form of CONTRACT.md.
fn trace_header(
    config: &Config,
    origin: &Origin,
    recipients: &[ForwardPath],
    queue_id: &str,
) -> String {
    let now = Local::now();
    match origin {
        Origin::Smtp(c) => {
            let single = match recipients {
                [one] => Some(one.to_string()),
                _ => None,
            };
            let trace = headers::SmtpTrace {
                helo: if c.helo.is_empty() {
                    "unknown"
                } else {
                    &c.helo
                },
                client_ip: c.ip,
                hostname: &config.hostname,
                esmtp: c.esmtp,
                tls: c.tls,
                authenticated: c.login.is_some(),
                queue_id,
                single_recipient: single.as_deref(),
                owner: c.owner.as_ref().map(|o| (o.uid, o.name.as_str())),
            };
            headers::received_smtp(&trace, now)
        }
        Origin::Local(l) => headers::received_local(&config.hostname, l.client.user.uid, now),
    }
}

/// The rule of [`crate::policy::dkim`] for this origin and the message's author domain.
fn signing_decision(settings: &Settings, origin: &Origin, author: Option<&str>) -> Signing {
    let mut owned;
    let signatory = match origin {
        Origin::Smtp(SmtpClient {
            login: Some(login), ..
        }) => Signatory::Login(login),
        Origin::Smtp(_) => Signatory::Inbound,
        Origin::Local(l) => {
            // A lookup that fails leaves the user owning nothing: unsigned, never
            // signed for a domain it may not own.
            owned = match settings.users.domains_owned_by(l.client.user.uid) {
                Ok(domains) => domains,
                Err(e) => {
                    tracing::warn!(event = "lookup_failed", uid = l.client.user.uid, error = %e);
                    Vec::new()
                }
            };
            // Domains granted in [local_submission.senders] are signed for; a granted
            // address alone does not give its whole domain a signature.
            let granted = settings.config.local_sender_grants(&l.client.user.name);
            owned.extend(
                granted
                    .iter()
                    .filter(|g| !g.contains('@') || g.starts_with('@'))
                    .map(|g| g.trim_start_matches('@').to_ascii_lowercase()),
            );
            Signatory::LocalUser {
                uid: l.client.user.uid,
                owned: &owned,
            }
        }
    };
    dkim::signing(signatory, author)
}

/// The `DKIM-Signature:` fields ("" when the rule says no, or no key applies). A message
/// that should be signed but cannot be is refused, for now (451) or for good when it
/// can never be signed: it is never sent unsigned instead.
fn dkim_signature(
    settings: &Settings,
    origin: &Origin,
    prefix: &str,
    message: &[u8],
) -> Result<String, Verdict> {
    if settings.signer.is_empty() || !origin.is_submission() {
        return Ok(String::new());
    }
    // A From: with several domains is left to the signer, which refuses it.
    if let Ok(author) = author_domain(message) {
        let decision = signing_decision(settings, origin, author.as_deref());
        if decision != Signing::Sign {
            tracing::info!(event = "dkim_skipped", client = %origin.log_key(), msg = %decision.explanation());
            return Ok(String::new());
        }
    }
    let mut whole = Vec::with_capacity(prefix.len() + message.len());
    whole.extend_from_slice(prefix.as_bytes());
    whole.extend_from_slice(message);
    match settings.signer.sign(&whole) {
        Ok(signature) => Ok(signature.unwrap_or_default()),
        Err(e) => {
            tracing::error!(event = "dkim_failed", client = %origin.log_key(), error = %e);
            let reply = if e.is_permanent() {
                Reply::dkim_permanent(&e.to_string())
            } else {
                Reply::dkim_failed()
            };
            Err(Verdict::refuse(reply, Reason::DkimFailed))
        }
    }
}

/// Counts the message against the hourly limits just before it is stored, or refuses
/// it if it no longer fits: parallel transactions of one sender all passed the checks
/// at MAIL and RCPT, and only one of them may take the last place.
fn reserve_budget(
    ctx: &Context,
    config: &Config,
    origin: &Origin,
    recipients: usize,
) -> Result<(), Verdict> {
    let budgets = origin.budgets(&config.limits);
    let (budget, measure, wait) =
        match ctx
            .rates
            .reserve_message(&budgets, recipients as u32, Instant::now())
        {
            Ok(()) => return Ok(()),
            Err(over) => over,
        };
    Err(policy::rate_limited(
        &budget.who,
        budget.limit(measure),
        measure.noun(),
        wait,
    ))
}
