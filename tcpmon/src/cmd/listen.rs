//! `tcpmon listen`: listening sockets.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    model::TcpState,
    render::{Listed, Style},
};

use super::{load, write_header, write_json};
use crate::cli::SnapshotArgs;

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<u8> {
    let mut args = args.clone();
    // Half-open requests must be counted to attribute them, so LISTEN alone is not enough.
    if !args.state.is_empty() && !args.state.contains(&TcpState::Listen) {
        args.state.push(TcpState::Listen);
    }
    let loaded = load(&args, &[], true)?;
    let listeners = Listed::cut(&loaded.summary.listeners, args.limit());
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            listeners: &'a Listed<tcpmon::analysis::Listener>,
        }
        write_json(
            out,
            &loaded,
            Body {
                listeners: &listeners,
            },
        )?;
        return Ok(0);
    }
    write_header(out, &loaded, style)?;
    super::listed_section(
        out,
        style,
        &format!("LISTENERS ({})", listeners.total),
        super::listeners_table(&listeners.items),
        &listeners,
        "listeners",
    )?;
    if loaded.summary.owners_unknown > 0 {
        writeln!(
            out,
            "  note: {} owner(s) not visible; run as root to see every process",
            loaded.summary.owners_unknown
        )?;
    }
    Ok(0)
}
