//! Delivery as root into Maildirs that belong to a customer (the passwd-file line's
//! uid/gid): a symbolic link the customer plants is never followed, and the directory a
//! domain's mailboxes share is never given to one of them (docs/security.md, "Maildir
//! delivery").

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use common::{PlainClient, Server, field, test_user};

/// The Unix user whose uid/gid the mailboxes carry: a customer.
const CUSTOMER: &str = "posterntest";

/// Appends `:UID:GID` to the passwd-file lines of `logins`, as an operator does to give
/// those mailboxes to a Unix user.
fn give_mailboxes(server: &Server, logins: &[&str], uid: u32, gid: u32) {
    let passwd = server.dir.path().join("passwd");
    let text = std::fs::read_to_string(&passwd).unwrap();
    let owned: String = text
        .lines()
        .map(|line| {
            if logins.iter().any(|l| line.starts_with(&format!("{l}:"))) {
                format!("{line}:{uid}:{gid}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&passwd, owned).unwrap();
}

/// Mail from outside to `rcpt`, over the MX listener; accepted either way.
fn send_to(server: &Server, rcpt: &str, subject: &str) {
    let mut c = PlainClient::connect(server.addr("mx"));
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    c.cmd("DATA", "354");
    c.cmd(&format!("Subject: {subject}\r\n\r\nx\r\n."), "250");
    c.cmd("QUIT", "221");
}

/// The customer (uid, gid), when the tests run as root.
fn customer() -> Option<(u32, u32)> {
    let uid = test_user(CUSTOMER)?;
    let user = nix::unistd::User::from_name(CUSTOMER).ok().flatten()?;
    Some((uid, user.gid.as_raw()))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Names, owners and modes in a directory, and its own.
fn snapshot(dir: &Path) -> Vec<(String, u32, u32, u32)> {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    let mut out = vec![(".".to_owned(), meta.uid(), meta.gid(), meta.mode())];
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, meta.uid(), meta.gid(), meta.mode()));
    }
    out.sort();
    out
}

#[test]
fn mail_to_a_mailbox_whose_new_is_a_link_to_a_root_only_directory_is_deferred() {
    let Some(customer) = customer() else {
        return;
    };
    let server = Server::start();
    give_mailboxes(&server, &["bob@example.com"], customer.0, customer.1);
    // A root-only directory, with a root-only file in it.
    let root_only = server.dir.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(root_only.join("secret"), b"root's").unwrap();
    let before = snapshot(&root_only);
    // bob's Maildir as its owner left it: new/ is a link to the root-only directory.
    let maildir = server.maildir("bob@example.com");
    std::fs::create_dir_all(maildir.join("tmp")).unwrap();
    std::fs::create_dir_all(maildir.join("cur")).unwrap();
    std::os::unix::fs::symlink(&root_only, maildir.join("new")).unwrap();
    for path in [
        maildir.parent().unwrap(),
        &maildir,
        &maildir.join("tmp"),
        &maildir.join("cur"),
        &maildir.join("new"),
    ] {
        chown(path, customer);
    }

    send_to(&server, "bob@example.com", "through a link");

    // The first attempt's outcome: delivered or deferred, either is logged so.
    let attempt = server
        .wait_for_log("rcpt=bob@example.com relay=maildir")
        .unwrap_or_else(|| panic!("no delivery attempt; log:\n{}", server.log_text()));
    assert_eq!(
        snapshot(&root_only),
        before,
        "mail landed in the root-only directory; log:\n{}",
        server.log_text()
    );
    assert!(attempt.contains("event=deferred"), "{attempt}");
    assert_eq!(field(&attempt, "dsn").as_deref(), Some("4.3.0"));
    let warning = server
        .wait_for_log("event=maildir_unsafe")
        .unwrap_or_else(|| panic!("no maildir_unsafe warning; log:\n{}", server.log_text()));
    assert_eq!(field(&warning, "rcpt").as_deref(), Some("bob@example.com"));
    assert_eq!(
        field(&warning, "path").map(std::path::PathBuf::from),
        Some(maildir.join("new")),
        "{warning}"
    );

    // The customer puts a directory back: the deferred message is delivered, not lost.
    std::fs::remove_file(maildir.join("new")).unwrap();
    std::fs::create_dir(maildir.join("new")).unwrap();
    chown(&maildir.join("new"), customer);
    assert!(server.cli(&["queue", "flush"], None).status.success());
    let mails = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(mails.len(), 1, "log:\n{}", server.log_text());
    assert!(mails[0].contains("Subject: through a link"));
    assert_eq!(snapshot(&root_only), before);
}

#[test]
fn the_domain_directory_made_for_a_customer_mailbox_is_not_given_to_the_customer() {
    let Some(customer) = customer() else {
        return;
    };
    let server = Server::start();
    give_mailboxes(&server, &["alice@example.com"], customer.0, customer.1);

    send_to(&server, "alice@example.com", "owned");

    let mails = server.wait_for_delivery("alice@example.com", 1);
    assert_eq!(mails.len(), 1, "log:\n{}", server.log_text());
    let maildir = server.maildir("alice@example.com");
    let owner = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    };
    let domain = maildir.parent().unwrap().parent().unwrap();
    assert_eq!(
        owner(domain),
        (0, 0, 0o711),
        "{}: shared by the domain's mailboxes",
        domain.display()
    );
    for path in [maildir.parent().unwrap(), &maildir, &maildir.join("new")] {
        assert_eq!(
            owner(path),
            (customer.0, customer.1, 0o700),
            "{}",
            path.display()
        );
    }
    let file = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(owner(&file), (customer.0, customer.1, 0o600));
}
