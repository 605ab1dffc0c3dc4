//! The passwd-file: the backend that reads it ([`PasswdFile`]); its format and parser
//! (`format`) and the edits `postern user add|passwd|del|list` make (`edit`) live
//! beside it.
//!
//! One account a line, `user@example.com:{SCHEME}hash[:uid:gid:gecos:home:shell:extra_fields]`,
//! so that the same file can serve Dovecot. Blank lines and lines starting with `#` are
//! ignored by the parser and kept verbatim by the edits. The parser is strict: a line it
//! cannot read, or a login written twice (ignoring case), makes the whole file unusable,
//! because guessing which line was meant could let the wrong password in.
//!
//! [`PasswdFile`] stats the file on every call and reloads it when it changed, so edits take
//! effect without a restart. Edits replace the file atomically (temporary file, fsync,
//! rename, fsync of the directory), keeping its mode and owner; two edits running at the same
//! moment can still lose one of them, as with `vipw` without its lock.

mod edit;
mod format;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::recently_verified::RecentlyVerified;
use super::{Account, AuthError, Credentials, Verification, canonical, scheme};

pub use edit::{add_user, delete_user, list_users, set_password};
use format::parse_numbered;
pub use format::{Entry, parse};

pub(super) fn io_error(path: &Path, source: io::Error) -> PasswdError {
    PasswdError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Why a passwd-file could not be read or changed. The messages are written for the person
/// running `postern user` or reading the log.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A line of the file is not valid.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// `user add` for a login that is already in the file.
    #[error("user {0} already exists")]
    UserExists(String),
    /// An edit of a login that is not in the file.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// The login cannot be written to the file.
    #[error("invalid login {0:?}: {1}")]
    InvalidLogin(String, String),
    /// An empty password was given.
    #[error("the password must not be empty")]
    EmptyPassword,
}

/// The passwd-file backend.
///
/// Reloads the file automatically when it changed since the last load (it stats the file on
/// each call), so `postern user add` takes effect without a restart. A missing file means "no
/// users". Any other read or parse error makes lookups and verifications return
/// [`AuthError::Unavailable`], never "no such user": a broken file gives temporary failures.
pub struct PasswdFile {
    path: PathBuf,
    cache: RwLock<Cache>,
    access: Arc<dyn FileAccess>,
}

impl PasswdFile {
    /// A backend for the file at `path`. Nothing is read until the first call.
    pub fn new(path: impl Into<PathBuf>) -> PasswdFile {
        PasswdFile::with_access(path, Arc::new(DirectAccess))
    }

    /// A backend that reads its file through `access`.
    pub fn with_access(path: impl Into<PathBuf>, access: Arc<dyn FileAccess>) -> PasswdFile {
        PasswdFile {
            path: path.into(),
            cache: RwLock::new(Cache::empty()),
            access,
        }
    }

    /// The file this backend reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file now, whether or not it changed, and returns how many accounts it holds
    /// (0 for a missing file). On error, later calls answer [`AuthError::Unavailable`] until
    /// the file is fixed.
    pub fn reload(&self) -> Result<usize, PasswdError> {
        let observed = self.observe()?;
        let (cache, outcome) = self.load(observed, SystemTime::now());
        self.store(cache);
        outcome
    }

    /// The accounts as of the file's current state, reloading it when it changed.
    fn users(&self) -> Result<Arc<Users>, AuthError> {
        let observed = self
            .observe()
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        if let Some(users) = self.cached(observed) {
            return users;
        }
        let (cache, _) = self.load(observed, SystemTime::now());
        let users = cache.users.clone();
        self.store(cache);
        users.map_err(AuthError::Unavailable)
    }

    /// The cached accounts, if the cache was made from the file as it is now.
    fn cached(&self, observed: Observed) -> Option<Result<Arc<Users>, AuthError>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        if cache.valid_for != Some(observed) {
            return None;
        }
        Some(cache.users.clone().map_err(AuthError::Unavailable))
    }

    fn store(&self, cache: Cache) {
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = cache;
    }
}

