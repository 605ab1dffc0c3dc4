//! `postern serve`: starts the listeners, the queue and delivery, and runs until
//! SIGTERM or SIGINT. SIGHUP reloads the configuration, the certificate and the users.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::auth::reader::ReaderAccess;
use crate::auth::{Credentials, PasswdFile};
use crate::config::{Config, Source};
use crate::delivery::dispatcher::{self, Deliverer};
use crate::delivery::next_hop::{Resolver, SystemResolver};
use crate::mailauth::sign::Signer;
use crate::mailauth::verify::Verifier;
use crate::privileges;
use crate::queue::Spool;
use crate::server::{self, Context, Settings, tls};

/// How long open sessions may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub fn run(explicit: Option<&Path>) -> anyhow::Result<()> {
    crate::logfmt::init();
    let source = Config::locate(explicit);
    match &source {
        Source::Defaults => tracing::info!(
            event = "starting",
            config = "defaults",
            msg = "no configuration file found: running on built-in development defaults (loopback only: mx 127.0.0.1:2525, submission 127.0.0.1:5587, submissions 127.0.0.1:5465; data in ./postern-data; local domain localhost)"
        ),
        Source::File(path) => tracing::info!(event = "starting", config = %path.display()),
    }
    let config = Config::load(&source)?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(source, config))
}

/// Raises the soft limit on open files to the hard limit (capped at 2^20). Every
/// connection is a descriptor, and the usual soft limit of 1024 is below the default
/// `max_connections`; the hard limit is the administrator's (systemd's `LimitNOFILE=`).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const CAP: u64 = 1 << 20;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = hard.min(CAP);
    if soft >= wanted {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
        Ok(()) => tracing::debug!(event = "open_files_limit", from = soft, to = wanted),
        Err(e) => {
            tracing::warn!(event = "open_files_limit", limit = soft, error = %e, "cannot raise the open files limit")
        }
    }
}

async fn serve(source: Source, config: Config) -> anyhow::Result<()> {
    let spool = Spool::open(&config.data_dir)
        .with_context(|| format!("cannot open the queue under {}", config.data_dir.display()))?;
    let recovered = spool.recover().context("cannot read the queue")?;
    tracing::info!(event = "queue_recovered", messages = recovered.len(), dir = %spool.dir().display());
    let tls = tls::acceptor(&config).context("cannot set up TLS")?;
    // Installed before the listeners are announced, so that a SIGTERM sent as soon as
    // the server says it is listening is already handled.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let bound = server::bind(&config).await?;
    for b in &bound {
        tracing::info!(event = "listening", listener = %b.listener.name, addr = %b.local_addr(), role = b.listener.role.as_str());
    }
    let local = match &config.local_submission {
        Some(local) => {
            let listener =
                crate::local::socket::bind(&local.socket, crate::local::socket::SUBMISSION_MODE)
                    .context("cannot create the local submission socket")?;
            tracing::info!(event = "listening", listener = "local", addr = %local.socket.display(), role = "local");
            Some(listener)
        }
        None => {
            tracing::info!(
                event = "local_submission_disabled",
                msg = "no [local_submission] socket configured: `postern sendmail` cannot submit"
            );
            None
        }
    };
    if let Some(m) = &config.metrics {
        let addr = crate::metrics::install(m.addr, m.queue_refresh, spool.clone())
            .context("cannot start the metrics endpoint")?;
        tracing::info!(event = "listening", listener = "metrics", addr = %addr, role = "metrics");
    }
    let control_socket =
        server::control::bind(&config.data_dir).context("cannot create the control socket")?;
    let signer = Arc::new(Signer::load(&config).context("cannot load the DKIM keys")?);
    // Everything that needs root is done: switch to the service user for good.
    let (users, dropped) = drop_privileges(&config)?;
    load_users(&users);
    let credentials: Arc<dyn Credentials> = users.clone();
    let resolver: Arc<dyn Resolver> =
        Arc::new(SystemResolver::new().context("cannot set up DNS resolution (/etc/resolv.conf)")?);
    let client_tls =
        crate::stream::opportunistic_client_config().context("cannot set up outbound TLS")?;
    let deliverer = Arc::new(Deliverer::new(
        config.clone(),
        spool.clone(),
        credentials.clone(),
        resolver.clone(),
        client_tls,
    ));
    let (stop, stopped) = watch::channel(false);
    let (delivery, delivery_task) =
        dispatcher::start(deliverer.clone(), recovered, stopped.clone());
    let verifier = Arc::new(Verifier::new(
        &config.hostname,
        resolver.clone(),
        config.inbound.dmarc_reject,
    ));
    let settings = Settings {
        config,
        tls,
        users: credentials,
        signer,
        verifier,
    };
    let ctx = Arc::new(Context::new(settings, spool, delivery));
    let reloader = Reloader {
        source,
        ctx: ctx.clone(),
        deliverer,
        users,
        dropped,
        resolver,
    };
    tokio::spawn(signals.handle(stop, reloader));
    crate::notify::notify("READY=1");
    server::run(ctx, bound, local, control_socket, stopped, SHUTDOWN_GRACE).await;
    if tokio::time::timeout(SHUTDOWN_GRACE, delivery_task)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "shutdown_timeout",
            msg = "deliveries still running were cut off; they are retried at the next start"
        );
    }
    tracing::info!(event = "stopped");
    Ok(())
}

