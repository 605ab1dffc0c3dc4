//! Whether postern puts its DKIM signature on a message: a pure rule, so that intake
//! and `postern explain` agree.
//!
//! A signature vouches for the `From:` domain. On a shared host, whoever submits a
//! message must not get another customer's domain signed by writing it into `From:`.
//! So a login is signed for its own domain (and its subdomains); a local Unix user for
//! the domains of the mailboxes whose account carries its uid; root for any domain (it
//! can read the keys anyway). Mail from outside is never signed by us. What is not
//! signed is still delivered, unsigned.

/// Who a message would be signed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatory<'a> {
    /// Mail from outside (mx, no login).
    Inbound,
    /// An SMTP client logged in with this mailbox login.
    Login(&'a str),
    /// A local Unix user; `owned` are the domains of the mailboxes its uid owns.
    LocalUser { uid: u32, owned: &'a [String] },
}

/// The decision, with its reason when the answer is no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// Sign with the keys of the author's domain (when it has any).
    Sign,
    /// Mail from outside: not ours to sign.
    NotSubmitted,
    /// The message has no `From:` address with a domain.
    NoAuthor,
    /// The `From:` domain is not one the submitter may sign for.
    NotOwned { author: String },
}

impl Signing {
    /// Why not, in plain words (for the log and `postern explain`).
    pub fn explanation(&self) -> String {
        match self {
            Signing::Sign => "signed with the keys of the From: domain, if it has any".into(),
            Signing::NotSubmitted => "mail from outside is not signed by this server".into(),
            Signing::NoAuthor => "the message has no From: address with a domain".into(),
            Signing::NotOwned { author } => {
                format!("From: is at {author}, which the sender does not own: delivered unsigned")
            }
        }
    }
}

/// Decides for `author`, the one domain of the message's `From:` (lower case).
pub fn signing(signatory: Signatory<'_>, author: Option<&str>) -> Signing {
    if signatory == Signatory::Inbound {
        return Signing::NotSubmitted;
    }
    let Some(author) = author else {
        return Signing::NoAuthor;
    };
    let owned = match signatory {
        Signatory::Inbound => false,
        Signatory::Login(login) => login
            .rsplit_once('@')
            .is_some_and(|(_, domain)| is_within(author, domain)),
        Signatory::LocalUser { uid: 0, .. } => true,
        Signatory::LocalUser { owned, .. } => owned.iter().any(|d| is_within(author, d)),
    };
    if owned {
        Signing::Sign
    } else {
        Signing::NotOwned {
            author: author.to_string(),
        }
    }
}

/// `author` is `domain` or one of its subdomains (case-insensitively).
fn is_within(author: &str, domain: &str) -> bool {
    let (author, domain) = (author.to_ascii_lowercase(), domain.to_ascii_lowercase());
    !domain.is_empty() && (author == domain || author.ends_with(&format!(".{domain}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_signed_for_its_own_domain_and_its_subdomains_only() {
        let login = Signatory::Login("alice@example.com");
        assert_eq!(signing(login, Some("example.com")), Signing::Sign);
        assert_eq!(signing(login, Some("news.example.com")), Signing::Sign);
        assert!(matches!(
            signing(login, Some("other.test")),
            Signing::NotOwned { .. }
        ));
        // A suffix that is not a label boundary is another domain.
        assert!(matches!(
            signing(login, Some("badexample.com")),
            Signing::NotOwned { .. }
        ));
    }

    #[test]
    fn a_local_user_is_signed_only_for_the_domains_of_its_mailboxes() {
        let owned = ["site.example".to_string()];
        let user = Signatory::LocalUser {
            uid: 1001,
            owned: &owned,
        };
        assert_eq!(signing(user, Some("site.example")), Signing::Sign);
        assert!(matches!(
            signing(user, Some("victim.example")),
            Signing::NotOwned { .. }
        ));
        let nothing = Signatory::LocalUser {
            uid: 1002,
            owned: &[],
        };
        assert!(matches!(
            signing(nothing, Some("site.example")),
            Signing::NotOwned { .. }
        ));
        let root = Signatory::LocalUser { uid: 0, owned: &[] };
        assert_eq!(signing(root, Some("anything.example")), Signing::Sign);
    }

    #[test]
    fn mail_from_outside_and_mail_without_an_author_are_not_signed() {
        assert_eq!(
            signing(Signatory::Inbound, Some("example.com")),
            Signing::NotSubmitted
        );
        assert_eq!(
            signing(Signatory::Login("a@example.com"), None),
            Signing::NoAuthor
        );
    }
}
