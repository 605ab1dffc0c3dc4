//! Delivery status notifications: builds the message that tells an envelope sender that
//! their mail failed or is delayed. It is a `multipart/report` (RFC 6522) of three parts:
//! a plain-language explanation for the customer, a `message/delivery-status` part for
//! programs (RFC 3464, with the address types of RFC 3461 and RFC 6533), and the header
//! section of the original message (`text/rfc822-headers`).
//!
//! It owns the bytes of a notification only. It must not queue or send them, nor decide
//! when one is due: the caller never builds one for the null sender `<>` (CONTRACT.md
//! "Delivery") and queues what [`build`] returns with the null sender. No I/O; the only
//! impurity is the randomness in the Message-ID and the MIME boundary.
//!
//! **Security.** Addresses, remote host names and diagnostic texts come from outside (the
//! original client, a remote server's reply). Each has its control characters, CR and LF
//! included, turned into spaces, and is folded only at spaces, into continuation lines
//! that begin with a space: nothing from outside can start a header field or a MIME
//! boundary line of its own. Every line stays within 998 octets (RFC 5322 §2.1.1). The
//! original header section is copied line by line without controls and stops at the
//! first line that is not a header field, so no body text leaks into the notification.
//! The boundary is chosen so that it occurs in no part.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use postern_proto::reply::Enhanced;

const CRLF: &str = "\r\n";
/// Where lines are folded or wrapped when a space allows (RFC 5322 §2.1.1 "SHOULD").
const WIDTH: usize = 78;
/// A longer word is cut: with the longest field name in front it still fits the 998
/// octets a line may have (RFC 5322 §2.1.1 "MUST").
const MAX_WORD: usize = 900;
/// Text from outside is cut here: a notification is read by people, and a remote server
/// must not be able to make us send megabytes back.
const MAX_TEXT: usize = 2000;
/// Longest line of the original header section that is kept (RFC 5322 §2.1.1).
const MAX_LINE: usize = 998;
/// The original header section is cut here, as Postfix's `header_size_limit` does: a
/// bounce must not carry a multi-megabyte "header" back.
const MAX_HEADER_SECTION: usize = 102_400;
/// Line length of base64 bodies (RFC 2045 §6.8).
const BASE64_LINE: usize = 76;

const SUBJECT_FAILED: &str = "Undelivered Mail Returned to Sender";
const SUBJECT_DELAYED: &str = "Delayed Mail (still being retried)";
const PREAMBLE: &str = "This is a MIME-encapsulated message.\r\n\r\n";

/// What happened to one recipient (RFC 3464 §2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Given up: the message will not be delivered to this recipient.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
}

/// The outcome for one recipient, as the notification reports it.
#[derive(Debug, Clone)]
pub struct RecipientReport {
    /// The recipient as queued.
    pub address: String,
    pub action: DsnAction,
    /// The enhanced status code (RFC 3463), e.g. `5.1.1`: the remote reply's, else a
    /// default chosen by the caller. One out of range is reported as `5.0.0` (failed) or
    /// `4.0.0` (delayed).
    pub status: Enhanced,
    /// Host name of the server that answered, if any.
    pub remote_mta: Option<String>,
    /// The remote reply text, e.g. `550 5.1.1 <x@y>: no such user`.
    pub diagnostic: Option<String>,
    pub last_attempt: Option<DateTime<Utc>>,
    /// When the queue gives up; reported for [`DsnAction::Delayed`] only.
    pub will_retry_until: Option<DateTime<Utc>>,
}

/// Everything a notification says about one queued message.
pub struct Notification<'a> {
    /// Our host name: `From: MAILER-DAEMON@hostname`, `Reporting-MTA: dns; hostname`.
    pub hostname: &'a str,
    /// The original message's queue ID (`X-Postern-Queue-ID`).
    pub queue_id: &'a str,
    /// The envelope sender of the original message: the notification's `To:`.
    pub original_sender: &'a str,
    /// When the original message was queued.
    pub arrival: DateTime<Utc>,
    pub recipients: &'a [RecipientReport],
    /// The original message (CRLF); only its header section is included.
    pub original: &'a [u8],
    pub now: DateTime<Utc>,
}

