//! Inbound mail authentication on `mx`: SPF (RFC 7208) for the MAIL FROM and HELO
//! identities, DKIM (RFC 6376) verification of every signature, and DMARC (RFC 7489) with
//! identifier alignment, rendered as one `Authentication-Results:` header field (RFC 8601)
//! whose authserv-id is our host name. [`strip_forged_results`] removes the fields that
//! arrive from outside claiming that authserv-id.
//!
//! Every DNS query goes through the [`Resolver`] trait (the system resolver in production, a
//! stub in tests); `mail-auth` parses the records, checks the signatures and applies the
//! DMARC rules. SPF is evaluated here, on `mail-auth`'s record parser and macro expander,
//! because its evaluator discovers the names it needs while it runs (`include:`, `a:`,
//! `exists:`, macros) and can only ask its own resolver for them. DKIM keys and DMARC
//! records are known in advance (from the signatures, the `From:` domain, the MAIL FROM
//! domain and the signing domains), so they are fetched through [`Resolver`] and handed to
//! `mail-auth` as its TXT cache. The hickory resolver inside `mail-auth` has no name server
//! at all: a name that was not fetched fails as a DNS error (temperror) instead of leaking a
//! query past [`Resolver`].
//!
//! DNS errors give `temperror`, never `fail`, so they can never lead to a rejection.
//!
//! It must not log, decide the SMTP reply (it only says why a DMARC `p=reject` failure should
//! be refused), or know about listeners: the caller runs it on `mx` mail only.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::resolver::ToFqdn;
use mail_auth::common::to_a_label;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Dmarc, Policy};
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::{Mechanism, Qualifier, Spf, Variables};
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcResult, Error as AuthError,
    MessageAuthenticator, Parameters, ResolverCache, SpfOutput, SpfResult, Txt,
};
use tokio::task::JoinSet;

use crate::dns::{DnsError, Resolver};

/// RFC 7208 §4.6.4: at most 10 mechanisms and modifiers that query DNS…
const SPF_DNS_LIMIT: u32 = 10;
/// …at most 2 of them answered with no records…
const SPF_VOID_LIMIT: u32 = 2;
/// …and at most 10 exchanges for one `mx` mechanism.
const SPF_MX_LIMIT: usize = 10;
/// RFC 7208 §4.6.4 suggests a time limit of at least 20 seconds for one SPF check.
const SPF_TIME_LIMIT: Duration = Duration::from_secs(20);
/// The time allowed for fetching the DKIM keys, and then for the DMARC records.
const FETCH_TIME_LIMIT: Duration = Duration::from_secs(20);
/// DKIM signatures verified per message; more are ignored (each costs a DNS query).
const MAX_SIGNATURES: usize = 8;
/// A `reason=` text is cut to this many characters…
const MAX_REASON: usize = 100;
/// …and any other value to this many (a domain name has at most 253), so that no line of
/// the header comes near the 998 octets of RFC 5322 §2.1.1.
const MAX_VALUE: usize = 256;

/// A boxed, sendable future (the SPF evaluation recurses through `include:`).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the DNS-free `mail-auth` engine could not be set up (never expected: it has no name
/// server to read or reach).
#[derive(Debug, thiserror::Error)]
#[error("setting up the DKIM/DMARC engine: {0}")]
struct EngineError(String);

/// Checks inbound mail. One per server; cheap to share (`&self`).
pub struct Verifier {
    authserv_id: String,
    resolver: Arc<dyn Resolver>,
    dmarc_reject: bool,
    /// DKIM and DMARC evaluation; its own resolver has no name server (see the module docs).
    engine: Result<MessageAuthenticator, EngineError>,
}

/// The outcome of [`Verifier::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// One `Authentication-Results: <authserv-id>; spf=...; dkim=...; dmarc=...\r\n` header
    /// field (RFC 8601), ready to prepend.
    pub header: String,
    /// Set when DMARC fails with p=reject and enforcement is on: the reason for a 550 5.7.1.
    pub reject: Option<String>,
}

impl Verifier {
    /// `authserv_id` is our hostname. DNS goes through `resolver` (tests pass a stub).
    pub fn new(authserv_id: &str, resolver: Arc<dyn Resolver>, dmarc_reject: bool) -> Verifier {
        Verifier {
            authserv_id: authserv_id.to_string(),
            resolver,
            dmarc_reject,
            engine: offline_engine(),
        }
    }

