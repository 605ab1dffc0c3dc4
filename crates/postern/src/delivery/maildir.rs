//! Maildir delivery: writes one message into a local mailbox, in `tmp/` then into `new/`,
//! with unique names as the Maildir specification describes
//! (<https://cr.yp.to/proto/maildir.html>). Also expands the Dovecot-style mailbox path
//! template (`/var/vmail/%d/%n/Maildir`) into a [`MailboxPath`] that says who owns each
//! directory on the way.
//!
//! It owns the Maildir files only. It must not decide whether a recipient is local or
//! allowed, nor touch the queue: the caller reports the outcome. Its functions block;
//! callers run them in `spawn_blocking`.
//!
//! **Security.** The recipient address comes from the network. It is lower-cased and each
//! part that goes into a path is refused if it could leave its directory (empty, `.`,
//! `..`, a leading dot, `/`, NUL or another control character), so a template can never
//! point outside the tree it names. A mailbox's directories may belong to a customer (the
//! passwd-file's uid/gid, or `delivery.owner`), who can then rename anything inside them
//! and plant symbolic links; delivery often runs as root. The template splits the path
//! in three:
//!
//! | part | e.g. | owner and mode when postern makes it | how it is opened |
//! | --- | --- | --- | --- |
//! | before the first variable | `/var/vmail` | the process's user (root or the service user), 0711 | by path, links followed: the operator's, trusted |
//! | from there to the first `%n`/`%u` component (`%d` and plain names) | `example.com` | the process's user, 0711, never given away: every mailbox of the domain is in it | `openat`, `O_NOFOLLOW` |
//! | from the first `%n`/`%u` component, and `tmp/`, `new/`, `cur/` | `bob/Maildir` | the mailbox owner, 0700 | `openat`, `O_NOFOLLOW` |
//!
//! Guaranteed: below the trusted part every directory is opened relative to the one
//! opened before it (`openat` with `O_NOFOLLOW | O_DIRECTORY`), so a symbolic link where
//! a directory should be is never followed: delivery fails with
//! [`MaildirError::Unsafe`] (temporary, so the message is deferred) and writes nothing.
//! The file is always a new one, made in the `tmp/` that was opened (`O_TMPFILE`, or
//! `O_CREAT | O_EXCL | O_NOFOLLOW`), and named in the `new/` that was opened (`linkat`
//! or `renameat` on those descriptors): it lands in that directory, wherever its owner
//! may have moved it since, which is only somewhere the owner can write anyway. Owners
//! and modes are changed only with `fchown`/`fchmod` on a descriptor postern opened: the
//! new file, and a directory postern has just made and checked to be its own, so no
//! link swapped in after `mkdirat` can redirect them. An existing directory keeps its
//! owner and mode. Files are mode 0600.
//!
//! Assumed: the trusted part belongs to the mail system (customers cannot write it),
//! and customers cannot write the directories shared by several mailboxes. postern
//! makes those so, but never changes existing ones: a domain directory that belongs to
//! a customer (earlier versions gave the directories they made, the domain's included,
//! to the first mailbox's owner) lets that customer rename the domain's other
//! mailboxes, which no way of opening them can prevent. Inside its own mailbox a
//! customer can do anything, including make deliveries to it fail.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use crate::group_commit::GroupCommit;

const TMP: &str = "tmp";
const NEW: &str = "new";
const CUR: &str = "cur";
const FILE_MODE: u32 = 0o600;
/// The mailbox's own directories: its owner only.
const DIR_MODE: u32 = 0o700;
/// Directories of the mail system and those shared by a domain's mailboxes: the owners
/// (and Dovecot running as them) pass through but cannot list or change them.
const SHARED_DIR_MODE: u32 = 0o711;

/// Deliveries made by this process: the `Q<n>` part of unique names, so two deliveries
/// in the same microsecond still get different names.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Something other than a directory of ours is where one should be (a symbolic link,
    /// or a directory swapped in while it was being made); it was not followed.
    #[error("{path}: {reason}; not followed, nothing written")]
    Unsafe { path: PathBuf, reason: &'static str },
    /// The mailbox template in the config is malformed.
    #[error("bad mailbox template: {0}")]
    BadTemplate(String),
    /// The recipient address would make an unsafe path.
    #[error("address {0:?} cannot name a mailbox directory safely")]
    UnsafeAddress(String),
}

impl MaildirError {
    /// True when retrying later may help. Every I/O error counts (a full disk, a
    /// permission an admin can fix, EIO): a message is never bounced because a disk was
    /// full. A bad template is a config error the operator can fix, so it is temporary
    /// too, and so is a link in a mailbox (its owner or an admin can remove it). Only an
    /// unsafe address is permanent.
    pub fn is_temporary(&self) -> bool {
        match self {
            MaildirError::Io { .. }
            | MaildirError::Unsafe { .. }
            | MaildirError::BadTemplate(_) => true,
            MaildirError::UnsafeAddress(_) => false,
        }
    }
}

/// Where a mailbox is: the template expanded for one address, split by who owns each
/// directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxPath {
    /// The template up to its first variable: the mail system's, opened by path.
    base: PathBuf,
    /// Directories several mailboxes share (`%d` and plain names before the first
    /// component with `%n` or `%u`): never given to a mailbox owner.
    shared: Vec<String>,
    /// The mailbox's own directories, from the first component with `%n` or `%u`.
    own: Vec<String>,
}

impl MailboxPath {
    /// The whole path, for messages and logs.
    pub fn path(&self) -> PathBuf {
        let mut path = self.base.clone();
        path.extend(self.shared.iter().chain(&self.own));
        path
    }
}

impl fmt::Display for MailboxPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path().display().fmt(f)
    }
}

