//! Interoperability with the clients customers really use, run as separate programs
//! against the real binary: PHPMailer (Debian's `libphp-phpmailer` under `php-cli`),
//! the `curl` command line tool and Python's `smtplib`.
//!
//! CI installs them with `apt-get install -y php-cli libphp-phpmailer curl python3`.
//! When one is missing the test says it was skipped and passes, except in CI (see
//! `common::in_ci`): then it fails, so CI never skips silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{PASSWORD, Server, available, field, find_program};

/// Where Debian's `libphp-phpmailer` installs PHPMailer (`dpkg -L libphp-phpmailer`).
const PHPMAILER_AUTOLOAD: &str = "/usr/share/php/libphp-phpmailer/autoload.php";

fn php_available(test: &str) -> bool {
    let autoload = Path::new(PHPMAILER_AUTOLOAD);
    available(
        test,
        &[
            ("php (php-cli)", find_program("php")),
            (
                PHPMAILER_AUTOLOAD,
                autoload.is_file().then(|| autoload.to_path_buf()),
            ),
        ],
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------
// PHPMailer

/// A web application's mail code, configured the way PHPMailer's documentation and
/// every WordPress SMTP plugin do it. Settings that differ between tests come from the
/// environment. The SMTP dialog goes to stderr, `ErrorInfo` to stdout.
const PHPMAILER_SCRIPT: &str = r#"<?php
require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;
use PHPMailer\PHPMailer\Exception;

$mail = new PHPMailer(true);
$mail->SMTPDebug = SMTP::DEBUG_SERVER;
$mail->Debugoutput = function ($str, $level) {
    fwrite(STDERR, $str);
};
try {
    $mail->isSMTP();
    $mail->Host = '127.0.0.1';
    $mail->Port = (int) getenv('SMTP_PORT');
    $mail->SMTPSecure = PHPMailer::ENCRYPTION_STARTTLS;
    $mail->SMTPAuth = getenv('SMTP_AUTH') === '1';
    if ($mail->SMTPAuth) {
        $mail->Username = 'alice@example.com';
        $mail->Password = getenv('SMTP_PASSWORD');
        $mail->AuthType = getenv('SMTP_AUTH_TYPE');
    }
    $mail->SMTPOptions = [
        'ssl' => [
            'verify_peer' => false,
            'verify_peer_name' => false,
            'allow_self_signed' => true,
        ],
    ];
    $mail->Timeout = 20;
    $mail->setFrom('alice@example.com', 'Alice');
    $mail->addAddress(getenv('MAIL_TO'));
    $mail->Subject = getenv('MAIL_SUBJECT');
    $mail->Body = getenv('MAIL_BODY');
    $mail->send();
    echo "sent\n";
    exit(0);
} catch (Exception $e) {
    echo 'ErrorInfo: ' . $mail->ErrorInfo . "\n";
    exit(1);
}
"#;

struct PhpMail<'a> {
    listener: &'a str,
    /// `None`: SMTPAuth off. Else the AuthType (`PLAIN`, `LOGIN`).
    auth_type: Option<&'a str>,
    password: &'a str,
    to: &'a str,
    subject: &'a str,
    body: &'a str,
}

impl PhpMail<'_> {
    fn send(&self, server: &Server) -> Output {
        let script = server.dir.path().join("send.php");
        std::fs::write(&script, PHPMAILER_SCRIPT).expect("write send.php");
        let mut cmd = Command::new("php");
        cmd.arg(&script)
            .env("SMTP_PORT", server.addr(self.listener).port().to_string())
            .env(
                "SMTP_AUTH",
                if self.auth_type.is_some() { "1" } else { "0" },
            )
            .env("SMTP_AUTH_TYPE", self.auth_type.unwrap_or(""))
            .env("SMTP_PASSWORD", self.password)
            .env("MAIL_TO", self.to)
            .env("MAIL_SUBJECT", self.subject)
            .env("MAIL_BODY", self.body);
        run(&mut cmd)
    }
}