    /// SPF for MAIL FROM and HELO (RFC 7208), DKIM verification of every signature, DMARC
    /// (RFC 7489) with alignment.
    ///
    /// `mail_from` is the reverse-path without angle brackets ("" for the null sender),
    /// `message` the message as received (CRLF line ends), before its forged results are
    /// stripped (they change no verdict) and ours is prepended.
    pub async fn check(
        &self,
        client_ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Inbound {
        let client_ip = client_ip.to_canonical();
        let helo = helo.trim().trim_end_matches('.');
        let mail_from = mail_from
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        // RFC 7208 §2.4: with the null reverse-path, the MAIL FROM identity is
        // postmaster@<HELO>, which is the HELO check itself.
        let mail_from_domain = mail_from.rsplit_once('@').map(|(_, domain)| domain);

        let spf_helo = self.spf(client_ip, helo, helo, "");
        let spf_mail_from = async {
            match mail_from_domain {
                Some(domain) => Some(self.spf(client_ip, helo, domain, mail_from).await),
                None => None,
            }
        };
        let parsed = AuthenticatedMessage::parse(message).map(prepare_for_verification);
        let keys = self.dkim_keys(parsed.as_ref());
        let (spf_helo, spf_mail_from, keys) = tokio::join!(spf_helo, spf_mail_from, keys);
        let dkim = self.dkim(parsed.as_ref(), &keys).await;

        // The SPF identity DMARC aligns: MAIL FROM, or HELO for the null sender.
        let (spf_domain, spf_for_dmarc) = match (mail_from_domain, spf_mail_from) {
            (Some(domain), Some(result)) => (domain, result),
            _ => (helo, spf_helo),
        };
        let dmarc = match (&parsed, &dkim) {
            (Some(parsed), Dkim::Verified(outputs)) => {
                self.dmarc(parsed, outputs, spf_domain, spf_for_dmarc).await
            }
            (Some(_), Dkim::Unavailable(why)) => DmarcVerdict::temporary(why),
            (None, _) => DmarcVerdict::none(),
        };

        let mut results = Vec::new();
        if let Some(result) = spf_mail_from {
            results.push(format!(
                "spf={} smtp.mailfrom={}",
                spf_keyword(result),
                pvalue(mail_from)
            ));
        }
        results.push(format!(
            "spf={} smtp.helo={}",
            spf_keyword(spf_helo),
            pvalue(helo)
        ));
        results.extend(dkim.results());
        results.push(dmarc.result());

        let reject = match &dmarc {
            DmarcVerdict::Evaluated {
                result: DmarcResult::Fail(_),
                policy: Policy::Reject,
                domain,
            } if self.dmarc_reject => Some(format!(
                "Unauthenticated mail from {} is refused by its DMARC policy (p=reject)",
                printable(domain)
            )),
            _ => None,
        };
        Inbound {
            header: authentication_results(&self.authserv_id, &results),
            reject,
        }
    }

    /// One SPF check_host() (RFC 7208 §4) with its time limit.
    async fn spf(&self, ip: IpAddr, helo: &str, domain: &str, sender: &str) -> SpfResult {
        let mut check = SpfCheck {
            resolver: self.resolver.as_ref(),
            ip,
            helo,
            host_domain: &self.authserv_id,
            lookups: 0,
            voids: 0,
        };
        let sender = if sender.is_empty() {
            format!("postmaster@{domain}")
        } else if sender.starts_with('@') {
            // §4.3: no local-part: "postmaster" instead.
            format!("postmaster{sender}")
        } else {
            sender.to_string()
        };
        let domain = to_a_label(domain).into_owned();
        tokio::time::timeout(SPF_TIME_LIMIT, check.check_host(domain, sender))
            .await
            .unwrap_or(SpfResult::TempError)
    }

    /// Fetches the keys of the DKIM signatures (`<selector>._domainkey.<domain>`).
    async fn dkim_keys(&self, parsed: Option<&AuthenticatedMessage<'_>>) -> Fetched {
        let names: BTreeSet<String> = parsed
            .map(|parsed| {
                parsed
                    .dkim_headers
                    .iter()
                    .map(|h| format!("{}._domainkey.{}", h.header.s, h.header.d))
                    .collect()
            })
            .unwrap_or_default();
        self.fetch::<DomainKey>(names).await
    }

    /// Verifies the DKIM signatures with the keys fetched.
    async fn dkim<'m>(
        &self,
        parsed: Option<&'m AuthenticatedMessage<'m>>,
        keys: &'m Fetched,
    ) -> Dkim<'m> {
        let Some(parsed) = parsed else {
            return Dkim::Verified(Vec::new());
        };
        let engine = match &self.engine {
            Ok(engine) => engine,
            Err(e) => return Dkim::Unavailable(e.to_string()),
        };
        let outputs = engine
            .verify_dkim(Parameters::new(parsed).with_txt_cache(keys))
            .await;
        Dkim::Verified(outputs)
    }

    /// Applies the DMARC policy of the `From:` domain (RFC 7489 §6.6), after fetching every
    /// `_dmarc` record the tree walks of mail-auth will ask for.
    async fn dmarc(
        &self,
        parsed: &AuthenticatedMessage<'_>,
        dkim: &[DkimOutput<'_>],
        spf_domain: &str,
        spf: SpfResult,
    ) -> DmarcVerdict {
        let engine = match &self.engine {
            Ok(engine) => engine,
            Err(e) => return DmarcVerdict::temporary(&e.to_string()),
        };
        let from_domains: BTreeSet<Cow<'_, str>> = parsed
            .from
            .iter()
            .filter_map(|from| from.rsplit_once('@'))
            .map(|(_, domain)| to_a_label(domain))
            .collect();
        let mut names = BTreeSet::new();
        // Several From: domains are exempt from DMARC (RFC 7489 §6.6.1): mail-auth says none.
        if let (1, Some(author)) = (from_domains.len(), from_domains.first()) {
            names.extend(dmarc_walk(author));
            // The organizational domain of an SPF or DKIM domain is looked for only when
            // that domain is below the author's organizational domain, so never for one
            // that does not even share the author's last two labels.
            let mut others = vec![to_a_label(spf_domain)];
            for output in dkim {
                if let (DkimResult::Pass | DkimResult::TempError(_), Some(signature)) =
                    (output.result(), output.signature())
                {
                    others.push(to_a_label(&signature.d));
                }
            }
            for other in others {
                if same_last_two_labels(&other, author) {
                    names.extend(dmarc_walk(&other));
                }
            }
        }
        let cache = self.fetch::<Dmarc>(names).await;
        let spf_output = SpfOutput::new(spf_domain.to_string()).with_result(spf);
        let params = DmarcParameters::new(parsed, dkim, spf_domain, &spf_output);
        let output = engine
            .verify_dmarc(Parameters::new(params).with_txt_cache(&cache))
            .await;
        DmarcVerdict::Evaluated {
            result: output.result(),
            policy: output.policy(),
            domain: output.domain().to_string(),
        }
    }

    /// Looks `names` up (TXT, concurrently, within [`FETCH_TIME_LIMIT`]) and parses each
    /// answer as `T`, the way mail-auth would: the first record that parses wins.
    async fn fetch<T>(&self, names: BTreeSet<String>) -> Fetched
    where
        T: TxtRecordParser + Into<Txt>,
    {
        let mut lookups = JoinSet::new();
        for name in names {
            let resolver = Arc::clone(&self.resolver);
            lookups.spawn(async move {
                let answer = resolver.txt(&name).await;
                (name, answer)
            });
        }
        let mut records = HashMap::new();
        let collect = async {
            while let Some(joined) = lookups.join_next().await {
                // A lookup task that panicked stays missing: a DNS error.
                if let Ok((name, answer)) = joined {
                    records.insert(
                        name.to_fqdn().into_owned().into_boxed_str(),
                        txt_entry::<T>(answer),
                    );
                }
            }
        };
        // Names still unanswered stay missing: DNS errors (temperror).
        let _ = tokio::time::timeout(FETCH_TIME_LIMIT, collect).await;
        Fetched { records }
    }
}

/// mail-auth with a hickory resolver that has no name server and reads no hosts file: every
/// name not handed over in a cache fails at once as a DNS error.
fn offline_engine() -> Result<MessageAuthenticator, EngineError> {
    let mut options = ResolverOpts::default();
    options.use_hosts_file = ResolveHosts::Never;
    let config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map(MessageAuthenticator)
        .map_err(|e| EngineError(e.to_string()))
}

