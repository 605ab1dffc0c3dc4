//! Envelope addresses (RFC 5321 §4.1.2, RFC 6531 for UTF-8), parsed once into types.
//!
//! The parser is strict on purpose. A relay-control server must never disagree with the
//! next hop about where an address points, so the tricks that made open relays in the
//! 1990s are refused here or flagged for the policy:
//!
//! - source routes (`<@a,@b:user@d>`) are refused outright;
//! - a trailing dot in the domain (`user@example.com.`) is refused;
//! - `%`, `!` and `@` in the local part, and quoted local parts, parse but are marked
//!   [`Mailbox::is_routed`], so the policy never relays or delivers them;
//! - the domain is split at the single `@` outside quotes; a second one is an error.
//!
//! Domains are kept in lower case, so they compare case-insensitively by `==`.

use std::fmt;

/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including the angle brackets (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// Why an address did not parse. The text goes into a `501 5.1.3` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    MissingBrackets,
    Empty,
    SourceRoute,
    NoDomain,
    BadLocalPart,
    BadDomain,
    TrailingDot,
    TooLong,
    NonAsciiWithoutSmtputf8,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::MissingBrackets => {
                "enclose the address in angle brackets: <user@example.com>"
            }
            AddressError::Empty => "the address is empty",
            AddressError::SourceRoute => {
                "source routes are not accepted; give the final address only"
            }
            AddressError::NoDomain => "the address needs a domain: <user@example.com>",
            AddressError::BadLocalPart => "invalid local part (before the @)",
            AddressError::BadDomain => "invalid domain (after the @)",
            AddressError::TrailingDot => "the domain must not end with a dot",
            AddressError::TooLong => "the address is too long",
            AddressError::NonAsciiWithoutSmtputf8 => "non-ASCII address needs SMTPUTF8",
        })
    }
}

impl std::error::Error for AddressError {}

/// The domain of a mailbox: a host name (lower case) or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    Name(String),
    /// The text between the brackets, e.g. `192.0.2.1` or `IPv6:2001:db8::1`.
    Literal(String),
}

impl Domain {
    /// Parses a domain name or an address literal, as in EHLO or after `@`.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(AddressError::BadDomain)?;
            return parse_literal(inner).map(Domain::Literal);
        }
        parse_domain_name(s).map(Domain::Name)
    }

    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(n) => n.is_ascii(),
            Domain::Literal(_) => true,
        }
    }

    /// The host name, or `None` for an address literal.
    pub fn name(&self) -> Option<&str> {
        match self {
            Domain::Name(n) => Some(n),
            Domain::Literal(_) => None,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(l) => write!(f, "[{l}]"),
        }
    }
}

/// `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// As written, quotes included when it was a quoted string.
    local: String,
    domain: Domain,
    quoted: bool,
}

