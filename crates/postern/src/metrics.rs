//! Prometheus metrics (`[metrics] addr`): what the server does, for graphs and alerts.
//!
//! This module owns the metric names (every one starts with `postern_`), their labels,
//! the delivery latency buckets, the periodic queue gauges, and the HTTP endpoint that
//! serves `/metrics` in the Prometheus text format. Callers report what happened and
//! this module only counts it: it must not decide anything. No reply, policy or delivery
//! may depend on a metric, and until [`install`] runs every function here is a cheap
//! no-op.
//!
//! The endpoint is a small HTTP/1.x responder around the exporter's
//! `PrometheusHandle::render`, not the exporter's own listener, so that `install` can
//! report the address it really bound (port 0 in tests).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::queue::{QueueId, Spool};

const CONNECTIONS_TOTAL: &str = "postern_connections_total";
const CONNECTIONS_ACTIVE: &str = "postern_connections_active";
const MESSAGES_ACCEPTED: &str = "postern_messages_accepted_total";
const MESSAGES_REJECTED: &str = "postern_messages_rejected_total";
const AUTH_FAILURES: &str = "postern_auth_failures_total";
const DELIVERIES: &str = "postern_deliveries_total";
const DELIVERY_LATENCY: &str = "postern_delivery_latency_seconds";
const QUEUE_MESSAGES: &str = "postern_queue_messages";
const QUEUE_OLDEST_AGE: &str = "postern_queue_oldest_message_age_seconds";

/// Seconds from acceptance to delivery: a local delivery takes milliseconds, a remote
/// one seconds, a deferred one minutes to days (the queue gives up after 5 days by
/// default).
const LATENCY_BUCKETS: [f64; 20] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    14_400.0, 43_200.0, 86_400.0, 172_800.0, 432_000.0,
];

/// A scrape must send its request and take its answer within this time.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head read; a scraper sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const SCRAPE_PATH: &str = "/metrics";
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client connected to `listener` ("mx", "submission", …, or "local").
pub fn connection_opened(listener: &str) {
    counter!(CONNECTIONS_TOTAL, "listener" => listener.to_owned()).increment(1);
    gauge!(CONNECTIONS_ACTIVE, "listener" => listener.to_owned()).increment(1.0);
}

/// That client left.
pub fn connection_closed(listener: &str) {
    gauge!(CONNECTIONS_ACTIVE, "listener" => listener.to_owned()).decrement(1.0);
}

/// A message was queued; `origin` is "smtp" or "local".
pub fn message_accepted(origin: &'static str) {
    counter!(MESSAGES_ACCEPTED, "origin" => origin).increment(1);
}

/// A command or message was refused; `reason` is the log line's `reason=`.
pub fn message_rejected(reason: &str) {
    counter!(MESSAGES_REJECTED, "reason" => reason.to_owned()).increment(1);
}

/// A login failed on `listener`.
pub fn auth_failed(listener: &str) {
    counter!(AUTH_FAILURES, "listener" => listener.to_owned()).increment(1);
}

/// One recipient's delivery attempt ended: "delivered", "deferred" or "bounced";
/// `kind` is "local" or "remote"; `since_arrival` is the time since the message was
/// accepted.
pub fn delivery(outcome: &'static str, kind: &'static str, since_arrival: Duration) {
    counter!(DELIVERIES, "outcome" => outcome, "kind" => kind).increment(1);
    if outcome == "delivered" {
        histogram!(DELIVERY_LATENCY, "kind" => kind).record(since_arrival.as_secs_f64());
    }
}

/// The queue's size and the age of its oldest message.
pub fn queue_state(messages: usize, oldest: Duration) {
    gauge!(QUEUE_MESSAGES).set(messages as f64);
    gauge!(QUEUE_OLDEST_AGE).set(oldest.as_secs_f64());
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {message}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub message: String,
}

