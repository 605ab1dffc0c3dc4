//! The configuration file (TOML), its defaults, and where it is looked up.
//!
//! Unknown keys are errors, and every error names the file and line, so a typo never
//! silently turns a setting off. See `docs/config.md` for every key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration came from: a file, or the built-in development defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// A configuration error, rendered `FILE:LINE: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: owned by uid {owner}, neither root nor you (uid {caller}): not read, because whoever owns it could redirect your mail; chown it, or name another file with --config"
    )]
    Untrusted {
        path: String,
        owner: u32,
        caller: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mx,
    Submission,
    Submissions,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }

    /// Submission roles require authentication before MAIL FROM.
    pub fn requires_auth(self) -> bool {
        !matches!(self, Role::Mx)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    #[serde(deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    passwd_file: Option<PathBuf>,
    #[serde(default)]
    sender_scope: SenderScope,
}

/// What a login may send as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderScope {
    /// Its own address only.
    #[default]
    Login,
    /// Any address of its own domain (what hosting panels let a customer's logins do:
    /// WordPress sends as `wordpress@its-domain`).
    Domain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSubmission {
    pub socket: PathBuf,
    /// What a Unix user (by name) may send as beyond the mailboxes carrying its uid:
    /// domains (any address there) and addresses.
    #[serde(default)]
    pub senders: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    maildir: Option<String>,
    owner: Option<String>,
    relay_host: Option<String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    // The outbound settings, listed here rather than flattened from `Outbound` so that
    // an unknown key still gets its line number and the list of valid keys.
    #[serde(default, deserialize_with = "optional_duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    connect_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_per_destination: Option<usize>,
    plaintext_fallback: Option<bool>,
    #[serde(default, deserialize_with = "optional_duration")]
    connection_idle: Option<Duration>,
}

impl DeliveryFile {
    fn outbound(&self) -> Outbound {
        let d = Outbound::default();
        Outbound {
            timeout: self.timeout.unwrap_or(d.timeout),
            connect_timeout: self.connect_timeout.unwrap_or(d.connect_timeout),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_per_destination: self.max_per_destination.unwrap_or(d.max_per_destination),
            plaintext_fallback: self.plaintext_fallback.unwrap_or(d.plaintext_fallback),
            connection_idle: self.connection_idle.unwrap_or(d.connection_idle),
        }
    }
}

/// How mail leaves for other servers (`[delivery]`).
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Waiting for each reply of a remote server (RFC 5321 §4.5.3.2 suggests minutes).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Deliveries in flight at once, and to one destination (next hop).
    pub max_connections: usize,
    pub max_per_destination: usize,
    /// When a STARTTLS handshake fails, try again without TLS (opportunistic TLS, as
    /// Postfix's `may` level). `false` defers instead.
    pub plaintext_fallback: bool,
    /// How long a connection stays open after a message for the next one to the same
    /// server; servers close idle clients after a while.
    pub connection_idle: Duration,
}

impl Default for Outbound {
    fn default() -> Outbound {
        Outbound {
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
            max_connections: 20,
            max_per_destination: 4,
            plaintext_fallback: true,
            connection_idle: Duration::from_secs(5),
        }
    }
}

/// Retry and expiry of queued mail (`[queue]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Undelivered mail older than this bounces.
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// The first retry delay; it doubles per attempt up to `retry_max`.
    #[serde(deserialize_with = "duration")]
    pub retry_first: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_max: Duration,
    /// After this long undelivered, the sender gets a "delayed" notice; 0 = never.
    #[serde(deserialize_with = "duration")]
    pub delay_warning: Duration,
}

