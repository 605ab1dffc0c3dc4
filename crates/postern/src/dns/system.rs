//! The real resolver: hickory-resolver reading the system's `/etc/resolv.conf`.
//!
//! It must not apply the resolv.conf search list: mail domains and MX exchanges are
//! always fully qualified (RFC 5321 §5.1).

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};

use super::{BoxFuture, DnsError, Resolver};

/// The real resolver: hickory-resolver with the system's `/etc/resolv.conf`.
pub struct SystemResolver {
    inner: TokioResolver,
}

impl SystemResolver {
    /// Reads the system's resolver configuration. Fails (temporarily: the configuration may
    /// be fixed) when it cannot be read.
    pub fn new() -> Result<SystemResolver, DnsError> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| {
            DnsError::Temporary(format!("reading the system resolver configuration: {e}"))
        })?;
        // Query AAAA and A together and keep both, IPv6 first (RFC 5321 §5.2 leaves the
        // choice to the client; both families are tried in turn by the delivery code).
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
        let inner = builder
            .build()
            .map_err(|e| DnsError::Temporary(format!("building the resolver: {e}")))?;
        Ok(SystemResolver { inner })
    }
}

/// Parses `name` as an absolute DNS name, so that the resolv.conf search list is never
/// applied: mail domains and MX exchanges are always fully qualified (RFC 5321 §5.1).
fn absolute_name(name: &str) -> Result<Name, DnsError> {
    // A name that cannot be encoded in DNS cannot exist.
    let mut parsed = Name::from_utf8(name).map_err(|_| DnsError::NoSuchDomain)?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

fn from_net_error(err: NetError) -> DnsError {
    match &err {
        NetError::Dns(HickoryDnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match *response_code {
                ResponseCode::NXDomain => DnsError::NoSuchDomain,
                ResponseCode::NoError => DnsError::NoRecords,
                _ => DnsError::Temporary(err.to_string()),
            }
        }
        _ => DnsError::Temporary(err.to_string()),
    }
}

impl Resolver for SystemResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<(u16, String)>, DnsError>> {
        Box::pin(async move {
            let name = absolute_name(domain)?;
            let lookup = self.inner.mx_lookup(name).await.map_err(from_net_error)?;
            let records: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                    )),
                    // CNAMEs followed on the way to the MX records.
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                return Err(DnsError::NoRecords);
            }
            Ok(records)
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![ip]);
            }
            let name = absolute_name(host)?;
            let lookup = self.inner.lookup_ip(name).await.map_err(from_net_error)?;
            let ips: Vec<IpAddr> = lookup.iter().collect();
            if ips.is_empty() {
                return Err(DnsError::NoRecords);
            }
            Ok(ips)
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, DnsError>> {
        Box::pin(async move {
            let name = absolute_name(name)?;
            let lookup = self.inner.txt_lookup(name).await.map_err(from_net_error)?;
            let records: Vec<Vec<u8>> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(txt.txt_data.concat()),
                    // CNAMEs followed on the way to the TXT records.
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                return Err(DnsError::NoRecords);
            }
            Ok(records)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn system_resolver_constructs() {
        // Reads /etc/resolv.conf; makes no query. Skip when the file is absent.
        if std::path::Path::new("/etc/resolv.conf").exists() {
            assert!(SystemResolver::new().is_ok());
        }
        // An IP "host" is answered without DNS.
        if let Ok(resolver) = SystemResolver::new() {
            let ips = resolver.ips("192.0.2.1").await.unwrap();
            assert_eq!(ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        }
    }
}
