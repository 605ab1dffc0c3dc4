//! Least privilege: started as root, `serve` binds its ports and sockets, hands the
//! data directory to the service user, then runs as that user for good.
//!
//! What still needs root afterwards is done before the switch (binding ports below
//! 1024, creating the sockets) or by the privileged passwd reader (`auth::reader`), so
//! the passwd-file may stay readable by root only.
//!
//! # Security
//!
//! The switch is permanent (setgroups, setgid, setuid; then a check that root cannot be
//! regained). Nothing the network sends runs as root afterwards.

use std::path::Path;

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "user = {0:?}: there is no such Unix user; create it (useradd --system {0}) or fix the name"
    )]
    NoSuchUser(String),
    #[error("cannot hand {path} to the service user: {source}")]
    Chown {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot switch to user {user}: {source}")]
    Switch { user: String, source: nix::Error },
    #[error("switched to user {0}, but root could be regained; refusing to run")]
    NotPermanent(String),
}

/// The service user to switch to: `configured`, else `postern` when it exists; `None`
/// when not running as root (nothing to drop), or with `user = "root"`.
pub fn target_user(configured: Option<&str>) -> Result<Option<User>, PrivilegeError> {
    if !Uid::effective().is_root() {
        if let Some(name) = configured {
            tracing::warn!(event = "privileges_kept", user = %name, msg = "not started as root: the user setting is ignored");
        }
        return Ok(None);
    }
    match configured {
        // Explicitly root: stay root (development, or a container that is its own box).
        Some("root") => Ok(None),
        Some(name) => match User::from_name(name) {
            Ok(Some(user)) => Ok(Some(user)),
            _ => Err(PrivilegeError::NoSuchUser(name.to_string())),
        },
        None => Ok(User::from_name("postern").ok().flatten()),
    }
}

/// Gives `dir` and everything below it to `user` (the queue, the generated certificate,
/// the control socket), so the server can still use them after the switch.
pub fn hand_over(dir: &Path, user: &User) -> Result<(), PrivilegeError> {
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(
            |source| PrivilegeError::Chown {
                path: path.display().to_string(),
                source,
            },
        )
    };
    chown(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|source| PrivilegeError::Chown {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            hand_over(&path, user)?;
        } else {
            chown(&path)?;
        }
    }
    Ok(())
}

/// Switches to `user` for good.
pub fn switch_to(user: &User) -> Result<(), PrivilegeError> {
    let fail = |source| PrivilegeError::Switch {
        user: user.name.clone(),
        source,
    };
    nix::unistd::setgroups(&[user.gid]).map_err(fail)?;
    nix::unistd::setgid(user.gid).map_err(fail)?;
    nix::unistd::setuid(user.uid).map_err(fail)?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
    {
        return Err(PrivilegeError::NotPermanent(user.name.clone()));
    }
    tracing::info!(event = "privileges_dropped", user = %user.name, uid = user.uid.as_raw(), gid = user.gid.as_raw());
    Ok(())
}
