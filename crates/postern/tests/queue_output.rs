//! `postern queue list|show` print what remote servers and clients wrote (replies,
//! addresses, headers): control characters in them are escaped, never sent raw to the
//! administrator's terminal.

mod common;

use common::sink::{Script, Sink};
use common::{Server, Setup};

#[test]
fn escape_sequences_from_a_remote_reply_and_a_header_are_escaped() {
    // ESC [2J clears the screen; ESC ]0; sets the window title.
    let sink = Sink::start(Script {
        rcpt: Box::new(|_| "451 4.7.1 busy \x1b[2J\x1b]0;owned\x07 try later".into()),
        ..Script::default()
    });
    let server = Server::start_setup(Setup {
        extra: format!(
            "[queue]\nretry_first = 3600\nretry_max = 7200\n\n[delivery.routes]\n\"remote.test\" = \"{}\"\n",
            sink.addr
        ),
        ..Setup::default()
    });
    let mut c = common::TlsClient::submission(&server, "alice@example.com");
    c.begin("alice@example.com", &["bob@remote.test"]);
    let reply = c.cmd(
        "Subject: \x1b[31mred\x1b[0m\r\n\r\nx\r\n.",
        "250 2.0.0 Ok: queued as ",
    );
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    let listed = || {
        let out = server.cli(&["queue", "list"], None);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        common::wait_until(|| listed().contains(": deferred")),
        "{}",
        listed()
    );
    let listing = listed();
    assert!(
        !listing.contains('\x1b') && !listing.contains('\x07'),
        "{listing:?}"
    );
    assert!(
        listing.contains("busy \\x1b[2J\\x1b]0;owned\\x07 try later"),
        "{listing}"
    );

    let out = server.cli(&["queue", "show", &id], None);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains('\x1b'), "{shown:?}");
    assert!(shown.contains("Subject: \\x1b[31mred\\x1b[0m"), "{shown}");
}
