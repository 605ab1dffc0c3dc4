//! Mail authentication: DKIM keys and the signing of mail we send (`keys`, `sign`), and
//! the verdicts on mail we receive (`verify`).
//!
//! The signing side owns the key files and the `DKIM-Signature:` header fields. It must
//! not decide *which* messages are signed (the caller does: authenticated and local
//! submissions only, never mail relayed inbound on `mx`), nor touch the queue or the
//! network: it reads key files once, at [`sign::Signer::load`], and is pure after.
//! See `docs/dkim.md`.

pub mod keys;
pub mod sign;
pub mod verify;

use std::path::PathBuf;

/// What can go wrong with DKIM keys and signing. Every message names the file, domain
/// or selector concerned and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{what} {value:?} is not usable: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "the key file {} already exists, and postern never overwrites a key; \
         choose another selector (see docs/dkim.md, rotation) or remove the file yourself",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate the {algorithm} key: {reason}")]
    Generate {
        algorithm: &'static str,
        reason: String,
    },
    #[error(
        "the DKIM key {} ({domain}, selector {selector}) is not usable: {reason}; it must hold \
         an RSA (2048 bits or more) or Ed25519 private key in PEM, as `postern dkim keygen` \
         writes; make one with `postern dkim keygen --domain {domain} --selector NEW_SELECTOR`",
        path.display()
    )]
    BadKey {
        path: PathBuf,
        domain: String,
        selector: String,
        reason: String,
    },
    #[error(
        "the [[dkim]] key of {domain} with selector {selector} is configured twice; \
         remove one of the tables"
    )]
    Duplicate { domain: String, selector: String },
    #[error(
        "the From: header names several domains ({0}); a message has one author domain for \
         DKIM and DMARC: send it with a single From: address"
    )]
    SeveralAuthorDomains(String),
    #[error("cannot sign for {domain} with selector {selector}: {reason}")]
    Sign {
        domain: String,
        selector: String,
        reason: String,
    },
}

impl DkimError {
    /// True when the message itself can never be signed as it is (retrying will not
    /// help): the caller may refuse it permanently rather than defer it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DkimError::SeveralAuthorDomains(_))
    }
}
