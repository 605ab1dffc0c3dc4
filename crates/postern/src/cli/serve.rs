//! `postern serve`: runs the daemon in the foreground until SIGTERM or SIGINT (see
//! [`crate::daemon`], which starts and stops everything).

use std::path::Path;

pub fn run(explicit: Option<&Path>) -> anyhow::Result<()> {
    crate::daemon::run(explicit)
}
