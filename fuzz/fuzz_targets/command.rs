//! `parse_command` on raw bytes, then on the same bytes mapped into the RFC 5321 alphabet.
//! Never panics; a MAIL or RCPT command it accepts renders to a line that parses the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::{into_smtp_alphabet, render_command};
use postern_proto::command::{Command, parse_command};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&into_smtp_alphabet(data));
});

fn check(line: &[u8]) {
    let Ok(command) = parse_command(line) else {
        return;
    };
    if let Command::Ehlo(name) | Command::Helo(name) = &command {
        // The name goes into Received headers: one printable token.
        assert!(!name.is_empty() && !name.contains(|c: char| c == ' ' || c.is_control()));
    }
    if let Some(again) = render_command(&command) {
        assert_eq!(parse_command(again.as_bytes()), Ok(command), "{again:?}");
    }
}
