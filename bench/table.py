#!/usr/bin/env python3
"""Renders the JSON lines of bench/run.sh and bench/postfix.sh as the Markdown tables of
docs/benchmarks.md.

Usage: bench/table.py LABEL=FILE [LABEL=FILE ...]
  e.g. bench/table.py "postern run 1=p1.json" "Postfix + Dovecot=pf.json"

Prints one table for the message workloads (rows grouped by workload, in the order of
the files given) and one line per idle-sessions run.
"""

import json
import sys

NAMES = {
    "submission-50x10-relayed": "(a) submission 50 × 10, relayed",
    "submission-1-per-conn-relayed": "(b) submission, 1 msg per connection, relayed",
    "mx-50x10-maildir": "(c) MX, no TLS, 50 × 10, Maildir",
}


def rate(x):
    return f"{x:,.0f}"


def pair(d, a, b):
    return f"{d.get(a, 0):.1f} / {d.get(b, 0):.1f} ms"


def main(args):
    runs = []
    for arg in args:
        label, _, path = arg.partition("=")
        if not path:
            sys.exit(f"expected LABEL=FILE, got {arg!r}")
        with open(path) as f:
            runs.append((label, [json.loads(line) for line in f if line.strip()]))

    print("| workload | server | accepted msgs/s | end to end msgs/s | accept latency p50 / p99 "
          "| connect p50 / p99 | server CPU per msg | bench CPU | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for workload, title in NAMES.items():
        first = True
        for label, lines in runs:
            for d in lines:
                if d.get("workload") != workload:
                    continue
                b = d["bench"]
                rss = d["peak_rss_mib"]
                rss = f"{rss:.0f} MiB" if rss < 200 else f"(sum {rss / 1024:.1f} GiB)"
                print(f"| {title if first else ''} | {label} | {rate(b['msgs_per_s'])} "
                      f"| {rate(d['end_to_end_msgs_per_s'])} "
                      f"| {pair(b['latency_ms'], 'p50', 'p99')} "
                      f"| {pair(b['connect_ms'], 'p50', 'p99')} "
                      f"| {d['server_cpu_ms_per_msg']:.2f} ms | {b['client_cpu_s']:.2f} s | {rss} |")
                first = False
    print()
    for label, lines in runs:
        for d in lines:
            if not d.get("workload", "").startswith("idle-"):
                continue
            b = d["bench"] or {}
            p = b.get("probe_ms", {})
            print(f"- {label}, {d['workload']}: {b.get('held')} of {b.get('requested')} held, "
                  f"{b.get('still_answering')} still answering at the end, opened in "
                  f"{b.get('open_s', 0):.1f} s; RSS {d['rss_before_mib']:.0f} MiB before, "
                  f"{d['rss_peak_mib']:.0f} MiB at the peak ({d['rss_per_session_kib']:.1f} KiB "
                  f"per session); new clients {p.get('p50', 0):.2f} / {p.get('p99', 0):.2f} / "
                  f"{p.get('max', 0):.2f} ms (p50 / p99 / max, {p.get('count')} probes, "
                  f"{p.get('errors')} errors)")


if __name__ == "__main__":
    main(sys.argv[1:])
