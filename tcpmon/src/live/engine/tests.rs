//! The engine driven through fakes: baseline, transitions, reconciliation, alerts, loss,
//! polling and the end, without root or a kernel.
use std::{net::IpAddr, time::Duration};

use tcpmon_common::{kind, SockEvent};

use crate::live::{
    fake::{FakeHost, FakeSource, RecordingSink},
    record::{Mode, ModeRecord, SynCounterState, SCHEMA_VERSION},
    rules::Status,
    Engine, EngineConfig, EngineError, Reason, TransitionFilter,
};
use crate::{
    ebpf::decode::{encode_endpoints, encode_transition},
    host::proc_net::Socket,
    model::{
        Endpoints, Family, Origin, Process, Severity, TcpState, TcpState::*, Thresholds, Transition,
    },
};

const SEC: u64 = 1_000_000_000;
const NETNS: u32 = 4_026_531_840;

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn socket(state: TcpState, local: u16, remote: u16, inode: u64) -> Socket {
    let remote_ip = if state == Listen {
        IpAddr::from([0, 0, 0, 0])
    } else {
        lo()
    };
    let mut s = Socket::new(state, (lo(), local), (remote_ip, remote), inode);
    if state == TimeWait {
        s.timer_jiffies = 6000;
    }
    s
}

fn transition(
    sk: u64,
    ts: u64,
    local: u16,
    remote: u16,
    old: TcpState,
    new: TcpState,
) -> Transition {
    let remote_ip = if new == Listen || (old == Listen && new == Close) {
        IpAddr::from([0, 0, 0, 0])
    } else {
        lo()
    };
    Transition {
        at: Endpoints {
            ts_ns: ts,
            skaddr: sk,
            netns: NETNS,
            family: Family::Ipv4,
            local_ip: lo(),
            local_port: local,
            remote_ip,
            remote_port: remote,
        },
        old,
        new,
        task: None,
    }
}

fn mode(mode: Mode) -> ModeRecord {
    ModeRecord {
        schema_version: SCHEMA_VERSION,
        mode,
        reason: "test".into(),
        notes: Vec::new(),
        fell_back: false,
        poll_interval: (mode == Mode::Poll).then_some(Duration::from_secs(1)),
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        own_netns: Some(NETNS),
        ..EngineConfig::default()
    }
}

type TestEngine = Engine<FakeHost, FakeSource>;

fn ebpf_engine(host: FakeHost, sink: &mut RecordingSink) -> TestEngine {
    Engine::start(
        config().validate().expect("a valid config"),
        host,
        Some(FakeSource {
            syn_counter_loaded: true,
            ..FakeSource::default()
        }),
        mode(Mode::Ebpf),
        sink,
    )
    .unwrap()
}

fn push(engine: &mut TestEngine, transitions: &[Transition]) {
    let source = engine.source_mut().unwrap();
    for t in transitions {
        source.push(encode_transition(t));
    }
}

/// Both ends of one graceful connection from client port `port` to the listener on 80.
fn connection(sk: u64, start: u64, port: u16) -> Vec<Transition> {
    let (client, server) = (sk, sk + 1);
    let mut ts = start;
    let mut next = |sk, local, remote, old, new| {
        ts += 1000;
        transition(sk, ts, local, remote, old, new)
    };
    vec![
        next(client, 0, 80, Close, SynSent),
        next(client, port, 80, SynSent, Established),
        next(server, 80, port, Listen, SynRecv),
        next(server, 80, port, SynRecv, Established),
        next(client, port, 80, Established, FinWait1),
        next(server, 80, port, Established, CloseWait),
        next(server, 80, port, CloseWait, LastAck),
        next(client, port, 80, FinWait1, FinWait2),
        next(client, port, 80, FinWait2, Close),
        next(server, 80, port, LastAck, Close),
    ]
}

#[test]
fn the_mode_record_follows_the_baseline() {
    let host = FakeHost {
        sockets: vec![
            socket(Listen, 80, 0, 1),
            socket(Established, 80, 40000, 2),
            socket(Established, 40000, 80, 3),
        ],
        ..FakeHost::default()
    };
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(host, &mut sink);
    assert_eq!(sink.modes.len(), 1);
    assert_eq!(engine.host().socket_reads, 1, "one baseline read");
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    assert_eq!(tally.states.get(Established), 2);
    assert_eq!(tally.states.get(Listen), 1);
    assert_eq!(tally.reconcile.as_ref().unwrap().reason, "baseline");
    assert_eq!(tally.mode, Mode::Ebpf);
    assert_eq!(tally.schema_version, SCHEMA_VERSION);
}

