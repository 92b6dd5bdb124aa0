//! Snapshot commands as JSON: one document, the envelope (how it was read) flattened with
//! the command's own fields (docs/schema/snapshot.schema.json).
use std::io::{self, Write};

use serde::Serialize;
use tcpmon::snapshot::{Envelope, SnapshotRead};

pub fn write_json(
    out: &mut dyn Write,
    read: &SnapshotRead,
    body: impl Serialize,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct Doc<'a, T> {
        #[serde(flatten)]
        envelope: Envelope<'a>,
        #[serde(flatten)]
        body: T,
    }
    serde_json::to_writer_pretty(
        &mut *out,
        &Doc {
            envelope: read.envelope(),
            body,
        },
    )?;
    writeln!(out)
}
