//! The daemon's signals: SIGTERM and SIGINT stop it, SIGHUP reloads it.

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::reload::Reloader;
use crate::shutdown::Trigger;

/// SIGTERM and SIGINT stop the server; SIGHUP reloads.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn handle(mut self, stop: Trigger, mut reloader: Reloader) {
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
        stop.fire();
    }
}
