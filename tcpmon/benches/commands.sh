#!/usr/bin/env bash
# Times whole snapshot commands against cat, ss and netstat on the same socket
# population, in one run, inside a private network namespace.
#   tcpmon/benches/commands.sh [SOCKETS...]   (default: 10000 100000; 1000000 works)
# Needs root, hyperfine, iproute2, net-tools, python3. Prints medians and ratios.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
sizes=("${@:-10000 100000}")
[[ $# -eq 0 ]] && sizes=(10000 100000)
ns="tcpmon-bench-$$"
holders=()
cleanup() {
    for h in "${holders[@]}"; do kill "$h" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
}
work="$(mktemp -d)"
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="20000 65000"
# A million sockets: 500k connections over loopback from 63 worker processes (one may
# hold ~19k fds), each to eight listeners of its own; the port range above gives each
# (listener, source address) 45k ephemeral ports. The kernel needs nothing else raised
# here (fs.file-max and fs.nr_open are far above; TIME_WAIT stays under
# tcp_max_tw_buckets), only memory: about 3 GiB of socket structures.

printf '%-8s %-34s %10s %10s %10s\n' sockets command median_ms vs_cat vs_ss
for n in "${sizes[@]}"; do
    mkfifo "$work/in-$n"
    ip netns exec "$ns" python3 "$here/population.py" "$n" < "$work/in-$n" > "$work/ready-$n" &
    holders+=($!)
    exec 3>"$work/in-$n"
    until grep -q ready "$work/ready-$n" 2>/dev/null; do sleep 0.2; done
    actual=$(ip netns exec "$ns" sh -c 'tail -n +2 /proc/net/tcp | wc -l; tail -n +2 /proc/net/tcp6 | wc -l' | paste -sd+ | bc)
    if [[ "$n" -ge 500000 ]]; then
        # At a million sockets the slow peers (ss -tanp, netstat) would take hours over
        # fifteen runs: the targets and their floors only, five runs each.
        ip netns exec "$ns" hyperfine -N --warmup 1 --runs 5 --export-json "$work/h-$n.json" \
            -n cat "cat /proc/net/tcp /proc/net/tcp6" \
            -n "ss -tan" "ss -tan" \
            -n "tcpmon states" "$tcpmon states" \
            -n "tcpmon states --source proc" "$tcpmon states --source proc" \
            -n "tcpmon report --json" "$tcpmon report --json" >/dev/null 2>&1
    else
        ip netns exec "$ns" hyperfine -N --warmup 3 --min-runs 15 --export-json "$work/h-$n.json" \
            -n cat "cat /proc/net/tcp /proc/net/tcp6" \
            -n "ss -tan" "ss -tan" \
            -n "netstat -tan" "netstat -tan" \
            -n "ss -tanp" "ss -tanp" \
            -n "tcpmon states" "$tcpmon states" \
            -n "tcpmon states --source proc" "$tcpmon states --source proc" \
            -n "tcpmon report" "$tcpmon report" \
            -n "tcpmon report --json" "$tcpmon report --json" \
            -n "tcpmon report --source proc" "$tcpmon report --source proc" \
            -n "tcpmon established --info" "$tcpmon established --info" >/dev/null 2>&1
    fi
    python3 - "$work/h-$n.json" "$actual" <<'PY'
import json, sys
runs = {r["command"]: r["median"] * 1000 for r in json.load(open(sys.argv[1]))["results"]}
cat, ss = runs["cat"], runs["ss -tan"]
for name, ms in runs.items():
    print(f"{sys.argv[2]:<8} {name:<34} {ms:10.1f} {ms / cat:10.2f} {ms / ss:10.2f}")
PY
    for cmd in "ss -tan" "$tcpmon states" "$tcpmon report" "$tcpmon report --json"; do
        rss=$(ip netns exec "$ns" /usr/bin/time -f %M $cmd 2>&1 >/dev/null | tail -1)
        printf '%-8s %-34s max RSS %s KiB\n' "$actual" "${cmd/#$root\//}" "$rss"
    done
    exec 3>&-
    wait "${holders[@]}" || true
    holders=()
done