/// Drops what the verifier does not implement, before mail-auth sees the signatures: the
/// third-party signature (RFC 6541 `atps=`) and reporting (RFC 6651 `r=`) tags, which would
/// need further lookups (unknown tags are ignored, RFC 6376 §3.2), and the signatures past
/// [`MAX_SIGNATURES`].
fn prepare_for_verification(mut parsed: AuthenticatedMessage<'_>) -> AuthenticatedMessage<'_> {
    parsed.dkim_headers.truncate(MAX_SIGNATURES);
    for header in &mut parsed.dkim_headers {
        header.header.atps = None;
        header.header.atpsh = None;
        header.header.r = false;
    }
    parsed
}

/// The TXT cache entry for one answer (what mail-auth's own lookup would have stored).
fn txt_entry<T: TxtRecordParser + Into<Txt>>(answer: Result<Vec<Vec<u8>>, DnsError>) -> Txt {
    match answer {
        Ok(records) => {
            let mut parsed = Err(AuthError::Dns(mail_auth::DnsError::InvalidRecordType));
            for record in &records {
                parsed = T::parse(record);
                if parsed.is_ok() {
                    break;
                }
            }
            parsed.into()
        }
        Err(DnsError::NoSuchDomain) => Txt::Error(AuthError::Dns(
            mail_auth::DnsError::RecordNotFound(ResponseCode::NXDomain),
        )),
        Err(DnsError::NoRecords) => Txt::Error(AuthError::Dns(
            mail_auth::DnsError::RecordNotFound(ResponseCode::NoError),
        )),
        Err(DnsError::Temporary(why)) => {
            Txt::Error(AuthError::Dns(mail_auth::DnsError::Resolver(why)))
        }
    }
}

/// The `_dmarc` names mail-auth's DNS tree walk (RFC 9989 §4.10) queries for `domain`: the
/// domain itself, then at most 7 labels, then one label less each time down to the TLD.
/// Without a trailing dot, as [`Resolver`] takes them.
fn dmarc_walk(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}", labels[total - count..].join(".")));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

/// Whether two domain names end with the same two labels (case-insensitively).
fn same_last_two_labels(a: &str, b: &str) -> bool {
    let tail = |name: &str| -> Vec<String> {
        name.trim_end_matches('.')
            .rsplit('.')
            .take(2)
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let (a, b) = (tail(a), tail(b));
    a.len() == 2 && a == b
}

/// TXT records fetched through [`Resolver`], handed to mail-auth as its cache. It is never
/// written to: mail-auth inserts only what its own resolver found, and that has no server.
/// A name mail-auth asks for that is not here ends as a DNS error (temperror).
struct Fetched {
    records: HashMap<Box<str>, Txt>,
}

impl ResolverCache<Box<str>, Txt> for Fetched {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.records.get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.records.get(name).cloned()
    }

    fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
}

/// DKIM outcomes for the header.
enum Dkim<'m> {
    Verified(Vec<DkimOutput<'m>>),
    /// The engine could not be set up: a temporary error.
    Unavailable(String),
}

impl Dkim<'_> {
    /// One `dkim=` result per signature (RFC 8601 §2.7.1; `header.b` per RFC 6008), or
    /// `dkim=none` for an unsigned message.
    fn results(&self) -> Vec<String> {
        let outputs = match self {
            Dkim::Unavailable(why) => return vec![format!("dkim=temperror{}", reason(why))],
            Dkim::Verified(outputs) => outputs,
        };
        if outputs.is_empty() {
            return vec!["dkim=none".to_string()];
        }
        outputs
            .iter()
            .take(MAX_SIGNATURES)
            .map(|output| {
                let (keyword, why) = dkim_keyword(output.result());
                let mut result = format!("dkim={keyword}");
                if let Some(why) = why {
                    result.push_str(&reason(&why.to_string()));
                }
                if let Some(signature) = output.signature() {
                    let b = base64::engine::general_purpose::STANDARD.encode(&signature.b);
                    result.push_str(&format!(
                        " header.d={} header.s={} header.b={}",
                        pvalue(&signature.d),
                        pvalue(&signature.s),
                        pvalue(b.get(..8).unwrap_or(&b))
                    ));
                }
                result
            })
            .collect()
    }
}

/// The RFC 8601 §2.7.1 keyword for a DKIM outcome, with the error behind it.
fn dkim_keyword(result: &DkimResult) -> (&'static str, Option<&AuthError>) {
    match result {
        DkimResult::Pass => ("pass", None),
        DkimResult::Fail(e) => ("fail", Some(e)),
        // RFC 6376 §6.1.3: a body hash mismatch is a failed verification, not a syntax
        // problem (mail-auth reports it as neutral).
        DkimResult::Neutral(e @ AuthError::Dkim(DkimError::FailedBodyHashMatch)) => {
            ("fail", Some(e))
        }
        DkimResult::Neutral(e) => ("neutral", Some(e)),
        DkimResult::PermError(e) => ("permerror", Some(e)),
        DkimResult::TempError(e) => ("temperror", Some(e)),
        DkimResult::None => ("none", None),
    }
}

/// The DMARC outcome for the header and the reject decision.
enum DmarcVerdict {
    Evaluated {
        result: DmarcResult,
        policy: Policy,
        domain: String,
    },
    Unavailable(String),
}

impl DmarcVerdict {
    fn none() -> DmarcVerdict {
        DmarcVerdict::Evaluated {
            result: DmarcResult::None,
            policy: Policy::None,
            domain: String::new(),
        }
    }

    fn temporary(why: &str) -> DmarcVerdict {
        DmarcVerdict::Unavailable(why.to_string())
    }

    /// `dmarc=<result> (p=<policy applied>) header.from=<domain>` (RFC 8601 §2.7.5 names
    /// the result; the policy in a comment, as the large providers write it).
    fn result(&self) -> String {
        let (result, policy, domain) = match self {
            DmarcVerdict::Unavailable(why) => return format!("dmarc=temperror{}", reason(why)),
            DmarcVerdict::Evaluated {
                result,
                policy,
                domain,
            } => (result, policy, domain),
        };
        let keyword = match result {
            DmarcResult::Pass => "pass",
            DmarcResult::Fail(_) => "fail",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::None => "none",
        };
        let mut text = format!("dmarc={keyword}");
        if !matches!(result, DmarcResult::None) {
            let policy = match policy {
                Policy::Reject => Some("reject"),
                Policy::Quarantine => Some("quarantine"),
                Policy::None => Some("none"),
                Policy::Unspecified => None,
            };
            if let Some(policy) = policy {
                text.push_str(&format!(" (p={policy})"));
            }
        }
        if !domain.is_empty() {
            text.push_str(&format!(" header.from={}", pvalue(domain)));
        }
        text
    }
}

/// The RFC 8601 §2.7.2 keyword for an SPF result.
fn spf_keyword(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// The header field: one result per folded line.
fn authentication_results(authserv_id: &str, results: &[String]) -> String {
    let mut header = format!("Authentication-Results: {}", pvalue(authserv_id));
    for result in results {
        header.push_str(";\r\n\t");
        header.push_str(result);
    }
    header.push_str("\r\n");
    header
}

/// A property value (RFC 8601 §2.2 `pvalue`): as is when it is a dot-atom, `local@domain`
/// or token, else a quoted-string. Only printable ASCII survives, at most [`MAX_VALUE`]
/// characters; nothing from outside can break the header.
fn pvalue(text: &str) -> String {
    let text: String = text.chars().take(MAX_VALUE).collect();
    let atom = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
    };
    let plain = match text.rsplit_once('@') {
        Some((local, domain)) => (local.is_empty() || atom(local)) && atom(domain),
        None => atom(&text),
    };
    if plain { text } else { quoted_string(&text) }
}

