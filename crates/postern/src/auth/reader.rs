//! The privileged passwd-file reader: a small process that stays root when the server
//! drops its privileges, so the passwd-file may stay readable by root only and still be
//! re-read when it changes.
//!
//! `serve` started as root runs `postern passwd-reader FILE` before it switches user,
//! and talks to it over the child's standard input and output. The reader answers two
//! requests about that one file and nothing else: `stat` and `read`. It exits when the
//! server closes the pipe.
//!
//! # Security
//!
//! The reader trusts nothing it receives: a request is one of two fixed words, and the
//! path is fixed at start. It never writes files and holds no network sockets.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use super::passwd_file::{FileAccess, Stamp};

/// The hidden subcommand that runs the reader.
pub const SUBCOMMAND: &str = "passwd-reader";
/// Longest file the reader hands over (a passwd-file of ~100,000 accounts).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// The reader's main loop: answers requests on stdin about `path` until EOF.
pub fn serve(path: &Path) -> io::Result<()> {
    let mut requests = BufReader::new(io::stdin().lock());
    let mut out = io::stdout().lock();
    loop {
        // Requests are one short word: read at most a few bytes of each line, so the
        // unprivileged server cannot make this root process hold much memory.
        let mut line = Vec::new();
        if (&mut requests).take(16).read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        match line.trim_ascii() {
            b"stat" => out.write_all(stat_answer(path).as_bytes())?,
            b"read" => write_file(path, &mut out)?,
            _ => out.write_all(b"error unknown request\n")?,
        }
        out.flush()?;
    }
}

fn stat_answer(path: &Path) -> String {
    // lstat: a symbolic link is not followed, and is not a passwd-file.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            "error the passwd-file is not a regular file\n".to_string()
        }
        Ok(m) => format!(
            "present {} {} {} {} {} {} {}\n",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => "missing\n".to_string(),
        Err(e) => format!("error {}\n", one_line(&e.to_string())),
    }
}

fn write_file(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let mut text = Vec::new();
    let read = open_regular(path).and_then(|f| f.take(MAX_FILE).read_to_end(&mut text));
    match read {
        Ok(_) => {
            out.write_all(format!("ok {}\n", text.len()).as_bytes())?;
            out.write_all(&text)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => out.write_all(b"ok 0\n"),
        Err(e) => out.write_all(format!("error {}\n", one_line(&e.to_string())).as_bytes()),
    }
}

/// Opens `path` without following a symbolic link, and only if it is a regular file:
/// the unprivileged server must not be able to point this root process elsewhere.
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other("the passwd-file is not a regular file"));
    }
    Ok(file)
}

/// The first directory above `path` that `uid` could change (it owns it, or anyone may
/// write there without the sticky bit): there the service user could swap the file for
/// a link to, say, /etc/shadow, so the reader refuses to serve such a path.
pub fn writable_ancestor(path: &Path, uid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let absolute = std::path::absolute(path).ok()?;
    absolute.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::symlink_metadata(dir).ok()?;
        let world_writable = meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0;
        (meta.uid() == uid || world_writable).then(|| dir.to_path_buf())
    })
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The server's side: a [`FileAccess`] that asks the reader.
pub struct ReaderAccess {
    path: PathBuf,
    pipe: Mutex<Pipe>,
}

struct Pipe {
    child: Child,
    /// `None` once closed: closing it is how the reader is told to exit.
    to: Option<ChildStdin>,
    from: BufReader<ChildStdout>,
}

