//! Who may send what to whom: pure functions that return a [`Verdict`].
//!
//! The session asks, the policy answers, and the answer carries its own reason, so the
//! reply, the log line and (later) `postern explain` always agree. Nothing here does
//! I/O: the caller looks up facts (is the domain local, does the mailbox exist) first
//! and passes them in. A lookup that failed gives a temporary verdict, never a
//! permanent refusal.
//!
//! # Security
//!
//! No client address is trusted, loopback included: any local process can open a TCP
//! socket, so relaying to other domains needs a login, full stop. Addresses whose local
//! part could route mail elsewhere (`%`, `!`, `@`, quotes) are never relayed or
//! delivered.

use postern_proto::{ForwardPath, Mailbox, Reply, ReversePath};

use crate::config::{Role, SenderScope};

pub mod dkim;

/// Why a transaction was accepted or refused: the one vocabulary of every refusal that is
/// logged, whoever made it (the policy, the rate limits, the login guard, DMARC, the
/// connection limits, the protocol session, intake). `as_str` is the `reason=` of the
/// log line; fail2ban filters and the abuse desk's greps depend on these words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    // The policy.
    RelayDenied,
    AuthRequired,
    SenderMismatch,
    AuthorMismatch,
    UnknownUser,
    RoutedAddress,
    LookupFailed,
    RateLimited,
    // Logins.
    AuthBlocked,
    AuthWithoutTls,
    AuthCancelled,
    // Intake.
    DmarcReject,
    DkimFailed,
    SpoolFailed,
    // Connection limits.
    TooManyConnections,
    TooManyConnectionsFromClient,
    ConnectionRate,
    // The protocol session.
    MessageTooBig,
    TooManyRecipients,
    BadMessageData,
    Timeout,
    ShuttingDown,
    TooManyErrors,
    SmtputfRequired,
    ProtocolError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::RelayDenied => "relay_denied",
            Reason::AuthRequired => "auth_required",
            Reason::SenderMismatch => "sender_mismatch",
            Reason::AuthorMismatch => "author_mismatch",
            Reason::UnknownUser => "unknown_user",
            Reason::RoutedAddress => "routed_address",
            Reason::LookupFailed => "lookup_failed",
            Reason::RateLimited => "rate_limited",
            Reason::AuthBlocked => "auth_blocked",
            Reason::AuthWithoutTls => "auth_without_tls",
            Reason::AuthCancelled => "auth_cancelled",
            Reason::DmarcReject => "dmarc_reject",
            Reason::DkimFailed => "dkim_failed",
            Reason::SpoolFailed => "spool_failed",
            Reason::TooManyConnections => "too_many_connections",
            Reason::TooManyConnectionsFromClient => "too_many_connections_from_client",
            Reason::ConnectionRate => "connection_rate",
            Reason::MessageTooBig => "message_too_big",
            Reason::TooManyRecipients => "too_many_recipients",
            Reason::BadMessageData => "bad_message_data",
            Reason::Timeout => "timeout",
            Reason::ShuttingDown => "shutting_down",
            Reason::TooManyErrors => "too_many_errors",
            Reason::SmtputfRequired => "smtputf8_required",
            Reason::ProtocolError => "protocol_error",
        }
    }

    /// Why, in plain words, for `postern explain` and support staff.
    pub fn explanation(self) -> &'static str {
        match self {
            Reason::Accepted => "the transaction would be accepted",
            Reason::RelayDenied => {
                "the recipient is at another domain, and only logged-in clients may send there; no IP address is trusted, not even 127.0.0.1"
            }
            Reason::AuthRequired => {
                "this listener is for submission: clients must log in before MAIL FROM"
            }
            Reason::SenderMismatch => "a login may only send as its own address",
            Reason::AuthorMismatch => "the From: header names an address the login does not own",
            Reason::UnknownUser => "the recipient's domain is ours, but it has no such mailbox",
            Reason::RoutedAddress => {
                "the local part holds %, !, @ or quotes, which could route mail elsewhere; such addresses are never relayed or delivered"
            }
            Reason::LookupFailed => {
                "the user database could not be read, so the answer is \"try again later\""
            }
            Reason::RateLimited => "the sender reached its hourly limit",
            Reason::AuthBlocked => "too many failed logins from this client",
            Reason::AuthWithoutTls => "passwords are accepted only inside TLS",
            Reason::AuthCancelled => "the client cancelled the login",
            Reason::DmarcReject => {
                "the author's domain publishes DMARC p=reject and the message fails it"
            }
            Reason::DkimFailed => {
                "the message could not be DKIM-signed, and is never sent unsigned"
            }
            Reason::SpoolFailed => "the message could not be stored",
            Reason::TooManyConnections => "the server has reached its connection limit",
            Reason::TooManyConnectionsFromClient => "this client has too many connections open",
            Reason::ConnectionRate => "this client opens connections too fast",
            Reason::MessageTooBig => "the message is larger than the size limit",
            Reason::TooManyRecipients => "the message has more recipients than allowed",
            Reason::BadMessageData => "the message data broke the line rules (bare CR or LF)",
            Reason::Timeout => "the client was silent for too long",
            Reason::ShuttingDown => "the server is stopping",
            Reason::TooManyErrors => "the client made too many protocol errors",
            Reason::SmtputfRequired => {
                "an address needs SMTPUTF8, which the client did not ask for"
            }
            Reason::ProtocolError => "the client broke the SMTP protocol",
        }
    }

    /// What would make it succeed.
    pub fn remedy(self) -> &'static str {
        match self {
            Reason::Accepted => "",
            Reason::RelayDenied => {
                "log in with the mailbox address and password (STARTTLS, then AUTH; port 587), or use the local sendmail command"
            }
            Reason::AuthRequired => {
                "use STARTTLS, then AUTH with the mailbox address and password, before MAIL FROM"
            }
            Reason::SenderMismatch => "use the login's own address in MAIL FROM (and From:)",
            Reason::AuthorMismatch => {
                "put the login's own address in From:, or set [auth] sender_scope = \"domain\""
            }
            Reason::UnknownUser => {
                "check the address, or create the mailbox with `postern user add`"
            }
            Reason::RoutedAddress => "send to the final address directly",
            Reason::LookupFailed => "fix the passwd-file (see the server log for the error)",
            Reason::RateLimited => {
                "wait, or raise the limit in [limits] (login_messages_per_hour, uid_messages_per_hour)"
            }
            Reason::AuthBlocked => "wait until the block ends, then log in with the right password",
            Reason::AuthWithoutTls => "use STARTTLS (or port 465) before AUTH",
            Reason::AuthCancelled | Reason::ProtocolError | Reason::TooManyErrors => {
                "fix the client's SMTP dialogue"
            }
            Reason::DmarcReject => "the author's domain must sign or publish SPF for its mail",
            Reason::DkimFailed | Reason::SpoolFailed => {
                "see the server log for the error; the client retries by itself"
            }
            Reason::TooManyConnections
            | Reason::TooManyConnectionsFromClient
            | Reason::ConnectionRate => "wait, or raise the connection limits in [limits]",
            Reason::MessageTooBig => "send a smaller message, or raise limits.max_message_size",
            Reason::TooManyRecipients => {
                "send to fewer recipients at once, or raise limits.max_recipients"
            }
            Reason::BadMessageData => "end every line with CRLF",
            Reason::Timeout => "keep the connection busy, or raise the timeouts in [limits]",
            Reason::ShuttingDown => "try again once the server is back",
            Reason::SmtputfRequired => "use MAIL FROM:<...> SMTPUTF8",
        }
    }
}

