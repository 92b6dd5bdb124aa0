//! `tcpmon established`: ESTABLISHED connections.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    analysis::Connection,
    model::TcpState,
    render::{Listed, Style},
};

use super::{load, write_header, write_json};
use crate::cli::SnapshotArgs;

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<u8> {
    let loaded = load(args, &[TcpState::Established], false)?;
    let connections = &loaded.connections;
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            established: &'a Listed<Connection>,
        }
        write_json(
            out,
            &loaded,
            Body {
                established: connections,
            },
        )?;
        return Ok(0);
    }
    write_header(out, &loaded, style)?;
    super::listed_section(
        out,
        style,
        &format!("ESTABLISHED ({})", connections.total),
        super::connections_table(&connections.items, "TIMER"),
        connections,
        "connections",
    )?;
    Ok(0)
}
