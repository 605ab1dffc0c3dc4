//! DKIM: `postern dkim keygen|show` through the real binary, and the signatures of
//! `mailauth::sign::Signer` checked by an independent implementation, Python's dkimpy
//! (`pip install dkimpy pynacl`), whose DNS lookups are answered with the records that
//! `postern dkim show` printed, as an administrator would publish them.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, available, find_program};
use postern::config::Config;
use postern::mailauth::sign::Signer;

/// A configuration without keys, in its own directory; keys are added by `keygen`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let keys = Keys {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let d = keys.dir.path().display();
        let config = format!(
            r#"hostname = "mail.example.com"
data_dir = "{d}/data"
local_domains = ["example.com"]
user = "root"

[[listener]]
name = "submission"
addr = "127.0.0.1:0"
role = "submission"

[auth]
passwd_file = "{d}/passwd"

[delivery]
maildir = "{d}/mail/%d/%n/Maildir"
"#
        );
        std::fs::write(keys.config(), config).expect("write config");
        keys
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("postern.toml")
    }

    fn postern(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env_remove("POSTERN_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run postern")
    }

    /// `postern dkim keygen`, which must succeed; the printed `[[dkim]]` table is added
    /// to the configuration. Returns what it printed.
    fn keygen(&self, domain: &str, selector: &str, algorithm: &str) -> String {
        let out = self.postern(&[
            "dkim",
            "keygen",
            "--domain",
            domain,
            "--selector",
            selector,
            "--algorithm",
            algorithm,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "keygen failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = &stdout[stdout.find("[[dkim]]").expect("a [[dkim]] table")..];
        let mut config = std::fs::read_to_string(self.config()).expect("read config");
        config.push('\n');
        config.push_str(table);
        std::fs::write(self.config(), config).expect("write config");
        stdout
    }

    /// The records `postern dkim show` prints, as a resolver would answer: owner name
    /// (with the final dot) → the TXT strings joined.
    fn show(&self) -> BTreeMap<String, String> {
        let out = self.postern(&["dkim", "show"]);
        assert!(
            out.status.success(),
            "show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        record_lines(&String::from_utf8_lossy(&out.stdout))
            .map(parse_record)
            .collect()
    }

    fn signer(&self) -> Signer {
        let config = Config::load(&Config::locate(Some(&self.config()))).expect("config");
        Signer::load(&config).expect("load the keys")
    }
}

fn record_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| l.contains(" IN TXT "))
}

/// `NAME. IN TXT "a" "b"` → (`NAME.`, `ab`), each string at most 255 bytes.
fn parse_record(line: &str) -> (String, String) {
    let (name, rest) = line.split_once(" IN TXT ").expect("a TXT record");
    let mut value = String::new();
    let mut rest = rest.trim();
    while let Some(after) = rest.strip_prefix('"') {
        let end = after.find('"').expect("a closing quote");
        assert!(end <= 255, "a TXT string longer than 255 bytes: {line}");
        value.push_str(&after[..end]);
        rest = after[end + 1..].trim_start();
    }
    assert!(rest.is_empty(), "unparsed: {rest:?} in {line}");
    (name.to_string(), value)
}

