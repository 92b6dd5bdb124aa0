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

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;
use tcpmon::{
    model::{endpoint, TcpState},
    output::table::{thousands, Align, Listed, Style, Table},
    snapshot::{
        analysis::{Collect, Connection, Summary},
        Snapshot,
    },
};

use crate::cli::{Command, SnapshotArgs};

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
    pub snapshot: Snapshot,
    pub summary: Summary,
    pub connections: Listed<Connection>,
}

/// Reads both files once and aggregates them; `collect` keeps connection rows for the
/// listing commands and `owners` walks /proc/PID/fd for listener/CLOSE_WAIT owners.
pub fn load(args: &SnapshotArgs, collect_states: &[TcpState], owners: bool) -> Result<Loaded> {
    let snapshot = Snapshot::read(&args.proc_root()).context("reading the socket tables")?;
    let collect = Collect {
        connections_of: collect_states.to_vec(),
        connection_limit: args.limit(),
    };
    let (summary, connections, matched) =
        tcpmon::snapshot::summarize_with(&snapshot, args.filter(), collect, owners);
    Ok(Loaded {
        snapshot,
        summary,
        connections: Listed::from_parts(connections, matched as usize),
    })
}

/// The fields every JSON document starts with.
#[derive(Serialize)]
pub struct Source<'a> {
    /// The version of the document schemas (docs/schema/snapshot.schema.json).
    pub schema_version: u32,
    pub proc_root: &'a std::path::Path,
    pub bytes_read: usize,
    /// Files that do not exist (tcp6 when IPv6 is disabled): their sockets are not counted.
    pub missing: Vec<&'a std::path::Path>,
    pub total: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub skipped: &'a tcpmon::snapshot::analysis::Skipped,
    /// Rows listed twice by a table that changed while it was read (counted once).
    pub duplicates: u64,
}

impl<'a> Source<'a> {
    pub fn of(loaded: &'a Loaded) -> Self {
        Self {
            schema_version: tcpmon::snapshot::SCHEMA_VERSION,
            proc_root: loaded.snapshot.proc_root.path(),
            bytes_read: loaded.snapshot.bytes_read(),
            missing: loaded
                .snapshot
                .missing()
                .map(|f| f.path.as_path())
                .collect(),
            total: loaded.summary.total,
            ipv4: loaded.summary.ipv4,
            ipv6: loaded.summary.ipv6,
            skipped: &loaded.summary.skipped,
            duplicates: loaded.summary.duplicates,
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
    writeln!(
        out,
        "{} {} (IPv4 {}, IPv6 {}) from {}",
        style.heading("TCP sockets:"),
        thousands(s.total),
        thousands(s.ipv4),
        thousands(s.ipv6),
        loaded.snapshot.proc_root.path().display()
    )?;
    if s.duplicates > 0 {
        writeln!(
            out,
            "note: {} socket(s) listed twice while the table changed were counted once",
            s.duplicates
        )?;
    }
    for missing in loaded.snapshot.missing() {
        writeln!(
            out,
            "note: {} does not exist (IPv6 disabled?): not counted",
            missing.path.display()
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
    Ok(())
}

pub fn section(out: &mut dyn Write, style: Style, title: &str) -> Result<()> {
    writeln!(out, "\n{}", style.heading(title))?;
    Ok(())
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

pub fn listeners_table(listeners: &[tcpmon::snapshot::analysis::Listener]) -> Table {
    let mut table = Table::new(&[
        ("LOCAL", Align::Left),
        ("BACKLOG", Align::Right),
        ("ACCEPT-Q", Align::Right),
        ("HALF-OPEN", Align::Right),
        ("UID", Align::Right),
        ("PROCESS", Align::Left),
    ]);
    for l in listeners {
        table.row(vec![
            endpoint(l.ip, l.port),
            l.backlog.map_or_else(|| "?".into(), |b| b.to_string()),
            l.accept_queue.to_string(),
            l.half_open.to_string(),
            l.uid.to_string(),
            l.process
                .as_ref()
                .map_or_else(|| "-".into(), ToString::to_string),
        ]);
    }
    table
}

pub fn per_ip_table(rows: &[tcpmon::snapshot::analysis::IpCount]) -> Table {
    let mut table = Table::new(&[
        ("REMOTE", Align::Left),
        ("TOTAL", Align::Right),
        ("ESTAB", Align::Right),
        ("TIME_WAIT", Align::Right),
        ("CLOSE_WAIT", Align::Right),
        ("SYN_RECV", Align::Right),
        ("OTHER", Align::Right),
    ]);
    for r in rows {
        table.row(vec![
            r.ip.to_string(),
            thousands(r.total),
            thousands(r.established),
            thousands(r.time_wait),
            thousands(r.close_wait),
            thousands(r.syn_recv),
            thousands(r.other),
        ]);
    }
    table
}

pub fn per_port_table(rows: &[tcpmon::snapshot::analysis::PortCount]) -> Table {
    let mut table = Table::new(&[("LOCAL PORT", Align::Right), ("ESTABLISHED", Align::Right)]);
    for r in rows {
        table.row(vec![r.port.to_string(), thousands(r.established)]);
    }
    table
}

pub fn close_wait_table(rows: &[tcpmon::snapshot::analysis::CloseWaitGroup]) -> Table {
    let mut table = Table::new(&[
        ("LOCAL PORT", Align::Right),
        ("COUNT", Align::Right),
        ("UNREAD BYTES", Align::Right),
        ("PROCESS", Align::Left),
    ]);
    for r in rows {
        table.row(vec![
            r.local_port.to_string(),
            thousands(r.count),
            thousands(r.unread_bytes),
            r.process
                .as_ref()
                .map_or_else(|| "-".into(), ToString::to_string),
        ]);
    }
    table
}

pub fn connections_table(rows: &[Connection], timer_title: &'static str) -> Table {
    let mut table = Table::new(&[
        ("LOCAL", Align::Left),
        ("REMOTE", Align::Left),
        ("SEND-Q", Align::Right),
        ("RECV-Q", Align::Right),
        ("UID", Align::Right),
        (timer_title, Align::Right),
    ]);
    for c in rows {
        table.row(vec![
            endpoint(c.local_ip, c.local_port),
            endpoint(c.remote_ip, c.remote_port),
            c.send_queue.to_string(),
            c.recv_queue.to_string(),
            c.uid.to_string(),
            c.timer_secs
                .map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
        ]);
    }
    table
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
