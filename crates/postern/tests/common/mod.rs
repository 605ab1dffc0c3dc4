//! Test harness: starts the real `postern` binary on ephemeral loopback ports and
//! waits for its `event=listening` lines (never for a fixed time), plus a small raw
//! SMTP client for the dialogs that client libraries will not produce.

#![allow(dead_code)]

pub mod sink;
pub mod strace;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_postern");
pub const PASSWORD: &str = "secret";
/// Users created in every test server, all with password [`PASSWORD`].
pub const USERS: [&str; 2] = ["alice@example.com", "bob@example.com"];

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What differs between test servers.
#[derive(Default)]
pub struct Setup {
    /// The local domain (default `example.com`); users alice@ and bob@ it.
    pub domain: Option<String>,
    /// Top-level keys, e.g. `postmaster = "…"`.
    pub top: String,
    /// Lines inside `[delivery]`, e.g. `relay_host = "…"`. Without `relay_host` or
    /// `[delivery.routes]` in `extra`, remote mail goes to `127.0.0.1:9`, where nothing
    /// listens: no test looks up MX hosts in the real DNS.
    pub delivery: String,
    /// The Maildir template, relative to the test directory (default `mail/%d/%n/Maildir`).
    pub maildir: Option<String>,
    /// More TOML after the standard configuration (other tables).
    pub extra: String,
    /// Environment variables for `postern serve`.
    pub env: Vec<(String, String)>,
    /// Run `serve` with its own view of `/etc/resolv.conf`, naming only a loopback
    /// address where nothing answers: every DNS lookup fails at once, and none leaves
    /// the machine (root only; see [`Server::start_setup`]).
    pub dns_offline: bool,
}