impl Default for QueueSettings {
    fn default() -> QueueSettings {
        QueueSettings {
            max_age: Duration::from_secs(5 * 24 * 3600),
            retry_first: Duration::from_secs(300),
            retry_max: Duration::from_secs(3600),
            delay_warning: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub login_messages_per_hour: u32,
    pub login_recipients_per_hour: u32,
    pub uid_messages_per_hour: u32,
    pub uid_recipients_per_hour: u32,
    /// Per remote IP address; never applied to loopback, which all local sites share.
    pub ip_messages_per_hour: u32,
    pub ip_recipients_per_hour: u32,
    pub auth_failures_before_block: u32,
    pub auth_block_seconds: u64,
    /// Milliseconds added to the answer of each failed login in a row after the first
    /// (up to 8 times): a tarpit for password guessing.
    pub auth_failure_delay_ms: u64,
    /// Seconds to wait for a command (RFC 5321 §4.5.3.2.7 says at least 300).
    pub command_timeout: u64,
    /// Seconds to wait for each block of DATA (RFC 5321 §4.5.3.2.5: 180).
    pub data_timeout: u64,
    /// Bytes a second that DATA must keep up on average once `data_timeout` is used up;
    /// 0 = only `data_timeout` between reads.
    pub min_data_rate: u64,
    /// Message bytes all sessions together may hold in memory while receiving.
    pub max_buffered_data: usize,
    /// Open connections at once, over all listeners.
    pub max_connections: usize,
    /// Open connections from one client (an IP, or on loopback a Unix user).
    pub max_connections_per_client: usize,
    /// New connections per minute from one client; 0 = no limit.
    pub connections_per_minute_per_client: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            login_messages_per_hour: 0,
            login_recipients_per_hour: 0,
            uid_messages_per_hour: 0,
            uid_recipients_per_hour: 0,
            ip_messages_per_hour: 0,
            ip_recipients_per_hour: 0,
            auth_failures_before_block: 10,
            auth_block_seconds: 600,
            auth_failure_delay_ms: 500,
            command_timeout: 300,
            data_timeout: 180,
            min_data_rate: 500,
            max_buffered_data: 256 * 1024 * 1024,
            max_connections: 1000,
            // Postfix's smtpd_client_connection_count_limit.
            max_connections_per_client: 50,
            connections_per_minute_per_client: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    /// How often the queue gauges are read again from the spool directory.
    #[serde(default = "default_queue_refresh", deserialize_with = "duration")]
    pub queue_refresh: Duration,
}

fn default_queue_refresh() -> Duration {
    Duration::from_secs(10)
}

/// Authentication of mail received on `mx` listeners (`[inbound]`); see
/// `docs/inbound-authentication.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundAuth {
    /// Check SPF, DKIM and DMARC, and prepend the verdicts as `Authentication-Results:`.
    pub verify: bool,
    /// Refuse (`550 5.7.1`) mail failing DMARC whose domain publishes `p=reject`.
    pub dmarc_reject: bool,
}

impl Default for InboundAuth {
    fn default() -> InboundAuth {
        InboundAuth {
            verify: true,
            dmarc_reject: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    pub key: PathBuf,
}

/// The file as written; `Config` is what the server uses, with defaults filled in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    hostname: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    local_domains: Vec<String>,
    postmaster: Option<String>,
    user: Option<String>,
    #[serde(default, rename = "listener")]
    listeners: Vec<Listener>,
    tls: Option<Tls>,
    #[serde(default)]
    auth: AuthFile,
    local_submission: Option<LocalSubmission>,
    #[serde(default)]
    delivery: DeliveryFile,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    queue: QueueSettings,
    metrics: Option<Metrics>,
    #[serde(default, rename = "dkim")]
    dkim: Vec<DkimKey>,
    #[serde(default)]
    inbound: InboundAuth,
}

/// The complete configuration of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub hostname: String,
    pub data_dir: PathBuf,
    /// Lower case, compared exactly.
    pub local_domains: Vec<String>,
    /// Where mail for postmaster@ a local domain goes when that mailbox does not exist.
    pub postmaster: Option<String>,
    /// The Unix user `serve` switches to after binding, when started as root.
    pub user: Option<String>,
    pub listeners: Vec<Listener>,
    pub tls: Option<Tls>,
    pub passwd_file: PathBuf,
    /// What a login may send as (`[auth] sender_scope`).
    pub sender_scope: SenderScope,
    pub local_submission: Option<LocalSubmission>,
    pub maildir: String,
    /// The Unix user owning Maildir files when the passwd-file line gives no uid/gid.
    pub maildir_owner: Option<String>,
    pub relay_host: Option<String>,
    pub routes: BTreeMap<String, String>,
    pub outbound: Outbound,
    pub limits: Limits,
    pub queue: QueueSettings,
    pub metrics: Option<Metrics>,
    pub dkim: Vec<DkimKey>,
    pub inbound: InboundAuth,
}

pub const SYSTEM_CONFIG: &str = "/etc/postern/postern.toml";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/postern";
pub const DEV_DATA_DIR: &str = "./postern-data";

impl Config {
    /// `[local_submission.senders]` for a Unix user: the domains and addresses it may
    /// send as beyond its own mailboxes.
    pub fn local_sender_grants(&self, user: &str) -> &[String] {
        self.local_submission
            .as_ref()
            .and_then(|l| l.senders.get(user))
            .map_or(&[], Vec::as_slice)
    }

