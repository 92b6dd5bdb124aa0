//! `tcpmon watch` tallies and alerts against real traffic in private namespaces.
use std::{
    collections::BTreeMap,
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::harness::{nonzero_states, records, require_root, tcpmon_bin, Netns, Watcher};

fn watch(ns: &Netns, extra: &[&str]) -> Watcher {
    let mut args = vec![
        "watch",
        "--json",
        "--quiet-transitions",
        "--tally-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    Watcher::start(Some(ns), &args, |line| line.contains("\"type\":\"mode\""))
}

/// `ss -tan` state counts in the namespace, in tcpmon's state names.
fn ss_states(ns: &Netns) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in ns.exec_ok(&["ss", "-tan"]).lines().skip(1) {
        let state = match line.split_whitespace().next().unwrap() {
            "ESTAB" => "ESTABLISHED".to_owned(),
            other => other.replace('-', "_").replace("FIN_WAIT_", "FIN_WAIT"),
        };
        *counts.entry(state).or_default() += 1;
    }
    counts
}

/// Connections that end in TIME_WAIT, stay ESTABLISHED, or were open before the
/// watcher started and close while it runs.
fn churn(n: usize, keep: &mut Vec<TcpStream>, listener: &TcpListener) {
    let addr = listener.local_addr().unwrap();
    for i in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        if i % 3 == 0 {
            keep.push(client);
            keep.push(server);
        } else {
            drop(client);
            let mut b = [0u8; 1];
            assert_eq!(server.read(&mut b).unwrap(), 0);
        }
    }
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn churn_tallies_equal_ss() {
    if !require_root("churn_tallies_equal_ss") {
        return;
    }
    let ns = Netns::new("churn");
    // For exact TIME_WAIT counts on loopback (KERNEL_FACTS.md): no RST-assassinated TW.
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.tcp_rfc1337=1"]);
    let (listener, mut keep) = ns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7000)).unwrap();
        let mut keep = Vec::new();
        churn(30, &mut keep, &listener);
        (listener, keep)
    });
    // Baseline: 20 ESTABLISHED, 20 TIME_WAIT, 1 LISTEN. Then events on top.
    let poll = watch(&ns, &["--mode", "poll"]);
    let ebpf = watch(&ns, &["--mode", "ebpf"]);
    let (listener, keep) = ns.run(move || {
        // Half of the pre-existing connections close while watched.
        let old: Vec<TcpStream> = keep.drain(..10).collect();
        drop(old);
        churn(600, &mut keep, &listener);
        (listener, keep)
    });
    std::thread::sleep(Duration::from_millis(2500));
    let expected = ss_states(&ns);
    std::thread::sleep(Duration::from_millis(1200));
    let (ebpf_lines, _) = ebpf.stop();
    let (poll_lines, _) = poll.stop();
    drop((listener, keep));
    let final_ebpf = records(&ebpf_lines, "tally").last().unwrap();
    let final_poll = records(&poll_lines, "tally").last().unwrap();
    eprintln!(
        "ss {expected:?}\nebpf {:?}\npoll {:?}\n{final_ebpf}",
        nonzero_states(&final_ebpf),
        nonzero_states(&final_poll)
    );
    assert_eq!(nonzero_states(&final_ebpf), expected, "eBPF tallies vs ss");
    assert_eq!(nonzero_states(&final_poll), expected, "poll tallies vs ss");
    assert_eq!(final_ebpf["lost"], 0);
    // Every transition met the state the tally expected (no out-of-order pair).
    assert_eq!(final_ebpf["inconsistencies"], 0, "{final_ebpf}");
    // The eBPF counts came from events, not from a re-read of /proc.
    assert_eq!(final_ebpf["reconciliations"], 1, "{final_ebpf}");
    assert_eq!(
        final_ebpf["time_wait"]["sockstat_error"], 0,
        "inferred TIME_WAIT matched sockstat"
    );
    assert_eq!(final_ebpf["mode"], "ebpf");
    assert_eq!(final_poll["mode"], "poll");
    // Healthy churn gives no sign of SYN trouble: the SYN counter never attached.
    assert_eq!(final_ebpf["syn_counter"], "idle", "{final_ebpf}");
    assert_eq!(final_ebpf["received"]["syn_counter_attaches"], 0);
    assert_eq!(final_poll["syn_counter"], "unavailable");
    // Per remote IP: live connections (ESTABLISHED and the handshakes), TIME_WAIT apart.
    let count_of = |states: &[&str]| -> u64 {
        expected
            .iter()
            .filter(|(s, _)| states.contains(&s.as_str()))
            .map(|(_, n)| n)
            .sum()
    };
    let live = count_of(&["ESTABLISHED", "SYN_SENT", "SYN_RECV"]);
    let per_ip = &final_ebpf["per_ip"];
    if live == 0 {
        assert_eq!(per_ip["top"], serde_json::json!([]), "{per_ip}");
    } else {
        assert_eq!(per_ip["top"][0]["ip"], "127.0.0.1");
        assert_eq!(
            per_ip["top"][0]["count"].as_u64().unwrap(),
            live,
            "{per_ip}"
        );
    }
    let time_wait = count_of(&["TIME_WAIT"]);
    if time_wait > 0 {
        assert_eq!(per_ip["time_wait_top"][0]["ip"], "127.0.0.1");
        assert_eq!(
            per_ip["time_wait_top"][0]["count"].as_u64().unwrap(),
            time_wait,
            "{per_ip}"
        );
    }
}

