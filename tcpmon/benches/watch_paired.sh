#!/usr/bin/env bash
# Paired comparison of `tcpmon watch --json >/dev/null` option sets under maximal loopback
# churn: every run with tcpmon gets its own no-tracer run just before it, and the order of
# the option sets rotates each round, so the host's drift between rounds cancels out.
# Prints each run, then per option set the median and range of the rate lost. Needs root.
#   tcpmon/benches/watch_paired.sh [--rounds 12] [--seconds 8] [--threads 32] -- "OPTS" "OPTS"...
# e.g. watch_paired.sh -- "--nice 0" "--nice -10" ""   ("" = the defaults)
# An option set starting with @PATH runs the tcpmon at PATH (another build) with the rest:
#     watch_paired.sh -- "@/tmp/old/tcpmon" ""
# One starting with "serve" runs `tcpmon serve` (on a free loopback port) instead of
# watch; "bpftrace-count" runs bpftrace counting transitions in a kernel map (a floor
# for any tool that hooks every state change):
#     watch_paired.sh -- "serve" "bpftrace-count"
# One starting with "top" runs `tcpmon top` on a 200x60 terminal (a detached tmux
# session), redrawing every second as a person would watch it:
#     watch_paired.sh -- "serve" "top"
# One starting with "spread4" spreads the churn over four namespaces (a quarter of the
# threads in each; its no-tracer run is spread the same way) and runs watch in the
# first with the rest of the options, e.g. --all-netns:
#     watch_paired.sh -- "" "spread4 --all-netns"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tcpmon="${TCPMON:-$root/target/release/tcpmon}"
churn="${CHURN:-$root/target/release/examples/churn}"
rounds=12 seconds=8 threads=32 variants=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --) shift; variants=("$@"); break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ ${#variants[@]} -ge 1 ]] || { echo "name at least one option set after --" >&2; exit 2; }
# shellcheck source=churn_netns.sh
source "$here/churn_netns.sh"
churn_netns tcpmon-paired

spread=("$ns")
for extra in b c d; do
    ip netns add "$ns-$extra"
    ip netns exec "$ns-$extra" ip link set lo up
    spread+=("$ns-$extra")
done
tmux_socket="tcpmon-paired-$$"
work="$(mktemp -d)"
cleanup_spread() {
    tmux -L "$tmux_socket" kill-server 2>/dev/null || true
    rm -rf "$work"
    for n in "${spread[@]:1}"; do ip netns delete "$n" 2>/dev/null || true; done
    churn_netns_cleanup
}
trap cleanup_spread EXIT
# The churn in every namespace of `spread` at once, a quarter of the threads each; the
# rates add up.
churn_spread() {
    local n
    for n in "${spread[@]}"; do
        ip netns exec "$n" "$churn" "$seconds" $((threads / 4)) | rate_of > "$work/rate-$n" &
    done
    wait
    cat "$work"/rate-* | paste -sd+ | bc
    rm -f "$work"/rate-*
}

count=${#variants[@]}
label() { echo "[${variants[$1]:-defaults}]"; }
printf '%-24s %10s %10s %8s  %s\n' options without with lost detach
for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < count; i++)); do
        v=$(((i + r) % count))
        read -r -a opts <<<"${variants[$v]}"
        bin="$tcpmon" cmd="watch --json"
        if [[ "${opts[0]:-}" == @* ]]; then
            bin="${opts[0]#@}"
            opts=("${opts[@]:1}")
        fi
        if [[ "${opts[0]:-}" == serve ]]; then
            cmd="serve --listen 127.0.0.1:0"
            # Builds that record a history do, as serve does by default, in a file of
            # this run's.
            if "$bin" serve --help 2>/dev/null | grep -q -- --history-interval; then
                cmd="$cmd --history $work/history-$RANDOM.db"
            fi
            opts=("${opts[@]:1}")
        fi
        run_churn() { in_ns "$churn" "$seconds" "$threads" | rate_of; }
        if [[ "${opts[0]:-}" == spread4 ]]; then
            opts=("${opts[@]:1}")
            run_churn() { churn_spread; }
        fi
        base=$(run_churn)
        sleep 1
        if [[ "${opts[0]:-}" == top ]]; then
            tmux -L "$tmux_socket" -f /dev/null new-session -d -s top -x 200 -y 60 \
                "ip netns exec $ns $bin top --mode ebpf ${opts[*]:1} 2>$work/watch.err"
            sleep 1.5
            with=$(run_churn)
            # Only tcpmon (its whole command line): the pane's shell dying first would
            # hang up on it, a second signal.
            rest=("${opts[@]:1}")
            top_cmd="$bin top --mode ebpf${rest[*]:+ ${rest[*]}}"
            pkill -TERM -x -f -- "$top_cmd" || true
            while pgrep -x -f -- "$top_cmd" >/dev/null; do sleep 0.1; done
            tmux -L "$tmux_socket" kill-server 2>/dev/null || true
        elif [[ "${opts[0]:-}" == bpftrace-count ]]; then
            [[ -d /sys/kernel/tracing/events ]] || mount -t tracefs tracefs /sys/kernel/tracing
            bpftrace -e 'tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }' >/dev/null 2>&1 &
            watcher=$!
            sleep 3
            echo "bpftrace" > "$work/watch.err"
            with=$(run_churn)
            kill -INT "$watcher"; wait "$watcher" || true; watcher=""
        else
            TCPMON_BIN="$bin" TCPMON_CMD="$cmd" start_watch "${opts[@]}"
            with=$(run_churn)
            stop_watch
        fi
        lost=$(awk -v a="$base" -v b="$with" 'BEGIN { printf "%.2f", 100 * (1 - b / a) }')
        echo "$v $lost" >> "$work/losses"
        printf '%-24s %10s %10s %7s%%  %s\n' "$(label "$v")" "$base" "$with" "$lost" \
            "$(grep -o 'lost (ring buffer full [0-9]*' "$work/watch.err" | tail -1)"
        sleep 1
    done
done
for ((v = 0; v < count; v++)); do
    awk -v v="$v" '$1 == v { print $2 }' "$work/losses" | sort -g | awk -v name="$(label "$v")" '
        { x[NR] = $1 }
        END { m = NR % 2 ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2
              printf "%-24s rate lower by: median %.1f%%, range %.1f%%..%.1f%% over %d runs\n", name, m, x[1], x[NR], NR }'
done