    /// Finds the configuration: `explicit`, then `$POSTERN_CONFIG`, then
    /// `./postern.toml`, then `/etc/postern/postern.toml`, else the built-in defaults.
    pub fn locate(explicit: Option<&Path>) -> Source {
        if let Some(p) = explicit {
            return Source::File(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("POSTERN_CONFIG").filter(|p| !p.is_empty()) {
            return Source::File(PathBuf::from(p));
        }
        if let Some(local) = Self::own_file_in_current_dir() {
            return Source::File(local);
        }
        if Path::new(SYSTEM_CONFIG).exists() {
            return Source::File(PathBuf::from(SYSTEM_CONFIG));
        }
        Source::Defaults
    }

    /// `./postern.toml`, only for a caller that is not root and only when the caller
    /// owns it: in a directory others can write (a site's upload folder, /tmp), a file
    /// planted there must not decide where root's or anyone's mail goes.
    fn own_file_in_current_dir() -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt as _;
        let caller = nix::unistd::geteuid();
        if caller.is_root() {
            return None;
        }
        let path = Path::new("postern.toml");
        let meta = std::fs::symlink_metadata(path).ok()?;
        (meta.is_file() && meta.uid() == caller.as_raw()).then(|| path.to_path_buf())
    }

    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        match source {
            Source::Defaults => Ok(Config::development_defaults()),
            Source::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    source: e,
                })?;
                ensure_trusted_owner(path)?;
                Config::parse(&text, path)
            }
        }
    }

    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            ConfigError::Invalid {
                path: path.display().to_string(),
                line,
                message: plain_words(e.message().trim()),
            }
        })?;
        let config = Config::from_file(file, path.to_path_buf());
        validate(&config, text)?;
        Ok(config)
    }

    fn from_file(file: ConfigFile, path: PathBuf) -> Config {
        let outbound = file.delivery.outbound();
        let data_dir = file
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Config {
            source: Source::File(path),
            hostname: file.hostname.unwrap_or_else(system_hostname),
            postmaster: file.postmaster,
            user: file.user,
            local_domains: file
                .local_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            listeners: file.listeners,
            tls: file.tls,
            passwd_file: file
                .auth
                .passwd_file
                .unwrap_or_else(|| PathBuf::from("/etc/postern/passwd")),
            sender_scope: file.auth.sender_scope,
            local_submission: file.local_submission,
            maildir: file
                .delivery
                .maildir
                .unwrap_or_else(|| "/var/vmail/%d/%n/Maildir".to_string()),
            maildir_owner: file.delivery.owner,
            relay_host: file.delivery.relay_host,
            routes: file.delivery.routes,
            outbound,
            limits: file.limits,
            queue: file.queue,
            metrics: file.metrics,
            dkim: file.dkim,
            inbound: file.inbound,
            data_dir,
        }
    }

    /// Loopback only, unprivileged ports, everything under `./postern-data`: a server
    /// anyone can start to try postern, that nobody outside the machine can reach.
    pub fn development_defaults() -> Config {
        let data_dir = PathBuf::from(DEV_DATA_DIR);
        let listener = |name: &str, port: u16, role| Listener {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            role,
        };
        Config {
            source: Source::Defaults,
            hostname: system_hostname(),
            local_domains: vec!["localhost".to_string()],
            postmaster: None,
            user: None,
            listeners: vec![
                listener("mx", 2525, Role::Mx),
                listener("submission", 5587, Role::Submission),
                listener("submissions", 5465, Role::Submissions),
            ],
            tls: None,
            passwd_file: data_dir.join("passwd"),
            sender_scope: SenderScope::default(),
            local_submission: Some(LocalSubmission {
                socket: data_dir.join("submit.sock"),
                senders: BTreeMap::new(),
            }),
            maildir: format!("{}/mail/%d/%n/Maildir", data_dir.display()),
            maildir_owner: None,
            relay_host: None,
            routes: BTreeMap::new(),
            outbound: Outbound::default(),
            limits: Limits::default(),
            queue: QueueSettings::default(),
            metrics: None,
            dkim: Vec::new(),
            inbound: InboundAuth::default(),
            data_dir,
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Replaces Rust type names in serde's messages by words an administrator reads.
fn plain_words(message: &str) -> String {
    message
        .replace("expected usize", "expected a whole number")
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
}

/// A duration: a number of seconds, or a string with a unit (`"90s"`, `"5m"`, `"4h"`,
/// `"5d"`).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration; write e.g. 90 (seconds), \"90s\", \"5m\", \"4h\" or \"5d\""
            ))
        }),
    }
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(scale).map(Duration::from_secs)
}

