//! The `Authentication-Results:` header field (RFC 8601): ours, rendered from the
//! verdicts with every value made safe for a header, and forged ones, removed.

use std::borrow::Cow;

use mail_auth::dkim::DkimError;
use mail_auth::{DkimResult, Error as AuthError, SpfResult};

/// A `reason=` text is cut to this many characters…
pub(super) const MAX_REASON: usize = 100;
/// …and any other value to this many (a domain name has at most 253), so that no line of
/// the header comes near the 998 octets of RFC 5322 §2.1.1.
pub(super) const MAX_VALUE: usize = 256;

/// The RFC 8601 §2.7.1 keyword for a DKIM outcome, with the error behind it.
pub(super) fn dkim_keyword(result: &DkimResult) -> (&'static str, Option<&AuthError>) {
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

/// The RFC 8601 §2.7.2 keyword for an SPF result.
pub(super) fn spf_keyword(result: SpfResult) -> &'static str {
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
pub(super) fn authentication_results(authserv_id: &str, results: &[String]) -> String {
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
pub(super) fn pvalue(text: &str) -> String {
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
pub(super) fn reason(why: &str) -> String {
    let short: String = why.chars().take(MAX_REASON).collect();
    format!(" reason={}", quoted_string(&short))
}

/// An RFC 5322 quoted-string of the printable part of `text`.
pub(super) fn quoted_string(text: &str) -> String {
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
pub(super) fn printable(text: &str) -> String {
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
pub(super) fn field_span(message: &[u8], start: usize) -> (usize, bool) {
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
pub(super) fn results_value(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    let name = field[..colon].trim_ascii_end();
    name.eq_ignore_ascii_case(b"Authentication-Results")
        .then(|| &field[colon + 1..])
}

/// The authserv-id at the start of an Authentication-Results value (RFC 8601 §2.2), after
/// folding white space and comments: a token, or the contents of a quoted-string.
pub(super) fn authserv_id_of(value: &[u8]) -> Option<String> {
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
