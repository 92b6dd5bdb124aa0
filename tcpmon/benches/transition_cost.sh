#!/usr/bin/env bash
# Where `tcpmon watch --json >/dev/null` spends its time under a maximal loopback churn:
# each kernel program's run time (kernel.bpf_stats_enabled, read from the program's
# fdinfo) and the user-space CPU of the reader, per transition and per connection, next
# to the CPU time one connection takes. Runs in a private network namespace; needs root.
#   tcpmon/benches/transition_cost.sh [--seconds 10] [--threads 32] [-- WATCH OPTIONS...]
# bpf_stats adds two clock reads to every program run, so the kernel figures are upper
# bounds (by ~20 ns per run here); the connection rate printed is also lower than
# watch_overhead.sh's for that reason.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
churn="${CHURN:-$root/target/release/examples/churn}"
seconds=10 threads=32 extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --) shift; extra+=("$@"); break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
for bin in "$tcpmon" "$churn"; do
    [[ -x "$bin" ]] || { echo "missing $bin: cargo build --release -p tcpmon --bin tcpmon --example churn" >&2; exit 2; }
done
ns="tcpmon-cost-$$"
watcher=""
work="$(mktemp -d)"
stats_before="$(sysctl -n kernel.bpf_stats_enabled)"
cleanup() {
    [[ -n "$watcher" ]] && kill "$watcher" 2>/dev/null || true
    sysctl -qw kernel.bpf_stats_enabled="$stats_before" || true
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
sysctl -qw kernel.bpf_stats_enabled=1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ip netns exec "$ns" "$tcpmon" watch --json --mode ebpf "${extra[@]}" >/dev/null 2>"$work/watch.err" &
watcher=$!
sleep 1.5
before=$(cpu_ticks "$watcher")
out=$(ip netns exec "$ns" "$churn" "$seconds" "$threads")
after=$(cpu_ticks "$watcher")
# One line per loaded program (a program can be open on several fds: keep one per id).
for fd in /proc/"$watcher"/fdinfo/*; do
    awk '/^prog_type:/ {t=$2} /^prog_id:/ {id=$2} /^run_time_ns:/ {ns=$2} /^run_cnt:/ {n=$2}
         END {if (id != "" && n > 0) print id, t, n, ns}' "$fd"
done | sort -u -k1,1n > "$work/progs"
kill -TERM "$watcher"; wait "$watcher" || true; watcher=""
summary=$(grep 'detached' "$work/watch.err" | tail -1)

python3 - "$work/progs" "$out" "$summary" "$((after - before))" "$(getconf CLK_TCK)" "$seconds" "$(nproc)" <<'PY'
import re, sys
progs_file, churn_out, summary, ticks, hz, seconds, cpus = sys.argv[1:]
names = {"5": "tracepoint", "13": "sock_ops", "17": "raw_tracepoint", "26": "BTF tracepoint"}
conns = int(re.search(r"connections=(\d+)", churn_out).group(1))
rate = int(re.search(r"rate=(\d+)", churn_out).group(1))
transitions = int(re.search(r": (\d+) transitions", summary).group(1))
cpu_per_conn = int(cpus) * float(seconds) / conns * 1e9
print(f"churn: {conns} connections in {seconds}s ({rate}/s), {transitions} transitions received")
print(f"CPU time per connection on this host: {cpu_per_conn:.0f} ns ({cpus} CPUs busy)")
print(f"{'where':<28} {'runs':>10} {'ns/run':>8} {'per conn':>9} {'share':>7}")
total = 0.0
for line in open(progs_file):
    _, kind, runs, ns = line.split()
    runs, ns = int(runs), int(ns)
    per_conn = ns / conns
    total += per_conn
    print(f"{'kernel ' + names.get(kind, 'prog type ' + kind):<28} {runs:>10} {ns / runs:>8.0f} "
          f"{per_conn:>9.0f} {per_conn / cpu_per_conn * 100:>6.1f}%")
user_ns = int(ticks) / int(hz) * 1e9
per_conn = user_ns / conns
total += per_conn
print(f"{'user space (CPU time)':<28} {transitions:>10} {user_ns / max(transitions, 1):>8.0f} "
      f"{per_conn:>9.0f} {per_conn / cpu_per_conn * 100:>6.1f}%")
print(f"{'total':<28} {'':>10} {'':>8} {total:>9.0f} {total / cpu_per_conn * 100:>6.1f}%")
print(summary)
PY