/// Connects from a fixed local port (SO_REUSEADDR), retrying while the previous
/// connection from it is still closing.
fn connect_from(local: SocketAddr, remote: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        if socket.bind(&local.into()).is_ok() && socket.connect(&remote.into()).is_ok() {
            return socket.into();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("could not connect from {local} to {remote}");
}

/// The server closes first and the client comes back from the same port: each SYN
/// finds the server's TIME_WAIT socket on that tuple, which the kernel kills for the
/// new connection with no event. The live counts follow without a reconciliation.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_reused_tuple_ends_its_time_wait_without_reconciliation() {
    if !require_root("a_reused_tuple_ends_its_time_wait_without_reconciliation") {
        return;
    }
    const N: usize = 50;
    let ns = Netns::new("twreuse");
    let watcher = watch(&ns, &["--mode", "ebpf"]);
    let held = ns.run(|| {
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 7300));
        let client_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 47300));
        let listener = TcpListener::bind(server).unwrap();
        for _ in 0..N {
            let mut client = connect_from(client_port, server);
            let (accepted, _) = listener.accept().unwrap();
            drop(accepted); // active close: the server side ends in TIME_WAIT
            let mut b = [0u8; 1];
            assert_eq!(client.read(&mut b).unwrap(), 0);
        }
        // The last one stays open: its opening alone must end the TIME_WAIT before it.
        let client = connect_from(client_port, server);
        let (accepted, _) = listener.accept().unwrap();
        (listener, client, accepted)
    });
    std::thread::sleep(Duration::from_millis(2500));
    let expected = ss_states(&ns);
    std::thread::sleep(Duration::from_millis(1200));
    let (lines, status) = watcher.stop();
    drop(held);
    assert!(status.success());
    let tally = records(&lines, "tally").last().unwrap();
    eprintln!("ss {expected:?}\n{tally}");
    assert_eq!(
        expected.get("TIME_WAIT"),
        None,
        "the open connection took the tuple"
    );
    assert_eq!(expected.get("ESTABLISHED"), Some(&2));
    assert_eq!(nonzero_states(&tally), expected, "{tally}");
    assert_eq!(tally["reconciliations"], 1, "only the baseline: {tally}");
    assert_eq!(
        tally["time_wait"]["sockstat_error"], 0,
        "the inferred TIME_WAIT matched sockstat before any correction: {tally}"
    );
    assert_eq!(tally["per_ip"]["top"][0]["count"], 2, "{tally}");
    assert_eq!(tally["inconsistencies"], 0, "{tally}");
    let received = tally["received"]["transitions"].as_u64().unwrap();
    assert!(
        received >= (N * 10) as u64,
        "{received} transitions for {N} connections"
    );
}