/// The complete notification message, CRLF line endings, ready to be queued with the null
/// sender.
pub fn build(n: &Notification<'_>) -> Vec<u8> {
    let parts = [
        Part::text(
            "text/plain; charset=utf-8",
            "Notification",
            explanation(n).into_bytes(),
        ),
        // ASCII by construction (non-ASCII is escaped), so always 7bit (RFC 3464 §2.1).
        Part {
            content_type: "message/delivery-status",
            description: "Delivery report",
            encoding: "7bit",
            body: delivery_status(n).into_bytes(),
        },
        Part::text(
            "text/rfc822-headers",
            "Undelivered message headers",
            header_section(n.original),
        ),
    ];
    let boundary = boundary_for(&parts);
    let mut out = top_headers(n, &boundary).into_bytes();
    out.extend_from_slice(PREAMBLE.as_bytes());
    for part in &parts {
        part.write(&boundary, &mut out);
    }
    out.extend_from_slice(format!("--{boundary}--{CRLF}").as_bytes());
    out
}

impl DsnAction {
    /// The `Action:` value (RFC 3464 §2.3.3).
    fn keyword(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// The status a report gives for `report`: its own, or the action's generic one when
/// the code was built out of range (RFC 3463 §2 allows classes 2, 4 and 5 only).
fn status_of(report: &RecipientReport) -> Enhanced {
    if report.status.is_valid() {
        return report.status;
    }
    match report.action {
        DsnAction::Failed => Enhanced(5, 0, 0),
        DsnAction::Delayed => Enhanced(4, 0, 0),
    }
}

/// One body part of the report.
struct Part {
    content_type: &'static str,
    description: &'static str,
    encoding: &'static str,
    /// Encoded already; CRLF line ends.
    body: Vec<u8>,
}

impl Part {
    /// A text part: 7bit when it is ASCII, else base64, so the notification can travel
    /// through servers without 8BITMIME.
    fn text(content_type: &'static str, description: &'static str, body: Vec<u8>) -> Part {
        let (encoding, body) = if body.is_ascii() {
            ("7bit", body)
        } else {
            ("base64", base64_lines(&body))
        };
        Part {
            content_type,
            description,
            encoding,
            body,
        }
    }

    /// The delimiter line, the part's header and its body, followed by the CRLF that
    /// belongs to the next delimiter (RFC 2046 §5.1.1).
    fn write(&self, boundary: &str, out: &mut Vec<u8>) {
        let head = format!(
            "--{boundary}{CRLF}Content-Type: {}{CRLF}Content-Description: {}{CRLF}\
             Content-Transfer-Encoding: {}{CRLF}{CRLF}",
            self.content_type, self.description, self.encoding
        );
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(CRLF.as_bytes());
    }
}

fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / BASE64_LINE * 2 + 2);
    for line in encoded.as_bytes().chunks(BASE64_LINE) {
        out.extend_from_slice(line);
        out.extend_from_slice(CRLF.as_bytes());
    }
    out
}

