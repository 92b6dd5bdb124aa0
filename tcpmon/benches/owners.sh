#!/usr/bin/env bash
# The cost of naming owners: one process holds SOCKETS established sockets and, opened
# last (its highest fds), a CLOSE_WAIT leak of LEAK sockets, so the walk of /proc/PID/fd
# must read nearly its whole table to name them. Times `tcpmon report` (names listener
# and CLOSE_WAIT owners) against `tcpmon states` (names none) and `ss -tanp` (names
# every socket's), in a private namespace, in one run.
#   tcpmon/benches/owners.sh [SOCKETS] [LEAK]   (default: 16000 500)
# TCPMON_BEFORE=path/to/an/older/tcpmon adds that build's report to the same run.
# Needs root, hyperfine, iproute2, python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
sockets="${1:-16000}"
leak="${2:-500}"
ns="tcpmon-owners-$$"
holder=""
cleanup() {
    [[ -n "$holder" ]] && kill "$holder" 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ready="$(mktemp)"
ip netns exec "$ns" python3 -c '
import resource, signal, socket, sys
n, leak = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
listener = socket.socket(); listener.bind(("127.0.0.1", 9100)); listener.listen(4096)
keep = []
for _ in range(n // 2):
    c = socket.create_connection(("127.0.0.1", 9100)); a, _ = listener.accept(); keep += [c, a]
for _ in range(leak):
    c = socket.create_connection(("127.0.0.1", 9100)); a, _ = listener.accept(); c.close(); keep.append(a)
print("ready", flush=True)
signal.pause()
' "$sockets" "$leak" >"$ready" &
holder=$!
until grep -q ready "$ready" 2>/dev/null; do sleep 0.2; done
work="$(mktemp)"
before=()
[[ -n "${TCPMON_BEFORE:-}" ]] && before=(-n "tcpmon report (before)" "$TCPMON_BEFORE report")
ip netns exec "$ns" hyperfine -N --warmup 2 --min-runs 15 --export-json "$work" \
    -n "tcpmon states" "$tcpmon states" \
    -n "tcpmon report" "$tcpmon report" \
    "${before[@]}" \
    -n "ss -tanp" "ss -tanp" >/dev/null 2>&1
python3 - "$work" <<'PY'
import json, sys
runs = {r["command"]: r["median"] * 1000 for r in json.load(open(sys.argv[1]))["results"]}
print(f"{'command':<24} {'median_ms':>10}")
for name, ms in runs.items():
    print(f"{name:<24} {ms:10.1f}")
states = runs["tcpmon states"]
for name in ("tcpmon report", "tcpmon report (before)"):
    if name in runs:
        print(f"owners cost ({name} - states): {runs[name] - states:.1f} ms")
PY
rm -f "$work" "$ready"