fn phpmailer_submits_with(test: &str, mechanism: &str) {
    if !php_available(test) {
        return;
    }
    let server = Server::start();

    // Relay to another domain: accepted, attributed to the login.
    let out = PhpMail {
        listener: "submission",
        auth_type: Some(mechanism),
        password: PASSWORD,
        to: "someone@remote.test",
        subject: "PHPMailer relay",
        body: "Relayed by PHPMailer.",
    }
    .send(&server);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "PHPMailer failed: {stdout}\nSMTP dialog:\n{stderr}\nserver log:\n{}",
        server.log_text()
    );
    assert!(stdout.contains("sent"), "{stdout}");
    assert!(stderr.contains("CLIENT -> SERVER: STARTTLS"), "{stderr}");
    assert!(
        stderr.contains(&format!("CLIENT -> SERVER: AUTH {mechanism}")),
        "PHPMailer did not use AUTH {mechanism}:\n{stderr}"
    );
    let accepted = server
        .wait_for_log("event=accepted")
        .expect("accepted log line");
    assert_eq!(
        field(&accepted, "auth").as_deref(),
        Some("alice@example.com"),
        "{accepted}"
    );
    assert_eq!(field(&accepted, "client").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        field(&accepted, "from").as_deref(),
        Some("alice@example.com")
    );

    // A local recipient: lands in bob's Maildir.
    let subject = format!("PHPMailer test over AUTH {mechanism}");
    let body = "Hello Bob, this is PHPMailer speaking.";
    let out = PhpMail {
        listener: "submission",
        auth_type: Some(mechanism),
        password: PASSWORD,
        to: "bob@example.com",
        subject: &subject,
        body,
    }
    .send(&server);
    assert!(
        out.status.success(),
        "PHPMailer failed: {}\nSMTP dialog:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "server log:\n{}", server.log_text());
    let mail = &mails[0];
    assert!(mail.contains(&format!("\nSubject: {subject}\n")), "{mail}");
    assert!(mail.contains(body), "{mail}");
    assert!(mail.contains("X-Mailer: PHPMailer"), "{mail}");
    assert!(mail.contains("with ESMTPSA id "), "{mail}");
}

#[test]
fn phpmailer_starttls_auth_plain() {
    phpmailer_submits_with("phpmailer_starttls_auth_plain", "PLAIN");
}

#[test]
fn phpmailer_starttls_auth_login() {
    phpmailer_submits_with("phpmailer_starttls_auth_login", "LOGIN");
}

#[test]
fn phpmailer_with_a_wrong_password_fails() {
    if !php_available("phpmailer_with_a_wrong_password_fails") {
        return;
    }
    let server = Server::start();
    let out = PhpMail {
        listener: "submission",
        auth_type: Some("PLAIN"),
        password: "not-the-password",
        to: "bob@example.com",
        subject: "never sent",
        body: "never sent",
    }
    .send(&server);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "PHPMailer succeeded: {stdout}");
    assert!(
        stdout.starts_with("ErrorInfo: ") && stdout.to_lowercase().contains("authenticate"),
        "ErrorInfo does not mention authentication: {stdout}\nSMTP dialog:\n{stderr}"
    );
    assert!(stderr.contains("SERVER -> CLIENT: 535"), "{stderr}");
    let line = server
        .wait_for_log("event=auth_failed")
        .expect("auth_failed logged");
    assert_eq!(field(&line, "user").as_deref(), Some("alice@example.com"));
    assert!(server.delivered("bob@example.com").is_empty());
    assert!(server.queued().is_empty());
}

#[test]
fn phpmailer_without_auth_cannot_relay_through_mx() {
    if !php_available("phpmailer_without_auth_cannot_relay_through_mx") {
        return;
    }
    let server = Server::start();
    let out = PhpMail {
        listener: "mx",
        auth_type: None,
        password: "",
        to: "someone@remote.test",
        subject: "open relay?",
        body: "This must not be relayed.",
    }
    .send(&server);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "PHPMailer succeeded: {stdout}");
    assert!(
        stdout.starts_with("ErrorInfo: ") && stdout.contains("Relaying denied"),
        "ErrorInfo does not show the server's refusal: {stdout}\nSMTP dialog:\n{stderr}"
    );
    assert!(stderr.contains("SERVER -> CLIENT: 550 5.7.1"), "{stderr}");
    let line = server
        .wait_for_log("event=rejected")
        .expect("rejected logged");
    assert_eq!(field(&line, "reason").as_deref(), Some("relay_denied"));
    assert!(server.queued().is_empty());
}

// ---------------------------------------------------------------------------------
// curl

fn curl_available(test: &str) -> bool {
    available(test, &[("curl", find_program("curl"))])
}