/// Switches to the service user when started as root, and returns the passwd-file
/// backend: read through the privileged reader after a switch (the file may be
/// root-only), directly otherwise. The bool says whether privileges were dropped.
fn drop_privileges(config: &Config) -> anyhow::Result<(Arc<PasswdFile>, bool)> {
    // The development defaults keep everything in ./postern-data, the passwd-file too:
    // they switch user only when asked to.
    let wanted = match (&config.source, config.user.as_deref()) {
        (Source::Defaults, None) => Some("root"),
        (_, user) => user,
    };
    let Some(user) = privileges::target_user(wanted)? else {
        // Say so when root was not chosen on purpose (user = "root", or the defaults).
        if nix::unistd::Uid::effective().is_root() && wanted.is_none() {
            tracing::warn!(
                event = "running_as_root",
                msg = "no service user: set user = \"postern\" (or create a postern user) so that nothing the network sends runs as root"
            );
        }
        return Ok((Arc::new(PasswdFile::new(&config.passwd_file)), false));
    };
    if let Some(dir) =
        crate::auth::reader::writable_ancestor(&config.passwd_file, user.uid.as_raw())
    {
        anyhow::bail!(
            "the passwd-file {} is below {}, which the service user {} can change; move it out (e.g. to /etc/postern/passwd) so that it cannot be swapped for a link",
            config.passwd_file.display(),
            dir.display(),
            user.name
        );
    }
    privileges::hand_over(&config.data_dir, &user)?;
    let program =
        std::env::current_exe().context("cannot find the postern binary for the passwd reader")?;
    let reader = ReaderAccess::spawn(&program, &config.passwd_file)
        .context("cannot start the privileged passwd reader")?;
    let users = PasswdFile::with_access(&config.passwd_file, Arc::new(reader));
    privileges::switch_to(&user)?;
    Ok((Arc::new(users), true))
}

fn load_users(users: &PasswdFile) {
    match users.reload() {
        Ok(0) => tracing::warn!(
            event = "passwd_missing",
            path = %users.path().display(),
            msg = "no accounts (the passwd-file is missing or empty): nobody can log in and no local mailbox exists; add one with `postern user add ADDRESS`"
        ),
        Ok(count) => tracing::info!(event = "users_loaded", path = %users.path().display(), count),
        Err(e) => {
            tracing::error!(event = "users_unavailable", error = %e, msg = "logins and local recipients get temporary failures until the file is fixed")
        }
    }
}

/// SIGTERM and SIGINT stop the server; SIGHUP reloads.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn handle(mut self, stop: watch::Sender<bool>, mut reloader: Reloader) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    crate::notify::notify("RELOADING=1");
                    reloader.reload();
                    crate::notify::notify("READY=1");
                }
            }
        }
        crate::notify::notify("STOPPING=1");
        tracing::info!(
            event = "stopping",
            msg = "no new connections; open sessions end at their next command"
        );
        let _ = stop.send(true);
    }
}

/// Applies a new configuration without dropping connections: sessions already open
/// keep the settings they started with. A configuration that does not load (or whose
/// certificate does not) is refused whole, and the old one keeps serving.
struct Reloader {
    source: Source,
    ctx: Arc<Context>,
    deliverer: Arc<Deliverer>,
    users: Arc<PasswdFile>,
    /// Running as the service user: the passwd reader serves one path only.
    dropped: bool,
    resolver: Arc<dyn Resolver>,
}

impl Reloader {
    fn reload(&mut self) {
        tracing::info!(event = "reload", config = %self.source);
        let new = match Config::load(&self.source) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(event = "reload_failed", error = %e, msg = "the previous configuration stays in force");
                return;
            }
        };
        let tls = match tls::acceptor(&new) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(event = "reload_failed", error = %e, msg = "the previous configuration stays in force");
                return;
            }
        };
        let signer = match Signer::load(&new) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(event = "reload_failed", error = %e, msg = "the previous configuration stays in force");
                return;
            }
        };
        let verifier = Arc::new(Verifier::new(
            &new.hostname,
            self.resolver.clone(),
            new.inbound.dmarc_reject,
        ));
        let old = self.ctx.settings();
        for key in needs_restart(&old.config, &new) {
            tracing::warn!(
                event = "reload_needs_restart",
                key,
                msg = "this change takes effect at the next restart"
            );
        }
        if new.passwd_file != self.users.path() {
            if self.dropped {
                tracing::warn!(
                    event = "reload_needs_restart",
                    key = "auth.passwd_file",
                    msg = "the privileged reader serves the old path until the next restart"
                );
            } else {
                self.users = Arc::new(PasswdFile::new(&new.passwd_file));
            }
        }
        load_users(&self.users);
        let users: Arc<dyn Credentials> = self.users.clone();
        self.deliverer.replace(new.clone(), users.clone());
        self.ctx.replace_settings(Settings {
            config: new,
            tls,
            users,
            signer,
            verifier,
        });
        tracing::info!(event = "reloaded");
    }
}

/// Settings that are bound at start: sockets, directories, the metrics endpoint.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let listeners = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.addr, l.role))
            .collect::<Vec<_>>()
    };
    let mut keys = Vec::new();
    if listeners(old) != listeners(new) {
        keys.push("listener");
    }
    if old.data_dir != new.data_dir {
        keys.push("data_dir");
    }
    if old.user != new.user {
        keys.push("user");
    }
    if old.local_submission.as_ref().map(|l| &l.socket)
        != new.local_submission.as_ref().map(|l| &l.socket)
    {
        keys.push("local_submission");
    }
    if old.metrics.as_ref().map(|m| m.addr) != new.metrics.as_ref().map(|m| m.addr) {
        keys.push("metrics");
    }
    if old.outbound.max_connections != new.outbound.max_connections {
        keys.push("delivery.max_connections");
    }
    keys
}
