//! The Prometheus endpoint, scraped over plain HTTP after real traffic: every value
//! matches what the test did.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{PlainClient, Server, Setup, field, plain};

/// The queue gauges refreshed every second (the default is 10): tests wait less.
const METRICS: &str = "[metrics]\naddr = \"127.0.0.1:0\"\nqueue_refresh = 1\n";

/// The address the server logged for its metrics endpoint.
fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server
        .wait_for_log("event=listening listener=metrics ")
        .unwrap_or_else(|| panic!("no metrics listener; log:\n{}", server.log_text()));
    assert_eq!(field(&line, "role").as_deref(), Some("metrics"), "{line}");
    let addr: SocketAddr = field(&line, "addr").unwrap().parse().unwrap();
    assert_ne!(
        addr.port(),
        0,
        "the bound port is logged, not port 0: {line}"
    );
    addr
}

/// One scrape: the samples by `name{labels}`, and the raw text.
struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of a series that must be there.
    fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{}", self.text))
    }

    /// The sum over every series of the metric `name`.
    fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

/// `GET /metrics` over HTTP/1.0, as a scraper does.
fn scrape(addr: SocketAddr) -> Scrape {
    let mut tcp = TcpStream::connect(addr).expect("connect to metrics");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        assert!(series.starts_with("postern_"), "{line}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    Scrape {
        samples,
        text: body.to_string(),
    }
}

/// Scrapes until `ready` holds (the queue gauges are refreshed every second, and a
/// connection is counted as closed only once the server has noticed); fails after 30 s.
fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(addr);
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; last scrape:\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scraped_values_match_the_traffic() {
    let server = Server::start_setup(Setup {
        extra: METRICS.into(),
        ..Default::default()
    });
    let addr = metrics_addr(&server);
    assert!(
        !server.log_text().contains("setting_ignored"),
        "[metrics] is acted on now:\n{}",
        server.log_text()
    );

    let before = scrape(addr);
    assert!(
        before.text.contains("# HELP postern_queue_messages "),
        "{}",
        before.text
    );
    assert_eq!(
        before.value("postern_messages_accepted_total{origin=\"smtp\"}"),
        0.0
    );
    assert_eq!(before.value("postern_queue_messages"), 0.0);
    assert_eq!(before.total("postern_connections_total"), 0.0);

    // One message accepted on the mx listener, for a local mailbox.
    let mut c = PlainClient::connect(server.addr("mx"));
    c.cmd("EHLO sender.remote.test", "250");
    c.begin("someone@remote.test", &["alice@example.com"]);
    c.cmd(
        "Subject: counted\r\n\r\nhello\r\n.",
        "250 2.0.0 Ok: queued as ",
    );
    c.cmd("QUIT", "221");
    drop(c);

    // One relay refused.
    let mut c = common::PlainClient::mx(&server);
    c.cmd("MAIL FROM:<anyone@remote.test>", "250");
    c.cmd("RCPT TO:<victim@remote.test>", "550 5.7.1 Relaying denied");
    c.cmd("QUIT", "221");
    drop(c);

    // One failed login.
    let mut c = PlainClient::connect(server.addr("submission")).starttls();
    let wrong = plain(None, "alice@example.com", "wrong");
    c.cmd(&format!("AUTH PLAIN {wrong}"), "535 5.7.8");
    c.cmd("QUIT", "221");
    drop(c);

    assert_eq!(server.wait_for_delivery("alice@example.com", 1).len(), 1);
    server.wait_for_log("event=delivered").unwrap();

    let s = scrape_until(addr, "all connections closed", |s| {
        s.get("postern_connections_active{listener=\"mx\"}") == Some(0.0)
            && s.get("postern_connections_active{listener=\"submission\"}") == Some(0.0)
    });
    assert_eq!(s.value("postern_connections_total{listener=\"mx\"}"), 2.0);
    assert_eq!(
        s.value("postern_connections_total{listener=\"submission\"}"),
        1.0
    );
    assert_eq!(s.total("postern_connections_total"), 3.0, "{}", s.text);

    assert_eq!(
        s.value("postern_messages_accepted_total{origin=\"smtp\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_messages_accepted_total{origin=\"local\"}"),
        0.0
    );
    assert_eq!(
        s.value("postern_messages_rejected_total{reason=\"relay_denied\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_auth_failures_total{listener=\"submission\"}"),
        1.0
    );
    assert_eq!(s.total("postern_auth_failures_total"), 1.0, "{}", s.text);

    assert_eq!(
        s.value("postern_deliveries_total{outcome=\"delivered\",kind=\"local\"}"),
        1.0
    );
    assert_eq!(s.total("postern_deliveries_total"), 1.0, "{}", s.text);
    assert!(
        s.text
            .contains("# TYPE postern_delivery_latency_seconds histogram"),
        "{}",
        s.text
    );
    assert_eq!(
        s.value("postern_delivery_latency_seconds_count{kind=\"local\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_delivery_latency_seconds_bucket{kind=\"local\",le=\"+Inf\"}"),
        1.0
    );
    assert!(s.value("postern_delivery_latency_seconds_sum{kind=\"local\"}") < 20.0);

    // The delivered message left the queue.
    let s = scrape_until(addr, "an empty queue", |s| {
        s.get("postern_queue_messages") == Some(0.0)
    });
    assert_eq!(s.value("postern_queue_oldest_message_age_seconds"), 0.0);
}

