//! Golden output of the live side: `watch`'s text lines for every record type (mode,
//! transitions eBPF and inferred, alerts raised, changed, cleared and one-off, the tally,
//! the namespaces line) and the Prometheus exposition of the same engine state, pinned as
//! reviewed insta snapshots. The engine runs over the fake host and source, whose clocks
//! are fixed, so nothing needs scrubbing. A last test holds docs/METRICS.md and the
//! exposition to each other.
mod common;

use common::{ip, pod, transition, NETNS, POD_NETNS, SEC};

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tcpmon::{
    ebpf::decode::encode_transition,
    host::{diag::ListenerQueues, proc_net::Socket},
    live::{
        fake::{ebpf_mode, FakeHost, FakeSource},
        Engine, EngineConfig, Sink,
    },
    model::{Process, Task, TcpState::*, Thresholds, Transition},
    output::{
        live::TextSink,
        metrics::{
            encode, with_scrape_figures, Format, HttpFigures, MetricsSink, ProcessUsage, Published,
            ScrapeFigures,
        },
        table::Style,
    },
};

/// A small web host: the app on 8080 leaking CLOSE_WAIT, clients of a database that
/// leave TIME_WAIT behind, a new listener, a lost event. Low TIME_WAIT thresholds make
/// its alert rise, escalate and clear within the scenario.
/// `until_drained`: run until TIME_WAIT has drained (its alert cleared); else stop while
/// the alerts are up.
fn scenario<K: Sink>(sink: &mut K, until_drained: bool) -> Engine<FakeHost, FakeSource> {
    let app = Process {
        pid: 400,
        comm: "app".into(),
    };
    let mut sockets = vec![
        Socket::new(Listen, (ip("0.0.0.0"), 8080), (ip("0.0.0.0"), 0), 1),
        Socket::new(
            Established,
            (ip("10.0.0.5"), 8080),
            (ip("198.51.100.7"), 53000),
            2,
        ),
        Socket::new(
            Established,
            (ip("10.0.0.5"), 8080),
            (ip("198.51.100.7"), 53001),
            3,
        ),
    ];
    for i in 0..3 {
        let mut s = Socket::new(
            CloseWait,
            (ip("10.0.0.5"), 8080),
            (ip("198.51.100.9"), 54000 + i),
            10 + u64::from(i),
        );
        s.rx_queue = 1;
        sockets.push(s);
    }
    let pod = pod();
    let host = FakeHost {
        sockets,
        owners: [1, 10, 11, 12]
            .into_iter()
            .map(|inode| (inode, app.clone()))
            .collect(),
        own_netns: Some(u64::from(NETNS)),
        queues: [(
            (ip("0.0.0.0"), 8080),
            ListenerQueues {
                backlog: 511,
                accept_queue: 2,
                drops: Some(4),
            },
        )]
        .into(),
        namespaces: vec![pod],
        other_sockets: [(
            POD_NETNS,
            vec![
                Socket::new(Listen, (ip("10.244.0.7"), 80), (ip("0.0.0.0"), 0), 50),
                Socket::new(
                    Established,
                    (ip("10.244.0.7"), 80),
                    (ip("10.244.0.1"), 60000),
                    51,
                ),
            ],
        )]
        .into(),
        ..FakeHost::default()
    };
    let config = EngineConfig {
        own_netns: Some(NETNS),
        thresholds: Thresholds {
            time_wait_warn: 0,
            time_wait_crit: 1,
            close_wait_age_secs: 30.0,
            ..Thresholds::DEFAULT
        },
        top: 3,
        max_netns: Some(16),
        ..EngineConfig::default()
    };
    let mode = ebpf_mode(
        "eBPF: BTF tracepoint sock:inet_sock_set_state, SYN-ACK retransmits, SYN counter (idle)",
    );
    let mut engine = Engine::start(
        config.validate().expect("a valid config"),
        host,
        Some(FakeSource {
            syn_counter_loaded: true,
            reasons: tcpmon::live::host::ReasonNames {
                drops: vec![(12, "netfilter_drop".into())],
                resets: vec![(2, "no_socket".into())],
            },
            ..FakeSource::default()
        }),
        mode,
        sink,
    )
    .unwrap();
    // Two clients of a database: each active close leaves a TIME_WAIT behind.
    let now = engine.host().now_ns;
    let mut ts = now;
    let mut next = |sk, port, old, new| {
        ts += 250_000;
        transition(sk, ts, ("10.0.0.5", port), ("203.0.113.7", 5432), old, new)
    };
    let mut first = vec![
        next(100, 41000, Close, SynSent),
        next(100, 41000, SynSent, Established),
        next(100, 41000, Established, FinWait1),
        next(100, 41000, FinWait1, FinWait2),
        next(100, 41000, FinWait2, Close),
    ];
    first[0].at.local_port = 0;
    first[0].task = Some(task(500, b"worker"));
    push(&mut engine, &first);
    // A listener opens.
    let mut listener = transition(
        200,
        now + 2_000_000,
        ("0.0.0.0", 9000),
        ("0.0.0.0", 0),
        Close,
        Listen,
    );
    listener.task = Some(task(77, b"nc"));
    push(&mut engine, &[listener]);
    engine.drain(sink).unwrap();
    engine.tick(sink).unwrap();
    // The second client's TIME_WAIT escalates the alert.
    let second: Vec<Transition> = [
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (old, new))| {
        transition(
            101,
            now + SEC + i as u64 * 1000,
            ("10.0.0.5", 41001),
            ("203.0.113.7", 5432),
            old,
            new,
        )
    })
    .collect();
    push(&mut engine, &second);
    // The socket table as the kernel now shows it, for the next reconciliation.
    for port in [41000, 41001] {
        let mut tw = Socket::new(
            TimeWait,
            (ip("10.0.0.5"), port),
            (ip("203.0.113.7"), 5432),
            0,
        );
        tw.timer_jiffies = 5900;
        engine.host_mut().sockets.push(tw);
    }
    let listening = Socket::new(Listen, (ip("0.0.0.0"), 9000), (ip("0.0.0.0"), 0), 20);
    engine.host_mut().sockets.push(listening);
    engine.host_mut().now_ns = now + 2 * SEC;
    engine.drain(sink).unwrap();
    engine.tick(sink).unwrap();
    // A firewall drops a packet from a client; the CLOSE_WAIT leak gets old; one event
    // is lost in the kernel.
    let mut dropped = encode_transition(&transition(
        0,
        now + 30 * SEC,
        ("198.51.100.7", 53000),
        ("10.0.0.5", 8080),
        Established,
        Established,
    ));
    (dropped.kind, dropped.oldstate, dropped.newstate) = (tcpmon_common::kind::DROP, 12, 0);
    engine.source_mut().unwrap().push(dropped);
    // The server sends 3 segments again to a client, on a connection that sent 40.
    let mut retransmit = encode_transition(&transition(
        0,
        now + 30 * SEC,
        ("10.0.0.5", 8080),
        ("198.51.100.7", 53000),
        Established,
        Established,
    ));
    (retransmit.kind, retransmit.oldstate, retransmit.newstate) =
        (tcpmon_common::kind::RETRANSMIT, 3, 0);
    retransmit.tgid = 40;
    engine.source_mut().unwrap().push(retransmit);
    // ... and a scanner's connect to a closed port is refused.
    let mut refused = encode_transition(&transition(
        0,
        now + 30 * SEC,
        ("10.0.0.5", 23),
        ("192.0.2.99", 40000),
        Established,
        Established,
    ));
    // Reason 2 (no_socket), plus one on the wire.
    (refused.kind, refused.oldstate, refused.newstate) = (tcpmon_common::kind::RESET_SENT, 3, 0);
    engine.source_mut().unwrap().push(refused);
    // The pod retransmits toward a client: tallied in its namespace.
    let mut pod_retransmit = refused;
    (pod_retransmit.kind, pod_retransmit.oldstate) = (tcpmon_common::kind::RETRANSMIT, 2);
    pod_retransmit.netns = POD_NETNS as u32;
    engine.source_mut().unwrap().push(pod_retransmit);
    engine.drain(sink).unwrap();
    engine.host_mut().now_ns = now + 31 * SEC;
    engine.source_mut().unwrap().counters.ringbuf_full = 1;
    engine.tick(sink).unwrap();
    if until_drained {
        // TIME_WAIT drains: its alert clears.
        engine.host_mut().now_ns = now + 91 * SEC;
        engine.tick(sink).unwrap();
    }
    engine.write_tally(sink).unwrap();
    engine
}

