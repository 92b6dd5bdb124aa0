//! Flags a snapshot command would silently ignore, refused with a usage error that says
//! why and what to use instead.
use tcpmon::{model::TcpState, snapshot::analysis::SortKey};

use crate::cli::{SnapshotArgs, SourceChoice};

/// The states a command lists, when it lists only some.
fn only_states(command: &str) -> Option<&'static [TcpState]> {
    match command {
        "established" | "per-port" => Some(&[TcpState::Established]),
        "listen" => Some(&[TcpState::Listen, TcpState::SynRecv]),
        _ => None,
    }
}

pub fn check_snapshot(command: &str, args: &SnapshotArgs) -> Result<(), String> {
    if let Some(only) = only_states(command) {
        if !args.state.is_empty() && !args.state.iter().any(|s| only.contains(s)) {
            let asked: Vec<&str> = args.state.iter().map(|s| s.name()).collect();
            let shown: Vec<&str> = only.iter().map(|s| s.name()).collect();
            return Err(format!(
                "--state {}: `{command}` shows {} sockets only (for others: `states`, \
                 `per-ip`, `timewait`, or `report --state ...`)",
                asked.join(","),
                shown.join(" and ")
            ));
        }
    }
    if let Some(sort) = args.sort {
        if command != "established" {
            return Err(format!(
                "--sort orders the connections `established` lists; `{command}` lists none \
                 it could order"
            ));
        }
        if sort != SortKey::Queue && !info_readable(args) {
            return Err(format!(
                "--sort {} needs each connection's tcp_info, which only netlink reads in \
                 tcpmon's own namespace (not with --source proc, --proc-root, --netns or \
                 --all-netns)",
                sort.name()
            ));
        }
    }
    if args.processes && command != "established" {
        return Err(format!(
            "--processes names the holder of each connection `established` lists; \
             `{command}` lists none (listeners and CLOSE_WAIT are named anyway)"
        ));
    }
    if args.info && !matches!(command, "established" | "per-port" | "report") {
        return Err(format!(
            "--info shows tcp_info in `established`, `per-port` and `report`; `{command}` \
             shows none"
        ));
    }
    Ok(())
}

/// Whether tcp_info can be read with these flags.
fn info_readable(args: &SnapshotArgs) -> bool {
    args.source != SourceChoice::Proc
        && args.proc_root == std::path::Path::new("/proc")
        && !args.netns.all_netns
        && args.netns.netns.is_empty()
}