/// Starts the HTTP endpoint serving `/metrics` on `addr`, installs the process-wide
/// recorder, sets the queue gauges from `spool` and refreshes them every `queue_refresh`
/// (`metrics.queue_refresh`, 10 seconds by default).
/// Returns the address actually bound (`addr` with port 0 gets a free port).
///
/// Must be called inside the tokio runtime, once per process.
pub fn install(
    addr: SocketAddr,
    queue_refresh: Duration,
    spool: Spool,
) -> Result<SocketAddr, MetricsError> {
    let fail = |message: String| MetricsError { addr, message };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(fail("not called inside the async runtime".to_string()));
    }
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|e| fail(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DELIVERY_LATENCY.to_string()),
            &LATENCY_BUCKETS,
        )
        .map_err(|e| fail(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| fail("a metrics recorder is already installed in this process".to_string()))?;
    describe();
    let mut refresh = QueueRefresh::default();
    refresh.record(spool.list());
    tokio::spawn(serve(listener, handle.clone()));
    tokio::spawn(refresh_forever(spool, handle, refresh, queue_refresh));
    Ok(bound)
}

/// HELP and TYPE lines, and zeroes for the series known in advance, so that a rate over
/// them exists before the first event.
fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted, by listener (\"local\" is the sendmail socket)."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Client connections open now, by listener."
    );
    describe_counter!(
        MESSAGES_ACCEPTED,
        "Messages queued, by origin (smtp or local)."
    );
    describe_counter!(
        MESSAGES_REJECTED,
        "Commands or messages refused, by the reason= of the log line."
    );
    describe_counter!(AUTH_FAILURES, "Failed logins, by listener.");
    describe_counter!(
        DELIVERIES,
        "Ends of delivery attempts per recipient, by outcome (delivered, deferred, bounced) and kind (local, remote)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from acceptance to successful delivery, by kind."
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages in the queue.");
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest message in the queue; 0 when it is empty."
    );
    for origin in ["smtp", "local"] {
        counter!(MESSAGES_ACCEPTED, "origin" => origin).increment(0);
    }
    for outcome in ["delivered", "deferred", "bounced"] {
        for kind in ["local", "remote"] {
            counter!(DELIVERIES, "outcome" => outcome, "kind" => kind).increment(0);
        }
    }
}

/// Sets the queue gauges from a listing, and logs a failing listing once per failure
/// streak rather than every 10 seconds.
#[derive(Default)]
struct QueueRefresh {
    failing: bool,
}

impl QueueRefresh {
    fn record(&mut self, listing: Result<Vec<QueueId>, crate::queue::SpoolError>) {
        match listing {
            Ok(ids) => {
                if self.failing {
                    tracing::info!(event = "metrics_queue_readable");
                }
                self.failing = false;
                let (messages, oldest) = queue_figures(&ids, SystemTime::now());
                queue_state(messages, oldest);
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(event = "metrics_queue_unreadable", error = %e, msg = "the queue gauges keep their last values until the queue can be listed again");
                }
                self.failing = true;
            }
        }
    }
}

/// The number of messages and the age of the oldest (IDs sorted oldest first), read
/// from the queue ID's time part. A clock behind the ID counts as age 0.
fn queue_figures(ids: &[QueueId], now: SystemTime) -> (usize, Duration) {
    let oldest = ids
        .first()
        .and_then(QueueId::created_at)
        .and_then(|created| now.duration_since(created).ok())
        .unwrap_or_default();
    (ids.len(), oldest)
}

