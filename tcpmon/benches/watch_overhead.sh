#!/usr/bin/env bash
# Connection rate of a maximal loopback churn with and without `tcpmon watch --json
# >/dev/null` attached, the events it received and lost, and (with --rss SECONDS) its RSS
# over a long churn. Runs in a private network namespace; needs root.
#   tcpmon/benches/watch_overhead.sh [--seconds 10] [--rounds 3] [--threads 32] [--rss 600]
#       [--no-peers] [-- WATCH OPTIONS...]
# 32 client threads: the rate stops rising there on the 2-core VM (3 threads: ~66k/s,
# 16: ~80k/s, 32 and 64: ~86k/s); one accepting thread serves them all.
# Peers in the same run when installed (apt-get install bpftrace libbpf-tools): bpftrace
# printing each event, bpftrace counting in a kernel map, and bcc's tcpstates (libbpf-tools).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
churn="${CHURN:-$root/target/release/examples/churn}"
seconds=10 rounds=3 threads=32 rss=0 peers=1 extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --rss) rss=$2; shift 2 ;;
        --no-peers) peers=0; shift ;;
        --) shift; extra+=("$@"); break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=churn_netns.sh
source "$here/churn_netns.sh"
churn_netns tcpmon-ovh
# A Tcp: counter of /proc/net/snmp in the namespace.
snmp_tcp() { in_ns awk -v name="$1" '/^Tcp:/ { if (!n) { for (i = 2; i <= NF; i++) col[$i] = i; n = 1 } else print $col[name] }' /proc/net/snmp; }
conns_of() { sed -n 's/.*connections=\([0-9]*\).*/\1/p'; }

# Stops tcpmon and keeps its detach line. Not called in $(...), as stop_watch.
detach_summary() {
    stop_watch
    grep 'detached' "$work/watch.err" | tail -1 > "$work/summary" || echo "no summary: $(tail -3 "$work/watch.err")" > "$work/summary"
}

echo "watch options: --json --mode ebpf ${extra[*]}"
echo "churn: $threads client threads, ${seconds}s per run, $rounds rounds (alternating)"
printf '%-6s %-22s %10s %14s %12s\n' round run conn_per_s transitions lost
for ((r = 1; r <= rounds; r++)); do
    base=$(in_ns "$churn" "$seconds" "$threads" | tee "$work/base.out" | rate_of)
    printf '%-6s %-22s %10s\n' "$r" "no tracer" "$base"
    sleep 2
    start_watch "${extra[@]}"
    resets_before=$(snmp_tcp EstabResets)
    out=$(in_ns "$churn" "$seconds" "$threads")
    resets=$(($(snmp_tcp EstabResets) - resets_before))
    detach_summary
    summary=$(cat "$work/summary")
    got=$(sed -n 's/.*: \([0-9]*\) transitions.*/\1/p' <<<"$summary")
    lost=$(sed -n 's/.*, \([0-9]*\) lost.*/\1/p' <<<"$summary")
    conns=$(conns_of <<<"$out")
    printf '%-6s %-22s %10s %14s %12s   (expected >= %s transitions; %s)\n' "$r" "tcpmon watch --json" \
        "$(rate_of <<<"$out")" "$got" "$lost" "$((conns * 10))" "${summary#tcpmon: }"
    echo "$base $(rate_of <<<"$out") $got $lost $conns $resets" >> "$work/rounds"
    sleep 2
    if [[ $peers == 1 ]] && command -v bpftrace >/dev/null; then
        # bpftrace finds tracepoints through tracefs, which minimal systems leave unmounted.
        [[ -d /sys/kernel/tracing/events ]] || mount -t tracefs tracefs /sys/kernel/tracing
        # Peers in the same run: bpftrace printing each event (KERNEL_FACTS.md), and
        # bpftrace only counting in a kernel map (no event reaches user space: a floor
        # for any tool that hooks every state change).
        for peer_kind in printf count; do
            if [[ $peer_kind == printf ]]; then
                action='printf("%d %d %d %d %d\n", args->family, args->sport, args->dport, args->oldstate, args->newstate);'
            else
                action='@[args->newstate] = count();'
            fi
            bpftrace -e "tracepoint:sock:inet_sock_set_state { $action }" >/dev/null 2>&1 &
            tracer=$!
            sleep 3
            peer=$(in_ns "$churn" "$seconds" "$threads" | rate_of)
            kill -INT "$tracer" 2>/dev/null || echo "bpftrace exited early: see its output with bash -x" >&2
            wait "$tracer" 2>/dev/null || true
            printf '%-6s %-22s %10s\n' "$r" "bpftrace $peer_kind" "$peer"
            echo "$peer" >> "$work/peer_$peer_kind"
            sleep 2
        done
    fi
    # bcc's tcpstates as libbpf-tools packages it (CO-RE: needs no kernel headers, which
    # the Python bcc one does and this kernel lacks); it prints every transition.
    if [[ $peers == 1 && -x /usr/sbin/tcpstates ]]; then
        /usr/sbin/tcpstates >/dev/null 2>"$work/tcpstates.err" &
        tracer=$!
        sleep 3
        peer=$(in_ns "$churn" "$seconds" "$threads" | rate_of)
        kill -INT "$tracer" 2>/dev/null || echo "tcpstates exited early: $(tail -2 "$work/tcpstates.err")" >&2
        wait "$tracer" 2>/dev/null || true
        # It reports perf-buffer loss as "lost N events" lines on stderr.
        lost=$(awk '/[Ll]ost/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i} END {print n + 0}' "$work/tcpstates.err")
        printf '%-6s %-22s %10s %14s %12s\n' "$r" "tcpstates (libbpf)" "$peer" "" "$lost"
        echo "$peer" >> "$work/peer_tcpstates"
        sleep 2
    fi
