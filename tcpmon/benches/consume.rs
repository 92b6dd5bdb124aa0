//! The live consumer's cost per transition without the kernel: decoding ring records,
//! applying them to the tally and writing NDJSON, on a stream shaped like loopback churn
//! (both ends of each connection, 10 transitions, client ports cycling through the
//! ephemeral range so TIME_WAIT tuples get reused as they do under real churn).
//!
//! `engine+ndjson` is the path `watch --json` runs: the library engine draining a source
//! into its NDJSON sink. The other cases time the pieces alone.
use std::{hint::black_box, time::SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tcpmon::{
    ebpf::{
        decode::{decode_event, Record},
        order::Reorder,
        slots::{encode, walk},
    },
    host::clock::Clock,
    live::{
        fake::{ebpf_mode, FakeHost, FakeSource},
        tally::{Tally, TallyConfig},
        Engine, EngineConfig,
    },
    model::{
        Origin,
        TcpState::{self, *},
    },
    output::{live::NdjsonSink, ndjson::FastWriter},
};
use tcpmon_common::{kind, ShortEvent, Slot, SockEvent, AF_INET};

/// The records `connections` loopback connections leave in the rings, in order, each
/// as the kernel writes it (short when it has a short form).
fn stream(connections: usize) -> Vec<Vec<u8>> {
    let loopback = [127, 0, 0, 1];
    let mut records = Vec::with_capacity(connections * 10);
    let mut ts = 1_000_000_000u64;
    for i in 0..connections {
        let client_port = 32_768 + (i % 28_232) as u16;
        let client_sk = 0xffff_8881_0000_0000 + (i as u64 % 4096) * 0x2000;
        let server_sk = client_sk + 0x1000;
        let mut push =
            |sk: u64, local: u16, remote: u16, old: TcpState, new: TcpState, task: bool| {
                ts += 1_000;
                let mut e = SockEvent::zeroed();
                e.ts_ns = ts;
                e.skaddr = sk;
                e.saddr[..4].copy_from_slice(&loopback);
                e.daddr[..4].copy_from_slice(&loopback);
                e.netns = 4_026_531_840;
                e.sport = local;
                e.dport = remote;
                e.family = AF_INET;
                e.kind = kind::STATE;
                e.oldstate = old as u8;
                e.newstate = new as u8;
                if task {
                    e.tgid = 4242;
                    e.comm[..5].copy_from_slice(b"churn");
                }
                records.push(match ShortEvent::narrow(&e) {
                    Some(short) => short.as_bytes().to_vec(),
                    None => e.as_bytes().to_vec(),
                });
            };
        push(client_sk, 0, 7000, Close, SynSent, true);
        push(client_sk, client_port, 7000, SynSent, Established, false);
        push(server_sk, 7000, client_port, Listen, SynRecv, false);
        push(server_sk, 7000, client_port, SynRecv, Established, false);
        push(client_sk, client_port, 7000, Established, FinWait1, true);
        push(server_sk, 7000, client_port, Established, CloseWait, false);
        push(server_sk, 7000, client_port, CloseWait, LastAck, true);
        push(client_sk, client_port, 7000, FinWait1, FinWait2, false);
        push(client_sk, client_port, 7000, FinWait2, Close, false);
        push(server_sk, 7000, client_port, LastAck, Close, false);
    }
    records
}

fn consume(c: &mut Criterion) {
    let records = stream(100_000);
    let clock = Clock::fixed(SystemTime::UNIX_EPOCH, 0);
    let mut group = c.benchmark_group("consume");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(20);
    group.bench_function("decode+tally+json", |b| {
        b.iter(|| {
            let mut tally = Tally::new(TallyConfig::default());
            let mut writer = FastWriter::default();
            for raw in &records {
                let event = SockEvent::from_bytes(raw).expect("record size");
                let Ok(Record::Transition(t)) = decode_event(&event) else {
                    unreachable!("only state records here")
                };
                let applied = tally.apply(&t);
                writer.json(&t, &clock, applied.micros_in_old, Origin::Ebpf);
                if writer.buf.len() > 64 << 10 {
                    black_box(&writer.buf);
                    writer.buf.clear();
                }
            }
            black_box(tally.view(5).states.total())
        })
    });
    // The whole engine as `watch --json` runs it: records drained from a source (here a
    // fake one, handing out the stream in batches as the rings do), decoded, tallied and
    // written by the NDJSON sink to a byte sink.
    let events: Vec<SockEvent> = records
        .iter()
        .map(|raw| SockEvent::from_bytes(raw).expect("record size"))
        .collect();
    group.bench_function("engine+ndjson", |b| {
        b.iter(|| {
            let mut sink = NdjsonSink::new(std::io::sink());
            let mode = ebpf_mode("bench");
            let mut engine = Engine::start(
                EngineConfig::default().validate().expect("a valid config"),
                FakeHost::default(),
                Some(FakeSource::default()),
                mode,
                &mut sink,
            )
            .expect("a fake host always starts");
            for batch in events.chunks(4096) {
                let source = engine.source_mut().expect("eBPF mode");
                source.pending.extend_from_slice(batch);
                engine.drain(&mut sink).expect("a byte sink never fails");
            }
            black_box(engine.received().transitions)
        })
    });
    // The NDJSON writer alone, on the same transitions decoded once, stamped as on a host
    // up for days (15-digit ts_ns, as the kernel's clock gives them there).
    let uptime_ns = 5 * 86_400 * 1_000_000_000;
    let mut tally = Tally::new(TallyConfig::default());
    let decoded: Vec<_> = records
        .iter()
        .map(|raw| {
            let event = SockEvent::from_bytes(raw).expect("record size");
            let Ok(Record::Transition(mut t)) = decode_event(&event) else {
                unreachable!("only state records here")
            };
            let micros = tally.apply(&t).micros_in_old;
            t.at.ts_ns += uptime_ns;
            (t, micros)
        })
        .collect();
    group.bench_function("json", |b| {
        b.iter(|| {
            let mut writer = FastWriter::default();
            for (t, micros) in &decoded {
                writer.json(t, &clock, *micros, Origin::Ebpf);
                if writer.buf.len() > 64 << 10 {
                    black_box(&writer.buf);
                    writer.buf.clear();
                }
            }
            black_box(writer.buf.len())
        })
    });
    // The quiet path as the reader runs it (--quiet-transitions): records walked out of
    // two slot rings (one per CPU) in passes of a few thousand, put back in time order,
    // decoded and tallied, without entry times as nothing shows them.
    let rings = two_slot_rings(&records);
    group.bench_function("slots+reorder+decode+tally", |b| {
        b.iter(|| {
            let mut tally = Tally::new(TallyConfig {
                max_tracked_sockets: 0,
                ..TallyConfig::default()
            });
            let mut reorder = Reorder::default();
            let mut positions = [0u64; 2];
            // The clock when a pass starts: after every record read so far was stamped.
            let mut newest = 0;
            loop {
                let pass_started = newest + 1;
                let mut any = false;
                for (index, (ring, starts)) in rings.iter().enumerate() {
                    // A pass ends where the kernel had got to: at a record's start.
                    let target = positions[index] + PASS_SLOTS;
                    let next = starts.partition_point(|&start| start < target);
                    let end = starts.get(next).or(starts.last()).copied().unwrap_or(0);
                    let at = walk(
                        ring.len() as u64 - 1,
                        positions[index],
                        end,
                        u64::MAX,
                        |i| ring[i],
                        |record| {
                            newest = newest.max(record.ts_ns);
                            reorder.push(index, record)
                        },
                    )
                    .expect("well-formed slots");
                    any |= at > positions[index];
                    positions[index] = at;
                }
                reorder.release(pass_started, |raw| {
                    let Ok(Record::Transition(t)) = decode_event(raw) else {
                        unreachable!("only state records here")
                    };
                    black_box(tally.apply(&t));
                });
                if !any && reorder.is_empty() {
                    break;
                }
            }
            black_box(tally.view(5).states.total())
        })
    });
    group.finish();
}

/// Slots one pass finds in a ring: about 1500 records, what a pass found under max churn
/// with 5 ms doorbells. With today's 20 ms ones a pass finds up to four times as many
/// (the reader caps a pass at 8192 slots); kept, so that figures stay comparable.
const PASS_SLOTS: u64 = 2048;

/// The records in two slot rings as the kernel writes them, client sockets' records on
/// one CPU and server ones on the other; each ring holds every record once, its length a
/// power of two (the rest empty slots), with the positions where records start (and,
/// last, where they end).
fn two_slot_rings(records: &[Vec<u8>]) -> [(Vec<Slot>, Vec<u64>); 2] {
    let mut rings = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for raw in records {
        let record = SockEvent::from_bytes(raw).expect("record size");
        // Server sockets sit at odd pages in `stream` (client + 0x1000).
        let (ring, starts) = &mut rings[(record.skaddr >> 12) as usize % 2];
        starts.push(ring.len() as u64);
        ring.extend(encode(&record));
    }
    rings.map(|(mut ring, mut starts)| {
        starts.push(ring.len() as u64);
        ring.resize(ring.len().next_power_of_two(), Slot::default());
        (ring, starts)
    })
}

criterion_group!(benches, consume);
criterion_main!(benches);