#[test]
fn transitions_move_the_tallies_and_become_records_in_order() {
    let host = FakeHost {
        sockets: vec![socket(Listen, 80, 0, 1)],
        ..FakeHost::default()
    };
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(host, &mut sink);
    let life = connection(100, SEC, 40000);
    push(&mut engine, &life);
    engine.drain(&mut sink).unwrap();
    // (Decoding gives syscall-made transitions a task: none was recorded here.)
    let seen: Vec<_> = sink
        .transitions
        .iter()
        .map(|(t, _, _)| (t.at, t.old, t.new))
        .collect();
    // The client's FIN_WAIT2 -> CLOSE is shown as the TIME_WAIT it enters, inferred.
    let sent: Vec<_> = life
        .iter()
        .map(|t| match (t.old, t.new) {
            (FinWait2, Close) => (t.at, FinWait2, TimeWait),
            _ => (t.at, t.old, t.new),
        })
        .collect();
    assert_eq!(seen, sent);
    let origins: Vec<Origin> = sink.transitions.iter().map(|(_, _, o)| *o).collect();
    assert_eq!(
        origins.iter().filter(|o| **o == Origin::Inferred).count(),
        1,
        "{origins:?}"
    );
    // Time in the old state: ESTABLISHED -> FIN_WAIT1 came 3 µs after SYN_SENT -> ESTABLISHED.
    assert_eq!(sink.transitions[4].1, Some(3));
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    assert_eq!(tally.states.get(Established), 0);
    assert_eq!(tally.time_wait.count, 1, "the client's TIME_WAIT, inferred");
    assert_eq!(tally.states.get(Listen), 1);
    assert_eq!(tally.received.transitions, 10);
    assert_eq!(
        (tally.received.active_opens, tally.received.passive_opens),
        (1, 1)
    );
    assert_eq!(tally.lost, 0);
}

/// A client that closes first leaves a TIME_WAIT behind at every request: at 10 requests
/// a second that is 600 sockets toward one peer, none of them a connection. The per-IP
/// alert judges live connections only, and the tally shows TIME_WAIT apart.
#[test]
fn per_ip_judges_live_connections_not_time_wait() {
    let host = FakeHost {
        sockets: vec![socket(Listen, 80, 0, 1)],
        ..FakeHost::default()
    };
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(host, &mut sink);
    for i in 0..250u16 {
        let life = connection(
            1000 + 2 * u64::from(i),
            SEC + u64::from(i) * 100_000,
            40000 + i,
        );
        push(&mut engine, &life);
    }
    engine.drain(&mut sink).unwrap();
    engine.host_mut().now_ns = 2 * SEC;
    engine.tick(&mut sink).unwrap();
    assert!(
        sink.alerts.iter().all(|a| a.rule != "per_ip"),
        "{:?}",
        sink.alerts
    );
    engine.write_tally(&mut sink).unwrap();
    let per_ip = &sink.last_tally().per_ip;
    assert!(per_ip.top.is_empty(), "{per_ip:?}");
    assert_eq!(per_ip.time_wait_top[0].count, 250);
    // 201 live connections from the same peer are judged.
    for i in 0..201u16 {
        let life = connection(
            5000 + 2 * u64::from(i),
            2 * SEC + u64::from(i) * 100_000,
            50000 + i,
        );
        push(&mut engine, &life[..4]);
    }
    engine.drain(&mut sink).unwrap();
    engine.host_mut().now_ns = 3 * SEC;
    engine.tick(&mut sink).unwrap();
    let alert = sink
        .alerts
        .iter()
        .find(|a| a.rule == "per_ip")
        .expect("a per_ip alert");
    assert_eq!(alert.severity, Severity::Warning);
    assert!(
        alert.message.contains("holds 402 live connections"),
        "both ends of each loopback connection count: {}",
        alert.message
    );
}

/// An eBPF-mode engine over a host with one listener on port 80, showing transitions
/// into or out of `states` only.
fn listening_engine_showing(
    states: Vec<TcpState>,
    sink: &mut RecordingSink,
) -> Engine<FakeHost, FakeSource> {
    Engine::start(
        EngineConfig {
            transitions: Some(TransitionFilter {
                states,
                ..TransitionFilter::default()
            }),
            ..config()
        }
        .validate()
        .expect("a valid config"),
        FakeHost {
            sockets: vec![socket(Listen, 80, 0, 1)],
            ..FakeHost::default()
        },
        Some(FakeSource::default()),
        mode(Mode::Ebpf),
        sink,
    )
    .unwrap()
}

/// A socket "changing" to the state it is in is neither shown nor tallied, only counted;
/// the inferred entry into TIME_WAIT is shown, and a TIME_WAIT filter finds it.
#[test]
fn self_transitions_are_counted_and_time_wait_entry_is_shown() {
    let mut sink = RecordingSink::default();
    let mut engine = listening_engine_showing(vec![TimeWait], &mut sink);
    let mut life = connection(100, SEC, 40000);
    life.insert(
        5,
        transition(100, SEC + 4500, 40000, 80, FinWait1, FinWait1),
    );
    push(&mut engine, &life);
    engine.drain(&mut sink).unwrap();
    let shown: Vec<_> = sink
        .transitions
        .iter()
        .map(|(t, _, o)| (t.old, t.new, *o))
        .collect();
    assert_eq!(shown, vec![(FinWait2, TimeWait, Origin::Inferred)]);
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    assert_eq!(tally.received.self_transitions, 1);
    assert_eq!(tally.received.transitions, 10);
    assert_eq!(tally.inconsistencies, 0);
}

