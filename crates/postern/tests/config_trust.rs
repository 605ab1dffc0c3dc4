//! Which configuration file a command trusts: never `./postern.toml` as root, only the
//! caller's own there otherwise, and never a file owned by someone who is neither root
//! nor the caller (it could send the caller's mail anywhere).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A planted configuration that names itself, so the output shows when it was read.
const PLANTED: &str = "hostname = \"planted.example\"\nlocal_domains = [\"planted.example\"]\n\n[[listener]]\nname = \"mx\"\naddr = \"127.0.0.1:2525\"\nrole = \"mx\"\n";

fn world_readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The binary where an unprivileged user can run it.
fn public_binary(dir: &Path) -> PathBuf {
    let copy = dir.join("postern");
    std::fs::copy(common::BIN, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

fn check_config_in(dir: &Path, as_user: Option<&str>, env: Option<&Path>) -> Output {
    let binary = public_binary(dir);
    let mut cmd = match as_user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    cmd.arg("check-config")
        .current_dir(dir)
        .env_remove("POSTERN_CONFIG");
    if let Some(path) = env {
        cmd.env("POSTERN_CONFIG", path);
    }
    // A binary copied a moment ago can be "busy" while another test thread's fork still
    // holds the copy's descriptor (until that child's exec closes it): try again.
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result.expect("run postern check-config"),
        }
    }
    cmd.output().expect("run postern check-config")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn chown(path: &Path, uid: u32) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
}

#[test]
fn root_never_reads_postern_toml_from_the_current_directory() {
    if !common::root(
        "root_never_reads_postern_toml_from_the_current_directory",
        "running check-config as root",
    ) {
        return;
    }
    let dir = world_readable_dir();
    std::fs::write(dir.path().join("postern.toml"), PLANTED).unwrap();
    let out = check_config_in(dir.path(), None, None);
    assert!(
        !text(&out).contains("planted.example"),
        "root read ./postern.toml: {}",
        text(&out)
    );
}

#[test]
fn a_user_reads_only_its_own_postern_toml_from_the_current_directory() {
    let Some(uid) = common::test_user("posterntest") else {
        return;
    };
    let dir = world_readable_dir();
    let planted = dir.path().join("postern.toml");
    std::fs::write(&planted, PLANTED).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Planted by someone else (root here): not read.
    let out = check_config_in(dir.path(), Some("posterntest"), None);
    assert!(!text(&out).contains("planted.example"), "{}", text(&out));
    // The user's own file is.
    chown(&planted, uid);
    let out = check_config_in(dir.path(), Some("posterntest"), None);
    assert!(text(&out).contains("planted.example"), "{}", text(&out));
}

#[test]
fn a_config_owned_by_another_user_is_refused_and_says_why() {
    let Some(uid) = common::test_user("posterntest") else {
        return;
    };
    let dir = world_readable_dir();
    let theirs = dir.path().join("theirs.toml");
    std::fs::write(&theirs, PLANTED).unwrap();
    chown(&theirs, uid);
    let out = check_config_in(dir.path(), None, Some(&theirs));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("owned by uid {uid}, neither root nor you")),
        "{said}"
    );
    assert!(!said.contains("ok ("), "{said}");
}
