//! Password guessing over many connections at once: a client gets no more password
//! checks than `auth_failures_before_block`, however many connections it opens.

mod common;

use common::{PlainClient, Server, plain};

#[test]
fn parallel_guesses_get_no_more_checks_than_the_limit() {
    const ATTEMPTS: usize = 40;
    const LIMIT: usize = 5;
    let server = Server::start_with(&format!("[limits]\nauth_failures_before_block = {LIMIT}\n"));
    let addr = server.addr("submission");
    // Every connection is ready to send AUTH before any of them does.
    let ready = std::sync::Arc::new(std::sync::Barrier::new(ATTEMPTS));
    let guesses: Vec<_> = (0..ATTEMPTS)
        .map(|i| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                let mut c = PlainClient::connect(addr).starttls();
                ready.wait();
                let guess = format!("guess{i}");
                c.send_raw(
                    format!(
                        "AUTH PLAIN {}\r\n",
                        plain(None, "alice@example.com", &guess)
                    )
                    .as_bytes(),
                );
                c.read_reply()
            })
        })
        .collect();
    let replies: Vec<String> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    assert!(
        replies
            .iter()
            .all(|r| r.starts_with('5') || r.starts_with('4')),
        "{replies:?}"
    );
    let counted = |server: &Server| {
        let lines = server.log_lines();
        let checked = lines
            .iter()
            .filter(|l| l.contains("event=auth_failed"))
            .count();
        let turned_away = lines
            .iter()
            .filter(|l| l.contains("event=rejected") && l.contains("reason=auth_blocked"))
            .count();
        (checked, turned_away)
    };
    assert!(
        common::wait_until(|| {
            let (checked, turned_away) = counted(&server);
            checked + turned_away >= ATTEMPTS
        }),
        "every attempt is logged: {:?}",
        counted(&server)
    );
    let (checked, _) = counted(&server);
    assert_eq!(
        checked, LIMIT,
        "password checks for {ATTEMPTS} parallel guesses with a limit of {LIMIT}"
    );
}
