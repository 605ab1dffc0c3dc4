//! The command line: one file per command, each a thin adapter over the library.

pub mod check_config;
pub mod dkim;
pub mod explain;
pub mod queue;
pub mod sendmail;
pub mod serve;
pub mod status;
pub mod user;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version,
    about = "A mail server for shared hosting: authenticated submission and attributed local mail"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server in the foreground, logging to stderr.
    Serve {
        /// Configuration file (default: $POSTERN_CONFIG, ./postern.toml, /etc/postern/postern.toml, else built-in defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration: exit 0, or exit 1 with FILE:LINE: what is wrong.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Submit a message from standard input (Sendmail-compatible options:
    /// -t -i -oi -f SENDER -F NAME -oXXX, recipients as arguments).
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the reply the policy would give one transaction, and why, without
    /// sending anything. Exit 0 when accepted, 1 when refused, 2 on a usage error.
    Explain {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The listener's name, as in the config, or "local" for sendmail.
        #[arg(long)]
        listener: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        rcpt: String,
        /// The client's IP address (for the record: no address is trusted).
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Assume the client logged in as this mailbox.
        #[arg(long)]
        auth: Option<String>,
        /// The Unix user: of the sendmail caller with --listener local, else the owner
        /// of a loopback client's socket.
        #[arg(long)]
        uid: Option<u32>,
    },
    /// Is the server running, since when, connections now, queue size.
    Status {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Inspect and act on the queue (also `mailq` for `queue list`).
    Queue {
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// DKIM signing keys: make one, or print the DNS records of the configured ones.
    Dkim {
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: dkim::DkimAction,
    },
    /// Maintain the passwd-file named by auth.passwd_file.
    User {
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a mailbox login (the password is hashed with SHA512-CRYPT).
    Add {
        address: String,
        /// Read the password from the first line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a login's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a login.
    Del { address: String },
    /// List the logins.
    List,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages with their recipients' state.
    List,
    /// Show one message: envelope, origin, per-recipient history, headers.
    Show { id: String },
    /// Retry now: one message, or every deferred one.
    Flush { id: Option<String> },
    /// Remove a message from the queue (no bounce is sent).
    Delete { id: String },
}
