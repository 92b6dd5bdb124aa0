//! `tcpmon top`'s screens, pinned as reviewed insta snapshots at three sizes and below
//! the smallest: the engine runs over the fake host and source (fixed clocks), its
//! records go through top's own sink, keys go through the view as a person types them,
//! and ratatui's TestBackend draws. Styles the text cannot show (dimmed, colours,
//! NO_COLOR) are asserted on the buffer.
mod common;

use common::{ip, pod, transition, NETNS, POD_NETNS, SEC};

use std::net::IpAddr;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, buffer::Buffer, style::Modifier, Terminal};
use tcpmon::{
    ebpf::decode::{encode_endpoints, encode_transition},
    host::{diag::ListenerQueues, proc_net::Socket, sock_diag::TcpInfo},
    live::{
        fake::{ebpf_mode, FakeHost, FakeSource},
        Engine, EngineConfig,
    },
    model::{Endpoints, Family, HalfOpen, Process, TcpState::*, Thresholds},
    snapshot::analysis::Connection,
    top::{self, Action, DrillState, Theme, TopSink, View},
};
use tcpmon_common::kind;

fn process(pid: u32, comm: &str) -> Process {
    Process {
        pid,
        comm: comm.into(),
    }
}

/// A web host: nginx on 8080 with clients, sshd on 22, an app leaking CLOSE_WAIT on
/// 9000, TIME_WAIT toward a database.
fn web_host() -> FakeHost {
    let mut sockets = vec![
        Socket::new(Listen, (ip("0.0.0.0"), 8080), (ip("0.0.0.0"), 0), 1),
        Socket::new(Listen, (ip("0.0.0.0"), 22), (ip("0.0.0.0"), 0), 2),
        Socket::new(Listen, (ip("0.0.0.0"), 9000), (ip("0.0.0.0"), 0), 3),
    ];
    let mut inode = 100;
    let mut add = |state, local: (&str, u16), remote: (&str, u16)| {
        inode += 1;
        let mut s = Socket::new(
            state,
            (ip(local.0), local.1),
            (ip(remote.0), remote.1),
            inode,
        );
        if state == TimeWait {
            s.inode = 0;
            s.timer_jiffies = 5000;
        }
        sockets.push(s);
    };
    for i in 0..6 {
        add(Established, ("10.0.0.5", 8080), ("198.51.100.7", 50000 + i));
    }
    for i in 0..3 {
        add(Established, ("10.0.0.5", 8080), ("198.51.100.9", 51000 + i));
    }
    add(Established, ("10.0.0.5", 22), ("192.0.2.44", 60022));
    for i in 0..3 {
        add(TimeWait, ("10.0.0.5", 41000 + i), ("203.0.113.7", 5432));
    }
    let nginx = process(310, "nginx");
    let app = process(400, "app");
    let owners: std::collections::HashMap<u64, Process> =
        [(1, nginx), (2, process(90, "sshd")), (3, app)].into();
    FakeHost {
        sockets,
        owners,
        own_netns: Some(u64::from(NETNS)),
        queues: [
            (
                (ip("0.0.0.0"), 8080),
                ListenerQueues {
                    backlog: 511,
                    accept_queue: 2,
                    drops: None,
                },
            ),
            (
                (ip("0.0.0.0"), 22),
                ListenerQueues {
                    backlog: 128,
                    accept_queue: 0,
                    drops: None,
                },
            ),
            (
                (ip("0.0.0.0"), 9000),
                ListenerQueues {
                    backlog: 16,
                    accept_queue: 14,
                    drops: None,
                },
            ),
        ]
        .into(),
        ..FakeHost::default()
    }
}

/// The app on 9000 stops closing its clients' connections.
fn leaking(mut host: FakeHost) -> FakeHost {
    for i in 0..4u16 {
        let inode = 700 + u64::from(i);
        host.sockets.push(Socket::new(
            CloseWait,
            (ip("10.0.0.5"), 9000),
            (ip("198.51.100.9"), 52000 + i),
            inode,
        ));
        host.owners.insert(inode, process(400, "app"));
    }
    host
}

type TestEngine = Engine<FakeHost, FakeSource>;

