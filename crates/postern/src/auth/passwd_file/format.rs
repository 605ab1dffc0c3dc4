//! Dovecot's passwd-file format: one account a line,
//! `user@example.com:{SCHEME}hash[:uid:gid:gecos:home:shell:extra_fields]`. The parser is
//! strict (see the backend's notes); [`render`] writes a line back.

use std::collections::HashMap;
use std::fmt;

use super::PasswdError;
use crate::auth::canonical;

/// One account line of a passwd-file.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The login as written in the file (compare it with [`canonical`] case folding).
    pub login: String,
    /// The password hash as written, e.g. `{SHA512-CRYPT}$6$…`.
    pub hash: String,
    /// The remaining fields (uid, gid, gecos, home, shell, extra fields), kept verbatim.
    pub rest: Vec<String>,
}

/// Parses the text of a passwd-file; `path` is used in error messages only.
pub fn parse(text: &str, path: &str) -> Result<Vec<Entry>, PasswdError> {
    let lines = parse_numbered(text, path)?;
    Ok(lines.into_iter().map(|line| line.entry).collect())
}

impl fmt::Debug for Entry {
    /// Leaves the hash out: a `{PLAIN}` hash is the password itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("login", &self.login)
            .field("hash", &"<redacted>")
            .field("rest", &self.rest)
            .finish()
    }
}

/// An account line and where it is.
pub(super) struct NumberedEntry {
    /// The line's index, from 0 (its line number minus one).
    pub(super) index: usize,
    pub(super) entry: Entry,
}

/// Parses every line, remembering line numbers, and rejects duplicate logins.
pub(super) fn parse_numbered(text: &str, path: &str) -> Result<Vec<NumberedEntry>, PasswdError> {
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let parse_error = |message: String| PasswdError::Parse {
            path: path.to_owned(),
            line: number,
            message,
        };
        let Some(entry) = parse_line(line).map_err(parse_error)? else {
            continue;
        };
        let key = canonical(&entry.login);
        if let Some(first) = first_seen.insert(key, number) {
            return Err(parse_error(format!(
                "duplicate login {:?} (first on line {first})",
                entry.login
            )));
        }
        entries.push(NumberedEntry { index, entry });
    }
    Ok(entries)
}

/// Parses one line: `None` for a blank line or a comment.
pub(super) fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut fields = line.split(':');
    let login = fields.next().unwrap_or_default();
    let Some(hash) = fields.next() else {
        return Err("expected LOGIN:{SCHEME}HASH, found no ':'".into());
    };
    if login.is_empty() {
        return Err("empty login before the first ':'".into());
    }
    if let Some(why) = bad_login_char(login) {
        return Err(format!("login {login:?} {why}"));
    }
    if hash.is_empty() {
        return Err(format!("empty password hash for {login:?}"));
    }
    if hash.chars().any(char::is_control) {
        return Err(format!(
            "the password hash of {login:?} contains a control character (a stray CR? save the file with LF line endings)"
        ));
    }
    Ok(Some(Entry {
        login: login.to_owned(),
        hash: hash.to_owned(),
        rest: fields.map(str::to_owned).collect(),
    }))
}

/// Why a login can't be in the file, if it can't.
pub(super) fn bad_login_char(login: &str) -> Option<&'static str> {
    if login.chars().any(char::is_whitespace) {
        return Some("contains whitespace");
    }
    if login.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    if login.contains(':') {
        return Some("contains ':'");
    }
    // A login is also a Maildir path component (%n, %u).
    if login.contains('/') {
        return Some("contains '/'");
    }
    None
}

/// Checks a login for `user add` and returns its canonical form.
pub(super) fn validate_login(login: &str) -> Result<String, PasswdError> {
    let invalid = |why: &str| PasswdError::InvalidLogin(login.to_owned(), why.to_owned());
    let Some((local, domain)) = login.split_once('@') else {
        return Err(invalid("expected an address like user@example.com"));
    };
    if domain.contains('@') {
        return Err(invalid("contains more than one '@'"));
    }
    if local.is_empty() || domain.is_empty() {
        return Err(invalid("the parts before and after '@' must not be empty"));
    }
    if let Some(why) = bad_login_char(login) {
        return Err(invalid(why));
    }
    if login.starts_with('#') {
        return Err(invalid(
            "must not start with '#' (the line would be a comment)",
        ));
    }
    Ok(canonical(login))
}

/// Writes an entry back as a line, without its line ending.
pub(super) fn render(entry: &Entry) -> String {
    let mut fields = vec![entry.login.as_str(), entry.hash.as_str()];
    fields.extend(entry.rest.iter().map(String::as_str));
    fields.join(":")
}
