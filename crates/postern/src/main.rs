//! The `postern` executable: parses the command line and runs one command.

use std::process::ExitCode;

use clap::Parser as _;
use postern::cli::{self, Cli, Command};

fn main() -> ExitCode {
    // Invoked through a link named `sendmail`, behave as `postern sendmail`: its
    // options are Sendmail's, not ours, so they bypass the argument parser.
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    // The privileged passwd reader (see auth::reader); not for people to run.
    let rest: Vec<String> = std::env::args().skip(1).collect();
    if let [sub, path] = rest.as_slice()
        && sub == postern::auth::reader::SUBCOMMAND
    {
        return report(
            postern::auth::reader::serve(std::path::Path::new(path)).map_err(Into::into),
        );
    }
    match program.rsplit('/').next() {
        Some("sendmail") => return cli::sendmail::run(&args.collect::<Vec<_>>()),
        Some("mailq") => return report(cli::queue::run(None, cli::QueueAction::List)),
        _ => {}
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Sendmail { args } => cli::sendmail::run(&args),
        Command::Serve { config } => report(cli::serve::run(config.as_deref())),
        Command::CheckConfig { config } => cli::check_config::run(config.as_deref()),
        Command::User { config, action } => report(cli::user::run(config.as_deref(), action)),
        Command::Explain {
            config,
            listener,
            from,
            rcpt,
            ip,
            auth,
            uid,
        } => cli::explain::run(
            config.as_deref(),
            &cli::explain::Question {
                listener: &listener,
                from: &from,
                rcpt: &rcpt,
                ip,
                auth: auth.as_deref(),
                uid,
            },
        ),
        Command::Status { config } => cli::status::run(config.as_deref()),
        Command::Queue { config, action } => report(cli::queue::run(config.as_deref(), action)),
        Command::Dkim { config, action } => cli::dkim::run(config.as_deref(), action),
    }
}

/// One line on stderr that says what went wrong, and exit 1.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e:#}");
            ExitCode::from(1)
        }
    }
}
