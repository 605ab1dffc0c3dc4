//! DNS: the [`Resolver`] trait that everything asking the DNS goes through, its errors,
//! the real resolver ([`SystemResolver`]) and, for unit tests, a stub with fixed answers.
//!
//! Used by remote delivery (MX and address lookups, `delivery::next_hop`) and by inbound
//! mail authentication (TXT lookups for SPF, DKIM and DMARC, `mailauth::verify`), so both
//! see the same answers and the same error classes, and tests of either can stub the DNS.
//!
//! It must not decide what an answer means for mail: whether a missing record bounces or
//! defers a message is the caller's decision. It only says whether a name does not
//! exist, has no records of the asked type, or could not be looked up right now.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

#[cfg(test)]
pub mod stub;
mod system;

pub use system::SystemResolver;

/// A boxed, sendable future (the trait below must be object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of a failed name lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    #[error("no such domain")]
    NoSuchDomain,
    /// The name exists but has no records of the asked type (NOERROR, empty answer).
    #[error("no records")]
    NoRecords,
    /// SERVFAIL, REFUSED, timeout, no usable name server: may work later.
    #[error("DNS lookup failed: {0}")]
    Temporary(String),
}

/// Name resolution, behind a trait so tests (and inbound SPF/DKIM/DMARC) can stub it.
pub trait Resolver: Send + Sync {
    /// MX records as (preference, exchange host without trailing dot; "" for the null MX ".").
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<(u16, String)>, DnsError>>;
    /// A and AAAA records.
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
    /// TXT records, one entry per record, its character-strings concatenated (RFC 7208
    /// §3.3, RFC 6376 §3.6.2.2). `name` is absolute, without the trailing dot.
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, DnsError>>;
}