/// Expands a Dovecot-style template: `%d` domain, `%n` local part, `%u` full address,
/// `%%` a literal `%`. The address is lower-cased first. Refuses (`UnsafeAddress`) local
/// parts or domains that are empty, contain `/`, NUL or a control character, or start
/// with `.` (so `.` and `..` too), so the result never escapes the template's directory.
/// A `..` component after the first variable is a `BadTemplate`, for the same reason.
pub fn expand_template(template: &str, address: &str) -> Result<MailboxPath, MaildirError> {
    let address = address.to_lowercase();
    let (local, domain) = split_address(&address)?;
    let mut mailbox = MailboxPath {
        base: PathBuf::new(),
        shared: Vec::new(),
        own: Vec::new(),
    };
    if template.starts_with('/') {
        mailbox.base.push("/");
    }
    let mut variables = false;
    for part in template.split('/') {
        let (name, has_variable, per_mailbox) =
            expand_component(template, part, local, domain, &address)?;
        variables |= has_variable;
        if !variables {
            if !name.is_empty() {
                mailbox.base.push(name);
            }
            continue;
        }
        match name.as_str() {
            "" | "." => {}
            ".." => {
                return Err(MaildirError::BadTemplate(format!(
                    "{template:?}: `..` after a variable could leave the mailbox"
                )));
            }
            _ if per_mailbox || !mailbox.own.is_empty() => mailbox.own.push(name),
            _ => mailbox.shared.push(name),
        }
    }
    if mailbox.base.as_os_str().is_empty() {
        mailbox.base.push(".");
    }
    Ok(mailbox)
}

/// One component of the template with its variables replaced; also whether it had a
/// variable, and whether one of them names a single mailbox (`%n`, `%u`).
fn expand_component(
    template: &str,
    part: &str,
    local: &str,
    domain: &str,
    address: &str,
) -> Result<(String, bool, bool), MaildirError> {
    let (mut name, mut has_variable, mut per_mailbox) = (String::new(), false, false);
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            name.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => {
                name.push_str(domain);
                has_variable = true;
            }
            Some('n') => {
                name.push_str(local);
                (has_variable, per_mailbox) = (true, true);
            }
            Some('u') => {
                name.push_str(address);
                (has_variable, per_mailbox) = (true, true);
            }
            Some('%') => name.push('%'),
            Some(other) => {
                return Err(MaildirError::BadTemplate(format!(
                    "{template:?}: unknown variable %{other} (use %d, %n, %u or %%)"
                )));
            }
            None => {
                return Err(MaildirError::BadTemplate(format!(
                    "{template:?}: ends with a lone % (write %% for a literal %)"
                )));
            }
        }
    }
    Ok((name, has_variable, per_mailbox))
}

/// Splits at the last `@` (a quoted local part may contain one) and checks both parts.
fn split_address(address: &str) -> Result<(&str, &str), MaildirError> {
    let unsafe_address = || MaildirError::UnsafeAddress(address.to_owned());
    let (local, domain) = address.rsplit_once('@').ok_or_else(unsafe_address)?;
    if is_safe_component(local) && is_safe_component(domain) {
        Ok((local, domain))
    } else {
        Err(unsafe_address())
    }
}

/// A string that can be one path component and stays inside its directory.
fn is_safe_component(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && !part.contains('/')
        && !part.chars().any(char::is_control)
}

/// Delivers one message into the Maildir at `mailbox`, creating `tmp/`, `new/` and `cur/`
/// as needed. Writes `prefix` (e.g. `Return-Path:` and `Delivered-To:`)
/// then `message` to a file in `tmp/` with CRLF line endings turned into LF (the Unix
/// mailbox convention Dovecot expects), fsyncs it, names it
/// `new/<unique>,S=<size>` and fsyncs `new/`. Returns the final path.
///
/// Blocking: run it in `spawn_blocking`.
pub fn deliver(
    mailbox: &MailboxPath,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
) -> Result<PathBuf, MaildirError> {
    deliver_as(mailbox, hostname, prefix, message, None)
}