/// ` reason="…"` (RFC 8601 §2.7), cut to [`MAX_REASON`] characters.
fn reason(why: &str) -> String {
    let short: String = why.chars().take(MAX_REASON).collect();
    format!(" reason={}", quoted_string(&short))
}

/// An RFC 5322 quoted-string of the printable part of `text`.
fn quoted_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in printable(text).chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Printable ASCII only (others become `?`): safe in a header and in an SMTP reply.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Whether `domain` can be an SPF <domain>: at least two labels of 1 to 63 octets, at most
/// 253 octets, no control, space or address-literal bracket, and a last label that is not
/// a number (so no IP address) (RFC 7208 §4.3, §2.3).
fn valid_spf_domain(domain: &str) -> bool {
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
struct SpfCheck<'a> {
    resolver: &'a dyn Resolver,
    ip: IpAddr,
    helo: &'a str,
    host_domain: &'a str,
    lookups: u32,
    voids: u32,
}

/// What ends an SPF evaluation early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum SpfAbort {
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
    fn check_host<'s>(&'s mut self, domain: String, sender: String) -> BoxFuture<'s, SpfResult> {
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
fn target_name(expanded: &str) -> String {
    let mut name = expanded.trim_end_matches('.');
    while name.len() > 253 {
        match name.split_once('.') {
            Some((_, rest)) => name = rest,
            None => break,
        }
    }
    name.to_ascii_lowercase()
}

/// Removes every Authentication-Results header field that claims our authserv-id (forged from
/// outside); keeps others. Returns the message unchanged (borrowed) when there is none.
///
/// Only the message's own header section is looked at. The authserv-id is compared without
/// regard to case or a trailing dot, quoted or not, after any comments (RFC 8601 §5).
pub fn strip_forged_results<'a>(message: &'a [u8], authserv_id: &str) -> Cow<'a, [u8]> {
    let ours = authserv_id.trim_end_matches('.');
    let mut forged: Vec<(usize, usize)> = Vec::new();
    let mut position = 0;
    while position < message.len() {
        let (field_end, is_blank) = field_span(message, position);
        if is_blank {
            break;
        }
        let field = &message[position..field_end];
        if let Some(value) = results_value(field)
            && authserv_id_of(value)
                .is_some_and(|id| id.trim_end_matches('.').eq_ignore_ascii_case(ours))
        {
            forged.push((position, field_end));
        }
        position = field_end;
    }
    if forged.is_empty() {
        return Cow::Borrowed(message);
    }
    let mut kept = Vec::with_capacity(message.len());
    let mut from = 0;
    for (start, end) in forged {
        kept.extend_from_slice(&message[from..start]);
        from = end;
    }
    kept.extend_from_slice(&message[from..]);
    Cow::Owned(kept)
}

/// The end of the header field starting at `start` (after its last continuation line), and
/// whether the line at `start` is the blank line ending the header section.
fn field_span(message: &[u8], start: usize) -> (usize, bool) {
    let line_end = |from: usize| {
        message[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| from + i + 1)
    };
    let first_end = line_end(start);
    let first = &message[start..first_end];
    if first == b"\r\n" || first == b"\n" {
        return (first_end, true);
    }
    let mut end = first_end;
    while end < message.len() && matches!(message[end], b' ' | b'\t') {
        end = line_end(end);
    }
    (end, false)
}

/// The value of an `Authentication-Results` field, if `field` is one.
fn results_value(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    let name = field[..colon].trim_ascii_end();
    name.eq_ignore_ascii_case(b"Authentication-Results")
        .then(|| &field[colon + 1..])
}

