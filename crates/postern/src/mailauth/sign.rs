//! DKIM signing (RFC 6376; Ed25519 per RFC 8463): the `DKIM-Signature:` header fields
//! for a message we send, made with every configured key of its author's domain.
//!
//! The `From:` domain picks the keys: the domain's own, else those of the nearest parent
//! domain that has keys (`news.example.com` signs with `example.com`'s). Canonicalization
//! is relaxed/relaxed; the signed header fields are those of [`SIGNED_HEADERS`] that the
//! message has, and `From` once more, so that no second `From:` can be added later.
//!
//! This module must not decide whether a message should be signed (the caller signs
//! authenticated and local submissions only, never mail relayed inbound on `mx`), nor
//! change the message: the caller prepends the text [`Signer::sign`] returns, to the
//! exact bytes that will be queued and sent. Any failure is an error, never an unsigned
//! success: the caller defers the message (451).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use mail_auth::common::crypto::{
    Algorithm as SignatureAlgorithm, DkimKey as PrivateKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter as _, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_parser::{HeaderName, Message, MessageParser};

use super::{DkimError, keys};
use crate::config::Config;

/// The header fields signed when present, in this order; `From` is listed once more.
pub const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
];

/// The signing keys of the configuration, by domain. Loaded once; signing reads no file.
pub struct Signer {
    /// Lower-case ASCII domain → its keys, in configuration order.
    domains: BTreeMap<String, Vec<Key>>,
}

struct Key {
    selector: String,
    path: PathBuf,
    private: PrivateKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (domain, keys) in &self.domains {
            let selectors: Vec<String> = keys
                .iter()
                .map(|k| format!("{} ({})", k.selector, k.path.display()))
                .collect();
            map.entry(domain, &selectors);
        }
        map.finish()
    }
}

impl Signer {
    /// Loads every `[[dkim]]` key of `config`. Any key that cannot be used is an error
    /// that names its file: a server must not start (or reload) with a key it would
    /// silently skip.
    pub fn load(config: &Config) -> Result<Signer, DkimError> {
        let mut domains: BTreeMap<String, Vec<Key>> = BTreeMap::new();
        for entry in &config.dkim {
            let domain = keys::domain_name(&entry.domain)?;
            let selector = keys::selector_name(&entry.selector)?;
            let keys = domains.entry(domain.clone()).or_default();
            if keys.iter().any(|k| k.selector == selector) {
                return Err(DkimError::Duplicate { domain, selector });
            }
            let (private, _) = keys::load(&domain, &selector, &entry.key)?;
            keys.push(Key {
                selector,
                path: entry.key.clone(),
                private,
            });
        }
        Ok(Signer { domains })
    }

    /// True when no key is configured: nothing will ever be signed.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The `DKIM-Signature:` header fields for `message` (the complete message as it
    /// will be sent, CRLF line endings), one per key of the author's domain (see
    /// [`author_domain`]), each ending in CRLF, ready to be prepended. `Ok(None)` when
    /// no key applies: no `From:` domain, or no key for it nor for any parent domain.
    pub fn sign(&self, message: &[u8]) -> Result<Option<String>, DkimError> {
        let Some(parsed) = MessageParser::new().parse_headers(message) else {
            return Ok(None);
        };
        let Some(author) = from_domain(&parsed)? else {
            return Ok(None);
        };
        let Some((domain, keys)) = self.keys_for(&author) else {
            return Ok(None);
        };
        let headers = headers_to_sign(&parsed);
        let mut fields = String::new();
        for key in keys {
            let failed = |reason: String| DkimError::Sign {
                domain: domain.to_string(),
                selector: key.selector.clone(),
                reason,
            };
            let signature = DkimSigner::from_key(Borrowed(&key.private))
                .domain(domain)
                .selector(key.selector.as_str())
                .headers(headers.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
                .sign(message)
                .map_err(|e| failed(e.to_string()))?;
            let field = signature.to_header();
            if !field.ends_with("\r\n") {
                return Err(failed("the signature header field is incomplete".into()));
            }
            fields.push_str(&field);
        }
        Ok(Some(fields))
    }

    /// The keys of `domain`, or of its nearest parent domain that has keys, with the
    /// domain they belong to (the `d=` of the signatures).
    fn keys_for<'a>(&'a self, domain: &'a str) -> Option<(&'a str, &'a [Key])> {
        let mut candidate = domain;
        loop {
            if let Some((name, keys)) = self.domains.get_key_value(candidate)
                && !keys.is_empty()
            {
                return Some((name.as_str(), keys.as_slice()));
            }
            candidate = candidate.split_once('.')?.1;
        }
    }
}

