//! `tcpmon watch` on the eBPF path: exact transition sequences and honest loss counts.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::harness::{check_schema, records, require_root, Netns, Watcher};

fn start_watch(ns: &Netns, extra: &[&str]) -> Watcher {
    let mut args = vec![
        "watch",
        "--json",
        "--mode",
        "ebpf",
        "--tally-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    Watcher::start(Some(ns), &args, |line| line.contains("\"type\":\"mode\""))
}

/// One connection with a byte each way; `client_closes_first` picks the active closer.
fn one_connection(listen: SocketAddr, client_closes_first: bool) -> (u16, u16) {
    let listener = TcpListener::bind(listen).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(server_addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).unwrap();
    server.write_all(b"y").unwrap();
    client.read_exact(&mut byte).unwrap();
    let (active, passive) = if client_closes_first {
        (client, server)
    } else {
        (server, client)
    };
    let mut passive = passive;
    drop(active);
    // The passive side sees EOF (its socket is in CLOSE_WAIT), then closes.
    assert_eq!(passive.read(&mut byte).unwrap(), 0);
    drop(passive);
    drop(listener);
    // Let the final ACK arrive so the active side reaches TIME_WAIT (CLOSE event).
    std::thread::sleep(Duration::from_millis(200));
    (server_addr.port(), client_port)
}

/// Transitions grouped per socket (skaddr), in order, as "OLD->NEW".
fn sequences(lines: &[String]) -> BTreeMap<String, (Vec<String>, Vec<Value>)> {
    let mut per_socket: BTreeMap<String, (Vec<String>, Vec<Value>)> = BTreeMap::new();
    for t in records(lines, "transition") {
        let entry = per_socket
            .entry(t["skaddr"].as_str().unwrap().to_owned())
            .or_default();
        entry.0.push(format!(
            "{}->{}",
            t["old"].as_str().unwrap(),
            t["new"].as_str().unwrap()
        ));
        entry.1.push(t);
    }
    per_socket
}

