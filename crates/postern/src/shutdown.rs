//! The one shutdown signal every task watches, and the count of sessions still open.
//!
//! The daemon fires the [`Trigger`] once (SIGTERM, SIGINT); accept loops stop taking
//! connections, sessions end at their next command, the dispatcher records what it
//! has done and stops. [`Sessions`] lets the daemon wait until every session a loop
//! started has ended, for at most a grace period.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Fires the shutdown; held by the daemon's signal handler.
pub struct Trigger(watch::Sender<bool>);

/// Watches for the shutdown. Cheap to clone; every task holds its own.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, unfired shutdown signal.
pub fn signal() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether the shutdown has been fired (or its trigger is gone).
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once the shutdown is fired, or at once if it already was. A dropped
    /// trigger counts as fired: nobody could stop the task otherwise.
    pub async fn requested(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }

    /// The underlying channel, for parts that take a `watch::Receiver` (the dispatcher).
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

/// Counts the sessions the accept loops started, so that the daemon can wait for the
/// last one to end. Each session holds a [`SessionGuard`] until it returns.
pub struct Sessions {
    alive: mpsc::Sender<()>,
    all_ended: mpsc::Receiver<()>,
}

/// Held by one open session; dropping it says the session ended.
#[derive(Clone)]
pub struct SessionGuard(#[allow(dead_code)] mpsc::Sender<()>);

impl Default for Sessions {
    fn default() -> Sessions {
        // Nothing is ever sent: the channel closes when the last sender is dropped.
        let (alive, all_ended) = mpsc::channel(1);
        Sessions { alive, all_ended }
    }
}

impl Sessions {
    pub fn guard(&self) -> SessionGuard {
        SessionGuard(self.alive.clone())
    }

    /// Waits until every guard handed out is dropped, for at most `grace`. False when
    /// sessions were still open at the end of it.
    pub async fn wait_all_ended(self, grace: Duration) -> bool {
        let Sessions {
            alive,
            mut all_ended,
        } = self;
        drop(alive);
        tokio::time::timeout(grace, all_ended.recv()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requested_resolves_when_fired_and_after() {
        let (trigger, mut shutdown) = signal();
        assert!(!shutdown.is_requested());
        let mut waiting = shutdown.clone();
        let task = tokio::spawn(async move { waiting.requested().await });
        trigger.fire();
        task.await.unwrap();
        assert!(shutdown.is_requested());
        // Already fired: resolves at once.
        shutdown.requested().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_fired() {
        let (trigger, mut shutdown) = signal();
        drop(trigger);
        assert!(shutdown.is_requested());
        shutdown.requested().await;
    }

    #[tokio::test]
    async fn sessions_end_when_every_guard_is_dropped() {
        let sessions = Sessions::default();
        let guard = sessions.guard();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = released.await;
            drop(guard);
        });
        let still_open = Sessions::default();
        let _held = still_open.guard();
        assert!(
            !still_open.wait_all_ended(Duration::from_millis(10)).await,
            "a guard is still held"
        );
        release.send(()).unwrap();
        assert!(sessions.wait_all_ended(Duration::from_secs(60)).await);
    }
}
