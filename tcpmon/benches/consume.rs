//! The live consumer's cost per transition without the kernel: decoding ring records,
//! applying them to the tally and writing NDJSON, on a stream shaped like loopback churn
//! (both ends of each connection, 10 transitions, client ports cycling through the
//! ephemeral range so TIME_WAIT tuples get reused as they do under real churn).
use std::{hint::black_box, time::SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tcpmon::{
    event::{decode_event, Record},
    live::{Clock, FastWriter, Origin},
    model::TcpState::{self, *},
    order::Reorder,
    ringbuf::walk,
    tally::{Tally, TallyConfig},
};
use tcpmon_common::{kind, ShortEvent, SockEvent, AF_INET};

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
            black_box(tally.view(5).states.len())
        })
    });
    // The quiet path as the reader runs it (--quiet-transitions): records walked out of
    // two rings (one per CPU) in passes of a few thousand, put back in time order, decoded
    // and tallied, without entry times as nothing shows them.
    let rings = two_rings(&records);
    group.bench_function("rings+reorder+decode+tally", |b| {
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
                for (index, (ring, used)) in rings.iter().enumerate() {
                    let end = (positions[index] + PASS_BYTES).min(*used);
                    let walk = walk(
                        ring,
                        ring.len() as u64 / 2 - 1,
                        positions[index],
                        end,
                        |at| u32::from_le_bytes(ring[at..at + 4].try_into().expect("4 bytes")),
                        |item| {
                            let record = SockEvent::from_bytes(item).expect("record size");
                            newest = newest.max(record.ts_ns);
                            reorder.push(index, record)
                        },
                    );
                    positions[index] = walk.position;
                    any |= walk.records > 0;
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
            black_box(tally.view(5).states.len())
        })
    });
    group.finish();
}

/// Bytes one pass finds in a ring: about 1500 records, as under max churn with the
/// reader woken every 5 ms.
const PASS_BYTES: u64 = 64 << 10;

/// The records laid out in two ring data areas as the kernel writes them (8-byte header,
/// 8-byte aligned), client sockets' records on one CPU and server ones on the other; each
/// area holds every record once (with the bytes used), twice the size as the real
/// mapping is.
fn two_rings(records: &[Vec<u8>]) -> [(Vec<u8>, u64); 2] {
    let mut rings = [Vec::new(), Vec::new()];
    for record in records {
        // Server sockets sit at odd pages in `stream` (client + 0x1000).
        let skaddr = u64::from_ne_bytes(record[8..16].try_into().expect("8 bytes"));
        let ring = &mut rings[(skaddr >> 12) as usize % 2];
        ring.extend_from_slice(&(record.len() as u32).to_le_bytes());
        ring.extend_from_slice(&[0; 4]);
        ring.extend_from_slice(record);
        ring.resize(ring.len().next_multiple_of(8), 0);
    }
    rings.map(|mut ring| {
        let used = ring.len() as u64;
        let size = ring.len().next_power_of_two();
        ring.resize(2 * size, 0);
        (ring, used)
    })
}

criterion_group!(benches, consume);
criterion_main!(benches);
