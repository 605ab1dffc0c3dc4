//! `postern dkim keygen|show`: makes DKIM signing keys and prints what to publish in DNS
//! and what to put in the configuration.
//!
//! A thin adapter over `mailauth::keys`: it reads the configuration and prints; it must
//! not write anything but the new key (and its owner, for the service user), nor
//! change the configuration file (the administrator pastes the printed table).

use std::path::Path;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use crate::config::{Config, Source};
use crate::mailauth::keys::{self, Algorithm};
use crate::privileges;

#[derive(Debug, Subcommand)]
pub enum DkimAction {
    /// Make a signing key under data_dir/dkim (mode 0600; an existing key is never
    /// overwritten) and print its DNS TXT record and its [[dkim]] table.
    Keygen {
        /// The signing domain (d=), usually the From: domain or its parent.
        #[arg(long)]
        domain: String,
        /// The selector (s=): a name for this key, e.g. s2026 (a new one for each rotation).
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa2048)]
        algorithm: KeyAlgorithm,
    },
    /// Print the DNS TXT record of every configured [[dkim]] key, derived from its key file.
    Show,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA, 2048 bits: verified by every receiver.
    Rsa2048,
    /// Ed25519 (RFC 8463): add it beside an RSA key, not instead of one.
    Ed25519,
}

impl From<KeyAlgorithm> for Algorithm {
    fn from(a: KeyAlgorithm) -> Algorithm {
        match a {
            KeyAlgorithm::Rsa2048 => Algorithm::Rsa2048,
            KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
        }
    }
}

pub fn run(explicit: Option<&Path>, action: DkimAction) -> ExitCode {
    let config = match Config::load(&Config::locate(explicit)) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    match action {
        DkimAction::Keygen {
            domain,
            selector,
            algorithm,
        } => keygen(&config, &domain, &selector, algorithm.into()),
        DkimAction::Show => show(&config),
    }
}

fn keygen(config: &Config, domain: &str, selector: &str, algorithm: Algorithm) -> ExitCode {
    // The server reads its keys after it switched to its service user: give the key to
    // that user, as `serve` gives it the data directory. Known before the key is made.
    let owner = match privileges::target_user(config.user.as_deref()) {
        Ok(owner) => owner,
        Err(e) => return fail(&e),
    };
    let key = match keys::keygen(&config.data_dir, domain, selector, algorithm) {
        Ok(key) => key,
        Err(e) => return fail(&e),
    };
    if let Some(user) = owner {
        let dir = key.path.parent().unwrap_or(&key.path);
        for path in [dir, key.path.as_path()] {
            if let Err(e) =
                std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            {
                eprintln!(
                    "postern: cannot give {} to the service user {}: {e}; \
                     run `chown {} {}` yourself",
                    path.display(),
                    user.name,
                    user.name,
                    path.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    let config_file = match &config.source {
        Source::File(path) => path.display().to_string(),
        Source::Defaults => "the configuration file".to_string(),
    };
    println!(
        "Wrote the private key ({}) to {}",
        key.public.describe(),
        key.path.display()
    );
    println!();
    println!("Publish this DNS TXT record:");
    println!("{}", keys::dns_record(&key));
    println!();
    println!("Then add this table to {config_file}, and reload postern:");
    print!(
        "{}",
        keys::config_table(&key.domain, &key.selector, &key.path)
    );
    ExitCode::SUCCESS
}

fn show(config: &Config) -> ExitCode {
    if config.dkim.is_empty() {
        eprintln!(
            "postern: no [[dkim]] key is configured; make one with \
             `postern dkim keygen --domain DOMAIN --selector SELECTOR`"
        );
        return ExitCode::SUCCESS;
    }
    let mut status = ExitCode::SUCCESS;
    for entry in &config.dkim {
        match keys::read_key(&entry.domain, &entry.selector, &entry.key) {
            Ok(key) => {
                println!(
                    "; {}, selector {}: {} ({})",
                    key.domain,
                    key.selector,
                    key.path.display(),
                    key.public.describe()
                );
                println!("{}", keys::dns_record(&key));
            }
            Err(e) => {
                eprintln!("postern: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    status
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("postern: {e}");
    ExitCode::from(1)
}
