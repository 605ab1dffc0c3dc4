//! `postern check-config`: validates the configuration without starting anything.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Source};

pub fn run(explicit: Option<&Path>) -> ExitCode {
    let source = Config::locate(explicit);
    match Config::load(&source) {
        Ok(config) => {
            match source {
                Source::Defaults => println!(
                    "no configuration file found: the built-in development defaults are valid"
                ),
                Source::File(path) => println!(
                    "{}: ok ({} listener{}, local domains: {})",
                    path.display(),
                    config.listeners.len(),
                    if config.listeners.len() == 1 { "" } else { "s" },
                    if config.local_domains.is_empty() {
                        "none".to_string()
                    } else {
                        config.local_domains.join(", ")
                    },
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