/// The engine over `host` with top's sink, as `top` configures it, a first tally
/// written.
fn start(host: FakeHost, all_netns: bool, thresholds: Thresholds) -> (TestEngine, TopSink) {
    let mut sink = TopSink::default();
    let config = EngineConfig {
        own_netns: Some(NETNS),
        thresholds,
        transitions: None,
        tally_interval: std::time::Duration::from_secs(1),
        top: 50,
        max_netns: all_netns.then_some(16),
        namespace_detail: all_netns,
        ..EngineConfig::default()
    };
    let mode = ebpf_mode("eBPF");
    let mut engine = Engine::start(
        config.validate().expect("a valid config"),
        host,
        Some(FakeSource {
            syn_counter_loaded: true,
            ..FakeSource::default()
        }),
        mode,
        &mut sink,
    )
    .unwrap();
    engine.tick(&mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    top::lock(&sink.shared).cpu = Some(0.012);
    (engine, sink)
}

/// One second on: two new clients of nginx, one finishes (TIME_WAIT is the server's),
/// then a tally.
fn a_second_of_traffic(engine: &mut TestEngine, sink: &mut TopSink, round: u64) {
    let now = engine.host().now_ns + SEC;
    engine.host_mut().now_ns = now;
    let source = engine.source_mut().unwrap();
    for i in 0..2 {
        let sk = 1000 + round * 10 + i;
        let remote = ("198.51.100.20", 40000 + (round * 10 + i) as u16);
        for (old, new) in [(Listen, SynRecv), (SynRecv, Established)] {
            let mut t = transition(sk, now - SEC / 2, ("10.0.0.5", 8080), remote, old, new);
            if old == Listen {
                t.at.skaddr = sk;
            }
            source.push(encode_transition(&t));
        }
    }
    engine.drain(sink).unwrap();
    engine.tick(sink).unwrap();
    engine.write_tally(sink).unwrap();
}

/// The leak on 9000, 31 s old: past the 30 s the close_wait rule is given here.
fn leak_alerted() -> (TestEngine, TopSink) {
    let thresholds = Thresholds {
        close_wait_age_secs: 30.0,
        ..Thresholds::DEFAULT
    };
    let (mut engine, mut sink) = start(leaking(web_host()), false, thresholds);
    engine.host_mut().now_ns += 31 * SEC;
    engine.tick(&mut sink).unwrap();
    (engine, sink)
}

/// Two tallies of the web host: counts, a change, a sparkline.
fn idle() -> (TestEngine, TopSink) {
    let (mut engine, mut sink) = start(web_host(), false, Thresholds::DEFAULT);
    // A lossy client (7 segments sent again in two packets) and a scanner refused twice.
    let at = |remote: &str, local_port, remote_port| Endpoints {
        ts_ns: engine.host().now_ns,
        skaddr: 0,
        netns: NETNS,
        family: Family::Ipv4,
        local_ip: ip("10.0.0.5"),
        local_port,
        remote_ip: ip(remote),
        remote_port,
    };
    let mut records = Vec::new();
    for segments in [3, 4] {
        let mut raw = encode_endpoints(&at("198.51.100.9", 8080, 51000), kind::RETRANSMIT);
        raw.oldstate = segments;
        records.push(raw);
    }
    for port in [23, 3389] {
        records.push(encode_endpoints(
            &at("192.0.2.99", port, 40000),
            kind::RESET_SENT,
        ));
    }
    for raw in records {
        engine.source_mut().unwrap().push(raw);
    }
    a_second_of_traffic(&mut engine, &mut sink, 1);
    (engine, sink)
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn press(view: &mut View, sink: &TopSink, keys: &[KeyCode]) -> Vec<Action> {
    let dash = top::lock(&sink.shared).clone();
    keys.iter().map(|k| view.on_key(key(*k), &dash)).collect()
}

fn typed(view: &mut View, sink: &TopSink, text: &str) {
    let keys: Vec<KeyCode> = text.chars().map(KeyCode::Char).collect();
    press(view, sink, &keys);
}

fn render(sink: &TopSink, view: &View, width: u16, height: u16, theme: Theme) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let dash = top::lock(&sink.shared).clone();
    terminal
        .draw(|frame| top::draw(frame, &dash, view, theme))
        .unwrap();
    terminal.backend().buffer().clone()
}

/// The screen as text, one line per row, trailing blanks cut.
fn text(buffer: &Buffer) -> String {
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            let line: String = (0..area.width).map(|x| buffer[(x, y)].symbol()).collect();
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const COLOR: Theme = Theme { color: true };

fn screen(sink: &TopSink, view: &View, width: u16, height: u16) -> String {
    text(&render(sink, view, width, height, COLOR))
}

#[test]
fn idle_at_three_sizes() {
    let (_engine, sink) = idle();
    let view = View::default();
    insta::assert_snapshot!("idle_200x60", screen(&sink, &view, 200, 60));
    insta::assert_snapshot!("idle_80x24", screen(&sink, &view, 80, 24));
    insta::assert_snapshot!("idle_40x12", screen(&sink, &view, 40, 12));
}

#[test]
fn a_terminal_below_the_smallest_says_so_and_nothing_breaks() {
    let (_engine, sink) = idle();
    let view = View::default();
    insta::assert_snapshot!("too_small_30x10", screen(&sink, &view, 30, 10));
    // Every size from nothing up draws without a panic.
    for width in [0, 1, 2, 10, 39, 40, 41, 79, 80, 119, 120, 250] {
        for height in [0, 1, 3, 11, 12, 13, 19, 20, 33, 34, 70] {
            render(&sink, &view, width, height, COLOR);
        }
    }
}

#[test]
fn a_close_wait_leak_is_listed_with_its_owner_and_alerted() {
    let (mut engine, mut sink) = leak_alerted();
    engine.write_tally(&mut sink).unwrap();
    let mut view = View::default();
    insta::assert_snapshot!("close_wait_200x60", screen(&sink, &view, 200, 60));
    press(
        &mut view,
        &sink,
        &[KeyCode::Tab, KeyCode::Tab, KeyCode::Tab],
    );
    assert_eq!(view.focus, top::Pane::CloseWait);
    insta::assert_snapshot!("close_wait_80x24", screen(&sink, &view, 80, 24));
}

#[test]
fn a_syn_flood_is_alerted_and_its_listener_shows_it() {
    let thresholds = Thresholds {
        synack_retransmit_rate: 5.0,
        ..Thresholds::DEFAULT
    };
    let mut host = web_host();
    host.half_open = [(
        (ip("0.0.0.0"), 8080),
        HalfOpen {
            count: 180,
            sources: 40,
        },
    )]
    .into();
    let (mut engine, mut sink) = start(host, false, thresholds);
    let now = engine.host().now_ns + SEC;
    engine.host_mut().now_ns = now;
    for i in 0..40u16 {
        let at = Endpoints {
            ts_ns: now - SEC / 2,
            skaddr: 5000 + u64::from(i),
            netns: NETNS,
            family: Family::Ipv4,
            local_ip: ip("10.0.0.5"),
            local_port: 8080,
            remote_ip: IpAddr::from([192, 0, 2, (i % 40) as u8 + 1]),
            remote_port: 30000 + i,
        };
        let source = engine.source_mut().unwrap();
        source.push(encode_endpoints(&at, kind::SYN_REQUEST));
        source.push(encode_endpoints(&at, kind::SYNACK_RETRANSMIT));
    }
    engine.drain(&mut sink).unwrap();
    engine.tick(&mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    let dash = top::lock(&sink.shared).clone();
    assert!(
        dash.active_alerts().any(|a| a.rule == "syn_flood"),
        "{:?}",
        dash.active_alerts().collect::<Vec<_>>()
    );
    let view = View::default();
    insta::assert_snapshot!("syn_flood_200x60", screen(&sink, &view, 200, 60));
    insta::assert_snapshot!("syn_flood_80x24", screen(&sink, &view, 80, 24));
}

#[test]
fn pause_freezes_the_screen_while_the_engine_counts_on() {
    let (mut engine, mut sink) = idle();
    let mut view = View::default();
    assert_eq!(
        press(&mut view, &sink, &[KeyCode::Char('p')]),
        [Action::Redraw]
    );
    let before = screen(&sink, &view, 80, 24);
    a_second_of_traffic(&mut engine, &mut sink, 2);
    let live = top::lock(&sink.shared).clone();
    assert_eq!(
        live.latest.as_ref().unwrap().states.get(Established),
        14,
        "the engine counted on"
    );
    let paused = screen(&sink, &view, 80, 24);
    assert_eq!(paused, before, "the screen stayed as it was");
    assert!(paused.contains("PAUSED"));
    insta::assert_snapshot!("paused_80x24", paused);
    press(&mut view, &sink, &[KeyCode::Char(' ')]);
    let resumed = screen(&sink, &view, 80, 24);
    assert!(!resumed.contains("PAUSED"));
    assert!(
        resumed
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                == ["│ESTABLISHED", "14", "+2"]),
        "{resumed}"
    );
}

#[test]
fn a_filter_keeps_the_rows_that_match_and_esc_clears_it() {
    let (_engine, sink) = idle();
    let mut view = View::default();
    press(
        &mut view,
        &sink,
        &[KeyCode::Tab, KeyCode::Tab, KeyCode::Char('/')],
    );
    typed(&mut view, &sink, "100.9");
    insta::assert_snapshot!("filter_typing_80x24", screen(&sink, &view, 80, 24));
    press(&mut view, &sink, &[KeyCode::Enter]);
    let filtered = screen(&sink, &view, 80, 24);
    assert!(filtered.contains("198.51.100.9") && !filtered.contains("198.51.100.7"));
    insta::assert_snapshot!("filter_80x24", filtered);
    press(&mut view, &sink, &[KeyCode::Esc]);
    assert!(screen(&sink, &view, 80, 24).contains("198.51.100.7"));
}

#[test]
fn sort_cycles_columns_and_reverses() {
    let (_engine, sink) = idle();
    let mut view = View::default();
    press(&mut view, &sink, &[KeyCode::Tab, KeyCode::Tab]);
    assert_eq!(view.focus, top::Pane::Peers);
    let order = |view: &View| -> Vec<String> {
        let dash = top::lock(&sink.shared).clone();
        top::rows(top::Pane::Peers, &dash, view)
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    // By total, largest first.
    assert_eq!(
        order(&view),
        [
            "198.51.100.7",
            "198.51.100.9",
            "203.0.113.7",
            "198.51.100.20",
            "192.0.2.44",
            "192.0.2.99"
        ]
    );
    // TOTAL, then RETRANS, RESETS, REMOTE.
    press(
        &mut view,
        &sink,
        &[KeyCode::Char('s'), KeyCode::Char('s'), KeyCode::Char('s')],
    );
    insta::assert_snapshot!("sorted_by_remote_80x24", screen(&sink, &view, 80, 24));
    assert_eq!(
        order(&view),
        [
            "192.0.2.44",
            "192.0.2.99",
            "198.51.100.7",
            "198.51.100.9",
            "198.51.100.20",
            "203.0.113.7"
        ]
    );
    press(&mut view, &sink, &[KeyCode::Char('S')]);
    assert_eq!(
        order(&view).first().map(String::as_str),
        Some("203.0.113.7")
    );
}

#[test]
fn enter_drills_into_a_peer_with_tcp_info_and_esc_goes_back() {
    let (_engine, sink) = idle();
    let mut view = View::default();
    let actions = press(
        &mut view,
        &sink,
        &[KeyCode::Tab, KeyCode::Tab, KeyCode::Enter],
    );
    let Some(Action::Drill(request)) = actions.last().copied() else {
        panic!("{actions:?}");
    };
    assert_eq!(request.target, top::Target::Peer(ip("198.51.100.7")));
    insta::assert_snapshot!("drill_loading_80x24", screen(&sink, &view, 80, 24));
    let connection = |port: u16, rtt: f64, retrans: u32| Connection {
        family: Family::Ipv4,
        state: Established,
        local_ip: ip("10.0.0.5"),
        local_port: 8080,
        remote_ip: ip("198.51.100.7"),
        remote_port: port,
        send_queue: 0,
        recv_queue: 0,
        uid: 33,
        inode: 101,
        timer_secs: None,
        netns: None,
        info: Some(TcpInfo {
            rtt_ms: rtt,
            total_retrans: retrans,
            snd_cwnd: 10,
            ..TcpInfo::default()
        }),
        process: Some(process(310, "nginx")),
    };
    view.drill_loaded(
        request,
        DrillState::Loaded {
            connections: vec![connection(50000, 0.4, 0), connection(50001, 212.5, 7)],
            total: 6,
            notes: Vec::new(),
        },
    );
    insta::assert_snapshot!("drill_80x24", screen(&sink, &view, 120, 24));
    press(&mut view, &sink, &[KeyCode::Esc]);
    assert!(view.drill.is_none());
    assert!(screen(&sink, &view, 80, 24).contains("Peers"));
}

#[test]
fn a_namespace_scopes_every_pane() {
    let mut host = web_host();
    host.namespaces = vec![pod()];
    host.other_sockets = [(
        POD_NETNS,
        vec![
            Socket::new(Listen, (ip("10.244.0.7"), 80), (ip("0.0.0.0"), 0), 50),
            Socket::new(
                Established,
                (ip("10.244.0.7"), 80),
                (ip("10.244.0.1"), 60000),
                51,
            ),
            Socket::new(
                Established,
                (ip("10.244.0.7"), 80),
                (ip("10.244.0.1"), 60001),
                52,
            ),
            Socket::new(
                CloseWait,
                (ip("10.244.0.7"), 80),
                (ip("10.244.0.9"), 60002),
                53,
            ),
        ],
    )]
    .into();
    let (mut engine, mut sink) = start(host, true, Thresholds::DEFAULT);
    a_second_of_traffic(&mut engine, &mut sink, 1);
    let mut view = View::default();
    insta::assert_snapshot!("namespaces_200x60", screen(&sink, &view, 200, 60));
    press(
        &mut view,
        &sink,
        &[KeyCode::Char('n'), KeyCode::Down, KeyCode::Enter],
    );
    assert_eq!(view.scope, Some(POD_NETNS));
    let scoped = screen(&sink, &view, 200, 60);
    assert!(scoped.contains("scope: pod web-7d9"), "{scoped}");
    assert!(scoped.contains("10.244.0.7:80") && !scoped.contains("0.0.0.0:8080"));
    insta::assert_snapshot!("namespace_scoped_200x60", scoped);
    press(&mut view, &sink, &[KeyCode::Esc]);
    assert_eq!(view.scope, None);
}

#[test]
fn help_lists_the_keys_and_any_key_closes_it() {
    let (_engine, sink) = idle();
    let mut view = View::default();
    press(&mut view, &sink, &[KeyCode::Char('?')]);
    insta::assert_snapshot!("help_80x24", screen(&sink, &view, 80, 24));
    press(&mut view, &sink, &[KeyCode::Char('x')]);
    assert!(!view.help);
}

#[test]
fn q_and_ctrl_c_quit_from_anywhere() {
    let (_engine, sink) = idle();
    let dash = top::lock(&sink.shared).clone();
    let mut view = View::default();
    assert_eq!(view.on_key(key(KeyCode::Char('q')), &dash), Action::Quit);
    // Typing a filter, q is a letter; Ctrl-C still quits.
    view.on_key(key(KeyCode::Char('/')), &dash);
    assert_eq!(view.on_key(key(KeyCode::Char('q')), &dash), Action::Redraw);
    assert_eq!(view.filter, "q");
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(view.on_key(ctrl_c, &dash), Action::Quit);
}

#[test]
fn cleared_alerts_are_dimmed_and_no_color_draws_no_colour() {
    let (mut engine, mut sink) = leak_alerted();
    // The leaking sockets go away: the alert clears.
    engine.host_mut().sockets.retain(|s| s.state != CloseWait);
    engine.host_mut().now_ns += 60 * SEC;
    engine
        .reconcile(tcpmon::live::Reason::Periodic, &mut sink)
        .unwrap();
    engine.tick(&mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    let view = View::default();
    let buffer = render(&sink, &view, 200, 60, COLOR);
    let shown = text(&buffer);
    let (y, line) = shown
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("cleared"))
        .unwrap_or_else(|| panic!("{shown}"));
    let x = line.find("cleared").unwrap() as u16;
    assert!(buffer[(x, y as u16)].modifier.contains(Modifier::DIM));
    assert!(buffer
        .content
        .iter()
        .any(|c| c.fg != ratatui::style::Color::Reset));
    let plain = render(&sink, &view, 200, 60, Theme { color: false });
    assert!(plain
        .content
        .iter()
        .all(|c| c.fg == ratatui::style::Color::Reset && c.bg == ratatui::style::Color::Reset));
    assert_eq!(text(&plain), shown);
}

/// Rows at equal values keep their order between refreshes, and the selection follows
/// its row when the order changes.
#[test]
fn rows_do_not_jump_and_the_selection_follows_its_row() {
    let (mut engine, mut sink) = idle();
    let mut view = View::default();
    press(
        &mut view,
        &sink,
        &[KeyCode::Tab, KeyCode::Tab, KeyCode::Down, KeyCode::Down],
    );
    let dash = top::lock(&sink.shared).clone();
    let rows = top::rows(top::Pane::Peers, &dash, &view);
    let selected = view.selected_row(top::Pane::Peers, &rows).unwrap();
    assert_eq!(rows[selected].id, "203.0.113.7");
    // 198.51.100.20 grows past it: the selection stays on 203.0.113.7.
    for round in 2..5 {
        a_second_of_traffic(&mut engine, &mut sink, round);
    }
    let dash = top::lock(&sink.shared).clone();
    let rows = top::rows(top::Pane::Peers, &dash, &view);
    let selected = view.selected_row(top::Pane::Peers, &rows).unwrap();
    assert_eq!(rows[selected].id, "203.0.113.7");
    // Equal totals: by address, every time.
    for _ in 0..3 {
        let again = top::rows(top::Pane::Peers, &dash, &view);
        assert_eq!(
            again.iter().map(|r| &r.id).collect::<Vec<_>>(),
            rows.iter().map(|r| &r.id).collect::<Vec<_>>()
        );
    }
}