/// `"IP:PORT"`, with an error that shows the value and the expected form.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP:PORT address; write e.g. \"127.0.0.1:587\", \"0.0.0.0:25\" or \"[::1]:587\""
        ))
    })
}

/// The kernel's host name, or `localhost` when it cannot be read.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A configuration is read only when root or the caller owns it: one owned by anyone
/// else could send the caller's mail (root's included) wherever its owner likes.
fn ensure_trusted_owner(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    let caller = nix::unistd::geteuid().as_raw();
    if meta.uid() == 0 || meta.uid() == caller {
        return Ok(());
    }
    Err(ConfigError::Untrusted {
        path: path.display().to_string(),
        owner: meta.uid(),
        caller,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// Lines that set `key` (`key = value`, any spacing): their 1-based numbers and the
/// text after `=`. For errors about values that are valid TOML but not valid settings.
fn key_lines<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let rest = line.trim_start().strip_prefix(key)?;
        let value = rest.trim_start().strip_prefix('=')?;
        Some((i + 1, value.trim()))
    })
}

fn line_of_key(text: &str, key: &str) -> usize {
    key_lines(text, key).next().map_or(1, |(n, _)| n)
}

/// The line of the `occurrence`-th (0-based) `key = "value"`.
fn line_of_value(text: &str, key: &str, value: &str, occurrence: usize) -> usize {
    key_lines(text, key)
        .filter(|(_, v)| string_value(v) == Some(value))
        .nth(occurrence)
        .map_or(1, |(n, _)| n)
}

/// The contents of a basic TOML string at the start of `v`, when it has no escapes.
fn string_value(v: &str) -> Option<&str> {
    let inner = v.strip_prefix('"')?;
    inner.find('"').map(|end| &inner[..end])
}

