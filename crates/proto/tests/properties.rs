//! Property tests of the protocol core, through its public API only.
//!
//! - addresses: `parse(render(m)) == m` for generated valid mailboxes, and for anything the
//!   parser accepts; routed local parts are always flagged;
//! - commands: the parser never panics; generated MAIL/RCPT lines parse to the command they
//!   were built from, and re-render to a line that parses the same;
//! - the DATA decoder: dot-stuffed bodies come back unchanged, the outcome does not depend
//!   on how the input is chunked, a completed body has CRLF line ends only, and a bare CR or
//!   LF never lets the data end;
//! - the session: the actions it asks for do not depend on how the input is chunked.
//!
//! The case count is proptest's default (256; `PROPTEST_CASES=10000` for a longer run).
//! Failures are not persisted to a regressions file: a failing input found here becomes a
//! named `#[test]` at the end of this file, like the fuzzers' crashes.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;

use postern_proto::address::{parse_forward_path, parse_reverse_path};
use postern_proto::command::{Body, Command, MailParams, parse_command};
use postern_proto::data::{DataDecoder, DataOutcome};
use postern_proto::server::{Action, Question, Session, SessionConfig, Transaction, Wants};
use postern_proto::{Domain, ForwardPath, Mailbox, Reply, ReversePath};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------

/// `atext` (RFC 5322 §3.2.3) plus a few non-ASCII letters (RFC 6531). The non-ASCII ones
/// are lower case or case-stable in length, see `upper_case_that_grows_when_lowered`.
const ATOM: &str = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~éöß中-]{1,12}";

fn dot_atom() -> impl Strategy<Value = String> {
    prop::collection::vec(ATOM, 1..5)
        .prop_map(|atoms| atoms.join("."))
        .prop_filter("local part of at most 64 octets", |s| s.len() <= 64)
}

/// `"..."` with qtextSMTP, quoted pairs, and sometimes `@`, `%`, `>` or spaces inside.
fn quoted_local() -> impl Strategy<Value = String> {
    let item = prop_oneof![
        4 => "[ !#-\\[\\]-~é]".prop_map(String::from),
        1 => "[ -~]".prop_map(|c| format!("\\{c}")),
    ];
    prop::collection::vec(item, 0..20)
        .prop_map(|items| format!("\"{}\"", items.concat()))
        .prop_filter("local part of at most 64 octets", |s| s.len() <= 64)
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[A-Za-z0-9]([A-Za-z0-9ü中-]{0,14}[A-Za-z0-9])?",
        1 => "[a-z]{63}",
        1 => "xn--[a-z0-9]{1,20}",
    ]
}

fn domain_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5)
        .prop_map(|labels| labels.join("."))
        .prop_filter("domain of at most 255 octets", |s| s.len() <= 255)
}

/// (text after the `@`, the domain it must parse to)
fn domain() -> impl Strategy<Value = (String, Domain)> {
    prop_oneof![
        4 => domain_name().prop_map(|d| (d.clone(), Domain::Name(d.to_lowercase()))),
        1 => any::<u32>().prop_map(|ip| {
            let ip = Ipv4Addr::from(ip);
            (format!("[{ip}]"), Domain::Literal(ip.to_string()))
        }),
        1 => (any::<u128>(), any::<bool>(), any::<bool>()).prop_map(|(ip, lower, expanded)| {
            let ip = Ipv6Addr::from(ip);
            let tag = if lower { "ipv6" } else { "IPv6" };
            // The expanded form (all eight groups) is normalised to the short one.
            let text = if expanded {
                let s = ip.segments();
                format!(
                    "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
                )
            } else {
                ip.to_string()
            };
            (format!("[{tag}:{text}]"), Domain::Literal(format!("IPv6:{ip}")))
        }),
    ]
}

/// (mailbox text, expected local part, expected domain)
fn mailbox_text() -> impl Strategy<Value = (String, String, Domain)> {
    (prop_oneof![3 => dot_atom(), 1 => quoted_local()], domain())
        .prop_map(|(local, (dom, expected))| (format!("{local}@{dom}"), local, expected))
}

