//! Next hop: where to send mail for a recipient domain.
//!
//! This module owns the choice of the ordered list of addresses that remote delivery tries
//! for one domain: `delivery.routes` (per-domain next hop) first, then `delivery.relay_host`,
//! then the domain's MX records (RFC 5321 §5.1), then — only when the domain has no MX at
//! all — the domain's own A/AAAA records (the implicit MX). It also owns the translation of
//! DNS outcomes into delivery outcomes: null MX (RFC 7505) and nonexistent domains are
//! permanent, everything else that goes wrong is temporary.
//!
//! Name resolution goes through [`crate::dns`]'s [`Resolver`] trait, so tests can stub it.
//!
//! It must not connect anywhere, speak SMTP, log delivery events or decide policy (whether a
//! recipient may be relayed to was decided when the message was accepted). It must not bounce
//! mail because of a configuration mistake: a bad or unresolvable route is temporary.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use postern_proto::reply::Enhanced;

use crate::dns::{DnsError, Resolver};

/// The SMTP port used for MX targets and when a route names no port.
const SMTP_PORT: u16 = 25;

/// At most this many addresses are tried for one domain in one delivery attempt.
///
/// Like Postfix's `smtp_mx_address_limit`: every unreachable address can cost a full connect
/// timeout, and a broken or hostile domain can publish dozens of MX records with many
/// addresses each, which would tie up a delivery worker for a long time on a single message.
/// The message stays queued and is retried later, so a bounded list loses nothing.
pub const MAX_TARGETS: usize = 10;

/// Where the config says to send mail (built from `Config.routes`, "domain" -> "host:port",
/// and `Config.relay_host`, "host:port").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub routes: BTreeMap<String, String>,
    pub relay_host: Option<String>,
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name or IP as text, for logs and TLS SNI.
    pub host: String,
    pub addr: SocketAddr,
}

/// Why there is no address to try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NextHopError {
    /// RFC 7505: the domain accepts no mail.
    #[error("the domain accepts no mail (null MX)")]
    NullMx,
    /// NXDOMAIN, or no MX and no A/AAAA.
    #[error("no such domain, or the domain has no mail server")]
    NoSuchDomain,
    /// SERVFAIL, timeout, no exchange that resolves, unresolvable route host.
    #[error("DNS lookup failed: {0}")]
    Temporary(String),
    /// A route or relay_host value that is not host:port (a configuration error).
    #[error("bad next-hop configuration: {0}")]
    BadRoute(String),
}

impl NextHopError {
    /// Whether the recipient should be bounced now rather than retried later.
    pub fn is_permanent(&self) -> bool {
        matches!(self, NextHopError::NullMx | NextHopError::NoSuchDomain)
    }

    /// The enhanced status code (RFC 3463) for logs and the DSN.
    pub fn status(&self) -> Enhanced {
        match self {
            // RFC 7505 §4.2.
            NextHopError::NullMx => Enhanced(5, 1, 10),
            // Bad destination system address.
            NextHopError::NoSuchDomain => Enhanced(5, 1, 2),
            // Directory server failure.
            NextHopError::Temporary(_) => Enhanced(4, 4, 3),
            // System not capable of selected features: our configuration.
            NextHopError::BadRoute(_) => Enhanced(4, 3, 5),
        }
    }
}

/// A parsed route or relay_host value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hop {
    Ip(IpAddr),
    Name(String),
}

/// Parses a port: decimal digits only (no sign), 1..=65535.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