pub struct Server {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    addrs: HashMap<String, SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    new_line: Arc<Mutex<Option<mpsc::Sender<()>>>>,
    setup: Setup,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with("")
    }

    /// Starts a server whose config is the standard one plus `extra` TOML.
    pub fn start_with(extra: &str) -> Server {
        Server::start_setup(Setup {
            extra: extra.to_string(),
            ..Setup::default()
        })
    }

    pub fn domain(&self) -> &str {
        self.setup.domain.as_deref().unwrap_or("example.com")
    }

    pub fn start_setup(setup: Setup) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        // Unprivileged test users must reach the config and the submission socket.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut server = Server {
            dir,
            child: None,
            addrs: HashMap::new(),
            log: Arc::default(),
            new_line: Arc::default(),
            setup,
        };
        server.write_config();
        for user in USERS {
            let local = user.split('@').next().unwrap_or(user);
            server.add_user(&format!("{local}@{}", server.domain()), PASSWORD);
        }
        server.spawn();
        server
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("postern.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"hostname = "mail.example.com"
data_dir = "{d}/data"
local_domains = ["{domain}"]
{top}

[[listener]]
name = "mx"
addr = "127.0.0.1:0"
role = "mx"

[[listener]]
name = "submission"
addr = "127.0.0.1:0"
role = "submission"

[[listener]]
name = "submissions"
addr = "127.0.0.1:0"
role = "submissions"

[auth]
passwd_file = "{d}/passwd"

[delivery]
maildir = "{d}/{maildir}"
{delivery}
{no_dns}

[local_submission]
socket = "{d}/run/submit.sock"
{inbound}
{extra}
"#,
            domain = self.domain(),
            // Tests run as root; they stay root unless a test asks for a service user.
            top = if self.setup.top.contains("user =") {
                self.setup.top.clone()
            } else {
                format!("user = \"root\"\n{}", self.setup.top)
            },
            delivery = self.setup.delivery,
            maildir = self
                .setup
                .maildir
                .as_deref()
                .unwrap_or("mail/%d/%n/Maildir"),
            // SPF, DKIM and DMARC checks of MX mail ask the system's DNS: only the tests
            // about them turn them on (with `dns_offline`), so that no test needs the
            // network.
            // Mail for other domains goes to the discard port on loopback (refused:
            // deferred) unless the test routes it: never to MX hosts looked up in DNS.
            no_dns = if self.setup.delivery.contains("relay_host")
                || self.setup.extra.contains("[delivery.routes]")
            {
                ""
            } else {
                "relay_host = \"127.0.0.1:9\""
            },
            inbound = if self.setup.extra.contains("[inbound]") {
                ""
            } else {
                "[inbound]\nverify = false\n"
            },
            extra = self.setup.extra,
        );
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// `postern dkim keygen` for `domain` (selector `s1`, Ed25519) and its `[[dkim]]`
    /// table appended to the config; the caller reloads (SIGHUP) when the server must
    /// sign with it. Returns what keygen printed.
    pub fn add_dkim_key(&self, domain: &str) -> String {
        let out = self.cli(
            &[
                "dkim",
                "keygen",
                "--domain",
                domain,
                "--selector",
                "s1",
                "--algorithm",
                "ed25519",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let table = &printed[printed.find("[[dkim]]").expect("a [[dkim]] table")..];
        let mut config = std::fs::read_to_string(self.config_path()).expect("read config");
        config.push('\n');
        config.push_str(table);
        std::fs::write(self.config_path(), config).expect("write config");
        printed
    }

    /// `postern user add ADDRESS --password-stdin`, through the real CLI.
    pub fn add_user(&self, address: &str, password: &str) {
        let out = self.cli(
            &["user", "add", address, "--password-stdin"],
            Some(password),
        );
        assert!(
            out.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the binary with `--config` of this server and optional stdin.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn postern");
        if let Some(text) = stdin {
            let mut input = child.stdin.take().expect("stdin");
            writeln!(input, "{text}").expect("write stdin");
        }
        child.wait_with_output().expect("wait postern")
    }

    fn spawn(&mut self) {
        let mut command = if self.setup.dns_offline {
            // A private mount namespace where /etc/resolv.conf is ours; `exec` keeps the
            // process ID, so signals reach the server.
            let resolv = self.dir.path().join("resolv.conf");
            std::fs::write(
                &resolv,
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            )
            .expect("write resolv.conf");
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
                .arg(&resolv)
                .arg(BIN);
            c
        } else {
            Command::new(BIN)
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(self.config_path())
            .envs(self.setup.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postern serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let notify = self.new_line.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("POSTERN_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                log.lock().unwrap().push(line);
                if let Some(tx) = notify.lock().unwrap().as_ref() {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        self.addrs.clear();
        let already = self.log.lock().unwrap().len();
        for name in ["mx", "submission", "submissions", "local"] {
            let line = self
                .wait_for_log_after(already, &format!("event=listening listener={name} "))
                .unwrap_or_else(|| panic!("listener {name} not ready; log:\n{}", self.log_text()));
            if name == "local" {
                continue;
            }
            let addr = field(&line, "addr")
                .expect("addr")
                .parse()
                .expect("socket addr");
            self.addrs.insert(name.to_string(), addr);
        }
    }

    /// Runs `postern sendmail ARGS` with `stdin`, as `user` when given (root only).
    pub fn sendmail(
        &self,
        user: Option<&str>,
        args: &[&str],
        stdin: &[u8],
    ) -> std::process::Output {
        // A freshly copied binary can be "busy" for a moment when another test thread
        // forks while the copy's file is still open: try again.
        for _ in 0..20 {
            let out = self.sendmail_once(user, args, stdin);
            if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sendmail_once(user, args, stdin)
    }

    fn sendmail_once(
        &self,
        user: Option<&str>,
        args: &[&str],
        stdin: &[u8],
    ) -> std::process::Output {
        let mut cmd = match user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.public_binary());
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("sendmail")
            .args(args)
            .env("POSTERN_CONFIG", self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sendmail");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait sendmail");
        let _ = writer.join();
        out
    }

    /// A copy of the binary that any user can run (the build directory may not be
    /// reachable for an unprivileged test user).
    pub fn public_binary(&self) -> PathBuf {
        let copy = self.dir.path().join("postern");
        if !copy.exists() {
            let partial = self.dir.path().join("postern.partial");
            std::fs::copy(BIN, &partial).expect("copy binary");
            std::fs::rename(&partial, &copy).expect("rename binary");
        }
        copy
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line containing `needle` appears, or the timeout passes.
    pub fn wait_for_log(&self, needle: &str) -> Option<String> {
        self.wait_for_log_after(0, needle)
    }

    /// Waits until at least `count` log lines contain `needle`; returns all of them then
    /// (fewer if the timeout passed first, so that the caller's assertion says so).
    pub fn wait_for_lines(&self, needle: &str, count: usize) -> Vec<String> {
        let lines = || -> Vec<String> {
            self.log_lines()
                .into_iter()
                .filter(|l| l.contains(needle))
                .collect()
        };
        wait_until(|| lines().len() >= count);
        lines()
    }

    fn wait_for_log_after(&self, skip: usize, needle: &str) -> Option<String> {
        let (tx, rx) = mpsc::channel();
        *self.new_line.lock().unwrap() = Some(tx);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .find(|l| l.contains(needle))
            {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = rx.recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Kills the server with SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, …) without waiting.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the server to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait")
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.split_once('@').expect("address");
        let template = self
            .setup
            .maildir
            .as_deref()
            .unwrap_or("mail/%d/%n/Maildir");
        self.dir
            .path()
            .join(template.replace("%d", domain).replace("%n", local))
    }

    /// The messages in `new/` of a mailbox, read as text.
    pub fn delivered(&self, address: &str) -> Vec<String> {
        let new = self.maildir(address).join("new");
        let Ok(entries) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read mail"))
            .collect()
    }

    /// Waits until `address` has `count` messages.
    pub fn wait_for_delivery(&self, address: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mails = self.delivered(address);
            if mails.len() >= count || Instant::now() > deadline {
                return mails;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Committed messages (`*.msg`, the commit point) in the queue directory.
    pub fn queued(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join("queue")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "msg"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Finds `program` on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether the tests run in CI: `CI` is set to anything but empty, `0` or `false`
/// (`.ci/run` sets `CI=true`, as GitHub Actions and GitLab do). The one rule for "in CI"
/// in every test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        )
    })
}

/// For a test that cannot run here (`why`: a tool is missing, the tests do not run as
/// root). Under CI this fails the test: CI must run everything. Elsewhere it prints
/// `SKIPPED test: why` past libtest's output capture, and the caller returns. (Stable
/// Rust cannot mark a test ignored at run time, so libtest still says `ok`: the SKIPPED
/// line is the report.)
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}, and CI is set, so this test may not be skipped");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (under CI=true this is a failure)"
    );
}

/// True when every requirement is there; otherwise see [`skip_or_fail`].
pub fn available(test: &str, requirements: &[(&str, Option<PathBuf>)]) -> bool {
    let missing: Vec<&str> = requirements
        .iter()
        .filter(|(_, found)| found.is_none())
        .map(|(what, _)| *what)
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(
        test,
        &format!(
            "{} not installed (README.md, \"Run the tests\", says how)",
            missing.join(", ")
        ),
    );
    false
}

/// True when the tests run as root; otherwise see [`skip_or_fail`]. `what` says what
/// needs it.
pub fn root(test: &str, what: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    skip_or_fail(test, &format!("{what} needs root"));
    false
}

/// A Unix user for tests that need an unprivileged sender or a service user, created
/// (once, as a system user without a home) when missing, and left in place for the next
/// run: `userdel posterntest` removes it (see README.md). Needs root: otherwise see
/// [`skip_or_fail`], and `None`.
pub fn test_user(name: &str) -> Option<u32> {
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("test").to_string();
    if !root(&test, &format!("creating the Unix user {name}")) {
        return None;
    }
    static CREATING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "postern tests (userdel posterntest removes it)",
            ])
            .arg(name)
            .status()
            .expect("useradd");
        // 9: made meanwhile by another test process.
        assert!(
            status.success() || status.code() == Some(9),
            "useradd {name} failed"
        );
    }
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// The Unix user the tests run as, as the server sees a loopback client.
pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Runs a Python script as the Unix user `user` (see `test_user`), for clients that
/// must not be root.
pub fn python_as(user: &str, script: &str) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", user, "--", "python3", "-c", script])
        .output()
        .expect("runuser python3")
}

/// Polls `condition` until it holds or the timeout passes; returns whether it held.
pub fn wait_until(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// The value of `key=` in a logfmt line (unquoted values only).
pub fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.split('"').next().map(str::to_string);
    }
    Some(rest.split(' ').next().unwrap_or("").to_string())
}

/// A raw SMTP client over any byte stream.
pub struct Client<S: Read + Write> {
    reader: BufReader<S>,
}

pub type PlainClient = Client<TcpStream>;

/// Read timeouts reach the TCP socket under any stream type.
pub trait TcpBacked {
    fn tcp(&self) -> &TcpStream;
}

impl TcpBacked for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpBacked for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}
pub type TlsClient = Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

