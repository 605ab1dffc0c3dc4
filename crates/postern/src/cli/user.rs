//! `postern user add|passwd|del|list`: maintains the passwd-file. Passwords are read
//! from the terminal (twice) or from standard input, and never printed or logged.

use std::io::BufRead as _;
use std::path::Path;

use anyhow::{Context as _, bail};

use super::UserAction;
use crate::auth::passwd_file;
use crate::config::Config;

pub fn run(explicit: Option<&Path>, action: UserAction) -> anyhow::Result<()> {
    let config = Config::load(&Config::locate(explicit))?;
    let path = config.passwd_file.as_path();
    match action {
        UserAction::Add {
            address,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            passwd_file::add_user(path, &address, &password)?;
            println!("added {address} to {}", path.display());
        }
        UserAction::Passwd {
            address,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            passwd_file::set_password(path, &address, &password)?;
            println!("changed the password of {address} in {}", path.display());
        }
        UserAction::Del { address } => {
            passwd_file::delete_user(path, &address)?;
            println!("removed {address} from {}", path.display());
        }
        UserAction::List => {
            for login in passwd_file::list_users(path)? {
                println!("{login}");
            }
        }
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ")
            .context("cannot read the password from the terminal; use --password-stdin")?;
        let second = rpassword::prompt_password("Again: ")
            .context("cannot read the password from the terminal; use --password-stdin")?;
        if first != second {
            bail!("the two passwords differ; nothing was changed");
        }
        first
    };
    if password.is_empty() {
        bail!("the password is empty; nothing was changed");
    }
    Ok(password)
}
