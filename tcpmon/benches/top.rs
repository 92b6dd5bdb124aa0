//! What a frame of `tcpmon top` costs at 200x60 (and 80x24) when the engine tallies 100k
//! sockets: 90k ESTABLISHED from 5,000 remote IPs, 6k TIME_WAIT, 2k CLOSE_WAIT over 100
//! ports, 2k listeners' worth of handshakes, five minutes of history. The frame is what
//! the screen thread does each redraw: build every pane's rows (filter, sort) and draw
//! them; the copy of the dashboard it draws from is measured apart.
use std::{hint::black_box, net::IpAddr};

use criterion::{criterion_group, criterion_main, Criterion};
use ratatui::{backend::TestBackend, Terminal};
use tcpmon::{
    host::proc_net::Socket,
    live::{
        fake::{ebpf_mode, FakeHost, FakeSource},
        Engine, EngineConfig,
    },
    model::TcpState,
    top::{self, Dashboard, Theme, TopSink, View, HISTORY_SAMPLES},
};

fn host() -> FakeHost {
    let local = IpAddr::from([10, 0, 0, 5]);
    let peer = |i: u32| IpAddr::from((0xc633_0000u32 + i % 5000).to_be_bytes());
    let mut sockets = Vec::with_capacity(100_000);
    for port in 0..200u16 {
        sockets.push(Socket::new(
            TcpState::Listen,
            (IpAddr::from([0, 0, 0, 0]), 8000 + port),
            (IpAddr::from([0, 0, 0, 0]), 0),
            u64::from(port) + 1,
        ));
    }
    for i in 0..90_000u32 {
        sockets.push(Socket::new(
            TcpState::Established,
            (local, 8000 + (i % 200) as u16),
            (peer(i), 10_000 + (i / 5000) as u16),
            1000 + u64::from(i),
        ));
    }
    for i in 0..6_000u32 {
        let mut tw = Socket::new(
            TcpState::TimeWait,
            (local, 40_000 + (i % 20_000) as u16),
            (peer(i), 5432),
            0,
        );
        tw.timer_jiffies = 5000;
        sockets.push(tw);
    }
    for i in 0..2_000u32 {
        sockets.push(Socket::new(
            TcpState::CloseWait,
            (local, 8000 + (i % 100) as u16),
            (peer(i + 7), 20_000 + (i / 100) as u16),
            200_000 + u64::from(i),
        ));
    }
    for i in 0..1_800u32 {
        sockets.push(Socket::new(
            TcpState::SynRecv,
            (local, 8000 + (i % 200) as u16),
            (peer(i + 11), 30_000 + (i / 200) as u16),
            0,
        ));
    }
    FakeHost {
        sockets,
        own_netns: Some(4_026_531_840),
        ..FakeHost::default()
    }
}

fn dashboard() -> Dashboard {
    let mut sink = TopSink::default();
    let config = EngineConfig {
        own_netns: Some(4_026_531_840),
        transitions: None,
        top: 200,
        ..EngineConfig::default()
    };
    let mode = ebpf_mode("bench");
    let mut engine = Engine::start(
        config.validate().expect("a valid config"),
        host(),
        Some(FakeSource::default()),
        mode,
        &mut sink,
    )
    .expect("a fake host always starts");
    for _ in 0..HISTORY_SAMPLES {
        engine.host_mut().now_ns += 1_000_000_000;
        engine.write_tally(&mut sink).expect("a tally");
    }
    let dash = top::lock(&sink.shared).clone();
    let states = dash.latest.as_ref().expect("a tally").states;
    assert!(states.total() >= 99_000, "{states:?}");
    dash
}

fn frame(c: &mut Criterion) {
    let dash = dashboard();
    let view = View::default();
    for (width, height) in [(200, 60), (80, 24)] {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a backend");
        c.bench_function(&format!("top_frame_{width}x{height}_100k_sockets"), |b| {
            b.iter(|| {
                terminal
                    .draw(|f| top::draw(f, black_box(&dash), &view, Theme { color: true }))
                    .expect("drawn");
            });
        });
    }
    c.bench_function("top_dashboard_copy_100k_sockets", |b| {
        b.iter(|| black_box(dash.clone()));
    });
}

criterion_group!(benches, frame);
criterion_main!(benches);
