//! tcpmon: a Linux TCP connection monitor.
//!
//! Two engines share one model:
//! - snapshots of /proc/net/tcp{,6} ([`snapshot`], [`procfs`], [`analysis`], [`audit`]),
//!   which need no privileges;
//! - a live stream of state transitions from an eBPF tracepoint ([`ebpf`], [`event`]).
//!
//! ```no_run
//! use tcpmon::{analysis::Filter, audit::{audit, Thresholds}, Snapshot};
//! let snapshot = Snapshot::read("/proc".as_ref())?;
//! let summary = tcpmon::summarize(&snapshot, Filter::default());
//! println!("{} sockets, {} established", summary.total,
//!          summary.states.get(tcpmon::model::TcpState::Established));
//! for finding in audit(&summary, &Thresholds::default()) {
//!     println!("[{}] {}", finding.severity, finding.message);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod analysis;
pub mod audit;
pub mod diag;
pub mod ebpf;
pub mod event;
pub mod kstats;
pub mod live;
pub mod model;
pub mod order;
pub mod poll;
pub mod priority;
pub mod process;
pub mod procfs;
pub mod render;
pub mod ringbuf;
pub mod rules;
pub mod slots;
pub mod snapshot;
pub mod tally;
mod time_wait_table;

use std::{fs, path::Path};

pub use snapshot::Snapshot;

use crate::analysis::{Aggregator, Collect, Connection, Filter, PortRange, Summary};

/// Reads the ephemeral port range from `<proc_root>/sys/net/ipv4/ip_local_port_range`,
/// falling back to the kernel default.
pub fn port_range(proc_root: &Path) -> PortRange {
    fs::read_to_string(proc_root.join("sys/net/ipv4/ip_local_port_range"))
        .ok()
        .and_then(|text| PortRange::parse(&text))
        .unwrap_or(PortRange::LINUX_DEFAULT)
}

/// Listener backlogs by inode, from sock_diag when the snapshot is this namespace's own
/// /proc (another /proc's sockets are not ours to ask about).
fn listener_backlogs(proc_root: &Path) -> std::collections::HashMap<u64, u32> {
    if proc_root != Path::new("/proc") {
        return Default::default();
    }
    match diag::listener_queues() {
        Ok(queues) => queues
            .into_iter()
            .map(|(inode, q)| (inode, q.backlog))
            .collect(),
        Err(e) => {
            log::warn!("listener backlogs unavailable (sock_diag: {e})");
            Default::default()
        }
    }
}

/// Aggregates a snapshot, resolving the owners of listeners and CLOSE_WAIT sockets.
pub fn summarize(snapshot: &Snapshot, filter: Filter) -> Summary {
    summarize_with(snapshot, filter, Collect::default(), true).0
}

/// Aggregates a snapshot, optionally keeping connections of some states and resolving
/// owning processes (a walk of /proc/PID/fd, skipped when `owners` is false).
pub fn summarize_with(
    snapshot: &Snapshot,
    filter: Filter,
    collect: Collect,
    owners: bool,
) -> (Summary, Vec<Connection>, u64) {
    let mut agg = Aggregator::new(filter, collect, port_range(&snapshot.proc_root));
    for row in snapshot.rows() {
        agg.add_row(&row);
    }
    let found = if owners {
        process::find_owners(&snapshot.proc_root, &agg.wanted_owners()).by_inode
    } else {
        Default::default()
    };
    let (connections, matched) = agg.take_connections();
    let mut summary = agg.finish(&found, &listener_backlogs(&snapshot.proc_root));
    if !owners {
        summary.owners_unknown = 0;
    }
    summary.somaxconn = fs::read_to_string(snapshot.proc_root.join("sys/net/core/somaxconn"))
        .ok()
        .and_then(|text| text.trim().parse().ok());
    (summary, connections, matched)
}
