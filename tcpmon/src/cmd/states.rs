//! `tcpmon states`: socket counts per TCP state.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::render::Style;

use super::{load, write_header, write_json};
use crate::cli::SnapshotArgs;

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<u8> {
    let loaded = load(args, &[], false)?;
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            states: &'a tcpmon::analysis::StateCounts,
        }
        write_json(
            out,
            &loaded,
            Body {
                states: &loaded.summary.states,
            },
        )?;
        return Ok(0);
    }
    write_header(out, &loaded, style)?;
    writeln!(out)?;
    super::states_table(&loaded.summary, true).write(out, "  ")?;
    Ok(0)
}