/// The owner Maildir files and the mailbox directories made for them get, so that the
/// IMAP server (Dovecot, running as the mail user) can read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// [`deliver`], with the new file and the mailbox directories it creates owned by
/// `owner`.
pub fn deliver_as(
    mailbox: &MailboxPath,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Result<PathBuf, MaildirError> {
    let staged = stage(mailbox, hostname, prefix, message, owner)?;
    let (named, new_dir) = staged.rename();
    let new_path = named?;
    // If this fails the message may or may not survive a crash; the error makes the
    // queue retry, which at worst delivers it twice, never loses it.
    nix::unistd::fsync(&new_dir.fd).map_err(|e| io_error(&new_dir.path, e))?;
    Ok(new_path)
}

/// A message written and fsynced, waiting to be named in `new/`.
#[derive(Debug)]
pub struct Staged {
    written: Written,
    new_dir: NewDir,
    /// Its name in `new/`.
    new_name: String,
}

/// A Maildir's `new/`, opened (readable, for its fsync).
#[derive(Debug)]
struct NewDir {
    fd: OwnedFd,
    /// Device and inode: deliveries to the same directory share its fsync.
    id: (u64, u64),
    path: PathBuf,
}

/// Where a staged message is.
#[derive(Debug)]
enum Written {
    /// In `tmp/` (this descriptor) under this name.
    Named { tmp: OwnedFd, name: String },
    /// In a file without a name yet (`O_TMPFILE`, made in `tmp/`), linked into `new/` when
    /// published: no `tmp/` entry, so parallel deliveries do not queue on the lock of
    /// `tmp/` while the file system allocates each new inode (see `docs/benchmarks.md`).
    Anonymous(File),
}

impl Staged {
    /// Gives the file its name in `new/`; the caller fsyncs `new/`, returned with the
    /// result. On failure the file in `tmp/` is removed (an anonymous file just goes
    /// away).
    fn rename(self) -> (Result<PathBuf, MaildirError>, NewDir) {
        let Staged {
            written,
            new_dir,
            new_name,
        } = self;
        let named = match &written {
            Written::Named { tmp, name } => {
                nix::fcntl::renameat(tmp, name.as_str(), &new_dir.fd, new_name.as_str())
                    .inspect_err(|_| {
                        let _ = nix::unistd::unlinkat(
                            tmp,
                            name.as_str(),
                            nix::unistd::UnlinkatFlags::NoRemoveDir,
                        );
                    })
                    .map_err(io::Error::from)
            }
            Written::Anonymous(file) => {
                link_anonymous(file, &new_dir.fd, &new_name).inspect_err(|e| {
                    // No /proc, or a file system that cannot link it: name files in tmp/
                    // from now on. This delivery is retried.
                    if unsupported(e, &[nix::libc::ENOENT, nix::libc::EPERM, nix::libc::EXDEV]) {
                        ANONYMOUS_FILES.store(false, Ordering::Relaxed);
                    }
                })
            }
        };
        let path = new_dir.path.join(&new_name);
        let result = match named {
            Ok(()) => Ok(path),
            Err(source) => Err(MaildirError::Io { path, source }),
        };
        (result, new_dir)
    }
}

/// The first half of a delivery, run in parallel with others: opens (and creates as
/// needed) the Maildir's directories, writes the message in `tmp/` and fsyncs it.
pub fn stage(
    mailbox: &MailboxPath,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Result<Staged, MaildirError> {
    let maildir = open_maildir(mailbox, owner)?;
    let anonymous = ANONYMOUS_FILES.load(Ordering::Relaxed);
    write_staged(maildir, hostname, prefix, message, owner, anonymous)
}

/// Writes the message into the opened Maildir's `tmp/`: without a name when `anonymous`
/// (and the file system can), else under its unique name.
fn write_staged(
    maildir: Maildir,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
    anonymous: bool,
) -> Result<Staged, MaildirError> {
    let Maildir { tmp, new } = maildir;
    let unique = unique_name(hostname);
    let tmp_path = || new.path.with_file_name(TMP);
    let made = anonymous
        .then(|| write_anonymous_file(&tmp, prefix, message, owner))
        .flatten();
    let (written, size) = match made {
        Some(anonymous) => anonymous.map_err(|e| MaildirError::Io {
            path: tmp_path(),
            source: e,
        })?,
        None => {
            let size = write_new_file(&tmp, &unique, prefix, message, owner).map_err(|e| {
                MaildirError::Io {
                    path: tmp_path().join(&unique),
                    source: e,
                }
            })?;
            (
                Written::Named {
                    tmp,
                    name: unique.clone(),
                },
                size,
            )
        }
    };
    Ok(Staged {
        written,
        new_dir: new,
        new_name: format!("{unique},S={size}"),
    })
}

/// The second half, for a batch of staged deliveries (group commit): names each in its
/// `new/`, then fsyncs each `new/` directory once, however many messages it got.
/// One result per staged delivery, in order: the final path, or the error.
pub fn publish(batch: Vec<Staged>) -> Vec<Result<PathBuf, MaildirError>> {
    let (mut results, dirs): (Vec<_>, Vec<_>) = batch.into_iter().map(Staged::rename).unzip();
    let mut synced: Vec<((u64, u64), Option<Errno>)> = Vec::new();
    for (result, dir) in results.iter_mut().zip(&dirs) {
        if result.is_err() {
            continue;
        }
        let failed = match synced.iter().find(|(id, _)| *id == dir.id) {
            Some((_, failed)) => *failed,
            None => {
                let failed = nix::unistd::fsync(&dir.fd).err();
                synced.push((dir.id, failed));
                failed
            }
        };
        if let Some(errno) = failed {
            // One error like it for each delivery to that directory.
            *result = Err(io_error(&dir.path, errno));
        }
    }
    results
}

/// Delivers through a shared [`GroupCommit`]: messages that reach the same Maildir at
/// the same time share one fsync of its `new/`.
pub struct Publisher {
    batches: Arc<GroupCommit<Staged, Result<PathBuf, MaildirError>>>,
}

impl Default for Publisher {
    fn default() -> Publisher {
        Publisher {
            batches: GroupCommit::new(publish),
        }
    }
}

impl Publisher {
    /// [`deliver_as`], with the link into `new/` and the directory fsync batched with
    /// other deliveries. Blocking: call it on a blocking thread of the Tokio runtime (the
    /// batch may be handed to another one).
    pub fn deliver(
        &self,
        mailbox: &MailboxPath,
        hostname: &str,
        prefix: &[u8],
        message: &[u8],
        owner: Option<Owner>,
    ) -> Result<PathBuf, MaildirError> {
        let staged = stage(mailbox, hostname, prefix, message, owner)?;
        self.batches
            .submit_blocking(staged)
            .map_err(|e| MaildirError::Io {
                // A batch that panicked: like an I/O error, so the queue retries.
                path: mailbox.path(),
                source: io::Error::other(e.to_string()),
            })?
    }
}

/// A Maildir's `tmp/` and `new/`, opened (and made, with `cur/`, as needed).
struct Maildir {
    tmp: OwnedFd,
    new: NewDir,
}

/// How a directory on the way to a Maildir is opened, and made when it is missing.
#[derive(Clone, Copy)]
struct Rule {
    /// Follow a symbolic link here: only in the mail system's own part of the path.
    follow: bool,
    mode: u32,
    /// Whom a directory made here is given to.
    owner: Option<Owner>,
}

/// Walks from the trusted base to the Maildir one directory at a time (see the module
/// docs), making what is missing.
fn open_maildir(mailbox: &MailboxPath, owner: Option<Owner>) -> Result<Maildir, MaildirError> {
    let shared = Rule {
        follow: false,
        mode: SHARED_DIR_MODE,
        owner: None,
    };
    // A template without `%n` or `%u`: the whole Maildir is shared, so it is nobody's.
    let own = Rule {
        follow: false,
        mode: DIR_MODE,
        owner: owner.filter(|_| !mailbox.own.is_empty()),
    };
    let mut path = mailbox.base.clone();
    let mut dir = open_base(&path)?;
    for name in &mailbox.shared {
        path.push(name);
        dir = open_or_make(dir.as_fd(), name.as_ref(), &path, shared)?;
    }
    for name in &mailbox.own {
        path.push(name);
        dir = open_or_make(dir.as_fd(), name.as_ref(), &path, own)?;
    }
    let tmp = open_or_make(dir.as_fd(), TMP.as_ref(), &path.join(TMP), own)?;
    let new_path = path.join(NEW);
    let new = open_or_make(dir.as_fd(), NEW.as_ref(), &new_path, own)?;
    // Readable, for its fsync; reopened through the descriptor, not by name.
    let new = reopen(&new).map_err(|e| io_error(&new_path, e))?;
    let stat = nix::sys::stat::fstat(&new).map_err(|e| io_error(&new_path, e))?;
    open_or_make(dir.as_fd(), CUR.as_ref(), &path.join(CUR), own)?;
    Ok(Maildir {
        tmp,
        new: NewDir {
            fd: new,
            id: (stat.st_dev, stat.st_ino),
            path: new_path,
        },
    })
}

/// Opens the mail system's part of the path, following links (the operator's), and
/// makes it when it is missing.
fn open_base(base: &Path) -> Result<OwnedFd, MaildirError> {
    match open_dir(AT_FDCWD, base.as_os_str(), true) {
        Err(Errno::ENOENT) => {}
        opened => return opened.map_err(|e| io_error(base, e)),
    }
    let made = Rule {
        follow: true,
        mode: SHARED_DIR_MODE,
        owner: None,
    };
    let start = if base.is_absolute() { "/" } else { "." };
    let mut dir = open_dir(AT_FDCWD, OsStr::new(start), true).map_err(|e| io_error(base, e))?;
    let mut path = PathBuf::from(start);
    for component in base.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::ParentDir => OsStr::new(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        path.push(name);
        dir = open_or_make(dir.as_fd(), name, &path, made)?;
    }
    Ok(dir)
}

/// Opens the directory `name` in `parent` as `rule` says, making it (mode, owner) if it is
/// missing; the parent is fsynced after, so a mailbox made for a delivery survives a
/// crash along with the message. A directory that exists keeps its owner and mode.
fn open_or_make(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    rule: Rule,
) -> Result<OwnedFd, MaildirError> {
    // Almost always there already. Opening first takes no lock, where a `mkdir` that
    // fails with EEXIST takes the parent's exclusively: every delivery to one Maildir
    // would queue on it three times.
    match open_dir(parent, name, rule.follow) {
        Err(Errno::ENOENT) => {}
        opened => return opened.map_err(|e| refusal(parent, name, path, e)),
    }
    let made = match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(rule.mode)) {
        Ok(()) => true,
        // Made by a delivery running beside this one.
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(io_error(path, e)),
    };
    let dir = open_dir(parent, name, rule.follow).map_err(|e| refusal(parent, name, path, e))?;
    if made {
        settle(&dir, path, rule)?;
        let parent = reopen(&parent).map_err(|e| io_error(path, e))?;
        nix::unistd::fsync(&parent).map_err(|e| io_error(path, e))?;
    }
    Ok(dir)
}

/// Gives a directory just made its mode (exactly: the umask is not ours alone) and owner,
/// through the descriptor that was opened, once it is checked to be a directory this
/// process owns: if another was swapped in after `mkdirat`, nothing is changed.
fn settle(dir: &OwnedFd, path: &Path, rule: Rule) -> Result<(), MaildirError> {
    let stat = nix::sys::stat::fstat(dir).map_err(|e| io_error(path, e))?;
    let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if !is_dir || stat.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(MaildirError::Unsafe {
            path: path.to_owned(),
            reason: "replaced while it was being made",
        });
    }
    let dir = reopen(dir).map_err(|e| io_error(path, e))?;
    nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(rule.mode))
        .map_err(|e| io_error(path, e))?;
    if let Some(o) = rule.owner {
        nix::unistd::fchown(&dir, Some(o.uid.into()), Some(o.gid.into()))
            .map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// Opens a directory for use as a starting point only (`O_PATH`: no read permission
/// needed, as for a lookup by path), following a final link only when `follow` is set.
fn open_dir(parent: BorrowedFd<'_>, name: &OsStr, follow: bool) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    nix::fcntl::openat(parent, name, flags, Mode::empty())
}

/// The same directory, opened for reading (to fsync, fchmod or fchown it).
fn reopen(dir: &impl AsFd) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The error for a directory that could not be opened: [`MaildirError::Unsafe`] when
/// a symbolic link is there (whatever `openat` said: `ENOTDIR`, `ELOOP`, or `ENOENT`
/// when it was swapped in after a look that found nothing).
fn refusal(parent: BorrowedFd<'_>, name: &OsStr, path: &Path, errno: Errno) -> MaildirError {
    let is_link = nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK);
    if is_link {
        MaildirError::Unsafe {
            path: path.to_owned(),
            reason: "a symbolic link where a directory should be",
        }
    } else {
        io_error(path, errno)
    }
}

