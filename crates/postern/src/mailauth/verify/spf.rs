//! SPF (RFC 7208) evaluated here, on `mail-auth`'s record parser and macro expander: its
//! own evaluator discovers the names it needs while it runs (`include:`, `a:`,
//! `exists:`, macros) and could only ask its own resolver for them, past [`Resolver`].
//! The limits of RFC 7208 §4.6.4 span the whole check.

use super::*;

/// RFC 7208 §4.6.4: at most 10 mechanisms and modifiers that query DNS…
const SPF_DNS_LIMIT: u32 = 10;
/// …at most 2 of them answered with no records…
const SPF_VOID_LIMIT: u32 = 2;
/// …and at most 10 exchanges for one `mx` mechanism.
const SPF_MX_LIMIT: usize = 10;
/// Whether `domain` can be an SPF <domain>: at least two labels of 1 to 63 octets, at most
/// 253 octets, no control, space or address-literal bracket, and a last label that is not
/// a number (so no IP address) (RFC 7208 §4.3, §2.3).
pub(super) fn valid_spf_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.contains('.')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && domain
            .bytes()
            .all(|b| b > b' ' && b != 0x7f && b != b'[' && b != b']')
        && !domain
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

/// An SPF evaluation's state: the counters of RFC 7208 §4.6.4 span the whole check,
/// `include:` and `redirect=` included.
pub(super) struct SpfCheck<'a> {
    pub(super) resolver: &'a dyn Resolver,
    pub(super) ip: IpAddr,
    pub(super) helo: &'a str,
    pub(super) host_domain: &'a str,
    pub(super) lookups: u32,
    pub(super) voids: u32,
}

/// What ends an SPF evaluation early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum SpfAbort {
    #[error("temporary DNS error")]
    Temp,
    #[error("permanent error")]
    Perm,
}

impl From<SpfAbort> for SpfResult {
    fn from(abort: SpfAbort) -> SpfResult {
        match abort {
            SpfAbort::Temp => SpfResult::TempError,
            SpfAbort::Perm => SpfResult::PermError,
        }
    }
}

