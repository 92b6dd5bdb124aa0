//! `tcpmon per-port`: ESTABLISHED connections per local port.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::render::{Listed, Style};

use super::{load, write_header, write_json};
use crate::cli::SnapshotArgs;

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<u8> {
    let loaded = load(args, &[], false)?;
    let per_port = Listed::cut(&loaded.summary.per_port, args.limit());
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            per_port: &'a Listed<tcpmon::analysis::PortCount>,
        }
        write_json(
            out,
            &loaded,
            Body {
                per_port: &per_port,
            },
        )?;
        return Ok(0);
    }
    write_header(out, &loaded, style)?;
    super::listed_section(
        out,
        style,
        &format!("ESTABLISHED PER LOCAL PORT ({} ports)", per_port.total),
        super::per_port_table(&per_port.items),
        &per_port,
        "ports",
    )?;
    Ok(0)
}
