//! The DATA decoder, fed the input whole and in two chunks cut at the first octet's value.
//! Both give the same outcome after the same number of octets; a complete body has CRLF
//! line ends only, and the data ended at CRLF.CRLF (whose first CRLF may be the DATA
//! command's own).

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::{assert_crlf_only, split_at_first_octet};
use postern_proto::data::{DataDecoder, DataOutcome};

fuzz_target!(|data: &[u8]| {
    let Some((a, b)) = split_at_first_octet(data) else {
        return;
    };
    let input = &data[1..];
    // A small limit sometimes, so that TooBig is reached too.
    let max_size = if data[0] & 1 == 0 { 1 << 16 } else { 32 };

    let whole = DataDecoder::new(max_size).feed(input);

    let mut decoder = DataDecoder::new(max_size);
    let split = match decoder.feed(a) {
        (n, Some(outcome)) => (n, Some(outcome)),
        (n, None) => {
            assert_eq!(n, a.len());
            let (m, outcome) = decoder.feed(b);
            (n + m, outcome)
        }
    };
    assert_eq!(split, whole, "cut at {}", a.len());

    let (consumed, outcome) = whole;
    match outcome {
        None => assert_eq!(consumed, input.len()),
        Some(DataOutcome::Complete(body)) => {
            assert_crlf_only(&body);
            assert!(body.len() <= max_size);
            let seen = [b"\r\n", &input[..consumed]].concat();
            assert!(seen.ends_with(b"\r\n.\r\n"), "ended without CRLF.CRLF");
        }
        Some(DataOutcome::TooBig | DataOutcome::LineTooLong) => {
            let seen = [b"\r\n", &input[..consumed]].concat();
            assert!(
                seen.ends_with(b"\r\n.\r\n"),
                "drained to something else than CRLF.CRLF"
            );
        }
        Some(DataOutcome::BareLineEnding) => {
            // Stopped on a bare LF, or on the octet after a CR that was not an LF.
            let last = input[consumed - 1];
            assert!(last == b'\n' || (consumed >= 2 && input[consumed - 2] == b'\r'));
        }
    }
});