/// A random boundary that occurs in no part. `=_` cannot occur in base64, and the check
/// covers the 7bit parts (RFC 2046 §5.1.1: the boundary must not appear in the parts).
fn boundary_for(parts: &[Part]) -> String {
    loop {
        let candidate = format!("=_postern_{:032x}", rand::random::<u128>());
        if !parts
            .iter()
            .any(|p| contains(&p.body, candidate.as_bytes()))
        {
            return candidate;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn top_headers(n: &Notification<'_>, boundary: &str) -> String {
    let host = token(n.hostname);
    let message_id = format!("<{:032x}@{host}>", rand::random::<u128>());
    let mut h = String::new();
    h += &field(
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    h += &field("To", &format!("<{}>", clean(n.original_sender)));
    h += &field("Subject", subject(n.recipients));
    h += &field("Date", &n.now.to_rfc2822());
    h += &field("Message-ID", &message_id);
    // RFC 3834 §5: marks the notification as automatic, so nobody auto-replies to it.
    h += &field("Auto-Submitted", "auto-replied");
    h += &field("MIME-Version", "1.0");
    h += &format!(
        "Content-Type: multipart/report; report-type=delivery-status;{CRLF}\tboundary=\"{boundary}\"{CRLF}"
    );
    h += CRLF;
    h
}

/// The delay subject only when every recipient is delayed; any failure is a bounce.
fn subject(recipients: &[RecipientReport]) -> &'static str {
    let all_delayed =
        !recipients.is_empty() && recipients.iter().all(|r| r.action == DsnAction::Delayed);
    if all_delayed {
        SUBJECT_DELAYED
    } else {
        SUBJECT_FAILED
    }
}

/// The `message/delivery-status` body: the per-message fields, then one block per
/// recipient, blocks separated by empty lines (RFC 3464 §2.1).
fn delivery_status(n: &Notification<'_>) -> String {
    let mut s = field(
        "Reporting-MTA",
        &format!("dns; {}", ascii(&token(n.hostname))),
    );
    s += &field("X-Postern-Queue-ID", &ascii(&token(n.queue_id)));
    s += &field("Arrival-Date", &n.arrival.to_rfc2822());
    for report in n.recipients {
        s += CRLF;
        s += &recipient_fields(report);
    }
    s
}

/// The per-recipient fields of RFC 3464 §2.3, in its order.
fn recipient_fields(r: &RecipientReport) -> String {
    let mut s = field("Final-Recipient", &typed_address(&r.address));
    s += &field("Action", r.action.keyword());
    s += &field("Status", &status_of(r).to_string());
    if let Some(host) = r.remote_mta.as_deref().map(token).filter(|h| !h.is_empty()) {
        s += &field("Remote-MTA", &format!("dns; {}", ascii(&host)));
    }
    if let Some(text) = r.diagnostic.as_deref().map(clean).filter(|t| !t.is_empty()) {
        s += &field("Diagnostic-Code", &format!("smtp; {}", ascii(&text)));
    }
    if let Some(time) = r.last_attempt {
        s += &field("Last-Attempt-Date", &time.to_rfc2822());
    }
    if r.action == DsnAction::Delayed
        && let Some(time) = r.will_retry_until
    {
        s += &field("Will-Retry-Until", &time.to_rfc2822());
    }
    s
}

/// `rfc822; addr` for an ASCII address; else `utf-8;` with the 7-bit `utf-8-addr-xtext`
/// form (RFC 6533 §3), because a `message/delivery-status` part is ASCII only.
fn typed_address(address: &str) -> String {
    let address = clean(address);
    if address.is_ascii() {
        format!("rfc822; {address}")
    } else {
        format!("utf-8; {}", xtext(&address))
    }
}

/// RFC 6533 §3 `utf-8-addr-xtext`: QCHARs as they are, everything else as `\x{HEX}`
/// (upper case, no leading zeros). Cut between characters, never inside an escape, so it
/// stays one word that fits a line.
fn xtext(address: &str) -> String {
    let mut out = String::new();
    for c in address.chars() {
        let qchar = matches!(c, '\x21'..='\x7e') && !matches!(c, '+' | '=' | '\\');
        let piece = if qchar {
            c.to_string()
        } else {
            format!("\\x{{{:X}}}", u32::from(c))
        };
        if out.len() + piece.len() > MAX_WORD {
            break;
        }
        out += &piece;
    }
    out
}

/// Text for the customer: what failed, what the receiving side said, what it probably
/// means, and that this message is automatic.
fn explanation(n: &Notification<'_>) -> String {
    let mut text = paragraph(&format!(
        "This is the mail system at {}.",
        token(n.hostname)
    ));
    let failed = n
        .recipients
        .iter()
        .filter(|r| r.action == DsnAction::Failed);
    let delayed = n
        .recipients
        .iter()
        .filter(|r| r.action == DsnAction::Delayed);
    text += &section(
        "Your message could not be delivered to the recipients below, and the mail \
         system will not try again.",
        failed,
    );
    text += &section(
        "Your message has not been delivered yet to the recipients below. You do not \
         need to send it again: the mail system keeps trying automatically, and will \
         write to you again if it finally has to give up.",
        delayed,
    );
    text += CRLF;
    text += &paragraph(&format!(
        "Your message arrived on {} and has the reference {}. If you ask your mail \
         provider for help, please quote this reference.",
        human_time(n.arrival),
        token(n.queue_id)
    ));
    text += CRLF;
    text += &paragraph(
        "This is an automatic message; please do not reply to it. The technical details \
         and the headers of your original message are attached below.",
    );
    text
}

/// An introduction and one entry per recipient, or nothing without recipients.
fn section<'a>(intro: &str, recipients: impl Iterator<Item = &'a RecipientReport>) -> String {
    let entries: Vec<String> = recipients.map(recipient_text).collect();
    if entries.is_empty() {
        return String::new();
    }
    let mut text = format!("{CRLF}{}", paragraph(intro));
    for entry in entries {
        text += CRLF;
        text += &entry;
    }
    text
}

/// One recipient, indented: every line that holds outside text begins with spaces.
fn recipient_text(r: &RecipientReport) -> String {
    let status = status_of(r);
    let mut meaning = String::new();
    if r.action == DsnAction::Failed && status.is_transient() {
        meaning += "The mail system kept trying for as long as it may, and has now given up. ";
    }
    meaning += explain(status);
    if r.action == DsnAction::Delayed
        && let Some(until) = r.will_retry_until
    {
        meaning += &format!(" It is still being retried until {}.", human_time(until));
    }
    let mut text = wrap("  ", "  ", &format!("<{}>", clean(&r.address)));
    text += &wrap("    ", "    ", &meaning);
    if let Some(reply) = r.diagnostic.as_deref().map(clean).filter(|t| !t.is_empty()) {
        let host = r.remote_mta.as_deref().map(token).filter(|h| !h.is_empty());
        let who = match host {
            Some(host) => format!("The receiving server ({host}) answered:"),
            None => "The answer was:".to_owned(),
        };
        text += &wrap("    ", "    ", &who);
        text += &wrap("      ", "      ", &reply);
    }
    text
}

/// What a status code probably means, for someone who does not know SMTP (RFC 3463 §3).
fn explain(status: Enhanced) -> &'static str {
    let Enhanced(class, subject, detail) = status;
    match (class, subject, detail) {
        (_, 1, 1) => {
            "The address does not exist at the receiving end. Check it for typing \
             mistakes, or ask the recipient for their current address."
        }
        (_, 1, 2) => {
            "The domain of the address (the part after the @) could not be found. Check \
             it for typing mistakes."
        }
        (_, 1, 10) => "The domain of the address does not accept email.",
        (_, 1, _) => "The receiving side could not use this address. Check it for typing mistakes.",
        (_, 2, 1) => "The recipient's mailbox is disabled and does not accept messages.",
        (_, 2, 2) => "The recipient's mailbox is full.",
        (_, 2, 3) | (_, 3, 4) => {
            "The message is too large for the receiving side. Try again with smaller \
             attachments, or share large files with a link instead."
        }
        (_, 4, 4) => "No mail server could be found for the domain of the address.",
        (_, 4, 7) => "The message could not be delivered in time.",
        (_, 4, _) => "The receiving server could not be reached, or the connection to it failed.",
        (4, 7, _) => {
            "The receiving side is holding the message back for now because of its \
             policy, for example a check against spam."
        }
        (_, 7, _) => {
            "The receiving side refused the message because of its policy: it may have \
             been taken for spam, or your address or domain was not trusted. Contact the \
             recipient another way, or ask your mail provider for help."
        }
        (5, _, _) => "The receiving side refused the message.",
        _ => "The receiving side could not accept the message for now.",
    }
}

fn human_time(time: DateTime<Utc>) -> String {
    time.format("%-d %B %Y at %H:%M UTC").to_string()
}

/// The original header section: up to the first empty line, or the first line that is
/// neither a field nor a continuation (so a message without a blank line leaks no body).
/// Controls become spaces; overlong lines are cut.
fn header_section(original: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in original.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let continues = matches!(line.first(), Some(b' ' | b'\t')) && !out.is_empty();
        if !(continues || is_field(line)) {
            break;
        }
        let line = truncate_bytes(line, MAX_LINE);
        if out.len() + line.len() + CRLF.len() > MAX_HEADER_SECTION {
            break;
        }
        out.extend(line.iter().map(|&b| if is_control(b) { b' ' } else { b }));
        out.extend_from_slice(CRLF.as_bytes());
    }
    out
}

