//! One local submission: from a [`Request`] and the raw message to a queued message,
//! through the same policy and spool as SMTP mail.

use std::sync::Arc;
use std::time::Instant;

use chrono::Local;
use postern_proto::{ForwardPath, Mailbox, ReversePath};

use super::attribution::LocalClient;
use super::message::Prepared;
use super::request::{Request, Response, exit};
use crate::facts;
use crate::headers;
use crate::policy::{self, Reason, Submitter, Verdict};
use crate::queue::{Envelope, Origin, QueueId};
use crate::ratelimit::{self, Measure};
use crate::server::Context;

/// Queues a locally submitted message, or says why not (with the sysexits code).
pub async fn submit(ctx: &Context, client: &LocalClient, request: Request, raw: &[u8]) -> Response {
    match queue_message(ctx, client, request, raw).await {
        Ok(id) => Response::new(exit::OK, format!("queued as {id}")),
        Err(response) => response,
    }
}

async fn queue_message(
    ctx: &Context,
    client: &LocalClient,
    request: Request,
    raw: &[u8],
) -> Result<QueueId, Response> {
    let settings = ctx.settings();
    let config = &settings.config;
    let sender = envelope_sender(&config.hostname, client, request.sender.as_deref())?;
    let mut message = Prepared::parse(raw)
        .map_err(|e| Response::new(exit::DATA_ERROR, format!("malformed message: {e}")))?;
    let mut wanted = request.recipients.clone();
    if request.extract_recipients {
        wanted.extend(message.header_recipients());
        message.remove_bcc();
    }
    let rcpts = parse_recipients(&wanted)?;
    if rcpts.len() > config.limits.max_recipients {
        return Err(Response::new(
            exit::NO_PERMISSION,
            format!(
                "too many recipients ({}): at most {} per message; send the rest in another message",
                rcpts.len(),
                config.limits.max_recipients
            ),
        ));
    }
    if rcpts.is_empty() {
        return Err(Response::new(
            exit::USAGE,
            "no recipients: name them as arguments, or use -t to take them from To:, Cc: and Bcc:",
        ));
    }
    for rcpt in &rcpts {
        let found = facts::recipient_facts(config, settings.users.as_ref(), rcpt);
        let verdict = policy::check_recipient(Submitter::LocalUser(&client.user.name), rcpt, found);
        if !verdict.is_accepted() {
            log_refusal(client, &verdict, &sender, Some(rcpt));
            return Err(refusal(&verdict));
        }
    }
    let budgets = ratelimit::budgets(
        &config.limits,
        None,
        Some((client.user.uid, &client.user.name)),
        None,
    );
    for (measure, count, what) in [
        (Measure::Messages, 1, "messages"),
        (Measure::Recipients, rcpts.len() as u32, "recipients"),
    ] {
        if let Some(budget) = budgets
            .iter()
            .find(|b| b.limit(measure) > 0 && count > b.limit(measure))
        {
            // Can never fit, however long the caller waits: a permanent refusal.
            return Err(Response::new(
                exit::NO_PERMISSION,
                format!(
                    "{} may send at most {} {what} per hour; this message alone has {count}",
                    budget.who,
                    budget.limit(measure)
                ),
            ));
        }
        if let Err((budget, wait)) = ctx
            .rates
            .check_all(&budgets, measure, count, Instant::now())
        {
            let verdict = policy::rate_limited(&budget.who, budget.limit(measure), what, wait);
            log_refusal(client, &verdict, &sender, None);
            return Err(refusal(&verdict));
        }
    }

    let queue_id = QueueId::generate();
    let now = Local::now();
    let mut prefix = headers::received_local(&config.hostname, client.user.uid, now);
    if !message.has_field("From") {
        prefix.push_str(&from_field(
            client,
            request.full_name.as_deref(),
            &sender,
            &config.hostname,
        ));
    }
    prefix.push_str(&headers::missing_submission_headers(
        &message.header_section(),
        &config.hostname,
        queue_id.as_str(),
        now,
    ));
    let script = message
        .field_value("X-PHP-Originating-Script")
        .map(|v| originating_script(&v));
    let body = message.into_bytes();
    let prefix = dkim_signature(&settings.signer, &prefix, &body)? + &prefix;
    let mut stored = prefix.into_bytes();
    stored.extend_from_slice(&body);
    let stored = Arc::new(stored);
    let size = stored.len() as u64;
    if size > config.limits.max_message_size as u64 {
        return Err(Response::new(
            exit::DATA_ERROR,
            format!(
                "message too big: the limit is {} bytes",
                config.limits.max_message_size
            ),
        ));
    }
    let addresses = facts::delivery_addresses(config, settings.users.as_ref(), &rcpts);
    let envelope = Envelope::new(
        queue_id.clone(),
        sender.to_string(),
        addresses,
        Origin::Local {
            uid: client.user.uid,
            user: client.user.name.clone(),
        },
        size,
        chrono::Utc::now().timestamp(),
    );
    // Counted now, under one lock with the check: parallel submissions by one user all
    // passed the check above, and only one of them may take the last place.
    let reserved = ctx
        .rates
        .reserve_message(&budgets, rcpts.len() as u32, Instant::now());
    if let Err((budget, measure, wait)) = reserved {
        let verdict =
            policy::rate_limited(&budget.who, budget.limit(measure), measure.noun(), wait);
        log_refusal(client, &verdict, &sender, None);
        return Err(refusal(&verdict));
    }
    let log_accepted = accepted_line(client, &envelope, script);
    let accepted = crate::intake::accept(&ctx.spool, &ctx.delivery, envelope, stored, log_accepted);
    if let Err(e) = accepted.await {
        tracing::error!(event = "spool_failed", queue_id = %queue_id, uid = client.user.uid, error = %e);
        return Err(Response::new(
            exit::TEMPORARY,
            "the message could not be stored (the server's disk or queue has a problem); try again later",
        ));
    }
    crate::metrics::message_accepted("local");
    Ok(queue_id)
}

