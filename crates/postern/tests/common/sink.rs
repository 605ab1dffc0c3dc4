//! A scripted SMTP server on loopback, standing in for remote mail servers: it records
//! what it receives and answers as each test tells it to.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    /// Recipients the sink accepted.
    pub rcpts: Vec<String>,
    /// The message after dot-unstuffing, CRLF line ends.
    pub data: Vec<u8>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

type RcptRule = Box<dyn Fn(&str) -> String + Send + Sync>;

pub struct Script {
    /// Accept connections but never say anything.
    pub silent: bool,
    /// Offer STARTTLS, say 220, then hang up instead of a handshake.
    pub broken_starttls: bool,
    /// Wait this long before answering the final dot (a slow server). Each message's
    /// times are in [`Sink::answers`].
    pub data_delay: Duration,
    pub extensions: Vec<String>,
    /// The reply to each RCPT, by address.
    pub rcpt: RcptRule,
    /// Replies after the final dot, used in turn; then "250 2.0.0 Ok".
    pub data_replies: VecDeque<String>,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            silent: false,
            broken_starttls: false,
            data_delay: Duration::ZERO,
            extensions: vec![
                "PIPELINING".into(),
                "8BITMIME".into(),
                "SIZE 50000000".into(),
                "ENHANCEDSTATUSCODES".into(),
            ],
            rcpt: Box::new(|_| "250 2.1.5 Ok".into()),
            data_replies: VecDeque::new(),
        }
    }
}

/// When the sink had a whole message (the final dot) and when it answered it.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub dot: Instant,
    /// Just before the reply; `None` while the sink is still waiting (see
    /// [`Script::data_delay`]).
    pub replied: Option<Instant>,
}

impl Answer {
    /// Whether the message was between its final dot and its reply all the time from
    /// `from` to `to`.
    pub fn pending_throughout(&self, from: Instant, to: Instant) -> bool {
        self.dot <= from && self.replied.is_none_or(|replied| to < replied)
    }
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    script: Arc<Mutex<Script>>,
}

impl Sink {
    pub fn start(script: Script) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let sink = Sink {
            addr: listener.local_addr().expect("sink addr"),
            connections: Arc::default(),
            received: Arc::default(),
            answers: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let accepting = sink.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                accepting
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let conn = accepting.clone();
                std::thread::spawn(move || conn.serve(stream));
            }
        });
        sink
    }

    /// Changes how the sink answers from now on.
    pub fn script(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.script.lock().unwrap());
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every message's final dot and reply, in the order the dots came.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until a message has been read whole and not yet answered.
    pub fn wait_for_pending(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.answers().iter().any(|a| a.replied.is_none()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits until `count` messages arrived (or 20 s passed).
    pub fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve(&self, stream: TcpStream) {
        if self.script.lock().unwrap().silent {
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut writer = match stream.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut reader = BufReader::new(stream);
        let mut say = |text: &str| writer.write_all(format!("{text}\r\n").as_bytes()).is_ok();
        say("220 sink.test ESMTP");
        let (mut from, mut rcpts) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            if upper.starts_with("STARTTLS") {
                say("220 2.0.0 go ahead");
                return;
            }
            if upper.starts_with("EHLO") {
                let script = self.script.lock().unwrap();
                let mut lines = vec!["sink.test".to_string()];
                lines.extend(script.extensions.clone());
                if script.broken_starttls {
                    lines.push("STARTTLS".into());
                }
                drop(script);
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                    say(&format!("250{sep}{l}"));
                }
            } else if upper.starts_with("HELO")
                || upper.starts_with("RSET")
                || upper.starts_with("NOOP")
            {
                from.clear();
                rcpts.clear();
                say("250 2.0.0 Ok");
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&cmd);
                rcpts.clear();
                say("250 2.1.0 Ok");
            } else if upper.starts_with("RCPT TO:") {
                let to = address(&cmd);
                let reply = (self.script.lock().unwrap().rcpt)(&to);
                if reply.starts_with('2') {
                    rcpts.push(to);
                }
                say(&reply);
            } else if upper.starts_with("DATA") {
                if rcpts.is_empty() {
                    say("554 5.5.1 No valid recipients");
                    continue;
                }
                say("354 go ahead");
                let Some(data) = read_data(&mut reader) else {
                    return;
                };
                let answer = {
                    let mut answers = self.answers.lock().unwrap();
                    answers.push(Answer {
                        dot: Instant::now(),
                        replied: None,
                    });
                    answers.len() - 1
                };
                let (delay, reply) = {
                    let mut script = self.script.lock().unwrap();
                    (script.data_delay, script.data_replies.pop_front())
                };
                std::thread::sleep(delay);
                let reply = reply.unwrap_or_else(|| "250 2.0.0 Ok: queued".into());
                if reply.starts_with('2') {
                    self.received.lock().unwrap().push(Received {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                    });
                }
                self.answers.lock().unwrap()[answer].replied = Some(Instant::now());
                say(&reply);
            } else if upper.starts_with("QUIT") {
                say("221 2.0.0 Bye");
                return;
            } else {
                say("502 5.5.1 Not implemented");
            }
        }
    }
}

fn address(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd[start..].find('>').map_or(cmd.len(), |i| start + i);
    cmd[start..end].to_string()
}

fn read_data(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        if line == b".\r\n" {
            return Some(data);
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(unstuffed);
    }
}
