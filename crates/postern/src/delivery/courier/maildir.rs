//! The Maildir courier: delivers to local mailboxes.
//!
//! It owns the way from a local recipient to a file in a Maildir: the account lookup,
//! the mailbox path (`delivery.maildir` template), the owner the file is given, the
//! `Return-Path:` and `Delivered-To:` lines, and the shared [`Publisher`] whose
//! directory fsyncs are batched (group commit). A recipient that has no mailbox any
//! more bounces (5.1.1); a user database or file system that fails now defers.
//!
//! It must not touch the queue or decide policy: the recipient was accepted already.
//!
//! **Security.** The mailbox path comes from the configuration and the account's login;
//! the files are written by [`Publisher`], which never follows a link a customer planted
//! and changes owners only through descriptors it opened (see `delivery::maildir`). A
//! file and the mailbox's own directories are given to the account's owner, or to
//! `delivery.owner`, only when the process may do so (running as root or as that user);
//! directories shared by several mailboxes (the domain's) never are. A link found in a
//! mailbox defers its mail and is logged `event=maildir_unsafe`.

use std::path::PathBuf;
use std::sync::Arc;

use postern_proto::reply::Enhanced;

use super::{BoxFuture, Courier, Parcel};
use crate::config::Config;
use crate::delivery::maildir::{self, Publisher};
use crate::delivery::outcome::{MAILDIR_RELAY, Outcome};
use crate::delivery::settings::Settings;

/// Delivers into local Maildirs. Cheap to clone: clones share the publisher.
#[derive(Clone)]
pub struct MaildirCourier {
    settings: Arc<Settings>,
    publisher: Arc<Publisher>,
}

impl MaildirCourier {
    pub fn new(settings: Arc<Settings>) -> MaildirCourier {
        MaildirCourier {
            settings,
            publisher: Arc::new(Publisher::default()),
        }
    }

    /// Delivers to each recipient in turn. Blocking.
    fn deliver_blocking(&self, parcel: &Parcel) -> Vec<Outcome> {
        parcel
            .rcpts
            .iter()
            .map(|address| self.deliver_one(&parcel.from, address, &parcel.message))
            .collect()
    }

    /// Delivers to one local mailbox. Blocking.
    fn deliver_one(&self, from: &str, address: &str, message: &[u8]) -> Outcome {
        let account = match self.settings.users().lookup(address) {
            Ok(Some(account)) => account,
            Ok(None) => {
                return Outcome::bounced(
                    Enhanced(5, 1, 1),
                    "the mailbox does not exist (any more)",
                    relay(),
                );
            }
            Err(e) => {
                return Outcome::deferred(
                    Enhanced(4, 3, 0),
                    format!("user database unavailable: {e}"),
                    relay(),
                );
            }
        };
        let config = self.settings.config();
        let path = match maildir::expand_template(&config.maildir, &account.login) {
            Ok(p) => p,
            Err(e) if e.is_temporary() => {
                return Outcome::deferred(Enhanced(4, 3, 5), e.to_string(), relay());
            }
            Err(e) => return Outcome::bounced(Enhanced(5, 1, 3), e.to_string(), relay()),
        };
        let prefix = format!(
            "Return-Path: <{from}>\r\nDelivered-To: {}\r\n",
            account.login
        );
        let owner = account
            .owner
            .map(|(uid, gid)| maildir::Owner { uid, gid })
            .or_else(|| configured_owner(&config))
            .filter(|o| can_give_to(o, &account.login));
        let written =
            self.publisher
                .deliver(&path, &config.hostname, prefix.as_bytes(), message, owner);
        if let Err(maildir::MaildirError::Unsafe { path, reason }) = &written {
            tracing::warn!(
                event = "maildir_unsafe",
                rcpt = %account.login,
                path = %path.display(),
                reason = %reason,
                msg = "not followed; the message is deferred until the mailbox's owner or an admin replaces it with a directory"
            );
        }
        outcome_of(written)
    }
}

impl Courier for MaildirCourier {
    fn deliver<'a>(&'a self, parcel: &'a Parcel) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let (courier, owned) = (self.clone(), parcel.clone());
            let task = tokio::task::spawn_blocking(move || courier.deliver_blocking(&owned));
            match task.await {
                Ok(outcomes) => outcomes,
                // A panic in the task: nothing is known to be delivered, so try again later.
                Err(e) => {
                    let outcome = Outcome::deferred(
                        Enhanced(4, 3, 0),
                        format!("local delivery failed: {e}"),
                        relay(),
                    );
                    vec![outcome; parcel.rcpts.len()]
                }
            }
        })
    }

    fn deliver_now(&self, parcel: &Parcel) -> Option<Vec<Outcome>> {
        Some(self.deliver_blocking(parcel))
    }
}

