#!/usr/bin/env bash
# Runs the workloads of the performance issue against postern on loopback:
#   (a) submission, STARTTLS + AUTH PLAIN, 50 connections x 10 messages, relayed to a sink
#   (b) the same, 1 message per connection (TLS + AUTH every time)
#   (c) MX port, no TLS, 50 connections x 10 messages, to a local Maildir
#   (d) 10,000 idle sessions held on the MX port: server memory, new-client latency
# For each: the postern-bench JSON, the end-to-end time until the queue is empty, the
# server's CPU seconds (utime + stime, whole process tree) and ms per message, and the peak
# RSS (VmHWM, reset before each workload). One JSON summary line per workload on stdout.
#
# Usage: bench/run.sh            (from anywhere; must run as root: `user = "root"`)
# Environment: TOTAL_A, TOTAL_B, TOTAL_C (messages per workload, default 5000, 2000, 5000),
#   PORT_BASE (default 25200), KEEP=1 to keep the temporary directory, NO_BUILD=1,
#   ONLY=a,b,c,d (the workloads to run), IDLE (sessions for d, default 10000),
#   PROFILE=FILE (a `perf record -g` of the server), SETTLE (seconds to wait before
#   each workload, default 1; see bench/lib.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PORT_BASE=${PORT_BASE:-25200}
MX_PORT=$((PORT_BASE + 25))
SUB_PORT=$((PORT_BASE + 87))
SINK_PORT=$((PORT_BASE + 26))

# The idle workload needs a descriptor per session, in the bench and in the server.
ulimit -n "$(ulimit -Hn)"
ONLY=${ONLY:-a,b,c,d}

if [[ ${NO_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release --locked -p postern -p postern-bench >&2)
fi

DIR=$(new_run_dir postern)
SERVER_PID=
SINK_PID=
cleanup() {
    local pid
    for pid in $SERVER_PID $SINK_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $SERVER_PID $SINK_PID; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

cat > "$DIR/postern.toml" <<EOF
hostname = "mail.bench.test"
data_dir = "$DIR/data"
local_domains = ["bench.test"]
user = "root"

[[listener]]
name = "mx"
addr = "127.0.0.1:$MX_PORT"
role = "mx"

[[listener]]
name = "submission"
addr = "127.0.0.1:$SUB_PORT"
role = "submission"

[auth]
passwd_file = "$DIR/passwd"

[delivery]
maildir = "$DIR/mail/%d/%n/Maildir"

[delivery.routes]
"relay.test" = "127.0.0.1:$SINK_PORT"

[inbound]
# No SPF/DKIM/DMARC lookups: the machine has no DNS (Postfix checks none either).
verify = false

[limits]
# 50 bench connections reconnecting from one client would brush the default of 50, and
# the idle workload holds 10,000 from one address.
max_connections = 20000
max_connections_per_client = 20000
EOF
CONFIG=$DIR/postern.toml
echo "$PASSWORD" | "$B/postern" user add "$USER_ADDR" --config "$CONFIG" --password-stdin >&2
"$B/postern" check-config --config "$CONFIG" >&2

"$B/postern-bench" --sink "127.0.0.1:$SINK_PORT" > "$DIR/sink.out" 2> "$DIR/sink.log" &
SINK_PID=$!
"$B/postern" serve --config "$CONFIG" > "$DIR/server.log" 2>&1 &
SERVER_PID=$!

# Wait (at most 30 s) for both SMTP listeners and the sink.
for _ in $(seq 300); do
    if [[ $(grep -c 'event=listening' "$DIR/server.log" || true) -ge 2 ]] &&
        grep -q 'sink listening' "$DIR/sink.log"; then
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    sleep 0.1
done
if [[ $(grep -c 'event=listening' "$DIR/server.log" || true) -lt 2 ]]; then
    echo "postern did not start listening:" >&2
    cat "$DIR/server.log" >&2
    exit 1
fi

SERVER=postern
server_pids() {
    echo "$SERVER_PID"
}
queue_empty() {
    "$B/postern" status --config "$CONFIG" 2>/dev/null | grep -q 'queue: 0 messages'
}
MAILDIR=$DIR/mail/bench.test/bench/Maildir
profiled_workloads
