//! The live engine's records written to a byte stream: human lines or NDJSON. Both are
//! generic over `io::Write`; the binary hands them stdout, tests a `Vec<u8>`.
use std::io::{self, Write};

use serde::Serialize;

use super::{human, ndjson::FastWriter, table::Style};
use crate::live::{
    record::{AlertRecord, ModeRecord, SummaryRecord, TallyRecord, TransitionEvent},
    Sink,
};

/// Human lines.
pub struct TextSink<W: Write> {
    out: W,
    style: Style,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, style: Style) -> Self {
        Self { out, style }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()> {
        writeln!(self.out, "tcpmon: {}", record.reason)
    }

    fn transition(&mut self, event: &TransitionEvent<'_>) -> io::Result<()> {
        human::transition_line(&mut self.out, event)
    }

    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()> {
        human::alert_line(&mut self.out, record, self.style)
    }

    fn tally(&mut self, record: &TallyRecord) -> io::Result<()> {
        human::tally_line(&mut self.out, record)
    }

    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        // The final tally said it all on stdout; the binary adds a line on stderr.
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Pending NDJSON bytes written in one go: larger than a BufWriter's buffer, so they
/// bypass it, and small enough that the reused buffer stays in cache (64 KiB is also a
/// default pipe's capacity).
const RECORD_FLUSH_BYTES: usize = 64 << 10;

/// NDJSON: one record per line, each with a `type`.
pub struct NdjsonSink<W: Write> {
    out: W,
    /// Transition records pile up here and are written out in large pieces.
    fast: FastWriter,
}

impl<W: Write> NdjsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            fast: FastWriter::default(),
        }
    }

    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush_records()?;
        Ok(self.out)
    }

    /// Writes pending transition records; every other record calls this first, so the
    /// output keeps the order things happened in.
    fn flush_records(&mut self) -> io::Result<()> {
        if !self.fast.buf.is_empty() {
            self.out.write_all(&self.fast.buf)?;
            self.fast.buf.clear();
        }
        Ok(())
    }

    fn line(&mut self, kind: &'static str, record: &impl Serialize) -> io::Result<()> {
        #[derive(Serialize)]
        struct Typed<'a, T> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            record: &'a T,
        }
        self.flush_records()?;
        serde_json::to_writer(&mut self.out, &Typed { kind, record }).map_err(io::Error::from)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for NdjsonSink<W> {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()> {
        self.line("mode", record)
    }

    #[inline]
    fn transition(&mut self, event: &TransitionEvent<'_>) -> io::Result<()> {
        self.fast.json(
            event.transition,
            event.clock,
            event.micros_in_old,
            event.origin,
        );
        if self.fast.buf.len() >= RECORD_FLUSH_BYTES {
            self.flush_records()?;
        }
        Ok(())
    }

    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()> {
        self.line("alert", record)
    }

    fn tally(&mut self, record: &TallyRecord) -> io::Result<()> {
        self.line("tally", record)
    }

    fn summary(&mut self, record: &SummaryRecord) -> io::Result<()> {
        self.line("summary", record)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()?;
        self.out.flush()
    }
}
