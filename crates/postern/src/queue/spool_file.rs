//! The on-disk format of the spool's files: their names, and what a `.msg` holds.
//!
//! # Names and contents
//!
//! | name | what it is |
//! | --- | --- |
//! | `queue/<ID>.msg` | a header line `postern-queue-1 <envelope length> <message length>`, the envelope as first committed (JSON of that length) and a newline, the message, then zeros up to a multiple of 4 KiB. (Files written before the message length was recorded have one number, and the message runs to the end.) Never changed once written. **The commit point:** a message is in the queue iff its `.msg` exists |
//! | `queue/<ID>.env` | the envelope's later states (recipients done, retry times) as JSON, rewritten atomically; when present it supersedes the envelope in the `.msg` |
//! | `queue/tmp-<ID>.<ext>.<random>` | a file being written; never read, removed by [`Spool::recover`](super::Spool::recover) |
//! | `queue/free-<random>` | a blanked file (all zeros) of a finished message, kept for reuse (see the spool's "Recycling"); also written in place for the next message before its rename |
//! | `queue/corrupt/` | items whose envelope could not be read, set aside by [`Spool::recover`](super::Spool::recover) for a human |
//!
//! One file per new message: most messages are delivered at the first attempt, and never
//! get a `.env`. Items written by earlier versions (a `.msg` with the message only, and
//! the envelope in `.env`) are still read: a `.msg` without the header line is all message.
//!
//! Only names made of a valid [`QueueId`] and a known extension are read as queue items,
//! so stray files in the directory are ignored. Every state is a file name, not a
//! directory: the queue is one flat directory so that one directory fsync covers a commit.

use std::fs::File;
use std::io;

use super::QueueId;

/// A file being written.
pub const TEMP_PREFIX: &str = "tmp-";
/// A blanked file kept for reuse.
pub const FREE_PREFIX: &str = "free-";
/// The message file, and the commit point.
pub const MESSAGE_EXT: &str = "msg";
/// A `.msg` is padded with zeros to a multiple of this, so that a free file reused for a
/// message of as many pages keeps its blocks (see the spool's commit).
pub const PAD_TO: usize = 4096;
/// The first word of a `.msg` that starts with its envelope.
pub const HEADER_MAGIC: &str = "postern-queue-1";
/// The longest header line and envelope read back: a bound against a damaged file.
pub const MAX_HEADER_LINE: u64 = 64;
pub const MAX_ENVELOPE_LEN: usize = 16 << 20;
/// The envelope's later states.
pub const ENVELOPE_EXT: &str = "env";

/// The header line of a `.msg` and the zeros that pad it to a multiple of [`PAD_TO`],
/// for an envelope of `json` and `message`.
pub fn framing(json: &[u8], message: &[u8]) -> (String, &'static [u8]) {
    static ZEROS: [u8; PAD_TO] = [0; PAD_TO];
    let header = format!("{HEADER_MAGIC} {} {}\n", json.len(), message.len());
    let written = header.len() + json.len() + 1 + message.len();
    (header, &ZEROS[..(PAD_TO - written % PAD_TO) % PAD_TO])
}

/// The name of a queue item's file.
pub fn file_name(id: &QueueId, ext: &str) -> String {
    format!("{id}.{ext}")
}

/// `<ID>.msg` or `<ID>.env`; anything else is not a queue item.
pub fn parse_file_name(name: &str) -> Option<(QueueId, &'static str)> {
    let (stem, ext) = name.split_once('.')?;
    let ext = [MESSAGE_EXT, ENVELOPE_EXT]
        .into_iter()
        .find(|known| *known == ext)?;
    Some((QueueId::parse(stem)?, ext))
}

/// What a `.msg` starts with.
pub enum Header {
    /// The header line: the envelope is `len` bytes from `start`, then a newline, then
    /// the message: `message_len` bytes (then padding) or, in files written before the
    /// length was recorded, everything to the end.
    Envelope {
        start: usize,
        len: usize,
        message_len: Option<usize>,
    },
    /// No header: a message written by an earlier version, all message.
    None,
    Damaged(String),
}

pub fn parse_header(bytes: &[u8]) -> Header {
    let Some(rest) = bytes.strip_prefix(HEADER_MAGIC.as_bytes()) else {
        return Header::None;
    };
    let line_end = rest
        .iter()
        .take(MAX_HEADER_LINE as usize)
        .position(|&b| b == b'\n');
    let numbers: Option<Vec<usize>> = line_end
        .and_then(|end| std::str::from_utf8(&rest[..end]).ok())
        .and_then(|line| line.split_whitespace().map(|n| n.parse().ok()).collect());
    match (line_end, numbers.as_deref()) {
        (Some(end), Some(&[len, ref message_len @ ..]))
            if len <= MAX_ENVELOPE_LEN && message_len.len() <= 1 =>
        {
            Header::Envelope {
                start: HEADER_MAGIC.len() + end + 1,
                len,
                message_len: message_len.first().copied(),
            }
        }
        _ => Header::Damaged("bad header line".into()),
    }
}

/// The envelope at the start of an open `.msg`; empty when the file has none (written
/// by an earlier version) or its header is damaged.
pub fn read_envelope_from(file: &mut File) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = vec![0u8; HEADER_MAGIC.len() + MAX_HEADER_LINE as usize];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    head.truncate(filled);
    let (start, len) = match parse_header(&head) {
        Header::Envelope { start, len, .. } => (start, len),
        Header::None | Header::Damaged(_) => return Ok(Vec::new()),
    };
    let mut envelope = head.split_off(start.min(head.len()));
    if envelope.len() < len {
        let missing = len - envelope.len();
        let read = file.take(missing as u64).read_to_end(&mut envelope)?;
        if read < missing {
            return Ok(Vec::new());
        }
    }
    envelope.truncate(len);
    Ok(envelope)
}