/// A policy decision: the reply to send and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reply: Reply,
    pub reason: Reason,
}

impl Verdict {
    fn accept(reply: Reply) -> Verdict {
        Verdict {
            reply,
            reason: Reason::Accepted,
        }
    }

    pub fn refuse(reply: Reply, reason: Reason) -> Verdict {
        Verdict { reply, reason }
    }

    pub fn is_accepted(&self) -> bool {
        self.reason == Reason::Accepted
    }
}

/// Whether a local mailbox exists, as found by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxLookup {
    Exists,
    Missing,
    /// The user database could not be read.
    Unavailable,
}

/// Facts about a recipient the caller looked up before asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientFacts {
    pub domain_is_local: bool,
    /// Only looked up when the domain is local.
    pub mailbox: MailboxLookup,
}

/// Who is submitting a message, as far as relaying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitter<'a> {
    /// An SMTP client that has not logged in, from anywhere (loopback included).
    Anonymous,
    /// An SMTP client logged in with this mailbox login.
    Login(&'a str),
    /// A local Unix user on the submission socket: known to the kernel, so its mail
    /// may go anywhere, and every message carries its uid.
    LocalUser(&'a str),
}

impl Submitter<'_> {
    pub fn from_login(login: Option<&str>) -> Submitter<'_> {
        login.map_or(Submitter::Anonymous, Submitter::Login)
    }

    fn may_relay(self) -> bool {
        !matches!(self, Submitter::Anonymous)
    }
}

