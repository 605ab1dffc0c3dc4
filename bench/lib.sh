# Shared by bench/run.sh and bench/postfix.sh (sourced first). The caller sets ROOT (the
# checkout) before sourcing; before the workloads, it sets DIR (its temporary directory)
# and SERVER (a name for the output) and defines: server_pids (the root processes of the server under test, one a line) and
# queue_empty (status 0 when every accepted message has left the queue).

HZ=$(getconf CLK_TCK)
# Messages per workload, the login the scripts create, where the binaries are.
TOTAL_A=${TOTAL_A:-5000}
TOTAL_B=${TOTAL_B:-2000}
TOTAL_C=${TOTAL_C:-5000}
USER_ADDR=bench@bench.test
PASSWORD=bench-secret
B=$ROOT/target/release

# new_run_dir NAME: a new directory for this run's files, under a directory marked as a
# top of hierarchy (chattr +T), so that ext4 puts each run's files in another block
# group than the last run's deleted ones (see SETTLE below); elsewhere the attribute is
# simply not set.
new_run_dir() {
    local runs=/tmp/postern-bench-runs
    mkdir -p "$runs"
    chattr +T "$runs" 2> /dev/null || true
    mktemp -d "$runs/$1.XXXXXX"
}

# A process and all its descendants, one pid a line.
tree_pids() {
    local pid=$1 child
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        tree_pids "$child"
    done
}
all_pids() {
    local root
    for root in $(server_pids); do
        tree_pids "$root"
    done
}
# CPU clock ticks of the server: utime + stime + cutime + cstime over its live processes.
# The children that exited were waited for by a live parent, so their time is in that
# parent's cutime + cstime: everything is counted once.
cpu_ticks() {
    local pid
    for pid in $(all_pids); do
        # After "pid (comm) ", utime, stime, cutime, cstime are fields 12 to 15.
        sed 's/^.*) //' /proc/"$pid"/stat 2>/dev/null || true
    done | awk '{t += $12 + $13 + $14 + $15} END {print t + 0}'
}
# Sum of the peak RSS (VmHWM) of the live processes, in KiB.
peak_rss_kib() {
    local pid
    for pid in $(all_pids); do
        cat /proc/"$pid"/status 2>/dev/null || true
    done | awk '/^VmHWM:/ {t += $2} END {print t + 0}'
}
# Sum of the current RSS and PSS (proportional: shared pages divided among their
# users) of the live processes, in KiB: "rss pss".
rss_pss_kib() {
    local pid
    for pid in $(all_pids); do
        cat /proc/"$pid"/smaps_rollup 2>/dev/null || true
    done | awk '/^Rss:/ {r += $2} /^Pss:/ {p += $2} END {print r + 0, p + 0}'
}
reset_peak_rss() {
    local pid
    for pid in $(all_pids); do
        echo 5 > /proc/"$pid"/clear_refs 2>/dev/null || true
    done
}
# Messages the sink accepted so far (it prints its counts as JSON lines on change).
sink_count() {
    local n
    n=$(tail -n 1 "$DIR/sink.out" | grep -o '"sink_messages":[0-9]*' | cut -d: -f2 || true)
    echo "${n:-0}"
}
# Files in a Maildir's new/.
maildir_count() {
    if [[ -d $1/new ]]; then find "$1/new" -type f | wc -l; else echo 0; fi
}
now() {
    date +%s.%N
}

# Seconds to wait before each workload (SETTLE, default 1). On ext4 without a journal
# (this machine's /), creating a file skips, one by one, every inode freed in the last
# 60 s (360 s while their inode table block is not yet written back): right after a run
# that deleted thousands of files (the previous run's cleanup, or Postfix's own queue
# files) file creation costs several times more CPU. The scripts keep each run's files
# apart from the last run's (chattr +T on their parent); SETTLE=75 also lets most of
# the rest pass, for both servers alike.
SETTLE=${SETTLE:-1}