impl PlainClient {
    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local address")
    }

    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> PlainClient {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client {
            reader: BufReader::new(tcp),
        };
        c.expect("220");
        c
    }

    /// EHLO, STARTTLS, handshake, EHLO again.
    pub fn starttls(mut self) -> TlsClient {
        self.cmd("EHLO client.test", "250");
        self.cmd("STARTTLS", "220");
        let mut c = self.into_tls_after_220();
        c.cmd("EHLO client.test", "250");
        c
    }

    /// The TLS handshake, once the server has answered STARTTLS with 220.
    pub fn into_tls_after_220(self) -> TlsClient {
        assert!(
            self.reader.buffer().is_empty(),
            "server sent bytes after 220"
        );
        let tcp = self.reader.into_inner();
        Client {
            reader: BufReader::new(tls_wrap(tcp)),
        }
    }
}

/// A bare socket to the `mx` listener, pipelined through EHLO, MAIL, RCPT and DATA up
/// to the `354`: for tests that must control every byte of the message that follows.
pub fn raw_data_stream(server: &Server, from: &str, rcpt: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr("mx")).expect("connect");
    stream
        .set_read_timeout(Some(READY_TIMEOUT))
        .expect("read timeout");
    let commands =
        format!("EHLO client.test\r\nMAIL FROM:<{from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    stream.write_all(commands.as_bytes()).expect("write");
    let mut replies = Vec::new();
    while !String::from_utf8_lossy(&replies).contains("354 ") {
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before DATA: {:?}",
            String::from_utf8_lossy(&replies)
        );
        replies.extend_from_slice(&buf[..n]);
    }
    stream
}

