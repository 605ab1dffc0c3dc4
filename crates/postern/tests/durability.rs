//! A message that got `250` survives `kill -9` and is delivered after the restart, and
//! the syncs that make it so happen, in order, before the `250` (seen with strace).

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::strace::{Call, Strace, Trace};
use common::{PlainClient, Server, field};

#[test]
fn message_acknowledged_before_kill_9_is_delivered_after_restart() {
    // The first attempt, right after the commit, may have recorded its deferral before
    // the kill; a short retry keeps the wait after the restart short.
    let mut server = Server::start_with("[queue]\nretry_first = 1\n");
    // A regular file where the Maildir tree should go makes delivery fail
    // (temporarily), so the message is still in the queue when the server dies.
    let blocker = server.dir.path().join("mail");
    std::fs::write(&blocker, b"not a directory").unwrap();

    let queue_id = send_from_outside(
        &server,
        &["alice@example.com"],
        "Subject: survive\r\n\r\nstill here",
    );
    server.kill9();

    assert_eq!(
        server.queued().len(),
        1,
        "the acknowledged message is on disk"
    );
    std::fs::remove_file(&blocker).unwrap();
    server.restart();

    let mails = server.wait_for_delivery("alice@example.com", 1);
    assert_eq!(mails.len(), 1, "log:\n{}", server.log_text());
    assert!(mails[0].contains("still here"));
    assert!(mails[0].contains(&format!("id {queue_id}")));
    let recovered = server.wait_for_log("event=queue_recovered messages=1");
    assert!(
        recovered.is_some(),
        "the restart found the message in the queue"
    );
}

