//! `tcpmon per-ip`: connections per remote address.
use std::io::Write;

use anyhow::Result;
use tcpmon::{model::Listed, output::table::Style, snapshot::Want};

use crate::{
    cli::SnapshotArgs,
    exit::Status,
    render::{
        lists::{one_list, OneList},
        tables::per_ip_table,
        NamespaceCells,
    },
};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = super::read(args, Want::default())?;
    let per_ip = Listed::cut(&loaded.summary.per_ip, args.limit());
    let title = format!(
        "CONNECTIONS PER REMOTE IP ({} addresses, listeners excluded)",
        per_ip.total
    );
    one_list(
        out,
        &loaded,
        args.json,
        style,
        OneList {
            field: "per_ip",
            listed: &per_ip,
            title,
            table: per_ip_table(&per_ip.items, NamespaceCells::of(&loaded).as_ref()),
            what: "remote IPs",
        },
    )?;
    Ok(Status::Clean)
}
