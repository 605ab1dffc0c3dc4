//! Maildir delivery: writes one message into a local mailbox, in `tmp/` then into `new/`,
//! with unique names as the Maildir specification describes
//! (<https://cr.yp.to/proto/maildir.html>). Also expands the Dovecot-style mailbox path
//! template (`/var/vmail/%d/%n/Maildir`).
//!
//! It owns the Maildir files only. It must not decide whether a recipient is local or
//! allowed, nor touch the queue: the caller reports the outcome. Its functions block;
//! callers run them in `spawn_blocking`.
//!
//! **Security.** The recipient address comes from the network. It is lower-cased and each
//! part that goes into a path is refused if it could leave its directory (empty, `.`,
//! `..`, a leading dot, `/`, NUL or another control character), so a template can never
//! point outside the tree it names. The template comes from the operator's config and is
//! trusted, as is the directory tree under it: it must belong to the mail system, not to
//! customers, because directories in it are followed. Files are created with mode 0600
//! (without a name, `O_TMPFILE`, then linked into `new/`, which never replaces an
//! existing name; or with `O_EXCL` in `tmp/` where `O_TMPFILE` is unavailable),
//! directories with mode 0700.

use std::fs;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::group_commit::GroupCommit;

const TMP: &str = "tmp";
const NEW: &str = "new";
const CUR: &str = "cur";
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Deliveries made by this process: the `Q<n>` part of unique names, so two deliveries
/// in the same microsecond still get different names.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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
    /// too. Only an unsafe address is permanent.
    pub fn is_temporary(&self) -> bool {
        match self {
            MaildirError::Io { .. } | MaildirError::BadTemplate(_) => true,
            MaildirError::UnsafeAddress(_) => false,
        }
    }
}

