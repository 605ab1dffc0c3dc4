//! `postern::auth::passwd_file::parse` on lossy UTF-8. Never panics; every entry it
//! returns has a login without whitespace, control characters or ':', a hash, and no login
//! twice (ignoring case); entries written back one a line parse to the same entries.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::auth::passwd_file::{self, Entry};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(entries) = passwd_file::parse(&text, "fuzz-passwd") else {
        return;
    };
    let mut logins = std::collections::HashSet::new();
    for e in &entries {
        assert!(!e.login.is_empty() && !e.hash.is_empty(), "{e:?}");
        assert!(
            !e.login
                .contains(|c: char| c == ':' || c.is_whitespace() || c.is_control()),
            "{e:?}"
        );
        assert!(!e.login.starts_with('#'), "{e:?}");
        assert!(
            !e.hash.contains(':') && !e.rest.iter().any(|f| f.contains(':')),
            "{e:?}"
        );
        assert!(
            logins.insert(e.login.to_lowercase()),
            "duplicate login {:?}",
            e.login
        );
    }
    // Each line ended by CRLF: `lines()` strips exactly one CRLF or LF, so a field that
    // ends in a CR (the parser keeps stray CRs in hashes and extra fields) keeps it.
    let again = entries.iter().map(render).collect::<String>();
    let reparsed = passwd_file::parse(&again, "fuzz-passwd").expect("written back, it parses");
    assert!(reparsed == entries, "written back: {again:?}");
});

fn render(e: &Entry) -> String {
    let mut line = format!("{}:{}", e.login, e.hash);
    for field in &e.rest {
        line.push(':');
        line.push_str(field);
    }
    line.push_str("\r\n");
    line
}