/// Whether `host` is a syntactically valid host name (letters, digits, '-' and '_' in
/// labels of 1 to 63 octets, at most 253 octets, last label not all digits). A single
/// trailing dot must already be removed.
fn is_host_name(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// Parses "host:port", "host", "IP", "IP:port", "[IP]", "[IP]:port" ("[IPv6:…]" too).
///
/// The port defaults to 25. A host name without a port must contain a dot: a bare word
/// ("nonsense", "yes", "localhost") is far more likely a configuration mistake than a
/// deliberate single-label smarthost, and "localhost:25" says what it means.
fn parse_hop(value: &str) -> Result<(Hop, u16), String> {
    let bad = |why: &str| format!("{value:?} is not host:port ({why})");
    let text = value.trim();
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        let inside = inside.strip_prefix("IPv6:").unwrap_or(inside);
        let ip = inside
            .parse::<IpAddr>()
            .map_err(|_| bad("not an IP address inside [ ]"))?;
        let port = if after.is_empty() {
            SMTP_PORT
        } else {
            after
                .strip_prefix(':')
                .and_then(parse_port)
                .ok_or_else(|| bad("bad port"))?
        };
        return Ok((Hop::Ip(ip), port));
    }
    // A bare IPv6 address without brackets can only mean the address itself.
    if let Ok(ip) = text.parse::<Ipv6Addr>() {
        return Ok((Hop::Ip(IpAddr::V6(ip)), SMTP_PORT));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(parse_port(port).ok_or_else(|| bad("bad port"))?)),
        None => (text, None),
    };
    if host.contains(':') {
        return Err(bad(
            "an IPv6 address with a port must be written [address]:port",
        ));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Hop::Ip(IpAddr::V4(ip)), port.unwrap_or(SMTP_PORT)));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if !is_host_name(host) {
        return Err(bad("not a host name"));
    }
    if port.is_none() && !host.contains('.') {
        return Err(bad("a single-label host name needs an explicit port"));
    }
    Ok((
        Hop::Name(host.to_ascii_lowercase()),
        port.unwrap_or(SMTP_PORT),
    ))
}

/// Appends `target` unless its address is already listed or the list is full.
fn push_target(targets: &mut Vec<Target>, host: &str, ip: IpAddr, port: u16) {
    let addr = SocketAddr::new(ip, port);
    if targets.len() < MAX_TARGETS && !targets.iter().any(|t| t.addr == addr) {
        targets.push(Target {
            host: host.to_string(),
            addr,
        });
    }
}

/// The addresses of a configured next hop (`what` names the config key, for messages).
async fn configured_hop(
    resolver: &dyn Resolver,
    what: &str,
    value: &str,
) -> Result<Vec<Target>, NextHopError> {
    let (hop, port) =
        parse_hop(value).map_err(|why| NextHopError::BadRoute(format!("{what}: {why}")))?;
    let mut targets = Vec::new();
    match hop {
        Hop::Ip(ip) => push_target(&mut targets, &ip.to_string(), ip, port),
        Hop::Name(host) => {
            // A configured host that does not resolve is a local problem, never a reason to
            // bounce: always temporary.
            let ips = resolver.ips(&host).await.map_err(|e| {
                NextHopError::Temporary(format!("{what}: host {host} does not resolve: {e}"))
            })?;
            for ip in ips {
                push_target(&mut targets, &host, ip, port);
            }
            if targets.is_empty() {
                return Err(NextHopError::Temporary(format!(
                    "{what}: host {host} has no address"
                )));
            }
        }
    }
    Ok(targets)
}

