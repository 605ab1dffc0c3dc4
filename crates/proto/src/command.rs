//! SMTP command lines (RFC 5321 §4.1.1) parsed into [`Command`] values.
//!
//! The parser sees one line without its CRLF. It does not know the session state: which
//! command is allowed when is the session's business.

use crate::address::{self, AddressError, ForwardPath, ReversePath};

/// The `BODY=` parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// ESMTP parameters of MAIL FROM that postern understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// The parameters as they follow `MAIL FROM:<path>`, each with its leading space;
/// empty when there are none. Parsing the result gives the same parameters back.
impl std::fmt::Display for MailParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RFC 1870 §6.
        if let Some(size) = self.size {
            write!(f, " SIZE={size}")?;
        }
        // RFC 6152 §2.
        match self.body {
            Some(Body::SevenBit) => f.write_str(" BODY=7BIT")?,
            Some(Body::EightBitMime) => f.write_str(" BODY=8BITMIME")?,
            None => {}
        }
        // RFC 6531 §3.4.
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
    /// A known verb that postern does not offer (EXPN, BDAT, TURN, ...).
    NotImplemented(String),
}

/// Why a command line did not parse. Each variant maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    Unrecognized,
    /// An HTTP request line: somebody pointed a browser or a cross-protocol attack here.
    Http,
    /// The arguments are wrong; the text is the correct syntax.
    Syntax(&'static str),
    Address(AddressError),
    UnknownParameter(String),
}

const HTTP_VERBS: [&str; 7] = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT"];

pub const MAIL_SYNTAX: &str = "MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8]";
pub const RCPT_SYNTAX: &str = "RCPT TO:<address>";

/// Parses one command line, without its line ending.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Unrecognized)?;
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "EHLO" => domain_arg(args, "EHLO hostname").map(Command::Ehlo),
        "HELO" => domain_arg(args, "HELO hostname").map(Command::Helo),
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(args, "DATA", Command::Data),
        "RSET" => no_args(args, "RSET", Command::Rset),
        "QUIT" => no_args(args, "QUIT", Command::Quit),
        "STARTTLS" => no_args(args, "STARTTLS", Command::StartTls),
        // NOOP, VRFY and HELP may carry an argument, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "AUTH" => parse_auth(args),
        "EXPN" | "BDAT" | "TURN" | "ETRN" | "ATRN" | "SEND" | "SOML" | "SAML" => {
            Ok(Command::NotImplemented(upper))
        }
        v if HTTP_VERBS.contains(&v) => Err(CommandError::Http),
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_args(args: &str, usage: &'static str, cmd: Command) -> Result<Command, CommandError> {
    if args.trim().is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

fn domain_arg(args: &str, usage: &'static str) -> Result<String, CommandError> {
    let arg = args.trim();
    // The argument is only informational (RFC 5321 §4.1.4 forbids refusing a
    // mismatch), but it must be one printable token: it goes into Received headers.
    if arg.is_empty() || arg.contains(' ') || arg.chars().any(|c| c.is_control()) {
        return Err(CommandError::Syntax(usage));
    }
    Ok(arg.to_string())
}

/// Strips a case-insensitive `prefix` and the optional spaces some clients send after
/// the colon (`MAIL FROM: <a@b>`).
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(args[keyword.len()..].trim_start_matches(' '))
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    let rest = after_keyword(args, "FROM:").ok_or(CommandError::Syntax(MAIL_SYNTAX))?;
    let (from, params) = address::parse_reverse_path(rest).map_err(CommandError::Address)?;
    Ok(Command::Mail {
        from,
        params: parse_mail_params(params)?,
    })
}

fn parse_mail_params(s: &str) -> Result<MailParams, CommandError> {
    let mut params = MailParams::default();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                let n = v
                    .parse()
                    .map_err(|_| CommandError::Syntax("SIZE=<number of octets>"))?;
                params.size = Some(n);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                params.body = Some(Body::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Some(Body::EightBitMime)
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            // RFC 4954 §5: AUTH= may be given by a trusted relay; we record nothing from it.
            ("AUTH", Some(_)) => {}
            _ => return Err(CommandError::UnknownParameter(word.to_string())),
        }
    }
    Ok(params)
}

fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    let rest = after_keyword(args, "TO:").ok_or(CommandError::Syntax(RCPT_SYNTAX))?;
    let (to, params) = address::parse_forward_path(rest).map_err(CommandError::Address)?;
    // DSN (NOTIFY=, ORCPT=) is not advertised, so no RCPT parameter is valid.
    if let Some(word) = params.split(' ').find(|w| !w.is_empty()) {
        return Err(CommandError::UnknownParameter(word.to_string()));
    }
    Ok(Command::Rcpt { to })
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH mechanism [initial-response]"))?
        .to_ascii_uppercase();
    let initial_response = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;

    fn mbox(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    #[test]
    fn table_of_valid_commands() {
        let cases: Vec<(&str, Command)> = vec![
            (
                "EHLO client.example",
                Command::Ehlo("client.example".into()),
            ),
            ("ehlo [127.0.0.1]", Command::Ehlo("[127.0.0.1]".into())),
            ("HELO x", Command::Helo("x".into())),
            (
                "MAIL FROM:<a@b.example>",
                Command::Mail {
                    from: ReversePath::Mailbox(mbox("a@b.example")),
                    params: MailParams::default(),
                },
            ),
            (
                "mail from: <> SIZE=1000 BODY=8BITMIME SMTPUTF8 AUTH=<>",
                Command::Mail {
                    from: ReversePath::Null,
                    params: MailParams {
                        size: Some(1000),
                        body: Some(Body::EightBitMime),
                        smtputf8: true,
                    },
                },
            ),
            (
                "RCPT TO:<c@d.example>",
                Command::Rcpt {
                    to: ForwardPath::Mailbox(mbox("c@d.example")),
                },
            ),
            ("DATA", Command::Data),
            ("rset", Command::Rset),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY someone", Command::Vrfy),
            ("HELP", Command::Help),
            ("STARTTLS", Command::StartTls),
            (
                "AUTH plain AGZvbwBiYXI=",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AGZvbwBiYXI=".into()),
                },
            ),
            ("EXPN list", Command::NotImplemented("EXPN".into())),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_command(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn table_of_invalid_commands() {
        let cases: Vec<(&str, CommandError)> = vec![
            ("FOO", CommandError::Unrecognized),
            ("", CommandError::Unrecognized),
            ("GET / HTTP/1.1", CommandError::Http),
            ("EHLO", CommandError::Syntax("EHLO hostname")),
            ("MAIL TO:<a@b.example>", CommandError::Syntax(MAIL_SYNTAX)),
            (
                "MAIL FROM:a@b.example",
                CommandError::Address(AddressError::MissingBrackets),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=big",
                CommandError::Syntax("SIZE=<number of octets>"),
            ),
            (
                "MAIL FROM:<a@b.example> RET=FULL",
                CommandError::UnknownParameter("RET=FULL".into()),
            ),
            (
                "RCPT TO:<@x.example:a@b.example>",
                CommandError::Address(AddressError::SourceRoute),
            ),
            (
                "RCPT TO:<a@b.example> NOTIFY=NEVER",
                CommandError::UnknownParameter("NOTIFY=NEVER".into()),
            ),
            ("DATA now", CommandError::Syntax("DATA")),
            ("STARTTLS x", CommandError::Syntax("STARTTLS")),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_command(line.as_bytes()), Err(expected), "{line}");
        }
    }

    #[test]
    fn non_utf8_is_unrecognized() {
        assert_eq!(parse_command(b"\xff\xfe"), Err(CommandError::Unrecognized));
    }
}
