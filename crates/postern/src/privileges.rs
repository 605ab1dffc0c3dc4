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

use std::os::fd::OwnedFd;

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
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

/// Gives `dir`, its files, and the files of its `queue`, `queue/corrupt`, `tls` and `dkim`
/// directories to `user`, so the server can use them after the switch.
///
/// Root walks a tree that the service user could have changed (a process of a previous
/// run, say), so nothing here follows a symbolic link: directories are opened with
/// `O_NOFOLLOW` relative to their parent, and owners are changed with
/// `AT_SYMLINK_NOFOLLOW`. A link in the tree is given away as a link, never its target.
pub fn hand_over(dir: &Path, user: &User) -> Result<(), PrivilegeError> {
    let error = |source: nix::Error| PrivilegeError::Chown {
        path: dir.display().to_string(),
        source: std::io::Error::from(source),
    };
    let fd = nix::fcntl::open(dir, directory_flags(), Mode::empty()).map_err(error)?;
    nix::unistd::fchown(&fd, Some(user.uid), Some(user.gid)).map_err(error)?;
    hand_over_entries(fd, dir, user, 0)
}

fn directory_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The directories below `data_dir` that hold files the server needs.
const HANDED_OVER: [&str; 4] = ["queue", "corrupt", "tls", "dkim"];

fn hand_over_entries(
    fd: OwnedFd,
    path: &Path,
    user: &User,
    depth: usize,
) -> Result<(), PrivilegeError> {
    let error = |source: nix::Error| PrivilegeError::Chown {
        path: path.display().to_string(),
        source: std::io::Error::from(source),
    };
    let mut dir = Dir::from_fd(fd).map_err(error)?;
    let dir_fd = nix::unistd::dup(&dir).map_err(error)?;
    let mut subdirs = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(error)?;
        let name = entry.file_name().to_owned();
        let text = name.to_string_lossy().into_owned();
        if text == "." || text == ".." {
            continue;
        }
        nix::unistd::fchownat(
            &dir_fd,
            name.as_c_str(),
            Some(user.uid),
            Some(user.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(error)?;
        if entry.file_type() == Some(Type::Directory)
            && depth < 2
            && HANDED_OVER.contains(&text.as_str())
        {
            subdirs.push((name, text));
        }
    }
    for (name, text) in subdirs {
        let sub = nix::fcntl::openat(&dir_fd, name.as_c_str(), directory_flags(), Mode::empty())
            .map_err(error)?;
        hand_over_entries(sub, &path.join(text), user, depth + 1)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_gives_away_links_not_their_targets() {
        use std::os::unix::fs::MetadataExt as _;
        if !Uid::effective().is_root() {
            return;
        }
        let user = User::from_uid(Uid::from_raw(65534))
            .ok()
            .flatten()
            .unwrap_or(User {
                uid: Uid::from_raw(65534),
                gid: Gid::from_raw(65534),
                ..User::from_uid(Uid::from_raw(0)).unwrap().unwrap()
            });
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        std::fs::write(&target, b"x").unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join("queue")).unwrap();
        std::fs::write(data.path().join("queue/A.msg"), b"m").unwrap();
        std::os::unix::fs::symlink(&target, data.path().join("queue/evil")).unwrap();
        std::os::unix::fs::symlink(outside.path(), data.path().join("tls")).unwrap();
        hand_over(data.path(), &user).unwrap();
        assert_eq!(
            std::fs::metadata(data.path().join("queue/A.msg"))
                .unwrap()
                .uid(),
            65534
        );
        assert_eq!(
            std::fs::symlink_metadata(data.path().join("queue/evil"))
                .unwrap()
                .uid(),
            65534
        );
        assert_eq!(
            std::fs::metadata(&target).unwrap().uid(),
            0,
            "a link's target keeps its owner"
        );
        assert_eq!(
            std::fs::metadata(outside.path()).unwrap().uid(),
            0,
            "a linked directory is not entered"
        );
    }
}
