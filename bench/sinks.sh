#!/usr/bin/env bash
# Protocol-only references for workload (c): servers that accept every message and write
# nothing. Postfix's smtp-sink (when installed, e.g. by bench/postfix.sh) and
# postern-bench's own sink, each driven like (c): plaintext, 50 connections x 10
# messages, 4 KiB, TOTAL_SINK messages (default 20000), on 127.0.0.1:26299. Prints one
# JSON line per sink: {"server":NAME,"bench":<postern-bench's summary>}.
# Environment: TOTAL_SINK, SETTLE (seconds to wait before each, default 1), NO_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PORT=26299
TOTAL_SINK=${TOTAL_SINK:-20000}

if [[ ${NO_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release --locked -p postern-bench >&2)
fi

# measure NAME COMMAND...: starts the sink, waits (at most 10 s) for its port, drives
# it, stops it.
measure() {
    local name=$1 pid out
    shift
    "$@" > /dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        (exec 3<> "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    sleep "$SETTLE"
    out=$("$B/postern-bench" --addr "127.0.0.1:$PORT" --connections 50 \
        --messages-per-connection 10 --total "$TOTAL_SINK" --rcpt-domain bench.test) || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf '{"server":"%s","bench":%s}\n' "$name" "$out"
}

SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
if [[ -x $SMTP_SINK ]]; then
    # As root it must be told whom to run as.
    as_user=()
    [[ $(id -u) == 0 ]] && as_user=(-u nobody)
    measure smtp-sink "$SMTP_SINK" "${as_user[@]}" "127.0.0.1:$PORT" 1000
else
    echo "smtp-sink not installed (it comes with postfix): skipped" >&2
fi
measure postern-bench-sink "$B/postern-bench" --sink "127.0.0.1:$PORT"
