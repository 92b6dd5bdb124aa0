#!/usr/bin/env bash
# Times `tcpmon report/states --all-netns` against cat of the same namespaces' socket
# tables, on NS private network namespaces of about SOCKETS sockets each (each held by
# a process in it, as a container's would be), in one run.
#   tcpmon/benches/netns_snapshot.sh [NS] [SOCKETS]   (default: 50 2000)
# Needs root, hyperfine, iproute2, python3. Prints medians and the ratio to cat.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
count="${1:-50}"
sockets="${2:-2000}"
prefix="tcpmon-nsbench-$$"
work="$(mktemp -d)"
holders=()
cleanup() {
    exec 3>&- 2>/dev/null || true
    # The populations fork workers: take them down too.
    for h in "${holders[@]}"; do pkill -P "$h" 2>/dev/null || true; kill "$h" 2>/dev/null || true; done
    for i in $(seq 1 "$count"); do ip netns delete "$prefix-$i" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/in"
# One writer keeps every population alive until the end (they exit when stdin closes).
exec 3<>"$work/in"
for i in $(seq 1 "$count"); do
    ip netns add "$prefix-$i"
    ip netns exec "$prefix-$i" ip link set lo up
    # 3>&-: a population holding the FIFO's write end would never see it close.
    ip netns exec "$prefix-$i" python3 "$here/population.py" "$sockets" <"$work/in" >"$work/ready-$i" 3>&- &
    holders+=($!)
done
for i in $(seq 1 "$count"); do
    until grep -q ready "$work/ready-$i" 2>/dev/null; do sleep 0.2; done
done
# One process per namespace, the way tcpmon reads it: the holder's pid.
files="/proc/net/tcp /proc/net/tcp6"
for h in "${holders[@]}"; do
    pid=$(pgrep -P "$h" -o || echo "$h")
    files="$files /proc/$pid/net/tcp /proc/$pid/net/tcp6"
done
total=$(cat $files | grep -c ':' || true)
namespaces=$("$tcpmon" states --all-netns --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["namespaces"]))')
echo "namespaces read by tcpmon: $namespaces; socket rows under cat: $total"
hyperfine -N --warmup 3 --min-runs 15 --export-json "$work/h.json" \
    -n cat "cat $files" \
    -n "tcpmon states --all-netns" "$tcpmon states --all-netns" \
    -n "tcpmon report --all-netns" "$tcpmon report --all-netns" \
    -n "tcpmon report --all-netns --json" "$tcpmon report --all-netns --json" \
    -n "tcpmon report (own namespace)" "$tcpmon report" >/dev/null 2>&1
python3 - "$work/h.json" <<'PY'
import json, sys
runs = {r["command"]: r["median"] * 1000 for r in json.load(open(sys.argv[1]))["results"]}
cat = runs["cat"]
print(f"{'command':<36} {'median_ms':>10} {'vs_cat':>8}")
for name, ms in runs.items():
    print(f"{name:<36} {ms:10.1f} {ms / cat:8.2f}")
PY
rss=$(/usr/bin/time -f %M "$tcpmon" report --all-netns 2>&1 >/dev/null | tail -1)
echo "tcpmon report --all-netns max RSS $rss KiB"
