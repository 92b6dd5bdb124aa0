//! Snapshots: one consistent read of /proc/net/tcp and /proc/net/tcp6, aggregated into
//! what the snapshot commands show ([`analysis`]) and judged by the audit rules
//! ([`audit`]).
pub mod analysis;
pub mod audit;
pub mod namespaces;
mod reader;

use std::{
    collections::{HashMap, HashSet},
    io,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use self::analysis::{Aggregator, Collect, Connection, Filter, Summary};
use crate::{
    host::{
        diag,
        proc_net::{self, LineError, Socket},
        process, read, sock_diag, ProcRoot,
    },
    model::Family,
};

pub use reader::{
    read, Envelope, Info, NamespaceEntry, NetnsChoice, ReadError, ReadOptions, SnapshotRead,
    SourceChoice, SourceKind, Want,
};

/// The version of the snapshot commands' JSON documents; it changes when a field changes
/// meaning or goes away (new fields do not change it).
pub const SCHEMA_VERSION: u32 = 2;

/// Where a snapshot was read from and what it held.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub family: Family,
    pub path: PathBuf,
    /// `None` when the file does not exist (tcp6 on a kernel without IPv6).
    pub data: Option<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// The raw bytes of both files, read back to back; everything a command shows is decoded
/// from these, so every section agrees with every other.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub proc_root: ProcRoot,
    pub files: Vec<SourceFile>,
}

/// One row of either file.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub family: Family,
    pub path: &'a Path,
    pub line: usize,
    pub socket: Result<Socket, LineError>,
}