/// The one domain of the message's `From:` addresses (lower case, ASCII), the domain
/// whose keys [`Signer::sign`] looks for; `None` when there is no address with a usable
/// domain; an error when the addresses have several domains.
///
/// On a shared server the signature vouches for the domain, whoever submitted the
/// message: the caller may compare this domain with what the submitter may send as.
pub fn author_domain(message: &[u8]) -> Result<Option<String>, DkimError> {
    match MessageParser::new().parse_headers(message) {
        Some(parsed) => from_domain(&parsed),
        None => Ok(None),
    }
}

fn from_domain(parsed: &Message<'_>) -> Result<Option<String>, DkimError> {
    let mut domains = BTreeSet::new();
    for value in parsed.header_values(HeaderName::From) {
        let Some(addresses) = value.as_address() else {
            continue;
        };
        for address in addresses.iter().filter_map(|a| a.address()) {
            if let Some((_, domain)) = address.rsplit_once('@')
                && let Ok(domain) = keys::domain_name(domain)
            {
                domains.insert(domain);
            }
        }
    }
    if domains.len() > 1 {
        let all: Vec<String> = domains.into_iter().collect();
        return Err(DkimError::SeveralAuthorDomains(all.join(", ")));
    }
    Ok(domains.pop_first())
}

/// [`SIGNED_HEADERS`] that the message has (every instance is signed), then `From`
/// again: the signature then also covers the absence of a further `From:`.
fn headers_to_sign(parsed: &Message<'_>) -> Vec<&'static str> {
    let present: Vec<&str> = parsed.headers().iter().map(|h| h.name.as_str()).collect();
    let mut names: Vec<&'static str> = SIGNED_HEADERS
        .into_iter()
        .filter(|wanted| {
            *wanted == "From" || present.iter().any(|name| name.eq_ignore_ascii_case(wanted))
        })
        .collect();
    // mail-auth lists every instance found of a name; a name given twice is listed
    // once more, as a header field that is not there.
    names.push("From");
    names
}

/// A configured key lent to mail-auth's signer, which takes its key by value.
struct Borrowed<'a>(&'a PrivateKey);

