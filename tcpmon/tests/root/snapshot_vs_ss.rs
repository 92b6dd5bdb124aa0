//! The snapshot engine against `ss -tan` on a real socket population built in a private
//! namespace: every state count, per-IP and per-port count must agree.
use std::{
    collections::BTreeMap,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::harness::{require_root, tcpmon_bin, Netns};

/// Sockets kept open for the duration of the comparison.
struct Population {
    _keep: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
}

fn connect_pairs(listener: &TcpListener, n: usize, keep: &mut Vec<TcpStream>) {
    let addr = listener.local_addr().unwrap();
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    for _ in 0..n {
        keep.push(TcpStream::connect(target).unwrap());
        keep.push(listener.accept().unwrap().0);
    }
}

fn build() -> Population {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 8001)).unwrap();
    let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 8002)).unwrap();
    let wildcard = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8003)).unwrap();
    // IPv6 wildcard, dual-stack: IPv4 clients appear as ::ffff:127.0.0.1 on the server side.
    let dual = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 8004)).unwrap();
    let mut keep = Vec::new();
    connect_pairs(&v4, 20, &mut keep);
    connect_pairs(&v6, 10, &mut keep);
    connect_pairs(&dual, 5, &mut keep);
    // TIME_WAIT: the client closes first, the server answers, the client keeps TIME_WAIT.
    for _ in 0..15 {
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 8001)).unwrap();
        let (mut server, _) = v4.accept().unwrap();
        drop(client);
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).unwrap(), 0);
    }
    // CLOSE_WAIT: the client closes, the server never does (client is left in FIN_WAIT2).
    for _ in 0..7 {
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 8003)).unwrap();
        let (server, _) = wildcard.accept().unwrap();
        drop(client);
        keep.push(server);
    }
    std::thread::sleep(Duration::from_millis(300));
    Population {
        _keep: keep,
        _listeners: vec![v4, v6, wildcard, dual],
    }
}

/// ss -tan rows as (state in tcpmon's spelling, local, peer).
fn ss_rows(ns: &Netns) -> Vec<(String, String, String)> {
    let out = ns.exec_ok(&["ss", "-tan"]);
    out.lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let state = match cols[0] {
                "ESTAB" => "ESTABLISHED".to_owned(),
                "UNCONN" | "CLOSED" => "CLOSE".to_owned(),
                other => other.replace('-', "_").replace("FIN_WAIT_", "FIN_WAIT"),
            };
            (state, cols[3].to_owned(), cols[4].to_owned())
        })
        .collect()
}

