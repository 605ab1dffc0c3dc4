//! The settings every part of delivery reads: the configuration and the user database
//! as of the last reload (SIGHUP).
//!
//! It owns the swap on reload and nothing else. A delivery takes what it needs when it
//! starts (`config()` hands out an `Arc`), so a reload never changes an attempt in
//! progress. It must not load or check a configuration: the caller hands it one that
//! loaded.

use std::sync::{Arc, RwLock};

use crate::auth::Credentials;
use crate::config::Config;

/// The configuration and users that deliveries starting now use.
pub struct Settings {
    config: RwLock<Arc<Config>>,
    users: RwLock<Arc<dyn Credentials>>,
}

impl Settings {
    pub fn new(config: Config, users: Arc<dyn Credentials>) -> Settings {
        Settings {
            config: RwLock::new(Arc::new(config)),
            users: RwLock::new(users),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn users(&self) -> Arc<dyn Credentials> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New settings from a reload, for the deliveries that start from now on.
    pub fn replace(&self, config: Config, users: Arc<dyn Credentials>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
    }
}