fn dkimpy_available(test: &str) -> bool {
    let python = find_program("python3");
    let dkimpy = python.as_ref().and_then(|p| {
        Command::new(p)
            .args(["-c", "import dkim, nacl"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then(|| PathBuf::from("dkim"))
    });
    available(
        test,
        &[
            ("python3", python),
            ("dkimpy and PyNaCl (pip install dkimpy pynacl)", dkimpy),
        ],
    )
}

/// dkimpy's verdict on every DKIM-Signature of `message` (`DKIM.verify(idx=i)`; the first
/// also through `dkim.verify`), and the DNS names it asked for.
const VERIFY: &str = r#"
import json, logging, sys
import dkim

records = json.loads(sys.argv[1])
queried = []

def dnsfunc(name, timeout=5):
    name = name.decode()
    queried.append(name)
    value = records.get(name)
    return None if value is None else value.encode()

logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="dkimpy: %(message)s")
logger = logging.getLogger("dkimpy")
message = sys.stdin.buffer.read()
headers, _ = dkim.rfc822_parse(message)
count = sum(1 for name, _ in headers if name.lower() == b"dkim-signature")

def verify(i):
    try:
        return dkim.DKIM(message, logger=logger).verify(idx=i, dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        logger.error("signature %d: %s", i, e)
        return False

verdicts = [verify(i) for i in range(count)]
if count and dkim.verify(message, logger=logger, dnsfunc=dnsfunc) != verdicts[0]:
    sys.exit("dkim.verify and DKIM.verify(idx=0) disagree")
print(json.dumps({"verdicts": verdicts, "queried": sorted(set(queried))}))
"#;

struct Verdict {
    /// One per signature, in the order of the header fields.
    passed: Vec<bool>,
    queried: Vec<String>,
}

fn dkimpy(message: &[u8], records: &BTreeMap<String, String>) -> Verdict {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args(["-c", VERIFY])
        .arg(serde_json::to_string(records).expect("json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write the message");
    let out = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dkimpy failed: {stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dkimpy's json");
    let passed: Vec<bool> = answer["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .map(|v| v.as_bool().expect("a verdict"))
        .collect();
    if passed.iter().any(|p| !p) {
        // What dkimpy logged, for the failures that were not expected.
        eprintln!("{stderr}");
    }
    let queried = answer["queried"]
        .as_array()
        .expect("queried")
        .iter()
        .map(|v| v.as_str().expect("a name").to_string())
        .collect();
    Verdict { passed, queried }
}

/// A message with what relaxed canonicalization has to cope with: folded header
/// fields, runs of white space, odd capitalization of names, trailing white space and
/// empty lines at the end of the body; and headers that are not signed.
const MESSAGE: &str = "Received: by mail.example.com (postern, from userid 1000); Mon, 1 Jun 2026 10:00:01 +0000\r\n\
From: Alice Example <alice@example.com>\r\n\
To: Bob <bob@remote.test>,\r\n\tCarol <carol@remote.test>\r\n\
cc: dave@remote.test\r\n\
Subject:   A  folded\r\n   subject line \r\n\
Date: Mon, 1 Jun 2026 10:00:00 +0000\r\n\
Message-ID: <20260601100000.1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
X-PHP-Originating-Script: 1000:mail.php\r\n\
\r\n\
Hello Bob,   \r\n\
\r\n\
the  report is attached.\t\r\n\
Grüße\r\n\
\r\n\
\r\n";

fn signed(signer: &Signer, message: &str) -> String {
    let fields = signer
        .sign(message.as_bytes())
        .expect("signing")
        .expect("a key applies");
    assert!(fields.starts_with("DKIM-Signature: "), "{fields}");
    assert!(fields.ends_with("\r\n"), "{fields:?}");
    format!("{fields}{message}")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn keygen_writes_a_private_key_file_and_never_overwrites_it() {
    let keys = Keys::new();
    for (selector, algorithm) in [("s1", "rsa2048"), ("ed1", "ed25519")] {
        let printed = keys.keygen("example.com", selector, algorithm);
        let path = keys
            .dir
            .path()
            .join(format!("data/dkim/example.com.{selector}.key"));
        assert!(printed.contains(&path.display().to_string()), "{printed}");
        assert!(
            printed.contains("Publish this DNS TXT record:"),
            "{printed}"
        );
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&keys.dir.path().join("data/dkim")), 0o700);
        let key = std::fs::read(&path).expect("the key");
        assert!(key.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));

        let again = keys.postern(&[
            "dkim",
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            selector,
            "--algorithm",
            algorithm,
        ]);
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert_eq!(again.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("already exists"), "{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(again.stdout.is_empty());
        assert_eq!(std::fs::read(&path).expect("the key"), key, "overwritten");
    }
}

#[test]
fn keygen_refuses_names_that_are_not_host_names() {
    let keys = Keys::new();
    for (domain, selector) in [("example.com", "../../etc/x"), ("a/b", "s1")] {
        let out = keys.postern(&["dkim", "keygen", "--domain", domain, "--selector", selector]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not usable"), "{stderr}");
    }
    assert!(!keys.dir.path().join("data/dkim").exists());
}

#[test]
fn show_prints_the_records_that_keygen_printed() {
    let keys = Keys::new();
    let mut printed = Vec::new();
    for (selector, algorithm) in [("s1", "rsa2048"), ("ed1", "ed25519")] {
        let out = keys.keygen("example.com", selector, algorithm);
        let lines: Vec<String> = record_lines(&out).map(str::to_string).collect();
        assert_eq!(lines.len(), 1, "{out}");
        printed.extend(lines);
    }
    let out = keys.postern(&["dkim", "show"]);
    assert!(out.status.success());
    let shown: Vec<String> = record_lines(&String::from_utf8_lossy(&out.stdout))
        .map(str::to_string)
        .collect();
    assert_eq!(shown, printed);

    let records = keys.show();
    let rsa = &records["s1._domainkey.example.com."];
    assert!(rsa.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"));
    // An RSA-2048 value does not fit in one string of 255 bytes.
    assert_eq!(printed[0].matches("\" \"").count(), 1, "{}", printed[0]);
    let ed = &records["ed1._domainkey.example.com."];
    assert!(ed.starts_with("v=DKIM1; k=ed25519; p="), "{ed}");
    assert_eq!(ed.len(), "v=DKIM1; k=ed25519; p=".len() + 44);
}

#[test]
fn show_names_a_key_it_cannot_use_and_says_what_to_do() {
    let keys = Keys::new();
    keys.keygen("example.com", "s1", "ed25519");
    let missing = keys.dir.path().join("elsewhere/example.org.s1.key");
    let mut config = std::fs::read_to_string(keys.config()).expect("config");
    config.push_str(&format!(
        "\n[[dkim]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = \"{}\"\n",
        missing.display()
    ));
    std::fs::write(keys.config(), config).expect("config");
    let out = keys.postern(&["dkim", "show"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        stderr.contains("postern dkim keygen --domain example.org"),
        "{stderr}"
    );
    // The keys that work are still shown.
    assert_eq!(
        record_lines(&String::from_utf8_lossy(&out.stdout)).count(),
        1
    );
}

fn verifies_with_dkimpy(test: &str, algorithm: &str) {
    if !dkimpy_available(test) {
        return;
    }
    let keys = Keys::new();
    keys.keygen("example.com", "s1", algorithm);
    let message = signed(&keys.signer(), MESSAGE);
    let verdict = dkimpy(message.as_bytes(), &keys.show());
    assert_eq!(verdict.passed, [true], "{message}");
    assert_eq!(verdict.queried, ["s1._domainkey.example.com."]);
    // The header fields present that are worth signing, and From once more.
    let mut h = signed_header_names(&message);
    h.sort();
    assert_eq!(
        h,
        [
            "Content-Transfer-Encoding",
            "Content-Type",
            "Date",
            "From",
            "From",
            "MIME-Version",
            "Message-ID",
            "Subject",
            "To",
            "cc",
        ]
    );
}

/// The h= tag of the first DKIM-Signature.
fn signed_header_names(message: &str) -> Vec<String> {
    let field = message.split("\r\n").take_while(|l| !l.is_empty());
    let mut unfolded = String::new();
    for line in field.skip_while(|l| !l.starts_with("DKIM-Signature:")) {
        if !unfolded.is_empty() && !line.starts_with([' ', '\t']) {
            break;
        }
        unfolded.push_str(line.trim());
    }
    let h = unfolded
        .split(';')
        .find_map(|tag| tag.trim().strip_prefix("h="))
        .expect("an h= tag");
    h.split(':').map(str::to_string).collect()
}

#[test]
fn an_rsa_signature_verifies_with_dkimpy() {
    verifies_with_dkimpy("an_rsa_signature_verifies_with_dkimpy", "rsa2048");
}

#[test]
fn an_ed25519_signature_verifies_with_dkimpy() {
    verifies_with_dkimpy("an_ed25519_signature_verifies_with_dkimpy", "ed25519");
}

#[test]
fn both_algorithms_sign_at_once_and_both_verify() {
    if !dkimpy_available("both_algorithms_sign_at_once_and_both_verify") {
        return;
    }
    let keys = Keys::new();
    keys.keygen("example.com", "rsa", "rsa2048");
    keys.keygen("example.com", "ed", "ed25519");
    let message = signed(&keys.signer(), MESSAGE);
    assert_eq!(message.matches("DKIM-Signature: ").count(), 2);
    let verdict = dkimpy(message.as_bytes(), &keys.show());
    assert_eq!(verdict.passed, [true, true], "{message}");
    assert_eq!(
        verdict.queried,
        ["ed._domainkey.example.com.", "rsa._domainkey.example.com."]
    );
}

#[test]
fn tampering_after_signing_fails_verification() {
    if !dkimpy_available("tampering_after_signing_fails_verification") {
        return;
    }
    let keys = Keys::new();
    keys.keygen("example.com", "rsa", "rsa2048");
    keys.keygen("example.com", "ed", "ed25519");
    let records = keys.show();
    let message = signed(&keys.signer(), MESSAGE);
    // The control: what relaxed canonicalization and the header list allow.
    for allowed in [
        message.clone(),
        message.replace("X-PHP-Originating-Script: 1000:mail.php\r\n", ""),
        message.replace("\r\n\r\nHello", "\r\nX-Spam-Score: 0\r\n\r\nHello"),
        message.replace("Subject:   A  folded", "Subject: A folded"),
        message.replace("the  report", "the report"),
        message.replace("Grüße\r\n\r\n\r\n", "Grüße\r\n"),
        // Only header fields present are signed (From excepted): a Reply-To may be
        // added. Receivers show it; DMARC does not look at it.
        message.replace("To: Bob", "Reply-To: someone@remote.test\r\nTo: Bob"),
    ] {
        let verdict = dkimpy(allowed.as_bytes(), &records);
        assert_eq!(verdict.passed, [true, true], "{allowed}");
    }
    for tampered in [
        // The body.
        message.replace("the  report", "the invoice"),
        message.replace("Grüße\r\n", "Grüße\r\nPay now: https://evil.test/\r\n"),
        // Signed header fields.
        message.replace("subject line", "subject line!"),
        message.replace(
            "From: Alice Example <alice@example.com>",
            "From: Alice <alice@example.com>",
        ),
        message.replace("cc: dave@remote.test", "cc: mallory@remote.test"),
        message.replace("charset=utf-8", "charset=iso-8859-1"),
        // A second From, below the signed one (verifiers take the lowest instance first)
        // or above it. (dkimpy looks for one From more than h= lists, whatever the
        // signer did; that From is over-signed is checked on h=, below.)
        message.replace("\r\n\r\nHello", "\r\nFrom: mallory@evil.test\r\n\r\nHello"),
        message.replace("Received: ", "From: mallory@evil.test\r\nReceived: "),
        // Another To, below the signed one.
        message.replace("cc: dave", "To: mallory@evil.test\r\ncc: dave"),
    ] {
        let verdict = dkimpy(tampered.as_bytes(), &records);
        assert_eq!(verdict.passed, [false, false], "{tampered}");
    }
}

#[test]
fn a_subdomain_is_signed_with_the_parent_domain_key() {
    let keys = Keys::new();
    keys.keygen("example.com", "s1", "ed25519");
    let message = MESSAGE.replace("alice@example.com", "alice@news.example.com");
    let message = signed(&keys.signer(), &message);
    assert!(message.contains(" d=example.com;"), "{message}");
    if !dkimpy_available("a_subdomain_is_signed_with_the_parent_domain_key") {
        return;
    }
    let verdict = dkimpy(message.as_bytes(), &keys.show());
    assert_eq!(verdict.passed, [true], "{message}");
    assert_eq!(verdict.queried, ["s1._domainkey.example.com."]);
}

#[test]
fn a_from_domain_without_a_key_is_not_signed() {
    let keys = Keys::new();
    keys.keygen("example.com", "s1", "ed25519");
    keys.keygen("news.example.com", "s1", "ed25519");
    let signer = keys.signer();
    for from in ["alice@example.org", "alice@notexample.com", "alice@com"] {
        let message = MESSAGE.replace("alice@example.com", from);
        assert_eq!(signer.sign(message.as_bytes()).expect("signing"), None);
    }
    // The most specific domain with a key signs.
    let message = MESSAGE.replace("alice@example.com", "alice@a.news.example.com");
    let fields = signer.sign(message.as_bytes()).expect("signing");
    assert!(fields.expect("signed").contains(" d=news.example.com;"));
}

/// The whole path: a key made with the CLI, loaded by a SIGHUP reload, a message from an
/// authenticated login relayed to a sink, verified by dkimpy; a From: at another domain
/// is not signed with this key.
#[test]
fn mail_relayed_for_a_login_is_signed_and_verifies_with_dkimpy() {
    if !dkimpy_available("mail_relayed_for_a_login_is_signed_and_verifies_with_dkimpy") {
        return;
    }
    let sink = common::sink::Sink::start(common::sink::Script::default());
    let server = common::Server::start_with(&format!(
        "[delivery.routes]\n\"remote.test\" = \"{}\"\n",
        sink.addr
    ));
    server.add_dkim_key("example.com");
    server.signal("HUP");
    server.wait_for_log("event=reloaded").expect("reloaded");
    let shown = server.cli(&["dkim", "show"], None);
    let records: BTreeMap<String, String> = record_lines(&String::from_utf8_lossy(&shown.stdout))
        .map(parse_record)
        .collect();

    // On submission a foreign From: is refused outright; a login relaying through the
    // mx listener may send one, and it then goes out unsigned.
    for (listener, from, subject, expected) in [
        ("submission", "alice@example.com", "signed", "250"),
        ("submission", "alice@elsewhere.test", "refused", "550 5.7.1"),
        ("mx", "alice@elsewhere.test", "foreign", "250"),
    ] {
        let mut c = common::PlainClient::connect(server.addr(listener)).starttls();
        c.login("alice@example.com", common::PASSWORD);
        c.begin("alice@example.com", &["bob@remote.test"]);
        c.cmd(
            &format!(
                "From: <{from}>\r\nTo: <bob@remote.test>\r\nSubject: {subject}\r\n\r\nHello.\r\n."
            ),
            expected,
        );
    }
    let got = sink.wait_for(2);
    let signed = got
        .iter()
        .find(|m| m.text().contains("Subject: signed"))
        .expect("the signed message");
    assert!(
        signed.text().starts_with("DKIM-Signature: "),
        "{}",
        signed.text()
    );
    let verdict = dkimpy(&signed.data, &records);
    assert_eq!(
        verdict.passed,
        [true],
        "dkimpy verifies what the server sent"
    );
    let foreign = got
        .iter()
        .find(|m| m.text().contains("Subject: foreign"))
        .expect("the other message");
    assert!(
        !foreign.text().contains("DKIM-Signature"),
        "a login signs only for its own domain"
    );
    server.wait_for_log("event=dkim_skipped").unwrap();
}

/// Intake's rule for local mail: a Unix user's mail is signed only for the domains of
/// the mailboxes whose account carries its uid; anything else goes out unsigned.
#[test]
fn local_mail_is_signed_only_for_domains_the_uid_owns() {
    let Some(uid) = common::test_user("posterntest") else {
        return;
    };
    let server = common::Server::start();
    server.add_dkim_key("example.com");
    server.signal("HUP");
    server.wait_for_log("event=reloaded").expect("reloaded");

    let send = |subject: &str| {
        let message = format!(
            "From: <alice@example.com>\nTo: <bob@example.com>\nSubject: {subject}\n\nHello.\n"
        );
        let out = server.sendmail(Some("posterntest"), &["-t", "-i"], message.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    send("not-owned");
    let delivered = server.wait_for_delivery("bob@example.com", 1);
    assert!(
        !delivered[0].contains("DKIM-Signature"),
        "uid {uid} owns no mailbox at example.com:\n{}",
        delivered[0]
    );

    // alice@example.com's account now carries the test user's uid.
    let passwd = server.dir.path().join("passwd");
    let text = std::fs::read_to_string(&passwd).unwrap();
    let owned: String = text
        .lines()
        .map(|line| {
            if line.starts_with("alice@example.com:") {
                format!("{line}:{uid}:{uid}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&passwd, owned).unwrap();
    send("owned");
    let delivered = server.wait_for_delivery("bob@example.com", 2);
    let owned = delivered
        .iter()
        .find(|m| m.contains("Subject: owned"))
        .expect("the second message");
    assert!(
        owned.contains("\nDKIM-Signature: "),
        "uid {uid} owns alice@example.com now:\n{owned}"
    );
}
