//! One module per subcommand; they share the snapshot plumbing below.
pub mod audit;
pub mod established;
pub mod generate;
pub mod listen;
pub mod per_ip;
pub mod per_port;
pub mod report;
pub mod serve;
pub mod states;
pub mod timewait;
pub mod watch;

use std::{collections::HashMap, io::Write};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tcpmon::{
    model::{endpoint, TcpState},
    output::table::{thousands, Align, Listed, Style, Table},
    snapshot::{
        analysis::{Collect, Connection, Summary},
        audit::{audit_namespaces, Finding, NamespaceAudit},
        namespaces, Snapshot,
    },
};

use crate::cli::{Command, SnapshotArgs, SourceChoice};

/// Checks what clap cannot check flag by flag (a warning level above its critical one);
/// the message is a usage error.
pub fn check(command: &Command) -> Result<(), String> {
    let thresholds = match command {
        Command::Report(a) => a.thresholds.thresholds(),
        Command::Audit(a) => a.thresholds.thresholds(),
        Command::Watch(a) => a.live.thresholds.thresholds(),
        Command::Serve(a) => a.live.thresholds.thresholds(),
        _ => return Ok(()),
    };
    thresholds.validate().map_err(|e| e.to_string())
}

/// What every snapshot command starts from.
pub struct Loaded {
    pub proc_root: std::path::PathBuf,
    pub source: SourceKind,
    /// The states the counts are limited to (the command's), when limited.
    pub only: Option<Vec<TcpState>>,
    /// What the reader should know about how it was read (a fallback, a retry).
    pub notes: Vec<String>,
    pub bytes_read: usize,
    /// Files that do not exist (tcp6 when IPv6 is disabled).
    pub missing: Vec<std::path::PathBuf>,
    /// Every namespace read, as one.
    pub summary: Summary,
    pub connections: Listed<Connection>,
    /// Present when namespaces were selected (`--all-netns`, `--netns`).
    pub namespaces: Option<Namespaces>,
}

/// The namespaces a snapshot read, each on its own.
pub struct Namespaces {
    pub loaded: namespaces::Loaded,
    /// How each namespace is named in a table cell, by inode.
    pub short: HashMap<u64, String>,
}

impl Namespaces {
    fn new(loaded: namespaces::Loaded) -> Self {
        let short = loaded
            .parts
            .iter()
            .map(|p| (p.namespace.inode, namespaces::short_label(&p.namespace)))
            .collect();
        Self { loaded, short }
    }

    /// The table cell for a row of namespace `tag`.
    pub fn cell(&self, tag: Option<u64>) -> String {
        tag.and_then(|inode| self.short.get(&inode).cloned())
            .unwrap_or_else(|| "-".into())
    }
}

/// What a command needs from the snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want<'a> {
    /// Keep the connections of these states (the listing commands).
    pub collect: &'a [TcpState],
    /// Name the processes behind listeners and CLOSE_WAIT sockets (a walk of /proc/PID/fd).
    pub owners: bool,
    /// The only states the command shows: through netlink the kernel sends just these,
    /// and the header says the counts are of them.
    pub only: &'a [TcpState],
    /// Read each connection's tcp_info (netlink only).
    pub info: bool,
}

impl Want<'_> {
    /// What the audit judges: owners name the processes in findings, tcp_info feeds the
    /// retransmit and stuck-peer rules.
    pub const AUDIT: Self = Self {
        collect: &[],
        owners: true,
        only: &[],
        info: true,
    };
}

/// Where the sockets were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Netlink,
    Proc,
}