fn task(pid: u32, name: &[u8]) -> Task {
    let mut comm = [0; 16];
    comm[..name.len()].copy_from_slice(name);
    Task { pid, comm }
}

fn push(engine: &mut Engine<FakeHost, FakeSource>, transitions: &[Transition]) {
    let source = engine.source_mut().unwrap();
    for t in transitions {
        source.push(encode_transition(t));
    }
}

#[test]
fn watch_text_lines() {
    let mut sink = TextSink::new(Vec::new(), Style::default());
    let mut engine = scenario(&mut sink, true);
    engine.finish(&mut sink).unwrap();
    let text = String::from_utf8(sink.into_inner()).unwrap();
    insta::assert_snapshot!("watch_text", text);
}

/// The exposition of the scenario's last published state.
fn exposition(format: Format) -> String {
    let published = Arc::new(Published::default());
    let mut sink = MetricsSink::new(Arc::clone(&published));
    let _engine = scenario(&mut sink, false);
    let usage = ProcessUsage {
        cpu_seconds: 1.25,
        resident_bytes: 24 << 20,
        start_time_seconds: 1_800_000_000.0,
    };
    let figures = ScrapeFigures {
        tally_age: Duration::from_millis(400),
        http: HttpFigures {
            open: 2,
            refused: 3,
            evicted: 40,
            stalled: 5,
            accept_errors: 0,
        },
    };
    with_scrape_figures(
        &encode(&published.latest().1, usage, format),
        &figures,
        format,
    )
}

/// The exposition with each metric's samples sorted: prometheus-client keeps a family's
/// series in a hash map, so their order changes from run to run (Prometheus does not
/// care).
fn sorted_samples(text: &str) -> String {
    let mut out = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            out.append(&mut samples);
            out.push(line);
        } else {
            samples.push(line);
        }
    }
    samples.sort_unstable();
    out.append(&mut samples);
    out.join("\n") + "\n"
}

#[test]
fn prometheus_exposition() {
    insta::assert_snapshot!(
        "exposition",
        sorted_samples(&exposition(Format::Prometheus))
    );
}

/// Metric names in docs/METRICS.md's tables: every `name` in backticks in a row's first
/// cell.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md"))
        .unwrap();
    let metrics = doc
        .split("## Metrics")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .unwrap();
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|row| {
            let first = row.split(" | ").next().unwrap_or_default();
            first
                .split('`')
                .filter(|part| part.starts_with("tcpmon_") || part.starts_with("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Metric names an exposition holds (from its TYPE lines; Prometheus text names
/// counters with `_total` there).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let exposed = exposed(&exposition(Format::Prometheus));
    let documented = documented();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "exposed but not in docs/METRICS.md: {undocumented:?}\nin docs/METRICS.md but not exposed: {missing:?}"
    );
}
