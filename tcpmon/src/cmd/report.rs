//! `tcpmon report`: everything a snapshot says, in one read.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    output::table::{Listed, Style},
    snapshot::audit::cut,
};

use super::{load, section, write_header, write_json, Want};
use crate::{cli::ReportArgs, exit::Status};

pub fn run(args: &ReportArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = load(&args.snapshot, Want::AUDIT)?;
    let s = &loaded.summary;
    let limit = args.snapshot.limit();
    let findings = cut(&super::audit(&loaded, &args.thresholds.thresholds()), limit);
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
    let ns = loaded.namespaces.as_ref();
    if let Some(ns) = ns {
        let all = &ns.loaded.parts;
        let shown = &all[..limit.map_or(all.len(), |l| l.min(all.len()))];
        let listed =
            Listed::from_parts(shown.iter().map(|p| p.namespace.inode).collect(), all.len());
        super::listed_section(
            out,
            style,
            &format!("NAMESPACES ({})", all.len()),
            super::namespaces_table(ns, shown),
            &listed,
            "namespaces",
        )?;
    }
    section(out, style, "STATES")?;
    let states = super::states_table(s, false);
    if states.is_empty() {
        writeln!(out, "  (none)")?;
    } else {
        states.write(out, "  ")?;
    }
    super::listed_section(
        out,
        style,
        &format!("LISTENERS ({})", s.listeners.len()),
        super::listeners_table(&listeners.items, ns),
        &listeners,
        "listeners",
    )?;
    super::listed_section(
        out,
        style,
        "TOP REMOTE IPS (listeners excluded)",
        super::per_ip_table(&per_ip.items, ns),
        &per_ip,
        "remote IPs",
    )?;
    super::listed_section(
        out,
        style,
        "TOP LOCAL PORTS (ESTABLISHED)",
        super::per_port_table(&per_port.items, ns, args.snapshot.info && s.tcp_info),
        &per_port,
        "ports",
    )?;
    if args.snapshot.info && s.tcp_info {
        super::listed_section(
            out,
            style,
            "RETRANSMITS BY REMOTE IP (tcp_info)",
            super::retransmits_table(&retransmits.items, ns),
            &retransmits,
            "remote IPs",
        )?;
    }
    if !s.stuck.is_empty() {
        super::listed_section(
            out,
            style,
            "PEERS NOT READING (zero window, data queued)",
            super::stuck_table(&stuck.items, ns),
            &stuck,
            "remote IPs",
        )?;
    }
    if !s.close_wait.is_empty() {
        super::listed_section(
            out,
            style,
            "CLOSE_WAIT BY PORT AND PROCESS",
            super::close_wait_table(&close_wait.items, ns),
            &close_wait,
            "groups",
        )?;
    }
    section(out, style, &format!("FINDINGS ({})", findings.total))?;
    if findings.items.is_empty() {
        writeln!(out, "  none: no threshold crossed")?;
    } else {
        super::write_findings(out, &findings, style)?;
    }
    Ok(Status::Clean)
}