#[test]
fn failed_maildir_delivery_is_deferred_and_kept() {
    let server = Server::start();
    std::fs::write(server.dir.path().join("mail"), b"blocker").unwrap();
    send_from_outside(&server, &["alice@example.com"], "Subject: later\r\n\r\nx");
    let deferred = server.wait_for_log("event=deferred").unwrap();
    assert_eq!(
        field(&deferred, "rcpt").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(field(&deferred, "relay").as_deref(), Some("maildir"));
    assert!(field(&deferred, "dsn").unwrap().starts_with("4."));
    assert_eq!(
        server.queued().len(),
        1,
        "a failed delivery never loses the message"
    );
}

#[test]
fn sigterm_lets_a_message_in_progress_finish_and_closes_idle_sessions_with_421() {
    let mut server = Server::start();
    let mut idle = PlainClient::connect(server.addr("mx"));
    idle.cmd("EHLO idle.test", "250");
    let mut busy = PlainClient::connect(server.addr("mx"));
    busy.cmd("EHLO busy.test", "250");
    busy.begin("someone@remote.test", &["alice@example.com"]);
    busy.send_raw(b"Subject: in flight\r\n\r\n");

    server.signal("TERM");
    assert!(idle.read_reply().starts_with("421 4.3.2"));
    server.wait_for_log("event=stopping").unwrap();
    busy.cmd("still arriving\r\n.", "250 2.0.0 Ok: queued as ");
    busy.send_raw(b"NOOP\r\n");
    assert!(busy.read_reply().starts_with("421 4.3.2"));
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        server.queued().len() + server.delivered("alice@example.com").len(),
        1
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut server = Server::start();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

/// Sends one message over the MX listener to `rcpts`; returns its queue ID.
fn send_from_outside(server: &Server, rcpts: &[&str], message: &str) -> String {
    let mut c = common::PlainClient::mx(server);
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    for rcpt in rcpts {
        c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    }
    c.cmd("DATA", "354");
    let reply = c.cmd(&format!("{message}\r\n."), "250 2.0.0 Ok: queued as ");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}

/// The names in the queue directory (committed items, free files, anything).
fn queue_entries(server: &Server) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(server.data_dir().join("queue")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn mail_for_local_mailboxes_is_delivered_before_the_250_and_never_queued() {
    let server = Server::start();
    let both = ["alice@example.com", "bob@example.com"];
    let queue_id = send_from_outside(&server, &both, "Subject: at once\r\n\r\nx");
    // Already there when the 250 arrives: no waiting.
    for rcpt in ["alice@example.com", "bob@example.com"] {
        let mails = server.delivered(rcpt);
        assert_eq!(mails.len(), 1, "{rcpt}; log:\n{}", server.log_text());
        assert!(mails[0].contains(&format!("id {queue_id}")));
    }
    // Not even a recycled queue file: the queue was never written.
    assert_eq!(queue_entries(&server), Vec::<String>::new());
    // Logged as usual, accepted first: both lines must be there before their order
    // means anything.
    let delivered = server.wait_for_lines(&format!("queue_id={queue_id} "), 3);
    let events: Vec<String> = delivered
        .iter()
        .map(|l| field(l, "event").unwrap_or_default())
        .collect();
    assert_eq!(
        events,
        ["accepted", "delivered", "delivered"],
        "{delivered:#?}"
    );
    assert!(
        delivered[1..]
            .iter()
            .all(|l| field(l, "relay").as_deref() == Some("maildir")),
        "{delivered:#?}"
    );
}

#[test]
fn a_mailbox_that_fails_leaves_the_message_queued_for_it_alone() {
    let server = Server::start();
    // bob's Maildir cannot be made (a file is in the way); alice's can.
    let bob = server.maildir("bob@example.com");
    std::fs::create_dir_all(bob.parent().unwrap()).unwrap();
    std::fs::write(&bob, b"not a directory").unwrap();

    let both = ["alice@example.com", "bob@example.com"];
    send_from_outside(&server, &both, "Subject: half\r\n\r\nx");
    assert_eq!(server.delivered("alice@example.com").len(), 1);
    let deferred = server.wait_for_log("event=deferred").unwrap();
    assert_eq!(field(&deferred, "rcpt").as_deref(), Some("bob@example.com"));
    assert_eq!(server.queued().len(), 1, "kept for bob");

    // Once bob's Maildir can be made, he gets it, and alice gets no second copy.
    std::fs::remove_file(&bob).unwrap();
    let flushed = server.cli(&["queue", "flush"], None);
    assert!(flushed.status.success(), "{flushed:?}");
    let bobs = server.wait_for_delivery("bob@example.com", 1);
    assert_eq!(bobs.len(), 1, "log:\n{}", server.log_text());
    assert!(common::wait_until(|| server.queued().is_empty()));
    assert_eq!(server.delivered("alice@example.com").len(), 1);
}

// --- The order of syncs, seen from outside with strace ---
//
// What "on stable storage before the 250" means, call by call: a file's data is synced
// before the file gets its name, and the directory holding the name is synced after
// that and before the `250` is written to the client (or before the queue lets go of
// a message it delivered). Each test fails if any one of those syncs is left out.

/// Attaches strace to the server, or says why the test cannot run here.
fn trace(server: &Server, test: &str) -> Option<Strace> {
    if !common::available(test, &[("strace", common::find_program("strace"))])
        || !common::root(test, "attaching strace to the server")
    {
        return None;
    }
    Some(Strace::attach(
        server.pid(),
        &server.dir.path().join("strace.out"),
    ))
}

/// Sends one message over the MX listener; returns the client's address (which names
/// the connection in the trace) and the queue ID.
fn send_traced(server: &Server, rcpts: &[&str], message: &str) -> (SocketAddr, String) {
    let mut c = PlainClient::connect(server.addr("mx"));
    let client = c.local_addr();
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<someone@remote.test>", "250");
    for rcpt in rcpts {
        c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    }
    c.cmd("DATA", "354");
    let reply = c.cmd(&format!("{message}\r\n."), "250 2.0.0 Ok: queued as ");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    (client, id)
}

/// The write of the `250` for `id` to `client`.
fn acknowledgement<'t>(trace: &'t Trace, client: SocketAddr, id: &str) -> &'t Call {
    trace
        .reply_to(client, &format!("250 2.0.0 Ok: queued as {id}"))
        .unwrap_or_else(|| panic!("no write of the 250 for {id} to {client}:\n{}", trace.text))
}

/// The trace's lines that mention `needle`, for failure messages.
fn lines_with(trace: &Trace, needle: &str) -> String {
    trace
        .text
        .lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The path a call gives its file (the second quoted argument of a rename or link).
fn target(call: &Call) -> Option<String> {
    path_arg(call, 1)
}

/// The `index`th path argument of a rename or link, made absolute: a name relative to a
/// directory descriptor (`renameat`, `linkat` on opened directories) is joined to the
/// path `-yy` shows for that descriptor.
fn path_arg(call: &Call, index: usize) -> Option<String> {
    let strings = call.strings();
    let name = *strings.get(index)?;
    if name.starts_with('/') {
        return Some(name.to_string());
    }
    // The quoted name is preceded by its directory: `N</dir>, "name"`. `name` is a
    // slice of `args`, so its offset there is where it starts, less its quote.
    let at = (name.as_ptr() as usize).checked_sub(call.args.as_ptr() as usize)? - 1;
    let before = call
        .args
        .get(..at)?
        .trim_end()
        .strip_suffix(',')?
        .trim_end();
    let dir = before.strip_suffix('>')?;
    let open = dir.rfind('<')?;
    Some(format!("{}/{name}", &dir[open + 1..]))
}

/// A file synced (fsync or fdatasync) before `named` gave it its name: by path for a
/// rename, by descriptor for a link from `/proc/self/fd/N`.
fn file_sync_before<'t>(trace: &'t Trace, named: &Call, dir: &str) -> Option<&'t Call> {
    let from = path_arg(named, 0)?;
    let fd: Option<u32> = from
        .strip_prefix("/proc/self/fd/")
        .and_then(|n| n.parse().ok());
    trace
        .calls
        .iter()
        .filter(|c| c.is_sync() && c.succeeded() && c.end < named.start)
        .rfind(|c| match fd {
            Some(fd) => c.fd() == Some(fd) && c.fd_target().is_some_and(|t| t.starts_with(dir)),
            None => c.fd_target() == Some(from.as_str()),
        })
}