/// MAIL FROM: may this client start a transaction with this sender?
pub fn check_sender(
    role: Role,
    login: Option<&str>,
    scope: SenderScope,
    from: &ReversePath,
) -> Verdict {
    let Some(login) = login else {
        if role.requires_auth() {
            return Verdict::refuse(Reply::auth_required(), Reason::AuthRequired);
        }
        return Verdict::accept(Reply::sender_ok());
    };
    match from {
        // The null sender owns nothing that could be forged (RFC 5321 §4.5.5).
        ReversePath::Null => Verdict::accept(Reply::sender_ok()),
        ReversePath::Mailbox(m) if login_owns(login, scope, m) => {
            Verdict::accept(Reply::sender_ok())
        }
        ReversePath::Mailbox(m) => Verdict::refuse(
            Reply::sender_not_owned(&m.to_string(), login),
            Reason::SenderMismatch,
        ),
    }
}

/// A login owns its own address (compared case-insensitively) and, with
/// [`SenderScope::Domain`], every address of its domain.
fn login_owns(login: &str, scope: SenderScope, sender: &Mailbox) -> bool {
    if sender.is_routed() {
        return false;
    }
    let (sender, login) = (sender.canonical(), login.to_lowercase());
    if sender == login {
        return true;
    }
    let domain_of = |a: &str| a.rsplit_once('@').map(|(_, d)| d.to_string());
    scope == SenderScope::Domain && domain_of(&sender).is_some_and(|d| Some(d) == domain_of(&login))
}

/// What a local Unix user owns as a sender, looked up by the caller.
#[derive(Debug, Clone, Copy)]
pub struct LocalOwnership<'a> {
    pub uid: u32,
    pub user: &'a str,
    pub hostname: &'a str,
    /// The domains of the mailboxes whose account carries `uid`.
    pub owned_domains: &'a [String],
    /// `[local_submission.senders]` for this user: domains and addresses.
    pub granted: &'a [String],
    /// The uid on the account of the address asked about, if it is a mailbox.
    pub address_owner: Option<u32>,
}

/// May a local Unix user use `address` as its envelope sender? Its own
/// `user@hostname`, a mailbox carrying its uid, any address of such a mailbox's domain,
/// and what the configuration grants it; root anything. `sendmail -f` with anything else
/// is replaced by `user@hostname`, so bounces reach the sender and no customer can make
/// another's mailbox the return path of its mail.
pub fn local_user_owns(o: &LocalOwnership<'_>, address: &Mailbox) -> bool {
    if o.uid == 0 {
        return true;
    }
    if address.is_routed() {
        return false;
    }
    let address = address.canonical();
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let own = format!("{}@{}", o.user, o.hostname).to_lowercase();
    let in_domain = |d: &String| domain.eq_ignore_ascii_case(d.trim_start_matches('@'));
    address == own
        || o.address_owner == Some(o.uid)
        || o.owned_domains.iter().any(in_domain)
        || o.granted.iter().any(|g| {
            if g.contains('@') && !g.starts_with('@') {
                g.eq_ignore_ascii_case(&address)
            } else {
                in_domain(g)
            }
        })
}

/// The `From:` header of a logged-in client's message: every author address must be
/// owned by the login, as the envelope sender must. `authors` are the header's
/// addresses; a message without any is left to the envelope rule.
pub fn check_author(login: &str, scope: SenderScope, authors: &[String]) -> Verdict {
    for author in authors {
        let owned = Mailbox::parse(author).is_ok_and(|m| login_owns(login, scope, &m));
        if !owned {
            return Verdict::refuse(
                Reply::author_not_owned(author, login),
                Reason::AuthorMismatch,
            );
        }
    }
    Verdict::accept(Reply::sender_ok())
}