fn write_message(server: &Server, to: &str, subject: &str, body: &str) -> PathBuf {
    let path = server.dir.path().join("message.eml");
    let message = format!(
        "From: Alice <alice@example.com>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    );
    std::fs::write(&path, message).expect("write message");
    path
}

#[test]
fn curl_submits_with_starttls_and_auth() {
    if !curl_available("curl_submits_with_starttls_and_auth") {
        return;
    }
    let server = Server::start();
    let file = write_message(
        &server,
        "bob@example.com",
        "curl test",
        "Hello Bob, this is curl.",
    );
    let out = run(Command::new("curl")
        .arg("--url")
        .arg(format!("smtp://{}", server.addr("submission")))
        .args(["--ssl-reqd", "-k", "-sS", "--max-time", "30"])
        .args(["--user", &format!("alice@example.com:{PASSWORD}")])
        .args(["--mail-from", "alice@example.com"])
        .args(["--mail-rcpt", "bob@example.com"])
        .arg("--upload-file")
        .arg(&file));
    assert!(
        out.status.success(),
        "curl failed ({}): {}\nserver log:\n{}",
        out.status,
        text(&out.stderr),
        server.log_text()
    );
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "server log:\n{}", server.log_text());
    let mail = &mails[0];
    assert!(mail.contains("\nSubject: curl test\n"), "{mail}");
    assert!(mail.contains("Hello Bob, this is curl."), "{mail}");
    assert!(mail.contains("with ESMTPSA id "), "{mail}");
    let accepted = server.wait_for_log("event=accepted").expect("accepted");
    assert_eq!(
        field(&accepted, "auth").as_deref(),
        Some("alice@example.com")
    );
}

#[test]
fn curl_without_auth_cannot_relay_through_mx() {
    if !curl_available("curl_without_auth_cannot_relay_through_mx") {
        return;
    }
    let server = Server::start();
    let file = write_message(&server, "someone@remote.test", "relay?", "No.");
    let out = run(Command::new("curl")
        .arg("--url")
        .arg(format!("smtp://{}", server.addr("mx")))
        .args(["--ssl-reqd", "-k", "-sS", "--max-time", "30"])
        .args(["--mail-from", "alice@example.com"])
        .args(["--mail-rcpt", "someone@remote.test"])
        .arg("--upload-file")
        .arg(&file));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "curl succeeded: {stderr}");
    assert!(
        stderr.contains("550"),
        "curl's error lacks the 550: {stderr}"
    );
    let line = server
        .wait_for_log("event=rejected")
        .expect("rejected logged");
    assert_eq!(field(&line, "reason").as_deref(), Some("relay_denied"));
    assert!(server.queued().is_empty());
}

// ---------------------------------------------------------------------------------
// Python smtplib

/// argv: port, mode (`starttls` | `ssl`), recipient, subject, body.
const SMTPLIB_SCRIPT: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage

port, mode, rcpt, subject, body = sys.argv[1:6]
context = ssl._create_unverified_context()  # the test server's certificate is self-signed

msg = EmailMessage()
msg["From"] = "Alice <alice@example.com>"
msg["To"] = rcpt
msg["Subject"] = subject
msg.set_content(body)

if mode == "starttls":
    smtp = smtplib.SMTP("127.0.0.1", int(port), timeout=20)
    smtp.starttls(context=context)
else:
    smtp = smtplib.SMTP_SSL("127.0.0.1", int(port), timeout=20, context=context)
smtp.login("alice@example.com", "secret")
# A str, as most scripts pass it: smtplib turns its bare LFs into CRLF (bytes it
# sends unchanged, and postern refuses bare LF in DATA).
refused = smtp.sendmail("alice@example.com", [rcpt], msg.as_string())
smtp.quit()
print("sent", refused)
"#;

fn smtplib_delivers(test: &str, listener: &str, mode: &str) {
    if !available(test, &[("python3", find_program("python3"))]) {
        return;
    }
    let server = Server::start();
    let subject = format!("smtplib over {mode}");
    let body = "Hello Bob, this is Python.";
    let out = run(Command::new("python3")
        .args(["-c", SMTPLIB_SCRIPT])
        .arg(server.addr(listener).port().to_string())
        .args([mode, "bob@example.com", &subject, body]));
    assert!(
        out.status.success(),
        "smtplib failed: {}{}\nserver log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        server.log_text()
    );
    assert_eq!(text(&out.stdout).trim(), "sent {}");
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "server log:\n{}", server.log_text());
    let mail = &mails[0];
    assert!(mail.contains(&format!("\nSubject: {subject}\n")), "{mail}");
    assert!(mail.contains(body), "{mail}");
    assert!(mail.contains("with ESMTPSA id "), "{mail}");
}

#[test]
fn python_smtplib_starttls_on_submission() {
    smtplib_delivers(
        "python_smtplib_starttls_on_submission",
        "submission",
        "starttls",
    );
}

#[test]
fn python_smtplib_ssl_on_submissions() {
    smtplib_delivers("python_smtplib_ssl_on_submissions", "submissions", "ssl");
}