/// The queue ID of a `250 2.0.0 Ok: queued as ID` reply.
pub fn queue_id(reply: &str) -> String {
    reply
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

impl PlainClient {
    /// A client of the `mx` listener that has said EHLO.
    pub fn mx(server: &Server) -> PlainClient {
        let mut c = PlainClient::connect(server.addr("mx"));
        c.cmd("EHLO client.test", "250");
        c
    }
}

impl TlsClient {
    /// A client of the `submission` listener after STARTTLS, logged in as `login` with
    /// [`PASSWORD`].
    pub fn submission(server: &Server, login: &str) -> TlsClient {
        let mut c = PlainClient::connect(server.addr("submission")).starttls();
        c.login(login, PASSWORD);
        c
    }

    /// Implicit TLS (`submissions`): handshake, greeting.
    pub fn connect_tls(addr: SocketAddr) -> TlsClient {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client {
            reader: BufReader::new(tls_wrap(tcp)),
        };
        c.expect("220");
        c
    }

    /// AUTH PLAIN with an empty authzid; expects success.
    pub fn login(&mut self, user: &str, password: &str) -> String {
        self.cmd(
            &format!("AUTH PLAIN {}", plain(None, user, password)),
            "235 2.7.0",
        )
    }
}

impl<S: Read + Write + TcpBacked> Client<S> {
    fn set_timeout(&self, timeout: Duration) {
        let _ = self.reader.get_ref().tcp().set_read_timeout(Some(timeout));
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
        self.reader.get_mut().flush().expect("flush");
    }

    /// Reads one complete (possibly multi-line) reply. Empty string at EOF.
    pub fn read_reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return reply,
                Ok(_) => {}
            }
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    }

    /// Reads a reply and asserts it starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        let reply = self.read_reply();
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        reply
    }

    /// Sends a command line and expects a reply starting with `prefix`.
    pub fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.expect(prefix)
    }

    /// `MAIL FROM` and one `RCPT TO` per recipient (each `250`), then `DATA` (`354`):
    /// the message comes next.
    pub fn begin(&mut self, from: &str, rcpts: &[&str]) {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250");
        for rcpt in rcpts {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
        }
        self.cmd("DATA", "354");
    }

    /// A whole transaction: [`begin`](Self::begin), then `message` (CRLF lines, already
    /// dot-stuffed, ending in CRLF) and the final dot, whose reply must start with
    /// `expect`. Returns that reply.
    pub fn transaction(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &str,
        expect: &str,
    ) -> String {
        self.begin(from, rcpts);
        self.cmd(&format!("{message}."), expect)
    }

    /// True when the server closes the connection: EOF or a reset, waited for as long
    /// as any other reply (so a slow server still passes). False when a byte arrives
    /// instead, or nothing happens for that long. Only for connections the server is
    /// expected to close: an open one costs the whole wait.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        self.set_timeout(READY_TIMEOUT);
        let closed = match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
        };
        self.set_timeout(Duration::from_secs(20));
        closed
    }
}

pub fn plain(authzid: Option<&str>, user: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{}\0{user}\0{password}", authzid.unwrap_or(""));
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn tls_wrap(tcp: TcpStream) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    // The test servers use self-signed certificates: the same opportunistic client
    // configuration postern uses for outbound STARTTLS accepts them.
    let config = postern::stream::opportunistic_client_config().expect("client TLS config");
    let name = rustls::pki_types::ServerName::try_from("mail.example.com").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}
