//! The composition root: the one place that builds the server's parts and starts
//! them — the queue and the dispatcher, the SMTP listeners, the local submission socket,
//! the control socket, the metrics endpoint, signals and reload — and stops them in
//! order at SIGTERM or SIGINT. Nothing below imports it.
//!
//! Order at start: everything that needs root (binding ports and sockets, reading keys)
//! happens before privileges are dropped; the listeners are announced (`event=listening`)
//! only after the signal handlers are installed. Order at stop: no new connections,
//! open sessions end at their next command (for at most `SHUTDOWN_GRACE`), then the
//! dispatcher records the outcomes of attempts already made.

mod reload;
mod signals;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use self::reload::{Reloader, load_users};
use self::signals::Signals;
use crate::auth::reader::ReaderAccess;
use crate::auth::{Credentials, PasswdFile};
use crate::config::{Config, Source};
use crate::context::{Context, Settings};
use crate::delivery::dispatcher::{self, Deliverer};
use crate::dns::{Resolver, SystemResolver};
use crate::mailauth::sign::Signer;
use crate::mailauth::verify::Verifier;
use crate::queue::Spool;
use crate::server::{self, tls};
use crate::shutdown::{self, Sessions};
use crate::{control, privileges, unix_socket};

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
    if let Source::File(path) = &source {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (line, warning) in crate::config::warnings(&config, &text) {
            tracing::warn!(event = "config_warning", file = %path.display(), line, msg = %warning);
        }
    }
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
            let listener = unix_socket::bind(&local.socket, crate::local::socket::SUBMISSION_MODE)
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
        control::bind(&config.data_dir).context("cannot create the control socket")?;
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
    let (stop, stopped) = shutdown::signal();
    let (delivery, delivery_task) =
        dispatcher::start(deliverer.clone(), recovered, stopped.receiver());
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
    let sessions = Sessions::default();
    tokio::spawn(control::serve(ctx.clone(), control_socket, stopped.clone()));
    for b in bound {
        let accepting = server::accept(ctx.clone(), b, stopped.clone(), sessions.guard());
        tokio::spawn(accepting);
    }
    if let Some(listener) = local {
        let accepting =
            crate::local::socket::accept(ctx.clone(), listener, stopped.clone(), sessions.guard());
        tokio::spawn(accepting);
    }
    stopped.clone().requested().await;
    if !sessions.wait_all_ended(SHUTDOWN_GRACE).await {
        tracing::warn!(
            event = "shutdown_timeout",
            msg = "sessions still open after the grace period were cut off"
        );
    }
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