/// The address in a domain literal ("[192.0.2.1]", "[IPv6:2001:db8::1]"), if it is one.
fn domain_literal(domain: &str) -> Option<IpAddr> {
    let inside = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inside.strip_prefix("IPv6:") {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => inside.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// The ordered list of addresses to try for `domain`: delivery.routes (exact domain match,
/// case-insensitive) first, then relay_host, then MX records by preference (random order
/// among equal preferences, RFC 5321 §5.1), each exchange's addresses (IPv6 and IPv4 as
/// returned), then — only when the domain has no MX at all — the domain's own A/AAAA
/// (implicit MX). A route or relay_host "host:port" is used as is (host may be an IP,
/// "[IPv6]", or a name resolved with ips()); port defaults to 25 if absent. Port 25 for MX
/// targets. MX exchanges that fail to resolve are skipped; if none resolves, Temporary. An MX
/// pointing to "." (null MX, as the only record) -> NullMx. At most [`MAX_TARGETS`] targets,
/// without duplicate addresses.
pub async fn resolve(
    routing: &Routing,
    resolver: &dyn Resolver,
    domain: &str,
) -> Result<Vec<Target>, NextHopError> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);

    if let Some((key, value)) = routing.routes.iter().find(|(key, _)| {
        key.strip_suffix('.')
            .unwrap_or(key)
            .eq_ignore_ascii_case(domain)
    }) {
        return configured_hop(resolver, &format!("delivery.routes.{key:?}"), value).await;
    }
    if let Some(relay) = &routing.relay_host {
        return configured_hop(resolver, "delivery.relay_host", relay).await;
    }

    let domain = domain.to_ascii_lowercase();
    if let Some(ip) = domain_literal(&domain) {
        let mut targets = Vec::new();
        push_target(&mut targets, &ip.to_string(), ip, SMTP_PORT);
        return Ok(targets);
    }

    let records = match resolver.mx(&domain).await {
        Ok(records) => records,
        Err(DnsError::NoRecords) => Vec::new(),
        Err(DnsError::NoSuchDomain) => return Err(NextHopError::NoSuchDomain),
        Err(DnsError::Temporary(why)) => {
            return Err(NextHopError::Temporary(format!(
                "MX lookup for {domain}: {why}"
            )));
        }
    };

    if records.is_empty() {
        // Implicit MX (RFC 5321 §5.1): the domain itself, only when it has no MX at all.
        return match resolver.ips(&domain).await {
            Ok(ips) if !ips.is_empty() => {
                let mut targets = Vec::new();
                for ip in ips {
                    push_target(&mut targets, &domain, ip, SMTP_PORT);
                }
                Ok(targets)
            }
            Ok(_) | Err(DnsError::NoRecords | DnsError::NoSuchDomain) => {
                Err(NextHopError::NoSuchDomain)
            }
            Err(DnsError::Temporary(why)) => Err(NextHopError::Temporary(format!(
                "address lookup for {domain}: {why}"
            ))),
        };
    }

    // RFC 7505: a null MX is the only record. A "." next to real exchanges is a broken
    // zone; the real exchanges are used and the "." is skipped.
    let mut exchanges: Vec<(u16, u64, String)> = records
        .into_iter()
        .filter(|(_, host)| !host.is_empty() && host != ".")
        .map(|(preference, host)| {
            // A random tie-break: equal preferences are tried in random order (§5.1).
            let host = host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase();
            (preference, rand::random::<u64>(), host)
        })
        .collect();
    if exchanges.is_empty() {
        return Err(NextHopError::NullMx);
    }
    exchanges.sort_unstable();

    let mut targets = Vec::new();
    let mut failures = Vec::new();
    for (_, _, host) in &exchanges {
        if targets.len() >= MAX_TARGETS {
            break;
        }
        match resolver.ips(host).await {
            Ok(ips) if !ips.is_empty() => {
                for ip in ips {
                    push_target(&mut targets, host, ip, SMTP_PORT);
                }
            }
            Ok(_) => failures.push(format!("{host}: no address")),
            Err(e) => failures.push(format!("{host}: {e}")),
        }
    }
    if targets.is_empty() {
        return Err(NextHopError::Temporary(format!(
            "no MX host of {domain} resolves ({})",
            failures.join("; ")
        )));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::stub::StubResolver;
    use std::collections::HashSet;

    fn routing(routes: &[(&str, &str)], relay_host: Option<&str>) -> Routing {
        Routing {
            routes: routes
                .iter()
                .map(|(d, h)| (d.to_string(), h.to_string()))
                .collect(),
            relay_host: relay_host.map(str::to_string),
        }
    }

    fn target(host: &str, addr: &str) -> Target {
        Target {
            host: host.to_string(),
            addr: addr.parse().unwrap(),
        }
    }

    /// example.com: MX 10 mx1, MX 20 mx2, each with one address.
    fn example() -> StubResolver {
        StubResolver::default()
            .mx(
                "example.com",
                &[(20, "mx2.example.com"), (10, "mx1.example.com")],
            )
            .ips("mx1.example.com", &["2001:db8::1", "192.0.2.1"])
            .ips("mx2.example.com", &["192.0.2.2"])
            .ips("relay.example.net", &["198.51.100.7"])
    }

    #[tokio::test]
    async fn route_wins_over_relay_host_and_mx() {
        let r = routing(
            &[("example.com", "127.0.0.1:10099")],
            Some("relay.example.net:587"),
        );
        let got = resolve(&r, &example(), "example.com").await.unwrap();
        assert_eq!(got, vec![target("127.0.0.1", "127.0.0.1:10099")]);
    }

    #[tokio::test]
    async fn relay_host_wins_over_mx() {
        let r = routing(
            &[("other.test", "127.0.0.1:1")],
            Some("relay.example.net:587"),
        );
        let got = resolve(&r, &example(), "example.com").await.unwrap();
        assert_eq!(got, vec![target("relay.example.net", "198.51.100.7:587")]);
    }

    #[tokio::test]
    async fn relay_host_name_without_port_defaults_to_25() {
        let r = routing(&[], Some("relay.example.net"));
        let got = resolve(&r, &example(), "example.com").await.unwrap();
        assert_eq!(got, vec![target("relay.example.net", "198.51.100.7:25")]);
    }

    #[tokio::test]
    async fn route_domain_match_is_case_insensitive() {
        let r = routing(&[("Remote.TEST", "127.0.0.1:10099")], None);
        let got = resolve(&r, &StubResolver::default(), "remote.test")
            .await
            .unwrap();
        assert_eq!(got, vec![target("127.0.0.1", "127.0.0.1:10099")]);
        let r = routing(&[("remote.test", "127.0.0.1:10099")], None);
        let got = resolve(&r, &StubResolver::default(), "REMOTE.Test")
            .await
            .unwrap();
        assert_eq!(got, vec![target("127.0.0.1", "127.0.0.1:10099")]);
    }

    #[tokio::test]
    async fn route_is_exact_domain_not_subdomain() {
        let r = routing(&[("example.com", "127.0.0.1:10099")], None);
        let stub = example().mx_err("sub.example.com", DnsError::NoSuchDomain);
        let err = resolve(&r, &stub, "sub.example.com").await.unwrap_err();
        assert_eq!(err, NextHopError::NoSuchDomain);
    }

    #[tokio::test]
    async fn mx_ordered_by_preference() {
        let got = resolve(&Routing::default(), &example(), "example.com")
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                target("mx1.example.com", "[2001:db8::1]:25"),
                target("mx1.example.com", "192.0.2.1:25"),
                target("mx2.example.com", "192.0.2.2:25"),
            ]
        );
    }

    #[tokio::test]
    async fn equal_preferences_are_shuffled() {
        let stub = StubResolver::default()
            .mx(
                "example.com",
                &[
                    (10, "a.example.com"),
                    (10, "b.example.com"),
                    (5, "first.example.com"),
                ],
            )
            .ips("first.example.com", &["192.0.2.10"])
            .ips("a.example.com", &["192.0.2.1"])
            .ips("b.example.com", &["192.0.2.2"]);
        let mut orders = HashSet::new();
        for _ in 0..200 {
            let got = resolve(&Routing::default(), &stub, "example.com")
                .await
                .unwrap();
            let hosts: Vec<String> = got.into_iter().map(|t| t.host).collect();
            assert_eq!(hosts[0], "first.example.com");
            orders.insert(hosts);
        }
        let expected: HashSet<Vec<String>> = [
            ["first.example.com", "a.example.com", "b.example.com"],
            ["first.example.com", "b.example.com", "a.example.com"],
        ]
        .iter()
        .map(|o| o.iter().map(|h| h.to_string()).collect())
        .collect();
        assert_eq!(orders, expected);
    }

    #[tokio::test]
    async fn implicit_mx_when_no_mx_records() {
        let stub = StubResolver::default()
            .mx_err("example.org", DnsError::NoRecords)
            .ips("example.org", &["2001:db8::25", "192.0.2.25"]);
        let got = resolve(&Routing::default(), &stub, "example.org")
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                target("example.org", "[2001:db8::25]:25"),
                target("example.org", "192.0.2.25:25"),
            ]
        );
    }

    #[tokio::test]
    async fn no_mx_and_no_address_is_no_such_domain() {
        let stub = StubResolver::default()
            .mx_err("example.org", DnsError::NoRecords)
            .ips_err("example.org", DnsError::NoRecords);
        let err = resolve(&Routing::default(), &stub, "example.org")
            .await
            .unwrap_err();
        assert_eq!(err, NextHopError::NoSuchDomain);
        assert!(err.is_permanent());
        assert_eq!(err.status(), Enhanced(5, 1, 2));
    }

    #[tokio::test]
    async fn implicit_mx_not_used_when_mx_exists() {
        // The domain has an A record, but its only MX does not resolve: no fallback to A.
        let stub = StubResolver::default()
            .mx("example.org", &[(10, "broken.example.org")])
            .ips("example.org", &["192.0.2.25"]);
        let err = resolve(&Routing::default(), &stub, "example.org")
            .await
            .unwrap_err();
        assert!(matches!(err, NextHopError::Temporary(_)), "{err:?}");
    }

    #[tokio::test]
    async fn null_mx() {
        let stub = StubResolver::default().mx("nomail.test", &[(0, "")]);
        let err = resolve(&Routing::default(), &stub, "nomail.test")
            .await
            .unwrap_err();
        assert_eq!(err, NextHopError::NullMx);
        assert!(err.is_permanent());
        assert_eq!(err.status(), Enhanced(5, 1, 10));
    }

    #[tokio::test]
    async fn null_mx_beside_real_exchange_is_ignored() {
        let stub = StubResolver::default()
            .mx("odd.test", &[(0, ""), (10, "mx.odd.test")])
            .ips("mx.odd.test", &["192.0.2.3"]);
        let got = resolve(&Routing::default(), &stub, "odd.test")
            .await
            .unwrap();
        assert_eq!(got, vec![target("mx.odd.test", "192.0.2.3:25")]);
    }

    #[tokio::test]
    async fn nxdomain_is_no_such_domain() {
        let stub = StubResolver::default().mx_err("nowhere.test", DnsError::NoSuchDomain);
        let err = resolve(&Routing::default(), &stub, "nowhere.test")
            .await
            .unwrap_err();
        assert_eq!(err, NextHopError::NoSuchDomain);
    }

    #[tokio::test]
    async fn servfail_is_temporary() {
        let stub = StubResolver::default()
            .mx_err("broken.test", DnsError::Temporary("SERVFAIL".to_string()));
        let err = resolve(&Routing::default(), &stub, "broken.test")
            .await
            .unwrap_err();
        assert!(matches!(err, NextHopError::Temporary(_)), "{err:?}");
        assert!(!err.is_permanent());
        assert_eq!(err.status(), Enhanced(4, 4, 3));

        // SERVFAIL on the implicit-MX address lookup too.
        let stub = StubResolver::default()
            .mx_err("broken.test", DnsError::NoRecords)
            .ips_err("broken.test", DnsError::Temporary("timeout".to_string()));
        let err = resolve(&Routing::default(), &stub, "broken.test")
            .await
            .unwrap_err();
        assert!(matches!(err, NextHopError::Temporary(_)), "{err:?}");
    }

    #[tokio::test]
    async fn unresolvable_exchange_is_skipped() {
        let stub = StubResolver::default()
            .mx(
                "example.com",
                &[
                    (5, "gone.example.com"),
                    (10, "slow.example.com"),
                    (20, "mx2.example.com"),
                ],
            )
            .ips_err("gone.example.com", DnsError::NoSuchDomain)
            .ips_err(
                "slow.example.com",
                DnsError::Temporary("timeout".to_string()),
            )
            .ips("mx2.example.com", &["192.0.2.2"]);
        let got = resolve(&Routing::default(), &stub, "example.com")
            .await
            .unwrap();
        assert_eq!(got, vec![target("mx2.example.com", "192.0.2.2:25")]);
    }

    #[tokio::test]
    async fn no_exchange_resolves_is_temporary() {
        let stub = StubResolver::default().mx("example.com", &[(10, "gone.example.com")]);
        let err = resolve(&Routing::default(), &stub, "example.com")
            .await
            .unwrap_err();
        assert!(matches!(err, NextHopError::Temporary(_)), "{err:?}");
    }

    #[tokio::test]
    async fn at_most_ten_targets() {
        let names: Vec<String> = (0..8).map(|i| format!("mx{i}.big.test")).collect();
        let records: Vec<(u16, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u16, n.as_str()))
            .collect();
        let mut stub = StubResolver::default().mx("big.test", &records);
        for (i, name) in names.iter().enumerate() {
            stub = stub.ips(
                name,
                &[
                    &format!("192.0.2.{}", 2 * i),
                    &format!("192.0.2.{}", 2 * i + 1),
                ],
            );
        }
        let got = resolve(&Routing::default(), &stub, "big.test")
            .await
            .unwrap();
        assert_eq!(got.len(), MAX_TARGETS);
        assert_eq!(got[0], target("mx0.big.test", "192.0.2.0:25"));
        assert_eq!(got[9], target("mx4.big.test", "192.0.2.9:25"));
    }

    #[tokio::test]
    async fn route_forms() {
        let stub = StubResolver::default().ips("localhost", &["::1", "127.0.0.1"]);
        let cases = [
            ("[::1]:2525", vec![target("::1", "[::1]:2525")]),
            (
                "127.0.0.1:10099",
                vec![target("127.0.0.1", "127.0.0.1:10099")],
            ),
            (
                "localhost:25",
                vec![
                    target("localhost", "[::1]:25"),
                    target("localhost", "127.0.0.1:25"),
                ],
            ),
            (
                "[IPv6:2001:db8::1]",
                vec![target("2001:db8::1", "[2001:db8::1]:25")],
            ),
            ("192.0.2.9", vec![target("192.0.2.9", "192.0.2.9:25")]),
        ];
        for (value, want) in cases {
            let r = routing(&[("remote.test", value)], None);
            let got = resolve(&r, &stub, "remote.test").await.unwrap();
            assert_eq!(got, want, "{value}");
        }
    }

    #[tokio::test]
    async fn bad_route_values() {
        for value in [
            "nonsense",
            "",
            "host.example:",
            "host.example:0",
            "host.example:99999",
            "host.example:+25",
            "[::1",
            "[::1]2525",
            "[not-an-ip]:25",
            "::1:2525x",
            "two words:25",
            "-bad.example:25",
        ] {
            let r = routing(&[("remote.test", value)], None);
            let err = resolve(&r, &StubResolver::default(), "remote.test")
                .await
                .unwrap_err();
            assert!(
                matches!(err, NextHopError::BadRoute(_)),
                "{value:?}: {err:?}"
            );
            assert!(!err.is_permanent());
            assert_eq!(err.status(), Enhanced(4, 3, 5));
        }
        let r = routing(&[], Some("nonsense"));
        let err = resolve(&r, &StubResolver::default(), "remote.test")
            .await
            .unwrap_err();
        assert!(matches!(err, NextHopError::BadRoute(_)), "{err:?}");
    }

    #[tokio::test]
    async fn unresolvable_route_host_is_temporary_not_a_bounce() {
        let r = routing(&[("remote.test", "gone.example.net:25")], None);
        let err = resolve(&r, &StubResolver::default(), "remote.test")
            .await
            .unwrap_err();
        assert!(matches!(err, NextHopError::Temporary(_)), "{err:?}");
    }

    #[tokio::test]
    async fn domain_literal() {
        let got = resolve(&Routing::default(), &StubResolver::default(), "[192.0.2.1]")
            .await
            .unwrap();
        assert_eq!(got, vec![target("192.0.2.1", "192.0.2.1:25")]);
    }

    #[test]
    fn resolve_future_is_send() {
        // The dispatcher runs deliveries on spawned tasks.
        fn assert_send<T: Send>(_: &T) {}
        let routing = Routing::default();
        let stub = StubResolver::default();
        let future = resolve(&routing, &stub, "example.com");
        assert_send(&future);
    }
}