impl<'a> SpfCheck<'a> {
    /// check_host(<ip>, <domain>, <sender>) (RFC 7208 §4).
    pub(super) fn check_host<'s>(
        &'s mut self,
        domain: String,
        sender: String,
    ) -> BoxFuture<'s, SpfResult> {
        Box::pin(async move {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !valid_spf_domain(&domain) {
                return SpfResult::None;
            }
            let record = match self.resolver.txt(&domain).await {
                Ok(records) => records,
                Err(DnsError::NoSuchDomain | DnsError::NoRecords) => return SpfResult::None,
                Err(DnsError::Temporary(_)) => return SpfResult::TempError,
            };
            // §4.5: exactly one record starting with "v=spf1".
            let mut spf = None;
            let mut count = 0;
            for text in &record {
                match Spf::parse(text) {
                    Err(AuthError::Dns(mail_auth::DnsError::InvalidRecordType)) => {}
                    parsed => {
                        count += 1;
                        spf = Some(parsed);
                    }
                }
            }
            let spf = match (count, spf) {
                (1, Some(Ok(spf))) => spf,
                (0, _) => return SpfResult::None,
                _ => return SpfResult::PermError,
            };
            self.evaluate(&spf, &domain, &sender)
                .await
                .unwrap_or_else(SpfResult::from)
        })
    }

    /// §4.6: the directives in order, then `redirect=`.
    async fn evaluate(
        &mut self,
        spf: &Spf,
        domain: &str,
        sender: &str,
    ) -> Result<SpfResult, SpfAbort> {
        let mut vars = Variables::new();
        vars.set_ip(&self.ip);
        vars.set_sender(sender.as_bytes().to_vec());
        vars.set_domain(domain.as_bytes().to_vec());
        vars.set_helo_domain(self.helo.as_bytes().to_vec());
        vars.set_host_domain(self.host_domain.as_bytes().to_vec());
        // %{p}: no PTR validation is done (RFC 7208 §7.3: "unknown").
        vars.set_validated_domain(b"unknown".to_vec());

        for directive in spf.directives.iter() {
            if self
                .matches(&directive.mechanism, &vars, domain, sender)
                .await?
            {
                return Ok(match directive.qualifier {
                    Qualifier::Pass => SpfResult::Pass,
                    Qualifier::Fail => SpfResult::Fail,
                    Qualifier::SoftFail => SpfResult::SoftFail,
                    Qualifier::Neutral => SpfResult::Neutral,
                });
            }
        }
        if let Some(redirect) = &spf.redirect {
            self.count_lookup()?;
            let target = target_name(&redirect.eval(&vars, domain, true));
            // §6.1: a redirect to a domain without SPF record is a permerror.
            return Ok(match self.check_host(target, sender.to_string()).await {
                SpfResult::None => SpfResult::PermError,
                result => result,
            });
        }
        Ok(SpfResult::Neutral)
    }

    /// Whether one mechanism matches (§5).
    async fn matches(
        &mut self,
        mechanism: &Mechanism,
        vars: &Variables<'_>,
        domain: &str,
        sender: &str,
    ) -> Result<bool, SpfAbort> {
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4 { addr, mask } => Ok(match self.ip {
                IpAddr::V4(ip) => u32::from(ip) & mask == u32::from(*addr) & mask,
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6 { addr, mask } => Ok(match self.ip {
                IpAddr::V6(ip) => u128::from(ip) & mask == u128::from(*addr) & mask,
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include { macro_string } => {
                self.count_lookup()?;
                let target = target_name(&macro_string.eval(vars, domain, true));
                // §5.2: the included record's result decides whether "include" matches.
                match self.check_host(target, sender.to_string()).await {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(SpfAbort::Temp),
                    SpfResult::PermError | SpfResult::None => Err(SpfAbort::Perm),
                }
            }
            Mechanism::A {
                macro_string,
                ip4_mask,
                ip6_mask,
            } => {
                self.count_lookup()?;
                let target = target_name(&macro_string.eval(vars, domain, true));
                let addresses = self.addresses(&target).await?;
                Ok(self.any_in(&addresses, *ip4_mask, *ip6_mask))
            }
            Mechanism::Mx {
                macro_string,
                ip4_mask,
                ip6_mask,
            } => {
                self.count_lookup()?;
                let target = target_name(&macro_string.eval(vars, domain, true));
                if !valid_spf_domain(&target) {
                    return Ok(false);
                }
                let mut exchanges = match self.resolver.mx(&target).await {
                    Ok(records) => records,
                    Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {
                        self.count_void()?;
                        return Ok(false);
                    }
                    Err(DnsError::Temporary(_)) => return Err(SpfAbort::Temp),
                };
                // The null MX (RFC 7505) names no host.
                exchanges.retain(|(_, host)| !host.is_empty() && host != ".");
                if exchanges.len() > SPF_MX_LIMIT {
                    return Err(SpfAbort::Perm);
                }
                exchanges.sort();
                let mut temporary = false;
                for (_, host) in &exchanges {
                    match self.resolver.ips(host).await {
                        Ok(addresses) => {
                            if self.any_in(&addresses, *ip4_mask, *ip6_mask) {
                                return Ok(true);
                            }
                        }
                        Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {}
                        Err(DnsError::Temporary(_)) => temporary = true,
                    }
                }
                if temporary {
                    return Err(SpfAbort::Temp);
                }
                Ok(false)
            }
            Mechanism::Ptr { .. } => {
                // §5.5 "do not use": no PTR lookups here, so it never matches (what a DNS
                // error in its lookup gives too). Still a DNS mechanism for the limit.
                self.count_lookup()?;
                Ok(false)
            }
            Mechanism::Exists { macro_string } => {
                self.count_lookup()?;
                let target = target_name(&macro_string.eval(vars, domain, true));
                // §5.7: an A lookup, whatever the connection's address family.
                let addresses = self.lookup_ips(&target).await?;
                let found = addresses.iter().any(IpAddr::is_ipv4);
                if !found {
                    self.count_void()?;
                }
                Ok(found)
            }
        }
    }

    /// The addresses of `target` in the client's family; none counts as a void lookup.
    async fn addresses(&mut self, target: &str) -> Result<Vec<IpAddr>, SpfAbort> {
        let mut addresses = self.lookup_ips(target).await?;
        addresses.retain(|a| a.is_ipv4() == self.ip.is_ipv4());
        if addresses.is_empty() {
            self.count_void()?;
        }
        Ok(addresses)
    }

    /// A and AAAA of `target`; a name that does not exist (or cannot) has none.
    async fn lookup_ips(&mut self, target: &str) -> Result<Vec<IpAddr>, SpfAbort> {
        if !valid_spf_domain(target) {
            return Ok(Vec::new());
        }
        match self.resolver.ips(target).await {
            Ok(addresses) => Ok(addresses.into_iter().map(|a| a.to_canonical()).collect()),
            Err(DnsError::NoSuchDomain | DnsError::NoRecords) => Ok(Vec::new()),
            Err(DnsError::Temporary(_)) => Err(SpfAbort::Temp),
        }
    }

    fn any_in(&self, addresses: &[IpAddr], ip4_mask: u32, ip6_mask: u128) -> bool {
        addresses.iter().any(|address| match (self.ip, address) {
            (IpAddr::V4(ip), IpAddr::V4(a)) => u32::from(ip) & ip4_mask == u32::from(*a) & ip4_mask,
            (IpAddr::V6(ip), IpAddr::V6(a)) => {
                u128::from(ip) & ip6_mask == u128::from(*a) & ip6_mask
            }
            _ => false,
        })
    }

    fn count_lookup(&mut self) -> Result<(), SpfAbort> {
        self.lookups += 1;
        if self.lookups > SPF_DNS_LIMIT {
            return Err(SpfAbort::Perm);
        }
        Ok(())
    }

    fn count_void(&mut self) -> Result<(), SpfAbort> {
        self.voids += 1;
        if self.voids > SPF_VOID_LIMIT {
            return Err(SpfAbort::Perm);
        }
        Ok(())
    }
}

/// A macro-expanded <target-name> without its trailing dot, shortened from the left to at
/// most 253 octets (RFC 7208 §7.3).
pub(super) fn target_name(expanded: &str) -> String {
    let mut name = expanded.trim_end_matches('.');
    while name.len() > 253 {
        match name.split_once('.') {
            Some((_, rest)) => name = rest,
            None => break,
        }
    }
    name.to_ascii_lowercase()
}
