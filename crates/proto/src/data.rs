//! The DATA decoder: finds the end of the message, undoes dot-stuffing, and enforces the
//! line-ending rules that keep one message from being read as two.
//!
//! Only `<CRLF>.<CRLF>` ends the data (RFC 5321 §4.1.1.4). A CR not followed by LF, or
//! an LF not preceded by CR, is an error the moment it is seen: some servers treat
//! `<LF>.<LF>` or `<CR>.<CR>` as the end, and the difference lets an attacker smuggle a
//! second message past a relay (SMTP smuggling, 2023). The session refuses such a
//! message and closes the connection, because the client's idea of where the data
//! ends can no longer be trusted.
//!
//! A message over the size limit, with a line over 1000 octets (RFC 5321 §4.5.3.1.6),
//! or with a NUL octet, is not stored but read to its end, so the session can reply in
//! step. NUL is not SMTP text, 8BITMIME included (RFC 6152 §3); a next hop that drops
//! it would see `<CRLF>.<CRLF>` in `<CRLF><NUL>.<CRLF>`: a smuggling scanner's probe.

/// Longest text line including CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// What the decoder found when the data ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message, dot-unstuffed, every line ending in CRLF.
    Complete(Vec<u8>),
    TooBig,
    LineTooLong,
    /// A NUL octet somewhere in the data.
    NulOctet,
    /// A bare CR or LF: the decoder stopped at once and must not be fed again.
    BareLineEnding,
}

#[derive(Debug)]
pub struct DataDecoder {
    body: Vec<u8>,
    max_size: usize,
    /// Raw octets of the current line, CRLF included once seen.
    line_len: usize,
    /// Nothing of the current line has been read yet.
    at_line_start: bool,
    /// The current line started with a dot, which was removed.
    dot_line: bool,
    /// Octets of the current line written to `body` (after unstuffing).
    line_written: usize,
    /// The previous octet was a CR, and we wait for its LF.
    pending_cr: bool,
    too_big: bool,
    line_too_long: bool,
    nul_seen: bool,
}

impl DataDecoder {
    pub fn new(max_size: usize) -> DataDecoder {
        DataDecoder {
            body: Vec::new(),
            max_size,
            line_len: 0,
            at_line_start: true,
            dot_line: false,
            line_written: 0,
            pending_cr: false,
            too_big: false,
            line_too_long: false,
            nul_seen: false,
        }
    }

