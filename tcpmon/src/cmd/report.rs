//! `tcpmon report`: everything a snapshot says, in one read.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    model::Listed,
    output::table::Style,
    snapshot::{audit::cut, Want},
};

use crate::{
    cli::ReportArgs,
    exit::Status,
    render::{
        findings::write_findings,
        header::write_header,
        json::write_json,
        lists::{listed_section, section},
        tables, NamespaceCells,
    },
};

pub fn run(args: &ReportArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let allow = super::allowlist_of(&args.thresholds)?;
    let loaded = super::read(&args.snapshot, Want::audit())?;
    let s = &loaded.summary;
    let limit = args.snapshot.limit();
    let findings = cut(
        &super::audited(&loaded, &args.thresholds.thresholds(), allow.as_ref()),
        limit,
    );
    let listeners = Listed::cut(&s.listeners, limit);
    let per_ip = Listed::cut(&s.per_ip, limit);
    let per_port = Listed::cut(&s.per_port, limit);
    let close_wait = Listed::cut(&s.close_wait, limit);
    let retransmits = Listed::cut(&s.retransmits, limit);
    let stuck = Listed::cut(&s.stuck, limit);
    if args.snapshot.json {
        #[derive(Serialize)]
        struct Body<'a, S> {
            states: &'a tcpmon::model::StateCounts,
            listeners: &'a Listed<tcpmon::snapshot::analysis::Listener>,
            per_ip: &'a Listed<tcpmon::snapshot::analysis::IpCount>,
            per_port: &'a Listed<tcpmon::snapshot::analysis::PortCount>,
            close_wait: &'a Listed<tcpmon::snapshot::analysis::CloseWaitGroup>,
            /// Only when tcp_info was read.
            #[serde(skip_serializing_if = "Option::is_none")]
            retransmits: Option<&'a Listed<tcpmon::snapshot::analysis::Retransmits>>,
            stuck: &'a Listed<tcpmon::snapshot::analysis::Stuck>,
            findings: &'a S,
        }
        write_json(
            out,
            &loaded,
            Body {
                states: &s.states,
                listeners: &listeners,
                per_ip: &per_ip,
                per_port: &per_port,
                close_wait: &close_wait,
                retransmits: s.tcp_info.then_some(&retransmits),
                stuck: &stuck,
                findings: &findings,
            },
        )?;
        return Ok(Status::Clean);
    }
    write_header(out, &loaded, style)?;
    let cells = NamespaceCells::of(&loaded);
    let ns = cells.as_ref();
    if let (Some(read), Some(cells)) = (&loaded.namespaces, ns) {
        let all = &read.parts;
        let shown = &all[..limit.map_or(all.len(), |l| l.min(all.len()))];
        let listed =
            Listed::from_parts(shown.iter().map(|p| p.namespace.inode).collect(), all.len());
        listed_section(
            out,
            style,
            &format!("NAMESPACES ({})", all.len()),
            tables::namespaces_table(cells, shown),
            &listed,
            "namespaces",
        )?;
    }
    section(out, style, "STATES")?;
    let states = tables::states_table(s, false);
    if states.is_empty() {
        writeln!(out, "  (none)")?;
    } else {
        states.write(out, "  ")?;
    }
    listed_section(
        out,
        style,
        &format!("LISTENERS ({})", s.listeners.len()),
        tables::listeners_table(&listeners.items, ns),
        &listeners,
        "listeners",
    )?;
    listed_section(
        out,
        style,
        "TOP REMOTE IPS (listeners excluded)",
        tables::per_ip_table(&per_ip.items, ns),
        &per_ip,
        "remote IPs",
    )?;
    listed_section(
        out,
        style,
        "TOP PORTS (ESTABLISHED; in: local port, out: remote port of outgoing connections)",
        tables::per_port_table(&per_port.items, ns, args.snapshot.info && s.tcp_info),
        &per_port,
        "ports",
    )?;
    if args.snapshot.info && s.tcp_info {
        listed_section(
            out,
            style,
            "RETRANSMITS BY REMOTE IP (tcp_info)",
            tables::retransmits_table(&retransmits.items, ns),
            &retransmits,
            "remote IPs",
        )?;
    }
    if !s.stuck.is_empty() {
        listed_section(
            out,
            style,
            "PEERS NOT READING (zero window, data queued)",
            tables::stuck_table(&stuck.items, ns),
            &stuck,
            "remote IPs",
        )?;
    }
    if !s.close_wait.is_empty() {
        listed_section(
            out,
            style,
            "CLOSE_WAIT BY LEAK (server: local port and process; client: process and remote)",
            tables::close_wait_table(&close_wait.items, ns),
            &close_wait,
            "groups",
        )?;
    }
    section(out, style, &format!("FINDINGS ({})", findings.total))?;
    if findings.items.is_empty() {
        writeln!(out, "  none: no threshold crossed")?;
    } else {
        write_findings(out, &findings, style)?;
    }
    Ok(Status::Clean)
}
