//! `tcpmon per-port`: ESTABLISHED connections per local port.
use std::io::Write;

use anyhow::Result;
use tcpmon::{
    model::{Listed, TcpState},
    output::table::Style,
    snapshot::Want,
};

use crate::{
    cli::SnapshotArgs,
    exit::Status,
    render::{
        lists::{one_list, OneList},
        tables::per_port_table,
        NamespaceCells,
    },
};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = super::read(
        args,
        Want {
            only: vec![TcpState::Established],
            ..Want::default()
        },
    )?;
    let per_port = Listed::cut(&loaded.summary.per_port, args.limit());
    let title = format!(
        "ESTABLISHED PER PORT ({} ports; in: accepted on a local port, out: made from ephemeral \
         ports to a remote port)",
        per_port.total
    );
    one_list(
        out,
        &loaded,
        args.json,
        style,
        OneList {
            field: "per_port",
            listed: &per_port,
            title,
            table: per_port_table(
                &per_port.items,
                NamespaceCells::of(&loaded).as_ref(),
                args.info && loaded.summary.tcp_info,
            ),
            what: "ports",
        },
    )?;
    Ok(Status::Clean)
}
