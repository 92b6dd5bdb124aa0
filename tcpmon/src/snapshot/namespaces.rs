//! Snapshots of several network namespaces at once: each read through a process in it
//! (/proc/PID/net/tcp{,6}) or, for a bind mount with no process, by entering it; each
//! summarized on its own, with one walk of the process table for every owner; then
//! merged, every row tagged with its namespace.
use std::{collections::HashMap, io, path::PathBuf};

use super::{
    analysis::{
        Aggregator, CloseWaitGroup, Collect, Connection, Filter, IpCount, PortCount, Summary,
        MAX_SKIP_EXAMPLES,
    },
    listener_backlogs, Snapshot, SnapshotError,
};
use crate::{
    host::{
        caps::{self, Capability},
        netns::{discover, in_namespace, own_inode, parse_ns_link, Access, Discovery, Namespace},
        process, ProcRoot,
    },
    model::{owner::Owner, PortRange, Refused},
};

/// Which namespaces to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every namespace discovery finds.
    All,
    /// The namespaces these nsfs files are (what `--netns` resolved to).
    Only(Vec<(u64, PathBuf)>),
}

/// One namespace's snapshot, and the sysctls its sockets are judged against.
#[derive(Debug)]
pub struct NamespaceSnapshot {
    pub namespace: Namespace,
    pub snapshot: Snapshot,
    /// Its net.ipv4.ip_local_port_range; `None` when it could not be read from inside.
    pub port_range: Option<PortRange>,
    pub somaxconn: Option<u32>,
    /// Listener backlogs by socket inode, from sock_diag inside it.
    pub backlogs: HashMap<u64, u32>,
    /// Why those could not be read from inside, when they could not.
    pub not_entered: Option<String>,
}

/// A namespace that could not be read, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub inode: u64,
    pub owner: String,
    pub reason: String,
    /// Its last process exited while it was read: it no longer exists, nothing is hidden.
    pub gone: bool,
}

/// Reads each selected namespace; tcpmon's own (`own`) through `root` itself, so that
/// netlink can add listener backlogs there when `root` is this machine's /proc.
pub fn read(
    root: &ProcRoot,
    namespaces: Vec<Namespace>,
    own: Option<u64>,
) -> (Vec<NamespaceSnapshot>, Vec<Skipped>) {
    let mut read = Vec::new();
    let mut skipped = Vec::new();
    for namespace in namespaces {
        match read_one(root, &namespace, own) {
            Ok(snapshot) => {
                let inside = from_inside(root, &namespace, own);
                read.push(NamespaceSnapshot {
                    namespace,
                    snapshot,
                    port_range: inside.port_range,
                    somaxconn: inside.somaxconn,
                    backlogs: inside.backlogs,
                    not_entered: inside.not_entered,
                })
            }
            Err(failure) => skipped.push(Skipped {
                inode: namespace.inode,
                owner: namespace.owner.to_string(),
                reason: failure.reason,
                gone: failure.gone,
            }),
        }
    }
    (read, skipped)
}

/// Why a namespace could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// It no longer exists (its processes exited, its bind mount was removed).
    pub gone: bool,
}

/// Reads one namespace's socket tables: through `root` for `own`, else through a
/// process in it, else by entering it.
pub fn read_one(root: &ProcRoot, ns: &Namespace, own: Option<u64>) -> Result<Snapshot, Failure> {
    let failed = |e: &SnapshotError| Failure {
        reason: error_text(e),
        gone: false,
    };
    if own == Some(ns.inode) {
        return Snapshot::read(root).map_err(|e| failed(&e));
    }
    match &ns.access {
        Access::Pids(pids) => {
            let mut last = Failure {
                reason: "no process left in it".into(),
                gone: true,
            };
            // The processes it was found through first; if they have all exited, any
            // that holds it now (a namespace is gone when nothing holds it, not when
            // its first processes exit).
            let later = || {
                crate::host::netns::holders(root, ns.inode)
                    .into_iter()
                    .filter(|p| !pids.contains(p))
            };
            for pid in pids
                .iter()
                .copied()
                .chain(std::iter::once_with(later).flatten())
            {
                match Snapshot::read(&ProcRoot::new(root.pid_dir(pid))) {
                    Ok(snapshot) => return Ok(snapshot),
                    // The process exited: try the next one of the namespace.
                    Err(SnapshotError::Read { source, .. })
                        if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) =>
                    {
                        last = Failure {
                            reason: "gone while it was read (its processes exited)".into(),
                            gone: true,
                        };
                    }
                    Err(e) => last = failed(&e),
                }
            }
            // No process holds it any more; an `ip netns` bind mount still may.
            if last.gone {
                let run = crate::host::netns::run_netns(root);
                if let Some((_, path)) = crate::host::netns::named_namespaces(&run).get(&ns.inode) {
                    let entered = Namespace {
                        access: Access::Enter(path.clone()),
                        ..ns.clone()
                    };
                    return read_one(root, &entered, own);
                }
            }
            Err(last)
        }
        Access::Enter(path) => {
            in_namespace(path, || Snapshot::read(&ProcRoot::new("/proc/thread-self")))
                .map_err(|e| Failure {
                    gone: e.kind() == io::ErrorKind::NotFound,
                    reason: enter_error(&e),
                })?
                .map_err(|e| failed(&e))
        }
    }
}

