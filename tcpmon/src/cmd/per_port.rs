//! `tcpmon per-port`: ESTABLISHED connections per local port.
use std::io::Write;

use anyhow::Result;
use tcpmon::model::TcpState;
use tcpmon::output::table::{Listed, Style};

use super::{load, one_list, per_port_table, OneList, Want};
use crate::{cli::SnapshotArgs, exit::Status};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = load(
        args,
        Want {
            only: &[TcpState::Established],
            ..Want::default()
        },
    )?;
    let per_port = Listed::cut(&loaded.summary.per_port, args.limit());
    let title = format!("ESTABLISHED PER LOCAL PORT ({} ports)", per_port.total);
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
                loaded.namespaces.as_ref(),
                args.info && loaded.summary.tcp_info,
            ),
            what: "ports",
        },
    )?;
    Ok(Status::Clean)
}
