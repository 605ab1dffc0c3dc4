//! `postern::local::message::Prepared::parse`: the message a script hands to
//! `sendmail`. Never panics; what it accepts is CRLF throughout (no bare CR or LF),
//! its header fields carry no CR/LF/NUL inside a line, recipients are extracted without
//! panicking, and removing Bcc leaves no Bcc field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::local::message::Prepared;

fuzz_target!(|data: &[u8]| {
    let Ok(mut message) = Prepared::parse(data) else {
        return;
    };
    let _ = message.header_recipients();
    message.remove_bcc();
    assert!(!message.has_field("Bcc"));
    let bytes = message.into_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert!(bytes.get(i + 1) == Some(&b'\n'), "bare CR at {i}");
        }
    }
    // The header section (empty when the message starts with the blank line) never
    // holds NUL.
    let end = if bytes.starts_with(b"\r\n") {
        0
    } else {
        bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(bytes.len())
    };
    assert!(!bytes[..end].contains(&0));
});
