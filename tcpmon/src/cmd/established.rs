//! `tcpmon established`: ESTABLISHED connections.
use std::io::Write;

use anyhow::Result;
use tcpmon::{model::TcpState, output::table::Style, snapshot::Want};

use crate::{
    cli::SnapshotArgs,
    exit::Status,
    render::{
        lists::{one_list, OneList},
        tables::connections_table,
        NamespaceCells,
    },
};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = super::read(
        args,
        Want {
            connections: vec![TcpState::Established],
            only: vec![TcpState::Established],
            ..Want::default()
        },
    )?;
    let connections = &loaded.connections;
    let title = format!("ESTABLISHED ({})", connections.total);
    let table = connections_table(
        &connections.items,
        "TIMER",
        NamespaceCells::of(&loaded).as_ref(),
        args.shows_info() && loaded.summary.tcp_info,
        args.processes,
    );
    one_list(
        out,
        &loaded,
        args.json,
        style,
        OneList {
            field: "established",
            listed: connections,
            title,
            table,
            what: "connections",
        },
    )?;
    Ok(Status::Clean)
}