/// RCPT TO: may this recipient be added?
pub fn check_recipient(
    submitter: Submitter<'_>,
    to: &ForwardPath,
    facts: RecipientFacts,
) -> Verdict {
    if let ForwardPath::Mailbox(m) = to
        && m.is_routed()
    {
        return Verdict::refuse(Reply::routed_address_refused(), Reason::RoutedAddress);
    }
    if facts.domain_is_local {
        return match facts.mailbox {
            MailboxLookup::Exists => Verdict::accept(Reply::recipient_ok()),
            MailboxLookup::Missing => {
                Verdict::refuse(Reply::unknown_user(&to.to_string()), Reason::UnknownUser)
            }
            MailboxLookup::Unavailable => {
                Verdict::refuse(Reply::lookup_failed(), Reason::LookupFailed)
            }
        };
    }
    if submitter.may_relay() {
        return Verdict::accept(Reply::recipient_ok());
    }
    Verdict::refuse(Reply::relay_denied(), Reason::RelayDenied)
}

/// The sender has reached an hourly limit of `what` ("messages", "recipients");
/// `wait` is when the next send fits.
pub fn rate_limited(who: &str, limit: u32, what: &str, wait: std::time::Duration) -> Verdict {
    let minutes = wait.as_secs().div_ceil(60).max(1);
    Verdict::refuse(
        Reply::rate_limited(who, limit, what, minutes),
        Reason::RateLimited,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn rcpt(s: &str) -> ForwardPath {
        ForwardPath::Mailbox(mailbox(s))
    }

    const LOCAL_EXISTS: RecipientFacts = RecipientFacts {
        domain_is_local: true,
        mailbox: MailboxLookup::Exists,
    };
    const LOCAL_MISSING: RecipientFacts = RecipientFacts {
        domain_is_local: true,
        mailbox: MailboxLookup::Missing,
    };
    const REMOTE: RecipientFacts = RecipientFacts {
        domain_is_local: false,
        mailbox: MailboxLookup::Missing,
    };

    #[test]
    fn submission_roles_require_auth_before_mail() {
        let from = ReversePath::Mailbox(mailbox("u@example.com"));
        for role in [Role::Submission, Role::Submissions] {
            let v = check_sender(role, None, SenderScope::Login, &from);
            assert_eq!(v.reason, Reason::AuthRequired);
            assert_eq!(v.reply.code, 530);
        }
        assert!(check_sender(Role::Mx, None, SenderScope::Login, &from).is_accepted());
    }

    #[test]
    fn authenticated_sender_must_be_owned() {
        let own = ReversePath::Mailbox(mailbox("User@Example.com"));
        assert!(
            check_sender(
                Role::Submission,
                Some("user@example.com"),
                SenderScope::Login,
                &own
            )
            .is_accepted()
        );
        let other = ReversePath::Mailbox(mailbox("boss@example.com"));
        let v = check_sender(
            Role::Submission,
            Some("user@example.com"),
            SenderScope::Login,
            &other,
        );
        assert_eq!(v.reason, Reason::SenderMismatch);
        assert_eq!(
            (v.reply.code, v.reply.enhanced.map(|e| e.to_string())),
            (553, Some("5.7.1".into()))
        );
        assert!(
            check_sender(
                Role::Mx,
                Some("user@example.com"),
                SenderScope::Login,
                &ReversePath::Null
            )
            .is_accepted()
        );
    }

    #[test]
    fn with_the_domain_scope_a_login_sends_as_any_address_of_its_domain_only() {
        let wordpress = ReversePath::Mailbox(mailbox("wordpress@example.com"));
        let login = Some("wp@example.com");
        let v = check_sender(Role::Submission, login, SenderScope::Login, &wordpress);
        assert_eq!(v.reason, Reason::SenderMismatch);
        assert!(
            v.reply.text().contains("sender_scope"),
            "{}",
            v.reply.text()
        );
        let domain = SenderScope::Domain;
        assert!(check_sender(Role::Submission, login, domain, &wordpress).is_accepted());
        let other = ReversePath::Mailbox(mailbox("x@other.example"));
        let v = check_sender(Role::Submission, login, domain, &other);
        assert_eq!(v.reason, Reason::SenderMismatch);
    }

    #[test]
    fn the_from_header_must_be_owned_by_the_login_too() {
        let own = ["User@Example.com".to_string()];
        let login = "user@example.com";
        assert!(check_author(login, SenderScope::Login, &own).is_accepted());
        assert!(check_author(login, SenderScope::Login, &[]).is_accepted());
        let forged = ["ceo@bank.example".to_string()];
        let v = check_author(login, SenderScope::Login, &forged);
        assert_eq!((v.reason, v.reply.code), (Reason::AuthorMismatch, 550));
        let sibling = ["info@example.com".to_string()];
        assert_eq!(
            check_author(login, SenderScope::Login, &sibling).reason,
            Reason::AuthorMismatch
        );
        assert!(check_author(login, SenderScope::Domain, &sibling).is_accepted());
    }

    #[test]
    fn a_local_user_sends_as_what_it_owns_only() {
        let owned = ["site.example".to_string()];
        let granted = ["shop.example".to_string(), "info@other.example".to_string()];
        let o = LocalOwnership {
            uid: 1001,
            user: "site1",
            hostname: "host.example",
            owned_domains: &owned,
            granted: &granted,
            address_owner: None,
        };
        for mine in [
            "site1@host.example",
            "anyone@site.example",
            "sales@shop.example",
            "INFO@other.example",
        ] {
            assert!(local_user_owns(&o, &mailbox(mine)), "{mine}");
        }
        for theirs in [
            "site2@host.example",
            "ceo@victim.example",
            "sales@other.example",
            "x@sub.site.example",
        ] {
            assert!(!local_user_owns(&o, &mailbox(theirs)), "{theirs}");
        }
        let mailbox_of_mine = LocalOwnership {
            address_owner: Some(1001),
            ..o
        };
        assert!(local_user_owns(
            &mailbox_of_mine,
            &mailbox("box@elsewhere.example")
        ));
        let root = LocalOwnership { uid: 0, ..o };
        assert!(local_user_owns(&root, &mailbox("ceo@victim.example")));
    }

    #[test]
    fn relay_needs_a_login_on_every_role() {
        let v = check_recipient(Submitter::Anonymous, &rcpt("x@remote.test"), REMOTE);
        assert_eq!(v.reason, Reason::RelayDenied);
        assert_eq!(v.reply.code, 550);
        assert!(v.reply.text().starts_with("Relaying denied"));
        assert!(
            check_recipient(
                Submitter::Login("u@example.com"),
                &rcpt("x@remote.test"),
                REMOTE
            )
            .is_accepted()
        );
    }

    #[test]
    fn local_users_may_relay_but_unknown_local_mailboxes_are_still_refused() {
        let who = Submitter::LocalUser("www-data");
        assert!(check_recipient(who, &rcpt("x@remote.test"), REMOTE).is_accepted());
        let v = check_recipient(who, &rcpt("nobody@example.com"), LOCAL_MISSING);
        assert_eq!(v.reason, Reason::UnknownUser);
    }

    #[test]
    fn rate_limit_verdict_is_temporary_and_says_when() {
        let v = rate_limited(
            "uid 1001 (www)",
            50,
            "messages",
            std::time::Duration::from_secs(125),
        );
        assert_eq!(v.reason, Reason::RateLimited);
        assert_eq!(
            (v.reply.code, v.reply.enhanced.map(|e| e.to_string())),
            (450, Some("4.7.1".into()))
        );
        assert!(v.reply.text().contains("3 minutes"), "{}", v.reply.text());
    }

    #[test]
    fn local_mailboxes_need_no_login_but_must_exist() {
        assert!(
            check_recipient(Submitter::Anonymous, &rcpt("u@example.com"), LOCAL_EXISTS)
                .is_accepted()
        );
        let v = check_recipient(
            Submitter::Anonymous,
            &rcpt("nobody@example.com"),
            LOCAL_MISSING,
        );
        assert_eq!(v.reason, Reason::UnknownUser);
        assert_eq!(
            v.reply.enhanced.map(|e| e.to_string()),
            Some("5.1.1".into())
        );
    }

    #[test]
    fn broken_user_database_is_a_temporary_failure() {
        let facts = RecipientFacts {
            domain_is_local: true,
            mailbox: MailboxLookup::Unavailable,
        };
        let v = check_recipient(Submitter::Anonymous, &rcpt("u@example.com"), facts);
        assert_eq!(v.reason, Reason::LookupFailed);
        assert!(v.reply.is_transient());
    }

    #[test]
    fn routed_local_parts_never_relay_even_when_authenticated() {
        for addr in [
            "x%remote.test@example.com",
            "remote.test!x@example.com",
            "\"x@remote.test\"@example.com",
        ] {
            for who in [
                Submitter::Anonymous,
                Submitter::Login("u@example.com"),
                Submitter::LocalUser("www"),
            ] {
                let v = check_recipient(who, &rcpt(addr), LOCAL_EXISTS);
                assert_eq!(v.reason, Reason::RoutedAddress, "{addr}");
            }
        }
    }
}
