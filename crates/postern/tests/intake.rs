//! The one intake both doors end in: a rule added there holds for mail from the MX
//! listener, from a logged-in submission client and from local `sendmail` alike.

mod common;

use common::{PlainClient, Server, TlsClient};

/// Claims our own host name (`mail.example.com` in the test config): forged.
const FORGED: &str = "Authentication-Results: mail.example.com; spf=pass smtp.mailfrom=bank.test";
/// Another host's verdict: not ours to remove.
const FOREIGN: &str = "Authentication-Results: other.example; dkim=pass header.d=bank.test";

fn message(subject: &str) -> String {
    format!(
        "{FORGED}\r\n{FOREIGN}\r\nFrom: <alice@example.com>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    )
}

/// Verification is not the subject here (and would look up DNS): off.
fn server() -> Server {
    Server::start_with("[inbound]\nverify = false\n")
}

fn assert_forged_removed(delivered: &str, door: &str) {
    assert!(
        !delivered.contains("Authentication-Results: mail.example.com"),
        "{door}: a verdict claiming our host name must not reach the mailbox:\n{delivered}"
    );
    assert!(
        delivered.contains("Authentication-Results: other.example"),
        "{door}: another host's verdict is kept:\n{delivered}"
    );
}

fn delivered_with_subject(server: &Server, count: usize, subject: &str) -> String {
    server
        .wait_for_delivery("bob@example.com", count)
        .into_iter()
        .find(|m| m.contains(&format!("Subject: {subject}")))
        .unwrap_or_else(|| panic!("no message with subject {subject}"))
}

#[test]
fn forged_authentication_results_are_removed_on_the_mx_door() {
    let server = server();
    PlainClient::mx(&server).transaction(
        "someone@bank.test",
        &["bob@example.com"],
        &message("mx"),
        "250",
    );
    assert_forged_removed(&delivered_with_subject(&server, 1, "mx"), "mx");
}

#[test]
fn forged_authentication_results_are_removed_on_the_submission_door() {
    let server = server();
    TlsClient::submission(&server, "alice@example.com").transaction(
        "alice@example.com",
        &["bob@example.com"],
        &message("submission"),
        "250",
    );
    let delivered = delivered_with_subject(&server, 1, "submission");
    assert_forged_removed(&delivered, "submission");
}

#[test]
fn forged_authentication_results_are_removed_on_the_local_door() {
    let server = server();
    let out = server.sendmail(None, &["-t", "-i"], message("local").as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delivered = delivered_with_subject(&server, 1, "local");
    assert_forged_removed(&delivered, "local");
}
