//! The snapshot engine's entry point, the mirror of `live::start`: one call takes typed
//! options (where to read, which namespaces, what the caller wants) and returns the
//! aggregated snapshot with the source it came from, what the reader should be told, and
//! each namespace on its own. The ladder: netlink sock_diag in tcpmon's own namespace,
//! /proc/net/tcp{,6} when netlink fails (with a note) or for another /proc, /proc/PID/net
//! of a process in each other namespace.
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    analysis::{Collect, Connection, Filter, Skipped, SortKey, Summary},
    audit::{audit, audit_namespaces, Finding, NamespaceAudit},
    namespaces::{self, Selection},
    Snapshot, SnapshotError,
};
use crate::{
    host::{netns, sock_diag::DumpError, ProcRoot},
    model::{owner::Owner, Listed, StateCounts, TcpState, Thresholds},
};

/// Where to read the socket tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// Netlink in tcpmon's own namespace, /proc otherwise or when netlink fails.
    #[default]
    Auto,
    /// Netlink or fail (tcpmon's own namespace only).
    Netlink,
    /// /proc/net/tcp{,6}.
    Proc,
}

/// Which network namespaces to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetnsChoice {
    /// The one the /proc root describes (tcpmon's own for /proc).
    #[default]
    Own,
    /// Every namespace on the host.
    All,
    /// These: each a pid, a path to an nsfs file or an `ip netns` name.
    Specs(Vec<std::ffi::OsString>),
}

/// What the caller will show, so the read does only the work that needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// Keep the connections of these states (capped at the limit, counted in full).
    pub connections: Vec<TcpState>,
    /// The only states shown: through netlink the kernel sends just these, and the
    /// snapshot says its counts are of them.
    pub only: Vec<TcpState>,
    /// Name the processes behind listeners and CLOSE_WAIT sockets (a walk of /proc/PID/fd).
    pub owners: bool,
    /// Name the process behind every connection kept too (implies `owners`).
    pub connection_owners: bool,
    /// Each connection's tcp_info (netlink only).
    pub info: Info,
}

/// Whether to read tcp_info.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Info {
    #[default]
    No,
    /// Where netlink reads the sockets (the audit's rules use it when it is there).
    WhereAvailable,
    /// The caller shows it: a note says when it cannot be read.
    Shown,
}

impl Want {
    /// Whether any owner is to be looked for (a walk of every process's fds).
    pub fn any_owners(&self) -> bool {
        self.owners || self.connection_owners
    }

    /// What the audit judges: owners name the processes in findings, tcp_info feeds the
    /// retransmit and stuck-peer rules.
    pub fn audit() -> Self {
        Self {
            owners: true,
            info: Info::WhereAvailable,
            ..Self::default()
        }
    }
}

/// Everything a snapshot read is told.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    pub proc_root: ProcRoot,
    pub source: SourceChoice,
    pub netns: NetnsChoice,
    pub filter: Filter,
    /// Connections kept at most (`None`: all).
    pub limit: Option<usize>,
    /// Keep the largest connections by this rather than the first.
    pub sort: Option<SortKey>,
    pub want: Want,
}