/// Reads the selected namespaces (tcpmon's own by default) and aggregates them.
pub fn load(args: &SnapshotArgs, want: Want<'_>) -> Result<Loaded> {
    let root = args.proc_root();
    let collect = Collect {
        connections_of: want.collect.to_vec(),
        connection_limit: args.limit(),
        sort: args.sort,
    };
    let mut filter = args.filter();
    if !want.only.is_empty() {
        let common: Vec<TcpState> = filter
            .states
            .iter()
            .copied()
            .filter(|s| want.only.contains(s))
            .collect();
        // --state with none of the command's states keeps what was asked for: the
        // command then lists nothing, and the header counts what --state named.
        if filter.states.is_empty() {
            filter.states = want.only.to_vec();
        } else if !common.is_empty() {
            filter.states = common;
        }
    }
    let only = if want.only.is_empty() {
        None
    } else {
        Some(filter.states.clone())
    };
    let selection = args
        .netns
        .selection(&root)
        .map_err(|e| anyhow::anyhow!(e))?;
    let Some(selection) = selection else {
        let mut notes = Vec::new();
        let netlink = match args.source {
            SourceChoice::Proc => false,
            SourceChoice::Netlink if !root.is_own() => anyhow::bail!(
                "--source netlink reads tcpmon's own network namespace, not another /proc: \
                 use --source proc with --proc-root"
            ),
            SourceChoice::Netlink => true,
            SourceChoice::Auto => root.is_own(),
        };
        if netlink {
            match tcpmon::snapshot::summarize_netlink(
                &root,
                filter.clone(),
                collect.clone(),
                want.owners,
                want.info || args.info,
            ) {
                Ok((summary, connections, matched, read)) => {
                    if read.retries > 0 {
                        notes.push(format!(
                            "the sock_diag dump was interrupted by changes and started again {} time(s)",
                            read.retries
                        ));
                    }
                    return Ok(Loaded {
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
                Err(e) if args.source == SourceChoice::Auto => {
                    notes.push(format!(
                        "netlink sock_diag failed ({e}): read /proc instead"
                    ));
                }
                Err(e) => return Err(e).context("reading the socket tables through netlink"),
            }
        }
        if args.info && !notes.is_empty() {
            notes.push("--info needs netlink: tcp_info is not shown".into());
        } else if args.info {
            notes.push("--info needs netlink (not with --proc-root or --source proc): tcp_info is not shown".into());
        }
        let snapshot = Snapshot::read(&root).context("reading the socket tables")?;
        let (summary, connections, matched) =
            tcpmon::snapshot::summarize_with(&snapshot, filter, collect, want.owners);
        return Ok(Loaded {
            proc_root: root.path().to_path_buf(),
            source: SourceKind::Proc,
            bytes_read: snapshot.bytes_read(),
            missing: snapshot.missing().map(|f| f.path.clone()).collect(),
            summary,
            connections: Listed::from_parts(connections, matched as usize),
            namespaces: None,
            only,
            notes,
        });
    };
    let loaded = namespaces::load(
        &root,
        &selection,
        &crate::cli::run_netns(&root),
        &filter,
        &collect,
        want.owners,
    );
    if loaded.parts.is_empty() {
        let why: Vec<String> = loaded
            .skipped
            .iter()
            .map(|s| format!("{} ({}): {}", s.inode, s.owner, s.reason))
            .collect();
        anyhow::bail!(
            "no network namespace could be read{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        );
    }
    let summary = namespaces::merge(&loaded.parts);
    let matched: u64 = loaded.parts.iter().map(|p| p.matched).sum();
    let mut connections: Vec<Connection> = loaded
        .parts
        .iter()
        .flat_map(|p| p.connections.iter().cloned())
        .collect();
    if let Some(limit) = args.limit() {
        connections.truncate(limit);
    }
    Ok(Loaded {
        proc_root: root.path().to_path_buf(),
        source: SourceKind::Proc,
        only,
        notes: if args.info {
            vec!["--info reads tcp_info through netlink, in tcpmon's own namespace only: not shown with --all-netns or --netns".into()]
        } else {
            Vec::new()
        },
        bytes_read: loaded.parts.iter().map(|p| p.bytes_read).sum(),
        missing: loaded
            .parts
            .iter()
            .flat_map(|p| p.missing.iter().cloned())
            .collect(),
        summary,
        connections: Listed::from_parts(connections, matched as usize),
        namespaces: Some(Namespaces::new(loaded)),
    })
}

/// The audit of what was loaded: of each namespace on its own when several were read.
pub fn audit(loaded: &Loaded, thresholds: &tcpmon::model::Thresholds) -> Vec<Finding> {
    let Some(ns) = &loaded.namespaces else {
        return tcpmon::snapshot::audit::audit(&loaded.summary, thresholds);
    };
    let parts: Vec<NamespaceAudit<'_>> = ns
        .loaded
        .parts
        .iter()
        .map(|p| NamespaceAudit {
            inode: p.namespace.inode,
            label: namespaces::label(&p.namespace),
            summary: &p.summary,
        })
        .collect();
    let unread: Vec<(u64, String, String)> = ns
        .loaded
        .skipped
        .iter()
        .filter(|s| !s.gone)
        .map(|s| (s.inode, s.owner.clone(), s.reason.clone()))
        .collect();
    audit_namespaces(&parts, &unread, thresholds)
}

/// The NAMESPACES table: one row per namespace, largest first.
pub fn namespaces_table(ns: &Namespaces, rows: &[namespaces::NamespaceSummary]) -> Table {
    use TcpState::*;
    let mut table = Table::new(&[
        ("NETNS", Align::Left),
        ("INODE", Align::Right),
        ("OWNER", Align::Left),
        ("TOTAL", Align::Right),
        ("ESTAB", Align::Right),
        ("LISTEN", Align::Right),
        ("TIME_WAIT", Align::Right),
        ("CLOSE_WAIT", Align::Right),
        ("SYN_RECV", Align::Right),
        ("OTHER", Align::Right),
    ]);
    for p in rows {
        let states = &p.summary.states;
        let shown = [Established, Listen, TimeWait, CloseWait, SynRecv];
        let other = p.summary.total - shown.iter().map(|s| states.get(*s)).sum::<u64>();
        let mut cells = vec![
            ns.cell(Some(p.namespace.inode)),
            p.namespace.inode.to_string(),
            p.namespace.owner.to_string(),
            thousands(p.summary.total),
        ];
        cells.extend(shown.iter().map(|s| thousands(states.get(*s))));
        cells.push(thousands(other));
        table.row(cells);
    }
    table
}

/// One namespace as the JSON `namespaces` array lists it.
#[derive(Serialize)]
pub struct NamespaceEntry<'a> {
    pub inode: u64,
    pub name: Option<&'a str>,
    pub owner: &'a tcpmon::model::owner::Owner,
    /// The owner as text ("pod web-7d9 (container 3f2a9c1b7e44)").
    pub label: String,
    pub total: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub states: &'a tcpmon::model::StateCounts,
}

/// The fields every JSON document starts with.
#[derive(Serialize)]
pub struct Source<'a> {
    /// The version of the document schemas (docs/schema/snapshot.schema.json).
    pub schema_version: u32,
    /// netlink (sock_diag) or proc (/proc/net/tcp{,6}).
    pub source: SourceKind,
    pub proc_root: &'a std::path::Path,
    /// The states the counts are limited to, when the command shows only some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_states: Option<Vec<&'static str>>,
    pub notes: &'a [String],
    pub bytes_read: usize,
    /// Files that do not exist (tcp6 when IPv6 is disabled): their sockets are not counted.
    pub missing: &'a [std::path::PathBuf],
    pub total: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub skipped: &'a tcpmon::snapshot::analysis::Skipped,
    /// Rows listed twice by a table that changed while it was read (counted once).
    pub duplicates: u64,
    /// Each namespace read (with `--all-netns` or `--netns`), largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<NamespaceEntry<'a>>>,
    /// Namespaces that could not be read, and why; their sockets are not counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces_skipped: Option<&'a [namespaces::Skipped]>,
    /// Processes whose namespace could not be looked at (another user's, without root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes_unreadable: Option<usize>,
}

impl<'a> Source<'a> {
    pub fn of(loaded: &'a Loaded) -> Self {
        let ns = loaded.namespaces.as_ref().map(|n| &n.loaded);
        Self {
            schema_version: tcpmon::snapshot::SCHEMA_VERSION,
            source: loaded.source,
            proc_root: &loaded.proc_root,
            only_states: loaded
                .only
                .as_ref()
                .map(|states| states.iter().map(|s| s.name()).collect()),
            notes: &loaded.notes,
            bytes_read: loaded.bytes_read,
            missing: &loaded.missing,
            total: loaded.summary.total,
            ipv4: loaded.summary.ipv4,
            ipv6: loaded.summary.ipv6,
            skipped: &loaded.summary.skipped,
            duplicates: loaded.summary.duplicates,
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
            processes_unreadable: ns.map(|n| n.unreadable_processes),
        }
    }
}

/// One JSON document: the source fields flattened with the command's own.
pub fn write_json(out: &mut dyn Write, loaded: &Loaded, body: impl Serialize) -> Result<()> {
    #[derive(Serialize)]
    struct Doc<'a, T> {
        #[serde(flatten)]
        source: Source<'a>,
        #[serde(flatten)]
        body: T,
    }
    serde_json::to_writer_pretty(
        &mut *out,
        &Doc {
            source: Source::of(loaded),
            body,
        },
    )?;
    writeln!(out)?;
    Ok(())
}

/// The first line of human output, plus what could not be read or decoded.
pub fn write_header(out: &mut dyn Write, loaded: &Loaded, style: Style) -> Result<()> {
    let s = &loaded.summary;
    let across = match &loaded.namespaces {
        Some(ns) => format!(
            " in {} network namespace{}",
            ns.loaded.parts.len(),
            if ns.loaded.parts.len() == 1 { "" } else { "s" }
        ),
        None => String::new(),
    };
    let heading = match &loaded.only {
        Some(states) => format!(
            "TCP sockets in {}:",
            states
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "TCP sockets:".to_owned(),
    };
    let from = match loaded.source {
        SourceKind::Netlink => "netlink sock_diag".to_owned(),
        SourceKind::Proc => loaded.proc_root.display().to_string(),
    };
    writeln!(
        out,
        "{} {} (IPv4 {}, IPv6 {}){across} from {from}",
        style.heading(&heading),
        thousands(s.total),
        thousands(s.ipv4),
        thousands(s.ipv6),
    )?;
    for note in &loaded.notes {
        writeln!(out, "note: {note}")?;
    }
    if s.duplicates > 0 {
        writeln!(
            out,
            "note: {} socket(s) listed twice while the table changed were counted once",
            s.duplicates
        )?;
    }
    for missing in &loaded.missing {
        writeln!(
            out,
            "note: {} does not exist (IPv6 disabled?): not counted",
            missing.display()
        )?;
    }
    if s.skipped.count > 0 {
        let reasons: Vec<String> = s
            .skipped
            .by_reason
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        writeln!(
            out,
            "warning: {} malformed line(s) skipped and not counted ({}); first at {}:{}",
            s.skipped.count,
            reasons.join(", "),
            s.skipped.examples[0].file.display(),
            s.skipped.examples[0].line
        )?;
    }
    if let Some(ns) = &loaded.namespaces {
        write_namespace_notes(out, &ns.loaded)?;
    }
    Ok(())
}

/// What a multi-namespace read could not see, one line per namespace skipped.
fn write_namespace_notes(out: &mut dyn Write, ns: &namespaces::Loaded) -> Result<()> {
    for s in &ns.skipped {
        let (level, what) = if s.gone {
            ("note", "gone")
        } else {
            ("warning", "not read, its sockets not counted")
        };
        writeln!(
            out,
            "{level}: network namespace {} ({}) {what}: {}",
            s.inode,
            tcpmon::model::printable(&s.owner),
            s.reason
        )?;
    }
    if ns.unreadable_processes > 0 {
        writeln!(
            out,
            "warning: the namespace of {} process(es) could not be looked at (run as root to \
             see every namespace)",
            ns.unreadable_processes
        )?;
    }
    let unknown_ranges = ns.parts.iter().filter(|p| !p.port_range_known).count();
    if unknown_ranges > 0 {
        writeln!(
            out,
            "note: the ephemeral port range of {unknown_ranges} namespace(s) could not be read \
             (entering a namespace needs CAP_SYS_ADMIN): the kernel default is assumed there"
        )?;
    }
    Ok(())
}

pub fn section(out: &mut dyn Write, style: Style, title: &str) -> Result<()> {
    writeln!(out, "\n{}", style.heading(title))?;
    Ok(())
}

/// A table of `rows`, each made into cells by `cells`; when the rows may come from
/// several namespaces, a NETNS column comes first, filled from each row's `netns`.
pub fn tagged_table<T>(
    ns: Option<&Namespaces>,
    columns: &[(&'static str, Align)],
    rows: &[T],
    netns: impl Fn(&T) -> Option<u64>,
    cells: impl Fn(&T) -> Vec<String>,
) -> Table {
    let mut all = Vec::with_capacity(columns.len() + 1);
    if ns.is_some() {
        all.push(("NETNS", Align::Left));
    }
    all.extend_from_slice(columns);
    let mut table = Table::new(&all);
    for r in rows {
        table.row(match ns {
            Some(ns) => std::iter::once(ns.cell(netns(r))).chain(cells(r)).collect(),
            None => cells(r),
        });
    }
    table
}

/// A process, or "-" when it is not known.
fn process_cell(process: Option<&tcpmon::model::Process>) -> String {
    process.map_or_else(|| "-".into(), ToString::to_string)
}

pub fn states_table(summary: &Summary, include_zero: bool) -> Table {
    let mut table = Table::new(&[("STATE", Align::Left), ("COUNT", Align::Right)]);
    for (state, n) in summary
        .states
        .iter()
        .filter(|(_, n)| include_zero || *n > 0)
    {
        table.row(vec![state.name().into(), thousands(n)]);
    }
    table
}

pub fn listeners_table(
    listeners: &[tcpmon::snapshot::analysis::Listener],
    ns: Option<&Namespaces>,
) -> Table {
    tagged_table(
        ns,
        &[
            ("LOCAL", Align::Left),
            ("BACKLOG", Align::Right),
            ("ACCEPT-Q", Align::Right),
            ("HALF-OPEN", Align::Right),
            ("UID", Align::Right),
            ("PROCESS", Align::Left),
        ],
        listeners,
        |l| l.netns,
        |l| {
            vec![
                endpoint(l.ip, l.port),
                l.backlog.map_or_else(|| "?".into(), |b| b.to_string()),
                l.accept_queue.to_string(),
                l.half_open.to_string(),
                l.uid.to_string(),
                process_cell(l.process.as_ref()),
            ]
        },
    )
}

pub fn per_ip_table(
    rows: &[tcpmon::snapshot::analysis::IpCount],
    ns: Option<&Namespaces>,
) -> Table {
    tagged_table(
        ns,
        &[
            ("REMOTE", Align::Left),
            ("TOTAL", Align::Right),
            ("ESTAB", Align::Right),
            ("TIME_WAIT", Align::Right),
            ("CLOSE_WAIT", Align::Right),
            ("SYN_RECV", Align::Right),
            ("OTHER", Align::Right),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.ip.to_string(),
                thousands(r.total),
                thousands(r.established),
                thousands(r.time_wait),
                thousands(r.close_wait),
                thousands(r.syn_recv),
                thousands(r.other),
            ]
        },
    )
}

pub fn per_port_table(
    rows: &[tcpmon::snapshot::analysis::PortCount],
    ns: Option<&Namespaces>,
    info: bool,
) -> Table {
    let mut columns = vec![("LOCAL PORT", Align::Right), ("ESTABLISHED", Align::Right)];
    if info {
        columns.extend([
            ("RTT AVG", Align::Right),
            ("RTT MAX", Align::Right),
            ("RETRANS", Align::Right),
            ("SEND-Q", Align::Right),
        ]);
    }
    tagged_table(
        ns,
        &columns,
        rows,
        |r| r.netns,
        |r| {
            let mut cells = vec![r.port.to_string(), thousands(r.established)];
            if info {
                let i = r.info.unwrap_or_default();
                cells.extend([
                    ms(i.rtt_avg_ms),
                    ms(i.rtt_max_ms),
                    thousands(i.total_retrans),
                    thousands(i.send_queue_bytes),
                ]);
            }
            cells
        },
    )
}

/// Milliseconds as tables show them (microseconds below one).
fn ms(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0}us", value * 1000.0)
    } else {
        format!("{value:.1}ms")
    }
}

/// Remote IPs by how much their connections retransmit (tcp_info).
pub fn retransmits_table(
    rows: &[tcpmon::snapshot::analysis::Retransmits],
    ns: Option<&Namespaces>,
) -> Table {
    tagged_table(
        ns,
        &[
            ("REMOTE", Align::Left),
            ("CONNECTIONS", Align::Right),
            ("SEGS OUT", Align::Right),
            ("RETRANSMITTED", Align::Right),
            ("%", Align::Right),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.ip.to_string(),
                thousands(r.connections),
                thousands(r.segs_out),
                thousands(r.total_retrans),
                format!("{:.2}", r.retrans_pct),
            ]
        },
    )
}

