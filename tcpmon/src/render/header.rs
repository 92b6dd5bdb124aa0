//! The first lines of every snapshot command's text: what was read, from where, and
//! what the reader should know about it (fallbacks, missing files, skipped lines,
//! namespaces not read).
use std::io::{self, Write};

use tcpmon::{
    output::table::{thousands, Style},
    snapshot::{namespaces, SnapshotRead, SourceKind},
};

/// The first line of human output, plus what could not be read or decoded.
pub fn write_header(out: &mut dyn Write, loaded: &SnapshotRead, style: Style) -> io::Result<()> {
    let s = &loaded.summary;
    let across = match &loaded.namespaces {
        Some(ns) => format!(
            " in {} network namespace{}",
            ns.parts.len(),
            if ns.parts.len() == 1 { "" } else { "s" }
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
        write_namespace_notes(out, ns)?;
    }
    Ok(())
}

/// What a multi-namespace read could not see, one line per namespace skipped.
fn write_namespace_notes(out: &mut dyn Write, ns: &namespaces::Loaded) -> io::Result<()> {
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
    if !ns.refused.is_empty() {
        writeln!(
            out,
            "warning: namespaces were looked for through every process, but {}: a namespace only \
             they are in was not read",
            ns.refused.explain("CAP_SYS_PTRACE")
        )?;
    }
    let unknown: Vec<_> = ns.parts.iter().filter(|p| !p.port_range_known).collect();
    if let Some(first) = unknown.first() {
        let why = first
            .not_entered
            .as_deref()
            .unwrap_or("its sysctl could not be read");
        writeln!(
            out,
            "note: the ephemeral port range of {} namespace(s) could not be read (netns {}: \
             {why}): the kernel default is assumed there",
            unknown.len(),
            first.namespace.inode
        )?;
    }
    Ok(())
}