# workload NAME COUNT_COMMAND BENCH_ARGS...: runs postern-bench, waits (at most 300 s)
# until the queue is empty, prints one JSON line. COUNT_COMMAND (word-split) prints how
# many messages have arrived at the destination.
workload() {
    local name=$1 counter=$2
    shift 2
    local before_count cpu0 t0 out t_acc t_end cpu1 msgs delivered
    sleep "$SETTLE"
    before_count=$($counter)
    reset_peak_rss
    cpu0=$(cpu_ticks)
    t0=$(now)
    out=$("$B/postern-bench" "$@" 2> "$DIR/bench-$name.err") || true
    t_acc=$(now)
    for _ in $(seq 3000); do
        queue_empty && break
        sleep 0.1
    done
    queue_empty || echo "$name: the queue did not empty in 300 s" >&2
    t_end=$(now)
    cpu1=$(cpu_ticks)
    sleep 0.3 # the sink prints its count every 100 ms
    msgs=$(grep -o '"messages":[0-9]*' <<< "$out" | cut -d: -f2 || true)
    delivered=$(($($counter) - before_count))
    awk -v server="$SERVER" -v name="$name" -v out="$out" -v t0="$t0" -v t_acc="$t_acc" \
        -v t_end="$t_end" -v c0="$cpu0" -v c1="$cpu1" -v hz="$HZ" -v msgs="${msgs:-0}" \
        -v delivered="$delivered" -v rss="$(peak_rss_kib)" 'BEGIN {
        cpu = (c1 - c0) / hz
        e2e = t_end - t0
        printf "{\"server\":\"%s\",\"workload\":\"%s\",\"accepted\":%d,\"delivered\":%d,", server, name, msgs, delivered
        printf "\"accept_s\":%.3f,\"end_to_end_s\":%.3f,\"end_to_end_msgs_per_s\":%.1f,", t_acc - t0, e2e, (e2e > 0 ? msgs / e2e : 0)
        printf "\"server_cpu_s\":%.2f,\"server_cpu_ms_per_msg\":%.3f,\"peak_rss_mib\":%.1f,\"bench\":%s}\n", cpu, (msgs > 0 ? cpu * 1000 / msgs : 0), rss / 1024, out
    }'
}

# (d) IDLE (default 10000) plaintext sessions on the MX port held open (greeting and
# EHLO done) while 50 new clients are timed one by one; the server's memory is sampled
# every 0.2 s meanwhile. One JSON line: memory before and at the peak, and the bench's.
idle_workload() {
    local count=${IDLE:-10000} before peak=0 now pid
    sleep 1
    read -r before _ <<< "$(rss_pss_kib)"
    "$B/postern-bench" --addr "127.0.0.1:$MX_PORT" --idle "$count" --probes 50 --hold 2 \
        > "$DIR/idle.out" 2> "$DIR/idle.err" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        read -r now _ <<< "$(rss_pss_kib)"
        if ((now > peak)); then peak=$now; fi
        sleep 0.2
    done
    wait "$pid" || true
    awk -v server="$SERVER" -v count="$count" -v before="$before" -v peak="$peak" \
        -v out="$(cat "$DIR/idle.out")" 'BEGIN {
        printf "{\"server\":\"%s\",\"workload\":\"idle-%d\",\"rss_before_mib\":%.1f,", server, count, before / 1024
        printf "\"rss_peak_mib\":%.1f,\"rss_per_session_kib\":%.1f,\"bench\":%s}\n", peak / 1024, (peak - before) / count, (out == "" ? "null" : out)
    }'
}

# The workloads of the performance issue. SUB_PORT, MX_PORT, USER_ADDR, PASSWORD,
# TOTAL_A/B/C and MAILDIR (the user's Maildir) are set by the caller. ONLY (e.g. "c" or
# "a,b"; default a,b,c) runs a subset; "d" is the idle-sessions workload.
run_workloads() {
    local only=${ONLY:-a,b,c}
    local sub=(--addr "127.0.0.1:$SUB_PORT" --tls starttls --auth "$USER_ADDR:$PASSWORD"
        --rcpt-domain relay.test --rcpt-user sink)
    if [[ ,$only, == *,a,* ]]; then
        workload submission-50x10-relayed sink_count "${sub[@]}" \
            --connections 50 --messages-per-connection 10 --total "$TOTAL_A"
    fi
    if [[ ,$only, == *,b,* ]]; then
        workload submission-1-per-conn-relayed sink_count "${sub[@]}" \
            --connections 50 --messages-per-connection 1 --total "$TOTAL_B"
    fi
    if [[ ,$only, == *,c,* ]]; then
        workload mx-50x10-maildir "maildir_count $MAILDIR" --addr "127.0.0.1:$MX_PORT" \
            --rcpt-domain bench.test --rcpt-user bench \
            --connections 50 --messages-per-connection 10 --total "$TOTAL_C"
    fi
    if [[ ,$only, == *,d,* ]]; then
        idle_workload
    fi
}

# With PROFILE=FILE, records a call-graph profile of the server (`perf record`) while the
# workloads run; read it with `perf report -i FILE`.
profiled_workloads() {
    if [[ -z ${PROFILE:-} ]]; then
        run_workloads
        return
    fi
    local pids
    pids=$(all_pids | paste -sd, -)
    perf record -q -F 997 -g -p "$pids" -o "$PROFILE" 2> /dev/null &
    local perf_pid=$!
    run_workloads
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
}