/// Remote IPs whose connections cannot send (zero window, data queued).
pub fn stuck_table(rows: &[tcpmon::snapshot::analysis::Stuck], ns: Option<&Namespaces>) -> Table {
    tagged_table(
        ns,
        &[
            ("REMOTE", Align::Left),
            ("CONNECTIONS", Align::Right),
            ("QUEUED BYTES", Align::Right),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.ip.to_string(),
                thousands(r.connections),
                thousands(r.queued_bytes),
            ]
        },
    )
}

pub fn close_wait_table(
    rows: &[tcpmon::snapshot::analysis::CloseWaitGroup],
    ns: Option<&Namespaces>,
) -> Table {
    tagged_table(
        ns,
        &[
            ("LOCAL PORT", Align::Right),
            ("COUNT", Align::Right),
            ("UNREAD BYTES", Align::Right),
            ("PROCESS", Align::Left),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.local_port.to_string(),
                thousands(r.count),
                thousands(r.unread_bytes),
                process_cell(r.process.as_ref()),
            ]
        },
    )
}

pub fn connections_table(
    rows: &[Connection],
    timer_title: &'static str,
    ns: Option<&Namespaces>,
    info: bool,
) -> Table {
    let mut columns = vec![
        ("LOCAL", Align::Left),
        ("REMOTE", Align::Left),
        ("SEND-Q", Align::Right),
        ("RECV-Q", Align::Right),
        ("UID", Align::Right),
        (timer_title, Align::Right),
    ];
    if info {
        columns.extend([
            ("RTT", Align::Right),
            ("RETRANS", Align::Right),
            ("CWND", Align::Right),
            ("SENT", Align::Right),
            ("RECEIVED", Align::Right),
            ("DELIVERY", Align::Right),
        ]);
    }
    tagged_table(
        ns,
        &columns,
        rows,
        |c| c.netns,
        |c| {
            let mut cells = vec![
                endpoint(c.local_ip, c.local_port),
                endpoint(c.remote_ip, c.remote_port),
                c.send_queue.to_string(),
                c.recv_queue.to_string(),
                c.uid.to_string(),
                c.timer_secs
                    .map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
            ];
            if info {
                match c.info {
                    Some(i) => cells.extend([
                        format!("{}/{}", ms(i.rtt_ms), ms(i.rttvar_ms)),
                        format!("{}/{}", i.retransmits, i.total_retrans),
                        i.snd_cwnd.to_string(),
                        thousands(i.bytes_acked),
                        thousands(i.bytes_received),
                        rate(i.delivery_rate),
                    ]),
                    None => cells.extend(std::iter::repeat_n("-".to_owned(), 6)),
                }
            }
            cells
        },
    )
}