#[test]
fn queue_gauges_follow_a_deferred_message_and_local_mail_is_counted() {
    let sink = Sink::start(Script {
        rcpt: Box::new(|_| "451 4.7.1 greylisted".into()),
        ..Script::default()
    });
    let server = Server::start_setup(Setup {
        extra: format!(
            "[queue]\nretry_first = 3600\nretry_max = 7200\n\n[delivery.routes]\n\"remote.test\" = \"{}\"\n\n{METRICS}",
            sink.addr
        ),
        ..Default::default()
    });
    let addr = metrics_addr(&server);
    assert_eq!(scrape(addr).value("postern_queue_messages"), 0.0);

    // Authenticated mail to a greylisting remote: deferred, stays in the queue.
    let mut c = common::TlsClient::submission(&server, "alice@example.com");
    c.begin("alice@example.com", &["bob@remote.test"]);
    c.cmd("Subject: later\r\n\r\nx\r\n.", "250 2.0.0 Ok: queued as ");
    c.cmd("QUIT", "221");
    drop(c);
    server.wait_for_log("event=deferred").unwrap();

    // Local mail through the sendmail socket, delivered at once.
    let out = server.sendmail(None, &["bob@example.com"], b"Subject: local\n\nx\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.wait_for_delivery("bob@example.com", 1).len(), 1);
    server.wait_for_log("event=delivered").unwrap();

    // The periodic refresh sees the one deferred message, with its age.
    let s = scrape_until(addr, "one message in the queue", |s| {
        s.get("postern_queue_messages") == Some(1.0)
            && s.get("postern_connections_active{listener=\"local\"}") == Some(0.0)
    });
    let age = s.value("postern_queue_oldest_message_age_seconds");
    assert!(age > 0.0 && age < 60.0, "age {age}");

    assert_eq!(
        s.value("postern_messages_accepted_total{origin=\"smtp\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_messages_accepted_total{origin=\"local\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_connections_total{listener=\"local\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_connections_total{listener=\"submission\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_deliveries_total{outcome=\"deferred\",kind=\"remote\"}"),
        1.0
    );
    assert_eq!(
        s.value("postern_deliveries_total{outcome=\"delivered\",kind=\"local\"}"),
        1.0
    );
    assert_eq!(s.total("postern_deliveries_total"), 2.0, "{}", s.text);
    assert_eq!(
        s.get("postern_delivery_latency_seconds_count{kind=\"remote\"}"),
        None,
        "a deferral is not a delivery latency:\n{}",
        s.text
    );
    assert_eq!(
        s.value("postern_delivery_latency_seconds_count{kind=\"local\"}"),
        1.0
    );
    assert_eq!(s.total("postern_auth_failures_total"), 0.0);
}

#[test]
fn other_paths_and_methods_are_refused() {
    let server = Server::start_setup(Setup {
        extra: METRICS.into(),
        ..Default::default()
    });
    let addr = metrics_addr(&server);
    for (request, status) in [
        ("GET / HTTP/1.0\r\n\r\n", "404"),
        ("POST /metrics HTTP/1.0\r\n\r\n", "405"),
        ("HEAD /metrics HTTP/1.0\r\n\r\n", "200"),
    ] {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {response:?}"
        );
        if request.starts_with("HEAD") {
            assert!(
                response.ends_with("\r\n\r\n"),
                "no body for HEAD: {response:?}"
            );
        }
    }
}

#[test]
fn an_address_in_use_stops_the_server_with_a_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    let d = dir.path().display();
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.example.com\"\ndata_dir = \"{d}/data\"\nlocal_domains = [\"example.com\"]\n\n[[listener]]\nname = \"mx\"\naddr = \"127.0.0.1:0\"\nrole = \"mx\"\n\n[auth]\npasswd_file = \"{d}/passwd\"\n\n[metrics]\naddr = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot start the metrics endpoint")
            && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);
}
