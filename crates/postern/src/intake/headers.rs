//! The header fields postern adds to a message before it is queued: `Received:` on
//! every message (RFC 5321 §4.4, with the RFC 3848 protocol keyword), and `Date:` and
//! `Message-ID:` on submissions that lack them (RFC 6409 §8).

use std::net::IpAddr;

use chrono::{DateTime, Local};

/// What the trace header records about an SMTP client.
pub struct SmtpTrace<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: bool,
    pub authenticated: bool,
    pub queue_id: &'a str,
    /// Named in the header only when there is exactly one, so a Bcc stays private.
    pub single_recipient: Option<&'a str>,
    /// The Unix user owning a loopback client's socket (uid, name), when known.
    pub owner: Option<(u32, &'a str)>,
}

/// The RFC 3848 `with` keyword: ESMTP, plus S for TLS and A for authentication.
pub fn protocol_keyword(esmtp: bool, tls: bool, authenticated: bool) -> &'static str {
    match (esmtp, tls, authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

pub fn received_smtp(trace: &SmtpTrace<'_>, now: DateTime<Local>) -> String {
    let keyword = protocol_keyword(trace.esmtp, trace.tls, trace.authenticated);
    let literal = match trace.client_ip {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let helo = sanitize(trace.helo);
    let tcp_info = match trace.owner {
        Some((uid, name)) => format!("{literal} uid {uid} user {}", sanitize(name)),
        None => literal,
    };
    let mut header = format!(
        "Received: from {helo} ({tcp_info})\r\n\tby {} (postern) with {keyword} id {}",
        trace.hostname, trace.queue_id
    );
    if let Some(rcpt) = trace.single_recipient {
        header.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    header.push_str(&format!("; {}\r\n", now.to_rfc2822()));
    header
}

/// Keeps client-chosen text from breaking the header: no controls, no comment parens.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `Date:` and `Message-ID:` for a submitted message that lacks them.
/// `Received:` for mail from the submission socket (CONTRACT.md's exact form).
pub fn received_local(hostname: &str, uid: u32, now: DateTime<Local>) -> String {
    format!(
        "Received: by {hostname} (postern, from userid {uid}); {}\r\n",
        now.to_rfc2822()
    )
}

pub fn missing_submission_headers(
    message: &[u8],
    hostname: &str,
    queue_id: &str,
    now: DateTime<Local>,
) -> String {
    let mut added = String::new();
    if !has_header(message, "Date") {
        added.push_str(&format!("Date: {}\r\n", now.to_rfc2822()));
    }
    if !has_header(message, "Message-ID") {
        let nonce: u32 = rand::random();
        added.push_str(&format!(
            "Message-ID: <{queue_id}.{nonce:08x}@{hostname}>\r\n"
        ));
    }
    added
}

/// The addresses of the message's `From:` fields, as written.
pub fn author_addresses(message: &[u8]) -> Vec<String> {
    use mail_parser::{HeaderName, MessageParser};
    let Some(parsed) = MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    parsed
        .header_values(HeaderName::From)
        .filter_map(|value| value.as_address())
        .flat_map(|list| list.iter().filter_map(|a| a.address()).map(str::to_string))
        .collect()
}

/// True when the header section (up to the first empty line) has a field `name`.
pub fn has_header(message: &[u8], name: &str) -> bool {
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        if line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()..].trim_ascii_start().starts_with(b":")
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_follow_rfc_3848() {
        assert_eq!(protocol_keyword(true, true, true), "ESMTPSA");
        assert_eq!(protocol_keyword(true, true, false), "ESMTPS");
        assert_eq!(protocol_keyword(true, false, true), "ESMTPA");
        assert_eq!(protocol_keyword(true, false, false), "ESMTP");
        assert_eq!(protocol_keyword(false, false, false), "SMTP");
    }

    #[test]
    fn received_names_client_protocol_and_queue_id() {
        let trace = SmtpTrace {
            helo: "client.test",
            client_ip: "127.0.0.1".parse().unwrap(),
            hostname: "mail.example.com",
            esmtp: true,
            tls: true,
            authenticated: true,
            queue_id: "0123456789ABCDEF01",
            single_recipient: Some("a@b.test"),
            owner: None,
        };
        let h = received_smtp(&trace, Local::now());
        assert!(h.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby mail.example.com (postern) with ESMTPSA id 0123456789ABCDEF01\r\n\tfor <a@b.test>; "), "{h}");
        assert!(h.ends_with("\r\n"));
        let attributed = SmtpTrace {
            owner: Some((1001, "www")),
            ..trace
        };
        let h = received_smtp(&attributed, Local::now());
        assert!(
            h.starts_with("Received: from client.test ([127.0.0.1] uid 1001 user www)\r\n"),
            "{h}"
        );
    }

    #[test]
    fn header_detection_stops_at_the_body() {
        let msg = b"Subject: x\r\nmessage-id : <a@b>\r\n\r\nDate: in the body\r\n";
        assert!(has_header(msg, "Message-ID"));
        assert!(!has_header(msg, "Date"));
        let added = missing_submission_headers(msg, "h.test", "Q", Local::now());
        assert!(added.starts_with("Date: "), "{added}");
        assert!(!added.contains("Message-ID"));
    }

    #[test]
    fn both_headers_added_when_missing() {
        let added =
            missing_submission_headers(b"Subject: x\r\n\r\nbody", "h.test", "Q1", Local::now());
        assert!(added.contains("Date: "));
        assert!(added.contains("Message-ID: <Q1."));
        assert!(added.contains("@h.test>\r\n"));
    }
}