impl fmt::Debug for PasswdFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswdFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Credentials for PasswdFile {
    fn verify(&self, login: &str, password: &str) -> Result<Verification, AuthError> {
        let users = self.users()?;
        let user = users
            .get(&canonical(login))
            .filter(|_| !password.is_empty());
        let Some(user) = user else {
            // Spend as long as for a real user, so that timing does not tell them apart.
            let _ = scheme::verify(UNKNOWN_USER_HASH, password);
            return Ok(Verification::Rejected);
        };
        let now = Instant::now();
        if user.recently_verified.matches(password, now) {
            return Ok(Verification::Accepted);
        }
        match scheme::verify(&user.hash, password) {
            Ok(true) => {
                user.recently_verified.remember(password, now);
                Ok(Verification::Accepted)
            }
            Ok(false) => Ok(Verification::Rejected),
            Err(source) => Err(AuthError::BadHash {
                login: user.login.clone(),
                source,
            }),
        }
    }

    fn lookup(&self, address: &str) -> Result<Option<Account>, AuthError> {
        let users = self.users()?;
        let account = users.get(&canonical(address)).map(|user| Account {
            login: user.login.clone(),
            limits: user.limits,
            owner: user.owner,
        });
        Ok(account)
    }

    fn domains_owned_by(&self, uid: u32) -> Result<Vec<String>, AuthError> {
        let users = self.users()?;
        let mut domains: Vec<String> = users
            .values()
            .filter(|user| user.owner.is_some_and(|(owner, _)| owner == uid))
            .filter_map(|user| user.login.rsplit_once('@').map(|(_, d)| d.to_string()))
            .collect();
        domains.sort();
        domains.dedup();
        Ok(domains)
    }
}

/// A SHA-512-crypt hash of a random password nobody knows, checked for unknown logins.
const UNKNOWN_USER_HASH: &str = "{SHA512-CRYPT}$6$9y90oIN0QA4DHT4e$sNMUC1PqkpBsdJnSvBA4eJ1gOeaoS.RVln/GOOJveEvxHXMPToyCcOBKVtLr7tgTvZGvQ7Ij9BHzIvrQ/G6tx0";

/// A file changed less than this before it was read may change again within the same
/// timestamp tick, unseen by a later stat; such a load is not trusted and is redone on the
/// next call. Timestamp ticks are a few milliseconds on Linux, 2 s on FAT.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The accounts by canonical login.
type Users = HashMap<String, User>;

/// What the backend keeps of an account.
struct User {
    /// The canonical (lower-case) login.
    login: String,
    hash: String,
    limits: super::AccountLimits,
    owner: Option<(u32, u32)>,
    /// Belongs to this load of the file: a change to the file forgets it.
    recently_verified: RecentlyVerified,
}

/// What a stat of the passwd-file showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    Missing,
    Present(Stamp),
}

/// Enough of a file's metadata to notice any rewrite: in place (size, times) or by rename
/// (device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// How the backend reaches its file: directly, or through the privileged reader
/// (`auth::reader`) once the server has dropped root and the file is root-only.
pub trait FileAccess: Send + Sync {
    /// The file's stamp, or `None` when it does not exist.
    fn stat(&self, path: &Path) -> io::Result<Option<Stamp>>;
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// Plain file-system access, with the process's own permissions.
pub struct DirectAccess;

impl FileAccess for DirectAccess {
    fn stat(&self, path: &Path) -> io::Result<Option<Stamp>> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(stamp(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        match fs::read_to_string(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            other => other,
        }
    }
}

/// The last load: its accounts or the reason the file is unusable, and the file state it is
/// valid for (`None`: reload on the next call).
struct Cache {
    valid_for: Option<Observed>,
    users: Result<Arc<Users>, String>,
}

impl Cache {
    fn empty() -> Cache {
        Cache {
            valid_for: None,
            users: Ok(Arc::default()),
        }
    }
}

impl PasswdFile {
    /// Stats the file; only a missing file (`ENOENT`) counts as "no users".
    fn observe(&self) -> Result<Observed, PasswdError> {
        match self.access.stat(&self.path) {
            Ok(Some(stamp)) => Ok(Observed::Present(stamp)),
            Ok(None) => Ok(Observed::Missing),
            Err(source) => Err(io_error(&self.path, source)),
        }
    }

