//! What a scrape costs: encoding a snapshot of ~10k series (1000 listeners, 1000 remote
//! IPs, CLOSE_WAIT ports and destinations, every transition pair) into the Prometheus
//! text format and OpenMetrics. Scrapes between two snapshots are served from a cache,
//! so this is paid once per snapshot, not per scrape.
use std::{hint::black_box, net::IpAddr};

use criterion::{criterion_group, criterion_main, Criterion};
use tcpmon::{
    live::{
        fake::{ebpf_mode, FakeHost, FakeSource, RecordingSink},
        record::{
            CloseWaitRecord, DestinationRecord, IpCountRecord, ListenerRecord, PairCount, SynTotals,
        },
        tally::Since,
        Engine, EngineConfig,
    },
    model::{CloseWaitSide, Process, TcpState},
    output::metrics::{encode, Format, MetricsSnapshot, ProcessUsage},
};

fn snapshot() -> MetricsSnapshot {
    let mode = ebpf_mode("bench");
    let mut sink = RecordingSink::default();
    let mut engine = Engine::start(
        EngineConfig::default().validate().expect("a valid config"),
        FakeHost::default(),
        Some(FakeSource::default()),
        mode.clone(),
        &mut sink,
    )
    .expect("a fake host always starts");
    let mut tally = engine.tally_record();
    tally.listeners = (0..1000u16)
        .map(|p| ListenerRecord {
            listener: format!("0.0.0.0:{}", 10_000 + p),
            sockets: 1,
            backlog: Some(4096),
            accept_queue: Some(p.into()),
            drops: Some(u64::from(p % 3)),
            half_open: u64::from(p % 7),
            syn: SynTotals {
                syns: u64::from(p) * 31,
                synack_retransmits: u64::from(p),
            },
            owners: Some(vec![Process {
                pid: 2000 + u32::from(p),
                comm: "nginx".into(),
            }]),
        })
        .collect();
    tally.per_ip.top = (0..1000u32)
        .map(|i| IpCountRecord {
            ip: IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()),
            count: u64::from(1000 - i),
        })
        .collect();
    tally.per_ip.time_wait_top = (0..1000u32)
        .map(|i| IpCountRecord {
            ip: IpAddr::from((0x0b00_0000u32 + i).to_be_bytes()),
            count: u64::from(1000 - i),
        })
        .collect();
    tally.close_wait = (0..1000u16)
        .map(|p| CloseWaitRecord {
            side: if p % 2 == 0 {
                CloseWaitSide::Server {
                    local_port: 20_000 + p,
                }
            } else {
                CloseWaitSide::Client {
                    remote: std::net::SocketAddr::from(([10, 1, (p >> 8) as u8, p as u8], 6379)),
                }
            },
            count: 3,
            oldest_secs: 61.5,
            since: Since::Seen,
            owners: Some(vec![Process {
                pid: 1000 + u32::from(p),
                comm: "java".into(),
            }]),
        })
        .collect();
    tally.time_wait_by_destination = (0..1000u32)
        .map(|i| DestinationRecord {
            destination: format!("10.1.{}.{}:5432", i / 256, i % 256),
            time_wait: 100,
            ratio: 0.0035,
        })
        .collect();
    tally.transitions_by_pair = TcpState::ALL
        .iter()
        .flat_map(|&old| TcpState::ALL.iter().map(move |&new| (old, new)))
        .map(|(old, new)| PairCount {
            old,
            new,
            count: 12_345,
        })
        .collect();
    MetricsSnapshot {
        mode: Some(mode),
        tally: Some(tally),
        ..MetricsSnapshot::default()
    }
}

fn exposition(c: &mut Criterion) {
    let snapshot = snapshot();
    let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!("{series} series, {} bytes", text.len());
    let mut group = c.benchmark_group("exposition");
    group.sample_size(30);
    group.bench_function("prometheus_text", |b| {
        b.iter(|| {
            black_box(encode(
                &snapshot,
                ProcessUsage::default(),
                Format::Prometheus,
            ))
        })
    });
    group.bench_function("openmetrics", |b| {
        b.iter(|| {
            black_box(encode(
                &snapshot,
                ProcessUsage::default(),
                Format::OpenMetrics,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, exposition);
criterion_main!(benches);