/// The DKIM-Signature when the From: domain has a key; a message that cannot be signed
/// is never sent unsigned.
fn dkim_signature(
    signer: &crate::mailauth::sign::Signer,
    prefix: &str,
    body: &[u8],
) -> Result<String, Response> {
    if signer.is_empty() {
        return Ok(String::new());
    }
    let mut whole = Vec::with_capacity(prefix.len() + body.len());
    whole.extend_from_slice(prefix.as_bytes());
    whole.extend_from_slice(body);
    match signer.sign(&whole) {
        Ok(signature) => Ok(signature.unwrap_or_default()),
        Err(e) if e.is_permanent() => Err(Response::new(
            exit::DATA_ERROR,
            format!("cannot DKIM-sign this message: {e}"),
        )),
        Err(e) => {
            tracing::error!(event = "dkim_failed", error = %e);
            Err(Response::new(
                exit::TEMPORARY,
                "the message could not be DKIM-signed; try again later",
            ))
        }
    }
}

/// `-f` when given (`""` or `<>` is the null sender), else `user@hostname`.
fn envelope_sender(
    hostname: &str,
    client: &LocalClient,
    requested: Option<&str>,
) -> Result<ReversePath, Response> {
    let text = match requested {
        Some("") => return Ok(ReversePath::Null),
        Some(s) => s.to_string(),
        None => format!("{}@{hostname}", client.user.name),
    };
    Mailbox::parse(&text)
        .map(ReversePath::Mailbox)
        .map_err(|e| Response::new(exit::NO_USER, format!("bad sender address {text:?}: {e}")))
}

/// Parses and de-duplicates recipients (case-insensitively).
fn parse_recipients(texts: &[String]) -> Result<Vec<ForwardPath>, Response> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for text in texts {
        let mailbox = Mailbox::parse(text.trim()).map_err(|e| {
            Response::new(
                exit::NO_USER,
                format!("bad recipient address {text:?}: {e}"),
            )
        })?;
        if seen.insert(mailbox.canonical()) {
            out.push(ForwardPath::Mailbox(mailbox));
        }
    }
    Ok(out)
}

/// sysexits for a policy refusal: temporary → 75, no such user → 67, else 77.
fn refusal(verdict: &Verdict) -> Response {
    let code = match verdict.reason {
        _ if verdict.reply.is_transient() => exit::TEMPORARY,
        Reason::UnknownUser => exit::NO_USER,
        _ => exit::NO_PERMISSION,
    };
    Response::new(code, verdict.reply.text())
}

/// `From: Full Name <sender>`, the name from `-F` or the user's GECOS entry.
fn from_field(
    client: &LocalClient,
    full_name: Option<&str>,
    sender: &ReversePath,
    hostname: &str,
) -> String {
    let address = match sender {
        ReversePath::Mailbox(m) => m.to_string(),
        ReversePath::Null => format!("{}@{hostname}", client.user.name),
    };
    let name = full_name.unwrap_or(&client.user.full_name).trim();
    if name.is_empty() {
        return format!("From: <{address}>\r\n");
    }
    format!("From: {} <{address}>\r\n", display_name(name))
}

