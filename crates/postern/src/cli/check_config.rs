//! `postern check-config`: validates the configuration without starting anything.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Config, Source};

/// Settings that load but are probably wrong, `FILE:LINE: warning: …` on stderr; they do
/// not change the exit code.
fn print_warnings(source: &Source, config: &Config) {
    let Source::File(path) = source else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for (line, warning) in config::warnings(config, &text) {
        eprintln!("{}:{line}: warning: {warning}", path.display());
    }
}

pub fn run(explicit: Option<&Path>) -> ExitCode {
    let source = Config::locate(explicit);
    match Config::load(&source) {
        Ok(config) => {
            print_warnings(&source, &config);
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
