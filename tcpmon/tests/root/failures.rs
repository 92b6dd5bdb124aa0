//! Why connections fail, with real traffic in private namespaces: nftables dropping a
//! share of one port's packets on input (this kernel has no netem) makes retransmits,
//! connects to a closed port make resets sent and received. What tcpmon's tally says is
//! compared with the namespace's own counters (nstat) and with what the test did.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{records, require_root, Netns, Watcher};

/// `names` from `nstat` in `ns`, absolute (since the namespace was made), history left
/// alone.
fn nstat(ns: &Netns, names: &[&str]) -> Vec<u64> {
    let mut args = vec!["nstat", "-asz"];
    args.extend_from_slice(names);
    let out = ns.exec_ok(&args);
    names
        .iter()
        .map(|name| {
            out.lines()
                .find_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next() == Some(*name)).then(|| words.next()?.parse().ok())?
                })
                .unwrap_or(0)
        })
        .collect()
}

/// One counter of `nstat` in `ns`.
fn nstat_one(ns: &Netns, name: &str) -> u64 {
    nstat(ns, &[name])[0]
}

/// `n` connects from `ns` to its closed port 9: how many were refused.
fn refused_connects(ns: &Netns, n: usize) -> u64 {
    ns.run(move || {
        (0..n)
            .filter(|_| {
                TcpStream::connect("127.0.0.1:9")
                    .err()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .count() as u64
    })
}

/// The `failures` of a tally written at least one interval from now.
fn failures_now(watcher: &Watcher) -> Value {
    let tallies_before = watcher.count("tally");
    let started = Instant::now();
    while watcher.count("tally") <= tallies_before + 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "no tally");
        thread::sleep(Duration::from_millis(50));
    }
    let lines = watcher.lines();
    records(&lines, "tally")
        .last()
        .map(|t| t["failures"].clone())
        .expect("a tally")
}

/// Drops the packets `matching` on input in `ns` (the rules go with the namespace).
fn drop_on_input(ns: &Netns, matching: &str) {
    ns.exec_ok(&["nft", "add", "table", "inet", "tcpmon_test"]);
    ns.exec_ok(&[
        "nft",
        "add chain inet tcpmon_test input { type filter hook input priority 0; }",
    ]);
    ns.exec_ok(&[
        "nft",
        &format!("add rule inet tcpmon_test input {matching} counter drop"),
    ]);
}

/// Packets the rule of [`drop_on_input`] dropped so far.
fn dropped_on_input(ns: &Netns) -> u64 {
    let rules = ns.exec_ok(&["nft", "list", "chain", "inet", "tcpmon_test", "input"]);
    let words: Vec<&str> = rules.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == "counter" && w[1] == "packets")
        .and_then(|w| w[2].parse().ok())
        .unwrap_or_else(|| panic!("no counter in {rules}"))
}

