//! `postern sendmail` (and `sendmail` through a link): a message from standard input
//! to the running server's submission socket. Exit codes follow sysexits.h.

use std::process::ExitCode;

use crate::config::Config;
use crate::local::request::exit;
use crate::local::sendmail::{self, Mode};

const USAGE: &str =
    "usage: sendmail [-t] [-i] [-f sender] [-F full-name] [recipient ...] < message";

pub fn run(args: &[String]) -> ExitCode {
    let options = match sendmail::parse_args(args) {
        Ok(o) => o,
        Err(e) => return fail(exit::USAGE, &format!("{e}; {USAGE}")),
    };
    let source = Config::locate(None);
    let config = match Config::load(&source) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                exit::UNAVAILABLE,
                &format!("cannot read the configuration: {e}"),
            );
        }
    };
    let queue_command = match options.mode {
        Mode::Deliver => None,
        Mode::ListQueue => Some(super::queue::list(&config)),
        Mode::FlushQueue => Some(super::queue::flush(&config, None)),
    };
    if let Some(result) = queue_command {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(exit::UNAVAILABLE, &format!("{e:#}")),
        };
    }
    let Some(local) = &config.local_submission else {
        return fail(
            exit::UNAVAILABLE,
            &format!(
                "local submission is not enabled in {source}: add [local_submission] socket = \"/run/postern/submit.sock\" and restart postern"
            ),
        );
    };
    let message = match sendmail::read_message(std::io::stdin().lock(), options.ignore_dots) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                exit::TEMPORARY,
                &format!("cannot read the message from standard input: {e}"),
            );
        }
    };
    let response = sendmail::submit(&local.socket, &options.request, &message);
    if response.exit != exit::OK {
        return fail(response.exit, &response.message);
    }
    ExitCode::SUCCESS
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("sendmail: {message}");
    ExitCode::from(code)
}
