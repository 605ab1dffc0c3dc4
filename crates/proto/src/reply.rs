//! SMTP replies: a three-digit code, an enhanced status code (RFC 3463) and text.
//!
//! Every reply the server sends is built here, by a named constructor, so that reply
//! texts live next to their codes and never appear as byte strings inside handlers.
//! Texts that refuse a client say what would make it succeed.

use std::fmt::{self, Write as _};

/// An enhanced status code, `class.subject.detail` (RFC 3463 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl Enhanced {
    /// `class.subject.detail` as RFC 3463 §2 writes it: class `2`, `4` or `5`, subject
    /// and detail of one to three digits, and nothing else.
    pub fn parse(text: &str) -> Option<Enhanced> {
        let mut fields = text.split('.');
        let class = match fields.next()? {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let subject = status_number(fields.next()?)?;
        let detail = status_number(fields.next()?)?;
        fields
            .next()
            .is_none()
            .then_some(Enhanced(class, subject, detail))
    }

    /// Class 2: success.
    pub fn is_success(&self) -> bool {
        self.0 == 2
    }

    /// Class 4: the same message may succeed later.
    pub fn is_transient(&self) -> bool {
        self.0 == 4
    }

    /// Class 5: trying again will not help.
    pub fn is_permanent(&self) -> bool {
        self.0 == 5
    }

    /// Whether this is a code [`Enhanced::parse`] accepts, for values built from their
    /// fields.
    pub fn is_valid(&self) -> bool {
        matches!(self.0, 2 | 4 | 5) && self.1 <= 999 && self.2 <= 999
    }
}