#[test]
fn a_filter_shows_some_transitions_and_tallies_all() {
    let mut sink = RecordingSink::default();
    let mut engine = listening_engine_showing(vec![CloseWait], &mut sink);
    push(&mut engine, &connection(100, SEC, 40000));
    engine.drain(&mut sink).unwrap();
    let shown: Vec<(TcpState, TcpState)> = sink
        .transitions
        .iter()
        .map(|(t, _, _)| (t.old, t.new))
        .collect();
    assert_eq!(shown, [(Established, CloseWait), (CloseWait, LastAck)]);
    assert_eq!(engine.received().transitions, 10);
}

#[test]
fn other_namespaces_are_shown_but_not_tallied() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    let mut foreign = transition(7, SEC, 8080, 0, Close, Listen);
    foreign.at.netns = NETNS + 1;
    push(&mut engine, &[foreign]);
    engine.drain(&mut sink).unwrap();
    assert_eq!(sink.transitions.len(), 1);
    assert_eq!(engine.received().foreign, 1);
    assert!(
        sink.alerts.is_empty(),
        "no new-listener alert for another namespace"
    );
    engine.write_tally(&mut sink).unwrap();
    assert_eq!(sink.last_tally().states.get(Listen), 0);
}

#[test]
fn a_new_listener_is_an_event_naming_its_process() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    let mut listen = transition(7, SEC, 8080, 0, Close, Listen);
    listen.at.local_ip = IpAddr::from([0, 0, 0, 0]);
    let mut comm = [0u8; 16];
    comm[..2].copy_from_slice(b"nc");
    listen.task = Some(crate::model::Task { pid: 42, comm });
    push(&mut engine, &[listen]);
    engine.drain(&mut sink).unwrap();
    let alert = &sink.alerts[0];
    assert_eq!(
        (alert.rule, alert.status, alert.severity),
        ("new_listener", Status::Event, Severity::Warning)
    );
    assert!(alert.message.contains("by nc[42]"), "{}", alert.message);
}

#[test]
fn new_listeners_are_judged_against_the_allowlist() {
    let mut sink = RecordingSink::default();
    let mut cfg = config();
    cfg.listeners_allow =
        Some(crate::model::allowlist::Allowlist::parse("22 sshd\n8080 nc\n").unwrap());
    let mut engine = Engine::start(
        cfg.validate().unwrap(),
        FakeHost::default(),
        Some(FakeSource::default()),
        mode(Mode::Ebpf),
        &mut sink,
    )
    .unwrap();
    let listener = |port, name: &[u8]| {
        let mut listen = transition(u64::from(port), SEC, port, 0, Close, Listen);
        listen.at.local_ip = IpAddr::from([0, 0, 0, 0]);
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name);
        listen.task = Some(crate::model::Task { pid: 42, comm });
        listen
    };
    // Allowed (on all addresses: a warning without a list); a process the line does not
    // name; a port no line names.
    push(
        &mut engine,
        &[
            listener(8080, b"nc"),
            listener(22, b"nc"),
            listener(4444, b"nc"),
        ],
    );
    engine.drain(&mut sink).unwrap();
    let judged: Vec<(&str, Severity, bool)> = sink
        .alerts
        .iter()
        .map(|a| {
            (
                a.subject.as_str(),
                a.severity,
                a.message.ends_with(": not in the listener allowlist"),
            )
        })
        .collect();
    assert_eq!(
        judged,
        vec![
            ("0.0.0.0:8080", Severity::Info, false),
            ("0.0.0.0:22", Severity::Warning, true),
            ("0.0.0.0:4444", Severity::Warning, true),
        ]
    );
}

#[test]
fn a_reconciliation_corrects_drift_and_says_by_how_much() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(
        FakeHost {
            sockets: vec![socket(Listen, 80, 0, 1)],
            ..FakeHost::default()
        },
        &mut sink,
    );
    // Events for two connections were lost: the table has them, the tally does not.
    engine.host_mut().sockets.extend([
        socket(Established, 80, 40000, 2),
        socket(Established, 40000, 80, 3),
        socket(CloseWait, 80, 40001, 4),
    ]);
    engine.reconcile(Reason::Periodic, &mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    let reconcile = tally.reconcile.as_ref().unwrap();
    assert_eq!(reconcile.reason, "periodic");
    assert_eq!(reconcile.total_abs_error, 3);
    assert_eq!(reconcile.error.get("ESTABLISHED"), Some(&-2));
    assert_eq!(reconcile.error.get("CLOSE_WAIT"), Some(&-1));
    assert_eq!(tally.states.get(Established), 2);
    assert_eq!(tally.states.get(CloseWait), 1);
    assert_eq!(tally.reconciliations, 2);
}

