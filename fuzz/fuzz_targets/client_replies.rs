//! The outbound SMTP client (`postern_proto::client`) fed arbitrary server bytes, in
//! two chunks, with a message ready to send: never panics, and emits nothing after
//! `Failed` or `Closed`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::client::{Client, ClientAction, ClientConfig, Envelope};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize % (data.len().max(1)));
    let mut client = Client::new(ClientConfig {
        helo_name: "fuzz.test".into(),
        starttls: true,
    });
    let envelope = Envelope {
        from: "a@b.test".into(),
        rcpts: vec!["c@d.test".into(), "e@f.test".into()],
        size: 5,
        eight_bit: false,
        smtputf8: false,
    };
    let mut finished = false;
    for chunk in [&data[..split], &data[split..]] {
        client.handle_bytes(chunk);
        while let Some(action) = client.poll_action() {
            assert!(!finished, "an action after the session ended: {action:?}");
            match action {
                ClientAction::Ready(_) => {
                    let _ = client.send(&envelope, b"hi\r\n");
                }
                ClientAction::StartTls => client.handle_tls_established(),
                ClientAction::Failed(_) | ClientAction::Closed => finished = true,
                ClientAction::Send(_) | ClientAction::Delivered(_) => {}
            }
        }
    }
    client.handle_eof();
});
