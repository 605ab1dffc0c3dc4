//! Who may send as whom: a login's `From:` header on the submission listeners, the
//! `[auth] sender_scope` setting, and `sendmail -f` for local users.

mod common;

use common::{Server, TlsClient, field, test_user};

fn logged_in(server: &Server) -> TlsClient {
    TlsClient::submission(server, "alice@example.com")
}

#[test]
fn a_login_may_not_put_another_address_in_from() {
    let server = Server::start();
    let mut c = logged_in(&server);
    c.begin("alice@example.com", &["bob@example.com"]);
    let reply = c.cmd(
        "From: The Bank <security@bank.example>\r\nSubject: verify\r\n\r\nx\r\n.",
        "550 5.7.1",
    );
    assert!(reply.contains("security@bank.example"), "{reply}");
    assert!(reply.contains("sender_scope"), "{reply}");
    let line = server.wait_for_log("reason=author_mismatch").unwrap();
    assert_eq!(field(&line, "auth").as_deref(), Some("alice@example.com"));
    // Its own address in From: is fine, in the same session.
    c.transaction(
        "alice@example.com",
        &["bob@example.com"],
        "From: Alice <alice@example.com>\r\nSubject: hi\r\n\r\nx\r\n",
        "250",
    );
    assert_eq!(server.wait_for_delivery("bob@example.com", 1).len(), 1);
}

#[test]
fn with_the_domain_scope_a_login_sends_as_any_address_of_its_domain() {
    let server = Server::start();
    let mut c = logged_in(&server);
    c.cmd("MAIL FROM:<wordpress@example.com>", "553 5.7.1");
    drop(c);

    let config = std::fs::read_to_string(server.config_path()).unwrap();
    std::fs::write(
        server.config_path(),
        config.replace("[auth]\n", "[auth]\nsender_scope = \"domain\"\n"),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for_log("event=reloaded").unwrap();
    let mut c = logged_in(&server);
    c.transaction(
        "wordpress@example.com",
        &["bob@example.com"],
        "From: WordPress <wordpress@example.com>\r\nSubject: new comment\r\n\r\nx\r\n",
        "250",
    );
    c.cmd("MAIL FROM:<someone@other.example>", "553 5.7.1");
}

/// `sendmail -f FROM alice@example.com` as the test user on a server with `extra`
/// config; returns the server and the delivered message.
fn sendmail_f_as_test_user(extra: &str, from: &str) -> Option<(Server, String)> {
    test_user("posterntest")?;
    let server = Server::start_with(extra);
    let out = server.sendmail(
        Some("posterntest"),
        &["-f", from, "alice@example.com"],
        b"Subject: from a script\n\nx\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mail = server.wait_for_delivery("alice@example.com", 1).remove(0);
    Some((server, mail))
}

#[test]
fn sendmail_f_with_an_address_the_user_does_not_own_is_replaced_by_its_own() {
    let Some((server, mail)) = sendmail_f_as_test_user("", "bob@example.com") else {
        return;
    };
    assert!(
        mail.starts_with("Return-Path: <posterntest@mail.example.com>\n"),
        "{mail}"
    );
    let line = server.wait_for_log("event=sender_rewritten").unwrap();
    assert_eq!(
        field(&line, "requested").as_deref(),
        Some("bob@example.com")
    );
}

#[test]
fn sendmail_f_with_a_granted_domain_is_kept() {
    let grant = "\n[local_submission.senders]\n\"posterntest\" = [\"example.com\"]\n";
    let Some((server, mail)) = sendmail_f_as_test_user(grant, "news@example.com") else {
        return;
    };
    assert!(
        mail.starts_with("Return-Path: <news@example.com>\n"),
        "{mail}"
    );
    assert!(!server.log_text().contains("event=sender_rewritten"));
}