fn host_of(endpoint: &str) -> IpAddr {
    let (host, _port) = endpoint.rsplit_once(':').unwrap();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host
        .parse()
        .unwrap_or_else(|_| panic!("unparsable ss address {endpoint}"));
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn tcpmon_json(ns: &Netns, args: &[&str]) -> Value {
    let mut argv = vec![tcpmon_bin().to_str().unwrap().to_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.push("--json".into());
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    serde_json::from_str(&ns.exec_ok(&refs)).unwrap()
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn counts_match_ss() {
    if !require_root("counts_match_ss") {
        return;
    }
    let ns = Netns::new("snap");
    let _population = ns.run(build);
    for source in ["netlink", "proc"] {
        eprintln!("source {source}");
        counts_match_ss_through(&ns, source);
    }
    // The default is netlink, and says so.
    assert_eq!(tcpmon_json(&ns, &["states"])["source"], "netlink");
}

fn counts_match_ss_through(ns: &Netns, source: &str) {
    let tcpmon_json = |ns: &Netns, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--source", source]);
        let doc = tcpmon_json(ns, &all);
        assert_eq!(doc["source"], source);
        doc
    };
    let rows = ss_rows(ns);
    let report = tcpmon_json(ns, &["report", "--all"]);

    // Every state count.
    let mut ss_states: BTreeMap<String, u64> = BTreeMap::new();
    for (state, _, _) in &rows {
        *ss_states.entry(state.clone()).or_default() += 1;
    }
    let ours = crate::harness::nonzero_states(&report);
    assert_eq!(ours, ss_states, "state counts differ from ss -tan");
    assert_eq!(report["total"].as_u64().unwrap(), rows.len() as u64);
    // The population we built, so a shared bug in both tools cannot pass unnoticed.
    assert_eq!(ours["ESTABLISHED"], 2 * (20 + 10 + 5));
    assert_eq!(ours["TIME_WAIT"], 15);
    assert_eq!(ours["CLOSE_WAIT"], 7);
    assert_eq!(ours["FIN_WAIT2"], 7);
    assert_eq!(ours["LISTEN"], 4);

    // Per remote IP (listeners excluded, v4-mapped folded).
    let mut ss_per_ip: BTreeMap<String, u64> = BTreeMap::new();
    for (state, _, peer) in &rows {
        if state != "LISTEN" {
            *ss_per_ip.entry(host_of(peer).to_string()).or_default() += 1;
        }
    }
    let per_ip: BTreeMap<String, u64> = report["per_ip"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["ip"].as_str().unwrap().to_owned(),
                i["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_ip, ss_per_ip);
    assert_eq!(per_ip["127.0.0.1"], 2 * 20 + 2 * 5 + 15 + 14);

    // Per service port, ESTABLISHED only: inbound by local port, outbound (from an
    // ephemeral port to a non-ephemeral one) by remote port.
    let range = ns.exec_ok(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
    let (low, high): (u64, u64) = {
        let mut bounds = range.split_whitespace().map(|b| b.parse().unwrap());
        (bounds.next().unwrap(), bounds.next().unwrap())
    };
    let ephemeral = |port: u64| (low..=high).contains(&port);
    let port_of = |endpoint: &str| -> u64 { endpoint.rsplit_once(':').unwrap().1.parse().unwrap() };
    let mut ss_per_port: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for (state, local, peer) in &rows {
        if state == "ESTABLISHED" {
            let (local, remote) = (port_of(local), port_of(peer));
            let key = if ephemeral(local) && !ephemeral(remote) {
                ("out".to_owned(), remote)
            } else {
                ("in".to_owned(), local)
            };
            *ss_per_port.entry(key).or_default() += 1;
        }
    }
    let per_port: BTreeMap<(String, u64), u64> = report["per_port"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                (
                    p["direction"].as_str().unwrap().to_owned(),
                    p["port"].as_u64().unwrap(),
                ),
                p["established"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_port, ss_per_port);
    // Our population: 35 connections in, the same 35 out, from ephemeral ports.
    assert_eq!(per_port.values().sum::<u64>(), 70);
    assert_eq!(per_port[&("out".to_owned(), 8001)], 20);

    // Owners: root sees this test process behind the listeners and CLOSE_WAIT sockets.
    let me = u64::from(std::process::id());
    let listeners = report["listeners"]["items"].as_array().unwrap();
    assert_eq!(listeners.len(), 4);
    for l in listeners {
        assert_eq!(l["process"]["pid"].as_u64(), Some(me), "{l}");
    }
    let wildcard: Vec<bool> = listeners
        .iter()
        .map(|l| l["wildcard"].as_bool().unwrap())
        .collect();
    assert_eq!(wildcard.iter().filter(|w| **w).count(), 2);
    let cw = &report["close_wait"]["items"][0];
    assert_eq!(
        (cw["local_port"].as_u64(), cw["count"].as_u64()),
        (Some(8003), Some(7))
    );
    assert_eq!(cw["process"]["pid"].as_u64(), Some(me));
    let finding = report["findings"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "close_wait")
        .unwrap();
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("local port 8003"),
        "{finding}"
    );

    // The filters agree with ss's own.
    let v6 = tcpmon_json(ns, &["states", "-6"]);
    let ss_v6 = ns.exec_ok(&["ss", "-tan6"]).lines().skip(1).count() as u64;
    assert_eq!(v6["total"].as_u64(), Some(ss_v6));
    let tw = tcpmon_json(ns, &["timewait"]);
    assert_eq!(tw["time_wait"], 15);
    assert_eq!(tw["destinations"]["items"][0]["port"], 8001);
    // Commands that show some states count only those.
    let est = tcpmon_json(ns, &["established", "--all"]);
    assert_eq!(est["total"], ours["ESTABLISHED"]);
    assert_eq!(est["established"]["total"], ours["ESTABLISHED"]);
    let listen = tcpmon_json(ns, &["listen"]);
    assert_eq!(listen["listeners"]["total"], 4);
}

/// A peer that never reads: its receive window closes, the sender's queue fills and the
/// kernel starts zero-window probes. Both sources see it; through netlink, tcp_info too.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_peer_that_stops_reading_is_found() {
    if !require_root("a_peer_that_stops_reading_is_found") {
        return;
    }
    use std::io::Write;
    let ns = Netns::new("stuck");
    let _held = ns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 8500)).unwrap();
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, 8500)).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0usize;
        // Bounded: the buffers of one loopback connection hold a few MiB at most.
        while sent < 256 << 20 {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        (listener, client, server)
    });
    // The first zero-window probe comes after one RTO (200 ms at least).
    std::thread::sleep(Duration::from_millis(1500));
    for source in ["netlink", "proc"] {
        let doc = tcpmon_json(&ns, &["audit", "--source", source]);
        let finding = doc["findings"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["rule"] == "stuck_send_queue")
            .unwrap_or_else(|| panic!("{source}: no stuck_send_queue finding in {doc}"))
            .clone();
        let message = finding["message"].as_str().unwrap();
        assert!(
            message.contains("1 connection to 127.0.0.1 cannot send"),
            "{source}: {message}"
        );
    }
    let report = tcpmon_json(&ns, &["report"]);
    assert_eq!(report["stuck"]["items"][0]["connections"], 1);
    assert!(
        report["stuck"]["items"][0]["queued_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
}
