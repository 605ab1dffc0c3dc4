//! `strace` attached to a running server, and the system calls it saw, in order: tests
//! use it to check from outside in which order the real binary syncs, renames, links
//! and writes its replies.
//!
//! Order is the order of strace's output. A traced thread is stopped at every traced
//! call's entry and exit until strace has printed it, so when thread A's call returns
//! before thread B's call starts (B waits for A), A's return is printed first.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The calls traced: syncs, the calls that name or unname files, directory creation,
/// and the writes that can carry a reply to a client.
const CALLS: &str = "trace=fsync,fdatasync,sync_file_range,syncfs,sync,\
rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,\
write,writev,sendto,sendmsg";

/// A running `strace -f -p PID`.
pub struct Strace {
    child: Child,
    out: PathBuf,
}

impl Strace {
    /// Attaches to `pid` with all its threads (and the ones it starts later), writing to
    /// `out`; returns once strace says it is attached. Panics when it cannot attach.
    pub fn attach(pid: u32, out: &Path) -> Strace {
        let mut child = Command::new("strace")
            .args([
                "-f",
                "-yy",
                "-s",
                "256",
                "-e",
                CALLS,
                "-e",
                "signal=none",
                "-o",
            ])
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strace");
        let stderr = child.stderr.take().expect("strace stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end: strace announces every thread it follows, and would die
            // of SIGPIPE if nobody read.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let attached = format!("Process {pid} attached");
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains(&attached) => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("strace did not attach to {pid}: {said:?}");
                }
            }
        }
        Strace {
            child,
            out: out.to_owned(),
        }
    }

    /// Detaches (SIGINT, which makes strace flush and leave the tracee running) and
    /// reads what it wrote.
    pub fn finish(mut self) -> Trace {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).expect("read strace output");
        if let Some(keep) = std::env::var_os("POSTERN_TEST_STRACE") {
            let name = self
                .out
                .parent()
                .and_then(Path::file_name)
                .unwrap_or_default();
            let _ = std::fs::write(Path::new(&keep).join(name), &text);
        }
        Trace::parse(&text)
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One system call. `start` and `end` are the numbers of the output lines where it
/// was entered and where it returned (the same line unless another thread's call came
/// in between).
#[derive(Debug, Clone)]
pub struct Call {
    pub tid: u32,
    pub name: String,
    /// Everything between the parentheses, as strace printed it.
    pub args: String,
    /// What follows `= `: `0`, `-1 ENOENT (…)`, a byte count; `?` when the call had not
    /// returned when strace stopped (then `end` is `usize::MAX`).
    pub result: String,
    pub start: usize,
    pub end: usize,
}

impl Call {
    pub fn succeeded(&self) -> bool {
        !self.result.starts_with('-') && !self.result.starts_with('?')
    }

    /// The descriptor number of the first argument.
    pub fn fd(&self) -> Option<u32> {
        let digits: String = self.args.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// What `-yy` says the first argument's descriptor is: a path, or
    /// `TCP:[LOCAL->REMOTE]` for a socket.
    pub fn fd_target(&self) -> Option<&str> {
        let rest = self.args.strip_prefix(|c: char| c.is_ascii_digit())?;
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let rest = rest.strip_prefix('<')?;
        // The closing '>' is the one followed by the next argument, the end, or the
        // `(deleted)` of a file without a name; the `->` inside a socket's is not.
        let end = rest.char_indices().find(|&(i, c)| {
            c == '>' && matches!(rest[i + 1..].chars().next(), None | Some(',' | '('))
        })?;
        Some(&rest[..end.0])
    }

    /// The quoted arguments (paths, data), as strace escaped them.
    pub fn strings(&self) -> Vec<&str> {
        let mut found = Vec::new();
        let mut rest = self.args.as_str();
        while let Some(open) = rest.find('"') {
            let after = &rest[open + 1..];
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { break };
            found.push(&after[..end]);
            rest = &after[end + 1..];
        }
        found
    }

    pub fn is_sync(&self) -> bool {
        matches!(self.name.as_str(), "fsync" | "fdatasync")
    }

    pub fn is_rename(&self) -> bool {
        matches!(self.name.as_str(), "rename" | "renameat" | "renameat2")
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.name.as_str(),
            "write" | "writev" | "sendto" | "sendmsg"
        )
    }
}

/// Everything strace saw, in the order it printed it.
pub struct Trace {
    pub calls: Vec<Call>,
    pub text: String,
}

impl Trace {
    fn parse(text: &str) -> Trace {
        let mut calls = Vec::new();
        // Calls entered but not yet returned, by thread: name, text so far, start line.
        let mut open: HashMap<u32, (String, String, usize)> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let Some((tid, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(tid) = tid.parse::<u32>() else {
                continue;
            };
            let rest = rest.trim_start();
            if let Some(resumed) = rest.strip_prefix("<... ") {
                let Some((_, tail)) = resumed.split_once(" resumed>") else {
                    continue;
                };
                if let Some((name, head, start)) = open.remove(&tid) {
                    calls.extend(complete(tid, name, &format!("{head}{tail}"), start, n));
                }
            } else if let Some(head) = rest
                .strip_suffix(" <unfinished ...>")
                .or_else(|| rest.strip_suffix(" <detached ...>"))
            {
                if let Some((name, _)) = head.split_once('(') {
                    open.insert(tid, (name.to_string(), head.to_string(), n));
                }
            } else if let Some((name, _)) = rest.split_once('(') {
                // Lines such as `+++ exited` and `--- SIG` have no call name before '('.
                if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    calls.extend(complete(tid, name.to_string(), rest, n, n));
                }
            }
        }
        // Calls still running when strace let go: a reply written just before it did.
        let mut running: Vec<Call> = open
            .into_iter()
            .filter_map(|(tid, (name, head, start))| {
                Some(Call {
                    tid,
                    args: head.get(name.len() + 1..)?.to_string(),
                    result: "?".to_string(),
                    name,
                    start,
                    end: usize::MAX,
                })
            })
            .collect();
        running.sort_by_key(|c| c.start);
        calls.extend(running);
        Trace {
            calls,
            text: text.to_string(),
        }
    }

    /// The first call that satisfies `what`.
    pub fn find(&self, what: impl Fn(&Call) -> bool) -> Option<&Call> {
        self.calls.iter().find(|c| what(c))
    }

    /// The writes of the `250` that starts with `reply` to the client whose end of the
    /// connection is `client` (`127.0.0.1:PORT`).
    pub fn reply_to(&self, client: std::net::SocketAddr, reply: &str) -> Option<&Call> {
        let remote = format!("->{client}]");
        self.find(|c| {
            c.is_write()
                && c.fd_target().is_some_and(|t| t.ends_with(&remote))
                && c.args.contains(reply)
        })
    }
}

/// A call from its whole text `name(args) = result`.
fn complete(tid: u32, name: String, whole: &str, start: usize, end: usize) -> Option<Call> {
    let open = name.len() + 1;
    // strace pads short calls: `fsync(3</x>)        = 0`.
    let equals = whole.rfind(" = ")?;
    let args = whole[..equals].trim_end().strip_suffix(')')?;
    Some(Call {
        tid,
        args: args.get(open..)?.to_string(),
        result: whole[equals + 3..].to_string(),
        name,
        start,
        end,
    })
}