/// Rings far too small for a burst (a 4 KiB budget: the floor of 64 slots per CPU, and
/// one-page ring buffers): the drops are counted as ring-buffer-full in the tally, and the
/// reconciliation they trigger brings the counts back to what `ss` sees. The watcher is
/// stopped (SIGSTOP) during the burst: a reader at nice -19 can keep up even with one
/// page, so without the pause the overflow would depend on the scheduler.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn full_ring_buffer_is_reported_and_reconciled() {
    if !require_root("full_ring_buffer_is_reported_and_reconciled") {
        return;
    }
    let ns = Netns::new("ringfull");
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.tcp_rfc1337=1"]);
    let watcher = watch(&ns, &["--mode", "ebpf", "--ring-bytes", "4096"]);
    watcher.signal(libc::SIGSTOP);
    let held = ns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7200)).unwrap();
        let mut keep = Vec::new();
        churn(1500, &mut keep, &listener);
        (listener, keep)
    });
    watcher.signal(libc::SIGCONT);
    let expected = ss_states(&ns);
    // Loss triggers a reconciliation at the first evaluation after the reader resumes.
    let line = watcher.wait_for(
        Duration::from_secs(20),
        "a tally reconciled after the loss and equal to ss",
        |l| {
            let Ok(tally) = serde_json::from_str::<Value>(l) else {
                return false;
            };
            tally["type"] == "tally"
                && tally["reconcile"]["reason"] == "loss"
                && nonzero_states(&tally) == expected
        },
    );
    // Two more evaluations: the kernel's opening counters, compared a second late, now
    // cover the whole burst.
    std::thread::sleep(Duration::from_millis(2500));
    let (lines, status) = watcher.stop();
    drop(held);
    assert!(status.success());
    let tally: Value = serde_json::from_str(&line).unwrap();
    let full = tally["kernel"]["ringbuf_full"].as_u64().unwrap();
    assert!(full > 0, "a one-page ring overflowed: {tally}");
    assert!(tally["lost"].as_u64().unwrap() >= full, "{tally}");
    let last = records(&lines, "tally").last().unwrap();
    eprintln!("ss {expected:?}\n{last}");
    assert_eq!(nonzero_states(&last), expected, "{last}");
    // The openings the drops swallowed are explained by the drop counter, not counted
    // again as silent loss.
    assert_eq!(last["received"]["unaccounted"], 0, "{last}");
    // Received plus reported lost covers every transition of the burst: 10 per closed
    // connection, 4 per one kept open (every third).
    let received = last["received"]["transitions"].as_u64().unwrap();
    let lost = last["lost"].as_u64().unwrap();
    assert!(
        received + lost >= 1000 * 10 + 500 * 4,
        "received {received} + lost {lost}: {last}"
    );
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn close_wait_leak_is_alerted_with_port_and_process() {
    if !require_root("close_wait_leak_is_alerted_with_port_and_process") {
        return;
    }
    let ns = Netns::new("cw");
    let watcher = watch(&ns, &["--close-wait-age", "2s"]);
    let held = ns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7100)).unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(("127.0.0.1", 7100)).unwrap();
            let (server, _) = listener.accept().unwrap();
            drop(client); // the peer closes; the "server" never does
            held.push(server);
        }
        (listener, held)
    });
    let started = Instant::now();
    let alert = watcher.wait_for(Duration::from_secs(10), "close_wait alert", |l| {
        l.contains("\"type\":\"alert\"")
            && l.contains("\"rule\":\"close_wait\"")
            && l.contains("\"status\":\"raised\"")
    });
    let waited = started.elapsed();
    let alert: Value = serde_json::from_str(&alert).unwrap();
    assert_eq!(alert["subject"], "7100");
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.contains("4 CLOSE_WAIT sockets on local port 7100"),
        "{message}"
    );
    assert!(
        message.contains(&format!("[{}]", std::process::id())),
        "names this process: {message}"
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "the 2 s age threshold was respected ({waited:?})"
    );
    drop(held);
    let cleared = watcher.wait_for(Duration::from_secs(5), "close_wait cleared", |l| {
        l.contains("\"rule\":\"close_wait\"") && l.contains("\"status\":\"cleared\"")
    });
    assert!(cleared.contains("7100"));
    watcher.stop();
}

