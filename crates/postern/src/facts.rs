//! Looks up what the policy needs to know about a recipient: is its domain ours, and
//! does the mailbox exist. The policy itself does no I/O; this is the I/O it needs,
//! shared by SMTP sessions and local submission so both decide alike.

use postern_proto::ForwardPath;

use crate::auth::Credentials;
use crate::config::Config;
use crate::policy::{MailboxLookup, RecipientFacts};

/// The address a recipient is delivered to. `<postmaster>` (RFC 5321 §4.5.1) is the
/// postmaster of our first local domain; the postmaster of a local domain that has no
/// mailbox of that name goes to the `postmaster` address of the configuration, because
/// RFC 5321 requires every domain we serve to accept mail for its postmaster.
pub fn recipient_address(config: &Config, users: &dyn Credentials, rcpt: &ForwardPath) -> String {
    let address = match (rcpt, config.local_domains.first()) {
        (ForwardPath::Postmaster, Some(domain)) => format!("postmaster@{domain}"),
        (ForwardPath::Postmaster, None) => format!("postmaster@{}", config.hostname),
        (ForwardPath::Mailbox(m), _) => m.to_string(),
    };
    match &config.postmaster {
        Some(target) if is_local_postmaster(config, &address) && !has_mailbox(users, &address) => {
            target.clone()
        }
        _ => address,
    }
}

/// The addresses to deliver to, each once: `A@example.com` and `a@example.com`, or two
/// names for the postmaster, are one delivery.
pub fn delivery_addresses(
    config: &Config,
    users: &dyn Credentials,
    rcpts: &[ForwardPath],
) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    rcpts
        .iter()
        .map(|r| recipient_address(config, users, r))
        .filter(|a| seen.insert(a.to_lowercase()))
        .collect()
}

fn is_local_postmaster(config: &Config, address: &str) -> bool {
    address.rsplit_once('@').is_some_and(|(local, domain)| {
        local.eq_ignore_ascii_case("postmaster") && config.is_local_domain(domain)
    })
}

fn has_mailbox(users: &dyn Credentials, address: &str) -> bool {
    matches!(users.lookup(address), Ok(Some(_)))
}

pub fn recipient_facts(
    config: &Config,
    users: &dyn Credentials,
    to: &ForwardPath,
) -> RecipientFacts {
    let domain_is_local = match to {
        ForwardPath::Postmaster => !config.local_domains.is_empty(),
        ForwardPath::Mailbox(m) => m.domain().name().is_some_and(|d| config.is_local_domain(d)),
    };
    if !domain_is_local {
        return RecipientFacts {
            domain_is_local,
            mailbox: MailboxLookup::Missing,
        };
    }
    let address = recipient_address(config, users, to);
    if config.postmaster.as_ref() == Some(&address) {
        // Redirected to the administrator's address, wherever it is.
        return RecipientFacts {
            domain_is_local,
            mailbox: MailboxLookup::Exists,
        };
    }
    let mailbox = match users.lookup(&address) {
        Ok(Some(_)) => MailboxLookup::Exists,
        Ok(None) => MailboxLookup::Missing,
        Err(e) => {
            tracing::warn!(event = "lookup_failed", address = %address, error = %e);
            MailboxLookup::Unavailable
        }
    };
    RecipientFacts {
        domain_is_local,
        mailbox,
    }
}