fn enter_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) if caps::has(Capability::SysAdmin) => {
            format!("cannot enter it, even with CAP_SYS_ADMIN: {e}")
        }
        Some(libc::EPERM) => "cannot enter it (entering a namespace needs CAP_SYS_ADMIN)".into(),
        Some(libc::EACCES) => "cannot open its nsfs file (permission denied)".into(),
        _ => format!("cannot enter it: {e}"),
    }
}

/// What only a reader inside the namespace can learn.
#[derive(Default)]
pub struct Inside {
    pub port_range: Option<PortRange>,
    pub somaxconn: Option<u32>,
    pub backlogs: HashMap<u64, u32>,
    /// Why it could not be entered, when it could not.
    pub not_entered: Option<String>,
}

/// The namespace's own port range, somaxconn and listener backlogs: /proc/sys and
/// sock_diag answer for the namespace of the reader, so another namespace's values need
/// a thread that has entered it. Without that privilege (or with --proc-root) they are
/// unknown, not borrowed from the host.
pub fn from_inside(root: &ProcRoot, ns: &Namespace, own: Option<u64>) -> Inside {
    fn here(root: &ProcRoot) -> Inside {
        Inside {
            port_range: root.port_range_opt(),
            somaxconn: root.somaxconn(),
            backlogs: listener_backlogs(root),
            not_entered: None,
        }
    }
    if own == Some(ns.inode) {
        return here(root);
    }
    let path = match &ns.access {
        Access::Pids(pids) => match pids.first() {
            Some(pid) => root.pid_dir(*pid).join("ns/net"),
            None => return Inside::default(),
        },
        Access::Enter(path) => path.clone(),
    };
    in_namespace(&path, || here(&ProcRoot::host())).unwrap_or_else(|e| Inside {
        not_entered: Some(enter_error(&e)),
        ..Inside::default()
    })
}

fn error_text(e: &SnapshotError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// `tw` of the namespace's sockstat (TIME_WAIT sockets), read like its tables.
pub fn sockstat_time_wait(root: &ProcRoot, ns: &Namespace, own: Option<u64>) -> Option<u64> {
    if own == Some(ns.inode) {
        return root.sockstat_time_wait();
    }
    match &ns.access {
        Access::Pids(pids) => pids
            .iter()
            .find_map(|pid| ProcRoot::new(root.pid_dir(*pid)).sockstat_time_wait()),
        Access::Enter(path) => in_namespace(path, || {
            ProcRoot::new("/proc/thread-self").sockstat_time_wait()
        })
        .ok()
        .flatten(),
    }
}

/// One namespace summarized.
#[derive(Debug)]
pub struct NamespaceSummary {
    pub namespace: Namespace,
    pub summary: Summary,
    pub connections: Vec<Connection>,
    pub matched: u64,
    /// Whether its ephemeral port range was read (else the kernel default was assumed).
    pub port_range_known: bool,
    /// Why it could not be entered to read that, when it could not.
    pub not_entered: Option<String>,
    pub bytes_read: usize,
    /// Its files that do not exist (tcp6 without IPv6).
    pub missing: Vec<PathBuf>,
}

/// Summarizes each snapshot (one walk of `root`'s processes names every wanted owner:
/// socket inodes are unique across namespaces), then tags every row with its namespace.
pub fn summarize(
    root: &ProcRoot,
    snapshots: Vec<NamespaceSnapshot>,
    filter: &Filter,
    collect: &Collect,
    owners: bool,
) -> Vec<NamespaceSummary> {
    let mut aggregators: Vec<(NamespaceSnapshot, Aggregator)> = snapshots
        .into_iter()
        .map(|ns| {
            let range = ns.port_range.unwrap_or(PortRange::LINUX_DEFAULT);
            let mut agg = Aggregator::new(filter.clone(), collect.clone(), range);
            for row in ns.snapshot.rows() {
                agg.add_row(&row);
            }
            (ns, agg)
        })
        .collect();
    let found = owners.then(|| {
        let wanted = aggregators
            .iter()
            .flat_map(|(_, agg)| agg.wanted_owners())
            .collect();
        process::find_owners(root, &wanted)
    });
    aggregators
        .iter_mut()
        .map(|(ns, agg)| {
            let (mut connections, matched) = agg.take_connections(found.as_ref());
            let agg = std::mem::take(agg);
            let mut summary = agg.finish(found.as_ref(), &ns.backlogs);
            summary.somaxconn = ns.somaxconn;
            let tag = Some(ns.namespace.inode);
            tag_rows(&mut summary, tag);
            for c in &mut connections {
                c.netns = tag;
            }
            NamespaceSummary {
                namespace: ns.namespace.clone(),
                summary,
                connections,
                matched,
                port_range_known: ns.port_range.is_some(),
                not_entered: ns.not_entered.clone(),
                bytes_read: ns.snapshot.bytes_read(),
                missing: ns.snapshot.missing().map(|f| f.path.clone()).collect(),
            }
        })
        .collect()
}

/// Everything a multi-namespace snapshot found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The namespaces read, largest first.
    pub parts: Vec<NamespaceSummary>,
    pub skipped: Vec<Skipped>,
    /// Processes whose namespace could not be looked at.
    pub refused: Refused,
}

