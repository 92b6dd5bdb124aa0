# Sourced by the watch benches: a private network namespace (loopback up) for the churn,
# a work directory, and a cleanup on exit that stops the watcher and removes both.
#   churn_netns PREFIX      sets ns, work and watcher
#   start_watch OPTIONS...  starts `tcpmon watch --json --mode ebpf OPTIONS >/dev/null` in
#                           the namespace (stderr in $work/watch.err), its pid in watcher;
#                           $TCPMON_BIN, when set, names another tcpmon build to run, and
#                           $TCPMON_CMD another command than `watch --json`
#   stop_watch              SIGTERM, and waits for it to detach
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
start_watch() {
    # Not through in_ns: a backgrounded function is a subshell, and $! must be tcpmon.
    local cmd
    read -r -a cmd <<<"${TCPMON_CMD:-watch --json}"
    ip netns exec "$ns" "${TCPMON_BIN:-$tcpmon}" "${cmd[@]}" --mode ebpf "$@" >/dev/null 2>"$work/watch.err" &
    watcher=$!
    sleep 1.5
}
# Not called in $(...): `wait` only works in the shell that started the job.
stop_watch() {
    kill -TERM "$watcher"; wait "$watcher" || true; watcher=""
}
