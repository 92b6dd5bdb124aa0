//! `tcpmon established`: ESTABLISHED connections.
use std::io::Write;

use anyhow::Result;
use tcpmon::{model::TcpState, output::table::Style};

use super::{connections_table, load, one_list, OneList, Want};
use crate::{cli::SnapshotArgs, exit::Status};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = load(
        args,
        Want {
            collect: &[TcpState::Established],
            only: &[TcpState::Established],
            ..Want::default()
        },
    )?;
    let connections = &loaded.connections;
    let title = format!("ESTABLISHED ({})", connections.total);
    let table = connections_table(
        &connections.items,
        "TIMER",
        loaded.namespaces.as_ref(),
        args.info && loaded.summary.tcp_info,
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