/// Discovers, selects, reads and summarizes namespaces. `run_netns` holds `ip netns`
/// bind mounts (/run/netns).
pub fn load(
    root: &ProcRoot,
    selection: &Selection,
    run_netns: &std::path::Path,
    filter: &Filter,
    collect: &Collect,
    owners: bool,
) -> Loaded {
    let discovery = discover(root, run_netns);
    let own = own_namespace(root, &discovery);
    let namespaces = select(discovery.namespaces, selection);
    let (snapshots, skipped) = read(root, namespaces, own);
    let mut parts = summarize(root, snapshots, filter, collect, owners);
    parts.sort_by(|a, b| {
        b.summary
            .total
            .cmp(&a.summary.total)
            .then(a.namespace.inode.cmp(&b.namespace.inode))
    });
    Loaded {
        parts,
        skipped,
        refused: discovery.refused,
    }
}

/// The namespace `root`'s own net/ files describe: tcpmon's when `root` is /proc, the
/// namespace of the process that mounted it otherwise (read through its `self` link).
fn own_namespace(root: &ProcRoot, discovery: &Discovery) -> Option<u64> {
    if root.is_own() {
        return own_inode().ok().map(u64::from);
    }
    let link = std::fs::read_link(root.path().join("self/ns/net")).ok()?;
    let inode = link.to_str().and_then(parse_ns_link)?;
    discovery
        .namespaces
        .iter()
        .any(|n| n.inode == inode)
        .then_some(inode)
}

/// The selected namespaces, in discovery order; a `--netns` path discovery did not find
/// (a bind mount outside /run/netns) is entered through that path.
fn select(found: Vec<Namespace>, selection: &Selection) -> Vec<Namespace> {
    match selection {
        Selection::All => found,
        Selection::Only(wanted) => {
            let mut out: Vec<Namespace> = found
                .iter()
                .filter(|n| wanted.iter().any(|(inode, _)| *inode == n.inode))
                .cloned()
                .collect();
            for (inode, path) in wanted {
                if !out.iter().any(|n| n.inode == *inode) {
                    out.push(Namespace {
                        inode: *inode,
                        name: None,
                        owner: Owner::Unknown {
                            cgroup: "(no process: a bind mount)".into(),
                        },
                        access: Access::Enter(path.clone()),
                    });
                }
            }
            out
        }
    }
}

fn tag_rows(s: &mut Summary, tag: Option<u64>) {
    s.listeners.iter_mut().for_each(|r| r.netns = tag);
    s.per_ip.iter_mut().for_each(|r| r.netns = tag);
    s.per_port.iter_mut().for_each(|r| r.netns = tag);
    s.close_wait.iter_mut().for_each(|r| r.netns = tag);
    s.destinations.iter_mut().for_each(|r| r.netns = tag);
    s.retransmits.iter_mut().for_each(|r| r.netns = tag);
    s.stuck.iter_mut().for_each(|r| r.netns = tag);
}

