//! `Mailbox::parse`, `parse_reverse_path` and `parse_forward_path` on lossy UTF-8.
//! Never panics; whatever is accepted renders back to text that parses to the same value,
//! and a local part with `%`, `!`, `@` or quotes is flagged as routed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::Mailbox;
use postern_proto::address::{parse_forward_path, parse_reverse_path};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = Mailbox::parse(&text) {
        check_mailbox(&m);
    }
    if let Ok((path, rest)) = parse_reverse_path(&text) {
        if let Some(m) = path.mailbox() {
            check_mailbox(m);
        }
        let again = format!("<{path}>{rest}");
        assert_eq!(
            parse_reverse_path(&again),
            Ok((path.clone(), rest)),
            "{again:?}"
        );
    }
    if let Ok((path, rest)) = parse_forward_path(&text) {
        let again = format!("<{path}>{rest}");
        assert_eq!(
            parse_forward_path(&again),
            Ok((path.clone(), rest)),
            "{again:?}"
        );
    }
});

fn check_mailbox(m: &Mailbox) {
    let rendered = m.to_string();
    assert_eq!(Mailbox::parse(&rendered).as_ref(), Ok(m), "{rendered:?}");
    let local = m.local_part();
    assert!(!local.is_empty() && local.len() <= 64, "{local:?}");
    assert_eq!(
        m.is_routed(),
        local.contains(['%', '!', '@', '"']),
        "{local:?}"
    );
}
