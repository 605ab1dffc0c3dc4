//! SIGHUP: a new configuration, certificate and user list, without dropping connections.

use std::sync::Arc;

use crate::auth::{Credentials, PasswdFile};
use crate::config::{Config, Source};
use crate::context::{Context, Settings};
use crate::delivery::dispatcher::Deliverer;
use crate::dns::Resolver;
use crate::mailauth::sign::Signer;
use crate::mailauth::verify::Verifier;
use crate::server::tls;

/// Applies a new configuration without dropping connections: sessions already open
/// keep the settings they started with. A configuration that does not load (or whose
/// certificate does not) is refused whole, and the old one keeps serving.
pub struct Reloader {
    pub source: Source,
    pub ctx: Arc<Context>,
    pub deliverer: Arc<Deliverer>,
    pub users: Arc<PasswdFile>,
    /// Running as the service user: the passwd reader serves one path only.
    pub dropped: bool,
    pub resolver: Arc<dyn Resolver>,
}

impl Reloader {
    pub fn reload(&mut self) {
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

pub fn load_users(users: &PasswdFile) {
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
