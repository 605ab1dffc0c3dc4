//! `postern check-config`, chasquid-style: every directory under `tests/bad_configs/`
//! holds a `postern.toml` with one mistake and an `expected-error` file with the exact
//! one-line stderr of `postern check-config --config <that file>`, the file's path
//! written as the token `FILE`.
//!
//! Adding a key to a table changes the "expected one of" lists. To rewrite the
//! `expected-error` files from the current binary, run
//! `POSTERN_BLESS=1 cargo test -p postern --test check_config`, then read the diff:
//! every message must still name the right line and say what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

fn check_config(config: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .env_remove("POSTERN_CONFIG")
        .output()
        .expect("run postern check-config")
}

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_configs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_bad_config_fails_with_its_expected_error() {
    let dirs = fixture_dirs();
    assert!(dirs.len() >= 10, "expected the fixtures, found {dirs:?}");
    let bless = std::env::var_os("POSTERN_BLESS").is_some();
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let config = dir.join("postern.toml");
        let expected = std::fs::read_to_string(dir.join("expected-error"))
            .unwrap_or_else(|e| panic!("{name}/expected-error: {e}"));
        let out = check_config(&config);
        let stderr = String::from_utf8_lossy(&out.stderr)
            .replace(config.to_str().expect("utf-8 path"), "FILE");
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{name}: exit status {:?}, expected 1; stderr: {stderr}",
                out.status.code()
            ));
        } else if stderr.lines().count() != 1 || !stderr.starts_with("FILE:") {
            failures.push(format!(
                "{name}: stderr is not one `FILE:LINE: message` line: {stderr:?}"
            ));
        } else if stderr != expected && bless {
            std::fs::write(dir.join("expected-error"), &stderr).expect("bless expected-error");
            eprintln!("blessed {name}: {stderr}");
        } else if stderr != expected {
            failures.push(format!(
                "{name}:\n  expected: {expected:?}\n  got:      {stderr:?}"
            ));
        }
        if !out.stdout.is_empty() {
            failures.push(format!(
                "{name}: unexpected stdout: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs did not fail as expected:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn the_contract_example_is_valid() {
    // check-config validates the file; it does not need the paths to exist.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contract.toml");
    let out = check_config(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(stdout.contains("ok"), "stdout: {stdout}");
}

#[test]
fn without_any_config_file_the_built_in_defaults_are_valid() {
    let cwd = tempfile::tempdir().expect("tempdir");
    // A machine with postern installed has /etc/postern: hide it from this run with an
    // empty directory mounted over it in a private mount namespace (root only).
    let etc = Path::new("/etc/postern");
    let empty = tempfile::tempdir().expect("tempdir");
    let mut command = if etc.exists() {
        if !common::root(
            "without_any_config_file_the_built_in_defaults_are_valid",
            "/etc/postern exists here; hiding it",
        ) {
            return;
        }
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/postern && exec \"$@\"")
            .arg(empty.path())
            .arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    let out = command
        .arg("check-config")
        .current_dir(cwd.path())
        .env_remove("POSTERN_CONFIG")
        .output()
        .expect("run postern check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("defaults are valid"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "check-config must not create anything"
    );
}
