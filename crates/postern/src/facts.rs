//! Looks up what the policy needs to know about a recipient: is its domain ours, and
//! does the mailbox exist. The policy itself does no I/O; this is the I/O it needs,
//! shared by SMTP sessions and local submission so both decide alike.

use postern_proto::ForwardPath;

use crate::auth::Credentials;
use crate::config::Config;
use crate::policy::{MailboxLookup, RecipientFacts};

/// The address a recipient is delivered to: `<postmaster>` (RFC 5321 §4.5.1) is the
/// postmaster of our first local domain.
pub fn recipient_address(config: &Config, rcpt: &ForwardPath) -> String {
    match (rcpt, config.local_domains.first()) {
        (ForwardPath::Postmaster, Some(domain)) => format!("postmaster@{domain}"),
        (ForwardPath::Postmaster, None) => format!("postmaster@{}", config.hostname),
        (ForwardPath::Mailbox(m), _) => m.to_string(),
    }
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
    let address = recipient_address(config, to);
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
