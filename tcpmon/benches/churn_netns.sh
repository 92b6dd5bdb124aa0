# Sourced by the watch benches: a private network namespace (loopback up) for the churn,
# a work directory, and a cleanup on exit that stops the watcher and removes both.
#   churn_netns PREFIX   sets ns, work and watcher (the benches put tcpmon's pid there)
churn_netns() {
    ns="$1-$$"
    watcher=""
    work="$(mktemp -d)"
    trap churn_netns_cleanup EXIT
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
}
churn_netns_cleanup() {
    [[ -n "$watcher" ]] && kill "$watcher" 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
}
in_ns() { ip netns exec "$ns" "$@"; }
rate_of() { sed -n 's/.*rate=\([0-9]*\).*/\1/p'; }
