#!/usr/bin/env bash
# What the failure hooks cost per event: a retransmit-heavy transfer (an Ethernet MTU on
# loopback and nftables dropping a share of one port's packets on input: this kernel has
# no netem) and connects to a closed port (a reset sent and one received each), under
# `tcpmon watch --json --quiet-transitions`, in a private namespace. Prints each kernel
# program's runs and mean run time (kernel.bpf_stats_enabled), the kernel's own counts
# (nstat) beside tcpmon's tally, and tcpmon's CPU. Needs root.
#   tcpmon/benches/failure_cost.sh [--seconds 10] [--drop-percent 5] [--connects 20000]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
seconds=10 drop=5 connects=20000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --drop-percent) drop=$2; shift 2 ;;
        --connects) connects=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
ns="tcpmon-failcost-$$"
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
ip netns exec "$ns" ip link set lo up mtu 1500
ip netns exec "$ns" nft add table inet failcost
ip netns exec "$ns" nft 'add chain inet failcost input { type filter hook input priority 0; }'
ip netns exec "$ns" nft "add rule inet failcost input tcp dport 7070 numgen random mod 100 < $drop drop"
sysctl -qw kernel.bpf_stats_enabled=1
nstat_of() { ip netns exec "$ns" nstat -asz TcpRetransSegs TcpOutRsts TcpAttemptFails | awk 'NF >= 2 {printf "%s=%s ", $1, $2}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

ip netns exec "$ns" "$tcpmon" watch --json --quiet-transitions --mode ebpf --tally-interval 1s >"$work/out" 2>"$work/err" &
watcher=$!
sleep 1.5
before_nstat=$(nstat_of)
before=$(cpu_ticks "$watcher")
ip netns exec "$ns" python3 - "$seconds" "$connects" <<'PY'
import socket, sys, threading, time
seconds, connects = float(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 7070)); srv.listen(8)
def sink():
    conn, _ = srv.accept()
    while conn.recv(1 << 16):
        pass
t = threading.Thread(target=sink); t.start()
c = socket.create_connection(("127.0.0.1", 7070))
chunk = b"x" * (1 << 16)
end = time.monotonic() + seconds
while time.monotonic() < end:
    c.sendall(chunk)
c.close(); t.join()
refused = 0
for _ in range(connects):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 9))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(f"connects refused: {refused}")
PY
sleep 1.5
after=$(cpu_ticks "$watcher")
after_nstat=$(nstat_of)
for fd in /proc/"$watcher"/fdinfo/*; do
    awk '/^prog_id:/ {id=$2} /^run_time_ns:/ {ns=$2} /^run_cnt:/ {n=$2}
         END {if (id != "" && n > 0) print id, n, ns}' "$fd"
done | sort -u -k1,1n > "$work/progs"
# Named while the programs still exist.
# (run_ns, not ns: that names the namespace the cleanup deletes)
while read -r id n run_ns; do
    name=$(bpftool prog show id "$id" 2>/dev/null | sed -n 's/.* name \([^ ]*\) .*/\1/p' | head -1 || true)
    awk -v name="${name:-$id}" -v n="$n" -v ns="$run_ns" 'BEGIN { printf "%-28s %10d runs %8.0f ns/run\n", name, n, ns / n }'
done < "$work/progs" > "$work/named"
kill -TERM "$watcher"; wait "$watcher" || true; watcher=""
echo "kernel counters before: $before_nstat"
echo "kernel counters after:  $after_nstat"
grep '"type":"tally"' "$work/out" | tail -1 | python3 -c '
import json, sys
f = json.load(sys.stdin)["failures"]
print("tcpmon tally: retransmits %d resets sent %d received %d" % (f["retransmits"], f["resets_sent"], f["resets_received"]))'
cat "$work/named"
echo "tcpmon CPU: $(( (after - before) * 1000 / $(getconf CLK_TCK) )) ms over the run"
