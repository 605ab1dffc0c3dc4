//! One local submission: from a [`Request`] and the raw message to an [`intake`]
//! submission, through the same policy as SMTP mail. What is `sendmail`'s own stays
//! here: the default sender, `-t` and Bcc removal, a `From:` when the script wrote
//! none, the PHP script's name, and the sysexits codes of the answer.

use std::time::Instant;

use postern_proto::{ForwardPath, Mailbox, ReversePath};

use super::message::Prepared;
use super::request::{Request, Response, exit};
use crate::attribution::LocalClient;
use crate::context::{Context, Settings};
use crate::facts;
use crate::intake;
use crate::policy::{self, LocalOwnership, Reason, Submitter, Verdict};
use crate::queue::QueueId;
use crate::ratelimit::Measure;

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
    let sender = owned_sender(&settings, client, sender);
    let mut message = Prepared::parse(raw)
        .map_err(|e| Response::new(exit::DATA_ERROR, format!("malformed message: {e}")))?;
    let script = message
        .field_value("X-PHP-Originating-Script")
        .map(|v| originating_script(&v));
    let origin = intake::Origin::Local(intake::LocalSubmitter {
        client: client.clone(),
        script,
    });
    let log_refusal = |verdict: &Verdict, rcpt: Option<&ForwardPath>| {
        let rcpt = rcpt.map(ToString::to_string);
        origin.log_rejected(verdict.reason, &sender.to_string(), rcpt.as_deref());
    };
    let mut wanted = request.recipients.clone();
    if request.extract_recipients {
        let from_headers = message
            .header_recipients()
            .map_err(|e| Response::new(exit::DATA_ERROR, e.to_string()))?;
        wanted.extend(from_headers);
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
            log_refusal(&verdict, Some(rcpt));
            return Err(refusal(&verdict));
        }
    }
    let budgets = origin.budgets(&config.limits);
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
            log_refusal(&verdict, None);
            return Err(refusal(&verdict));
        }
    }

    if !message.has_field("From") {
        let from = from_field(
            client,
            request.full_name.as_deref(),
            &sender,
            &config.hostname,
        );
        message.fields.insert(0, from.into_bytes());
    }
    let submission = intake::Submission {
        origin,
        sender,
        recipients: rcpts,
        message: message.into_bytes(),
    };
    intake::accept(ctx, &settings, submission)
        .await
        .map_err(|verdict| refusal(&verdict))
}

/// `-f` with an address the user does not own ([`policy::local_user_owns`]) becomes its
/// own `user@hostname`, and the log says so: the message still goes out (a contact form
/// may put a visitor's address in From:), but bounces come back to the user, and no
/// customer makes another's mailbox the return path of its mail.
fn owned_sender(settings: &Settings, client: &LocalClient, requested: ReversePath) -> ReversePath {
    let ReversePath::Mailbox(address) = &requested else {
        return requested;
    };
    let config = &settings.config;
    let uid = client.user.uid;
    let owned_domains = settings.users.domains_owned_by(uid).unwrap_or_default();
    let address_owner = settings
        .users
        .lookup(&address.to_string())
        .ok()
        .flatten()
        .and_then(|account| account.owner)
        .map(|(owner, _)| owner);
    let ownership = LocalOwnership {
        uid,
        user: &client.user.name,
        hostname: &config.hostname,
        owned_domains: &owned_domains,
        granted: config.local_sender_grants(&client.user.name),
        address_owner,
    };
    if policy::local_user_owns(&ownership, address) {
        return requested;
    }
    let own = format!("{}@{}", client.user.name, config.hostname);
    match Mailbox::parse(&own) {
        Ok(mailbox) => {
            tracing::info!(event = "sender_rewritten", origin = "local", uid, user = %client.user.name, requested = %address, sender = %own, msg = "-f names an address this user does not own: its own address is the envelope sender");
            ReversePath::Mailbox(mailbox)
        }
        // A user name that makes no address: keep the null sender rather than theirs.
        Err(_) => ReversePath::Null,
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

/// sysexits for a refusal: temporary → 75, no such user → 67, a message that can never
/// be signed → 65, else 77.
fn refusal(verdict: &Verdict) -> Response {
    let code = match verdict.reason {
        _ if verdict.reply.is_transient() => exit::TEMPORARY,
        Reason::UnknownUser => exit::NO_USER,
        Reason::DkimFailed => exit::DATA_ERROR,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::UnixUser;

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
