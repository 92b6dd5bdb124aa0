//! `tcpmon per-ip`: connections per remote address.
use std::io::Write;

use anyhow::Result;
use tcpmon::render::{Listed, Style};

use super::{load, one_list, per_ip_table, OneList};
use crate::cli::SnapshotArgs;

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<u8> {
    let loaded = load(args, &[], false)?;
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
            table: per_ip_table(&per_ip.items),
            what: "remote IPs",
        },
    )?;
    Ok(0)
}