/// Where the sockets were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Netlink,
    Proc,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "--source netlink reads tcpmon's own network namespace, not another /proc: use \
         --source proc with --proc-root"
    )]
    NetlinkElsewhere,
    #[error(
        "--source netlink reads tcpmon's own network namespace; other namespaces are read \
         through /proc (netlink would mean entering each): use --source auto or proc with \
         --netns and --all-netns"
    )]
    NetlinkOtherNamespaces,
    #[error("reading the socket tables through netlink")]
    Netlink(#[source] DumpError),
    #[error("reading the socket tables")]
    Proc(#[from] SnapshotError),
    #[error("{0}")]
    Netns(String),
    #[error("no network namespace could be read{0}")]
    NoNamespace(String),
}

/// A snapshot as read: the aggregate, how it was read, and each namespace on its own.
#[derive(Debug)]
pub struct SnapshotRead {
    pub proc_root: PathBuf,
    pub source: SourceKind,
    /// The states the counts are limited to, when they are.
    pub only: Option<Vec<TcpState>>,
    /// What the reader should know about how it was read (a fallback, a retry).
    pub notes: Vec<String>,
    pub bytes_read: usize,
    /// Files that do not exist (tcp6 when IPv6 is disabled).
    pub missing: Vec<PathBuf>,
    /// Every namespace read, as one.
    pub summary: Summary,
    pub connections: Listed<Connection>,
    /// Present when namespaces were selected (all, or by spec).
    pub namespaces: Option<namespaces::Loaded>,
}

/// Reads the socket tables as `options` say and aggregates them.
pub fn read(options: &ReadOptions) -> Result<SnapshotRead, ReadError> {
    let root = &options.proc_root;
    let collect = Collect {
        connections_of: options.want.connections.clone(),
        connection_limit: options.limit,
        sort: options.sort,
        owners: options.want.connection_owners,
    };
    let (filter, only) = narrowed(&options.filter, &options.want.only);
    if options.source == SourceChoice::Netlink && options.netns != NetnsChoice::Own {
        return Err(ReadError::NetlinkOtherNamespaces);
    }
    let selection = match &options.netns {
        NetnsChoice::Own => None,
        NetnsChoice::All => Some(Selection::All),
        NetnsChoice::Specs(specs) => Some(Selection::Only(
            netns::resolve_specs(specs, root).map_err(ReadError::Netns)?,
        )),
    };
    match selection {
        None => read_own(options, filter, collect, only),
        Some(selection) => read_namespaces(options, &selection, &filter, &collect, only),
    }
}

/// The filter a command's own states narrow, and the states the counts are then of.
/// `--state` with none of the command's states keeps what was asked for: the command
/// lists nothing, and the counts are of what `--state` named.
fn narrowed(filter: &Filter, only: &[TcpState]) -> (Filter, Option<Vec<TcpState>>) {
    if only.is_empty() {
        return (filter.clone(), None);
    }
    let mut filter = filter.clone();
    let common: Vec<TcpState> = filter
        .states
        .iter()
        .copied()
        .filter(|s| only.contains(s))
        .collect();
    if filter.states.is_empty() {
        filter.states = only.to_vec();
    } else if !common.is_empty() {
        filter.states = common;
    }
    let states = filter.states.clone();
    (filter, Some(states))
}

/// The namespace the /proc root describes: netlink when it is tcpmon's own and allowed,
/// else /proc.
fn read_own(
    options: &ReadOptions,
    filter: Filter,
    collect: Collect,
    only: Option<Vec<TcpState>>,
) -> Result<SnapshotRead, ReadError> {
    let root = &options.proc_root;
    let info = options.want.info;
    let mut notes = Vec::new();
    let netlink = match options.source {
        SourceChoice::Proc => false,
        SourceChoice::Netlink if !root.is_own() => return Err(ReadError::NetlinkElsewhere),
        SourceChoice::Netlink => true,
        SourceChoice::Auto => root.is_own(),
    };
    if netlink {
        match super::summarize_netlink(
            root,
            filter.clone(),
            collect.clone(),
            options.want.any_owners(),
            info != Info::No,
        ) {
            Ok((summary, connections, matched, read)) => {
                if read.retries > 0 {
                    notes.push(format!(
                        "the sock_diag dump was interrupted by changes and started again {} time(s)",
                        read.retries
                    ));
                }
                return Ok(SnapshotRead {
                    proc_root: root.path().to_path_buf(),
                    source: SourceKind::Netlink,
                    bytes_read: read.stats.bytes as usize,
                    missing: Vec::new(),
                    summary,
                    connections: Listed::from_parts(connections, matched as usize),
                    namespaces: None,
                    only,
                    notes,
                });
            }
            Err(e) if options.source == SourceChoice::Auto => {
                notes.push(format!(
                    "netlink sock_diag failed ({e}): read /proc instead"
                ));
            }
            Err(e) => return Err(ReadError::Netlink(e)),
        }
    }
    if info == Info::Shown && !notes.is_empty() {
        notes.push("--info needs netlink: tcp_info is not shown".into());
    } else if info == Info::Shown {
        notes.push(
            "--info needs netlink (not with --proc-root or --source proc): tcp_info is not shown"
                .into(),
        );
    }
    let snapshot = Snapshot::read(root)?;
    let (summary, connections, matched) =
        super::summarize_with(&snapshot, filter, collect, options.want.any_owners());
    Ok(SnapshotRead {
        proc_root: root.path().to_path_buf(),
        source: SourceKind::Proc,
        bytes_read: snapshot.bytes_read(),
        missing: snapshot.missing().map(|f| f.path.clone()).collect(),
        summary,
        connections: Listed::from_parts(connections, matched as usize),
        namespaces: None,
        only,
        notes,
    })
}

/// Several namespaces, each read through a process in it (or by entering it), each
/// aggregated on its own, then merged.
fn read_namespaces(
    options: &ReadOptions,
    selection: &Selection,
    filter: &Filter,
    collect: &Collect,
    only: Option<Vec<TcpState>>,
) -> Result<SnapshotRead, ReadError> {
    let root = &options.proc_root;
    let loaded = namespaces::load(
        root,
        selection,
        &netns::run_netns(root),
        filter,
        collect,
        options.want.any_owners(),
    );
    if loaded.parts.is_empty() {
        let why: Vec<String> = loaded
            .skipped
            .iter()
            .map(|s| format!("{} ({}): {}", s.inode, s.owner, s.reason))
            .collect();
        return Err(ReadError::NoNamespace(if why.is_empty() {
            String::new()
        } else {
            format!(": {}", why.join("; "))
        }));
    }
    let summary = namespaces::merge(&loaded.parts);
    let matched: u64 = loaded.parts.iter().map(|p| p.matched).sum();
    let mut connections: Vec<Connection> = loaded
        .parts
        .iter()
        .flat_map(|p| p.connections.iter().cloned())
        .collect();
    if let Some(limit) = options.limit {
        connections.truncate(limit);
    }
    let mut notes = Vec::new();
    if options.want.info == Info::Shown {
        notes.push(
            "--info reads tcp_info through netlink, in tcpmon's own namespace only: not shown \
             with --all-netns or --netns"
                .into(),
        );
    }
    notes.extend(unanswered_notes(root));
    Ok(SnapshotRead {
        proc_root: root.path().to_path_buf(),
        source: SourceKind::Proc,
        only,
        notes,
        bytes_read: loaded.parts.iter().map(|p| p.bytes_read).sum(),
        missing: loaded
            .parts
            .iter()
            .flat_map(|p| p.missing.iter().cloned())
            .collect(),
        summary,
        connections: Listed::from_parts(connections, matched as usize),
        namespaces: Some(loaded),
    })
}

/// Containers whose root did not answer a read (their hostname was not learned).
pub fn unanswered_notes(root: &ProcRoot) -> Vec<String> {
    crate::host::deadline::unanswered()
        .into_iter()
        .filter(|r| r.starts_with(root.path()))
        .map(|r| {
            format!(
                "{} did not answer within {} ms (a FUSE or network filesystem whose server is \
                 stuck?): its namespace is named without its hostname, and it is not read \
                 again until it answers",
                crate::model::printable_bytes(std::os::unix::ffi::OsStrExt::as_bytes(
                    r.as_os_str()
                )),
                crate::host::deadline::DEADLINE.as_millis()
            )
        })
        .collect()
}

impl SnapshotRead {
    /// The audit of what was read: of each namespace on its own when several were, every
    /// finding naming its namespace; a namespace that could not be read is a finding.
    pub fn audit(&self, thresholds: &Thresholds) -> Vec<Finding> {
        let Some(ns) = &self.namespaces else {
            return audit(&self.summary, thresholds);
        };
        let parts: Vec<NamespaceAudit<'_>> = ns
            .parts
            .iter()
            .map(|p| NamespaceAudit {
                inode: p.namespace.inode,
                label: namespaces::label(&p.namespace),
                summary: &p.summary,
            })
            .collect();
        let unread: Vec<(u64, String, String)> = ns
            .skipped
            .iter()
            .filter(|s| !s.gone)
            .map(|s| (s.inode, s.owner.clone(), s.reason.clone()))
            .collect();
        audit_namespaces(&parts, &unread, thresholds)
    }

    /// How it was read, as every JSON document starts.
    pub fn envelope(&self) -> Envelope<'_> {
        let ns = self.namespaces.as_ref();
        Envelope {
            schema_version: super::SCHEMA_VERSION,
            source: self.source,
            proc_root: &self.proc_root,
            only_states: self
                .only
                .as_ref()
                .map(|states| states.iter().map(|s| s.name()).collect()),
            notes: &self.notes,
            bytes_read: self.bytes_read,
            missing: &self.missing,
            total: self.summary.total,
            ipv4: self.summary.ipv4,
            ipv6: self.summary.ipv6,
            skipped: &self.summary.skipped,
            duplicates: self.summary.duplicates,
            namespaces: ns.map(|n| {
                n.parts
                    .iter()
                    .map(|p| NamespaceEntry {
                        inode: p.namespace.inode,
                        name: p.namespace.name.as_deref(),
                        owner: &p.namespace.owner,
                        label: p.namespace.owner.to_string(),
                        total: p.summary.total,
                        ipv4: p.summary.ipv4,
                        ipv6: p.summary.ipv6,
                        states: &p.summary.states,
                    })
                    .collect()
            }),
            namespaces_skipped: ns.map(|n| n.skipped.as_slice()),
            processes_unreadable: ns.map(|n| n.refused.count),
        }
    }
}

