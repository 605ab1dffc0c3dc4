//! A message handed to `sendmail` on standard input, made fit for the queue: line
//! endings, the header section, recipients from the headers (`-t`) and Bcc removal.
//!
//! Scripts write bare LF; that is normal here and becomes CRLF. A lone CR inside the
//! header section is refused: some programs read it as a line break and some do not, so
//! it could make a header (a `Bcc:`) that only one side sees. Lines end at LF only. A
//! NUL byte anywhere is refused.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the header section contains a bare CR (line {0}); end lines with LF or CRLF")]
    BareCrInHeader(usize),
    #[error(
        "the message contains a NUL byte (line {0}), which mail cannot carry; encode binary data (base64)"
    )]
    Nul(usize),
    #[error(
        "the {field}: field is not a valid address list ({reason}); with -t the recipients come from To:, Cc: and Bcc:, so fix the field or name the recipients as arguments"
    )]
    BadAddressList { field: String, reason: String },
}

/// A submitted message split into its header fields and body, CRLF throughout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Each field with its continuation lines, ending in CRLF.
    pub fields: Vec<Vec<u8>>,
    /// Everything after the header section (without the separating empty line).
    pub body: Vec<u8>,
}

impl Prepared {
    /// Splits and normalises raw input. A first line `From ` (an mbox separator) is
    /// dropped; a line that is not a header ends the header section, as in Postfix.
    pub fn parse(raw: &[u8]) -> Result<Prepared, MessageError> {
        // NUL is not mail text anywhere (RFC 5322 §2.3): a next hop that drops it could
        // read `<CRLF><NUL>.<CRLF>` as the end of the data.
        if let Some(at) = raw.iter().position(|&b| b == 0) {
            let line = raw[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(MessageError::Nul(line));
        }
        let mut lines = split_lines(raw).peekable();
        if lines.peek().is_some_and(|l| l.starts_with(b"From ")) {
            lines.next();
        }
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut line_no = 0;
        let mut body_start = None;
        for line in lines.by_ref() {
            line_no += 1;
            if line.is_empty() {
                body_start = Some(Vec::new());
                break;
            }
            let continuation = line[0] == b' ' || line[0] == b'\t';
            if continuation && !fields.is_empty() {
                check_header_line(line, line_no)?;
                if let Some(field) = fields.last_mut() {
                    push_line(field, line);
                }
                continue;
            }
            if !is_field_start(line) {
                body_start = Some(line.to_vec());
                break;
            }
            check_header_line(line, line_no)?;
            let mut field = Vec::with_capacity(line.len() + 2);
            push_line(&mut field, line);
            fields.push(field);
        }
        let mut body = Vec::with_capacity(raw.len() + raw.len() / 32);
        if let Some(first) = body_start {
            if !first.is_empty() {
                push_body_line(&mut body, &first);
            }
            for line in lines {
                push_body_line(&mut body, line);
            }
        }
        Ok(Prepared { fields, body })
    }

    /// True when a field named `name` (case-insensitive) is present.
    pub fn has_field(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The addresses of the To, Cc and Bcc fields, in order (for `sendmail -t`). A field
    /// whose address list is malformed is an error, never a guess (see
    /// [`address_list`](super::address_list)).
    pub fn header_recipients(&self) -> Result<Vec<String>, MessageError> {
        let mut out = Vec::new();
        for field in &self.fields {
            let name = String::from_utf8_lossy(field_name(field)).to_string();
            if !["To", "Cc", "Bcc"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&name))
            {
                continue;
            }
            let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
            let value = String::from_utf8_lossy(&field[colon + 1..]);
            let addresses =
                super::address_list::parse(&value).map_err(|e| MessageError::BadAddressList {
                    field: name.clone(),
                    reason: e.to_string(),
                })?;
            out.extend(addresses);
        }
        Ok(out)
    }

    /// Drops every Bcc field: the copy that is delivered must not reveal them.
    pub fn remove_bcc(&mut self) {
        self.fields
            .retain(|f| !field_name(f).eq_ignore_ascii_case(b"Bcc"));
    }

    /// The header fields followed by the empty line.
    pub fn header_section(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.fields.concat();
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The value of the first field `name`, unfolded, trimmed.
    pub fn field_value(&self, name: &str) -> Option<String> {
        let field = self
            .fields
            .iter()
            .find(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))?;
        let colon = field.iter().position(|&b| b == b':')?;
        let value = String::from_utf8_lossy(&field[colon + 1..]);
        Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The whole message, ready for the queue.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = self.header_section();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Lines without their terminator; a line ends at LF (an optional CR before it goes).
fn split_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = raw.strip_suffix(b"\n").unwrap_or(raw);
    let empty = raw.is_empty();
    trimmed
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(move |_| !empty)
}

/// `name:` where the name is printable ASCII without space or colon (RFC 5322 §2.2).
fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        Some(colon) => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
    }
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
    &field[..colon]
}