done
python3 - "$work/rounds" <<'PY'
import statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
base = statistics.median(r[0] for r in rows)
watched = statistics.median(r[1] for r in rows)
print(f"median rate: {base:.0f}/s without, {watched:.0f}/s with tcpmon watch: "
      f"{(1 - watched / base) * 100:.1f}% lower")
# Each watched run against the unwatched run just before it: the host's own drift
# (this VM's unwatched rate moves by several percent between runs) cancels out.
paired = sorted((1 - r[1] / r[0]) * 100 for r in rows)
print(f"paired per-round loss: median {statistics.median(paired):.1f}%, "
      f"range {paired[0]:.1f}%..{paired[-1]:.1f}% over {len(paired)} rounds")
import os
for kind, what in (("printf", "bpftrace printing each event"), ("count", "bpftrace counting in a kernel map"),
                   ("tcpstates", "tcpstates (bcc's, libbpf-tools)")):
    peer_file = os.path.join(os.path.dirname(sys.argv[1]), "peer_" + kind)
    if os.path.exists(peer_file):
        peer = statistics.median(int(l) for l in open(peer_file) if l.strip())
        print(f"median rate with {what}: {peer:.0f}/s: {(1 - peer / base) * 100:.1f}% lower")
# A connection makes 10 transitions when it closes normally; one reset in ESTABLISHED or
# CLOSE_WAIT (TcpEstabResets, which busy loopback churn produces now and then) makes 1-2
# fewer, so a shortfall up to twice the resets is not loss.
for r in rows:
    unreported = 10 * r[4] - r[2] - r[3]
    print(f"  received {r[2]} of >= {10 * r[4]} transitions, {r[3]} reported lost, "
          f"shortfall not reported as lost: {max(unreported, 0)} "
          f"(connections reset meanwhile: {r[5]})")
PY

if [[ "$rss" -gt 0 ]]; then
    echo "RSS of tcpmon watch under ${rss}s of churn (sampled every 30s):"
    start_watch "${extra[@]}"
    in_ns "$churn" "$rss" "$threads" > "$work/long.out" &
    churner=$!
    pid=$watcher
    for ((t = 0; t <= rss; t += 30)); do
        printf '  t=%4ss VmRSS %s\n' "$t" "$(awk '/VmRSS/ {print $2 " " $3}' /proc/"$pid"/status)"
        sleep 30
    done
    wait "$churner" || true
    cat "$work/long.out"
    detach_summary
    cat "$work/summary"
fi