/// Drops the namespace's outgoing RSTs (an nftables table that goes with the namespace),
/// so that spoofed handshakes stay half-open.
fn drop_own_resets(ns: &Netns) {
    let rules = "table inet tcpmon_test {\n  chain out {\n    type filter hook output priority 0;\n    tcp flags rst drop\n  }\n}\n";
    let mut nft = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    drop(nft.stdin.take());
    assert!(nft.wait().unwrap().success());
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn syn_flood_is_alerted_within_two_seconds_and_clears() {
    if !require_root("syn_flood_is_alerted_within_two_seconds_and_clears") {
        return;
    }
    let ns = Netns::new("syn");
    // Drop our own RSTs so hping3's spoofed handshakes stay half-open, and let request
    // sockets give up after one SYN-ACK retransmit so the flood drains quickly.
    drop_own_resets(&ns);
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.tcp_synack_retries=1"]);
    let listener = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)).unwrap());
    let watcher = watch(&ns, &[]);
    // Past the first evaluation (which dumps half-open requests anyway): the flood must
    // be noticed by its own signs, with the SYN counter still detached.
    std::thread::sleep(Duration::from_millis(2500));
    let flood_start = Instant::now();
    let status = ns
        .command("timeout")
        .args([
            "2",
            "hping3",
            "-q",
            "-S",
            "-p",
            "8080",
            "--rand-source",
            "--faster",
            "127.0.0.1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.code() == Some(124) || status.success(),
        "hping3: {status}"
    );
    let raised = watcher.wait_for(Duration::from_secs(5), "syn_flood alert", |l| {
        l.contains("\"rule\":\"syn_flood\"") && l.contains("\"status\":\"raised\"")
    });
    let raised: Value = serde_json::from_str(&raised).unwrap();
    let raised_at = humantime::parse_rfc3339(raised["time"].as_str().unwrap()).unwrap();
    let flood_wall = std::time::SystemTime::now() - flood_start.elapsed();
    let latency = raised_at.duration_since(flood_wall).unwrap_or_default();
    assert!(
        latency <= Duration::from_secs(2),
        "raised {latency:?} after the flood started"
    );
    assert_eq!(raised["subject"], "127.0.0.1:8080");
    let message = raised["message"].as_str().unwrap();
    assert!(
        message.contains("spoofed"),
        "many distinct sources: {message}"
    );
    let cleared = watcher.wait_for(Duration::from_secs(20), "syn_flood cleared", |l| {
        l.contains("\"rule\":\"syn_flood\"") && l.contains("\"status\":\"cleared\"")
    });
    assert!(cleared.contains("127.0.0.1:8080"));
    // Memory stayed bounded through the flood (distinct sources saturate per listener).
    let peak = crate::harness::peak_rss_kib(watcher.pid());
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
    eprintln!("SYN flood: watch peak RSS {} MiB", peak / 1024);
    // The flood's first sign attached the SYN counter, which stays a minute after the
    // last one. The flood itself filled the SYN queue at once (cookies: no request
    // sockets to count), so count 20 SYNs that do get a request socket now.
    let status = ns
        .command("hping3")
        // From 127.0.0.1 (hping3 steps the source port): random sources other than
        // 127/8 have no route back and are dropped before a request socket exists.
        .args(["-q", "-S", "-p", "8080", "-c", "20"])
        .args(["-i", "u10000", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "hping3: {status}");
    let counted = |l: &str| -> Option<Value> {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["type"] == "tally" && v["received"]["syn_requests"].as_u64()? >= 20).then_some(v)
    };
    let tally = watcher.wait_for(Duration::from_secs(5), "20 SYNs counted", |l| {
        counted(l).is_some()
    });
    let tally = counted(&tally).unwrap();
    assert_eq!(tally["syn_counter"], "attached", "{tally}");
    assert!(
        tally["received"]["syn_counter_attaches"].as_u64().unwrap() >= 1,
        "{tally}"
    );
    watcher.stop();
    drop(listener);
    eprintln!("SYN flood alert {latency:?} after start: {message}");
}

/// The TcpExt counter `name` in the namespace (nstat -az prints absolute values).
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    ns.exec_ok(&["nstat", "-az", name])
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next() == Some(name)).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

