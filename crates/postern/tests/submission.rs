//! Authenticated submission with a real client library (lettre), as PHPMailer or Rails
//! do it: STARTTLS on `submission`, implicit TLS on `submissions`, AUTH PLAIN and LOGIN.

mod common;

use common::sink::{Script, Sink};
use common::{PASSWORD, Server, field};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

fn tls_parameters() -> TlsParameters {
    TlsParameters::builder("mail.example.com".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .expect("tls parameters")
}

fn transport(server: &Server, listener: &str, tls: Tls, mechanism: Mechanism) -> SmtpTransport {
    let addr = server.addr(listener);
    SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(tls)
        .credentials(Credentials::new(
            "alice@example.com".into(),
            PASSWORD.into(),
        ))
        .authentication(vec![mechanism])
        .build()
}

fn message(to: &str, subject: &str) -> Message {
    Message::builder()
        .from("Alice <alice@example.com>".parse::<Mailbox>().unwrap())
        .to(to.parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(String::from("Hello from the test suite.\n"))
        .unwrap()
}

#[test]
fn starttls_and_auth_plain_relay_to_another_domain_is_relayed() {
    let sink = Sink::start(Script::default());
    let server = Server::start_with(&format!(
        "[delivery.routes]\n\"remote.test\" = \"{}\"\n",
        sink.addr
    ));
    let mailer = transport(
        &server,
        "submission",
        Tls::Required(tls_parameters()),
        Mechanism::Plain,
    );
    let response = mailer
        .send(&message("someone@remote.test", "relay"))
        .expect("send");
    assert_eq!(response.code().to_string(), "250");

    let accepted = server
        .wait_for_log("event=accepted")
        .expect("accepted log line");
    assert_eq!(
        field(&accepted, "auth").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(field(&accepted, "client").as_deref(), Some("127.0.0.1"));
    assert_eq!(field(&accepted, "nrcpt").as_deref(), Some("1"));
    let queue_id = field(&accepted, "queue_id").unwrap();
    let relayed = sink.wait_for(1);
    assert_eq!(relayed.len(), 1, "log:\n{}", server.log_text());
    assert_eq!(relayed[0].rcpts, ["someone@remote.test"]);
    assert!(
        relayed[0]
            .text()
            .contains(&format!("with ESMTPSA id {queue_id}"))
    );
}

#[test]
fn auth_login_delivers_to_a_local_mailbox_with_submission_headers() {
    let server = Server::start();
    let mailer = transport(
        &server,
        "submission",
        Tls::Required(tls_parameters()),
        Mechanism::Login,
    );
    mailer
        .send(&message("bob@example.com", "login"))
        .expect("send");
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(
        mail.starts_with(
            "Return-Path: <alice@example.com>\nDelivered-To: bob@example.com\nReceived: from "
        ),
        "{mail}"
    );
    assert!(mail.contains("with ESMTPSA id "), "{mail}");
    assert!(mail.contains("Subject: login"));
    assert!(mail.contains("Hello from the test suite."));
}

#[test]
fn implicit_tls_on_submissions() {
    let server = Server::start();
    let mailer = transport(
        &server,
        "submissions",
        Tls::Wrapper(tls_parameters()),
        Mechanism::Plain,
    );
    mailer
        .send(&message("bob@example.com", "implicit"))
        .expect("send");
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("Subject: implicit"));
}

#[test]
fn wrong_password_is_refused_with_535() {
    let server = Server::start();
    let addr = server.addr("submission");
    let mailer = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Required(tls_parameters()))
        .credentials(Credentials::new("alice@example.com".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = mailer.send(&message("bob@example.com", "x")).unwrap_err();
    assert!(err.to_string().contains("535"), "{err}");
    let line = server
        .wait_for_log("event=auth_failed")
        .expect("auth_failed logged");
    assert_eq!(field(&line, "user").as_deref(), Some("alice@example.com"));
    assert_eq!(field(&line, "mechanism").as_deref(), Some("PLAIN"));
    assert_eq!(field(&line, "client").as_deref(), Some("127.0.0.1"));
    assert!(
        !server.log_text().contains("wrong"),
        "the password must never be logged"
    );
}

#[test]
fn missing_date_and_message_id_are_added_on_submission_but_kept_when_present() {
    let server = Server::start();
    let mut c = common::TlsClient::submission(&server, "alice@example.com");
    c.begin("alice@example.com", &["bob@example.com"]);
    c.cmd("Subject: bare\r\n\r\nbody\r\n.", "250");
    c.begin("alice@example.com", &["bob@example.com"]);
    c.cmd("Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <mine@example.com>\r\nSubject: full\r\n\r\nbody\r\n.", "250");
    let mails = server.wait_for_delivery("bob@example.com", 2);
    let bare = mails.iter().find(|m| m.contains("Subject: bare")).unwrap();
    assert!(bare.contains("\nDate: "), "{bare}");
    assert!(bare.contains("\nMessage-ID: <"), "{bare}");
    let full = mails.iter().find(|m| m.contains("Subject: full")).unwrap();
    assert_eq!(full.matches("Date: ").count(), 1, "{full}");
    assert_eq!(full.matches("Message-ID: ").count(), 1, "{full}");
}
