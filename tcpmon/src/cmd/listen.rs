//! `tcpmon listen`: listening sockets.
use std::io::Write;

use anyhow::Result;
use tcpmon::{
    model::{Listed, TcpState},
    output::table::Style,
    snapshot::{audit::owners_hidden_why, Want},
};

use crate::{
    cli::SnapshotArgs,
    exit::Status,
    render::{
        lists::{one_list, OneList},
        tables::listeners_table,
        NamespaceCells,
    },
};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let mut args = args.clone();
    // Half-open requests must be counted to attribute them, so LISTEN alone is not enough.
    if !args.state.is_empty() && !args.state.contains(&TcpState::Listen) {
        args.state.push(TcpState::Listen);
    }
    let loaded = super::read(
        &args,
        Want {
            owners: true,
            only: vec![TcpState::Listen, TcpState::SynRecv],
            ..Want::default()
        },
    )?;
    let listeners = Listed::cut(&loaded.summary.listeners, args.limit());
    let title = format!("LISTENERS ({})", listeners.total);
    let table = listeners_table(&listeners.items, NamespaceCells::of(&loaded).as_ref());
    one_list(
        out,
        &loaded,
        args.json,
        style,
        OneList {
            field: "listeners",
            listed: &listeners,
            title,
            table,
            what: "listeners",
        },
    )?;
    if !args.json && loaded.summary.owners_unknown > 0 {
        writeln!(
            out,
            "  note: the owner of {} listener(s) was not found: {}",
            loaded.summary.owners_unknown,
            owners_hidden_why(&loaded.summary.owners_refused)
        )?;
    }
    Ok(Status::Clean)
}