#[test]
fn a_close_wait_alert_is_raised_changed_and_cleared() {
    let leaky = Process {
        pid: 4411,
        comm: "java".into(),
    };
    let mut sink = RecordingSink::default();
    let mut engine = Engine::start(
        EngineConfig {
            thresholds: Thresholds {
                close_wait_age_secs: 2.0,
                close_wait_crit: 3,
                ..Thresholds::DEFAULT
            },
            ..config()
        }
        .validate()
        .expect("a valid config"),
        FakeHost {
            sockets: vec![socket(Listen, 8080, 0, 1)],
            owners: [(10, leaky.clone())].into(),
            ..FakeHost::default()
        },
        Some(FakeSource::default()),
        mode(Mode::Ebpf),
        &mut sink,
    )
    .unwrap();
    let start = engine.host().now_ns;
    push(
        &mut engine,
        &[transition(10, start, 8080, 50000, Established, CloseWait)],
    );
    engine.drain(&mut sink).unwrap();
    engine
        .host_mut()
        .sockets
        .push(socket(CloseWait, 8080, 50000, 10));
    engine.tick(&mut sink).unwrap();
    assert!(sink.alerts.is_empty(), "younger than 2 s");
    engine.host_mut().now_ns = start + 3 * SEC;
    engine.tick(&mut sink).unwrap();
    let raised = sink.alerts.last().unwrap();
    assert_eq!(
        (raised.rule, raised.status, raised.severity),
        ("close_wait", Status::Raised, Severity::Warning)
    );
    assert!(
        raised
            .message
            .contains("1 CLOSE_WAIT socket on local port 8080 held by java[4411], oldest 3s"),
        "{}",
        raised.message
    );
    // More than three on the port: critical.
    let more: Vec<Transition> = (0..3)
        .map(|i| {
            transition(
                20 + i,
                start + 3 * SEC,
                8080,
                50001 + i as u16,
                Established,
                CloseWait,
            )
        })
        .collect();
    push(&mut engine, &more);
    engine.host_mut().now_ns = start + 4 * SEC;
    engine.tick(&mut sink).unwrap();
    let changed = sink.alerts.last().unwrap();
    assert_eq!(
        (changed.status, changed.severity),
        (Status::Changed, Severity::Critical)
    );
    // The application closes them all.
    let closed: Vec<Transition> = [10u64, 20, 21, 22]
        .iter()
        .enumerate()
        .flat_map(|(i, &sk)| {
            let port = if sk == 10 {
                50000
            } else {
                50001 + (sk - 20) as u16
            };
            let at = start + 5 * SEC + i as u64;
            [
                transition(sk, at, 8080, port, CloseWait, LastAck),
                transition(sk, at + 1, 8080, port, LastAck, Close),
            ]
        })
        .collect();
    push(&mut engine, &closed);
    engine.host_mut().sockets.retain(|s| s.state != CloseWait);
    engine.host_mut().now_ns = start + 6 * SEC;
    engine.tick(&mut sink).unwrap();
    let cleared = sink.alerts.last().unwrap();
    assert_eq!(
        (cleared.status, cleared.rule),
        (Status::Cleared, "close_wait")
    );
    assert_eq!(engine.active_alerts().count(), 0);
}

#[test]
fn loss_is_counted_and_answered_by_one_reconciliation() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    assert_eq!(engine.host().socket_reads, 1);
    engine.source_mut().unwrap().counters.ringbuf_full = 5;
    engine
        .source_mut()
        .unwrap()
        .problems
        .push(crate::ebpf::decode::DecodeError::Length(3));
    engine.tick(&mut sink).unwrap();
    assert_eq!(engine.lost(), 6, "5 ring drops and an undecodable record");
    assert_eq!(
        engine.host().socket_reads,
        2,
        "the loss triggered a reconciliation"
    );
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    assert_eq!((tally.lost, tally.kernel.ringbuf_full), (6, 5));
    assert_eq!(tally.received.decode_errors, 1);
    assert_eq!(tally.reconcile.as_ref().unwrap().reason, "loss");
    // More loss within 10 s waits; after, it is answered again.
    engine.source_mut().unwrap().counters.ringbuf_full = 9;
    engine.host_mut().now_ns += SEC;
    engine.tick(&mut sink).unwrap();
    assert_eq!(engine.host().socket_reads, 2);
    engine.host_mut().now_ns += 10 * SEC;
    engine.tick(&mut sink).unwrap();
    assert_eq!(engine.host().socket_reads, 3);
}

#[test]
fn openings_the_kernel_counted_but_never_sent_are_silent_loss() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(
        FakeHost {
            opens: Some(crate::host::kstats::Opens {
                active: 100,
                passive: 100,
            }),
            ..FakeHost::default()
        },
        &mut sink,
    );
    // The kernel counts two connections; only one's events arrive.
    engine.host_mut().opens = Some(crate::host::kstats::Opens {
        active: 102,
        passive: 102,
    });
    push(&mut engine, &connection(100, SEC, 40000));
    engine.tick(&mut sink).unwrap();
    engine.tick(&mut sink).unwrap();
    assert_eq!(engine.received().unaccounted, 2);
    assert_eq!(engine.lost(), 2);
}

