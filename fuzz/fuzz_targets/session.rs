//! Arbitrary bytes through a `Session` with a driver that says yes to everything, then
//! the same bytes mapped into the RFC 5321 alphabet. Never panics; every reply is well
//! formed (code, enhanced code, CRLF, nothing smuggled into its text); a spooled body has
//! CRLF line ends only; and on a listener without STARTTLS, feeding the input whole or cut
//! in two at the first octet's value gives the same actions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::{
    Driver, Event, implicit_tls_config, into_smtp_alphabet, split_at_first_octet, starttls_config,
};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&into_smtp_alphabet(data));
});

fn check(data: &[u8]) {
    let Some((a, b)) = split_at_first_octet(data) else {
        return;
    };
    let input = &data[1..];

    let mut whole = Driver::new(implicit_tls_config());
    whole.feed(input);
    let mut split = Driver::new(implicit_tls_config());
    split.feed(a);
    split.feed(b);
    assert_eq!(split.events, whole.events, "cut at {}", a.len());
    assert_eq!(split.session.wants(), whole.session.wants());

    // With STARTTLS the cut may matter after the handshake (what followed STARTTLS in
    // the same read is discarded), but never before it.
    let mut whole = Driver::new(starttls_config());
    whole.feed(input);
    let mut split = Driver::new(starttls_config());
    split.feed(a);
    split.feed(b);
    let tls = |events: &[Event]| events.iter().position(|e| *e == Event::StartTls);
    match tls(&whole.events) {
        None => assert_eq!(split.events, whole.events),
        Some(i) => {
            assert_eq!(
                whole.events.len(),
                i + 1,
                "actions after STARTTLS in the same read"
            );
            assert_eq!(&split.events[..=i], &whole.events[..]);
        }
    }
}