/// The namespaces' summaries as one: totals added, lists concatenated (each row keeps
/// its namespace) and ordered as a single namespace's would be.
pub fn merge(parts: &[NamespaceSummary]) -> Summary {
    let mut out = Summary::default();
    for part in parts {
        let s = &part.summary;
        out.total += s.total;
        out.ipv4 += s.ipv4;
        out.ipv6 += s.ipv6;
        for (state, n) in s.states.iter() {
            out.states.add(state, n);
        }
        out.skipped.count += s.skipped.count;
        for (reason, n) in &s.skipped.by_reason {
            *out.skipped.by_reason.entry(reason.clone()).or_default() += n;
        }
        for example in &s.skipped.examples {
            if out.skipped.examples.len() < MAX_SKIP_EXAMPLES {
                out.skipped.examples.push(example.clone());
            }
        }
        out.listeners.extend(s.listeners.iter().cloned());
        out.per_ip.extend(s.per_ip.iter().cloned());
        out.per_port.extend(s.per_port.iter().cloned());
        out.close_wait.extend(s.close_wait.iter().cloned());
        out.destinations.extend(s.destinations.iter().cloned());
        out.retransmits.extend(s.retransmits.iter().cloned());
        out.stuck.extend(s.stuck.iter().cloned());
        out.tcp_info |= s.tcp_info;
        out.port_range = s.port_range;
        out.orphan_half_open += s.orphan_half_open;
        out.owners_unknown += s.owners_unknown;
        if out.owners_refused.is_empty() {
            out.owners_refused = s.owners_refused.clone();
        }
        out.somaxconn = out.somaxconn.or(s.somaxconn);
        out.duplicates += s.duplicates;
    }
    out.listeners
        .sort_by_key(|l| (l.port, l.family, l.ip, l.netns));
    out.per_ip.sort_by(IpCount::order);
    out.per_port.sort_by(PortCount::order);
    out.close_wait.sort_by(CloseWaitGroup::order);
    out.retransmits.sort_by(|a, b| {
        b.retrans_pct
            .total_cmp(&a.retrans_pct)
            .then(a.ip.cmp(&b.ip))
    });
    out.stuck
        .sort_by(|a, b| b.queued_bytes.cmp(&a.queued_bytes).then(a.ip.cmp(&b.ip)));
    out.destinations.sort_by(|a, b| {
        (b.time_wait, b.total)
            .cmp(&(a.time_wait, a.total))
            .then((a.ip, a.port).cmp(&(b.ip, b.port)))
    });
    out
}

/// How a namespace is named in findings: its owner, and its `ip netns` name or inode
/// ("pod web-7d9 (container 3f2a9c1b7e44), netns 4026532571").
pub fn label(ns: &Namespace) -> String {
    let id = ns.name.as_ref().map_or_else(
        || format!("netns {}", ns.inode),
        |n| {
            format!(
                "netns {}",
                crate::model::printable_clipped(n, crate::model::owner::SHOWN_NAME_MAX)
            )
        },
    );
    match &ns.owner {
        Owner::Host => format!("the host namespace ({id})"),
        Owner::Unknown { .. } => id,
        owner => format!("{owner}, {id}"),
    }
}

/// How a namespace is named in a table cell: its `ip netns` name, else its owner in a
/// few characters ("host", "pod web-7d9", "docker 3f2a9c1b7e44"), else its inode.
pub fn short_label(ns: &Namespace) -> String {
    let clipped = |text: &str| {
        crate::model::printable_clipped(text, crate::model::owner::SHOWN_NAME_MAX).into_owned()
    };
    if let Some(name) = &ns.name {
        return clipped(name);
    }
    match &ns.owner {
        Owner::Host => "host".into(),
        Owner::Pod { name: Some(n), .. } => format!("pod {}", clipped(n)),
        Owner::Pod { uid, .. } => format!("pod {}", clipped(uid.get(..8).unwrap_or(uid))),
        Owner::Container {
            container,
            name: Some(n),
        } => format!("{} {}", container.runtime.name(), clipped(n)),
        Owner::Container { container, .. } => {
            format!("{} {}", container.runtime.name(), container.shown())
        }
        Owner::Service { unit } => clipped(unit),
        Owner::Unknown { .. } => ns.inode.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink};

    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    /// The processes a namespace was found through have exited; another holds it now.
    #[test]
    fn a_namespace_is_read_through_any_process_still_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let holder = proc.join("200");
        fs::create_dir_all(holder.join("ns")).unwrap();
        fs::create_dir_all(holder.join("net")).unwrap();
        symlink("net:[4026532500]", holder.join("ns/net")).unwrap();
        let row = "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7001 1 0 100 0 0 10 0\n";
        fs::write(holder.join("net/tcp"), format!("{HEADER}{row}")).unwrap();
        fs::write(holder.join("net/tcp6"), HEADER).unwrap();
        let ns = Namespace {
            inode: 4026532500,
            name: None,
            owner: Owner::Unknown {
                cgroup: "/x".into(),
            },
            access: Access::Pids(vec![100, 101]),
        };
        let root = ProcRoot::new(&proc);
        let snapshot = read_one(&root, &ns, None).expect("read through pid 200");
        assert_eq!(snapshot.sockets().count(), 1);
        // Nothing holds it at all: gone.
        fs::remove_dir_all(&holder).unwrap();
        let failure = read_one(&root, &ns, None).unwrap_err();
        assert!(failure.gone, "{failure:?}");
    }
}