/// With SYN cookies (the Linux default) a flood past a full SYN queue makes no request
/// socket: the SYNs are still counted where they arrive, each one, and the alert's rate
/// is the flood's.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn syns_answered_with_cookies_are_counted() {
    if !require_root("syns_answered_with_cookies_are_counted") {
        return;
    }
    let ns = Netns::new("cookies");
    // Our own RSTs and the replies to hping3's SYN-ACKs are dropped, so requests stay
    // half-open and the small queue fills at once.
    drop_own_resets(&ns);
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=1"]);
    let listener = ns.run(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)).into())
            .unwrap();
        s.listen(16).unwrap();
        s
    });
    let watcher = watch(&ns, &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let burst = |count: u64, interval: &str| {
        let status = ns
            .command("hping3")
            .args([
                "-q",
                "-S",
                "-p",
                "7000",
                "-c",
                &count.to_string(),
                "-i",
                interval,
            ])
            .arg("127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "hping3: {status}");
    };
    // A flood of 2 s: the alert is raised within its first seconds, before the SYN
    // counter has seen a whole window, and its rate is the flood's (from the cookies the
    // kernel sent), neither "not counted" nor 0.
    burst(4000, "u500");
    let raised = watcher.wait_for(Duration::from_secs(5), "syn_flood raised", |l| {
        l.contains("\"type\":\"alert\"") && l.contains("\"rule\":\"syn_flood\"")
    });
    let raised: Value = serde_json::from_str(&raised).unwrap();
    assert_eq!(raised["subject"], "127.0.0.1:7000");
    let message = raised["message"].as_str().unwrap().to_owned();
    assert!(
        !message.contains("not counted") && !message.contains(" 0 SYN/s"),
        "{message}"
    );
    // With the counter attached, every SYN of a burst is counted, cookie or not.
    let syns_of = |l: &str| -> Option<u64> {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["type"] == "tally" && v["syn_counter"] == "attached")
            .then(|| v["received"]["syn_requests"].as_u64())?
    };
    let attached = watcher.wait_for(Duration::from_secs(5), "the SYN counter attached", |l| {
        syns_of(l).is_some()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let before = watcher
        .lines()
        .iter()
        .rev()
        .find_map(|l| syns_of(l))
        .or_else(|| syns_of(&attached))
        .unwrap();
    let cookies_before = tcp_ext(&ns, "TcpExtSyncookiesSent");
    const FLOOD: u64 = 3000;
    burst(FLOOD, "u200");
    let cookies = tcp_ext(&ns, "TcpExtSyncookiesSent") - cookies_before;
    assert!(
        cookies * 2 > FLOOD,
        "the burst went to cookies ({cookies} of {FLOOD})"
    );
    let tally = watcher.wait_for(Duration::from_secs(5), "the burst counted", |l| {
        syns_of(l).is_some_and(|n| n >= before + FLOOD * 98 / 100)
    });
    let after = syns_of(&tally).unwrap();
    assert!(
        after - before <= FLOOD,
        "{} SYNs counted for {FLOOD} sent",
        after - before
    );
    watcher.stop();
    drop(listener);
    eprintln!(
        "cookie flood: {FLOOD} SYNs sent, {} counted, {cookies} answered with cookies; {message}",
        after - before
    );
}

/// `tcpmon <args>` as nobody, with every capability dropped.
fn unprivileged(ns: &Netns, args: &[&str]) -> std::process::Output {
    ns.command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tcpmon_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn without_privileges_it_falls_back_to_polling() {
    if !require_root("without_privileges_it_falls_back_to_polling") {
        return;
    }
    let ns = Netns::new("nopriv");
    let _listener = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 9000)).unwrap());
    let out = unprivileged(
        &ns,
        &[
            "watch",
            "--json",
            "--duration",
            "2500ms",
            "--tally-interval",
            "1s",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("eBPF unavailable: no privilege"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("eBPF unavailable").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let mode = records(&lines, "mode").next().unwrap();
    assert_eq!(mode["mode"], "poll");
    let tally = records(&lines, "tally").last().unwrap();
    assert_eq!(tally["states"]["LISTEN"], 1);
    // On a terminal (stdout and stderr the same screen) the fallback is said once too.
    let shown = ns
        .command("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
             --bounding-set=-all {} watch --duration 1500ms --quiet-transitions",
            tcpmon_bin().display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{shown:?}");
    assert_eq!(screen.matches("eBPF unavailable").count(), 1, "{screen}");
    // Forcing eBPF without privileges is an error, not a fallback.
    let forced = unprivileged(&ns, &["watch", "--mode", "ebpf", "--duration", "1s"]);
    assert_eq!(forced.status.code(), Some(2));
    let err = String::from_utf8_lossy(&forced.stderr);
    assert!(
        err.starts_with("tcpmon: eBPF unavailable: not permitted"),
        "{err}"
    );
    // Each cause said once.
    let parts: Vec<&str> = err.trim().split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(part), "'{part}' said twice: {err}");
    }
}