#[test]
fn syn_trouble_attaches_the_syn_counter_and_a_failure_is_said() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    engine.write_tally(&mut sink).unwrap();
    assert_eq!(sink.last_tally().syn_counter, SynCounterState::Idle);
    let at = Endpoints {
        ts_ns: SEC,
        skaddr: 1,
        netns: NETNS,
        family: Family::Ipv4,
        local_ip: lo(),
        local_port: 80,
        remote_ip: lo(),
        remote_port: 5000,
    };
    engine
        .source_mut()
        .unwrap()
        .push(encode_endpoints(&at, kind::SYNACK_RETRANSMIT));
    engine.drain(&mut sink).unwrap();
    engine.tick(&mut sink).unwrap();
    assert!(engine.source_mut().unwrap().syn_counter_attached);
    engine.write_tally(&mut sink).unwrap();
    assert_eq!(sink.last_tally().syn_counter, SynCounterState::Attached);
    assert_eq!(sink.last_tally().received.syn_counter_attaches, 1);

    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    engine.source_mut().unwrap().syn_counter_fails = true;
    engine
        .source_mut()
        .unwrap()
        .push(encode_endpoints(&at, kind::SYNACK_RETRANSMIT));
    engine.drain(&mut sink).unwrap();
    engine.tick(&mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    assert_eq!(sink.last_tally().syn_counter, SynCounterState::AttachFailed);
}

#[test]
fn polling_infers_transitions_and_tallies_equal_the_table() {
    let mut sink = RecordingSink::default();
    let mut engine: TestEngine = Engine::start(
        config().validate().expect("a valid config"),
        FakeHost {
            sockets: vec![socket(Listen, 80, 0, 1), socket(Established, 80, 40000, 2)],
            ..FakeHost::default()
        },
        None,
        mode(Mode::Poll),
        &mut sink,
    )
    .unwrap();
    engine.host_mut().sockets = vec![
        socket(Listen, 80, 0, 1),
        socket(CloseWait, 80, 40000, 2),
        socket(Established, 80, 40001, 3),
        socket(Listen, 8080, 0, 4),
    ];
    engine.tick(&mut sink).unwrap();
    let inferred: Vec<(u16, u16, TcpState, TcpState)> = sink
        .transitions
        .iter()
        .map(|(t, _, origin)| {
            assert_eq!(*origin, Origin::Inferred);
            (t.at.local_port, t.at.remote_port, t.old, t.new)
        })
        .collect();
    assert_eq!(
        inferred,
        [
            (80, 40000, Established, CloseWait),
            (80, 40001, Close, Established),
            (8080, 0, Close, Listen),
        ]
    );
    // Applied once (from the table), not again from the inferred transitions.
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    assert_eq!(tally.states.get(Listen), 2);
    assert_eq!(tally.states.get(Established), 1);
    assert_eq!(tally.states.get(CloseWait), 1);
    assert_eq!(tally.syn_counter, SynCounterState::Unavailable);
    assert_eq!(tally.poll_interval, Some(Duration::from_secs(1)));
    let listener = sink
        .alerts
        .iter()
        .find(|a| a.rule == "new_listener")
        .unwrap();
    assert_eq!(listener.subject, "127.0.0.1:8080");
}

#[test]
fn the_end_detaches_drains_and_summarises() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(
        FakeHost {
            sockets: vec![socket(Listen, 80, 0, 1)],
            ..FakeHost::default()
        },
        &mut sink,
    );
    push(&mut engine, &connection(100, SEC, 40000));
    engine.host_mut().now_ns += 7 * SEC;
    let summary = engine.finish(&mut sink).unwrap();
    assert!(engine.source_mut().unwrap().detached);
    assert_eq!(sink.transitions.len(), 10, "queued records still applied");
    assert_eq!(summary.transitions, 10);
    assert_eq!(summary.seconds, 7.0);
    assert_eq!(sink.summaries, [summary]);
    assert_eq!(sink.last_tally().time_wait.count, 1);
}

#[test]
fn an_output_failure_ends_the_engine() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    sink.fail_with = Some(std::io::ErrorKind::BrokenPipe);
    push(&mut engine, &connection(100, SEC, 40000));
    match engine.drain(&mut sink) {
        Err(EngineError::Output(e)) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("{other:?}"),
    }
}