async fn refresh_forever(
    spool: Spool,
    handle: PrometheusHandle,
    mut refresh: QueueRefresh,
    every: Duration,
) {
    // A zero period would panic: `queue_refresh = 0` counts as one second.
    let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and `install` has just done that one.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let listing = spool.clone();
        match tokio::task::spawn_blocking(move || listing.list()).await {
            Ok(listing) => refresh.record(listing),
            Err(e) => tracing::warn!(event = "metrics_queue_unreadable", error = %e),
        }
        // Folds recorded histogram samples into their buckets between scrapes.
        handle.run_upkeep();
    }
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &handle)).await;
                });
            }
            Err(e) => {
                // Out of file descriptors, typically: wait instead of spinning.
                tracing::warn!(event = "metrics_accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head_complete(&head) && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream
        .write_all(&response(&head, || handle.render()))
        .await?;
    stream.shutdown().await
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The whole HTTP response to a request head: the metrics for `GET /metrics` (headers
/// only for `HEAD`), else an error status. `render` runs only when the body is needed.
fn response(head: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return plain_response("400 Bad Request", "", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return plain_response("400 Bad Request", "", "bad request\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != SCRAPE_PATH {
        return plain_response("404 Not Found", "", "metrics are at /metrics\n");
    }
    match method {
        "GET" => http_response("200 OK", TEXT_FORMAT, "", render().as_bytes(), true),
        "HEAD" => http_response("200 OK", TEXT_FORMAT, "", render().as_bytes(), false),
        _ => plain_response(
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n",
        ),
    }
}

fn plain_response(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    http_response(
        status,
        "text/plain; charset=utf-8",
        extra_headers,
        body.as_bytes(),
        true,
    )
}

fn http_response(
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn get_metrics_serves_the_rendered_text() {
        let out = text(response(
            b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n",
            || "postern_x 1\n".to_string(),
        ));
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(out.contains("Content-Length: 12\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\npostern_x 1\n"), "{out}");
        let out = text(response(b"GET /metrics?x=1 HTTP/1.1\n\n", String::new));
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    }

    #[test]
    fn head_has_no_body() {
        let out = text(response(b"HEAD /metrics HTTP/1.1\r\n\r\n", || {
            "abc".to_string()
        }));
        assert!(out.contains("Content-Length: 3\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[test]
    fn other_requests_get_errors_without_rendering() {
        let never = || -> String { panic!("rendered for an error") };
        for (request, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404"),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", "404"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
            (b"GET /metrics\r\n\r\n", "400"),
            (b"GET /metrics SMTP/1.0\r\n\r\n", "400"),
            (b"", "400"),
            (b"\xff\xfe garbage", "400"),
        ] {
            let out = text(response(request, never));
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
        }
    }

    #[test]
    fn queue_age_comes_from_the_oldest_id() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(queue_figures(&[], now), (0, Duration::ZERO));
        // 900 s after the epoch = 900_000_000 µs = 0x35A4E900.
        let oldest = QueueId::parse("00000035A4E9000001").unwrap();
        let newer = QueueId::generate();
        assert_eq!(
            queue_figures(&[oldest, newer], now),
            (2, Duration::from_secs(100))
        );
        // An ID from the future (clock stepped back) counts as age 0.
        let future = QueueId::generate();
        assert_eq!(queue_figures(&[future], now), (1, Duration::ZERO));
    }

    #[test]
    fn events_become_postern_series() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DELIVERY_LATENCY.to_string()),
                &LATENCY_BUCKETS,
            )
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            connection_opened("mx");
            connection_opened("mx");
            connection_closed("mx");
            message_accepted("smtp");
            message_rejected("relay_denied");
            auth_failed("submission");
            delivery("delivered", "local", Duration::from_millis(30));
            delivery("deferred", "remote", Duration::from_secs(5));
            queue_state(3, Duration::from_secs(42));
        });
        let out = handle.render();
        for line in [
            "postern_connections_total{listener=\"mx\"} 2",
            "postern_connections_active{listener=\"mx\"} 1",
            "postern_messages_accepted_total{origin=\"smtp\"} 1",
            "postern_messages_accepted_total{origin=\"local\"} 0",
            "postern_messages_rejected_total{reason=\"relay_denied\"} 1",
            "postern_auth_failures_total{listener=\"submission\"} 1",
            "postern_deliveries_total{outcome=\"delivered\",kind=\"local\"} 1",
            "postern_deliveries_total{outcome=\"deferred\",kind=\"remote\"} 1",
            "postern_deliveries_total{outcome=\"bounced\",kind=\"remote\"} 0",
            "postern_delivery_latency_seconds_bucket{kind=\"local\",le=\"0.01\"} 0",
            "postern_delivery_latency_seconds_bucket{kind=\"local\",le=\"0.05\"} 1",
            "postern_delivery_latency_seconds_bucket{kind=\"local\",le=\"432000\"} 1",
            "postern_delivery_latency_seconds_count{kind=\"local\"} 1",
            "postern_queue_messages 3",
            "postern_queue_oldest_message_age_seconds 42",
            "# TYPE postern_delivery_latency_seconds histogram",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "missing {line:?} in:\n{out}"
            );
        }
        assert!(
            !out.contains("postern_delivery_latency_seconds_count{kind=\"remote\"}"),
            "only delivered messages count in the latency: {out}"
        );
        for line in out.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.starts_with("postern_"), "{line}");
        }
    }
}