impl SigningKey for Borrowed<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimKey;
    use crate::mailauth::keys::{Algorithm, keygen};

    const MESSAGE: &str = "From: Alice <alice@example.com>\r\n\
                           To: bob@remote.test\r\n\
                           Subject: Hello\r\n\
                           Date: Mon, 1 Jun 2026 10:00:00 +0000\r\n\
                           Message-ID: <1@example.com>\r\n\
                           X-Mailer: test\r\n\
                           \r\n\
                           Hello, Bob.\r\n";

    fn signer(keys: &[(&str, &str, Algorithm)]) -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::development_defaults();
        for (domain, selector, algorithm) in keys {
            let key = keygen(dir.path(), domain, selector, *algorithm).unwrap();
            config.dkim.push(DkimKey {
                domain: domain.to_string(),
                selector: selector.to_string(),
                key: key.path,
            });
        }
        let signer = Signer::load(&config).unwrap();
        (dir, signer)
    }

    fn tag<'a>(field: &'a str, name: &str) -> &'a str {
        let unfolded = field.split(';').map(str::trim);
        unfolded
            .filter_map(|t| t.strip_prefix(name)?.strip_prefix('='))
            .next()
            .unwrap()
    }

    #[test]
    fn present_headers_and_from_twice_are_signed() {
        let parsed = MessageParser::new()
            .parse_headers(MESSAGE.as_bytes())
            .unwrap();
        let names = headers_to_sign(&parsed);
        assert_eq!(
            names,
            ["From", "To", "Subject", "Date", "Message-ID", "From"]
        );
    }

    #[test]
    fn one_signature_per_key_of_the_domain() {
        let (_dir, signer) = signer(&[
            ("example.com", "rsa", Algorithm::Rsa2048),
            ("example.com", "ed", Algorithm::Ed25519),
            ("other.test", "s1", Algorithm::Ed25519),
        ]);
        let fields = signer.sign(MESSAGE.as_bytes()).unwrap().unwrap();
        assert!(fields.ends_with("\r\n"));
        let fields: Vec<String> = fields
            .split("\r\nDKIM-Signature:")
            .map(|f| f.replace("\r\n\t", " "))
            .collect();
        assert_eq!(fields.len(), 2, "{fields:?}");
        assert_eq!(tag(&fields[0], "a"), "rsa-sha256");
        assert_eq!(tag(&fields[0], "s"), "rsa");
        assert_eq!(tag(&fields[1], "a"), "ed25519-sha256");
        assert_eq!(tag(&fields[1], "s"), "ed");
        for field in &fields {
            assert_eq!(tag(field, "d"), "example.com");
            assert_eq!(tag(field, "c"), "relaxed/relaxed");
            // mail-auth lists the fields bottom-up; From is there twice.
            let h: BTreeSet<&str> = tag(field, "h").split(':').collect();
            let want: BTreeSet<&str> = ["From", "To", "Subject", "Date", "Message-ID"].into();
            assert_eq!(h, want);
            assert_eq!(tag(field, "h").matches("From").count(), 2);
        }
    }

    #[test]
    fn the_parent_domain_signs_and_unknown_domains_are_not_signed() {
        let (_dir, signer) = signer(&[("example.com", "s1", Algorithm::Ed25519)]);
        let sub = MESSAGE.replace("alice@example.com", "alice@News.Example.COM");
        assert_eq!(
            author_domain(sub.as_bytes()).unwrap().as_deref(),
            Some("news.example.com")
        );
        let field = signer.sign(sub.as_bytes()).unwrap().unwrap();
        assert_eq!(tag(&field.replace("\r\n\t", " "), "d"), "example.com");
        let other = MESSAGE.replace("alice@example.com", "alice@example.org");
        assert!(signer.sign(other.as_bytes()).unwrap().is_none());
        let lookalike = MESSAGE.replace("alice@example.com", "alice@badexample.com");
        assert!(signer.sign(lookalike.as_bytes()).unwrap().is_none());
        let no_from = MESSAGE.replace("From: Alice <alice@example.com>\r\n", "");
        assert!(signer.sign(no_from.as_bytes()).unwrap().is_none());
        assert!(signer.sign(b"").unwrap().is_none());
    }

    #[test]
    fn several_author_domains_are_refused() {
        let (_dir, signer) = signer(&[("example.com", "s1", Algorithm::Ed25519)]);
        let two = MESSAGE.replace(
            "From: Alice <alice@example.com>",
            "From: alice@example.com, mallory@example.org",
        );
        let err = signer.sign(two.as_bytes()).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.to_string().contains("example.com, example.org"),
            "{err}"
        );
        let same = MESSAGE.replace(
            "From: Alice <alice@example.com>",
            "From: alice@example.com, carol@EXAMPLE.com",
        );
        assert!(signer.sign(same.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn configuration_mistakes_are_errors_that_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = keygen(dir.path(), "example.com", "s1", Algorithm::Ed25519).unwrap();
        let mut config = Config::development_defaults();
        let entry = DkimKey {
            domain: "example.com".into(),
            selector: "s1".into(),
            key: key.path.clone(),
        };
        config.dkim = vec![entry.clone(), entry.clone()];
        let err = Signer::load(&config).unwrap_err();
        assert!(matches!(err, DkimError::Duplicate { .. }), "{err}");

        let missing = dir.path().join("dkim/missing.key");
        config.dkim = vec![DkimKey {
            key: missing.clone(),
            ..entry
        }];
        let err = Signer::load(&config).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn no_keys_sign_nothing() {
        let signer = Signer::load(&Config::development_defaults()).unwrap();
        assert!(signer.is_empty());
        assert!(signer.sign(MESSAGE.as_bytes()).unwrap().is_none());
    }

    #[test]
    fn the_signer_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        shared::<Signer>();
    }
}
