//! The live consumer's cost per transition without the kernel: decoding ring records,
//! applying them to the tally and writing NDJSON, on a stream shaped like loopback churn
//! (both ends of each connection, 10 transitions, client ports cycling through the
//! ephemeral range so TIME_WAIT tuples get reused as they do under real churn).
use std::{hint::black_box, time::SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tcpmon::{
    event::{decode_event, Record},
    live::{Clock, FastWriter, Origin},
    tally::{Tally, TallyConfig},
};
use tcpmon_common::{kind, ShortEvent, SockEvent, AF_INET};

const CLOSE: u8 = 7;
const ESTABLISHED: u8 = 1;
const SYN_SENT: u8 = 2;
const SYN_RECV: u8 = 3;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const LISTEN: u8 = 10;

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
        let mut push = |sk: u64, local: u16, remote: u16, old: u8, new: u8, task: bool| {
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
            e.oldstate = old;
            e.newstate = new;
            if task {
                e.tgid = 4242;
                e.comm[..5].copy_from_slice(b"churn");
            }
            records.push(match ShortEvent::narrow(&e) {
                Some(short) => short.as_bytes().to_vec(),
                None => e.as_bytes().to_vec(),
            });
        };
        push(client_sk, 0, 7000, CLOSE, SYN_SENT, true);
        push(client_sk, client_port, 7000, SYN_SENT, ESTABLISHED, false);
        push(server_sk, 7000, client_port, LISTEN, SYN_RECV, false);
        push(server_sk, 7000, client_port, SYN_RECV, ESTABLISHED, false);
        push(client_sk, client_port, 7000, ESTABLISHED, FIN_WAIT1, true);
        push(server_sk, 7000, client_port, ESTABLISHED, CLOSE_WAIT, false);
        push(server_sk, 7000, client_port, CLOSE_WAIT, LAST_ACK, true);
        push(client_sk, client_port, 7000, FIN_WAIT1, FIN_WAIT2, false);
        push(client_sk, client_port, 7000, FIN_WAIT2, CLOSE, false);
        push(server_sk, 7000, client_port, LAST_ACK, CLOSE, false);
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
                writer.json(&t, &clock, applied.ms_in_old, Origin::Ebpf);
                if writer.buf.len() > 1 << 20 {
                    black_box(&writer.buf);
                    writer.buf.clear();
                }
            }
            black_box(tally.view(5).states.len())
        })
    });
    group.finish();
}

criterion_group!(benches, consume);
criterion_main!(benches);