fn io_error(path: &Path, errno: Errno) -> MaildirError {
    MaildirError::Io {
        path: path.to_owned(),
        source: io::Error::from(errno),
    }
}

/// `<secs>.M<micros>P<pid>Q<counter>.<hostname>`, as the Maildir specification suggests.
fn unique_name(hostname: &str) -> String {
    // A clock before 1970 is broken; the pid and counter still keep names apart.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed) + 1;
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        n,
        escape_hostname(hostname)
    )
}

/// `/` would make a path and `:` starts the info part of a Maildir name, so the
/// specification replaces them with octal escapes.
fn escape_hostname(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// Whether `O_TMPFILE` files can be made and linked here; cleared the first time either
/// fails, after which messages are written to named files in `tmp/`.
static ANONYMOUS_FILES: AtomicBool = AtomicBool::new(true);

/// Writes the message to a new file without a name in `tmp` (`O_TMPFILE`), fsyncs it, and
/// returns it with its size. `None` when such files are not available.
fn write_anonymous_file(
    tmp: &OwnedFd,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Option<io::Result<(Written, u64)>> {
    let opened = nix::fcntl::openat(
        tmp,
        ".",
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(FILE_MODE),
    )
    .map_err(io::Error::from);
    let file = match opened {
        Ok(fd) => File::from(fd),
        // Kernels or file systems without it: fall back for good.
        Err(e) if unsupported(&e, &[nix::libc::EISDIR, nix::libc::EINVAL]) => {
            ANONYMOUS_FILES.store(false, Ordering::Relaxed);
            return None;
        }
        Err(e) => return Some(Err(e)),
    };
    let written = give(&file, owner).and_then(|()| write_lf(&file, prefix, message));
    Some(written.map(|size| (Written::Anonymous(file), size)))
}

/// Whether `error` says the operation is not supported: `EOPNOTSUPP` or one of `also`.
fn unsupported(error: &io::Error, also: &[i32]) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| code == nix::libc::EOPNOTSUPP || also.contains(&code))
}