impl ReaderAccess {
    /// Starts `program passwd-reader PATH` (call it while still root).
    pub fn spawn(program: &Path, path: &Path) -> io::Result<ReaderAccess> {
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("the passwd reader has no pipes"));
        };
        Ok(ReaderAccess {
            path: path.to_path_buf(),
            pipe: Mutex::new(Pipe {
                child,
                to: Some(to),
                from: BufReader::new(from),
            }),
        })
    }

    fn ask(&self, request: &str) -> io::Result<(String, Vec<u8>)> {
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        let to = pipe
            .to
            .as_mut()
            .ok_or_else(|| io::Error::other("the passwd reader is closed"))?;
        to.write_all(format!("{request}\n").as_bytes())?;
        to.flush()?;
        let mut header = String::new();
        if pipe.from.read_line(&mut header)? == 0 {
            let status = pipe.child.try_wait().ok().flatten();
            return Err(io::Error::other(format!(
                "the passwd reader is gone ({status:?})"
            )));
        }
        let header = header.trim_end().to_string();
        let mut body = Vec::new();
        if let Some(len) = header.strip_prefix("ok ") {
            let len: u64 = len
                .parse()
                .map_err(|_| io::Error::other("bad answer from the passwd reader"))?;
            (&mut pipe.from).take(len).read_to_end(&mut body)?;
        }
        Ok((header, body))
    }

    fn check_path(&self, path: &Path) -> io::Result<()> {
        if path == self.path {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "the passwd reader serves {} only; restart postern to read {}",
            self.path.display(),
            path.display()
        )))
    }
}

impl FileAccess for ReaderAccess {
    fn stat(&self, path: &Path) -> io::Result<Option<Stamp>> {
        self.check_path(path)?;
        let (answer, _) = self.ask("stat")?;
        parse_stat(&answer)
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        self.check_path(path)?;
        let (answer, body) = self.ask("read")?;
        if let Some(why) = answer.strip_prefix("error ") {
            return Err(io::Error::other(why.to_string()));
        }
        String::from_utf8(body)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the passwd-file is not UTF-8"))
    }
}

fn parse_stat(answer: &str) -> io::Result<Option<Stamp>> {
    if answer == "missing" {
        return Ok(None);
    }
    if let Some(why) = answer.strip_prefix("error ") {
        return Err(io::Error::other(why.to_string()));
    }
    let numbers: Vec<i64> = answer
        .strip_prefix("present ")
        .unwrap_or("")
        .split(' ')
        .filter_map(|n| n.parse().ok())
        .collect();
    let [dev, ino, size, ms, mn, cs, cn] = numbers[..] else {
        return Err(io::Error::other("bad answer from the passwd reader"));
    };
    Ok(Some(Stamp {
        dev: dev as u64,
        ino: ino as u64,
        size: size as u64,
        mtime: (ms, mn),
        ctime: (cs, cn),
    }))
}

impl Drop for ReaderAccess {
    fn drop(&mut self) {
        // Closing its stdin ends the reader; then reap it. A kill would not do: after
        // the switch to the service user, this process may not signal a root child, and
        // waiting with the pipe still open would wait forever.
        let pipe = self.pipe.get_mut().unwrap_or_else(|p| p.into_inner());
        drop(pipe.to.take());
        let _ = pipe.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_answers_round_trip() {
        assert_eq!(parse_stat("missing").unwrap(), None);
        let stamp = parse_stat("present 1 2 3 4 5 6 7").unwrap().unwrap();
        assert_eq!(
            (stamp.dev, stamp.ino, stamp.size, stamp.mtime, stamp.ctime),
            (1, 2, 3, (4, 5), (6, 7))
        );
        assert!(parse_stat("error Permission denied").is_err());
        assert!(parse_stat("present 1 2").is_err());
    }

    #[test]
    fn links_and_non_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("passwd");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let mut out = Vec::new();
        write_file(&link, &mut out).unwrap();
        assert!(
            out.starts_with(b"error "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(stat_answer(&link).starts_with("error "));
        assert!(stat_answer(dir.path()).starts_with("error "));
    }

    #[test]
    fn a_directory_the_user_controls_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let found = writable_ancestor(&dir.path().join("passwd"), me);
        assert_eq!(found.as_deref(), Some(dir.path()));
        assert_eq!(writable_ancestor(Path::new("/etc/passwd"), 4242), None);
    }

    #[test]
    fn file_answers_carry_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "a@b.test:{PLAIN}x\n").unwrap();
        let mut out = Vec::new();
        write_file(&path, &mut out).unwrap();
        assert_eq!(out, b"ok 18\na@b.test:{PLAIN}x\n");
        let mut out = Vec::new();
        write_file(&dir.path().join("none"), &mut out).unwrap();
        assert_eq!(out, b"ok 0\n");
        assert!(stat_answer(&path).starts_with("present "));
        assert_eq!(stat_answer(&dir.path().join("none")), "missing\n");
    }
}
