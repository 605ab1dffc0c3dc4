//! SASL decoding: `decode_response` on lossy UTF-8, `decode_plain` on what it decodes and
//! on the raw bytes. Never panics; valid base64 re-encodes to the same text; a PLAIN
//! message that decodes has three NUL-separated fields and a login.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use postern_proto::sasl::{self, SaslError, decode_login_field, decode_plain, decode_response};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    match decode_response(&line) {
        Ok(bytes) => {
            let trimmed = line.trim_end();
            if trimmed != "=" {
                assert_eq!(STANDARD.encode(&bytes), trimmed);
            }
            check_plain(&bytes);
            let _ = decode_login_field(bytes);
        }
        Err(SaslError::Cancelled) => assert_eq!(line.trim_end(), "*"),
        Err(_) => {}
    }
    check_plain(data);
    // What the server encodes as a challenge, a client's response decodes back.
    let encoded = sasl::encode_challenge(&line);
    assert_eq!(decode_response(&encoded), Ok(line.as_bytes().to_vec()));
});

fn check_plain(message: &[u8]) {
    let Ok(c) = decode_plain(message) else {
        return;
    };
    assert!(!c.login.is_empty());
    let authzid = c.authzid.as_deref().unwrap_or("");
    assert_ne!(c.authzid.as_deref(), Some(""));
    let again = [
        authzid.as_bytes(),
        c.login.as_bytes(),
        c.password.as_bytes(),
    ]
    .join(&0u8);
    assert_eq!(again, message);
}