    /// Feeds input. Returns how many octets were consumed and, when the data ended
    /// within them, the outcome. Octets after the end belong to the next command.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataOutcome>) {
        for (i, &b) in input.iter().enumerate() {
            if let Some(outcome) = self.step(b) {
                return (i + 1, Some(outcome));
            }
        }
        (input.len(), None)
    }

    fn step(&mut self, b: u8) -> Option<DataOutcome> {
        self.line_len += 1;
        if self.pending_cr {
            if b != b'\n' {
                return Some(DataOutcome::BareLineEnding);
            }
            self.pending_cr = false;
            return self.end_line();
        }
        match b {
            b'\r' => {
                self.pending_cr = true;
                None
            }
            b'\n' => Some(DataOutcome::BareLineEnding),
            b'.' if self.at_line_start => {
                self.at_line_start = false;
                self.dot_line = true;
                None
            }
            _ => {
                self.at_line_start = false;
                self.nul_seen |= b == 0;
                self.push(&[b]);
                self.line_written += 1;
                None
            }
        }
    }

    fn end_line(&mut self) -> Option<DataOutcome> {
        if self.dot_line && self.line_written == 0 {
            return Some(self.finish());
        }
        if self.line_len > MAX_TEXT_LINE {
            self.line_too_long = true;
        }
        self.push(b"\r\n");
        self.line_len = 0;
        self.line_written = 0;
        self.at_line_start = true;
        self.dot_line = false;
        None
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.body.len() + bytes.len() > self.max_size {
            self.too_big = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    fn finish(&mut self) -> DataOutcome {
        if self.too_big {
            DataOutcome::TooBig
        } else if self.nul_seen {
            DataOutcome::NulOctet
        } else if self.line_too_long {
            DataOutcome::LineTooLong
        } else {
            DataOutcome::Complete(std::mem::take(&mut self.body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> (usize, Option<DataOutcome>) {
        DataDecoder::new(1 << 20).feed(input)
    }

    fn decode_in_chunks(input: &[u8], split: usize) -> (usize, Option<DataOutcome>) {
        let mut d = DataDecoder::new(1 << 20);
        let (a, b) = input.split_at(split);
        let (n, out) = d.feed(a);
        if out.is_some() {
            return (n, out);
        }
        let (m, out) = d.feed(b);
        (n + m, out)
    }

    #[test]
    fn crlf_dot_crlf_ends_data_and_unstuffs_dots() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        let (n, out) = decode(input);
        assert_eq!(
            out,
            Some(DataOutcome::Complete(
                b"Subject: x\r\n\r\n.leading dot\r\n".to_vec()
            ))
        );
        assert_eq!(&input[n..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message_ends_at_once() {
        assert_eq!(decode(b".\r\n").1, Some(DataOutcome::Complete(Vec::new())));
    }

    #[test]
    fn a_dot_followed_by_text_does_not_end_data() {
        let (_, out) = decode(b".x\r\n");
        assert_eq!(out, None);
    }

    #[test]
    fn smuggling_variants_never_end_data_and_are_refused() {
        for attack in [
            &b"a\r\n\n.\n"[..],
            b"a\n.\n",
            b"a\r\n.\n",
            b"a\n.\r\n",
            b"a\r.\r",
            b"a\r\n.\r",
            b"a\r.\r\n",
            b"a\r\n\r.\r\n",
        ] {
            // A byte after the attack makes every variant decidable.
            let input = [attack, b"x"].concat();
            let (_, out) = decode(&input);
            assert_eq!(out, Some(DataOutcome::BareLineEnding), "{attack:?}");
        }
    }

    #[test]
    fn bare_cr_or_lf_anywhere_is_refused() {
        assert_eq!(
            decode(b"a\rb\r\n.\r\n").1,
            Some(DataOutcome::BareLineEnding)
        );
        assert_eq!(
            decode(b"a\nb\r\n.\r\n").1,
            Some(DataOutcome::BareLineEnding)
        );
    }

    #[test]
    fn oversized_message_is_drained_to_its_end() {
        let mut d = DataDecoder::new(10);
        let input = b"0123456789abcdef\r\nmore\r\n.\r\nNOOP\r\n";
        let (n, out) = d.feed(input);
        assert_eq!(out, Some(DataOutcome::TooBig));
        assert_eq!(&input[n..], b"NOOP\r\n");
    }

    #[test]
    fn line_of_1000_octets_passes_and_1001_does_not() {
        let ok = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(matches!(decode(&ok).1, Some(DataOutcome::Complete(_))));
        let long = [vec![b'a'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(decode(&long).1, Some(DataOutcome::LineTooLong));
    }

    #[test]
    fn a_nul_octet_is_drained_to_the_end_and_refused() {
        // The smuggling scanner's probe: a next hop that drops NUL sees <CRLF>.<CRLF>.
        let input = b"first\r\n\0.\r\nMAIL FROM:<evil@b.test>\r\n.\r\nNOOP\r\n";
        let (n, out) = decode(input);
        assert_eq!(out, Some(DataOutcome::NulOctet));
        assert_eq!(&input[n..], b"NOOP\r\n");
        assert_eq!(decode(b"a\0b\r\n.\r\n").1, Some(DataOutcome::NulOctet));
    }

    #[test]
    fn result_does_not_depend_on_chunking() {
        let input = b"From: a\r\n\r\n..x\r\nline\r\n.\r\n";
        let whole = decode(input);
        for split in 0..=input.len() {
            assert_eq!(decode_in_chunks(input, split), whole, "split at {split}");
        }
        let attack = b"x\r\n.\nMAIL FROM:<a@b>\r\n";
        let whole = decode(attack);
        for split in 0..=attack.len() {
            assert_eq!(
                decode_in_chunks(attack, split).1,
                whole.1,
                "split at {split}"
            );
        }
    }
}