fn check_header_line(line: &[u8], line_no: usize) -> Result<(), MessageError> {
    if line.contains(&b'\r') {
        return Err(MessageError::BareCrInHeader(line_no));
    }
    Ok(())
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// Body lines: a lone CR (old Mac line ends) also becomes CRLF, so the message passes
/// the queue's strict line-ending rules.
fn push_body_line(out: &mut Vec<u8>, line: &[u8]) {
    for (i, part) in line.split(|&b| b == b'\r').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(raw: &str) -> Prepared {
        Prepared::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn bare_lf_becomes_crlf_and_the_body_is_kept() {
        let p = prepared("Subject: hi\nTo: a@example.com\n\nline 1\nline 2\n");
        assert_eq!(
            p.into_bytes(),
            b"Subject: hi\r\nTo: a@example.com\r\n\r\nline 1\r\nline 2\r\n"
        );
    }

    #[test]
    fn crlf_input_is_unchanged() {
        let raw = "Subject: hi\r\n\r\nbody\r\n";
        assert_eq!(prepared(raw).into_bytes(), raw.as_bytes());
    }

    #[test]
    fn a_non_header_line_starts_the_body() {
        let p = prepared("Hello there\nsecond line\n");
        assert!(p.fields.is_empty());
        assert_eq!(p.into_bytes(), b"\r\nHello there\r\nsecond line\r\n");
        let p = prepared("Subject: x\nnot a header\n");
        assert_eq!(p.into_bytes(), b"Subject: x\r\n\r\nnot a header\r\n");
    }

    #[test]
    fn mbox_from_line_is_dropped() {
        let p = prepared("From someone Mon Jan  1 00:00:00 2024\nSubject: x\n\nb\n");
        assert_eq!(p.into_bytes(), b"Subject: x\r\n\r\nb\r\n");
    }

    #[test]
    fn recipients_come_from_to_cc_and_bcc_with_folding_and_encoded_words() {
        let p = prepared(
            "To: =?UTF-8?B?SsO2cmc=?= <jorg@example.com>,\n  b@example.com\nCc: Group: c@example.com, d@example.com;\nBcc: e@example.com\nSubject: x\n\nbody To: nope@example.com\n",
        );
        assert_eq!(
            p.header_recipients().unwrap(),
            [
                "jorg@example.com",
                "b@example.com",
                "c@example.com",
                "d@example.com",
                "e@example.com"
            ]
        );
    }

    #[test]
    fn bcc_is_removed_with_its_continuation_lines() {
        let mut p = prepared(
            "To: a@example.com\nBcc: secret@example.com,\n other@example.com\nSubject: x\n\nb\n",
        );
        p.remove_bcc();
        assert_eq!(
            p.into_bytes(),
            b"To: a@example.com\r\nSubject: x\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn bare_cr_in_a_header_is_refused_so_no_hidden_header_appears() {
        let err = Prepared::parse(b"To: a@example.com\rBcc: evil@remote.test\n\nb\n").unwrap_err();
        assert_eq!(err, MessageError::BareCrInHeader(1));
        assert!(Prepared::parse(b"Subject: x\x00y\n\nb\n").is_err());
    }

    #[test]
    fn injected_text_in_a_folded_value_names_no_extra_recipient() {
        // "Bcc:" inside a continuation line is part of the Subject, not a field.
        let p = prepared("To: a@example.com\nSubject: hello\n Bcc: evil@remote.test\n\nb\n");
        assert_eq!(p.header_recipients().unwrap(), ["a@example.com"]);
    }

    #[test]
    fn a_malformed_recipient_field_is_an_error_naming_the_field() {
        // As a non-interpreting printf passes "\r\n": literal backslashes.
        let p = prepared("To: a@remote.test\\r\\nBcc: b@example.com\nSubject: x\n\nb\n");
        let err = p.header_recipients().unwrap_err();
        assert!(
            matches!(&err, MessageError::BadAddressList { field, .. } if field == "To"),
            "{err}"
        );
    }

    #[test]
    fn a_nul_byte_anywhere_is_refused_with_its_line() {
        assert_eq!(
            Prepared::parse(b"Subject: x\0\n\nbody\n").unwrap_err(),
            MessageError::Nul(1)
        );
        assert_eq!(
            Prepared::parse(b"Subject: x\n\nfirst\n\0.\nsecond\n").unwrap_err(),
            MessageError::Nul(4)
        );
    }

    #[test]
    fn lone_cr_in_the_body_becomes_a_line_break() {
        let p = prepared("Subject: x\n\na\rb\n");
        assert_eq!(p.body, b"a\r\nb\r\n");
    }

    #[test]
    fn empty_input_is_an_empty_message() {
        let p = prepared("");
        assert!(p.fields.is_empty());
        assert!(p.body.is_empty());
        assert_eq!(p.into_bytes(), b"\r\n");
    }

    #[test]
    fn field_lookup_is_case_insensitive_and_unfolds() {
        let p = prepared("subject: a\n  folded\n\n");
        assert!(p.has_field("Subject"));
        assert_eq!(p.field_value("SUBJECT").as_deref(), Some("a folded"));
    }
}
