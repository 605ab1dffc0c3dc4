//! The edits of `postern user add|passwd|del|list`: the file is replaced atomically
//! (temporary file, fsync, rename, fsync of the directory), keeping its mode, owner,
//! comments and every other line verbatim.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

use super::format::{NumberedEntry, parse, parse_numbered, render, validate_login};
use super::{PasswdError, io_error};
use crate::auth::{canonical, scheme};

/// Adds an account with a new `{SHA512-CRYPT}` hash of `password`, creating the file (mode
/// 0600) and its directory if missing. The login is stored in lower case.
pub fn add_user(path: &Path, login: &str, password: &str) -> Result<(), PasswdError> {
    let login = validate_login(login)?;
    require_password(password)?;
    let mut text = read_existing(path)?;
    let lines = parse_numbered(&text, &path.display().to_string())?;
    if find(&lines, &login).is_some() {
        return Err(PasswdError::UserExists(login));
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "{login}:{}\n",
        scheme::hash_sha512_crypt(password)
    ));
    write_atomically(path, &text)
}

/// Replaces the password of an existing account with a new `{SHA512-CRYPT}` hash, keeping
/// the login as written and the other fields.
pub fn set_password(path: &Path, login: &str, password: &str) -> Result<(), PasswdError> {
    require_password(password)?;
    let text = read_required(path)?;
    let lines = parse_numbered(&text, &path.display().to_string())?;
    let Some(line) = find(&lines, &canonical(login)) else {
        return Err(PasswdError::NoSuchUser(login.to_owned()));
    };
    let mut entry = line.entry.clone();
    entry.hash = scheme::hash_sha512_crypt(password);
    let text = replace_line(&text, line.index, Some(&render(&entry)));
    write_atomically(path, &text)
}

/// Removes an account, keeping every other line verbatim.
pub fn delete_user(path: &Path, login: &str) -> Result<(), PasswdError> {
    let text = read_required(path)?;
    let lines = parse_numbered(&text, &path.display().to_string())?;
    let Some(line) = find(&lines, &canonical(login)) else {
        return Err(PasswdError::NoSuchUser(login.to_owned()));
    };
    let text = replace_line(&text, line.index, None);
    write_atomically(path, &text)
}

/// The logins in file order, as written. A missing file has none.
pub fn list_users(path: &Path) -> Result<Vec<String>, PasswdError> {
    let text = read_existing(path)?;
    let entries = parse(&text, &path.display().to_string())?;
    Ok(entries.into_iter().map(|entry| entry.login).collect())
}

pub(super) fn require_password(password: &str) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    Ok(())
}

pub(super) fn find<'a>(
    lines: &'a [NumberedEntry],
    canonical_login: &str,
) -> Option<&'a NumberedEntry> {
    lines
        .iter()
        .find(|line| canonical(&line.entry.login) == canonical_login)
}

/// The text with line `index` replaced (keeping its line ending) or, for `None`, removed.
pub(super) fn replace_line(text: &str, index: usize, replacement: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i != index {
            out.push_str(line);
            continue;
        }
        let Some(replacement) = replacement else {
            continue;
        };
        let content = line.trim_end_matches('\n').trim_end_matches('\r');
        out.push_str(replacement);
        out.push_str(&line[content.len()..]);
    }
    out
}

/// The file's text, or an empty text if it does not exist.
pub(super) fn read_existing(path: &Path) -> Result<String, PasswdError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(io_error(path, source)),
    }
}

/// The file's text; a missing file is an error.
pub(super) fn read_required(path: &Path) -> Result<String, PasswdError> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

/// Replaces the file with `contents` so that a crash leaves either the old or the new file:
/// temporary file in the same directory, fsync, rename over, fsync the directory.
pub(super) fn write_atomically(path: &Path, contents: &str) -> Result<(), PasswdError> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let existing = match fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(io_error(path, source)),
    };
    let temp = temp_path(path)?;
    let written = write_temp(&temp, contents, existing.as_ref())
        .and_then(|()| fs::rename(&temp, path).map_err(|source| io_error(path, source)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_error(dir, source))
}

/// Writes and fsyncs the temporary file, with the old file's owner and mode, or 0600.
pub(super) fn write_temp(
    temp: &Path,
    contents: &str,
    existing: Option<&fs::Metadata>,
) -> Result<(), PasswdError> {
    let io = |source| io_error(temp, source);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(io)?;
    let mode = match existing {
        Some(old) => {
            keep_owner(&file, old).map_err(io)?;
            old.mode() & 0o7777
        }
        None => 0o600,
    };
    // Set after creation, so that the umask does not change it.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Gives the new file the old one's owner and group, so that root editing a file owned by
/// the server's user does not make it unreadable to the server.
pub(super) fn keep_owner(file: &File, old: &fs::Metadata) -> io::Result<()> {
    let new = file.metadata()?;
    if new.uid() == old.uid() && new.gid() == old.gid() {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()))
}

/// The directory holding `path` (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A fresh hidden name beside `path`: `.NAME.PID.RANDOM.tmp`.
pub(super) fn temp_path(path: &Path) -> Result<PathBuf, PasswdError> {
    let Some(name) = path.file_name() else {
        let source = io::Error::new(io::ErrorKind::InvalidInput, "not a file name");
        return Err(io_error(path, source));
    };
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        rand::rng().random::<u64>()
    ));
    Ok(parent_dir(path).join(temp))
}