/// Strings that look like addresses often enough to get past the first checks.
fn address_like() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[a-zA-Z0-9.@\"\\\\%!<>\\[\\]:, _=+-]{0,40}",
        "[a.@\"\\\\\\[\\]:0-9]{0,20}",
        mailbox_text().prop_map(|(s, _, _)| s),
        // A valid mailbox with one character changed, inserted or removed.
        (
            mailbox_text(),
            any::<Index>(),
            0..3u8,
            "[\\x00-\\x7f]|é|\\.|@|\""
        )
            .prop_map(|((s, _, _), at, op, c)| {
                let mut chars: Vec<char> = s.chars().collect();
                let c = c.chars().next().unwrap_or('x');
                let i = at.index(chars.len());
                match op {
                    0 => chars[i] = c,
                    1 => chars.insert(i, c),
                    _ => {
                        chars.remove(i);
                    }
                }
                chars.into_iter().collect()
            }),
    ]
}

/// Names of the properties that a mailbox accepted by the parser must have.
fn check_accepted_mailbox(m: &Mailbox) -> Result<(), TestCaseError> {
    let rendered = m.to_string();
    let again = Mailbox::parse(&rendered);
    prop_assert_eq!(again.as_ref(), Ok(m), "re-parse of {:?}", rendered);
    let local = m.local_part();
    prop_assert!(!local.is_empty() && local.len() <= 64);
    let routed_looking = local.contains(['%', '!', '@', '"']);
    prop_assert_eq!(m.is_routed(), routed_looking, "is_routed of {:?}", local);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_mailboxes_parse_and_render_back((text, local, domain) in mailbox_text()) {
        let m = Mailbox::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e:?}")))?;
        prop_assert_eq!(m.local_part(), local.as_str());
        prop_assert_eq!(m.domain(), &domain);
        prop_assert_eq!(Mailbox::parse(&m.to_string()), Ok(m.clone()));
        check_accepted_mailbox(&m)?;
    }

    #[test]
    fn whatever_mailbox_parse_accepts_renders_back(s in address_like()) {
        if let Ok(m) = Mailbox::parse(&s) {
            check_accepted_mailbox(&m)?;
        }
    }

    #[test]
    fn routed_local_parts_are_flagged(
        local in prop_oneof![
            "[a-z]{1,5}[%!][a-z]{0,5}(\\.[a-z]{1,4})?",
            "\"[a-z]{1,5}@[a-z]{1,5}\\.test\"",
            quoted_local(),
            dot_atom(),
        ],
        (dom, _) in domain(),
    ) {
        let m = Mailbox::parse(&format!("{local}@{dom}"))
            .map_err(|e| TestCaseError::fail(format!("{local:?}@{dom:?}: {e:?}")))?;
        prop_assert_eq!(m.is_routed(), local.contains(['%', '!', '@', '"']), "{:?}", local);
    }

    #[test]
    fn paths_render_back(s in address_like(), rest in "( [A-Z=0-9]{1,8}){0,2}") {
        for text in [format!("<{s}>{rest}"), s.clone()] {
            if let Ok((path, tail)) = parse_reverse_path(&text) {
                let again = format!("<{path}>{tail}");
                prop_assert_eq!(parse_reverse_path(&again), Ok((path.clone(), tail)));
            }
            if let Ok((path, tail)) = parse_forward_path(&text) {
                let again = format!("<{path}>{tail}");
                prop_assert_eq!(parse_forward_path(&again), Ok((path.clone(), tail)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// The alphabet smtp-proto's fuzzer maps bytes into, so that random input gets past the
/// verb and into the argument grammar.
const SMTP_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz:=-<>@.,; \r\n\"";

fn smtp_alphabet_map(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .map(|&b| SMTP_ALPHABET[b as usize % SMTP_ALPHABET.len()])
        .collect()
}

fn some_case(word: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars()
            .zip(upper)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// A mailbox short enough for a path (`<...>` of at most 256 octets).
fn path_mailbox() -> impl Strategy<Value = Mailbox> {
    mailbox_text()
        .prop_filter("path of at most 256 octets", |(s, _, _)| s.len() <= 254)
        .prop_map(|(s, _, _)| Mailbox::parse(&s).expect("generated mailboxes are valid"))
}

/// (line, the command it must parse to)
fn mail_line() -> impl Strategy<Value = (String, Command)> {
    let from = prop_oneof![
        1 => Just(ReversePath::Null),
        4 => path_mailbox().prop_map(ReversePath::Mailbox),
    ];
    let body = prop_oneof![
        Just(None),
        some_case("7bit").prop_map(|v| Some((Body::SevenBit, v))),
        some_case("8bitmime").prop_map(|v| Some((Body::EightBitMime, v))),
    ];
    (
        some_case("mail"),
        some_case("from:"),
        " {0,2}",
        from,
        prop::option::of(any::<u64>()),
        body,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(" {1,2}", 4),
    )
        .prop_map(|(verb, kw, sp, from, size, body, utf8, auth, gaps)| {
            let mut line = format!("{verb} {kw}{sp}<{from}>");
            if let Some(n) = size {
                line += &format!("{}SIZE={n}", gaps[0]);
            }
            if let Some((_, v)) = &body {
                line += &format!("{}BODY={v}", gaps[1]);
            }
            if utf8 {
                line += &format!("{}SMTPUTF8", gaps[2]);
            }
            if auth {
                line += &format!("{}AUTH=<>", gaps[3]);
            }
            let params = MailParams {
                size,
                body: body.map(|(b, _)| b),
                smtputf8: utf8,
            };
            (line, Command::Mail { from, params })
        })
}

fn rcpt_line() -> impl Strategy<Value = (String, Command)> {
    let to = prop_oneof![
        1 => some_case("postmaster").prop_map(|p| (p, ForwardPath::Postmaster)),
        4 => path_mailbox().prop_map(|m| (m.to_string(), ForwardPath::Mailbox(m))),
    ];
    (some_case("rcpt"), some_case("to:"), " {0,2}", to).prop_map(|(verb, kw, sp, (path, to))| {
        (format!("{verb} {kw}{sp}<{path}>"), Command::Rcpt { to })
    })
}

/// The canonical line for a MAIL or RCPT command.
fn render(command: &Command) -> String {
    match command {
        Command::Mail { from, params } => format!("MAIL FROM:<{from}>{params}"),
        Command::Rcpt { to } => format!("RCPT TO:<{to}>"),
        other => panic!("render only knows MAIL and RCPT, not {other:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_command_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_command(&bytes);
        let _ = parse_command(&smtp_alphabet_map(&bytes));
    }

    #[test]
    fn mail_and_rcpt_lines_parse_and_render_back(
        (line, expected) in prop_oneof![mail_line(), rcpt_line()]
    ) {
        let parsed = parse_command(line.as_bytes());
        prop_assert_eq!(parsed.as_ref(), Ok(&expected), "{:?}", line);
        let again = render(&expected);
        prop_assert_eq!(parse_command(again.as_bytes()), Ok(expected), "{:?}", again);
    }

    #[test]
    fn accepted_mail_and_rcpt_lines_render_back(
        bytes in prop::collection::vec(any::<u8>(), 0..80),
        verb in prop_oneof![Just("MAIL FROM:<"), Just("RCPT TO:<")],
    ) {
        let mut line = verb.as_bytes().to_vec();
        line.extend(smtp_alphabet_map(&bytes).into_iter().filter(|b| !b"\r\n".contains(b)));
        if let Ok(command @ (Command::Mail { .. } | Command::Rcpt { .. })) = parse_command(&line) {
            let again = render(&command);
            prop_assert_eq!(parse_command(again.as_bytes()), Ok(command), "{:?}", again);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The DATA decoder
// ---------------------------------------------------------------------------------------

/// One text line without its line end: any octets but CR and LF, often starting with a dot.
fn text_line() -> impl Strategy<Value = Vec<u8>> {
    let octet = prop_oneof![
        4 => b'a'..=b'z',
        1 => Just(b'.'),
        // Any octet but the line ends and NUL, which SMTP text never holds.
        1 => any::<u8>().prop_map(|b| if matches!(b, b'\r' | b'\n' | 0) { b' ' } else { b }),
    ];
    (
        prop::option::of(prop_oneof![Just(b".".to_vec()), Just(b"..".to_vec())]),
        prop::collection::vec(octet, 0..40),
    )
        .prop_map(|(dots, rest)| [dots.unwrap_or_default(), rest].concat())
}

/// The message as it should come out of the decoder: lines ending in CRLF.
fn message() -> impl Strategy<Value = Vec<u8>> {
    message_of(0..12)
}

fn message_of(lines: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(text_line(), lines).prop_map(|lines| {
        lines
            .iter()
            .flat_map(|l| [&l[..], &b"\r\n"[..]].concat())
            .collect()
    })
}

/// What the client sends after `DATA`: dot-stuffed, ended by `.CRLF` (the CRLF before it
/// is the last line's, or the DATA command's for an empty message).
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Octets where CR, LF and dots are common, so that line ends and the end of data happen.
fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
    let octet = prop_oneof![
        3 => Just(b'\r'),
        3 => Just(b'\n'),
        3 => Just(b'.'),
        2 => Just(b'a'),
        1 => any::<u8>(),
    ];
    prop_oneof![
        prop::collection::vec(octet, 0..40),
        prop::collection::vec(any::<u8>(), 0..200),
        (message(), prop::collection::vec(any::<u8>(), 0..10)).prop_map(|(m, tail)| [
            stuffed(&m),
            tail
        ]
        .concat()),
    ]
}

/// Cut points in `0..=len`, sorted.
fn cuts(points: &[Index], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fn chunks<'a>(input: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts(points, input.len()) {
        out.push(&input[start..cut]);
        start = cut;
    }
    out.push(&input[start..]);
    out
}

/// Feeds the chunks in order until the data ends: (octets consumed, outcome).
fn decode(max_size: usize, chunks: &[&[u8]]) -> (usize, Option<DataOutcome>) {
    let mut decoder = DataDecoder::new(max_size);
    let mut consumed = 0;
    for chunk in chunks {
        let (n, outcome) = decoder.feed(chunk);
        consumed += n;
        if outcome.is_some() {
            return (consumed, outcome);
        }
        assert_eq!(
            n,
            chunk.len(),
            "the decoder consumes a chunk whole until the end"
        );
    }
    (consumed, None)
}

const BIG: usize = 1 << 20;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stuffed_messages_decode_to_the_original(
        message in message(),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let input = [stuffed(&message), tail.clone()].concat();
        let (consumed, outcome) = decode(BIG, &[&input]);
        prop_assert_eq!(outcome, Some(DataOutcome::Complete(message)));
        prop_assert_eq!(&input[consumed..], &tail[..], "octets after the end are left");
    }

    #[test]
    fn too_big_messages_are_drained_to_their_end(message in message_of(1..12), cut in any::<Index>()) {
        let max = cut.index(message.len());
        let input = stuffed(&message);
        prop_assert_eq!(decode(max, &[&input]), (input.len(), Some(DataOutcome::TooBig)));
    }

    #[test]
    fn decoding_does_not_depend_on_chunking(
        input in data_bytes(),
        points in prop::collection::vec(any::<Index>(), 0..8),
        max_size in prop_oneof![Just(BIG), 0usize..64],
    ) {
        let whole = decode(max_size, &[&input]);
        prop_assert_eq!(decode(max_size, &chunks(&input, &points)), whole.clone());
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(decode(max_size, &bytewise), whole);
    }

    #[test]
    fn a_complete_body_has_only_crlf_line_ends(input in data_bytes()) {
        let (consumed, outcome) = decode(BIG, &[&input]);
        if let Some(DataOutcome::Complete(body)) = outcome {
            for (i, &b) in body.iter().enumerate() {
                if b == b'\n' {
                    prop_assert!(i > 0 && body[i - 1] == b'\r', "bare LF at {} in {:?}", i, body);
                }
                if b == b'\r' {
                    prop_assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at {} in {:?}", i, body);
                }
            }
            // The data ends at CRLF.CRLF, whose first CRLF may be the DATA command's own.
            let seen = [b"\r\n", &input[..consumed]].concat();
            prop_assert!(seen.ends_with(b"\r\n.\r\n"), "ended without CRLF.CRLF: {:?}", input);
            prop_assert!(body.is_empty() || body.ends_with(b"\r\n"));
        }
    }

    #[test]
    fn a_bare_cr_or_lf_before_the_end_never_completes(
        message in message(),
        at in any::<Index>(),
        bare in prop_oneof![Just(b'\r'), Just(b'\n')],
        points in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let mut input = stuffed(&message);
        // Anywhere before the terminator's CR, or on it. (An LF put between the
        // terminator's CR and LF completes the data, and the last LF is then the bare one,
        // left for the session to read as the next command.)
        let i = at.index(input.len() - 1);
        input.insert(i, bare);
        let (consumed, outcome) = decode(BIG, &chunks(&input, &points));
        prop_assert_eq!(outcome, Some(DataOutcome::BareLineEnding), "{:?}", input);
        prop_assert!(consumed <= i + 2, "the decoder stops at the bare line end");
    }
}

// ---------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------

/// What the session asked for, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Reply(String),
    Ask(Question),
    Spool(Transaction),
    StartTls,
    Close,
}

/// A server that says yes to everything.
struct Driver {
    session: Session,
    events: Vec<Event>,
}

impl Driver {
    fn new(config: SessionConfig) -> Driver {
        let mut d = Driver {
            session: Session::new(config),
            events: Vec::new(),
        };
        d.drain();
        d
    }

    /// Feeds one chunk and returns how many events it caused.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let before = self.events.len();
        self.session.handle_bytes(bytes);
        self.drain();
        self.events.len() - before
    }

    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(reply) => {
                    let text = String::from_utf8_lossy(&reply.to_bytes()).into_owned();
                    self.events.push(Event::Reply(text));
                }
                Action::Ask(question) => {
                    self.events.push(Event::Ask(question.clone()));
                    match question {
                        Question::Mail { .. } => self.session.handle_verdict(Reply::sender_ok()),
                        Question::Rcpt { .. } => self.session.handle_verdict(Reply::recipient_ok()),
                        Question::Auth(c) => self.session.handle_auth(Ok(c.login)),
                    }
                }
                Action::Spool(tx) => {
                    self.events.push(Event::Spool(tx));
                    self.session.handle_spooled(Ok("Q".into()));
                }
                Action::StartTls => {
                    self.events.push(Event::StartTls);
                    self.session.handle_tls_established();
                }
                Action::Close => self.events.push(Event::Close),
            }
        }
    }
}

fn session_config() -> impl Strategy<Value = SessionConfig> {
    (
        prop_oneof![Just(64usize), Just(100_000)],
        1usize..4,
        prop_oneof![Just(3usize), Just(1000)],
    )
        .prop_map(
            |(max_message_size, max_recipients, max_errors)| SessionConfig {
                hostname: "mx.example.com".into(),
                max_message_size,
                max_recipients,
                // TLS from the start, so AUTH is reachable; STARTTLS has its own property.
                starttls_available: false,
                implicit_tls: true,
                max_errors,
            },
        )
}

/// Client input: pieces of a plausible dialog, mistakes and attacks, and random octets.
fn client_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        8 => prop::sample::select(vec![
            "EHLO client.example\r\n",
            "HELO x\r\n",
            "MAIL FROM:<a@example.com>\r\n",
            "MAIL FROM:<>\r\n",
            "mail from: <b@remote.test> SIZE=70 BODY=8BITMIME\r\n",
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n",
            "MAIL FROM:<jörg@bücher.example>\r\n",
            "RCPT TO:<b@example.com>\r\n",
            "RCPT TO:<postmaster>\r\n",
            "RCPT TO:<\"v@x.test\"@example.com>\r\n",
            "DATA\r\n",
            "Subject: hi\r\n",
            "\r\n",
            "..dot\r\n",
            ".\r\n",
            "RSET\r\n",
            "NOOP\r\n",
            "VRFY x\r\n",
            "HELP\r\n",
            "QUIT\r\n",
            "STARTTLS\r\n",
            "BDAT 10\r\n",
            "AUTH PLAIN AHUAcA==\r\n",
            "AUTH PLAIN\r\n",
            "AUTH LOGIN\r\n",
            "AUTH LOGIN dXNlcg==\r\n",
            "AUTH CRAM-MD5\r\n",
            "dXNlcg==\r\n",
            "AHUAcA==\r\n",
            "*\r\n",
            "=\r\n",
            "!!!\r\n",
            "GET / HTTP/1.1\r\n",
            "\n",
            "\r",
            "x\n.\n",
            "\r\n.\r\n",
            "\r\n.\nMAIL FROM:<evil@x.test>\r\n",
        ]).prop_map(|s| s.as_bytes().to_vec()),
        1 => (b'a'..=b'z', 500usize..620).prop_map(|(c, n)| [vec![c; n], b"\r\n".to_vec()].concat()),
        1 => (990usize..1010).prop_map(|n| [vec![b'b'; n], b"\r\n".to_vec()].concat()),
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop_oneof![
        // Mostly after an EHLO, so that transactions, AUTH and DATA are reached.
        4 => (any::<bool>(), prop::collection::vec(piece, 0..24)).prop_map(|(ehlo, p)| {
            let start: &[u8] = if ehlo { b"EHLO client.example\r\n" } else { b"" };
            [start.to_vec(), p.concat()].concat()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| smtp_alphabet_map(&b)),
    ]
}

fn run(config: &SessionConfig, chunks: &[&[u8]]) -> (Vec<Event>, Wants) {
    let mut d = Driver::new(config.clone());
    for chunk in chunks {
        d.feed(chunk);
    }
    let wants = d.session.wants();
    (d.events, wants)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn session_output_does_not_depend_on_chunking(
        config in session_config(),
        input in client_input(),
        points in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let whole = run(&config, &[&input]);
        prop_assert_eq!(&run(&config, &chunks(&input, &points)), &whole, "{:?}", String::from_utf8_lossy(&input));
        if input.len() <= 2000 {
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&run(&config, &bytewise), &whole, "byte by byte");
        }
    }

    /// With STARTTLS offered, chunking may matter only after the handshake: what followed
    /// STARTTLS in the same chunk is discarded (RFC 3207 §4.2), later chunks are read.
    #[test]
    fn starttls_discards_the_rest_of_its_chunk(
        mut config in session_config(),
        input in client_input(),
        points in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        config.starttls_available = true;
        config.implicit_tls = false;
        let (whole, _) = run(&config, &[&input]);
        let mut d = Driver::new(config.clone());
        for chunk in chunks(&input, &points) {
            let before = d.events.len();
            d.feed(chunk);
            if let Some(i) = d.events[before..].iter().position(|e| *e == Event::StartTls) {
                prop_assert_eq!(d.events.len(), before + i + 1, "events after StartTls in its chunk");
            }
        }
        let tls_at = whole.iter().position(|e| *e == Event::StartTls);
        match tls_at {
            None => prop_assert_eq!(&d.events, &whole),
            Some(i) => {
                prop_assert_eq!(whole.len(), i + 1, "nothing after StartTls in one chunk");
                prop_assert_eq!(&d.events[..=i], &whole[..]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inputs found by the properties or the fuzzers
// ---------------------------------------------------------------------------------------

/// Some upper-case letters grow when lowered (`İ` U+0130, 2 octets, becomes `i̇`,
/// 3 octets). Domains are measured after lowering, so a label of 31 of them (62 octets
/// as written, 93 lowered) is refused, and whatever is accepted re-renders and
/// re-parses to itself.
#[test]
fn upper_case_that_grows_when_lowered() {
    let text = format!("a@{}.example", "İ".repeat(31));
    assert!(Mailbox::parse(&text).is_err());
    let m = Mailbox::parse(&format!("a@{}.example", "İ".repeat(20))).expect("fits after lowering");
    assert_eq!(Mailbox::parse(&m.to_string()), Ok(m));
}