/// `field-name ":"` with printable ASCII names (RFC 5322 §3.6.8; WSP before the colon is
/// the obsolete syntax of §4.5).
fn is_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii_end();
    !name.is_empty() && name.iter().all(|b| (33..=126).contains(b))
}

/// Controls other than HTAB, which folded header lines may use.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// At most `max` bytes, not ending inside a UTF-8 sequence when there is one.
fn truncate_bytes(line: &[u8], max: usize) -> &[u8] {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while end > 0 && (line[end] & 0xc0) == 0x80 {
        end -= 1;
    }
    &line[..end]
}

/// Outside text made safe for one logical line: controls (CR and LF among them) become
/// spaces, runs of white space one space, and the length is capped.
fn clean(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let joined = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&joined, MAX_TEXT).to_owned()
}

/// Outside text that must be one word: a host name or queue ID.
fn token(text: &str) -> String {
    clean(text).replace(' ', "")
}

/// Non-ASCII characters as `\x{HEX}` (RFC 6533's notation), for the ASCII-only
/// `message/delivery-status` part.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out += &format!("\\x{{{:X}}}", u32::from(c));
        }
    }
    out
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A header field, folded at spaces (RFC 5322 §2.2.3): continuation lines begin with a
/// space, so unfolding restores the value.
fn field(name: &str, value: &str) -> String {
    wrap(&format!("{name}: "), " ", value)
}