/// Expands a Dovecot-style template: `%d` domain, `%n` local part, `%u` full address,
/// `%%` a literal `%`. The address is lower-cased first. Refuses (`UnsafeAddress`) local
/// parts or domains that are empty, contain `/`, NUL or a control character, or start
/// with `.` (so `.` and `..` too), so the result never escapes the template's directory.
pub fn expand_template(template: &str, address: &str) -> Result<PathBuf, MaildirError> {
    let address = address.to_lowercase();
    let (local, domain) = split_address(&address)?;
    let mut path = String::with_capacity(template.len() + address.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            path.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => path.push_str(domain),
            Some('n') => path.push_str(local),
            Some('u') => path.push_str(&address),
            Some('%') => path.push('%'),
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
    Ok(PathBuf::from(path))
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

/// Delivers one message into the Maildir at `maildir`, creating `tmp/`, `new/` and `cur/`
/// (mode 0700) as needed. Writes `prefix` (e.g. `Return-Path:` and `Delivered-To:`)
/// then `message` to `tmp/<unique>` with CRLF line endings turned into LF (the Unix
/// mailbox convention Dovecot expects), fsyncs it, renames it to
/// `new/<unique>,S=<size>` and fsyncs `new/`. Returns the final path.
///
/// Blocking: run it in `spawn_blocking`.
pub fn deliver(
    maildir: &Path,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
) -> Result<PathBuf, MaildirError> {
    deliver_as(maildir, hostname, prefix, message, None)
}

/// The owner Maildir files and the directories made for them get, so that the IMAP
/// server (Dovecot, running as the mail user) can read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// [`deliver`], with the new file and any directory it creates owned by `owner`.
pub fn deliver_as(
    maildir: &Path,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Result<PathBuf, MaildirError> {
    let staged = stage(maildir, hostname, prefix, message, owner)?;
    let new_dir = staged.new_dir().to_owned();
    let new_path = staged.rename()?;
    // If this fails the message may or may not survive a crash; the error makes the
    // queue retry, which at worst delivers it twice, never loses it.
    sync_dir(&new_dir).map_err(|source| MaildirError::Io {
        path: new_dir,
        source,
    })?;
    Ok(new_path)
}

/// A message written and fsynced in `tmp/`, waiting to be renamed into `new/`.
#[derive(Debug)]
pub struct Staged {
    written: Written,
    new_path: PathBuf,
}

/// Where a staged message is.
#[derive(Debug)]
enum Written {
    /// In `tmp/` under this name.
    Named(PathBuf),
    /// In a file without a name yet (`O_TMPFILE`, made in `tmp/`), linked into `new/` when
    /// published: no `tmp/` entry, so parallel deliveries do not queue on the lock of
    /// `tmp/` while the file system allocates each new inode (see `docs/benchmarks.md`).
    Anonymous(File),
}

impl Staged {
    fn new_dir(&self) -> &Path {
        self.new_path.parent().unwrap_or(Path::new("."))
    }

    /// Gives the file its name in `new/`; the caller fsyncs `new/`. On failure the file in
    /// `tmp/` is removed (an anonymous file just goes away).
    fn rename(self) -> Result<PathBuf, MaildirError> {
        let named = match &self.written {
            Written::Named(tmp_path) => fs::rename(tmp_path, &self.new_path).inspect_err(|_| {
                let _ = fs::remove_file(tmp_path);
            }),
            Written::Anonymous(file) => link_anonymous(file, &self.new_path).inspect_err(|e| {
                // No /proc, or a file system that cannot link it: name files in tmp/
                // from now on. This delivery is retried.
                if unsupported(e, &[nix::libc::ENOENT, nix::libc::EPERM, nix::libc::EXDEV]) {
                    ANONYMOUS_FILES.store(false, Ordering::Relaxed);
                }
            }),
        };
        match named {
            Ok(()) => Ok(self.new_path),
            Err(source) => Err(MaildirError::Io {
                path: self.new_path,
                source,
            }),
        }
    }
}

/// The first half of a delivery, run in parallel with others: creates the Maildir's
/// directories as needed, writes the message to `tmp/` and fsyncs it.
pub fn stage(
    maildir: &Path,
    hostname: &str,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Result<Staged, MaildirError> {
    for sub in [TMP, NEW, CUR] {
        create_dir_durably(&maildir.join(sub), owner)?;
    }
    let unique = unique_name(hostname);
    let tmp_dir = maildir.join(TMP);
    let (written, size) = match write_anonymous_file(&tmp_dir, prefix, message, owner) {
        Some(anonymous) => anonymous?,
        None => {
            let tmp_path = tmp_dir.join(&unique);
            let size = write_new_file(&tmp_path, prefix, message, owner)?;
            (Written::Named(tmp_path), size)
        }
    };
    let new_path = maildir.join(NEW).join(format!("{unique},S={size}"));
    Ok(Staged { written, new_path })
}

/// The second half, for a batch of staged deliveries (group commit): renames each into
/// its `new/`, then fsyncs each `new/` directory once, however many messages it got.
/// One result per staged delivery, in order: the final path, or the error.
pub fn publish(batch: Vec<Staged>) -> Vec<Result<PathBuf, MaildirError>> {
    let mut results: Vec<Result<PathBuf, MaildirError>> =
        batch.into_iter().map(Staged::rename).collect();
    let mut dirs: Vec<PathBuf> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|path| path.parent().map(Path::to_owned))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = sync_dir(&dir) {
            for result in &mut results {
                if matches!(result, Ok(path) if path.parent() == Some(dir.as_path())) {
                    // io::Error is not Clone: one like it for each delivery.
                    *result = Err(MaildirError::Io {
                        path: dir.clone(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    });
                }
            }
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
        maildir: &Path,
        hostname: &str,
        prefix: &[u8],
        message: &[u8],
        owner: Option<Owner>,
    ) -> Result<PathBuf, MaildirError> {
        let staged = stage(maildir, hostname, prefix, message, owner)?;
        self.batches
            .submit_blocking(staged)
            .map_err(|e| MaildirError::Io {
                // A batch that panicked: like an I/O error, so the queue retries.
                path: maildir.to_owned(),
                source: io::Error::other(e.to_string()),
            })?
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

/// Writes the message to a new file without a name in `dir` (`O_TMPFILE`), fsyncs it, and
/// returns it with its size. `None` when such files are not available (then or before).
fn write_anonymous_file(
    dir: &Path,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Option<Result<(Written, u64), MaildirError>> {
    if !ANONYMOUS_FILES.load(Ordering::Relaxed) {
        return None;
    }
    let opened = OpenOptions::new()
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(dir);
    let io_err = |source| MaildirError::Io {
        path: dir.to_owned(),
        source,
    };
    let file = match opened {
        Ok(file) => file,
        // Kernels or file systems without it: fall back for good.
        Err(e) if unsupported(&e, &[nix::libc::EISDIR, nix::libc::EINVAL]) => {
            ANONYMOUS_FILES.store(false, Ordering::Relaxed);
            return None;
        }
        Err(e) => return Some(Err(io_err(e))),
    };
    let written = owner
        .map_or(Ok(()), |o| {
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
        })
        .and_then(|()| write_lf(&file, prefix, message));
    Some(
        written
            .map(|size| (Written::Anonymous(file), size))
            .map_err(io_err),
    )
}

/// Whether `error` says the operation is not supported: `EOPNOTSUPP` or one of `also`.
fn unsupported(error: &io::Error, also: &[i32]) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| code == nix::libc::EOPNOTSUPP || also.contains(&code))
}

/// Links a file made with `O_TMPFILE` to `path`, through its `/proc/self/fd` entry (which
/// needs no privilege, unlike `AT_EMPTY_PATH`). Fails if `path` exists.
fn link_anonymous(file: &File, path: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use std::os::fd::AsRawFd;
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        AT_FDCWD,
        from.as_str(),
        AT_FDCWD,
        path,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

/// Creates `path` (never overwriting anything), writes the message with LF endings and
/// fsyncs it. Returns the number of bytes written. On failure the file is removed.
fn write_new_file(
    path: &Path,
    prefix: &[u8],
    message: &[u8],
    owner: Option<Owner>,
) -> Result<u64, MaildirError> {
    let io_err = |source| MaildirError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err)?;
    if let Some(o) = owner
        && let Err(e) = std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
    {
        let _ = fs::remove_file(path);
        return Err(io_err(e));
    }
    write_lf(&file, prefix, message).map_err(|e| {
        let _ = fs::remove_file(path);
        io_err(e)
    })
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

/// Makes sure `dir` exists as a directory, creating it and missing parents with mode
/// 0700. Each new directory's parent is fsynced, so a mailbox made for a delivery
/// survives a crash along with the message.
fn create_dir_durably(dir: &Path, owner: Option<Owner>) -> Result<(), MaildirError> {
    // Almost always there already. Looking first takes no lock, where a `mkdir` that
    // fails with EEXIST takes the parent's exclusively: every delivery to one Maildir
    // would queue on it three times.
    if dir.is_dir() {
        return Ok(());
    }
    let io_err = |source| MaildirError::Io {
        path: dir.to_owned(),
        source,
    };
    match create_one_dir(dir, owner) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = parent_of(dir).ok_or_else(|| io_err(e))?;
            create_dir_durably(parent, owner)?;
            create_one_dir(dir, owner).map_err(io_err)
        }
        result => result.map_err(io_err),
    }
}

/// Creates one directory (owned by `owner`), or accepts it if it is already there as a
/// directory; an existing directory keeps its owner.
fn create_one_dir(dir: &Path, owner: Option<Owner>) -> io::Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            if let Some(o) = owner {
                std::os::unix::fs::chown(dir, Some(o.uid), Some(o.gid))?;
            }
            sync_dir(parent_of(dir).unwrap_or(Path::new(".")))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if dir.is_dir() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "exists and is not a directory",
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// The parent directory, or `None` at the root or the start of a relative path.
fn parent_of(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        assert_eq!(path, Path::new("/var/vmail/example.com/bob/Maildir"));
        let path = expand_template("/srv/%u/100%%", "bob@example.com").unwrap();
        assert_eq!(path, Path::new("/srv/bob@example.com/100%"));
    }

    #[test]
    fn template_errors_are_reported() {
        for bad in ["/var/%x", "/var/mail/%"] {
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
        assert_eq!(path, Path::new("/m/example.com/\"a@b\""));
    }

    #[test]
    fn delivery_creates_dirs_and_lands_in_new_with_lf_endings() {
        let root = tempfile::tempdir().unwrap();
        let maildir = root.path().join("example.com/bob/Maildir");

        let path = deliver(&maildir, "mx.example.com", PREFIX, MESSAGE).unwrap();

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
    fn files_and_new_directories_belong_to_the_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("example.com/u/Maildir");
        let owner = Owner {
            uid: 4242,
            gid: 4343,
        };
        let path = deliver_as(&maildir, "host", b"", b"x\r\n", Some(owner)).unwrap();
        for p in [
            path.as_path(),
            &maildir,
            &maildir.join("new"),
            &dir.path().join("example.com"),
        ] {
            let meta = std::fs::metadata(p).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{}", p.display());
        }
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_ne!(meta.uid(), 4242, "an existing directory keeps its owner");
    }

    #[test]
    fn two_deliveries_get_different_names() {
        let root = tempfile::tempdir().unwrap();
        let first = deliver(root.path(), "mx", b"", MESSAGE).unwrap();
        let second = deliver(root.path(), "mx", b"", MESSAGE).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read_dir(root.path().join("new")).unwrap().count(), 2);
    }

    #[test]
    fn a_published_batch_lands_in_new_of_each_maildir_and_nothing_stays_in_tmp() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let batch = vec![
            stage(&a, "mx", b"", MESSAGE, None).unwrap(),
            stage(&b, "mx", b"", MESSAGE, None).unwrap(),
            stage(&a, "mx", b"", MESSAGE, None).unwrap(),
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
        let staged = stage(root.path(), "mx", b"", MESSAGE, None).unwrap();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_publisher_delivers_concurrent_messages() {
        let root = tempfile::tempdir().unwrap();
        let publisher = Arc::new(Publisher::default());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (publisher, maildir) = (Arc::clone(&publisher), root.path().to_owned());
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
        let path = deliver(root.path(), "a/b:c", b"", MESSAGE).unwrap();
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
            let err = deliver(&maildir, "mx", PREFIX, MESSAGE).unwrap_err();
            assert!(
                matches!(err, MaildirError::Io { .. }),
                "{maildir:?}: {err:?}"
            );
            assert!(err.is_temporary(), "{maildir:?}");
        }
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