impl Snapshot {
    /// Reads `<proc_root>/net/tcp` (required) and `<proc_root>/net/tcp6` (optional). The
    /// two files are read on two threads: nearly all the cost is the kernel formatting
    /// lines, and that work then runs on two cores.
    pub fn read(proc_root: &ProcRoot) -> Result<Self, SnapshotError> {
        let read = |family: Family| -> Result<SourceFile, SnapshotError> {
            let path = proc_root.socket_table(family);
            let data = match read::whole(&path, read::MAX_TABLE_BYTES) {
                Ok(data) => Some(data),
                Err(e) if e.kind() == io::ErrorKind::NotFound && family == Family::Ipv6 => None,
                Err(source) => return Err(SnapshotError::Read { path, source }),
            };
            Ok(SourceFile { family, path, data })
        };
        let (tcp, tcp6) = std::thread::scope(|scope| {
            let tcp6 = scope.spawn(|| read(Family::Ipv6));
            let tcp = read(Family::Ipv4);
            (
                tcp,
                tcp6.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        Ok(Self {
            proc_root: proc_root.clone(),
            files: vec![tcp?, tcp6?],
        })
    }

    /// A snapshot from bytes already in memory (tests, benchmarks, library callers).
    pub fn from_bytes(tcp: Bytes, tcp6: Option<Bytes>) -> Self {
        Self {
            proc_root: ProcRoot::new("<memory>"),
            files: vec![
                SourceFile {
                    family: Family::Ipv4,
                    path: "<memory>/net/tcp".into(),
                    data: Some(tcp),
                },
                SourceFile {
                    family: Family::Ipv6,
                    path: "<memory>/net/tcp6".into(),
                    data: tcp6,
                },
            ],
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.files.iter().flat_map(|file| {
            let data: &[u8] = file.data.as_deref().unwrap_or_default();
            proc_net::parse(data, file.family).map(move |(line, socket)| Row {
                family: file.family,
                path: &file.path,
                line,
                socket,
            })
        })
    }

    /// Families whose file was missing, to say so instead of implying zero sockets.
    pub fn missing(&self) -> impl Iterator<Item = &SourceFile> {
        self.files.iter().filter(|f| f.data.is_none())
    }

    pub fn bytes_read(&self) -> usize {
        self.files
            .iter()
            .filter_map(|f| f.data.as_ref())
            .map(Bytes::len)
            .sum()
    }

    /// Every decodable row's socket.
    pub fn sockets(&self) -> impl Iterator<Item = Socket> + '_ {
        self.rows().filter_map(|r| r.socket.ok())
    }
}

/// Listener backlogs by inode, from sock_diag when the snapshot is this namespace's own
/// /proc.
pub(crate) fn listener_backlogs(proc_root: &ProcRoot) -> HashMap<u64, u32> {
    if !proc_root.is_own() {
        return HashMap::new();
    }
    match diag::listener_queues() {
        Ok(queues) => queues
            .into_iter()
            .map(|(inode, q)| (inode, q.backlog))
            .collect(),
        Err(e) => {
            log::warn!("listener backlogs unavailable (sock_diag: {e})");
            HashMap::new()
        }
    }
}

/// What a netlink summary read.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetlinkRead {
    pub stats: sock_diag::DumpStats,
    /// Dumps started again because the kernel said one was interrupted.
    pub retries: u32,
}

/// How often an interrupted dump is started again before giving up.
const DUMP_ATTEMPTS: u32 = 3;

/// Runs a sock_diag dump into a fresh `S` from `start`, starting over (with a fresh one)
/// when the kernel says the dump was interrupted, up to [`DUMP_ATTEMPTS`] times.
fn dump_restarting<S>(
    request: sock_diag::Request,
    mut start: impl FnMut() -> S,
    mut each: impl FnMut(&mut S, &sock_diag::Record<'_>),
) -> Result<(S, NetlinkRead), sock_diag::DumpError> {
    let mut retries = 0;
    loop {
        let mut state = start();
        match sock_diag::dump(request, |r| each(&mut state, r)) {
            Ok(stats) => return Ok((state, NetlinkRead { stats, retries })),
            Err(sock_diag::DumpError::Interrupted) if retries + 1 < DUMP_ATTEMPTS => retries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Aggregates this namespace's sockets from a sock_diag dump (the states `filter` keeps
/// are the only ones the kernel sends), streaming: no record is held past its
/// aggregation. `info` asks for each connection's tcp_info. Owners as
/// [`summarize_with`]; listener backlogs come from the dump itself.
pub fn summarize_netlink(
    root: &ProcRoot,
    filter: Filter,
    collect: Collect,
    owners: bool,
    info: bool,
) -> Result<(Summary, Vec<Connection>, u64, NetlinkRead), sock_diag::DumpError> {
    let request = sock_diag::Request::states(&filter.states, info);
    let ((mut agg, backlogs), read) = dump_restarting(
        request,
        || {
            let agg = Aggregator::new(filter.clone(), collect.clone(), root.port_range());
            (agg, HashMap::new())
        },
        |(agg, backlogs), r| {
            if let Some(backlog) = r.backlog {
                backlogs.insert(r.socket.inode, backlog);
            }
            let info = r.info.map(sock_diag::TcpInfo::parse);
            agg.add_unique(&r.socket, info.as_ref());
        },
    )?;
    let found = owners.then(|| process::find_owners(root, &agg.wanted_owners()));
    let (connections, matched) = agg.take_connections(found.as_ref());
    let mut summary = agg.finish(found.as_ref(), &backlogs);
    summary.somaxconn = root.somaxconn();
    Ok((summary, connections, matched, read))
}

/// Every socket of this thread's network namespace from one sock_diag dump (restarted
/// when the kernel interrupts it), for readers that want rows rather than a summary: the
/// live engine's baseline and reconciliations. Much cheaper than /proc under churn, where
/// each read of /proc/net/tcp restarts the kernel's walk of a changing hash.
pub fn sockets_netlink() -> Result<Vec<Socket>, sock_diag::DumpError> {
    let ((_, sockets), _) = dump_restarting(
        sock_diag::Request::ALL,
        || (HashSet::new(), Vec::new()),
        |(seen, sockets), r| {
            // A socket moved between buckets during the walk can be listed twice.
            if r.socket.inode == 0 || seen.insert(r.socket.inode) {
                sockets.push(r.socket);
            }
        },
    )?;
    Ok(sockets)
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
    let root = &snapshot.proc_root;
    let mut agg = Aggregator::new(filter, collect, root.port_range());
    for row in snapshot.rows() {
        agg.add_row(&row);
    }
    let found = owners.then(|| process::find_owners(root, &agg.wanted_owners()));
    let (connections, matched) = agg.take_connections(found.as_ref());
    let mut summary = agg.finish(found.as_ref(), &listener_backlogs(root));
    summary.somaxconn = root.somaxconn();
    (summary, connections, matched)
}