/// A sync of the directory `dir` that started after line `after` and returned before
/// line `before`.
fn dir_sync_between<'t>(
    trace: &'t Trace,
    dir: &str,
    after: usize,
    before: usize,
) -> Option<&'t Call> {
    trace.find(|c| {
        c.is_sync()
            && c.succeeded()
            && c.fd_target() == Some(dir)
            && c.start > after
            && c.end < before
    })
}

/// The spool's commit of `id`: file synced, renamed to `ID.msg`, queue directory
/// synced, all before `ack` (the `250`, or the answer to `sendmail`). Returns the name the file had before the rename.
fn assert_committed_durably(server: &Server, trace: &Trace, ack: &Call, id: &str) -> String {
    let queue = server.data_dir().join("queue").display().to_string();
    let msg = format!("{queue}/{id}.msg");
    let context = || lines_with(trace, &queue);
    let rename = trace
        .find(|c| c.is_rename() && c.succeeded() && target(c).as_deref() == Some(msg.as_str()))
        .unwrap_or_else(|| panic!("no rename to {msg}:\n{}", context()));
    assert!(
        rename.end < ack.start,
        "the acknowledgement was written before the commit's rename:\n{}",
        context()
    );
    let from = rename.strings()[0].to_string();
    assert!(
        file_sync_before(trace, rename, &queue).is_some(),
        "{from} was not synced before its rename to {msg}:\n{}",
        context()
    );
    assert!(
        dir_sync_between(trace, &queue, rename.end, ack.start).is_some(),
        "the queue directory was not synced between the rename and the acknowledgement:\n{}",
        context()
    );
    from
}

/// A Maildir delivery into `maildir`: the file synced before it was named in `new/`,
/// and `new/` synced after that and before line `before` (`what` says what that line
/// is).
fn assert_delivered_durably(trace: &Trace, maildir: &Path, before: usize, what: &str) {
    let tmp = format!("{}/tmp/", maildir.display());
    let new = maildir.join("new").display().to_string();
    let context = || lines_with(trace, &maildir.display().to_string());
    let named = trace
        .find(|c| {
            (c.is_rename() || c.name == "linkat" || c.name == "link")
                && c.succeeded()
                && target(c).is_some_and(|t| t.starts_with(&format!("{new}/")))
        })
        .unwrap_or_else(|| panic!("no file named in {new}:\n{}", context()));
    assert!(
        named.end < before,
        "{what} came before the message was named in {new}:\n{}",
        context()
    );
    assert!(
        file_sync_before(trace, named, &tmp).is_some(),
        "the message file was not synced before it was named in {new}:\n{}",
        context()
    );
    assert!(
        dir_sync_between(trace, &new, named.end, before).is_some(),
        "{new} was not synced between naming the message and {what}:\n{}",
        context()
    );
}

#[test]
fn maildir_delivery_at_once_syncs_the_file_and_new_before_the_250() {
    let test = "maildir_delivery_at_once_syncs_the_file_and_new_before_the_250";
    let server = Server::start();
    let Some(strace) = trace(&server, test) else {
        return;
    };
    let both = ["alice@example.com", "bob@example.com"];
    let (client, id) = send_traced(&server, &both, "Subject: synced\r\n\r\nx");
    let trace = strace.finish();
    let ack = acknowledgement(&trace, client, &id);
    for rcpt in both {
        assert_delivered_durably(&trace, &server.maildir(rcpt), ack.start, "the 250");
    }
    // The mailboxes were new: every directory made for them is in its parent, synced,
    // before the 250.
    let mail = server.dir.path().join("mail").display().to_string();
    let made: Vec<&Call> = trace
        .calls
        .iter()
        .filter(|c| matches!(c.name.as_str(), "mkdir" | "mkdirat") && c.succeeded())
        .filter(|c| path_arg(c, 0).is_some_and(|p| p.starts_with(&mail)))
        .collect();
    assert!(
        made.len() >= 2 * 3,
        "tmp/, new/ and cur/ of two new Maildirs:\n{}",
        lines_with(&trace, &mail)
    );
    for mkdir in made {
        let dir = path_arg(mkdir, 0).unwrap_or_default();
        let parent = Path::new(&dir).parent().unwrap().display().to_string();
        assert!(
            dir_sync_between(&trace, &parent, mkdir.end, ack.start).is_some(),
            "{parent} was not synced after {} was made, before the 250:\n{}",
            dir,
            lines_with(&trace, &mail)
        );
    }
}

