//! `tcpmon states`: socket counts per TCP state.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::output::table::Style;

use super::{load, write_header, write_json};
use crate::{cli::SnapshotArgs, exit::Status};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = load(args, &[], false)?;
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            states: &'a tcpmon::model::StateCounts,
        }
        write_json(
            out,
            &loaded,
            Body {
                states: &loaded.summary.states,
            },
        )?;
        return Ok(Status::Clean);
    }
    write_header(out, &loaded, style)?;
    writeln!(out)?;
    super::states_table(&loaded.summary, true).write(out, "  ")?;
    Ok(Status::Clean)
}