/// Bytes a second as bits a second, the way links are rated.
fn rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    match bits {
        b if b >= 1e9 => format!("{:.1}Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.1}Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1}kbit/s", b / 1e3),
        b => format!("{b:.0}bit/s"),
    }
}

/// The findings section's body: the table, then a line per rule that was cut.
pub fn write_findings(
    out: &mut dyn Write,
    list: &tcpmon::snapshot::audit::FindingList,
    style: Style,
) -> Result<()> {
    findings_table(&list.items, style).write(out, "  ")?;
    for (rule, omitted) in &list.omitted_by_rule {
        writeln!(
            out,
            "  ... {omitted} more {rule} finding{} not shown (--limit N or --all to see more)",
            if *omitted == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn findings_table(findings: &[tcpmon::snapshot::audit::Finding], style: Style) -> Table {
    let mut table = Table::new(&[
        ("SEVERITY", Align::Left),
        ("RULE", Align::Left),
        ("FINDING", Align::Left),
    ]);
    for f in findings {
        table.row(vec![
            style.severity(f.severity),
            f.rule.clone(),
            f.message.clone(),
        ]);
    }
    table
}

/// One list as a command shows it: its JSON field, the list, and its human table.
pub struct OneList<'a, T> {
    pub field: &'static str,
    pub listed: &'a Listed<T>,
    pub title: String,
    pub table: Table,
    /// What the rows are, for the "N more ... not shown" line.
    pub what: &'static str,
}

/// The whole output of a command that shows one list: JSON `{source..., field: list}`,
/// or the header and one titled table.
pub fn one_list<T: Serialize>(
    out: &mut dyn Write,
    loaded: &Loaded,
    json: bool,
    style: Style,
    list: OneList<'_, T>,
) -> Result<()> {
    if json {
        return write_json(
            out,
            loaded,
            std::collections::BTreeMap::from([(list.field, list.listed)]),
        );
    }
    write_header(out, loaded, style)?;
    listed_section(out, style, &list.title, list.table, list.listed, list.what)
}

/// A titled section holding one cut list.
pub fn listed_section<T>(
    out: &mut dyn Write,
    style: Style,
    title: &str,
    table: Table,
    listed: &Listed<T>,
    what: &str,
) -> Result<()> {
    section(out, style, title)?;
    write_listed(out, table, listed, what)
}

/// Prints a table or a placeholder, then the "N more" line of a cut list.
pub fn write_listed<T>(
    out: &mut dyn Write,
    table: Table,
    listed: &Listed<T>,
    what: &str,
) -> Result<()> {
    if table.is_empty() {
        writeln!(out, "  (none)")?;
    } else {
        table.write(out, "  ")?;
    }
    listed.write_omitted(out, what)?;
    Ok(())
}