impl Mailbox {
    /// Parses `local@domain` (without angle brackets).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.starts_with('@') {
            return Err(AddressError::SourceRoute);
        }
        let (local, quoted, rest) = split_local_part(s)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::NoDomain)?;
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
        Ok(Mailbox {
            local: local.to_string(),
            domain: Domain::parse(domain)?,
            quoted,
        })
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// True for local parts that some software treats as a route to another host:
    /// quoted strings and local parts holding `%`, `!` or `@`. These are never
    /// relayed and never delivered (Postfix's rule for routed addresses).
    pub fn is_routed(&self) -> bool {
        self.quoted || self.local.contains(['%', '!', '@'])
    }

    /// The address in lower case, for comparisons with logins and mailbox names.
    pub fn canonical(&self) -> String {
        self.to_string().to_lowercase()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of MAIL FROM: a mailbox or the null sender `<>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ReversePath {
    /// Without brackets; the null sender renders as the empty string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// The argument of RCPT TO: a mailbox, or the bare `<postmaster>` (RFC 5321 §4.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Mailbox),
}

impl ForwardPath {
    pub fn is_ascii(&self) -> bool {
        match self {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Parses `<...>` after `MAIL FROM:` and returns the path and the rest of the line.
pub fn parse_reverse_path(s: &str) -> Result<(ReversePath, &str), AddressError> {
    let (inner, rest) = bracketed(s)?;
    if inner.is_empty() {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(Mailbox::parse(inner)?), rest))
}

/// Parses `<...>` after `RCPT TO:` and returns the path and the rest of the line.
pub fn parse_forward_path(s: &str) -> Result<(ForwardPath, &str), AddressError> {
    let (inner, rest) = bracketed(s)?;
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster, rest));
    }
    Ok((ForwardPath::Mailbox(Mailbox::parse(inner)?), rest))
}

/// Splits `<inner>rest`, honouring quoted strings so that a `>` inside quotes does not
/// end the path.
fn bracketed(s: &str) -> Result<(&str, &str), AddressError> {
    let body = s.strip_prefix('<').ok_or(AddressError::MissingBrackets)?;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => {
                if i + 2 > MAX_PATH {
                    return Err(AddressError::TooLong);
                }
                return Ok((&body[..i], &body[i + 1..]));
            }
            _ => {}
        }
    }
    Err(AddressError::MissingBrackets)
}

/// Returns (local part as written, was it quoted, the rest starting at `@`).
fn split_local_part(s: &str) -> Result<(&str, bool, &str), AddressError> {
    if s.starts_with('"') {
        let end = quoted_string_end(s).ok_or(AddressError::BadLocalPart)?;
        return Ok((&s[..end], true, &s[end..]));
    }
    // A dot-string ends at the first '@'; the domain parser refuses a second one.
    let at = s.find('@').ok_or(AddressError::NoDomain)?;
    let local = &s[..at];
    if !is_dot_string(local) {
        return Err(AddressError::BadLocalPart);
    }
    Ok((local, false, &s[at..]))
}

/// Index just past the closing quote of a quoted string starting at 0.
fn quoted_string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            // quoted-pairSMTP: backslash followed by any ASCII graphic or space.
            if !(' '..='~').contains(&c) {
                return None;
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            c if c.is_ascii_control() => return None,
            _ => {}
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_visible_non_ascii(c)
}

/// Non-ASCII allowed in addresses (RFC 6531 UTF8-non-ascii), minus what could hide or
/// disguise text in logs and headers: controls, spaces, bidirectional overrides,
/// invisible format characters and the replacement character.
fn is_visible_non_ascii(c: char) -> bool {
    !c.is_ascii()
        && !c.is_control()
        && !c.is_whitespace()
        && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFD}')
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn parse_domain_name(s: &str) -> Result<String, AddressError> {
    if s.is_empty() {
        return Err(AddressError::BadDomain);
    }
    if s.ends_with('.') {
        return Err(AddressError::TrailingDot);
    }
    // Lower case first: some characters grow when lowered (İ is 2 bytes, i̇ is 3), and
    // the limits must hold for the form that is kept and rendered.
    let lower = s.to_lowercase();
    if lower.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    for label in lower.split('.') {
        if !is_label(label) {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(lower)
}

/// `Let-dig [Ldh-str]`, at most 63 octets; U-labels (non-ASCII) allowed for SMTPUTF8.
fn is_label(label: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || is_visible_non_ascii(c);
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(ok_char)
}

fn parse_literal(inner: &str) -> Result<String, AddressError> {
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|a| format!("IPv6:{a}"))
            .map_err(|_| AddressError::BadDomain);
    }
    inner
        .parse::<std::net::Ipv4Addr>()
        .map(|a| a.to_string())
        .map_err(|_| AddressError::BadDomain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    #[test]
    fn plain_address_splits_at_the_at_sign_and_lowercases_the_domain() {
        let m = mailbox("John.Doe@Example.COM");
        assert_eq!(m.local_part(), "John.Doe");
        assert_eq!(m.domain(), &Domain::Name("example.com".into()));
        assert!(!m.is_routed());
    }

    #[test]
    fn percent_hack_and_bang_path_are_routed() {
        assert!(mailbox("victim%remote.test@example.com").is_routed());
        assert!(mailbox("remote.test!victim@example.com").is_routed());
    }

    #[test]
    fn quoted_local_part_holding_an_at_is_routed_and_keeps_its_domain() {
        let m = mailbox("\"victim@remote.test\"@example.com");
        assert!(m.is_routed());
        assert_eq!(m.domain(), &Domain::Name("example.com".into()));
        assert_eq!(m.local_part(), "\"victim@remote.test\"");
    }

    #[test]
    fn double_at_is_refused() {
        assert_eq!(
            Mailbox::parse("victim@remote.test@example.com"),
            Err(AddressError::BadDomain)
        );
    }

    #[test]
    fn source_route_is_refused() {
        assert_eq!(
            parse_forward_path("<@relay.test:victim@remote.test>"),
            Err(AddressError::SourceRoute)
        );
        assert_eq!(
            parse_forward_path("<@a.test,@b.test:victim@remote.test>"),
            Err(AddressError::SourceRoute)
        );
    }

    #[test]
    fn trailing_dot_domain_is_refused() {
        assert_eq!(
            Mailbox::parse("user@example.com."),
            Err(AddressError::TrailingDot)
        );
    }

    #[test]
    fn address_literals_parse_as_literals() {
        assert_eq!(
            mailbox("user@[192.0.2.1]").domain(),
            &Domain::Literal("192.0.2.1".into())
        );
        assert_eq!(
            mailbox("user@[IPv6:2001:db8::1]").domain(),
            &Domain::Literal("IPv6:2001:db8::1".into())
        );
        assert!(Mailbox::parse("user@[999.0.0.1]").is_err());
    }

    #[test]
    fn null_sender_and_postmaster() {
        assert_eq!(parse_reverse_path("<>").unwrap().0, ReversePath::Null);
        assert_eq!(
            parse_forward_path("<Postmaster>").unwrap().0,
            ForwardPath::Postmaster
        );
    }

    #[test]
    fn bracket_inside_quotes_does_not_end_the_path() {
        let (path, rest) = parse_forward_path("<\"a>b\"@example.com> NOTIFY=NEVER").unwrap();
        assert_eq!(path.to_string(), "\"a>b\"@example.com");
        assert_eq!(rest, " NOTIFY=NEVER");
    }

    #[test]
    fn bad_shapes_are_refused() {
        for bad in [
            "",
            "user",
            "@example.com",
            "user@",
            ".user@example.com",
            "us..er@example.com",
            "user.@example.com",
            "user@-example.com",
            "user@exa_mple.com",
            "us er@example.com",
            "user@example..com",
            "\"unterminated@example.com",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            parse_reverse_path("user@example.com"),
            Err(AddressError::MissingBrackets)
        );
    }

    #[test]
    fn length_limits_hold() {
        let long_local = "a".repeat(65);
        assert_eq!(
            Mailbox::parse(&format!("{long_local}@example.com")),
            Err(AddressError::TooLong)
        );
        let long_label = "a".repeat(64);
        assert!(Mailbox::parse(&format!("u@{long_label}.com")).is_err());
    }

    #[test]
    fn utf8_addresses_parse_and_report_non_ascii() {
        let m = mailbox("jörg@bücher.example");
        assert!(!m.is_ascii());
        assert!(mailbox("jorg@example.com").is_ascii());
    }

    #[test]
    fn characters_that_grow_when_lowered_are_measured_after_lowering() {
        let label = "İ".repeat(31);
        assert_eq!(
            Mailbox::parse(&format!("a@{label}.example")),
            Err(AddressError::BadDomain)
        );
        let ok = "İ".repeat(20);
        let m = Mailbox::parse(&format!("a@{ok}.example")).unwrap();
        assert_eq!(Mailbox::parse(&m.to_string()).unwrap(), m);
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for bad in [
            "a\u{85}b@example.com",
            "a\u{202E}b@example.com",
            "ab@exa\u{200B}mple.com",
            "a\u{A0}b@example.com",
            "a@b\u{2028}c.com",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Mailbox::parse("jörg@bücher.example").is_ok());
    }

    #[test]
    fn render_then_parse_is_identity() {
        for s in [
            "a@b.c",
            "\"x y\"@example.com",
            "first.last+tag@sub.example.org",
            "u@[IPv6:::1]",
        ] {
            let m = mailbox(s);
            assert_eq!(Mailbox::parse(&m.to_string()).unwrap(), m);
        }
    }
}