/// A paragraph of the explanation, wrapped at spaces.
fn paragraph(text: &str) -> String {
    wrap("", "", text)
}

/// Words of `text` after `lead` on the first line and `indent` on the others, a line
/// ending before `WIDTH` where a space allows; a single overlong word is cut to
/// `MAX_WORD`, so no line exceeds 998 octets. Each line ends with CRLF.
fn wrap(lead: &str, indent: &str, text: &str) -> String {
    let mut out = String::new();
    let mut line = lead.to_owned();
    let mut has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let word = truncate(word, MAX_WORD);
        if has_word && line.len() + 1 + word.len() > WIDTH {
            out += &line;
            out += CRLF;
            line = indent.to_owned();
            has_word = false;
        }
        if has_word {
            line.push(' ');
        }
        line += word;
        has_word = true;
    }
    out += &line;
    out += CRLF;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use mail_parser::{Message, MessageParser, MimeHeaders};

    const HOST: &str = "mail.example.com";
    const ORIGINAL: &[u8] = b"From: Alice <alice@example.com>\r\n\
        To: bob@remote.test\r\n\
        Subject: Quarterly report\r\n\
        Message-ID: <orig.1@example.com>\r\n\
        \r\n\
        SECRET BODY LINE\r\n";

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 3, hour, 0, 0).unwrap()
    }

    fn report(address: &str, action: DsnAction, status: &str, diag: &str) -> RecipientReport {
        RecipientReport {
            address: address.to_owned(),
            action,
            status: Enhanced::parse(status).unwrap(),
            remote_mta: Some("mx.remote.test".to_owned()),
            diagnostic: Some(diag.to_owned()),
            last_attempt: Some(at(9)),
            will_retry_until: Some(at(23)),
        }
    }

    fn failed() -> Vec<RecipientReport> {
        vec![
            report(
                "bob@remote.test",
                DsnAction::Failed,
                "5.1.1",
                "550 5.1.1 <bob@remote.test>: no such user",
            ),
            report(
                "carol@remote.test",
                DsnAction::Failed,
                "5.2.2",
                "552 5.2.2 mailbox full",
            ),
        ]
    }

    fn delayed() -> Vec<RecipientReport> {
        vec![report(
            "dave@remote.test",
            DsnAction::Delayed,
            "4.7.1",
            "451 4.7.1 greylisted, try later",
        )]
    }

    fn notify(recipients: &[RecipientReport], original: &[u8]) -> Vec<u8> {
        build(&Notification {
            hostname: HOST,
            queue_id: "0123456789ABCDEF01",
            original_sender: "alice@example.com",
            arrival: at(8),
            recipients,
            original,
            now: at(10),
        })
    }

    fn parse(raw: &[u8]) -> Message<'_> {
        MessageParser::default().parse(raw).expect("parses")
    }

    /// The three parts below the root, in order.
    fn parts<'a>(message: &'a Message<'a>) -> Vec<&'a mail_parser::MessagePart<'a>> {
        let ids = message.root_part().sub_parts().expect("multipart");
        ids.iter()
            .map(|&id| message.part(id).expect("part"))
            .collect()
    }

    fn part_text(message: &Message<'_>, index: usize) -> String {
        parts(message)[index]
            .text_contents()
            .expect("text")
            .to_owned()
    }

    /// The explanation with line breaks and indentation joined to single spaces.
    fn explanation_words(message: &Message<'_>) -> String {
        let text = part_text(message, 0);
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The delivery-status part, unfolded, as blocks of lines.
    fn status_blocks(message: &Message<'_>) -> Vec<Vec<String>> {
        let text = part_text(message, 1).replace("\r\n ", " ");
        text.split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| b.lines().map(str::to_owned).collect())
            .collect()
    }

    fn content_type(part: &mail_parser::MessagePart<'_>) -> String {
        let ct = part.content_type().expect("content type");
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
    }

    #[test]
    fn is_a_multipart_report_of_three_parts() {
        let raw = notify(&failed(), ORIGINAL);
        let message = parse(&raw);
        let ct = message.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let types: Vec<String> = parts(&message).into_iter().map(content_type).collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
    }

    #[test]
    fn delivery_status_has_fields_for_each_recipient() {
        let raw = notify(&failed(), ORIGINAL);
        let message = parse(&raw);
        let blocks = status_blocks(&message);
        assert_eq!(blocks.len(), 3, "{blocks:?}");
        assert_eq!(
            blocks[0],
            [
                format!("Reporting-MTA: dns; {HOST}"),
                "X-Postern-Queue-ID: 0123456789ABCDEF01".to_owned(),
                format!("Arrival-Date: {}", at(8).to_rfc2822()),
            ]
        );
        assert_eq!(
            blocks[1],
            [
                "Final-Recipient: rfc822; bob@remote.test".to_owned(),
                "Action: failed".to_owned(),
                "Status: 5.1.1".to_owned(),
                "Remote-MTA: dns; mx.remote.test".to_owned(),
                "Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user".to_owned(),
                format!("Last-Attempt-Date: {}", at(9).to_rfc2822()),
            ]
        );
        assert!(blocks[2].contains(&"Final-Recipient: rfc822; carol@remote.test".to_owned()));
        assert!(blocks[2].contains(&"Status: 5.2.2".to_owned()));
        assert!(!blocks[2].iter().any(|l| l.starts_with("Will-Retry-Until")));
    }

    #[test]
    fn headers_part_holds_the_original_header_section_only() {
        let raw = notify(&failed(), ORIGINAL);
        let message = parse(&raw);
        let headers = part_text(&message, 2);
        assert!(
            headers.contains("Subject: Quarterly report\r\n"),
            "{headers}"
        );
        assert!(headers.contains("Message-ID: <orig.1@example.com>"));
        assert!(!headers.contains("SECRET BODY"));
        assert!(!String::from_utf8_lossy(&raw).contains("SECRET BODY"));
    }

    #[test]
    fn headers_stop_at_a_line_that_is_no_field() {
        let raw = notify(
            &failed(),
            b"Subject: no blank line\r\nSECRET BODY LINE\r\nX-Later: y\r\n",
        );
        let message = parse(&raw);
        let headers = part_text(&message, 2);
        assert_eq!(headers.trim_end(), "Subject: no blank line");
    }

    #[test]
    fn comes_from_the_mailer_daemon_to_the_sender() {
        let raw = notify(&failed(), ORIGINAL);
        let message = parse(&raw);
        let from = message.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.address(), Some("MAILER-DAEMON@mail.example.com"));
        let to = message.to().and_then(|a| a.first()).expect("to");
        assert_eq!(to.address(), Some("alice@example.com"));
        assert_eq!(message.subject(), Some(SUBJECT_FAILED));
        assert_eq!(
            message.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert!(
            message
                .message_id()
                .expect("id")
                .ends_with("@mail.example.com")
        );
        assert!(message.date().is_some());
    }

    #[test]
    fn subject_and_fields_say_delayed_when_every_recipient_is() {
        let raw = notify(&delayed(), ORIGINAL);
        let message = parse(&raw);
        assert_eq!(message.subject(), Some(SUBJECT_DELAYED));
        let blocks = status_blocks(&message);
        assert!(blocks[1].contains(&"Action: delayed".to_owned()));
        assert!(blocks[1].contains(&"Status: 4.7.1".to_owned()));
        assert!(blocks[1].contains(&format!("Will-Retry-Until: {}", at(23).to_rfc2822())));
        let text = explanation_words(&message);
        assert!(
            text.contains("retried until 3 March 2025 at 23:00 UTC"),
            "{text}"
        );

        let mut mixed = delayed();
        mixed.extend(failed());
        let raw = notify(&mixed, ORIGINAL);
        assert_eq!(parse(&raw).subject(), Some(SUBJECT_FAILED));
    }

    #[test]
    fn explanation_speaks_plainly() {
        let mut recipients = failed();
        recipients.push(report(
            "erin@remote.test",
            DsnAction::Failed,
            "5.7.1",
            "550 5.7.1 message rejected as spam",
        ));
        recipients.extend(delayed());
        let raw = notify(&recipients, ORIGINAL);
        let text = explanation_words(&parse(&raw));
        for expected in [
            "<bob@remote.test>",
            "The address does not exist",
            "550 5.1.1 <bob@remote.test>: no such user",
            "mailbox is full",
            "taken for spam",
            "keeps trying automatically",
            "retried until 3 March 2025 at 23:00 UTC",
            "holding the message back for now",
            "automatic message",
            "0123456789ABCDEF01",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from {text}");
        }
    }

    #[test]
    fn outside_text_cannot_inject_header_lines() {
        let mut evil = report(
            "bob@remote.test\r\nBcc: a@x.test",
            DsnAction::Failed,
            "5.1.1",
            "550 5.1.1 no such user\r\nBcc: victim@x.test\nBcc: two@x.test\rBcc: three@x.test",
        );
        evil.remote_mta = Some("mx.remote.test\r\nBcc: four@x.test".to_owned());
        let raw = notify(&[evil], ORIGINAL);
        let text = String::from_utf8(raw.clone()).expect("utf-8");
        for line in text.split("\r\n") {
            assert!(!line.to_ascii_lowercase().starts_with("bcc:"), "{line:?}");
        }
        let message = parse(&raw);
        assert!(message.bcc().is_none());
        let blocks = status_blocks(&message);
        assert!(
            blocks[1].contains(
                &"Diagnostic-Code: smtp; 550 5.1.1 no such user Bcc: victim@x.test Bcc: \
              two@x.test Bcc: three@x.test"
                    .to_owned()
            )
        );
    }

    #[test]
    fn every_line_ends_with_crlf_and_fits_998_octets() {
        let long_word = "x".repeat(5000);
        let mut recipients = failed();
        recipients[0].diagnostic = Some(format!("550 5.1.1 {long_word} {}", "word ".repeat(900)));
        recipients[1].address = format!("{}@remote.test", "ü+".repeat(400));
        let mut original = format!("Subject: {long_word}\r\nX-Long: ").into_bytes();
        original.extend("é".repeat(700).as_bytes());
        original.extend_from_slice(b"\r\nTo: bob@remote.test\r\n\r\nbody\r\n");
        let raw = notify(&recipients, &original);
        assert!(raw.ends_with(b"\r\n"));
        let lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
        for line in &lines[..lines.len() - 1] {
            assert!(
                line.ends_with(b"\r"),
                "bare LF: {:?}",
                String::from_utf8_lossy(line)
            );
            assert!(line.len() - 1 <= 998, "{} octets", line.len() - 1);
            assert!(!line[..line.len() - 1].contains(&b'\r'), "bare CR");
        }
        let message = parse(&raw);
        assert_eq!(parts(&message).len(), 3);
        assert!(part_text(&message, 2).contains("To: bob@remote.test"));
    }

    #[test]
    fn boundary_occurs_in_no_part() {
        let mut original = b"Subject: tricky\r\nX-Fake: --=_postern_".to_vec();
        original.extend_from_slice(b"\r\n\r\nbody\r\n");
        let raw = notify(&failed(), &original);
        let message = parse(&raw);
        let ct = message.content_type().expect("content type");
        let boundary = ct.attribute("boundary").expect("boundary");
        assert!(boundary.starts_with("=_postern_"));
        for part in parts(&message) {
            let body = &raw[part.raw_body_offset() as usize..part.raw_end_offset() as usize];
            assert!(!contains(body, boundary.as_bytes()));
        }
        assert_eq!(part_text(&message, 2).lines().count(), 2);
    }

    #[test]
    fn non_ascii_address_uses_the_utf8_type_and_stays_7bit() {
        let mut recipients = failed();
        recipients[0].address = "jörg+x@bücher.test".to_owned();
        let raw = notify(&recipients, ORIGINAL);
        assert!(raw.is_ascii());
        let message = parse(&raw);
        let blocks = status_blocks(&message);
        assert!(
            blocks[1]
                .contains(&r"Final-Recipient: utf-8; j\x{F6}rg\x{2B}x@b\x{FC}cher.test".to_owned()),
            "{blocks:?}"
        );
        assert!(blocks[2].contains(&"Final-Recipient: rfc822; carol@remote.test".to_owned()));
        assert!(part_text(&message, 0).contains("<jörg+x@bücher.test>"));
    }

    #[test]
    fn non_ascii_original_headers_survive_base64() {
        let raw = notify(&failed(), "Subject: Grüße\r\n\r\nbody\r\n".as_bytes());
        assert!(raw.is_ascii());
        assert_eq!(part_text(&parse(&raw), 2), "Subject: Grüße\r\n");
    }

    #[test]
    fn out_of_range_status_falls_back_to_the_action_default() {
        let mut recipients = failed();
        recipients[0].status = Enhanced(3, 0, 0);
        let mut late = delayed();
        late[0].status = Enhanced(4, 1234, 1);
        recipients.extend(late);
        let raw = notify(&recipients, ORIGINAL);
        let blocks = status_blocks(&parse(&raw));
        assert!(blocks[1].contains(&"Status: 5.0.0".to_owned()));
        assert!(blocks[3].contains(&"Status: 4.0.0".to_owned()));
    }

    #[test]
    fn expired_temporary_failure_says_the_system_gave_up() {
        let mut recipients = delayed();
        recipients[0].action = DsnAction::Failed;
        recipients[0].status = Enhanced(4, 4, 7);
        let raw = notify(&recipients, ORIGINAL);
        let text = explanation_words(&parse(&raw));
        assert!(text.contains("has now given up"), "{text}");
        assert!(!text.contains("retried until"));
    }
}