/// A display name as RFC 5322 wants it: an encoded word for non-ASCII (RFC 2047), a
/// quoted string otherwise. Control characters are dropped, so a name can never
/// start a new header line.
fn display_name(name: &str) -> String {
    use base64::Engine as _;
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if !clean.is_ascii() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(clean.as_bytes());
        return format!("=?UTF-8?B?{encoded}?=");
    }
    let escaped = clean.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// PHP's `X-PHP-Originating-Script: UID:script.php` names the script; the uid part is
/// PHP's claim, the kernel's uid is logged beside it.
fn originating_script(value: &str) -> String {
    value
        .split_once(':')
        .map_or(value, |(_, script)| script)
        .trim()
        .to_string()
}

/// The `accepted` log line of a message, to write once it is committed.
fn accepted_line(
    client: &LocalClient,
    envelope: &Envelope,
    script: Option<String>,
) -> impl FnOnce() + Send + 'static {
    let (client, queue_id, from) = (
        client.clone(),
        envelope.queue_id.clone(),
        envelope.from.clone(),
    );
    let (nrcpt, size) = (envelope.recipients.len(), envelope.size);
    move || {
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
            script = script.as_deref(),
            parent_pid = client.parent.as_ref().map(|p| p.pid),
            parent_cmd = client.parent.as_ref().map(|p| p.cmd.as_str()),
            cwd = client.parent.as_ref().and_then(|p| p.cwd.as_deref()),
        );
    }
}

fn log_refusal(
    client: &LocalClient,
    verdict: &Verdict,
    from: &ReversePath,
    rcpt: Option<&ForwardPath>,
) {
    tracing::info!(
        event = "rejected",
        origin = "local",
        uid = client.user.uid,
        user = %client.user.name,
        pid = client.process.as_ref().map(|p| p.pid),
        reason = verdict.reason.as_str(),
        from = %from,
        rcpt = rcpt.map(ToString::to_string),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::attribution::UnixUser;

    fn client() -> LocalClient {
        LocalClient {
            user: UnixUser {
                uid: 1001,
                name: "site1".into(),
                full_name: "Site One".into(),
            },
            gid: 1001,
            process: None,
            parent: None,
        }
    }

    #[test]
    fn default_sender_is_the_user_at_our_hostname() {
        let s = envelope_sender("mail.example.com", &client(), None).unwrap();
        assert_eq!(s.to_string(), "site1@mail.example.com");
        assert_eq!(
            envelope_sender("h", &client(), Some("")).unwrap(),
            ReversePath::Null
        );
    }

    #[test]
    fn sender_with_a_line_break_is_refused_with_67() {
        let err = envelope_sender("h", &client(), Some("a@example.com\nBcc: evil@remote.test"))
            .unwrap_err();
        assert_eq!(err.exit, exit::NO_USER);
    }

    #[test]
    fn recipients_are_deduplicated_and_bad_ones_refused() {
        let r = parse_recipients(&[
            "A@example.com".into(),
            "a@EXAMPLE.com".into(),
            "b@example.com".into(),
        ])
        .unwrap();
        assert_eq!(r.len(), 2);
        let err =
            parse_recipients(&["a@example.com\r\nRCPT TO:<evil@remote.test>".into()]).unwrap_err();
        assert_eq!(err.exit, exit::NO_USER);
    }

    #[test]
    fn from_field_uses_gecos_or_f_and_encodes_safely() {
        let sender = ReversePath::Mailbox(Mailbox::parse("site1@h.test").unwrap());
        assert_eq!(
            from_field(&client(), None, &sender, "h.test"),
            "From: \"Site One\" <site1@h.test>\r\n"
        );
        assert_eq!(
            from_field(&client(), Some("Jörg \"J\"\r\nBcc: x"), &sender, "h.test"),
            "From: =?UTF-8?B?SsO2cmcgIkoiQmNjOiB4?= <site1@h.test>\r\n"
        );
        assert_eq!(
            from_field(&client(), Some("A \"B\""), &sender, "h"),
            "From: \"A \\\"B\\\"\" <site1@h.test>\r\n"
        );
    }

    #[test]
    fn script_comes_from_the_php_header() {
        assert_eq!(
            originating_script("1001:/var/www/site/contact.php"),
            "/var/www/site/contact.php"
        );
        assert_eq!(originating_script("contact.php"), "contact.php");
    }

    #[test]
    fn refusals_map_to_sysexits() {
        let unknown = Verdict {
            reply: postern_proto::Reply::unknown_user("x@example.com"),
            reason: Reason::UnknownUser,
        };
        assert_eq!(refusal(&unknown).exit, exit::NO_USER);
        let limited =
            policy::rate_limited("uid 1", 1, "messages", std::time::Duration::from_secs(60));
        assert_eq!(refusal(&limited).exit, exit::TEMPORARY);
    }
}
