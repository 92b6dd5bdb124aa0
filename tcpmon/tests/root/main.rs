//! Root-only tests against the real kernel: eBPF attach, namespaces, real sockets.
//! Run with `cargo xtask test` (one at a time: they share kernel state). Each test
//! isolates itself in a private network namespace and filters by it.
mod agent;
mod agree;
mod failures;
mod harness;
mod history;
mod netns;
mod prometheus;
mod snapshot_vs_ss;
mod top;
mod watch_ebpf;
mod watch_live;