    /// Reads and parses the file seen as `observed`.
    fn load(
        &self,
        observed: Observed,
        loaded_at: SystemTime,
    ) -> (Cache, Result<usize, PasswdError>) {
        let text = self
            .access
            .read(&self.path)
            .map_err(|source| io_error(&self.path, source));
        load(&self.path, text, observed, loaded_at)
    }
}

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

/// Reads and parses the file seen as `observed`; returns the new cache and, for `reload`,
/// the number of accounts or the error (which is also logged).
fn load(
    path: &Path,
    text: Result<String, PasswdError>,
    observed: Observed,
    loaded_at: SystemTime,
) -> (Cache, Result<usize, PasswdError>) {
    let outcome = text.and_then(|text| index(&text, path));
    let valid_for = match (&outcome, observed) {
        // A read error may be passing (EMFILE, EIO): retry on the next call.
        (Err(PasswdError::Io { .. }), _) => None,
        (_, Observed::Present(stamp)) if is_racy(&stamp, loaded_at) => None,
        _ => Some(observed),
    };
    let (users, count) = match outcome {
        Ok(users) => {
            let count = users.len();
            (Ok(Arc::new(users)), Ok(count))
        }
        Err(e) => {
            tracing::error!(event = "passwd_file_unusable", path = %path.display(), error = %e);
            (Err(e.to_string()), Err(e))
        }
    };
    (Cache { valid_for, users }, count)
}

/// Whether a load keyed on `stamp` could miss a later change: one made within the same
/// timestamp tick as the change that `stamp` records. The inode change time is used because
/// no one can set it back (`touch -d`, `rsync -t` can set the modification time).
fn is_racy(stamp: &Stamp, now: SystemTime) -> bool {
    let (secs, nanos) = stamp.ctime;
    let changed = u64::try_from(secs)
        .ok()
        .zip(u32::try_from(nanos).ok())
        .and_then(|(secs, nanos)| UNIX_EPOCH.checked_add(Duration::new(secs, nanos)));
    match changed.map(|changed| now.duration_since(changed)) {
        Some(Ok(age)) => age < RACY_WINDOW,
        // Changed "in the future" (clock skew) or unrepresentable: never trust the cache.
        _ => true,
    }
}

/// Parses the text into accounts by canonical login.
fn index(text: &str, path: &Path) -> Result<Users, PasswdError> {
    let lines = parse_numbered(text, &path.display().to_string())?;
    let users = lines
        .into_iter()
        .map(|line| {
            let login = canonical(&line.entry.login);
            // Fields after the hash: uid, gid, gecos, home, shell, extra fields.
            let extra = line
                .entry
                .rest
                .get(5..)
                .map(|f| f.join(":"))
                .unwrap_or_default();
            let number = |i: usize| line.entry.rest.get(i).and_then(|f| f.trim().parse().ok());
            let user = User {
                login: login.clone(),
                hash: line.entry.hash,
                limits: super::AccountLimits::from_extra_fields(&extra),
                owner: number(0).zip(number(1)),
                recently_verified: RecentlyVerified::default(),
            };
            (login, user)
        })
        .collect();
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SchemeError;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    // `openssl passwd -6 -salt saltsalt secret`
    const SECRET: &str = "{SHA512-CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    // `openssl passwd -6 -salt saltsalt new-secret` (same length as SECRET)
    const NEW_SECRET: &str = "{SHA512-CRYPT}$6$saltsalt$oMbAuMkPD4LcgeuAaI57Y7oHI0G2C6nkDK7GJ9wr4gPfI2ShdAuNB8Ti4jd6c3g1U3I7ADdPq0Qvm.CyYpLUN/";

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    fn parse_error(text: &str) -> (usize, String) {
        match parse(text, "/etc/postern/passwd") {
            Err(e @ PasswdError::Parse { line, .. }) => (line, e.to_string()),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn accepted(backend: &PasswdFile, login: &str, password: &str) -> bool {
        backend.verify(login, password).unwrap() == Verification::Accepted
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn per_account_limits_come_from_the_extra_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(
            &path,
            "big@example.com:{PLAIN}x:::::: postern_messages_per_hour=500 userdb_quota_rule=*:storage=1G\nsmall@example.com:{PLAIN}x\n",
        )
        .unwrap();
        let users = PasswdFile::new(&path);
        let big = users.lookup("big@example.com").unwrap().unwrap();
        assert_eq!(big.limits.messages_per_hour, Some(500));
        assert_eq!(big.limits.recipients_per_hour, None);
        let small = users.lookup("small@example.com").unwrap().unwrap();
        assert_eq!(small.limits, super::super::AccountLimits::default());
        assert_eq!(small.owner, None);
        fs::write(&path, "v@example.com:{PLAIN}x:5000:5001::/var/vmail/v::\n").unwrap();
        let users = PasswdFile::new(&path);
        assert_eq!(
            users.lookup("v@example.com").unwrap().unwrap().owner,
            Some((5000, 5001))
        );
    }

    #[test]
    fn parses_accounts_comments_blank_lines_and_extra_fields() {
        let text = "# accounts\n\
                    \n\
                    a@example.com:{PLAIN}x\n   \n\
                    B@Example.com:$6$s$h:1000:1000::/home/b::userdb_quota_rule=*:storage=1G\r\n\
                    c@example.com:{BLF-CRYPT}$2y$05$abc";
        let entries = parse(text, "p").unwrap();
        let logins: Vec<_> = entries.iter().map(|e| e.login.as_str()).collect();
        assert_eq!(logins, ["a@example.com", "B@Example.com", "c@example.com"]);
        assert_eq!(entries[0].hash, "{PLAIN}x");
        assert!(entries[0].rest.is_empty());
        assert_eq!(entries[1].hash, "$6$s$h");
        assert_eq!(
            entries[1].rest,
            [
                "1000",
                "1000",
                "",
                "/home/b",
                "",
                "userdb_quota_rule=*",
                "storage=1G"
            ]
        );
        assert_eq!(entries[2].hash, "{BLF-CRYPT}$2y$05$abc");
    }

    #[test]
    fn parse_errors_name_the_file_and_line() {
        let ok = "# header\na@example.com:{PLAIN}x\n";
        let (line, msg) = parse_error(&format!("{ok}\nno-colon-here\n"));
        assert_eq!(line, 4);
        assert!(msg.starts_with("/etc/postern/passwd:4: "), "{msg}");
        assert!(msg.contains("no ':'"), "{msg}");

        let (line, msg) = parse_error(&format!("{ok}:{{PLAIN}}x\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("empty login"), "{msg}");

        let (line, msg) = parse_error(&format!("{ok}b@example.com:\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("empty password hash"), "{msg}");

        let (line, msg) = parse_error(&format!("{ok}b@example.com::1000\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("empty password hash"), "{msg}");

        let (line, msg) = parse_error(&format!("{ok}b @example.com:{{PLAIN}}x\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("whitespace"), "{msg}");
    }

    #[test]
    fn duplicate_logins_are_errors_ignoring_case() {
        let (line, msg) = parse_error("a@example.com:{PLAIN}x\n#\nA@EXAMPLE.com:{PLAIN}y\n");
        assert_eq!(line, 3);
        assert!(msg.contains("duplicate") && msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn entry_debug_hides_the_hash() {
        let entries = parse("a@example.com:{PLAIN}hunter2\n", "p").unwrap();
        assert!(!format!("{entries:?}").contains("hunter2"));
    }

    #[test]
    fn verifies_and_looks_up_case_insensitively() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(&path, &format!("Alice@Example.COM:{SECRET}:1000:1000\n"));
        let backend = PasswdFile::new(&path);
        assert!(accepted(&backend, "alice@example.com", "secret"));
        assert!(accepted(&backend, "ALICE@example.com", "secret"));
        assert!(!accepted(&backend, "alice@example.com", "Secret"));
        assert!(!accepted(&backend, "alice@example.com", ""));
        assert!(!accepted(&backend, "bob@example.com", "secret"));
        let account = backend.lookup("aLiCe@eXample.com").unwrap();
        assert_eq!(
            account,
            Some(Account {
                login: "alice@example.com".into(),
                limits: Default::default(),
                owner: Some((1000, 1000)),
            })
        );
        assert_eq!(backend.lookup("bob@example.com").unwrap(), None);
        assert_eq!(backend.reload().unwrap(), 1);
    }

    #[test]
    fn reloads_when_the_file_changes() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(&path, &format!("a@example.com:{SECRET}\n"));
        let backend = PasswdFile::new(&path);
        assert!(accepted(&backend, "a@example.com", "secret"));
        // Rewritten in place, same size: only the times (and the racy check) show it.
        write(&path, &format!("a@example.com:{NEW_SECRET}\n"));
        assert!(accepted(&backend, "a@example.com", "new-secret"));
        assert!(!accepted(&backend, "a@example.com", "secret"));
        // Replaced by rename, as `postern user` does.
        set_password(&path, "a@example.com", "third").unwrap();
        assert!(accepted(&backend, "a@example.com", "third"));
        add_user(&path, "b@example.com", "bee").unwrap();
        assert!(accepted(&backend, "b@example.com", "bee"));
        delete_user(&path, "a@example.com").unwrap();
        assert_eq!(backend.lookup("a@example.com").unwrap(), None);
        // "third" verified a moment ago: the change must have forgotten that too.
        assert!(!accepted(&backend, "a@example.com", "third"));
    }

    #[test]
    fn only_loads_of_recently_changed_files_are_racy() {
        let stamp_at = |secs: i64, nanos: i64| Stamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (0, 0),
            ctime: (secs, nanos),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!is_racy(&stamp_at(999_990, 0), now));
        assert!(!is_racy(&stamp_at(999_997, 999_999_999), now));
        assert!(is_racy(&stamp_at(999_998, 1), now));
        assert!(is_racy(&stamp_at(1_000_000, 0), now));
        assert!(is_racy(&stamp_at(1_000_005, 0), now));
        assert!(is_racy(&stamp_at(-1, 0), now));
        assert!(is_racy(&stamp_at(999_990, -1), now));
    }

    #[test]
    fn an_unchanged_file_is_served_from_the_cache() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(&path, "a@example.com:{PLAIN}x\n");
        let backend = PasswdFile::new(&path);
        assert_eq!(backend.reload().unwrap(), 1);
        // Just written: racy, so not trusted yet.
        assert_eq!(backend.cache.read().unwrap().valid_for, None);
        let observed = backend.observe().unwrap();
        assert!(backend.cached(observed).is_none());

        // Loaded a while after the change: trusted while the stamp stays the same.
        let later = SystemTime::now() + Duration::from_secs(10);
        let (cache, count) = backend.load(observed, later);
        assert_eq!(count.unwrap(), 1);
        assert_eq!(cache.valid_for, Some(observed));
        backend.store(cache);
        let users = backend.cached(backend.observe().unwrap()).unwrap().unwrap();
        assert!(users.contains_key("a@example.com"));

        // Any change of the file (here its mode, so only the ctime moves) invalidates it.
        // The ctime moves in the file system's clock ticks: change the mode until it has.
        let ctime = |p: &Path| {
            let meta = fs::metadata(p).unwrap();
            (meta.ctime(), meta.ctime_nsec())
        };
        let before = ctime(&path);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctime(&path) == before {
            assert!(Instant::now() < deadline, "the ctime never moved");
            fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
            fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        }
        assert!(backend.cached(backend.observe().unwrap()).is_none());
    }

    #[test]
    fn a_missing_file_means_no_users_until_it_appears() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        let backend = PasswdFile::new(&path);
        assert_eq!(backend.lookup("a@example.com").unwrap(), None);
        assert_eq!(
            backend.verify("a@example.com", "secret").unwrap(),
            Verification::Rejected
        );
        assert_eq!(backend.reload().unwrap(), 0);
        write(&path, &format!("a@example.com:{SECRET}\n"));
        assert!(accepted(&backend, "a@example.com", "secret"));
    }

    #[test]
    fn an_unreadable_file_is_unavailable_not_empty() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        fs::create_dir(&path).unwrap();
        let backend = PasswdFile::new(&path);
        assert!(matches!(
            backend.lookup("a@example.com"),
            Err(AuthError::Unavailable(_))
        ));
        assert!(matches!(
            backend.verify("a@example.com", "secret"),
            Err(AuthError::Unavailable(_))
        ));
        assert!(matches!(backend.reload(), Err(PasswdError::Io { .. })));
    }

    #[test]
    fn a_malformed_file_is_unavailable_until_fixed() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(&path, &format!("a@example.com:{SECRET}\n"));
        let backend = PasswdFile::new(&path);
        assert!(accepted(&backend, "a@example.com", "secret"));
        write(&path, &format!("a@example.com:{SECRET}\nbroken line\n"));
        match backend.lookup("a@example.com") {
            Err(AuthError::Unavailable(msg)) => assert!(
                msg.ends_with(":2: expected LOGIN:{SCHEME}HASH, found no ':'"),
                "{msg}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            backend.verify("a@example.com", "secret"),
            Err(AuthError::Unavailable(_))
        ));
        assert!(matches!(
            backend.reload(),
            Err(PasswdError::Parse { line: 2, .. })
        ));
        write(&path, &format!("a@example.com:{SECRET}\n"));
        assert!(accepted(&backend, "a@example.com", "secret"));
    }

    #[test]
    fn an_unusable_hash_is_an_error_for_that_user_only() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(
            &path,
            &format!("a@example.com:{SECRET}\nb@example.com:{{SSHA}}abc\n"),
        );
        let backend = PasswdFile::new(&path);
        assert!(accepted(&backend, "a@example.com", "secret"));
        match backend.verify("B@example.com", "secret") {
            Err(AuthError::BadHash {
                login,
                source: SchemeError::UnknownScheme(_),
            }) => {
                assert_eq!(login, "b@example.com");
            }
            other => panic!("{other:?}"),
        }
        assert!(backend.lookup("b@example.com").unwrap().is_some());
    }

    #[test]
    fn add_set_password_delete_round_trip() {
        let dir = temp_dir();
        let path = dir.path().join("etc/postern/passwd");
        add_user(&path, "Alice@Example.com", "first").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(list_users(&path).unwrap(), ["alice@example.com"]);
        let backend = PasswdFile::new(&path);
        assert!(accepted(&backend, "alice@example.com", "first"));

        assert!(matches!(
            add_user(&path, "ALICE@example.com", "again"),
            Err(PasswdError::UserExists(login)) if login == "alice@example.com"
        ));
        set_password(&path, "ALICE@EXAMPLE.COM", "second").unwrap();
        assert!(accepted(&backend, "alice@example.com", "second"));
        assert!(!accepted(&backend, "alice@example.com", "first"));

        delete_user(&path, "alice@example.com").unwrap();
        assert!(list_users(&path).unwrap().is_empty());
        assert!(!accepted(&backend, "alice@example.com", "second"));
        assert!(matches!(
            delete_user(&path, "alice@example.com"),
            Err(PasswdError::NoSuchUser(_))
        ));
        assert!(matches!(
            set_password(&path, "alice@example.com", "x"),
            Err(PasswdError::NoSuchUser(_))
        ));
    }

    #[test]
    fn edits_keep_comments_other_lines_and_fields_verbatim() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        let original = "# managed by hand\n\
                        a@example.com:{PLAIN}x:1000:1000::/home/a::userdb_quota_rule=*:storage=1G\r\n\
                        \n\
                        # the next one is Bob\n\
                        Bob@example.com:{PLAIN}y\n\
                        c@example.com:{PLAIN}z";
        write(&path, original);

        add_user(&path, "d@example.com", "dee").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("{original}\nd@example.com:{{SHA512-CRYPT}}$6$")),
            "{text}"
        );
        assert_eq!(
            list_users(&path).unwrap(),
            [
                "a@example.com",
                "Bob@example.com",
                "c@example.com",
                "d@example.com"
            ]
        );

        delete_user(&path, "BOB@example.com").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                "# managed by hand\n\
             a@example.com:{PLAIN}x:1000:1000::/home/a::userdb_quota_rule=*:storage=1G\r\n\
             \n\
             # the next one is Bob\n\
             c@example.com:{PLAIN}z\n\
             d@example.com:"
            ),
            "{text}"
        );

        set_password(&path, "A@example.com", "new").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let line = text.split('\n').nth(1).unwrap();
        assert!(
            line.starts_with("a@example.com:{SHA512-CRYPT}$6$"),
            "{line}"
        );
        assert!(
            line.ends_with(":1000:1000::/home/a::userdb_quota_rule=*:storage=1G\r"),
            "{line}"
        );
        assert!(text.starts_with("# managed by hand\n"));
        assert!(text.contains("\n\n# the next one is Bob\nc@example.com:{PLAIN}z\n"));
        assert!(accepted(&PasswdFile::new(&path), "a@example.com", "new"));
    }

