//! `tcpmon states`: socket counts per TCP state.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    model::TcpState,
    output::table::{thousands, Align, Style, Table},
    snapshot::{analysis::Summary, namespaces::Loaded, Want},
};

use crate::{
    cli::SnapshotArgs,
    exit::Status,
    render::{header::write_header, json::write_json, tables::states_table, NamespaceCells},
};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = super::read(args, Want::default())?;
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            states: &'a tcpmon::model::StateCounts,
        }
        write_json(
            out,
            &loaded,
            Body {
                states: &loaded.summary.states,
            },
        )?;
        return Ok(Status::Clean);
    }
    write_header(out, &loaded, style)?;
    writeln!(out)?;
    match &loaded.namespaces {
        Some(ns) => per_namespace_table(ns, &loaded.summary).write(out, "  ")?,
        None => states_table(&loaded.summary, true).write(out, "  ")?,
    }
    Ok(Status::Clean)
}

/// A row per namespace, a column per state that any namespace has, and the total.
fn per_namespace_table(ns: &Loaded, total: &Summary) -> Table {
    let cells = NamespaceCells::new(ns);
    let states: Vec<TcpState> = TcpState::ALL
        .iter()
        .copied()
        .filter(|s| total.states.get(*s) > 0)
        .collect();
    let mut columns = vec![
        ("NETNS", Align::Left),
        ("INODE", Align::Right),
        ("TOTAL", Align::Right),
    ];
    columns.extend(states.iter().map(|s| (s.name(), Align::Right)));
    let mut table = Table::new(&columns);
    let mut add = |name: String, inode: String, summary: &Summary| {
        let mut cells = vec![name, inode, thousands(summary.total)];
        cells.extend(states.iter().map(|s| thousands(summary.states.get(*s))));
        table.row(cells);
    };
    for part in &ns.parts {
        let inode = part.namespace.inode;
        add(cells.cell(Some(inode)), inode.to_string(), &part.summary);
    }
    add("TOTAL".into(), String::new(), total);
    table
}