fn check_sequences(family: &str, listen: SocketAddr) {
    let test = format!("transition_sequences_{family}");
    if !require_root(&test) {
        return;
    }
    // The three hooks (the BTF one is the default here; raw and classic are the
    // fallbacks) must give the same records, through the slot rings or (forced) the
    // ring buffers.
    for (client_closes_first, hook, described, transport) in [
        (true, "auto", "BTF tracepoint", "slot rings"),
        (false, "btf", "BTF tracepoint", "slot rings"),
        (true, "raw", "raw tracepoint", "slot rings"),
        (false, "raw", "raw tracepoint", "slot rings"),
        (true, "classic", "classic tracepoint", "slot rings"),
        (false, "classic", "classic tracepoint", "slot rings"),
        (true, "auto", "BTF tracepoint", "ring buffers only"),
        (false, "auto", "BTF tracepoint", "ring buffers only"),
    ] {
        let ns = Netns::new("seq");
        let mut args = vec!["--state-hook", hook];
        let slot_rings = transport == "slot rings";
        if !slot_rings {
            args.push("--ring-buffers-only");
        }
        let watcher = start_watch(&ns, &args);
        let (server_port, client_port) =
            ns.run(move || one_connection(listen, client_closes_first));
        watcher.wait_for(Duration::from_secs(10), "listener close", |l| {
            l.contains("\"old\":\"LISTEN\",\"new\":\"CLOSE\"")
        });
        let (lines, status) = watcher.stop();
        assert!(status.success(), "tcpmon exited with {status}");
        // Every record of the real stream, each hook and transport, is as documented.
        check_schema(&lines);
        let mode = records(&lines, "mode").next().expect("a mode record");
        let reason = mode["reason"].as_str().unwrap();
        assert!(reason.contains(described), "--state-hook {hook}: {mode}");
        assert_eq!(
            reason.contains("slot rings"),
            slot_rings,
            "{transport}: {mode}"
        );
        let per_socket = sequences(&lines);
        let find = |pred: &dyn Fn(&Value) -> bool| {
            per_socket
                .values()
                .find(|(_, recs)| recs.iter().any(pred))
                .map(|(seq, _)| seq.join(" "))
                .unwrap_or_else(|| panic!("socket not found in {per_socket:#?}"))
        };
        let client = find(&|t| t["local_port"] == client_port && t["remote_port"] == server_port);
        let server = find(&|t| t["local_port"] == server_port && t["remote_port"] == client_port);
        let listener = find(&|t| t["new"] == "LISTEN");
        // The active closer's FIN_WAIT2 -> CLOSE is shown as the TIME_WAIT it enters.
        let active = "ESTABLISHED->FIN_WAIT1 FIN_WAIT1->FIN_WAIT2 FIN_WAIT2->TIME_WAIT";
        let passive = "ESTABLISHED->CLOSE_WAIT CLOSE_WAIT->LAST_ACK LAST_ACK->CLOSE";
        let (client_end, server_end) = if client_closes_first {
            (active, passive)
        } else {
            (passive, active)
        };
        assert_eq!(
            client,
            format!("CLOSE->SYN_SENT SYN_SENT->ESTABLISHED {client_end}"),
            "{family} client, {hook}, {transport}"
        );
        assert_eq!(
            server,
            format!("LISTEN->SYN_RECV SYN_RECV->ESTABLISHED {server_end}"),
            "{family} server, {hook}, {transport}"
        );
        assert_eq!(
            listener, "CLOSE->LISTEN LISTEN->CLOSE",
            "{family} listener, {hook}, {transport}"
        );
        // Exactly these three sockets: nothing from other namespaces leaked in.
        assert_eq!(per_socket.len(), 3, "{per_socket:#?}");
        let loopback = listen.ip().to_string();
        for t in records(&lines, "transition") {
            assert_eq!(t["family"], family);
            // Both ends are the loopback address on every transition, whichever field
            // the hook reads it from (the BTF one takes the bound address).
            let is_listener = t["remote_port"] == 0;
            assert_eq!(t["local_ip"], loopback.as_str(), "{t}");
            if !is_listener {
                assert_eq!(t["remote_ip"], loopback.as_str(), "{t}");
            }
            assert_eq!(t["netns"].as_u64(), Some(ns.inode()), "{t}");
            // pid only where a syscall made the transition
            let syscall = matches!(
                (t["old"].as_str().unwrap(), t["new"].as_str().unwrap()),
                ("CLOSE", "LISTEN")
                    | ("LISTEN", "CLOSE")
                    | ("CLOSE", "SYN_SENT")
                    | ("ESTABLISHED", "FIN_WAIT1")
                    | ("CLOSE_WAIT", "LAST_ACK")
            );
            assert_eq!(t["pid"].is_u64(), syscall, "{t}");
            // Ports are known on every transition (->CLOSE included, where the raw
            // program must not take the already-cleared skc_num), except connect()'s
            // first, before a source port is chosen.
            let connecting = t["old"] == "CLOSE" && t["new"] == "SYN_SENT";
            assert_eq!(t["local_port"] == 0, connecting, "{t}");
            if syscall {
                assert_eq!(
                    t["pid"].as_u64(),
                    Some(u64::from(std::process::id())),
                    "{t}"
                );
            }
        }
        // Time in the old state is known for every transition but each socket's first.
        let all = records(&lines, "transition").count();
        let timed = records(&lines, "transition")
            .filter(|t| t["ms_in_old"].is_f64())
            .count();
        assert_eq!((all, timed), (12, 9));
    }
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn transition_sequences_ipv4() {
    check_sequences("ipv4", SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn transition_sequences_ipv6() {
    check_sequences("ipv6", SocketAddr::from((Ipv6Addr::LOCALHOST, 0)));
}

/// Pins the calling thread to `cpu` (modulo the CPUs there are).
fn pin_to_cpu(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the call only reads.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn last_tally_lost(lines: &[String]) -> u64 {
    records(lines, "tally")
        .last()
        .and_then(|t| t["lost"].as_u64())
        .unwrap_or(0)
}

/// N connections produce exactly 10 transitions each (plus the listener's two), or the
/// shortfall is reported as lost: never silently missing.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn every_event_arrives_or_is_counted_lost() {
    if !require_root("every_event_arrives_or_is_counted_lost") {
        return;
    }
    // Clients on one CPU and servers on another, so that each socket's transitions are
    // recorded in both per-CPU rings and must be put back in order.
    const THREADS: usize = 2;
    const N: usize = 2000;
    let ns = Netns::new("count");
    let watcher = start_watch(&ns, &[]);
    ns.run(|| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let addr = listener.local_addr().unwrap();
                let server = std::thread::spawn(move || {
                    pin_to_cpu(1);
                    for _ in 0..N / THREADS {
                        let (mut server, _) = listener.accept().unwrap();
                        let mut buf = [0u8; 1];
                        assert_eq!(server.read(&mut buf).unwrap(), 0);
                    }
                });
                let client = std::thread::spawn(move || {
                    pin_to_cpu(0);
                    for _ in 0..N / THREADS {
                        drop(TcpStream::connect(addr).unwrap());
                    }
                });
                (server, client)
            })
            .collect();
        for (server, client) in workers {
            client.join().unwrap();
            server.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    });
    watcher.wait_for(Duration::from_secs(20), "listener close", |l| {
        l.contains("\"old\":\"LISTEN\",\"new\":\"CLOSE\"")
    });
    let (lines, status) = watcher.stop();
    assert!(status.success());
    let expected = (10 * N + 2 * THREADS) as u64;
    let transitions: Vec<Value> = records(&lines, "transition").collect();
    let seen = transitions.len() as u64;
    // Each socket's transitions, in the order printed, chain: one ends where the next
    // begins (a socket address is reused only after CLOSE).
    let mut last_state: BTreeMap<String, String> = BTreeMap::new();
    let mut broken = Vec::new();
    for t in &transitions {
        let sk = t["skaddr"].as_str().unwrap().to_owned();
        let (old, new) = (t["old"].as_str().unwrap(), t["new"].as_str().unwrap());
        if let Some(previous) = last_state.get(&sk) {
            // CLOSE and TIME_WAIT (the full socket is freed on entering it) end a life.
            if previous != "CLOSE" && previous != "TIME_WAIT" && previous != old {
                broken.push(format!("{sk}: {previous} then {old} -> {new}"));
            }
        }
        last_state.insert(sk, new.to_owned());
    }
    // A lost event breaks a chain too; only those may.
    assert!(
        broken.len() as u64 <= last_tally_lost(&lines),
        "{} transitions out of order, e.g. {:?}",
        broken.len(),
        &broken[..broken.len().min(5)]
    );
    let last_tally = records(&lines, "tally").last().expect("a final tally");
    let lost = last_tally["lost"].as_u64().unwrap();
    let received = last_tally["received"]["transitions"].as_u64().unwrap();
    assert_eq!(received, seen, "the tally counts what was printed");
    assert!(
        seen <= expected,
        "more events than transitions: {seen} > {expected}"
    );
    assert_eq!(
        seen + lost.min(expected - seen),
        expected,
        "shortfall {} but only {lost} reported lost",
        expected - seen
    );
    eprintln!("{N} connections: {seen}/{expected} transitions received, {lost} reported lost");
}

/// The nice value of `pid`'s main thread (the reader): field 19 of /proc/PID/stat.
fn nice_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces, start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn the_reader_raises_its_priority_unless_told_otherwise() {
    if !require_root("the_reader_raises_its_priority_unless_told_otherwise") {
        return;
    }
    let ns = Netns::new("nice");
    for (extra, nice) in [(&[][..], -19), (&["--nice", "5"][..], 5)] {
        let watcher = start_watch(&ns, extra);
        assert_eq!(nice_of(watcher.pid()), nice, "{extra:?}");
        let mode = watcher.wait_for(Duration::from_secs(1), "mode line", |l| {
            l.contains("\"type\":\"mode\"")
        });
        assert!(mode.contains(&format!("reader at nice {nice}")), "{mode}");
        watcher.stop();
    }
}