    #[test]
    fn edits_keep_the_mode_and_leave_no_temporary_files() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(&path, "a@example.com:{PLAIN}x\n");
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        add_user(&path, "b@example.com", "bee").unwrap();
        assert_eq!(mode(&path), 0o640);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["passwd"]);
    }

    #[test]
    fn edits_refuse_a_malformed_file() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        write(&path, "a@example.com:{PLAIN}x\ngarbage\n");
        assert!(matches!(
            add_user(&path, "b@example.com", "x"),
            Err(PasswdError::Parse { line: 2, .. })
        ));
        assert!(matches!(
            list_users(&path),
            Err(PasswdError::Parse { line: 2, .. })
        ));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a@example.com:{PLAIN}x\ngarbage\n"
        );
    }

    #[test]
    fn invalid_logins_and_empty_passwords_are_refused() {
        let dir = temp_dir();
        let path = dir.path().join("passwd");
        for login in [
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "a:b@c",
            "a b@c",
            "a\t@c",
            "a\u{7}@c",
            "#a@c",
            "",
        ] {
            assert!(
                matches!(
                    add_user(&path, login, "pw"),
                    Err(PasswdError::InvalidLogin(..))
                ),
                "{login:?}"
            );
        }
        assert!(matches!(
            add_user(&path, "a@c", ""),
            Err(PasswdError::EmptyPassword)
        ));
        assert!(!path.exists());
        assert!(list_users(&path).unwrap().is_empty());
    }

    #[test]
    fn cli_messages_are_clear() {
        assert_eq!(
            PasswdError::UserExists("a@b".into()).to_string(),
            "user a@b already exists"
        );
        assert_eq!(
            PasswdError::NoSuchUser("a@b".into()).to_string(),
            "no such user: a@b"
        );
        let err = add_user(Path::new("/nonexistent/passwd"), "alice", "pw").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid login \"alice\": expected an address like user@example.com"
        );
    }
}