/// The authserv-id at the start of an Authentication-Results value (RFC 8601 §2.2), after
/// folding white space and comments: a token, or the contents of a quoted-string.
fn authserv_id_of(value: &[u8]) -> Option<String> {
    let mut i = 0;
    let mut depth = 0usize;
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = value.get(i..)?;
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let mut id = Vec::new();
        let mut j = 0;
        while j < quoted.len() {
            match quoted[j] {
                b'"' => return String::from_utf8(id).ok(),
                b'\\' => {
                    j += 1;
                    id.extend(quoted.get(j).copied());
                }
                b'\r' | b'\n' => {}
                b => id.push(b),
            }
            j += 1;
        }
        return None;
    }
    let end = rest
        .iter()
        .position(|&b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
        .unwrap_or(rest.len());
    (end > 0).then(|| String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::stub::StubResolver as Stub;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;

    const US: &str = "mx.example.net";
    const GOOD_IP: &str = "192.0.2.10";
    const BAD_IP: &str = "198.51.100.1";
    const MESSAGE: &str = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n\
                           Subject: hello\r\n\r\nHi Bob.\r\n";

    fn temporary() -> DnsError {
        DnsError::Temporary("SERVFAIL".to_string())
    }

    /// A new Ed25519 key and its DNS record (RFC 8463).
    fn ed25519_key() -> (Ed25519Key, String) {
        let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
        let record = format!(
            "v=DKIM1; k=ed25519; p={}",
            base64::engine::general_purpose::STANDARD.encode(key.public_key())
        );
        (key, record)
    }

    /// `message` with a DKIM-Signature of `domain`, selector "sel", prepended; and the
    /// signature's first 8 characters of b=, as `header.b` shows them.
    fn signed(message: &str, domain: &str, key: Ed25519Key) -> (String, String) {
        let signature = DkimSigner::from_key(key)
            .domain(domain)
            .selector("sel")
            .headers(["From", "To", "Subject"])
            .sign(message.as_bytes())
            .unwrap();
        let b = base64::engine::general_purpose::STANDARD.encode(&signature.b);
        (
            format!("{}{message}", signature.to_header()),
            b[..8].to_string(),
        )
    }

    async fn check_with(
        stub: Stub,
        reject: bool,
        ip: &str,
        helo: &str,
        mail_from: &str,
        message: &str,
    ) -> Inbound {
        let verifier = Verifier::new(US, Arc::new(stub), reject);
        verifier
            .check(ip.parse().unwrap(), helo, mail_from, message.as_bytes())
            .await
    }

    async fn check(stub: Stub, ip: &str, message: &str) -> Inbound {
        check_with(
            stub,
            true,
            ip,
            "mail.example.com",
            "alice@example.com",
            message,
        )
        .await
    }

    /// The `method=...` results of a header, one string each, in order.
    fn results(header: &str) -> Vec<String> {
        let value = header
            .strip_prefix("Authentication-Results: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        let mut parts = value.split(";\r\n\t");
        assert_eq!(parts.next(), Some(US));
        parts.map(str::to_string).collect()
    }

    fn spf_mail_from(inbound: &Inbound) -> String {
        results(&inbound.header)
            .into_iter()
            .find(|r| r.contains("smtp.mailfrom="))
            .unwrap()
    }

    /// The SPF result word ("pass", "fail", ...) for MAIL FROM:<alice@example.com> from `ip`.
    async fn spf_verdict(stub: Stub, ip: &str) -> String {
        let inbound = check(stub, ip, MESSAGE).await;
        let result = spf_mail_from(&inbound);
        let verdict = result.split(' ').next().unwrap_or_default();
        verdict.trim_start_matches("spf=").to_string()
    }

    fn result_of(inbound: &Inbound, method: &str) -> String {
        results(&inbound.header)
            .into_iter()
            .find(|r| r.starts_with(&format!("{method}=")))
            .unwrap()
    }

    fn spf_stub(record: &str) -> Stub {
        Stub::default().txt("example.com", &[record])
    }

    // --- SPF ---

    #[tokio::test]
    async fn spf_pass() {
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24 -all");
        let inbound = check(stub, GOOD_IP, MESSAGE).await;
        assert_eq!(
            spf_mail_from(&inbound),
            "spf=pass smtp.mailfrom=alice@example.com"
        );
    }

    #[tokio::test]
    async fn spf_fail() {
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24 -all");
        let inbound = check(stub, BAD_IP, MESSAGE).await;
        assert_eq!(
            spf_mail_from(&inbound),
            "spf=fail smtp.mailfrom=alice@example.com"
        );
        // No DMARC record: an SPF failure alone never rejects.
        assert_eq!(inbound.reject, None);
    }

    #[tokio::test]
    async fn spf_softfail_and_neutral() {
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24 ~all");
        assert_eq!(spf_verdict(stub, BAD_IP).await, "softfail");
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24 ?all");
        assert_eq!(spf_verdict(stub, BAD_IP).await, "neutral");
        // No match and no "all": neutral (§4.7).
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24");
        assert_eq!(spf_verdict(stub, BAD_IP).await, "neutral");
    }

    #[tokio::test]
    async fn spf_none() {
        // No such domain, no TXT at all, and TXT records that are not SPF.
        assert_eq!(spf_verdict(Stub::default(), GOOD_IP).await, "none");
        let stub = Stub::default().txt_err("example.com", DnsError::NoRecords);
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "none");
        let stub = spf_stub("google-site-verification=abc");
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "none");
    }

    #[tokio::test]
    async fn spf_temperror() {
        let stub = Stub::default().txt_err("example.com", temporary());
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "temperror");
        // Also when a lookup the record needs fails temporarily.
        let stub = spf_stub("v=spf1 include:_spf.example.org -all")
            .txt_err("_spf.example.org", temporary());
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "temperror");
        let stub =
            spf_stub("v=spf1 a:out.example.com -all").ips_err("out.example.com", temporary());
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "temperror");
    }

    #[tokio::test]
    async fn spf_permerror() {
        // Two SPF records (§4.5), a syntax error, an include without record (§5.2).
        let stub = spf_stub("v=spf1 -all").txt("example.com", &["v=spf1 -all", "v=spf1 +all"]);
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
        // (mail-auth's parser is lenient with some errors, e.g. "ip4:300.1.1.1" or an
        // unknown mechanism, which it ignores; a missing address it refuses.)
        let stub = spf_stub("v=spf1 ip4 -all");
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
        let stub = spf_stub("v=spf1 include:nothing.example.org -all");
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
    }

    #[tokio::test]
    async fn spf_mechanisms() {
        let cases: Vec<(Stub, &str)> = vec![
            (
                spf_stub("v=spf1 a -all").ips("example.com", &["2001:db8::1", GOOD_IP]),
                "pass",
            ),
            (
                spf_stub("v=spf1 a/24 -all").ips("example.com", &["192.0.2.200"]),
                "pass",
            ),
            (
                spf_stub("v=spf1 a -all").ips("example.com", &["192.0.2.11"]),
                "fail",
            ),
            (
                spf_stub("v=spf1 mx -all")
                    .mx(
                        "example.com",
                        &[(10, "mx1.example.com"), (20, "mx2.example.com")],
                    )
                    .ips("mx2.example.com", &[GOOD_IP]),
                "pass",
            ),
            (
                spf_stub("v=spf1 include:_spf.example.org -all")
                    .txt("_spf.example.org", &["v=spf1 ip4:192.0.2.10 -all"]),
                "pass",
            ),
            (
                // A failing include does not match; the next directive decides.
                spf_stub("v=spf1 include:_spf.example.org ~all")
                    .txt("_spf.example.org", &["v=spf1 -all"]),
                "softfail",
            ),
            (
                spf_stub("v=spf1 redirect=_spf.example.org")
                    .txt("_spf.example.org", &["v=spf1 ip4:192.0.2.0/28 -all"]),
                "pass",
            ),
            (spf_stub("v=spf1 redirect=nothing.example.org"), "permerror"),
            (
                spf_stub("v=spf1 exists:%{i}._spf.example.com -all")
                    .ips("192.0.2.10._spf.example.com", &["127.0.0.2"]),
                "pass",
            ),
            (
                spf_stub("v=spf1 exists:%{l}.users.example.com -all")
                    .ips("bob.users.example.com", &["127.0.0.2"]),
                "fail",
            ),
            (spf_stub("v=spf1 ptr -all"), "fail"),
        ];
        for (i, (stub, want)) in cases.into_iter().enumerate() {
            let inbound = check(stub, GOOD_IP, MESSAGE).await;
            assert_eq!(
                spf_mail_from(&inbound),
                format!("spf={want} smtp.mailfrom=alice@example.com"),
                "case {i}"
            );
        }
    }

    #[tokio::test]
    async fn spf_ipv6_client() {
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all");
        assert_eq!(spf_verdict(stub, "2001:db8::25").await, "pass");
        // An IPv4-mapped IPv6 address is the IPv4 client.
        let stub = spf_stub("v=spf1 ip4:192.0.2.0/24 -all");
        assert_eq!(spf_verdict(stub, "::ffff:192.0.2.10").await, "pass");
    }

    #[tokio::test]
    async fn spf_limits() {
        // 11 DNS mechanisms: permerror (§4.6.4)…
        let many: Vec<String> = (0..11).map(|i| format!("a:h{i}.example.com")).collect();
        let record = format!("v=spf1 {} -all", many.join(" "));
        let mut stub = spf_stub(&record);
        for i in 0..11 {
            stub = stub.ips(&format!("h{i}.example.com"), &["203.0.113.1"]);
        }
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
        // …10 are fine.
        let record = format!("v=spf1 {} -all", many[..10].join(" "));
        let mut stub = spf_stub(&record);
        for i in 0..10 {
            stub = stub.ips(&format!("h{i}.example.com"), &["203.0.113.1"]);
        }
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "fail");
        // A third void lookup: permerror.
        let stub = spf_stub("v=spf1 a:v1.example.com a:v2.example.com a:v3.example.com -all");
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
        // Names with only AAAA records are void for an IPv4 client's "a".
        let stub = spf_stub("v=spf1 a:v1.example.com a:v2.example.com a:v3.example.com -all")
            .ips("v1.example.com", &["2001:db8::1"])
            .ips("v2.example.com", &["2001:db8::2"])
            .ips("v3.example.com", &["2001:db8::3"]);
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
        // An include loop ends at the limit.
        let stub = spf_stub("v=spf1 include:example.com -all");
        assert_eq!(spf_verdict(stub, GOOD_IP).await, "permerror");
    }

    #[tokio::test]
    async fn spf_helo_and_null_sender() {
        let stub = Stub::default()
            .txt("mail.example.com", &["v=spf1 a -all"])
            .ips("mail.example.com", &[GOOD_IP]);
        let inbound = check(stub, GOOD_IP, MESSAGE).await;
        assert_eq!(
            results(&inbound.header)[1],
            "spf=pass smtp.helo=mail.example.com"
        );
        // The null sender: only the HELO identity is checked.
        let stub = Stub::default()
            .txt("mail.example.com", &["v=spf1 -all"])
            .ips("mail.example.com", &[GOOD_IP]);
        let inbound = check_with(stub, true, GOOD_IP, "mail.example.com", "", MESSAGE).await;
        let all = results(&inbound.header);
        assert_eq!(all[0], "spf=fail smtp.helo=mail.example.com");
        assert!(!inbound.header.contains("smtp.mailfrom"));
        // An address literal or a single label is not checked.
        for helo in ["[192.0.2.10]", "localhost", "192.0.2.10"] {
            let stub = Stub::default();
            let inbound = check_with(stub, true, GOOD_IP, helo, "", MESSAGE).await;
            assert!(results(&inbound.header)[0].starts_with("spf=none smtp.helo="));
        }
    }

    // --- DKIM ---

    #[tokio::test]
    async fn dkim_pass() {
        let (key, record) = ed25519_key();
        let (message, b) = signed(MESSAGE, "example.com", key);
        let stub = Stub::default().txt("sel._domainkey.example.com", &[&record]);
        let inbound = check(stub, BAD_IP, &message).await;
        assert_eq!(
            result_of(&inbound, "dkim"),
            format!("dkim=pass header.d=example.com header.s=sel header.b={b}")
        );
    }

    #[tokio::test]
    async fn dkim_fail_after_tampering() {
        let (key, record) = ed25519_key();
        let (message, _) = signed(MESSAGE, "example.com", key);
        for tampered in [
            message.replace("Subject: hello", "Subject: hullo"),
            message.replace("Hi Bob.", "Hi Eve."),
        ] {
            let stub = Stub::default().txt("sel._domainkey.example.com", &[&record]);
            let inbound = check(stub, BAD_IP, &tampered).await;
            let dkim = result_of(&inbound, "dkim");
            assert!(dkim.starts_with("dkim=fail reason="), "{dkim}");
            assert!(
                dkim.contains(" header.d=example.com header.s=sel header.b="),
                "{dkim}"
            );
        }
    }

    #[tokio::test]
    async fn dkim_none_permerror_temperror() {
        let inbound = check(Stub::default(), BAD_IP, MESSAGE).await;
        assert_eq!(result_of(&inbound, "dkim"), "dkim=none");
        let (key, _) = ed25519_key();
        let (message, _) = signed(MESSAGE, "example.com", key);
        // No key published: permerror (RFC 6376 §6.1.2).
        let inbound = check(Stub::default(), BAD_IP, &message).await;
        assert!(result_of(&inbound, "dkim").starts_with("dkim=permerror "));
        // The key lookup fails: temperror.
        let stub = Stub::default().txt_err("sel._domainkey.example.com", temporary());
        let inbound = check(stub, BAD_IP, &message).await;
        assert!(result_of(&inbound, "dkim").starts_with("dkim=temperror "));
    }

    #[tokio::test]
    async fn dkim_every_signature_is_reported() {
        let (key1, record1) = ed25519_key();
        let (key2, record2) = ed25519_key();
        let (once, _) = signed(MESSAGE, "example.com", key1);
        let (twice, _) = signed(&once, "esp.example.org", key2);
        let stub = Stub::default()
            .txt("sel._domainkey.example.com", &[&record1])
            .txt("sel._domainkey.esp.example.org", &[&record2]);
        let inbound = check(stub, BAD_IP, &twice).await;
        let dkim: Vec<String> = results(&inbound.header)
            .into_iter()
            .filter(|r| r.starts_with("dkim="))
            .collect();
        assert_eq!(dkim.len(), 2, "{dkim:?}");
        assert!(dkim.iter().all(|r| r.starts_with("dkim=pass ")), "{dkim:?}");
    }

    #[tokio::test]
    async fn at_most_eight_signatures() {
        let mut message = MESSAGE.to_string();
        let mut stub = Stub::default();
        for i in 0..9 {
            let (key, record) = ed25519_key();
            let domain = format!("d{i}.example.org");
            message = signed(&message, &domain, key).0;
            stub = stub.txt(&format!("sel._domainkey.{domain}"), &[&record]);
        }
        let stub = Arc::new(stub);
        let verifier = Verifier::new(US, stub.clone(), true);
        let inbound = verifier
            .check(BAD_IP.parse().unwrap(), "h.example", "", message.as_bytes())
            .await;
        let dkim = results(&inbound.header)
            .into_iter()
            .filter(|r| r.starts_with("dkim=pass "))
            .count();
        assert_eq!(dkim, 8);
        let key_queries = stub
            .queries()
            .iter()
            .filter(|q| q.contains("._domainkey."))
            .count();
        assert_eq!(key_queries, 8);
    }

    // --- DMARC ---

    const DMARC_REJECT: &str = "v=DMARC1; p=reject";

    #[tokio::test]
    async fn dmarc_pass_by_aligned_dkim() {
        let (key, record) = ed25519_key();
        let (message, _) = signed(MESSAGE, "example.com", key);
        let stub = spf_stub("v=spf1 -all")
            .txt("sel._domainkey.example.com", &[&record])
            .txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check(stub, BAD_IP, &message).await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=pass (p=reject) header.from=example.com"
        );
        assert_eq!(inbound.reject, None);
    }

    #[tokio::test]
    async fn dmarc_pass_by_relaxed_spf_alignment() {
        // MAIL FROM a subdomain, SPF pass, no signature: aligned in relaxed mode.
        let stub = Stub::default()
            .txt("bounces.example.com", &["v=spf1 ip4:192.0.2.10 -all"])
            .txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check_with(
            stub,
            true,
            GOOD_IP,
            "mail.example.com",
            "b-123@bounces.example.com",
            MESSAGE,
        )
        .await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=pass (p=reject) header.from=example.com"
        );
        // Strict SPF alignment: the same mail fails, and is refused.
        let stub = Stub::default()
            .txt("bounces.example.com", &["v=spf1 ip4:192.0.2.10 -all"])
            .txt("_dmarc.example.com", &["v=DMARC1; p=reject; aspf=s"]);
        let inbound = check_with(
            stub,
            true,
            GOOD_IP,
            "mail.example.com",
            "b-123@bounces.example.com",
            MESSAGE,
        )
        .await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=fail (p=reject) header.from=example.com"
        );
        assert!(inbound.reject.is_some());
    }

    #[tokio::test]
    async fn dmarc_fail_unaligned_is_rejected() {
        // DKIM and SPF pass, but for another domain than From:.
        let (key, record) = ed25519_key();
        let (message, _) = signed(MESSAGE, "other.example.org", key);
        let stub = Stub::default()
            .txt("other.example.org", &["v=spf1 ip4:192.0.2.10 -all"])
            .txt("sel._domainkey.other.example.org", &[&record])
            .txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check_with(
            stub,
            true,
            GOOD_IP,
            "mail.example.org",
            "x@other.example.org",
            &message,
        )
        .await;
        assert!(spf_mail_from(&inbound).starts_with("spf=pass "));
        assert!(result_of(&inbound, "dkim").starts_with("dkim=pass "));
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=fail (p=reject) header.from=example.com"
        );
        assert_eq!(
            inbound.reject.as_deref(),
            Some("Unauthenticated mail from example.com is refused by its DMARC policy (p=reject)")
        );
    }

    #[tokio::test]
    async fn dmarc_reject_off_switch() {
        let stub = spf_stub("v=spf1 -all").txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check_with(
            stub,
            false,
            BAD_IP,
            "mail.example.com",
            "alice@example.com",
            MESSAGE,
        )
        .await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=fail (p=reject) header.from=example.com"
        );
        assert_eq!(inbound.reject, None);
    }

    #[tokio::test]
    async fn dmarc_fail_without_reject_policy_is_accepted() {
        for (record, policy) in [
            ("v=DMARC1; p=none", "none"),
            ("v=DMARC1; p=quarantine", "quarantine"),
            // t=y (testing) lowers reject to quarantine.
            ("v=DMARC1; p=reject; t=y", "quarantine"),
        ] {
            let stub = spf_stub("v=spf1 -all").txt("_dmarc.example.com", &[record]);
            let inbound = check(stub, BAD_IP, MESSAGE).await;
            assert_eq!(
                result_of(&inbound, "dmarc"),
                format!("dmarc=fail (p={policy}) header.from=example.com")
            );
            assert_eq!(inbound.reject, None, "{record}");
        }
    }

    #[tokio::test]
    async fn dmarc_subdomain_policy() {
        // From: a subdomain without its own record: the organizational domain's sp= applies.
        let message = MESSAGE.replace("alice@example.com", "alice@news.example.com");
        let stub = Stub::default().txt("_dmarc.example.com", &["v=DMARC1; p=none; sp=reject"]);
        let inbound = check(stub, BAD_IP, &message).await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=fail (p=reject) header.from=news.example.com"
        );
        assert!(inbound.reject.is_some());
        // np= (non-existent subdomains, RFC 9989) is not applied: sp= is, as in RFC 7489.
        let stub = Stub::default().txt(
            "_dmarc.example.com",
            &["v=DMARC1; p=none; sp=reject; np=quarantine"],
        );
        let inbound = check(stub, BAD_IP, &message).await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=fail (p=reject) header.from=news.example.com"
        );
    }

    #[tokio::test]
    async fn dmarc_none() {
        let stub = spf_stub("v=spf1 -all");
        let inbound = check(stub, BAD_IP, MESSAGE).await;
        assert_eq!(
            result_of(&inbound, "dmarc"),
            "dmarc=none header.from=example.com"
        );
        assert_eq!(inbound.reject, None);
        // No From: at all.
        let inbound = check(Stub::default(), BAD_IP, "Subject: x\r\n\r\nbody\r\n").await;
        assert_eq!(result_of(&inbound, "dmarc"), "dmarc=none");
    }

    #[tokio::test]
    async fn dns_errors_never_reject() {
        // The DMARC record lookup fails.
        let stub = spf_stub("v=spf1 -all").txt_err("_dmarc.example.com", temporary());
        let inbound = check(stub, BAD_IP, MESSAGE).await;
        assert!(result_of(&inbound, "dmarc").starts_with("dmarc=temperror"));
        assert_eq!(inbound.reject, None);
        // p=reject, but SPF could not be evaluated and nothing passed.
        let stub = Stub::default()
            .txt_err("example.com", temporary())
            .txt("_dmarc.example.com", &[DMARC_REJECT]);
        assert_eq!(spf_verdict(stub, BAD_IP).await, "temperror");
        assert!(result_of(&inbound, "dmarc").starts_with("dmarc=temperror"));
        assert_eq!(inbound.reject, None);
        // p=reject, and the aligned signature's key could not be fetched.
        let (key, _) = ed25519_key();
        let (message, _) = signed(MESSAGE, "example.com", key);
        let stub = spf_stub("v=spf1 -all")
            .txt_err("sel._domainkey.example.com", temporary())
            .txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check(stub, BAD_IP, &message).await;
        assert!(result_of(&inbound, "dkim").starts_with("dkim=temperror "));
        assert!(result_of(&inbound, "dmarc").starts_with("dmarc=temperror"));
        assert_eq!(inbound.reject, None);
    }

    #[tokio::test]
    async fn dmarc_queries_only_the_tree_walk() {
        let stub = Arc::new(spf_stub("v=spf1 -all").txt("_dmarc.example.com", &[DMARC_REJECT]));
        let verifier = Verifier::new(US, stub.clone(), true);
        let inbound = verifier
            .check(
                BAD_IP.parse().unwrap(),
                "mail.example.com",
                "alice@example.com",
                MESSAGE.as_bytes(),
            )
            .await;
        assert!(inbound.reject.is_some());
        let mut queries = stub.queries();
        queries.sort();
        assert_eq!(
            queries,
            [
                "TXT _dmarc.com",
                "TXT _dmarc.example.com",
                "TXT example.com",
                "TXT mail.example.com"
            ]
        );
    }

    // --- The header ---

    #[tokio::test]
    async fn whole_header() {
        let (key, record) = ed25519_key();
        let (message, b) = signed(MESSAGE, "example.com", key);
        let stub = spf_stub("v=spf1 ip4:192.0.2.10 -all")
            .txt("sel._domainkey.example.com", &[&record])
            .txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check(stub, GOOD_IP, &message).await;
        assert_eq!(
            inbound.header,
            format!(
                "Authentication-Results: mx.example.net;\r\n\
                 \tspf=pass smtp.mailfrom=alice@example.com;\r\n\
                 \tspf=none smtp.helo=mail.example.com;\r\n\
                 \tdkim=pass header.d=example.com header.s=sel header.b={b};\r\n\
                 \tdmarc=pass (p=reject) header.from=example.com\r\n"
            )
        );
        assert_eq!(inbound.reject, None);
    }

    #[tokio::test]
    async fn client_text_cannot_break_the_header() {
        let inbound = check_with(
            Stub::default(),
            true,
            GOOD_IP,
            "evil\r\nX-Injected: yes",
            "\"a b\\\"\r\n\"@example.com",
            MESSAGE,
        )
        .await;
        let lines: Vec<&str> = inbound.header.split("\r\n").collect();
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.is_empty() || l.starts_with('\t')),
            "{lines:?}"
        );
        assert!(
            inbound
                .header
                .contains("smtp.helo=\"evil??X-Injected: yes\"")
        );
        assert!(
            inbound
                .header
                .contains("smtp.mailfrom=\"\\\"a b\\\\\\\"??\\\"@example.com\""),
            "{}",
            inbound.header
        );
    }

    #[test]
    fn pvalue_forms() {
        assert_eq!(pvalue("user@example.com"), "user@example.com");
        assert_eq!(pvalue("@example.com"), "@example.com");
        assert_eq!(pvalue("example.com"), "example.com");
        assert_eq!(pvalue("[192.0.2.1]"), "\"[192.0.2.1]\"");
        assert_eq!(pvalue("a b@example.com"), "\"a b@example.com\"");
        assert_eq!(pvalue("q\"\\"), "\"q\\\"\\\\\"");
        assert_eq!(pvalue(""), "\"\"");
        assert_eq!(pvalue(&"a".repeat(1000)).len(), MAX_VALUE);
    }

    #[test]
    fn last_two_labels() {
        assert!(same_last_two_labels("bounces.Example.com", "example.com."));
        assert!(!same_last_two_labels("example.org", "example.com"));
        assert!(!same_last_two_labels("com", "com"));
    }

    #[test]
    fn dmarc_walk_names() {
        assert_eq!(
            dmarc_walk("example.com"),
            ["_dmarc.example.com", "_dmarc.com"]
        );
        assert_eq!(dmarc_walk("com"), Vec::<String>::new());
        let long = dmarc_walk("a.b.c.d.e.f.g.h.i.example.com");
        assert_eq!(long[0], "_dmarc.a.b.c.d.e.f.g.h.i.example.com");
        assert_eq!(long[1], "_dmarc.e.f.g.h.i.example.com");
        assert_eq!(long.last().map(String::as_str), Some("_dmarc.com"));
        assert_eq!(long.len(), 8);
    }

    // --- The engine stays offline, and the future can be spawned ---

    #[tokio::test]
    async fn engine_never_queries_by_itself() {
        let engine = offline_engine().unwrap();
        let started = std::time::Instant::now();
        let answer = engine
            .txt_lookup::<Spf>("example.com", None::<&Fetched>)
            .await;
        assert!(
            matches!(
                answer,
                Err(AuthError::Dns(mail_auth::DnsError::Resolver(_)))
            ),
            "{:?}",
            answer.err()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn verifier_is_built_outside_a_runtime_and_check_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let verifier = Verifier::new(US, Arc::new(Stub::default()), true);
        assert!(verifier.engine.is_ok());
        let future = verifier.check(GOOD_IP.parse().unwrap(), "h.example", "", b"");
        assert_send(&future);
    }

    // --- Forged headers ---

    #[test]
    fn strip_forged_results_removes_ours_only() {
        let message = "Received: from x\r\n\
                       Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=a@b.c\r\n\
                       authentication-results :MX.Example.NET.;\r\n\
                       \tdkim=pass header.d=b.c\r\n\
                       Authentication-Results: (forged) \"mx.example.net\"; dmarc=pass\r\n\
                       Authentication-Results:\r\n mx.example.net\r\n ; dmarc=pass\r\n\
                       Authentication-Results: mx.google.com; spf=pass\r\n\
                       Authentication-Results: mx.example.net.evil.test; spf=pass\r\n\
                       Authentication-Results: mx.example.network; spf=pass\r\n\
                       Subject: hi\r\n\
                       \r\n\
                       Authentication-Results: mx.example.net; quoted in the body\r\n";
        let stripped = strip_forged_results(message.as_bytes(), US);
        assert!(matches!(stripped, Cow::Owned(_)));
        assert_eq!(
            String::from_utf8(stripped.into_owned()).unwrap(),
            "Received: from x\r\n\
             Authentication-Results: mx.google.com; spf=pass\r\n\
             Authentication-Results: mx.example.net.evil.test; spf=pass\r\n\
             Authentication-Results: mx.example.network; spf=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.example.net; quoted in the body\r\n"
        );
    }

    #[test]
    fn strip_forged_results_borrows_when_nothing_is_forged() {
        let message = b"Authentication-Results: mx.google.com; spf=pass\r\nSubject: x\r\n\r\nbody";
        assert!(matches!(
            strip_forged_results(message, US),
            Cow::Borrowed(m) if m == message
        ));
        // No body, bare LF line ends, an empty message.
        let message = b"Subject: x\nAuthentication-Results: mx.example.net; none\n";
        assert_eq!(strip_forged_results(message, US).as_ref(), b"Subject: x\n");
        assert!(matches!(strip_forged_results(b"", US), Cow::Borrowed(_)));
    }

    #[tokio::test]
    async fn the_checked_message_may_carry_a_forged_header() {
        // The verdict does not depend on a forged field: it is computed, then the caller
        // strips the forgery and prepends ours.
        let forged = format!("Authentication-Results: {US}; dmarc=pass\r\n{MESSAGE}");
        let stub = spf_stub("v=spf1 -all").txt("_dmarc.example.com", &[DMARC_REJECT]);
        let inbound = check(stub, BAD_IP, &forged).await;
        assert!(inbound.reject.is_some());
        let stripped = strip_forged_results(forged.as_bytes(), US);
        assert_eq!(stripped.as_ref(), MESSAGE.as_bytes());
    }
}