fn validate(config: &Config, text: &str) -> Result<(), ConfigError> {
    let path = config.source.to_string();
    let error = |line: usize, message: String| ConfigError::Invalid {
        path: path.clone(),
        line,
        message,
    };
    let invalid = |key: &str, message: String| error(line_of_key(text, key), message);
    if config.listeners.is_empty() {
        return Err(error(
            1,
            "no [[listener]] is configured; add one, e.g. name = \"submission\", addr = \"127.0.0.1:587\", role = \"submission\"".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for l in &config.listeners {
        if l.name.is_empty() {
            return Err(error(
                line_of_value(text, "name", "", 0),
                "listener name must not be empty".into(),
            ));
        }
        if !names.insert(l.name.as_str()) {
            return Err(error(
                line_of_value(text, "name", &l.name, 1),
                format!(
                    "listener name {:?} is used twice; names must be unique",
                    l.name
                ),
            ));
        }
    }
    for d in &config.local_domains {
        if postern_proto::Domain::parse(d)
            .ok()
            .and_then(|d| d.name().map(str::to_string))
            .is_none()
        {
            return Err(invalid(
                "local_domains",
                format!("local_domains: {d:?} is not a valid domain name"),
            ));
        }
    }
    if let Some(pm) = &config.postmaster
        && postern_proto::Mailbox::parse(pm).is_err()
    {
        return Err(invalid(
            "postmaster",
            format!("postmaster: {pm:?} is not a mail address; write e.g. \"admin@example.com\""),
        ));
    }
    if config.hostname.trim().is_empty() || config.hostname.contains(char::is_whitespace) {
        return Err(invalid(
            "hostname",
            "hostname must be one word, e.g. \"mail.example.com\"".into(),
        ));
    }
    if let Some(owner) = &config.maildir_owner
        && !matches!(nix::unistd::User::from_name(owner), Ok(Some(_)))
    {
        return Err(invalid(
            "owner",
            format!(
                "delivery.owner: there is no Unix user {owner:?}; create it (e.g. useradd --system vmail) or fix the name"
            ),
        ));
    }
    let template = &config.maildir;
    if !template.contains("%d") && !template.contains("%u") && !template.contains("%n") {
        return Err(invalid(
            "maildir",
            "delivery.maildir must contain %n, %d or %u, or every mailbox would share one Maildir"
                .into(),
        ));
    }
    let mut bound = std::collections::HashMap::new();
    // Port 0 is "any free port": two of those never collide.
    for l in config.listeners.iter().filter(|l| l.addr.port() != 0) {
        if let Some(other) = bound.insert(l.addr, &l.name) {
            return Err(error(
                line_of_value(text, "name", &l.name, 0),
                format!(
                    "listeners {other:?} and {:?} both bind {}; give each its own address or port",
                    l.name, l.addr
                ),
            ));
        }
    }
    validate_data_dir(config, &invalid)?;
    let limits = &config.limits;
    for (key, value) in [
        ("max_message_size", limits.max_message_size as u64),
        ("max_recipients", limits.max_recipients as u64),
        ("command_timeout", limits.command_timeout),
        ("data_timeout", limits.data_timeout),
        ("max_connections", limits.max_connections as u64),
        (
            "max_connections_per_client",
            limits.max_connections_per_client as u64,
        ),
    ] {
        if value == 0 {
            return Err(invalid(key, format!("limits.{key} must be at least 1")));
        }
    }
    Ok(())
}

/// `data_dir` is handed to the service user at start: it must not be `/`, and must not
/// hold the passwd-file or the configuration, which the service user could then replace.
fn validate_data_dir(
    config: &Config,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let data_dir = normalized(&config.data_dir);
    if data_dir.parent().is_none() {
        return Err(invalid(
            "data_dir",
            format!(
                "data_dir = {:?}: the server gives its data directory to the service user; use a directory of its own, e.g. \"{DEFAULT_DATA_DIR}\"",
                config.data_dir.display()
            ),
        ));
    }
    let config_file = match &config.source {
        Source::File(path) => Some(path.clone()),
        Source::Defaults => None,
    };
    for (what, path) in [
        ("the passwd-file", Some(config.passwd_file.clone())),
        ("the configuration file", config_file),
    ] {
        let Some(path) = path else { continue };
        if normalized(&path).starts_with(&data_dir) {
            return Err(invalid(
                "data_dir",
                format!(
                    "{what} {} is inside data_dir {}, which the service user owns and could replace it in; move it out (e.g. to /etc/postern/)",
                    path.display(),
                    config.data_dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The path made absolute against the current directory, with `.` and `..` resolved by
/// name (nothing is followed: the files may not exist yet).
fn normalized(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// What is allowed but probably wrong, one `(line, text)` each: printed by
/// `check-config`, logged by `serve`.
pub fn warnings(config: &Config, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let template = &config.maildir;
    if config.local_domains.len() > 1
        && template.contains("%n")
        && !template.contains("%d")
        && !template.contains("%u")
    {
        out.push((
            line_of_key(text, "maildir"),
            format!(
                "delivery.maildir {template:?} has %n but not %d while {} domains are local: alice@ each of them would share one Maildir",
                config.local_domains.len()
            ),
        ));
    }
    if let Some(local) = &config.local_submission
        && let Some(dir) = local.socket.parent()
        && is_world_writable(dir)
    {
        out.push((
            line_of_key(text, "socket"),
            format!(
                "local_submission.socket is in {}, which every user may write: another user could put its own socket there first; use e.g. /run/postern/submit.sock",
                dir.display()
            ),
        ));
    }
    if let Some(metrics) = &config.metrics
        && !metrics.addr.ip().is_loopback()
    {
        out.push((
            line_of_key(text, "addr"),
            format!(
                "metrics.addr {} is not loopback: anyone who reaches it reads your queue and traffic figures; bind 127.0.0.1 and scrape through a proxy or tunnel",
                metrics.addr
            ),
        ));
    }
    out
}

fn is_world_writable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_may_not_be_root_or_hold_the_passwd_file() {
        let root = format!("data_dir = \"/\"\n{MINIMAL}");
        let e = parse(&root).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:1: data_dir = \"/\""), "{e}");
        let holds = format!(
            "data_dir = \"/var/lib/postern\"\n[auth]\npasswd_file = \"/var/lib/postern/../postern/passwd\"\n{MINIMAL}"
        );
        let e = parse(&holds).unwrap_err().to_string();
        assert!(e.contains("the passwd-file"), "{e}");
        let fine = format!(
            "data_dir = \"/var/lib/postern\"\n[auth]\npasswd_file = \"/etc/postern/passwd\"\n{MINIMAL}"
        );
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let text = format!(
            "{MINIMAL}[[listener]]\nname = \"other\"\naddr = \"127.0.0.1:25\"\nrole = \"submission\"\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("both bind 127.0.0.1:25"), "{e}");
    }

    #[test]
    fn risky_settings_are_warned_about() {
        let text = format!(
            "local_domains = [\"a.example\", \"b.example\"]\n{MINIMAL}[delivery]\nmaildir = \"/var/vmail/%n/Maildir\"\n[local_submission]\nsocket = \"/tmp/submit.sock\"\n[metrics]\naddr = \"0.0.0.0:9187\"\n"
        );
        let config = parse(&text).unwrap();
        let said: Vec<String> = warnings(&config, &text)
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].contains("share one Maildir"));
        assert!(said[1].contains("/tmp"));
        assert!(said[2].contains("not loopback"));
        let quiet = parse(MINIMAL).unwrap();
        assert!(warnings(&quiet, MINIMAL).is_empty());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddr = \"127.0.0.1:25\"\nrole = \"mx\"\n";

    #[test]
    fn contract_example_parses() {
        let text = include_str!("../tests/fixtures/contract.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.hostname, "mail.example.com");
        assert_eq!(c.local_domains, vec!["example.com"]);
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[1].role, Role::Submission);
        assert_eq!(
            c.routes.get("remote.test").map(String::as_str),
            Some("127.0.0.1:10099")
        );
        assert!(c.is_local_domain("EXAMPLE.COM"));
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = parse(&format!("{MINIMAL}\n[limits]\nmax_mesage_size = 5\n")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.toml:7: "), "{text}");
        assert!(text.contains("max_mesage_size"), "{text}");
    }

    #[test]
    fn bad_role_and_bad_address_name_their_lines() {
        let err = parse("[[listener]]\nname = \"x\"\naddr = \"127.0.0.1:25\"\nrole = \"relay\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:4: "), "{err}");
        let err = parse("[[listener]]\nname = \"x\"\naddr = \"nowhere\"\nrole = \"mx\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:3: "), "{err}");
    }

    #[test]
    fn duplicate_listener_names_are_refused() {
        let err = parse(&format!("{MINIMAL}{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:6: "), "{err}");
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_offending_line_whatever_the_spacing() {
        let text = "[[listener]]\nname=\"mx\"\naddr = \"127.0.0.1:25\"\nrole = \"mx\"\n[[listener]]\nname  =  \"mx\" # again\naddr = \"127.0.0.1:26\"\nrole = \"mx\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:6: "), "{err}");
        let err = parse(&format!(
            "{MINIMAL}[limits]\nmax_message_size = 10\nmax_recipients = 0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml:7: limits.max_recipients"),
            "{err}"
        );
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("5d"), Some(Duration::from_secs(432000)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("5 weeks"), None);
        let c = parse(&format!(
            "{MINIMAL}[queue]\nmax_age = \"2h\"\nretry_first = 1\n[delivery]\ntimeout = \"10s\"\n"
        ))
        .unwrap();
        assert_eq!(c.queue.max_age, Duration::from_secs(7200));
        assert_eq!(c.queue.retry_first, Duration::from_secs(1));
        assert_eq!(c.outbound.timeout, Duration::from_secs(10));
        let err = parse(&format!("{MINIMAL}[queue]\nmax_age = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:6: \"soon\" is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn no_listener_is_an_error() {
        assert!(
            parse("hostname = \"x\"\n")
                .unwrap_err()
                .to_string()
                .contains("[[listener]]")
        );
    }

    #[test]
    fn invalid_local_domain_is_refused() {
        let err = parse(&format!("local_domains = [\"bad domain\"]\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:1: "), "{err}");
    }

    #[test]
    fn timing_settings_keep_their_defaults_and_can_be_set() {
        let c = parse(&format!("{MINIMAL}[metrics]\naddr = \"127.0.0.1:0\"\n")).unwrap();
        assert_eq!(c.limits.auth_failure_delay_ms, 500);
        assert_eq!(c.outbound.connection_idle, Duration::from_secs(5));
        assert_eq!(c.metrics.unwrap().queue_refresh, Duration::from_secs(10));
        let d = Config::development_defaults();
        assert_eq!(d.limits.auth_failure_delay_ms, 500);
        assert_eq!(d.outbound.connection_idle, Duration::from_secs(5));
        let c = parse(&format!(
            "{MINIMAL}[limits]\nauth_failure_delay_ms = 10\n[delivery]\nconnection_idle = \"1h\"\n\
             [metrics]\naddr = \"127.0.0.1:0\"\nqueue_refresh = 1\n"
        ))
        .unwrap();
        assert_eq!(c.limits.auth_failure_delay_ms, 10);
        assert_eq!(c.outbound.connection_idle, Duration::from_secs(3600));
        assert_eq!(c.metrics.unwrap().queue_refresh, Duration::from_secs(1));
    }

    #[test]
    fn inbound_defaults_and_switches() {
        let on = InboundAuth {
            verify: true,
            dmarc_reject: true,
        };
        assert_eq!(parse(MINIMAL).unwrap().inbound, on);
        assert_eq!(Config::development_defaults().inbound, on);
        let c = parse(&format!("{MINIMAL}[inbound]\ndmarc_reject = false\n")).unwrap();
        assert_eq!(
            c.inbound,
            InboundAuth {
                verify: true,
                dmarc_reject: false
            }
        );
        let c = parse(&format!("{MINIMAL}[inbound]\nverify = false\n")).unwrap();
        assert!(!c.inbound.verify);
        let err = parse(&format!("{MINIMAL}[inbound]\ndmarc = false\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:6: "), "{err}");
        assert!(err.contains("expected `verify` or `dmarc_reject`"), "{err}");
    }

    #[test]
    fn defaults_are_loopback_only() {
        let c = Config::development_defaults();
        assert!(c.listeners.iter().all(|l| l.addr.ip().is_loopback()));
        assert!(c.listeners.iter().all(|l| l.addr.port() > 1024));
    }
}