#[test]
fn queued_mail_is_synced_before_the_250_and_leaves_the_queue_only_once_delivered_durably() {
    let test =
        "queued_mail_is_synced_before_the_250_and_leaves_the_queue_only_once_delivered_durably";
    let server = Server::start();
    let Some(strace) = trace(&server, test) else {
        return;
    };
    // 1. A new queue file: the Maildirs cannot be made, so the message is queued.
    let blocker = server.dir.path().join("mail");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let (client, first) = send_traced(&server, &["alice@example.com"], "Subject: 1\r\n\r\nx");

    // 2. Delivered from the queue, then taken out of it (its file is kept for reuse).
    std::fs::remove_file(&blocker).unwrap();
    let flushed = server.cli(&["queue", "flush"], None);
    assert!(flushed.status.success(), "{flushed:?}");
    assert!(
        common::wait_until(|| server.queued().is_empty()),
        "log:\n{}",
        server.log_text()
    );
    assert_eq!(server.delivered("alice@example.com").len(), 1);

    // 3. A recycled queue file: bob's Maildir cannot be made.
    let bob = server.maildir("bob@example.com");
    std::fs::create_dir_all(bob.parent().unwrap().parent().unwrap()).unwrap();
    std::fs::write(bob.parent().unwrap(), b"not a directory").unwrap();
    let (client_again, second) = send_traced(&server, &["bob@example.com"], "Subject: 2\r\n\r\nx");
    let trace = strace.finish();

    let ack = acknowledgement(&trace, client, &first);
    let written = assert_committed_durably(&server, &trace, ack, &first);
    assert!(
        written.contains("/queue/tmp-"),
        "the first message got a new file: {written}"
    );

    let queue = server.data_dir().join("queue").display().to_string();
    let msg = format!("{queue}/{first}.msg");
    let removal = trace
        .find(|c| {
            (c.is_rename() || c.name.starts_with("unlink"))
                && c.succeeded()
                && c.strings().first() == Some(&msg.as_str())
        })
        .unwrap_or_else(|| {
            panic!(
                "{msg} never left the queue:\n{}",
                lines_with(&trace, &queue)
            )
        });
    assert_delivered_durably(
        &trace,
        &server.maildir("alice@example.com"),
        removal.start,
        "the removal from the queue",
    );

    let ack = acknowledgement(&trace, client_again, &second);
    let written = assert_committed_durably(&server, &trace, ack, &second);
    assert!(
        written.contains("/queue/free-"),
        "the second message reused a finished file: {written}"
    );
}

#[test]
fn sendmail_is_answered_only_after_the_same_syncs() {
    let test = "sendmail_is_answered_only_after_the_same_syncs";
    let server = Server::start();
    let Some(strace) = trace(&server, test) else {
        return;
    };
    // A local recipient (delivered at once), then a remote one (queued).
    for rcpt in ["alice@example.com", "someone@remote.test"] {
        let out = server.sendmail(None, &[rcpt], b"Subject: local door\n\nx\n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let trace = strace.finish();
    // The server's answers on the submission socket, in order: `… queued as ID …`.
    let answers: Vec<(&Call, String)> = trace
        .calls
        .iter()
        .filter(|c| c.is_write() && c.fd_target().is_some_and(|t| t.contains("submit.sock")))
        .filter_map(|c| {
            let (_, after) = c.args.split_once("queued as ")?;
            let id: String = after.chars().take_while(char::is_ascii_hexdigit).collect();
            Some((c, id))
        })
        .collect();
    assert_eq!(
        answers.len(),
        2,
        "two answers on the submission socket:\n{}",
        lines_with(&trace, "submit.sock")
    );
    let (local, remote) = (&answers[0], &answers[1]);
    assert_delivered_durably(
        &trace,
        &server.maildir("alice@example.com"),
        local.0.start,
        "the answer to sendmail",
    );
    assert_committed_durably(&server, &trace, remote.0, &remote.1);
}