/// The fields every snapshot document shares (docs/schema/snapshot.schema.json).
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub schema_version: u32,
    pub source: SourceKind,
    pub proc_root: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_states: Option<Vec<&'static str>>,
    pub notes: &'a [String],
    pub bytes_read: usize,
    pub missing: &'a [PathBuf],
    pub total: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub skipped: &'a Skipped,
    pub duplicates: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<NamespaceEntry<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces_skipped: Option<&'a [namespaces::Skipped]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes_unreadable: Option<u64>,
}

/// One namespace as the JSON `namespaces` array lists it.
#[derive(Serialize)]
pub struct NamespaceEntry<'a> {
    pub inode: u64,
    pub name: Option<&'a str>,
    pub owner: &'a Owner,
    /// The owner as text ("pod web-7d9 (container 3f2a9c1b7e44)").
    pub label: String,
    pub total: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub states: &'a StateCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_own_states_narrow_the_filter() {
        use TcpState::*;
        let only = [Listen, SynRecv];
        let (f, states) = narrowed(&Filter::default(), &only);
        assert_eq!(
            (f.states.clone(), states),
            (only.to_vec(), Some(only.to_vec()))
        );
        let asked = Filter {
            states: vec![Listen, Established],
            ..Filter::default()
        };
        assert_eq!(narrowed(&asked, &only).0.states, vec![Listen]);
        let none_common = Filter {
            states: vec![TimeWait],
            ..Filter::default()
        };
        assert_eq!(narrowed(&none_common, &only).0.states, vec![TimeWait]);
        assert_eq!(narrowed(&asked, &[]).1, None);
    }

    #[test]
    fn netlink_is_refused_for_another_proc() {
        let err = read(&ReadOptions {
            proc_root: ProcRoot::new("/nonexistent"),
            source: SourceChoice::Netlink,
            ..ReadOptions::default()
        })
        .unwrap_err();
        assert!(matches!(err, ReadError::NetlinkElsewhere), "{err}");
        // Other namespaces as another /proc: refused the same way, not read otherwise.
        for netns in [NetnsChoice::All, NetnsChoice::Specs(vec!["1".into()])] {
            let err = read(&ReadOptions {
                source: SourceChoice::Netlink,
                netns,
                ..ReadOptions::default()
            })
            .unwrap_err();
            assert!(matches!(err, ReadError::NetlinkOtherNamespaces), "{err}");
        }
        let err = read(&ReadOptions {
            proc_root: ProcRoot::new("/nonexistent"),
            ..ReadOptions::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("reading the socket tables"),
            "{err}"
        );
    }
}
