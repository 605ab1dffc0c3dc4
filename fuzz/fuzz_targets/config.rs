//! `postern::config::Config::parse` on lossy UTF-8. Never panics; an error names the file
//! and a line that exists; a configuration it accepts has a listener and sane limits.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postern::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.toml")) {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            assert!(config.limits.max_message_size > 0 && config.limits.max_recipients > 0);
            assert!(!config.hostname.trim().is_empty());
        }
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
            if let ConfigError::Invalid { line, .. } = e {
                let lines = text.split('\n').count();
                assert!(line >= 1 && line <= lines, "line {line} of {lines}");
            }
        }
    }
});