fn watch(ns: &Netns) -> Watcher {
    let watcher = Watcher::start(
        Some(ns),
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--mode",
            "ebpf",
            "--tally-interval",
            "500ms",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    // The ready signal comes as the mode line is read, before it is kept.
    let started = Instant::now();
    let mode = loop {
        if let Some(mode) = records(&watcher.lines(), "mode").next() {
            break mode;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no mode record");
        thread::sleep(Duration::from_millis(20));
    };
    let notes = mode["notes"].to_string();
    assert!(!notes.contains("not watched"), "{notes}");
    watcher
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn retransmits_are_counted_as_the_kernel_counts_them_and_placed() {
    if !require_root("retransmits_are_counted_as_the_kernel_counts_them_and_placed") {
        return;
    }
    let ns = Netns::new("retrans");
    // An Ethernet-sized MTU: thousands of segments for the drops to hit, not 64 KiB ones.
    ns.exec_ok(&["ip", "link", "set", "lo", "mtu", "1500"]);
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:7070").unwrap());
    // A tenth of the packets toward the server's port are dropped on input.
    drop_on_input(&ns, "tcp dport 7070 numgen random mod 10 < 1");
    let watcher = watch(&ns);
    let before = nstat_one(&ns, "TcpRetransSegs");
    // 4 MiB in 16 KiB writes, all read by the server; the connection stays open.
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while total < 4 << 20 {
            match s.read(&mut buf).unwrap() {
                0 => break,
                n => total += n,
            }
        }
        (total, s)
    });
    let client = ns.run(|| {
        let mut c = TcpStream::connect("127.0.0.1:7070").unwrap();
        let chunk = vec![7u8; 16 << 10];
        for _ in 0..256 {
            c.write_all(&chunk).unwrap();
        }
        c
    });
    let (received, server_side) = server.join().unwrap();
    assert_eq!(received, 4 << 20);
    // The connection stays open (for its tcp_info) and may still send a late retransmit:
    // the figures are compared once a tally came with no drop before or after it.
    let (after, failures, nft_dropped, segs_out) = (0..5)
        .find_map(|_| {
            let nft_before = dropped_on_input(&ns);
            let after = nstat_one(&ns, "TcpRetransSegs");
            let failures = failures_now(&watcher);
            // What the client sent in all, as tcp_info says it, read after tcpmon's
            // tally (its count only grows).
            let ss = ns.exec_ok(&["ss", "-tinH", "dport = :7070"]);
            let segs_out: u64 = ss
                .split_whitespace()
                .find_map(|w| w.strip_prefix("segs_out:"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no segs_out in {ss}"));
            (dropped_on_input(&ns) == nft_before).then_some((after, failures, nft_before, segs_out))
        })
        .expect("a quiet tally in five");
    drop((client, server_side));
    let kernel = after - before;
    let seen = failures["retransmits"].as_u64().unwrap();
    eprintln!("retransmits: tcpmon {seen}, TcpRetransSegs {kernel}");
    assert!(kernel >= 50, "the drops made retransmits: {kernel}");
    let off = seen.abs_diff(kernel) as f64 / kernel as f64;
    assert!(off <= 0.03, "tcpmon {seen} vs kernel {kernel}");
    // The client retransmitted toward the server's port: an outbound service port.
    let by_port = failures["by_port"].as_array().unwrap();
    let port = by_port
        .iter()
        .find(|p| p["port"] == 7070)
        .unwrap_or_else(|| panic!("{failures}"));
    assert_eq!(port["direction"], "out");
    assert_eq!(failures["by_peer"][0]["ip"], "127.0.0.1");
    // The share: the segments sent are the client's, counted up to its last retransmit.
    // Loopback drops whole GSO packets of dozens of segments, so the last one can come
    // hundreds of segments before the end.
    let sent = failures["by_peer"][0]["segments_sent"].as_u64().unwrap();
    eprintln!("segments sent: tcpmon {sent} up to the last retransmit, tcp_info {segs_out}");
    assert!(
        sent <= segs_out && sent * 10 >= segs_out * 4,
        "tcpmon {sent} vs tcp_info {segs_out}"
    );
    // A tenth dropped: a share well above the 2% that warns, and alerted as a share.
    let lines = watcher.lines();
    let alert = records(&lines, "alert")
        .find(|a| a["rule"] == "retransmits" && a["subject"] == "127.0.0.1")
        .unwrap_or_else(|| panic!("no retransmits alert: {lines:?}"));
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.contains("% of the segments sent toward 127.0.0.1"),
        "{message}"
    );
    // Every packet the rule dropped is a drop with the kernel's own reason.
    let netfilter = failures["drops_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "netfilter_drop")
        .map(|d| d["count"].as_u64().unwrap());
    eprintln!("drops: netfilter_drop {netfilter:?}, nft counter {nft_dropped}");
    assert_eq!(netfilter, Some(nft_dropped), "{failures}");
    drop(watcher);
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn connects_to_a_closed_port_are_resets_sent_and_received() {
    if !require_root("connects_to_a_closed_port_are_resets_sent_and_received") {
        return;
    }
    let ns = Netns::new("resets");
    let watcher = watch(&ns);
    let [out_rsts, attempt_fails] = nstat(&ns, &["TcpOutRsts", "TcpAttemptFails"])[..] else {
        unreachable!()
    };
    let refused = refused_connects(&ns, 300);
    assert_eq!(refused, 300);
    let after = nstat(&ns, &["TcpOutRsts", "TcpAttemptFails"]);
    let failures = failures_now(&watcher);
    let (sent, received) = (
        failures["resets_sent"].as_u64().unwrap(),
        failures["resets_received"].as_u64().unwrap(),
    );
    eprintln!(
        "resets: sent {sent} (TcpOutRsts +{}), received {received} (TcpAttemptFails +{})",
        after[0] - out_rsts,
        after[1] - attempt_fails
    );
    assert_eq!(sent, after[0] - out_rsts);
    assert_eq!(received, refused);
    assert_eq!(received, after[1] - attempt_fails);
    let port = failures["by_port"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 9 && p["direction"] == "in")
        .cloned()
        .unwrap_or_else(|| panic!("{failures}"));
    assert_eq!(port["resets_sent"], 300);
    // This kernel says why: nobody listens there.
    assert_eq!(
        failures["resets_sent_by_reason"],
        serde_json::json!([{"reason": "no_socket", "count": 300}])
    );
    // 300 refused within a second or two: over the default 50/s.
    let lines = watcher.lines();
    let alert = records(&lines, "alert")
        .find(|a| a["rule"] == "resets" && a["subject"] == "port 9")
        .unwrap_or_else(|| panic!("no reset alert: {lines:?}"));
    assert_eq!(alert["status"], "raised");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("refused on local port 9"),
        "{alert}"
    );
    drop(watcher);
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn connect_times_fall_in_the_buckets_the_client_measured() {
    if !require_root("connect_times_fall_in_the_buckets_the_client_measured") {
        return;
    }
    let ns = Netns::new("connect");
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:7171").unwrap());
    // Every third SYN toward the port is dropped (a counter, so the test ends within
    // ~3 s: 3 of the 8 first SYNs, 1 of their retransmits): those connects wait for the
    // kernel's SYN retransmit (1 s, then 3 s), the others take microseconds.
    drop_on_input(
        &ns,
        "tcp dport 7171 tcp flags & (syn | ack) == syn numgen inc mod 3 == 0",
    );
    let watcher = watch(&ns);
    let took: Vec<f64> = ns.run(|| {
        let connects: Vec<_> = (0..8)
            .map(|_| {
                thread::spawn(|| {
                    let started = Instant::now();
                    let stream = TcpStream::connect("127.0.0.1:7171").unwrap();
                    (started.elapsed().as_secs_f64(), stream)
                })
            })
            .collect();
        connects.into_iter().map(|c| c.join().unwrap().0).collect()
    });
    drop(listener);
    let lines = {
        let before = watcher.count("tally");
        let started = Instant::now();
        while watcher.count("tally") <= before + 1 {
            assert!(started.elapsed() < Duration::from_secs(10), "no tally");
            thread::sleep(Duration::from_millis(50));
        }
        watcher.lines()
    };
    let tally = records(&lines, "tally").last().unwrap();
    let latency = &tally["connect_latency"]["by_destination"][0];
    assert_eq!(latency["destination"], "127.0.0.1:7171", "{tally}");
    assert_eq!(latency["count"], 8);
    // Buckets 0..=11 are up to 0.5 s; above it, the connects that waited for a retransmit.
    let slow_seen: u64 = latency["buckets"].as_array().unwrap()[12..]
        .iter()
        .map(|b| b.as_u64().unwrap())
        .sum();
    let slow_measured = took.iter().filter(|t| **t > 0.5).count() as u64;
    eprintln!("connect times {took:?}: {slow_seen} above 0.5 s in the histogram");
    assert_eq!(slow_seen, slow_measured);
    drop(watcher);
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_listener_that_never_accepts_drops_and_is_alerted() {
    if !require_root("a_listener_that_never_accepts_drops_and_is_alerted") {
        return;
    }
    let ns = Netns::new("overflow");
    // A backlog of one, never accepted.
    let listener = ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 7373)).into())
            .unwrap();
        s.listen(1).unwrap();
        s
    });
    let watcher = watch(&ns);
    let before = nstat_one(&ns, "TcpExtListenDrops");
    let held: Vec<TcpStream> = ns.run(|| {
        let connects: Vec<_> = (0..20)
            .map(|_| {
                thread::spawn(|| {
                    TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], 7373)),
                        Duration::from_millis(1500),
                    )
                    .ok()
                })
            })
            .collect();
        connects
            .into_iter()
            .filter_map(|c| c.join().unwrap())
            .collect()
    });
    let after = nstat_one(&ns, "TcpExtListenDrops");
    failures_now(&watcher);
    let lines = watcher.lines();
    let tally = records(&lines, "tally").last().unwrap();
    let seen = tally["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listener"] == "127.0.0.1:7373")
        .and_then(|l| l["drops"].as_u64())
        .unwrap_or_else(|| panic!("{tally}"));
    eprintln!(
        "listener drops: tcpmon {seen}, TcpExtListenDrops +{}, {} connects held",
        after - before,
        held.len()
    );
    assert!(after - before > 0, "the full queue dropped nothing");
    assert_eq!(seen, after - before);
    let alert = records(&lines, "alert")
        .find(|a| a["rule"] == "listen_overflow" && a["subject"] == "127.0.0.1:7373")
        .unwrap_or_else(|| panic!("no listen_overflow alert: {lines:?}"));
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("accept queue (backlog 1) is full"),
        "{alert}"
    );
    drop((held, listener, watcher));
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn another_namespaces_resets_are_tallied_and_alerted_as_its_own() {
    if !require_root("another_namespaces_resets_are_tallied_and_alerted_as_its_own") {
        return;
    }
    let ns = Netns::new("nsfail");
    let inode = ns.inode();
    // tcpmon in the test's namespace, watching every other one.
    let watcher = Watcher::start(
        None,
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--mode",
            "ebpf",
            "--tally-interval",
            "500ms",
            "--all-netns",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    let tallied = |watcher: &Watcher| {
        records(&watcher.lines(), "tally").last().and_then(|t| {
            t["namespaces"]
                .as_array()?
                .iter()
                .find(|n| n["inode"] == inode)
                .cloned()
        })
    };
    let started = Instant::now();
    while tallied(&watcher).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "netns not tallied"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let out_rsts = nstat_one(&ns, "TcpOutRsts");
    let refused = refused_connects(&ns, 300);
    assert_eq!(refused, 300);
    let after = nstat_one(&ns, "TcpOutRsts");
    failures_now(&watcher);
    let theirs = tallied(&watcher).unwrap();
    eprintln!("netns {inode}: {}", theirs["failures"]);
    assert_eq!(theirs["failures"]["resets_sent"], after - out_rsts);
    assert_eq!(theirs["failures"]["resets_received"], refused);
    let lines = watcher.lines();
    let subject = format!("port 9 in netns {inode}");
    assert!(
        records(&lines, "alert").any(|a| a["rule"] == "resets" && a["subject"] == subject),
        "no resets alert for {subject}"
    );
    drop(watcher);
}
