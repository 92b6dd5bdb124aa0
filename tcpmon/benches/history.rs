//! What the history costs: one sample taken from a 10k-socket tally (serve's --top 20
//! lists, 100 listeners) and written, at steady state (rollups and pruning included as
//! they come, once a minute); `trends` over 30 days; and the file's size after a year of
//! a 10-second interval (simulated: a year of hourly rows, 30 days of minutes, 48 hours
//! of samples, which is what the tiers keep).
use std::{hint::black_box, net::IpAddr};

use criterion::{criterion_group, criterion_main, Criterion};
use tcpmon::{
    history::{
        report::{trends, TrendsQuery},
        History, Sample, Sampler,
    },
    host::proc_net::Socket,
    live::{
        fake::{ebpf_mode, FakeHost, FakeSource, RecordingSink},
        record::TallyRecord,
        Engine, EngineConfig,
    },
    model::TcpState,
};

/// 10k sockets: 100 listeners, 8,000 ESTABLISHED from 2,000 remote IPs, 1,500
/// TIME_WAIT, 300 CLOSE_WAIT over 30 ports, 100 handshakes.
fn host() -> FakeHost {
    let local = IpAddr::from([10, 0, 0, 5]);
    let peer = |i: u32| IpAddr::from((0xc633_0000u32 + i % 2000).to_be_bytes());
    let mut sockets = Vec::with_capacity(10_000);
    for port in 0..100u16 {
        sockets.push(Socket::new(
            TcpState::Listen,
            (IpAddr::from([0, 0, 0, 0]), 8000 + port),
            (IpAddr::from([0, 0, 0, 0]), 0),
            u64::from(port) + 1,
        ));
    }
    let mut add = |state, n: u32, port_of: &dyn Fn(u32) -> u16, remote_port: u16, inode0| {
        for i in 0..n {
            sockets.push(Socket::new(
                state,
                (local, port_of(i)),
                (peer(i), remote_port + (i / 2000) as u16),
                inode0 + u64::from(i),
            ));
        }
    };
    add(
        TcpState::Established,
        8000,
        &|i| 8000 + (i % 100) as u16,
        10_000,
        1000,
    );
    add(TcpState::TimeWait, 1500, &|i| 40_000 + i as u16, 5432, 0);
    add(
        TcpState::CloseWait,
        300,
        &|i| 8000 + (i % 30) as u16,
        20_000,
        200_000,
    );
    add(
        TcpState::SynRecv,
        100,
        &|i| 8000 + (i % 100) as u16,
        30_000,
        0,
    );
    FakeHost {
        sockets,
        own_netns: Some(4_026_531_840),
        ..FakeHost::default()
    }
}

fn tally() -> TallyRecord {
    let mut sink = RecordingSink::default();
    let config = EngineConfig {
        own_netns: Some(4_026_531_840),
        transitions: None,
        top: 20,
        ..EngineConfig::default()
    };
    let mut engine = Engine::start(
        config.validate().expect("a valid config"),
        host(),
        Some(FakeSource::default()),
        ebpf_mode("bench"),
        &mut sink,
    )
    .expect("a fake host always starts");
    engine.write_tally(&mut sink).expect("a tally");
    let t = sink.last_tally().clone();
    assert!(t.states.total() >= 9_000, "{:?}", t.states);
    t
}

/// A year's worth of what the tiers keep, ending at `end`.
fn year(h: &mut History, template: &Sample, end: i64) {
    let mut write = |from: i64, to: i64, step: i64| {
        let mut t = from;
        while t < to {
            let mut s = template.clone();
            s.time = t;
            // Vary the counts so that rows do not compress to nothing.
            for (i, v) in s.namespaces[0].values.iter_mut().enumerate() {
                *v += (t / step + i as i64) % 97;
            }
            h.record(&s).expect("written");
            t += step;
        }
    };
    write(end - 365 * 86_400, end - 30 * 86_400, 3600);
    write(end - 30 * 86_400, end - 2 * 86_400, 60);
    write(end - 2 * 86_400, end, 10);
}

fn history(c: &mut Criterion) {
    let record = tally();
    let mut sampler = Sampler::new(28_232);
    let template = sampler.sample(&record);
    eprintln!(
        "a sample of a 10k-socket tally: {} list entries, {} listeners",
        template.tops.len(),
        template.listeners.len()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("history.db");
    let mut h = History::open(&path, 100 << 20).expect("a history");
    let end = 1_800_000_000;
    year(&mut h, &template, end);
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len())
        + std::fs::metadata(dir.path().join("history.db-wal")).map_or(0, |m| m.len());
    eprintln!(
        "after a year at a 10 s interval: {:.1} MiB on disk ({:.1} MiB in use); rows: samples {}, rollup_1m {}, rollup_1h {}, tops {}, tops_1h {}",
        bytes as f64 / (1 << 20) as f64,
        h.used_bytes().unwrap() as f64 / (1 << 20) as f64,
        h.rows("samples").unwrap(),
        h.rows("rollup_1m").unwrap(),
        h.rows("rollup_1h").unwrap(),
        h.rows("tops").unwrap(),
        h.rows("tops_1h").unwrap(),
    );
    let mut t = end;
    c.bench_function("history_sample_10k_sockets", |b| {
        b.iter(|| {
            let mut s = sampler.sample(black_box(&record));
            s.time = t;
            t += 10;
            h.record(&s).expect("written");
        });
    });
    let reader = History::open_read(&path).expect("readable");
    for every in [3600, 86_400] {
        c.bench_function(&format!("trends_30_days_every_{every}s"), |b| {
            b.iter(|| {
                black_box(
                    trends(
                        &reader,
                        &TrendsQuery {
                            now: t,
                            since: t - 30 * 86_400,
                            until: t,
                            every,
                            netns: 0,
                            metrics: vec![0, 5, 7],
                            compare: Some(30 * 86_400),
                            listeners: true,
                        },
                    )
                    .expect("a report"),
                )
            });
        });
    }
}

criterion_group!(benches, history);
criterion_main!(benches);