/// Local outcomes name the Maildir as their relay in logs.
fn relay() -> Option<String> {
    Some(MAILDIR_RELAY.to_string())
}

/// Only root can give a file to another user. Once the server runs as its service user,
/// a Maildir owner other than that user cannot be honoured: the file stays the service
/// user's (and a warning says how to fix it) rather than the mail being held back.
fn can_give_to(owner: &maildir::Owner, login: &str) -> bool {
    let me = nix::unistd::geteuid();
    if me.is_root() || owner.uid == me.as_raw() {
        return true;
    }
    tracing::warn!(
        event = "maildir_owner_ignored",
        rcpt = %login,
        owner_uid = owner.uid,
        msg = "running as the service user, which cannot give files to another user: set user = the mail user (e.g. user = \"vmail\")"
    );
    false
}

/// `delivery.owner`, resolved to its uid and primary gid.
fn configured_owner(config: &Config) -> Option<maildir::Owner> {
    let name = config.maildir_owner.as_deref()?;
    let user = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(maildir::Owner {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

fn outcome_of(written: Result<PathBuf, maildir::MaildirError>) -> Outcome {
    match written {
        Ok(_) => Outcome::delivered(MAILDIR_RELAY, "delivered"),
        Err(e) if e.is_temporary() => Outcome::deferred(Enhanced(4, 3, 0), e.to_string(), relay()),
        Err(e) => Outcome::bounced(Enhanced(5, 3, 0), e.to_string(), relay()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PasswdFile;

    /// A courier for the one mailbox `bob@localhost`, with Maildirs under `dir`.
    fn courier(dir: &std::path::Path, passwd: &str) -> MaildirCourier {
        let file = dir.join("passwd");
        std::fs::write(&file, passwd).unwrap();
        let mut config = Config::development_defaults();
        config.maildir = format!("{}/mail/%d/%n/Maildir", dir.display());
        config.maildir_owner = None;
        let users = Arc::new(PasswdFile::new(file));
        MaildirCourier::new(Arc::new(Settings::new(config, users)))
    }

    fn parcel(rcpts: &[&str]) -> Parcel {
        Parcel {
            from: "alice@sender.test".into(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            message: Arc::new(b"Subject: hi\r\n\r\nbody\r\n".to_vec()),
        }
    }

    #[tokio::test]
    async fn delivers_to_mailboxes_and_bounces_addresses_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let courier = courier(dir.path(), "bob@localhost:{PLAIN}secret\n");
        let outcomes = courier
            .deliver(&parcel(&["bob@localhost", "nobody@localhost"]))
            .await;
        assert_eq!(
            outcomes,
            [
                Outcome::delivered(MAILDIR_RELAY, "delivered"),
                Outcome::bounced(
                    Enhanced(5, 1, 1),
                    "the mailbox does not exist (any more)",
                    relay()
                ),
            ]
        );
        let new = dir.path().join("mail/localhost/bob/Maildir/new");
        let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
        assert_eq!(files.len(), 1);
        let written = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
        // Maildir files end their lines in LF (see `delivery::maildir`).
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "Return-Path: <alice@sender.test>\nDelivered-To: bob@localhost\nSubject: hi\n\nbody\n"
        );
    }

    #[tokio::test]
    async fn a_link_in_place_of_a_mailbox_directory_defers_and_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let courier = courier(dir.path(), "bob@localhost:{PLAIN}secret\n");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let maildir = dir.path().join("mail/localhost/bob/Maildir");
        std::fs::create_dir_all(maildir.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, maildir.join("new")).unwrap();

        let outcomes = courier.deliver(&parcel(&["bob@localhost"])).await;

        assert!(
            matches!(
                &outcomes[..],
                [Outcome::Deferred { status: Enhanced(4, 3, 0), reply, .. }]
                    if reply.contains("symbolic link")
            ),
            "{outcomes:?}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_unreadable_user_database_defers() {
        let dir = tempfile::tempdir().unwrap();
        // A line the strict parser cannot read makes the whole file unusable.
        let courier = courier(dir.path(), "not a passwd line\n");
        let outcomes = courier.deliver(&parcel(&["bob@localhost"])).await;
        assert!(
            matches!(
                &outcomes[..],
                [Outcome::Deferred {
                    status: Enhanced(4, 3, 0),
                    ..
                }]
            ),
            "{outcomes:?}"
        );
    }
}
