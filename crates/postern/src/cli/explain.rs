//! `postern explain`: what the server would answer to one transaction, and why,
//! computed by the very policy code the sessions use. Nothing is sent.
//!
//! Exit codes: 0 accepted, 1 refused, 2 usage error.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use postern_proto::ReversePath;
use postern_proto::address::{parse_forward_path, parse_reverse_path};

use crate::attribution::UnixUser;
use crate::auth::{Credentials, PasswdFile};
use crate::config::{Config, Role};
use crate::facts;
use crate::policy::dkim::{self, Signatory, Signing};
use crate::policy::{self, Submitter, Verdict};

pub struct Question<'a> {
    pub listener: &'a str,
    pub from: &'a str,
    pub rcpt: &'a str,
    pub ip: Option<IpAddr>,
    pub auth: Option<&'a str>,
    pub uid: Option<u32>,
}

pub fn run(explicit: Option<&Path>, q: &Question<'_>) -> ExitCode {
    let config = match Config::load(&Config::locate(explicit)) {
        Ok(c) => c,
        Err(e) => return usage(&e.to_string()),
    };
    let users = PasswdFile::new(&config.passwd_file);
    match explain(&config, &users, q) {
        Ok((text, accepted)) => {
            print!("{text}");
            if accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => usage(&e),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("postern explain: {message}");
    ExitCode::from(2)
}

/// The report, and whether the transaction would be accepted.
pub fn explain(
    config: &Config,
    users: &dyn Credentials,
    q: &Question<'_>,
) -> Result<(String, bool), String> {
    let from = angle(q.from, parse_reverse_path).map_err(|e| format!("--from: {e}"))?;
    let rcpt = angle(q.rcpt, parse_forward_path).map_err(|e| format!("--rcpt: {e}"))?;
    let mut out = String::new();
    // The submission socket is the listener "local" in logs; `--uid` names its user.
    let owner = q.uid.map(UnixUser::lookup);
    let listener = config.listeners.iter().find(|l| l.name == q.listener);
    let (role, local_user) = match (q.listener, listener) {
        ("local", _) => {
            let user = owner
                .clone()
                .ok_or("--listener local (sendmail) needs --uid")?;
            (None, Some(user))
        }
        (_, Some(l)) => (Some(l.role), None),
        (_, None) => {
            let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
            return Err(format!(
                "no listener named {:?}; the configured ones are {} (and \"local\" for sendmail)",
                q.listener,
                names.join(", ")
            ));
        }
    };
    describe_client(&mut out, q, role, local_user.as_ref());
    if let (Some(_), Some(user)) = (role, &owner) {
        out.push_str(&format!(
            "owner:    the client socket belongs to uid {} ({}): logged and counted against uid_messages_per_hour, but it grants nothing\n",
            user.uid, user.name
        ));
    }
    if let Some(login) = q.auth
        && !matches!(users.lookup(login), Ok(Some(_)))
    {
        out.push_str(&format!(
            "note:     {login} is not a login in {}; AUTH would fail with 535 5.7.8\n",
            config.passwd_file.display()
        ));
        return Ok((out, false));
    }
    if let Some(role) = role {
        let verdict = policy::check_sender(role, q.auth, config.sender_scope, &from);
        step(&mut out, &format!("MAIL FROM:<{from}>"), &verdict);
        if !verdict.is_accepted() {
            conclude(&mut out, &verdict);
            return Ok((out, false));
        }
    }
    let facts = facts::recipient_facts(config, users, &rcpt);
    let submitter = match &local_user {
        Some(user) => Submitter::LocalUser(&user.name),
        None => Submitter::from_login(q.auth),
    };
    let verdict = policy::check_recipient(submitter, &rcpt, facts);
    step(&mut out, &format!("RCPT TO:<{rcpt}>"), &verdict);
    conclude(&mut out, &verdict);
    if verdict.is_accepted() {
        let target = facts::recipient_address(config, users, &rcpt);
        let route = if config.is_local_domain(target.rsplit_once('@').map_or("", |(_, d)| d)) {
            format!("delivered to the Maildir of {target}")
        } else {
            format!("relayed to {target}'s next hop (delivery.routes, relay_host, then MX)")
        };
        out.push_str(&format!("then:     {route}\n"));
        describe_signing(&mut out, config, users, &from, q.auth, local_user.as_ref());
    }
    Ok((out, verdict.is_accepted()))
}

/// The DKIM decision of intake ([`policy::dkim`]), taking `From:` to be the envelope
/// sender. Said only when signing keys are configured.
fn describe_signing(
    out: &mut String,
    config: &Config,
    users: &dyn Credentials,
    from: &ReversePath,
    login: Option<&str>,
    local_user: Option<&UnixUser>,
) {
    if config.dkim.is_empty() {
        return;
    }
    let author = match from {
        ReversePath::Mailbox(m) => m.domain().name().map(str::to_ascii_lowercase),
        ReversePath::Null => None,
    };
    let owned = local_user
        .map(|u| users.domains_owned_by(u.uid).unwrap_or_default())
        .unwrap_or_default();
    let signatory = match (local_user, login) {
        (Some(user), _) => Signatory::LocalUser {
            uid: user.uid,
            owned: &owned,
        },
        (None, Some(login)) => Signatory::Login(login),
        (None, None) => Signatory::Inbound,
    };
    let decision = dkim::signing(signatory, author.as_deref());
    let has_key = author.as_deref().is_some_and(|author| {
        config
            .dkim
            .iter()
            .any(|k| author == k.domain || author.ends_with(&format!(".{}", k.domain)))
    });
    let text = match decision {
        Signing::Sign if has_key => "signed with the keys of the From: domain".to_string(),
        Signing::Sign => "may be signed, but no [[dkim]] key covers the From: domain".to_string(),
        other => format!("not signed: {}", other.explanation()),
    };
    out.push_str(&format!(
        "dkim:     {text} (if From: is the envelope sender)\n"
    ));
}

/// Accepts `a@b` as well as `<a@b>`; `""` or `<>` is the null sender.
fn angle<T, E: std::fmt::Display>(
    text: &str,
    parse: impl Fn(&str) -> Result<(T, &str), E>,
) -> Result<T, String> {
    let text = text.trim();
    let wrapped = if text.starts_with('<') {
        text.to_string()
    } else {
        format!("<{text}>")
    };
    match parse(&wrapped) {
        Ok((value, rest)) if rest.trim().is_empty() => Ok(value),
        Ok(_) => Err("unexpected text after the address".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn describe_client(
    out: &mut String,
    q: &Question<'_>,
    role: Option<Role>,
    local_user: Option<&UnixUser>,
) {
    match (role, local_user) {
        (_, Some(user)) => out.push_str(&format!(
            "channel:  local submission (sendmail) by uid {} ({})\n",
            user.uid, user.name
        )),
        (Some(role), None) => {
            out.push_str(&format!(
                "listener: {} (role {})\n",
                q.listener,
                role.as_str()
            ));
            let ip = q.ip.map_or("any".to_string(), |ip| ip.to_string());
            out.push_str(&format!(
                "client:   {ip} (no address is trusted, loopback included)\n"
            ));
            match q.auth {
                Some(login) => {
                    out.push_str(&format!("login:    {login} (after STARTTLS and AUTH)\n"))
                }
                None => out.push_str("login:    none\n"),
            }
        }
        (None, None) => {}
    }
}

fn step(out: &mut String, command: &str, verdict: &Verdict) {
    out.push_str(&format!("{command:<40} -> {}\n", verdict.reply));
}

fn conclude(out: &mut String, verdict: &Verdict) {
    if verdict.is_accepted() {
        out.push_str("verdict:  accepted\n");
        return;
    }
    let reason = verdict.reason;
    out.push_str(&format!("verdict:  refused (reason={})\n", reason.as_str()));
    out.push_str(&format!("why:      {}\n", reason.explanation()));
    out.push_str(&format!("fix:      {}\n", reason.remedy()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::ForwardPath;

    #[test]
    fn addresses_with_or_without_brackets() {
        assert_eq!(
            angle("a@b.test", parse_reverse_path).unwrap().to_string(),
            "a@b.test"
        );
        assert_eq!(angle("<>", parse_reverse_path).unwrap(), ReversePath::Null);
        assert_eq!(angle("", parse_reverse_path).unwrap(), ReversePath::Null);
        assert!(matches!(
            angle("postmaster", parse_forward_path).unwrap(),
            ForwardPath::Postmaster
        ));
        assert!(angle("a@b@c", parse_forward_path).is_err());
    }
}