/// One to three decimal digits (RFC 3463 §2).
fn status_number(text: &str) -> Option<u16> {
    let digits = (1..=3).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly of several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Absent only where RFC 2034 says so: the greeting, EHLO/HELO and SASL challenges.
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    fn bare(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// A 4xx reply: the client should try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// A 2xx or 3xx reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The text of all lines joined by spaces, for logs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The reply as it goes on the wire, every line ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(out, "{}{}", self.code, sep);
            if let Some(e) = self.enhanced {
                let _ = write!(out, "{e} ");
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        if self.lines.is_empty() {
            let _ = write!(out, "{}\r\n", self.code);
        }
        out.into_bytes()
    }

    // --- Connection ---

    pub fn greeting(hostname: &str) -> Reply {
        Reply::bare(220, vec![format!("{hostname} ESMTP postern")])
    }

    pub fn ehlo(lines: Vec<String>) -> Reply {
        Reply::bare(250, lines)
    }

    pub fn helo(hostname: &str, client: &str) -> Reply {
        Reply::bare(250, vec![format!("{hostname} greets {client}")])
    }

    pub fn closing(hostname: &str) -> Reply {
        Reply::new(
            221,
            Enhanced(2, 0, 0),
            format!("{hostname} closing connection"),
        )
    }

    pub fn ok() -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), "Ok")
    }

    pub fn sender_ok() -> Reply {
        Reply::new(250, Enhanced(2, 1, 0), "Sender ok")
    }

    pub fn recipient_ok() -> Reply {
        Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")
    }

    pub fn reset_ok() -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), "Reset state")
    }

    pub fn vrfy() -> Reply {
        Reply::new(
            252,
            Enhanced(2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    pub fn help() -> Reply {
        Reply::new(
            214,
            Enhanced(2, 0, 0),
            "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
        )
    }

    pub fn start_data() -> Reply {
        Reply::new(354, Enhanced(2, 0, 0), "End data with <CR><LF>.<CR><LF>")
    }

    pub fn queued(queue_id: &str) -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {queue_id}"))
    }

    pub fn ready_for_tls() -> Reply {
        Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS")
    }

    pub fn sasl_challenge(base64_text: &str) -> Reply {
        Reply::bare(334, vec![base64_text.to_string()])
    }

    pub fn auth_ok() -> Reply {
        Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
    }

    // --- Syntax and sequence errors ---

    pub fn unrecognized() -> Reply {
        Reply::new(500, Enhanced(5, 5, 2), "Command unrecognized")
    }

    pub fn line_too_long(limit: usize) -> Reply {
        Reply::new(
            500,
            Enhanced(5, 5, 2),
            format!("Line too long: a command line may have at most {limit} octets"),
        )
    }

    pub fn bare_line_feed_in_command() -> Reply {
        Reply::new(
            500,
            Enhanced(5, 5, 2),
            "Bare LF or CR in command: end every line with CRLF",
        )
    }

    pub fn syntax(usage: &str) -> Reply {
        Reply::new(501, Enhanced(5, 5, 4), format!("Syntax: {usage}"))
    }

    pub fn bad_address(detail: &str) -> Reply {
        Reply::new(
            501,
            Enhanced(5, 1, 3),
            format!("Bad address syntax: {detail}"),
        )
    }

    pub fn not_implemented(verb: &str) -> Reply {
        Reply::new(
            502,
            Enhanced(5, 5, 1),
            format!("{verb} is not implemented here"),
        )
    }

    pub fn bad_sequence(what: &str) -> Reply {
        Reply::new(
            503,
            Enhanced(5, 5, 1),
            format!("Bad sequence of commands: {what}"),
        )
    }

    pub fn unknown_parameter(param: &str) -> Reply {
        Reply::new(
            555,
            Enhanced(5, 5, 4),
            format!("Unsupported parameter {param}"),
        )
    }

    pub fn too_many_errors() -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many errors on this connection; closing",
        )
    }

    pub fn http_refused() -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "This is an SMTP server, not an HTTP server; closing",
        )
    }

    pub fn too_many_connections() -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many connections from your address; close some and try again later",
        )
    }

    pub fn timeout(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 4, 2),
            format!("{hostname} Timeout waiting for input; closing connection"),
        )
    }

    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 3, 2),
            format!("{hostname} Service shutting down; try again later"),
        )
    }

    // --- Message limits and content ---

    pub fn message_too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            Enhanced(5, 3, 4),
            format!("Message too big: the limit is {limit} bytes"),
        )
    }

    pub fn too_many_recipients(limit: usize) -> Reply {
        Reply::new(
            452,
            Enhanced(4, 5, 3),
            format!(
                "Too many recipients: at most {limit} per message; send the rest in another message"
            ),
        )
    }

    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, Enhanced(5, 5, 1), "No valid recipients")
    }

    pub fn bare_line_ending_in_data() -> Reply {
        Reply::new(
            550,
            Enhanced(5, 6, 0),
            "Message refused: bare CR or LF in DATA; end every line with CRLF (closing connection)",
        )
    }

    pub fn nul_in_data() -> Reply {
        Reply::new(
            550,
            Enhanced(5, 6, 0),
            "Message refused: it contains a NUL octet, which SMTP does not allow; encode binary data (base64)",
        )
    }

    pub fn data_line_too_long(limit: usize) -> Reply {
        Reply::new(
            550,
            Enhanced(5, 6, 0),
            format!(
                "Message refused: a line is longer than {} characters; wrap long lines or use quoted-printable or base64",
                limit - 2
            ),
        )
    }

    pub fn eight_bit_needs_smtputf8() -> Reply {
        Reply::new(
            553,
            Enhanced(5, 6, 7),
            "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM",
        )
    }

    pub fn spool_failed() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 3, 0),
            "Temporary failure: the message could not be stored; try again later",
        )
    }

    // --- Authentication (RFC 4954) ---

    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            Enhanced(5, 7, 11),
            "Encryption required: issue STARTTLS first, then AUTH",
        )
    }

    pub fn auth_already() -> Reply {
        Reply::new(
            503,
            Enhanced(5, 5, 1),
            "Bad sequence of commands: already authenticated",
        )
    }

    pub fn auth_unknown_mechanism() -> Reply {
        Reply::new(
            504,
            Enhanced(5, 5, 4),
            "Unrecognized authentication mechanism: use PLAIN or LOGIN",
        )
    }

    pub fn auth_cancelled() -> Reply {
        Reply::new(501, Enhanced(5, 0, 0), "Authentication cancelled")
    }

    pub fn auth_bad_base64() -> Reply {
        Reply::new(501, Enhanced(5, 5, 2), "Cannot decode the base64 response")
    }

    pub fn auth_malformed() -> Reply {
        Reply::new(501, Enhanced(5, 5, 2), "Malformed authentication response")
    }

    pub fn auth_failed() -> Reply {
        Reply::new(
            535,
            Enhanced(5, 7, 8),
            "Authentication credentials invalid: log in with your full mailbox address and its password",
        )
    }

    pub fn authzid_mismatch() -> Reply {
        Reply::new(
            535,
            Enhanced(5, 7, 8),
            "Authentication refused: the authorization identity must be empty or equal to the login",
        )
    }

    pub fn auth_blocked(minutes: u64) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            format!("Too many failed logins from this client; try again in {minutes} minutes"),
        )
    }

    pub fn auth_temporary_failure() -> Reply {
        Reply::new(
            454,
            Enhanced(4, 7, 0),
            "Temporary authentication failure; try again later",
        )
    }

    // --- Policy (built by the server's policy module) ---

    pub fn relay_denied() -> Reply {
        Reply::new(
            550,
            Enhanced(5, 7, 1),
            "Relaying denied: log in with your mailbox address and password (SMTP AUTH over STARTTLS, port 587) to send to other domains",
        )
    }

    pub fn auth_required() -> Reply {
        Reply::new(
            530,
            Enhanced(5, 7, 0),
            "Authentication required: log in with your mailbox address and password (STARTTLS, then AUTH) before MAIL FROM",
        )
    }

    pub fn unknown_user(address: &str) -> Reply {
        Reply::new(
            550,
            Enhanced(5, 1, 1),
            format!("<{address}>: no such mailbox here; check the address"),
        )
    }

    pub fn sender_not_owned(address: &str, login: &str) -> Reply {
        Reply::new(
            553,
            Enhanced(5, 7, 1),
            format!(
                "Sender address <{address}> is not owned by login {login}; use your own address in MAIL FROM (or ask the administrator for [auth] sender_scope = \"domain\", which lets a login send as any address of its domain)"
            ),
        )
    }

    pub fn author_not_owned(address: &str, login: &str) -> Reply {
        Reply::new(
            550,
            Enhanced(5, 7, 1),
            format!(
                "Message refused: the From: header address <{address}> is not owned by login {login}; put your own address in From: (or ask the administrator for [auth] sender_scope = \"domain\")"
            ),
        )
    }

    pub fn routed_address_refused() -> Reply {
        Reply::new(
            550,
            Enhanced(5, 7, 1),
            "Relaying denied: addresses with %, !, @ or quotes in the local part are not routed",
        )
    }

    pub fn rate_limited(who: &str, limit: u32, what: &str, minutes: u64) -> Reply {
        Reply::new(
            450,
            Enhanced(4, 7, 1),
            format!(
                "Sending limit reached: {who} may send {limit} {what} per hour; try again in {minutes} minutes"
            ),
        )
    }

    pub fn dmarc_rejected(reason: &str) -> Reply {
        Reply::new(550, Enhanced(5, 7, 1), reason)
    }

    pub fn dkim_failed() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 7, 0),
            "Temporary failure: the message could not be DKIM-signed; try again later",
        )
    }

    pub fn dkim_permanent(why: &str) -> Reply {
        Reply::new(554, Enhanced(5, 7, 0), format!("Message refused: {why}"))
    }

    pub fn lookup_failed() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 3, 0),
            "Temporary lookup failure; try again later",
        )
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_reply_has_code_enhanced_and_crlf() {
        assert_eq!(Reply::ok().to_bytes(), b"250 2.0.0 Ok\r\n");
    }

    #[test]
    fn multi_line_reply_uses_dash_continuations() {
        let r = Reply::ehlo(vec!["host".into(), "PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(
            r.to_bytes(),
            b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn relay_denied_says_how_to_succeed() {
        let text = String::from_utf8(Reply::relay_denied().to_bytes()).unwrap();
        assert!(text.starts_with("550 5.7.1 Relaying denied"));
        assert!(text.contains("587"));
    }

    #[test]
    fn enhanced_codes_parse_as_rfc_3463_says() {
        assert_eq!(Enhanced::parse("5.1.1"), Some(Enhanced(5, 1, 1)));
        assert_eq!(Enhanced::parse("4.4.7"), Some(Enhanced(4, 4, 7)));
        assert_eq!(Enhanced::parse("2.0.0"), Some(Enhanced(2, 0, 0)));
        assert_eq!(Enhanced::parse("5.123.999"), Some(Enhanced(5, 123, 999)));
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.1.1", "5.a.1", "5.1.1000", "5..1", " 5.1.1", "5.1.1 ",
            "+5.1.1", "5.+1.1",
        ] {
            assert_eq!(Enhanced::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn enhanced_codes_know_their_class_and_validity() {
        assert!(Enhanced(2, 0, 0).is_success());
        assert!(Enhanced(4, 4, 1).is_transient());
        assert!(Enhanced(5, 1, 1).is_permanent());
        assert!(Enhanced(5, 999, 0).is_valid());
        assert!(!Enhanced(3, 0, 0).is_valid());
        assert!(!Enhanced(4, 1234, 1).is_valid());
    }
}
