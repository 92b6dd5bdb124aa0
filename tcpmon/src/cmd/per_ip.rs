//! `tcpmon per-ip`: connections per remote address.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::render::{Listed, Style};

use super::{load, write_header, write_json};
use crate::cli::SnapshotArgs;

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<u8> {
    let loaded = load(args, &[], false)?;
    let per_ip = Listed::cut(&loaded.summary.per_ip, args.limit());
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            per_ip: &'a Listed<tcpmon::analysis::IpCount>,
        }
        write_json(out, &loaded, Body { per_ip: &per_ip })?;
        return Ok(0);
    }
    write_header(out, &loaded, style)?;
    super::listed_section(
        out,
        style,
        &format!(
            "CONNECTIONS PER REMOTE IP ({} addresses, listeners excluded)",
            per_ip.total
        ),
        super::per_ip_table(&per_ip.items),
        &per_ip,
        "remote IPs",
    )?;
    Ok(0)
}
