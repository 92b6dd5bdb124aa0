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
        human::tally_line(&mut self.out, record)?;
        human::namespaces_line(&mut self.out, record)
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::Value;

    use super::*;
    use crate::{
        host::clock::Clock,
        live::{
            fake::{FakeHost, FakeSource},
            record::{Mode, SCHEMA_VERSION},
            Engine, EngineConfig,
        },
        model::{Endpoints, Family, Origin, Task, TcpState, Transition},
    };

    fn hostile_transition() -> Transition {
        let mut comm = [0u8; 16];
        comm[..10].copy_from_slice(b"\x1b[1A\x1b[2Kok");
        Transition {
            at: Endpoints {
                ts_ns: 5_000_000_000,
                skaddr: 0xffff_8881_0000_1000,
                netns: 4026531840,
                family: Family::Ipv6,
                local_ip: "::1".parse().unwrap(),
                local_port: 41000,
                remote_ip: "::1".parse().unwrap(),
                remote_port: 80,
            },
            old: TcpState::Established,
            new: TcpState::FinWait1,
            task: Some(Task { pid: 4242, comm }),
        }
    }

    #[test]
    fn text_lines_escape_hostile_process_names_and_json_keeps_them() {
        let clock = Clock::fixed(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            5_000_000_000,
        );
        let t = hostile_transition();
        let event = TransitionEvent {
            transition: &t,
            micros_in_old: Some(1500),
            origin: Origin::Ebpf,
            clock: &clock,
        };
        let mut text = TextSink::new(Vec::new(), Style::default());
        text.transition(&event).unwrap();
        let line = String::from_utf8(text.into_inner()).unwrap();
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(line.contains("\\e[1A\\e[2Kok[4242]"), "{line}");
        assert!(line.starts_with("08:00:00.000000  [::1]:41000"), "{line}");
        assert!(
            line.contains("ESTABLISHED -> FIN_WAIT1") && line.contains("1.5ms"),
            "{line}"
        );

        let mut json = NdjsonSink::new(Vec::new());
        json.transition(&event).unwrap();
        let bytes = json.into_inner().unwrap();
        let record: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(record["comm"], "\x1b[1A\x1b[2Kok");
        assert_eq!(record["type"], "transition");
    }

    #[test]
    fn every_record_type_is_one_ndjson_line_in_order() {
        let mut sink = NdjsonSink::new(Vec::new());
        let mut engine = Engine::start(
            EngineConfig::default().validate().expect("a valid config"),
            FakeHost::default(),
            Some(FakeSource::default()),
            crate::live::record::ModeRecord {
                schema_version: SCHEMA_VERSION,
                mode: Mode::Ebpf,
                reason: "testing".into(),
                notes: vec!["a note".into()],
                fell_back: false,
                poll_interval: None,
            },
            &mut sink,
        )
        .unwrap();
        engine
            .source_mut()
            .unwrap()
            .push(crate::ebpf::decode::encode_transition(&hostile_transition()));
        engine.drain(&mut sink).unwrap();
        engine.finish(&mut sink).unwrap();
        let bytes = sink.into_inner().unwrap();
        let kinds: Vec<String> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Value = serde_json::from_slice(l).unwrap();
                v["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(kinds, ["mode", "transition", "tally", "summary"]);
    }
}