/// Links a file made with `O_TMPFILE` to `name` in `new`, through its `/proc/self/fd`
/// entry (which needs no privilege, unlike `AT_EMPTY_PATH`). Fails if `name` exists.
fn link_anonymous(file: &File, new: &OwnedFd, name: &str) -> io::Result<()> {
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        AT_FDCWD,
        from.as_str(),
        new,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

/// Creates `name` in `tmp` (never overwriting anything, never through a link), writes
/// the message with LF endings and fsyncs it. Returns the number of bytes written. On
/// failure the file is removed.
fn write_new_file(
    tmp: &OwnedFd,
    name: &str,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> io::Result<u64> {
    let fd = nix::fcntl::openat(
        tmp,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(FILE_MODE),
    )?;
    let file = File::from(fd);
    give(&file, owner)
        .and_then(|()| write_lf(&file, prefix, message))
        .inspect_err(|_| {
            let _ = nix::unistd::unlinkat(tmp, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        })
}

/// Gives a file postern made to `owner`, through its descriptor.
fn give(file: &File, owner: Option<Owner>) -> io::Result<()> {
    match owner {
        Some(o) => std::os::unix::fs::fchown(file, Some(o.uid), Some(o.gid)),
        None => Ok(()),
    }
}

fn write_lf(file: &File, prefix: &[u8], message: &[u8]) -> io::Result<u64> {
    let mut out = LfWriter::new(BufWriter::new(file));
    out.write(prefix)?;
    out.write(message)?;
    let (buffered, size) = out.finish()?;
    let file = buffered
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(size)
}

/// Writes bytes with every CRLF turned into LF; a CR not followed by LF is kept. A CRLF
/// split across two writes (the prefix and the message) is still seen as one.
struct LfWriter<W: Write> {
    inner: W,
    /// The last write ended in CR; whether it is kept depends on the next byte.
    pending_cr: bool,
    written: u64,
}

impl<W: Write> LfWriter<W> {
    fn new(inner: W) -> LfWriter<W> {
        LfWriter {
            inner,
            pending_cr: false,
            written: 0,
        }
    }

    fn write(&mut self, mut input: &[u8]) -> io::Result<()> {
        if self.pending_cr {
            self.pending_cr = false;
            if input.first() != Some(&b'\n') {
                self.emit(b"\r")?;
            }
        }
        while let Some(cr) = input.iter().position(|&b| b == b'\r') {
            self.emit(&input[..cr])?;
            let after = &input[cr + 1..];
            match after.first() {
                None => self.pending_cr = true,
                // Drop the CR; the LF is written with the next run.
                Some(b'\n') => {}
                Some(_) => self.emit(b"\r")?,
            }
            input = after;
        }
        self.emit(input)
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes a trailing lone CR, then returns the inner writer (not flushed) and the
    /// number of bytes written.
    fn finish(mut self) -> io::Result<(W, u64)> {
        if self.pending_cr {
            self.emit(b"\r")?;
        }
        Ok((self.inner, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A Maildir at `path`, all of it trusted (no template variables).
    fn trusted(path: &Path) -> MailboxPath {
        MailboxPath {
            base: path.to_owned(),
            shared: Vec::new(),
            own: Vec::new(),
        }
    }

    const PREFIX: &[u8] = b"Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.com\r\n";
    const MESSAGE: &[u8] = b"Subject: hi\r\n\r\nline one\r\nline two\r\n";

    fn lf(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = LfWriter::new(Vec::new());
        for part in parts {
            out.write(part).unwrap();
        }
        let (bytes, size) = out.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        bytes
    }

    #[test]
    fn template_expands_variables() {
        let path = expand_template("/var/vmail/%d/%n/Maildir", "Bob@Example.COM").unwrap();
        assert_eq!(path.path(), Path::new("/var/vmail/example.com/bob/Maildir"));
        let path = expand_template("/srv/%u/100%%", "bob@example.com").unwrap();
        assert_eq!(path.path(), Path::new("/srv/bob@example.com/100%"));
    }

    #[test]
    fn the_template_says_who_owns_each_directory() {
        let split = |template: &str| {
            let path = expand_template(template, "bob@example.com").unwrap();
            (
                path.base.to_str().unwrap().to_owned(),
                path.shared.join("/"),
                path.own.join("/"),
            )
        };
        let owned = |base: &str, shared: &str, own: &str| {
            (base.to_owned(), shared.to_owned(), own.to_owned())
        };
        assert_eq!(
            split("/var/vmail/%d/%n/Maildir"),
            owned("/var/vmail", "example.com", "bob/Maildir")
        );
        assert_eq!(
            split("/var/vmail/%d/users/x%n//./Maildir/"),
            owned("/var/vmail", "example.com/users", "xbob/Maildir")
        );
        assert_eq!(
            split("/srv/%u/100%%"),
            owned("/srv", "", "bob@example.com/100%")
        );
        // Nothing names one mailbox: the domain's Maildir is shared, nobody's.
        assert_eq!(
            split("/m/%d/Maildir"),
            owned("/m", "example.com/Maildir", "")
        );
        assert_eq!(split("mail/%d/%n"), owned("mail", "example.com", "bob"));
        assert_eq!(split("%d/%n"), owned(".", "example.com", "bob"));
        assert_eq!(
            split("/srv/../vmail/%d/%n"),
            owned("/srv/../vmail", "example.com", "bob"),
            "the operator's part is taken as it is"
        );
    }

    #[test]
    fn template_errors_are_reported() {
        for bad in ["/var/%x", "/var/mail/%", "/var/%d/../%n"] {
            let err = expand_template(bad, "bob@example.com").unwrap_err();
            assert!(
                matches!(err, MaildirError::BadTemplate(_)),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn unsafe_addresses_are_refused() {
        for address in [
            "../x@y",
            "x@..",
            "a/b@c",
            "x@.",
            "@example.com",
            "bob@",
            "bob",
            ".hidden@example.com",
            "bob@example.com/../..",
            "bo\0b@example.com",
            "bob@exa\nmple.com",
        ] {
            let err = expand_template("/var/vmail/%d/%n", address).unwrap_err();
            assert!(
                matches!(err, MaildirError::UnsafeAddress(_)),
                "{address:?}: {err:?}"
            );
            assert!(!err.is_temporary());
        }
    }

    #[test]
    fn quoted_local_part_splits_at_last_at() {
        let path = expand_template("/m/%d/%n", "\"a@b\"@example.com").unwrap();
        assert_eq!(path.path(), Path::new("/m/example.com/\"a@b\""));
    }

    #[test]
    fn delivery_creates_dirs_and_lands_in_new_with_lf_endings() {
        let root = tempfile::tempdir().unwrap();
        let maildir = root.path().join("mail/example.com/bob/Maildir");

        let path = deliver(&bob(root.path()), "mx.example.com", PREFIX, MESSAGE).unwrap();

        for sub in ["tmp", "new", "cur"] {
            let mode = fs::metadata(maildir.join(sub))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        assert_eq!(path.parent(), Some(maildir.join("new").as_path()));
        let content = fs::read(&path).unwrap();
        assert_eq!(
            content,
            b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.com\n\
              Subject: hi\n\nline one\nline two\n"
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with(&format!(".mx.example.com,S={}", content.len())),
            "{name}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), content.len() as u64);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn files_and_mailbox_directories_belong_to_the_owner_and_shared_ones_do_not() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mailbox = dir.path().join("mail/example.com/bob");
        let path = deliver_as(&bob(dir.path()), "host", b"", b"x\r\n", Some(OWNER)).unwrap();
        for p in [
            path.as_path(),
            &mailbox,
            &mailbox.join("Maildir"),
            &mailbox.join("Maildir/new"),
            &mailbox.join("Maildir/tmp"),
            &mailbox.join("Maildir/cur"),
        ] {
            let meta = fs::metadata(p).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{}", p.display());
        }
        let me = nix::unistd::geteuid().as_raw();
        // The mail system's directory and the domain's, shared by all its mailboxes:
        // the owners pass through, but cannot list, rename or replace what is inside.
        for shared in ["mail", "mail/example.com"] {
            let meta = fs::metadata(dir.path().join(shared)).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o7777), (me, 0o711), "{shared}");
        }
        let meta = fs::metadata(dir.path()).unwrap();
        assert_ne!(meta.uid(), 4242, "an existing directory keeps its owner");
    }

    #[test]
    fn two_deliveries_get_different_names() {
        let root = tempfile::tempdir().unwrap();
        let first = deliver(&trusted(root.path()), "mx", b"", MESSAGE).unwrap();
        let second = deliver(&trusted(root.path()), "mx", b"", MESSAGE).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read_dir(root.path().join("new")).unwrap().count(), 2);
    }

    #[test]
    fn a_published_batch_lands_in_new_of_each_maildir_and_nothing_stays_in_tmp() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let batch = vec![
            stage(&trusted(&a), "mx", b"", MESSAGE, None).unwrap(),
            stage(&trusted(&b), "mx", b"", MESSAGE, None).unwrap(),
            stage(&trusted(&a), "mx", b"", MESSAGE, None).unwrap(),
        ];
        assert_eq!(
            fs::read_dir(a.join("new")).unwrap().count(),
            0,
            "visible too early"
        );
        let results = publish(batch);
        assert_eq!(results.len(), 3);
        for (result, maildir) in results.iter().zip([&a, &b, &a]) {
            let path = result.as_ref().unwrap();
            assert_eq!(path.parent().unwrap(), maildir.join("new"));
            assert!(fs::read(path).unwrap().ends_with(b"line two\n"));
        }
        for maildir in [&a, &b] {
            assert_eq!(fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
        }
        assert_eq!(fs::read_dir(a.join("new")).unwrap().count(), 2);
    }

    #[test]
    fn a_staged_message_has_no_name_until_it_is_published_in_new() {
        let root = tempfile::tempdir().unwrap();
        let staged = stage(&trusted(root.path()), "mx", b"", MESSAGE, None).unwrap();
        // Linux file systems here (ext4, tmpfs) support O_TMPFILE.
        assert!(
            matches!(staged.written, Written::Anonymous(_)),
            "{staged:?}"
        );
        let entries = |sub: &str| fs::read_dir(root.path().join(sub)).unwrap().count();
        assert_eq!((entries("tmp"), entries("new")), (0, 0));
        let path = publish(vec![staged]).pop().unwrap().unwrap();
        assert_eq!((entries("tmp"), entries("new")), (0, 1));
        assert_eq!(
            fs::read(path).unwrap(),
            b"Subject: hi\n\nline one\nline two\n"
        );
    }

    #[test]
    fn without_anonymous_files_a_named_file_in_tmp_is_renamed_into_new() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempfile::tempdir().unwrap();
        let mailbox = bob(root.path());
        let maildir = open_maildir(&mailbox, Some(OWNER)).unwrap();
        let staged = write_staged(maildir, "mx", b"", MESSAGE, Some(OWNER), false).unwrap();
        assert!(
            matches!(staged.written, Written::Named { .. }),
            "{staged:?}"
        );
        let entries = |sub: &str| fs::read_dir(mailbox.path().join(sub)).unwrap().count();
        assert_eq!((entries("tmp"), entries("new")), (1, 0));

        let path = publish(vec![staged]).pop().unwrap().unwrap();

        assert_eq!((entries("tmp"), entries("new")), (0, 1));
        assert_eq!(path.parent(), Some(mailbox.path().join("new").as_path()));
        assert_eq!(
            fs::read(&path).unwrap(),
            b"Subject: hi\n\nline one\nline two\n"
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (4242, 4343, 0o600)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_publisher_delivers_concurrent_messages() {
        let root = tempfile::tempdir().unwrap();
        let publisher = Arc::new(Publisher::default());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (publisher, maildir) = (Arc::clone(&publisher), trusted(root.path()));
                tokio::task::spawn_blocking(move || {
                    publisher.deliver(&maildir, "mx", b"", MESSAGE, None)
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(fs::read_dir(root.path().join("new")).unwrap().count(), 20);
    }

    #[test]
    fn hostname_slash_and_colon_are_escaped() {
        let root = tempfile::tempdir().unwrap();
        let path = deliver(&trusted(root.path()), "a/b:c", b"", MESSAGE).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.contains(".a\\057b\\072c,S="), "{name}");
    }

    #[test]
    fn blocked_directory_is_a_temporary_error() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("blocker");
        fs::write(&blocker, b"a regular file").unwrap();
        // A file where a parent directory should be, and a file where new/ should be.
        fs::create_dir_all(root.path().join("md/tmp")).unwrap();
        fs::write(root.path().join("md/new"), b"not a directory").unwrap();
        for maildir in [
            blocker.join("Maildir"),
            blocker.clone(),
            root.path().join("md"),
        ] {
            let err = deliver(&trusted(&maildir), "mx", PREFIX, MESSAGE).unwrap_err();
            assert!(
                matches!(err, MaildirError::Io { .. }),
                "{maildir:?}: {err:?}"
            );
            assert!(err.is_temporary(), "{maildir:?}");
        }
    }

    /// The owner used by the tests below: not root, not the test process.
    const OWNER: Owner = Owner {
        uid: 4242,
        gid: 4343,
    };

    /// `ROOT/mail/%d/%n/Maildir`, expanded for bob@example.com.
    fn bob(root: &Path) -> MailboxPath {
        expand_template(
            &format!("{}/mail/%d/%n/Maildir", root.display()),
            "bob@example.com",
        )
        .unwrap()
    }

    /// Names, owner and mode of a directory and what is in it, to see that it did not change.
    fn snapshot(dir: &Path) -> Vec<(String, u32, u32, u32)> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::symlink_metadata(dir).unwrap();
        let mut out = vec![(".".to_owned(), meta.uid(), meta.gid(), meta.mode())];
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, meta.uid(), meta.gid(), meta.mode())
            })
            .collect();
        entries.sort();
        out.extend(entries);
        out
    }

    /// A root-owned directory (mode 0750) with one root-owned file: what an attacker
    /// would like mail written into, or given away.
    fn victim(root: &Path) -> PathBuf {
        let victim = root.join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keep"), b"root's").unwrap();
        std::os::unix::fs::chown(&victim, Some(0), Some(0)).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o750)).unwrap();
        victim
    }

    /// Each directory of bob's mailbox path below the mail system's own part.
    const MAILBOX_PARTS: [&str; 6] = [
        "mail/example.com",
        "mail/example.com/bob",
        "mail/example.com/bob/Maildir",
        "mail/example.com/bob/Maildir/new",
        "mail/example.com/bob/Maildir/tmp",
        "mail/example.com/bob/Maildir/cur",
    ];

    #[test]
    fn a_symlink_in_place_of_a_mailbox_directory_is_refused_and_not_followed() {
        for part in MAILBOX_PARTS {
            let root = tempfile::tempdir().unwrap();
            let mailbox = bob(root.path());
            deliver_as(&mailbox, "mx", PREFIX, MESSAGE, Some(OWNER)).unwrap();
            let victim = victim(root.path());
            let before = snapshot(&victim);
            let planted = root.path().join(part);
            fs::rename(&planted, root.path().join("moved-away")).unwrap();
            std::os::unix::fs::symlink(&victim, &planted).unwrap();

            let err = deliver_as(&mailbox, "mx", PREFIX, MESSAGE, Some(OWNER))
                .expect_err(&format!("delivered through a link at {part}"));

            assert!(
                matches!(err, MaildirError::Unsafe { .. }),
                "{part}: {err:?}"
            );
            assert!(err.is_temporary(), "{part}");
            assert_eq!(
                snapshot(&victim),
                before,
                "{part}: the link's target changed"
            );
        }
    }

    #[test]
    fn a_link_planted_where_a_directory_will_be_made_never_gets_its_target_chowned() {
        use std::os::unix::fs::MetadataExt as _;
        for part in MAILBOX_PARTS {
            let root = tempfile::tempdir().unwrap();
            let secret = root.path().join("secret");
            fs::write(&secret, b"root's").unwrap();
            std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
            fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
            let victim = victim(root.path());
            let before = snapshot(&victim);
            let planted = root.path().join(part);
            fs::create_dir_all(planted.parent().unwrap()).unwrap();
            for target in [&secret, &victim, &root.path().join("nowhere")] {
                std::os::unix::fs::symlink(target, &planted).unwrap();
                let err = deliver_as(&bob(root.path()), "mx", PREFIX, MESSAGE, Some(OWNER))
                    .expect_err(&format!("delivered through a link at {part}"));
                assert!(
                    matches!(err, MaildirError::Unsafe { .. }),
                    "{part}: {err:?}"
                );
                fs::remove_file(&planted).unwrap();
            }
            let meta = fs::metadata(&secret).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (0, 0, 0o600),
                "{part}: the link's target was given away"
            );
            assert_eq!(snapshot(&victim), before, "{part}");
        }
    }

    /// Deliveries race a thread that swaps `new/`, then the mailbox directory, with a
    /// link to the victim, atomically (`RENAME_EXCHANGE`), as fast as it can: no
    /// delivery may land in the victim or change it, and each delivery reported done is
    /// in the real `new/`.
    #[test]
    fn deliveries_racing_symlink_swaps_never_touch_the_link_target() {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        const DELIVERIES: usize = 300;
        for part in ["mail/example.com/bob/Maildir/new", "mail/example.com/bob"] {
            let root = tempfile::tempdir().unwrap();
            let mailbox = bob(root.path());
            deliver_as(&mailbox, "mx", PREFIX, MESSAGE, Some(OWNER)).unwrap();
            let victim = victim(root.path());
            let before = snapshot(&victim);
            let real = root.path().join(part);
            let link = root.path().join("link");
            std::os::unix::fs::symlink(&victim, &link).unwrap();

            let done = Arc::new(AtomicBool::new(false));
            let swapper = {
                let (done, real, link) = (Arc::clone(&done), real.clone(), link.clone());
                std::thread::spawn(move || {
                    let mut swaps = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        renameat2(
                            AT_FDCWD,
                            &real,
                            AT_FDCWD,
                            &link,
                            RenameFlags::RENAME_EXCHANGE,
                        )
                        .unwrap();
                        swaps += 1;
                    }
                    // Leave the real directory in its place.
                    if fs::symlink_metadata(&real)
                        .unwrap()
                        .file_type()
                        .is_symlink()
                    {
                        renameat2(
                            AT_FDCWD,
                            &real,
                            AT_FDCWD,
                            &link,
                            RenameFlags::RENAME_EXCHANGE,
                        )
                        .unwrap();
                    }
                    swaps
                })
            };
            let mut delivered = 1;
            for _ in 0..DELIVERIES {
                match deliver_as(&mailbox, "mx", PREFIX, MESSAGE, Some(OWNER)) {
                    Ok(_) => delivered += 1,
                    Err(e) => assert!(e.is_temporary(), "{part}: {e:?}"),
                }
            }
            done.store(true, Ordering::Relaxed);
            let swaps = swapper.join().unwrap();
            assert!(swaps > 0, "{part}: the race never ran");

            assert_eq!(
                snapshot(&victim),
                before,
                "{part}: the link's target changed"
            );
            let new = root.path().join("mail/example.com/bob/Maildir/new");
            assert_eq!(fs::read_dir(new).unwrap().count(), delivered, "{part}");
        }
    }

    /// A thread waits for `cur/` to be made, then puts a link to a root-owned file in its
    /// place, as fast as it can: giving the new directory to its owner must never give
    /// away the file (chown by path would follow the link).
    #[test]
    fn a_directory_swapped_for_a_link_after_mkdir_is_not_chowned_by_path() {
        use std::os::unix::fs::MetadataExt as _;
        const DELIVERIES: usize = 2000;
        let root = tempfile::tempdir().unwrap();
        let mailbox = bob(root.path());
        deliver_as(&mailbox, "mx", PREFIX, MESSAGE, Some(OWNER)).unwrap();
        let secret = root.path().join("secret");
        fs::write(&secret, b"root's").unwrap();
        std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let graveyard = root.path().join("graveyard");
        fs::create_dir(&graveyard).unwrap();
        let cur = root.path().join("mail/example.com/bob/Maildir/cur");
        fs::remove_dir(&cur).unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let attacker = {
            let (done, cur, secret) = (Arc::clone(&done), cur.clone(), secret.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !done.load(Ordering::Relaxed) {
                    if fs::rename(&cur, graveyard.join(swaps.to_string())).is_ok() {
                        let _ = std::os::unix::fs::symlink(&secret, &cur);
                        swaps += 1;
                        std::thread::yield_now();
                        let _ = fs::remove_file(&cur);
                    }
                }
                swaps
            })
        };
        for _ in 0..DELIVERIES {
            let _ = deliver_as(&mailbox, "mx", PREFIX, MESSAGE, Some(OWNER));
        }
        done.store(true, Ordering::Relaxed);
        let swaps = attacker.join().unwrap();
        assert!(swaps > 0, "the race never ran");
        let meta = fs::metadata(&secret).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o600),
            "the link's target was given away ({swaps} swaps)"
        );
    }

    #[test]
    fn crlf_becomes_lf_and_lone_cr_is_kept() {
        assert_eq!(lf(&[b"a\r\nb\r\n"]), b"a\nb\n");
        assert_eq!(lf(&[b"a\rb\n\r\r\n"]), b"a\rb\n\r\n");
        assert_eq!(lf(&[b"x\r", b"\ny"]), b"x\ny", "CRLF split across writes");
        assert_eq!(lf(&[b"x\r", b"y"]), b"x\ry");
        assert_eq!(lf(&[b"x\r", b""]), b"x\r");
        assert_eq!(lf(&[b"x\r"]), b"x\r");
    }
}