#[test]
fn configs_that_would_spin_or_overflow_are_refused() {
    let bad = EngineConfig {
        interval: Duration::from_nanos(1),
        ..config()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("--interval"), "{err}");
    let nan = EngineConfig {
        thresholds: Thresholds {
            syn_rate: f64::NAN,
            ..Thresholds::DEFAULT
        },
        ..config()
    };
    let err = nan.validate().unwrap_err().to_string();
    assert!(err.contains("syn-rate"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn run_ticks_on_its_timers_until_stopped() {
    let mut sink = RecordingSink::default();
    let mut engine = Engine::start(
        EngineConfig {
            interval: Duration::from_secs(1),
            tally_interval: Duration::from_secs(2),
            ..config()
        }
        .validate()
        .expect("a valid config"),
        FakeHost::default(),
        Some(FakeSource::default()),
        mode(Mode::Ebpf),
        &mut sink,
    )
    .unwrap();
    engine
        .run(&mut sink, tokio::time::sleep(Duration::from_millis(6500)))
        .await
        .unwrap();
    assert_eq!(sink.tallies.len(), 3, "at 2, 4 and 6 s");
    assert_eq!(
        engine.host().socket_reads,
        1,
        "no periodic reconciliation within 30 s"
    );
}

/// Keeps [`SockEvent`] in use for encode round trips (what the source hands out).
#[test]
fn encoded_records_are_what_the_source_hands_out() {
    let t = transition(1, SEC, 80, 40000, Established, CloseWait);
    let raw: SockEvent = encode_transition(&t);
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(FakeHost::default(), &mut sink);
    engine.source_mut().unwrap().push(raw);
    engine.drain(&mut sink).unwrap();
    assert_eq!(sink.transitions[0].0, t);
}

#[test]
fn listeners_carry_their_queues_and_syn_totals() {
    let wildcard = IpAddr::from([0, 0, 0, 0]);
    let mut sink = RecordingSink::default();
    let mut listener = socket(Listen, 80, 0, 1);
    listener.local_ip = wildcard;
    let mut engine = ebpf_engine(
        FakeHost {
            sockets: vec![listener],
            queues: [(
                (wildcard, 80),
                crate::host::diag::ListenerQueues {
                    backlog: 511,
                    accept_queue: 3,
                    drops: None,
                },
            )]
            .into(),
            ..FakeHost::default()
        },
        &mut sink,
    );
    // SYN-ACK retransmits to 127.0.0.1:80 (the wildcard listener's) and to a port with
    // no listener.
    for port in [80, 81, 80] {
        let at = Endpoints {
            ts_ns: SEC,
            skaddr: 1,
            netns: NETNS,
            family: Family::Ipv4,
            local_ip: lo(),
            local_port: port,
            remote_ip: lo(),
            remote_port: 5000,
        };
        engine
            .source_mut()
            .unwrap()
            .push(encode_endpoints(&at, kind::SYNACK_RETRANSMIT));
    }
    engine.drain(&mut sink).unwrap();
    engine.tick(&mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    let tally = sink.last_tally();
    let l = &tally.listeners[0];
    assert_eq!(l.listener, "0.0.0.0:80");
    assert_eq!((l.backlog, l.accept_queue), (Some(511), Some(3)));
    assert_eq!(l.syn.synack_retransmits, 2);
    assert_eq!(tally.syn_elsewhere.synack_retransmits, 1);
}

mod other_namespaces {
    use super::*;
    use crate::{
        host::netns::{Access, Namespace},
        model::owner::{Container, Owner, Runtime},
    };

    const POD: u32 = 4_026_532_700;
    const DOCKER: u32 = 4_026_532_800;

    fn namespace(inode: u32, owner: Owner) -> Namespace {
        Namespace {
            inode: u64::from(inode),
            name: None,
            owner,
            access: Access::Pids(vec![inode % 1000]),
        }
    }

    fn pod() -> Namespace {
        namespace(
            POD,
            Owner::Pod {
                uid: "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b".into(),
                container: None,
                name: Some("web-7d9".into()),
            },
        )
    }

    fn docker() -> Namespace {
        namespace(
            DOCKER,
            Owner::Container {
                container: Container {
                    runtime: Runtime::Docker,
                    id: "3f2a9c1b7e44d8a1b2c3d4e5f6071829".into(),
                },
                name: None,
            },
        )
    }

    fn in_ns(netns: u32, mut t: Transition) -> Transition {
        t.at.netns = netns;
        t
    }

    fn host() -> FakeHost {
        let mut host = FakeHost {
            own_netns: Some(u64::from(NETNS)),
            sockets: vec![socket(Listen, 22, 0, 1)],
            namespaces: vec![pod(), docker()],
            ..FakeHost::default()
        };
        host.other_sockets.insert(
            u64::from(POD),
            vec![
                socket(Listen, 80, 0, 10),
                socket(Established, 80, 40000, 11),
                socket(Established, 40000, 80, 12),
            ],
        );
        host.other_sockets.insert(
            u64::from(DOCKER),
            (0..3)
                .map(|i| socket(CloseWait, 8080, 50000 + i, 20 + u64::from(i)))
                .collect(),
        );
        host
    }

    fn engine(host: FakeHost, max: usize, sink: &mut RecordingSink) -> TestEngine {
        Engine::start(
            EngineConfig {
                max_netns: Some(max),
                ..config()
            }
            .validate()
            .expect("a valid config"),
            host,
            Some(FakeSource::default()),
            mode(Mode::Ebpf),
            sink,
        )
        .unwrap()
    }

    fn tallied(sink: &RecordingSink, inode: u32) -> Option<crate::live::record::NamespaceTally> {
        sink.last_tally()
            .namespaces
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.inode == u64::from(inode))
            .cloned()
    }

    #[test]
    fn each_namespace_has_its_own_baseline_and_tally() {
        let mut sink = RecordingSink::default();
        let mut engine = engine(host(), 10, &mut sink);
        // The mode record comes first; each namespace found is announced after it.
        assert_eq!(sink.modes.len(), 1);
        let added: Vec<_> = sink
            .alerts
            .iter()
            .filter(|a| a.rule == "netns_added")
            .collect();
        assert_eq!(added.len(), 2);
        assert!(added.iter().any(|a| a.message.contains("pod web-7d9")));
        engine.write_tally(&mut sink).unwrap();
        let pod = tallied(&sink, POD).unwrap();
        assert_eq!(
            (pod.states.get(Established), pod.states.get(Listen)),
            (2, 1)
        );
        assert_eq!(pod.owner, "pod web-7d9");
        let docker = tallied(&sink, DOCKER).unwrap();
        assert_eq!(docker.states.get(CloseWait), 3);
        // tcpmon's own namespace stays in the top-level fields, alone.
        assert_eq!(sink.last_tally().states.get(Listen), 1);
        assert_eq!(sink.last_tally().states.get(Established), 0);

        // A connection inside the pod is tallied there, and only there.
        let t: Vec<Transition> = connection(100, 2 * SEC, 41000)[..4]
            .iter()
            .map(|t| in_ns(POD, *t))
            .collect();
        push(&mut engine, &t);
        engine.drain(&mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        assert_eq!(tallied(&sink, POD).unwrap().states.get(Established), 4);
        assert_eq!(tallied(&sink, POD).unwrap().transitions, 4);
        assert_eq!(sink.last_tally().states.get(Established), 0);
        assert_eq!(sink.last_tally().received.foreign, 4);
    }

    #[test]
    fn alerts_in_another_namespace_name_it_and_its_owner() {
        let mut sink = RecordingSink::default();
        let mut h = host();
        h.other_sockets.insert(
            u64::from(DOCKER),
            (0..150)
                .map(|i| socket(CloseWait, 8080, 50000 + i, 20 + u64::from(i)))
                .collect(),
        );
        h.owners.insert(
            20,
            Process {
                pid: 4411,
                comm: "java".into(),
            },
        );
        let mut engine = engine(h, 10, &mut sink);
        engine.host_mut().now_ns += SEC;
        engine.tick(&mut sink).unwrap();
        let alert = sink
            .alerts
            .iter()
            .find(|a| a.rule == "close_wait")
            .expect("a CLOSE_WAIT alert");
        assert!(
            alert.message.contains("held by java[4411]"),
            "{}",
            alert.message
        );
        assert_eq!(alert.netns, Some(u64::from(DOCKER)));
        assert_eq!(
            alert.owner.as_deref(),
            Some("docker container 3f2a9c1b7e44")
        );
        assert_eq!(alert.subject, format!("8080 in netns {DOCKER}"));
        assert!(
            alert.message.contains("docker container 3f2a9c1b7e44"),
            "{}",
            alert.message
        );
        // The same port in tcpmon's own namespace would be another alert.
        assert!(engine
            .active_alerts()
            .any(|(rule, subject, _)| rule == "close_wait"
                && subject == format!("8080 in netns {DOCKER}")));
    }

    #[test]
    fn time_wait_is_checked_against_each_namespace_sockstat() {
        let mut sink = RecordingSink::default();
        let mut h = host();
        h.other_sockets.insert(
            u64::from(POD),
            (0..4).map(|i| socket(TimeWait, 40000 + i, 80, 0)).collect(),
        );
        h.other_time_wait.insert(u64::from(POD), 6);
        let mut engine = engine(h, 10, &mut sink);
        engine.host_mut().now_ns += SEC;
        engine.tick(&mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        let pod = tallied(&sink, POD).unwrap();
        assert_eq!(pod.time_wait_sockstat_error, Some(-2));
        assert_eq!(
            tallied(&sink, DOCKER).unwrap().time_wait_sockstat_error,
            None
        );
    }

    #[test]
    fn namespaces_that_appear_and_go_are_followed() {
        let mut sink = RecordingSink::default();
        let mut h = host();
        h.namespaces = vec![pod()];
        let mut engine = engine(h, 10, &mut sink);
        assert!(tallied_after_tally(&mut engine, &mut sink, DOCKER).is_none());
        // The Docker namespace appears: its first transition makes tcpmon look again.
        engine.host_mut().namespaces.push(docker());
        push(
            &mut engine,
            &[in_ns(
                DOCKER,
                transition(500, 2 * SEC, 8080, 50010, Established, CloseWait),
            )],
        );
        engine.drain(&mut sink).unwrap();
        engine.host_mut().now_ns += 2 * SEC;
        engine.tick(&mut sink).unwrap();
        assert!(sink
            .alerts
            .iter()
            .any(|a| a.rule == "netns_added" && a.netns == Some(u64::from(DOCKER))));
        let docker = tallied_after_tally(&mut engine, &mut sink, DOCKER).unwrap();
        assert_eq!(docker.states.get(CloseWait), 3);
        assert_eq!(
            sink.last_tally()
                .namespaces_untracked
                .as_ref()
                .unwrap()
                .transitions,
            1
        );

        // The pod is deleted: the next read of it fails as gone.
        engine
            .host_mut()
            .namespaces
            .retain(|n| n.inode != u64::from(POD));
        engine.host_mut().other_sockets.remove(&u64::from(POD));
        engine.host_mut().now_ns += 30 * SEC;
        engine.reconcile(Reason::Periodic, &mut sink).unwrap();
        let gone = sink
            .alerts
            .iter()
            .find(|a| a.rule == "netns_gone")
            .expect("a netns_gone event");
        assert_eq!(gone.netns, Some(u64::from(POD)));
        assert_eq!(gone.status, Status::Event);
        assert!(tallied_after_tally(&mut engine, &mut sink, POD).is_none());
        assert!(tallied_after_tally(&mut engine, &mut sink, DOCKER).is_some());
    }

    fn tallied_after_tally(
        engine: &mut TestEngine,
        sink: &mut RecordingSink,
        inode: u32,
    ) -> Option<crate::live::record::NamespaceTally> {
        engine.write_tally(sink).unwrap();
        tallied(sink, inode)
    }

    #[test]
    fn namespaces_beyond_the_bound_are_named_and_counted_together() {
        let mut sink = RecordingSink::default();
        let mut engine = engine(host(), 1, &mut sink);
        let untracked: Vec<_> = sink
            .alerts
            .iter()
            .filter(|a| a.rule == "netns_untracked")
            .collect();
        assert_eq!(untracked.len(), 1);
        assert_eq!(untracked[0].severity, Severity::Warning);
        let left_out = untracked[0].netns.unwrap() as u32;
        push(
            &mut engine,
            &[
                in_ns(left_out, transition(600, 2 * SEC, 9000, 1, Close, SynSent)),
                in_ns(
                    left_out,
                    transition(602, 2 * SEC + 1, 9001, 1, Close, SynSent),
                ),
            ],
        );
        engine.drain(&mut sink).unwrap();
        engine.host_mut().now_ns += 2 * SEC;
        engine.tick(&mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        let record = sink.last_tally();
        assert_eq!(record.namespaces.as_ref().unwrap().len(), 1);
        let untracked = record.namespaces_untracked.as_ref().unwrap();
        assert_eq!((untracked.namespaces, untracked.transitions), (1, 2));
        // Said once, not at every look.
        assert_eq!(
            sink.alerts
                .iter()
                .filter(|a| a.rule == "netns_untracked")
                .count(),
            1
        );
    }

    #[test]
    fn a_periodic_reconciliation_repairs_each_namespace_on_its_own() {
        let mut sink = RecordingSink::default();
        let mut engine = engine(host(), 10, &mut sink);
        // A connection completes inside the pod, but the server side's events were lost:
        // the pod's reconciliation finds one socket more than its tally.
        let t: Vec<Transition> = connection(700, 3 * SEC, 42000)[..2]
            .iter()
            .map(|t| in_ns(POD, *t))
            .collect();
        push(&mut engine, &t);
        let pod_sockets = engine
            .host_mut()
            .other_sockets
            .get_mut(&u64::from(POD))
            .unwrap();
        pod_sockets.push(socket(Established, 42000, 80, 30));
        pod_sockets.push(socket(Established, 80, 42000, 31));
        engine.host_mut().now_ns += 30 * SEC;
        engine.reconcile(Reason::Periodic, &mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        let pod = tallied(&sink, POD).unwrap();
        assert_eq!(pod.states.get(Established), 4);
        assert_eq!(pod.reconcile_error, Some(1));
        assert_eq!(tallied(&sink, DOCKER).unwrap().reconcile_error, Some(0));
    }
}

/// Out of file descriptors for a while: the periodic reads fail, are retried with a
/// growing wait, alerted once and cleared when a read works; the engine runs on.
#[test]
fn failing_reads_are_retried_and_reported_never_fatal() {
    let mut sink = RecordingSink::default();
    let mut engine = ebpf_engine(
        FakeHost {
            sockets: vec![socket(Listen, 80, 0, 1)],
            ..FakeHost::default()
        },
        &mut sink,
    );
    engine.host_mut().failing_reads = 3;
    let reads_before = engine.host().socket_reads;
    assert!(engine
        .reconcile_if_readable(Reason::Periodic, &mut sink)
        .unwrap()
        .is_none());
    let raised = sink.alerts.last().unwrap().clone();
    assert_eq!(
        (raised.rule, raised.status),
        ("socket_read", Status::Raised)
    );
    assert!(raised.message.contains("os error 24"), "{}", raised.message);
    // Within the wait nothing is read; after it, the read is tried (and fails again).
    engine
        .reconcile_if_readable(Reason::Loss, &mut sink)
        .unwrap();
    assert_eq!(engine.host().socket_reads, reads_before + 1);
    for _ in 0..2 {
        engine.host_mut().now_ns += 60 * SEC;
        engine
            .reconcile_if_readable(Reason::Periodic, &mut sink)
            .unwrap();
    }
    assert_eq!(engine.host().socket_reads, reads_before + 3);
    assert_eq!(
        sink.alerts
            .iter()
            .filter(|a| a.rule == "socket_read")
            .count(),
        1,
        "one alert per streak"
    );
    engine.write_tally(&mut sink).unwrap();
    assert_eq!(sink.last_tally().received.socket_read_failures, 3);
    assert!(sink
        .last_tally()
        .alerts_active
        .iter()
        .any(|a| a.rule == "socket_read"));
    engine.host_mut().now_ns += 60 * SEC;
    let read = engine
        .reconcile_if_readable(Reason::Periodic, &mut sink)
        .unwrap();
    assert_eq!(read.map(|s| s.len()), Some(1));
    let cleared = sink.alerts.last().unwrap();
    assert_eq!(
        (cleared.rule, cleared.status),
        ("socket_read", Status::Cleared)
    );
}
