//! Snapshots of several network namespaces: three private namespaces with different
//! populations (one held only by an `ip netns` bind mount, one named with a process in
//! it, one unnamed that lives only through its process), each counted as `ss -tan` counts
//! it from inside, each attributed, and the audit naming the namespace of a leak.
use std::{
    io::Read,
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::harness::{nonzero_states, require_root, run_in, ss_states, tcpmon_bin, Holder, Netns};

/// Sockets kept open while the namespaces are looked at.
struct Population {
    _sockets: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
}

/// `n` TIME_WAIT sockets (the client closes first) and the listener they went to.
fn time_wait(port: u16, n: usize) -> Population {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    for _ in 0..n {
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).unwrap(), 0);
    }
    std::thread::sleep(Duration::from_millis(200));
    Population {
        _sockets: Vec::new(),
        _listeners: vec![listener],
    }
}

/// `n` CLOSE_WAIT sockets on `port` that this process never closes (a leak).
fn close_wait_leak(port: u16, n: usize) -> Population {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
    let mut sockets = Vec::new();
    for _ in 0..n {
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        sockets.push(server);
    }
    std::thread::sleep(Duration::from_millis(200));
    Population {
        _sockets: sockets,
        _listeners: vec![listener],
    }
}

/// `v4` IPv4 and `v6` IPv6 ESTABLISHED pairs.
fn established(v4: usize, v6: usize) -> Population {
    let l4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 7001)).unwrap();
    let l6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 7002)).unwrap();
    let mut sockets = Vec::new();
    for (listener, n) in [(&l4, v4), (&l6, v6)] {
        for _ in 0..n {
            sockets.push(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
            sockets.push(listener.accept().unwrap().0);
        }
    }
    Population {
        _sockets: sockets,
        _listeners: vec![l4, l6],
    }
}

/// Per-state counts of `ss -tan` run inside the namespace at `ns_path`.
fn tcpmon(args: &[&str]) -> std::process::Output {
    Command::new(tcpmon_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn tcpmon_json(args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.push("--json");
    let out = tcpmon(&argv);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entry(doc: &Value, inode: u64) -> Value {
    doc["namespaces"]
        .as_array()
        .expect("a namespaces array")
        .iter()
        .find(|n| n["inode"] == inode)
        .unwrap_or_else(|| panic!("namespace {inode} missing: {}", doc["namespaces"]))
        .clone()
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn every_namespace_is_counted_as_ss_counts_it_and_named() {
    if !require_root("every_namespace_is_counted_as_ss_counts_it_and_named") {
        return;
    }
    // Held only by its bind mount: no process is in it.
    let mounted = Netns::new("nsmount");
    let _tw = mounted.run(|| time_wait(8101, 12));
    // Named, with a process in it.
    let named = Netns::new("nsnamed");
    let named_holder = Holder::spawn({
        let mut c = named.command("sleep");
        c.arg("600");
        c
    });
    let _leak = named.run(|| close_wait_leak(8080, 9));
    // No name: it lives through its process alone.
    let unnamed = Holder::spawn({
        let mut c = Command::new("unshare");
        c.args(["-n", "sleep", "600"]);
        c
    });
    let unnamed_path = unnamed.ns_path();
    let _est = run_in(unnamed_path.clone(), || {
        // `unshare -n` leaves loopback down.
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(up.unwrap().success());
        established(6, 4)
    });

    let doc = tcpmon_json(&["report", "--all-netns", "--all"]);
    let cases = [
        (
            mounted.inode(),
            format!("/run/netns/{}", mounted.name),
            Some(&mounted.name),
        ),
        (named.inode(), named_holder.ns_path(), Some(&named.name)),
        (unnamed.inode(), unnamed_path.clone(), None),
    ];
    for (inode, path, name) in &cases {
        let e = entry(&doc, *inode);
        let ss = ss_states(path);
        assert_eq!(
            nonzero_states(&e),
            ss,
            "namespace {inode} ({name:?}) differs from ss -tan"
        );
        assert_eq!(e["total"].as_u64().unwrap(), ss.values().sum::<u64>());
        assert_eq!(e["name"].as_str(), name.map(String::as_str), "{e}");
    }
    // The populations built, so a bug shared with ss cannot pass unnoticed.
    assert_eq!(
        nonzero_states(&entry(&doc, mounted.inode()))["TIME_WAIT"],
        12
    );
    assert_eq!(nonzero_states(&entry(&doc, named.inode()))["CLOSE_WAIT"], 9);
    let est = entry(&doc, unnamed.inode());
    assert_eq!(nonzero_states(&est)["ESTABLISHED"], 20);
    assert_eq!(
        (est["ipv4"].as_u64(), est["ipv6"].as_u64()),
        (Some(13), Some(9))
    );
    // A bind mount with no process has no cgroup to tell its owner.
    assert_eq!(entry(&doc, mounted.inode())["owner"]["kind"], "unknown");
    assert!(doc["namespaces_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| cases.iter().all(|(inode, ..)| s["inode"] != *inode)));

    // The totals are the sum of the namespaces'.
    let sum: u64 = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["total"].as_u64().unwrap())
        .sum();
    assert_eq!(doc["total"].as_u64().unwrap(), sum);

    // Rows carry their namespace; the leak's finding names it.
    let cw = doc["close_wait"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["netns"] == named.inode())
        .expect("the leak's CLOSE_WAIT group");
    assert_eq!(
        (cw["local_port"].as_u64(), cw["count"].as_u64()),
        (Some(8080), Some(9))
    );
    assert_eq!(
        cw["process"]["pid"].as_u64(),
        Some(u64::from(std::process::id()))
    );
    let finding = doc["findings"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "close_wait" && f["netns"] == named.inode())
        .expect("a close_wait finding in the named namespace");
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("local port 8080") && message.contains(&named.name),
        "{message}"
    );

    // Human output: the namespace table first, a NETNS column in the sections.
    let out = tcpmon(&["report", "--all-netns", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let table = text
        .split("NAMESPACES (")
        .nth(1)
        .expect("a NAMESPACES section");
    let table = table.split("\n\n").next().unwrap();
    for name in [&mounted.name, &named.name] {
        assert!(table.contains(name.as_str()), "{name} not in:\n{table}");
    }
    assert!(table.contains(&unnamed.inode().to_string()), "{table}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["NETNS", "LOCAL"])),
        "{text}"
    );
    // Listener backlogs come from sock_diag inside each namespace.
    let named_listener = text
        .lines()
        .find(|l| l.contains(named.name.as_str()) && l.contains("0.0.0.0:8080"))
        .expect("the named namespace's listener");
    assert!(!named_listener.contains(" ? "), "{named_listener}");

    // --netns, by each spelling, reads just those namespaces.
    let mounted_path = format!("/run/netns/{}", mounted.name);
    let pid = unnamed.pid().to_string();
    let doc = tcpmon_json(&[
        "states",
        "--netns",
        &named.name,
        "--netns",
        &pid,
        "--netns",
        &mounted_path,
    ]);
    let mut inodes: Vec<u64> = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["inode"].as_u64().unwrap())
        .collect();
    inodes.sort_unstable();
    let mut want = vec![mounted.inode(), named.inode(), unnamed.inode()];
    want.sort_unstable();
    assert_eq!(inodes, want);
    assert_eq!(
        doc["total"].as_u64().unwrap(),
        cases
            .iter()
            .map(|(_, path, _)| ss_states(path).values().sum::<u64>())
            .sum::<u64>()
    );
    let bad = tcpmon(&["states", "--netns", "tcpmon-no-such-namespace"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a network namespace"));

    // States: a row per namespace and the total.
    let out = tcpmon(&["states", "--netns", &named.name, "--netns", &pid]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with(named.name.as_str())),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("TOTAL")),
        "{text}"
    );

    // The audit fails on the leak and says where it is.
    let audit = tcpmon(&["audit", "--netns", &named.name, "--fail-on", "warning"]);
    assert_eq!(audit.status.code(), Some(1));
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(text.contains(&format!("netns {}", named.name)), "{text}");
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn without_privilege_what_is_skipped_is_named_and_the_rest_reported() {
    if !require_root("without_privilege_what_is_skipped_is_named_and_the_rest_reported") {
        return;
    }
    let mounted = Netns::new("nspriv");
    let _tw = mounted.run(|| time_wait(8102, 3));
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tcpmon_bin())
        .args(["states", "--all-netns", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Its own namespace is still read.
    let own = crate::harness::run("readlink", &["/proc/self/ns/net"]);
    let own: u64 = own
        .trim()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap();
    assert!(doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["inode"] == own));
    // The bind-mounted one is named as skipped, with the reason.
    let skipped = doc["namespaces_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["inode"] == mounted.inode())
        .unwrap_or_else(|| panic!("{} not skipped: {doc}", mounted.inode()))
        .clone();
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains("CAP_SYS_ADMIN"),
        "{skipped}"
    );
    // Other users' processes could not be looked at, and that is said.
    assert!(doc["processes_unreadable"].as_u64().unwrap() > 0);

    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tcpmon_bin())
        .args(["report", "--all-netns"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("warning: network namespace {}", mounted.inode())),
        "{text}"
    );
    assert!(text.contains("netns_unread"), "{text}");
}

/// `n` connections to `listener`, closed by the client (TIME_WAIT there), and `keep`
/// more left ESTABLISHED.
fn churn_in(listener: &TcpListener, n: usize, keep: usize) -> Vec<TcpStream> {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).unwrap(), 0);
    }
    let mut kept = Vec::new();
    for _ in 0..keep {
        kept.push(TcpStream::connect(addr).unwrap());
        kept.push(listener.accept().unwrap().0);
    }
    kept
}

fn namespace_tally(tally: &Value, inode: u64) -> Option<Value> {
    tally["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["inode"] == inode)
        .cloned()
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn watch_tallies_every_namespace_follows_them_and_names_them_in_alerts() {
    if !require_root("watch_tallies_every_namespace_follows_them_and_names_them_in_alerts") {
        return;
    }
    let home = Netns::new("wh");
    let a = Netns::new("wa");
    let b = Netns::new("wb");
    for ns in [&a, &b] {
        // Exact TIME_WAIT counts on loopback (KERNEL_FACTS.md).
        ns.exec_ok(&["sysctl", "-qw", "net.ipv4.tcp_rfc1337=1"]);
    }
    let (listener_a, mut kept_a) = a.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7200)).unwrap();
        let kept = churn_in(&listener, 10, 5);
        (listener, kept)
    });
    let watcher = crate::harness::Watcher::start(
        Some(&home),
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--all-netns",
            "--tally-interval",
            "1s",
            "--reconcile-interval",
            "2s",
            "--close-wait-age",
            "2s",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    let added = |inode: u64| {
        move |l: &str| {
            l.contains("\"rule\":\"netns_added\"") && l.contains(&format!("\"netns\":{inode}"))
        }
    };
    watcher.wait_for(Duration::from_secs(5), "A announced", added(a.inode()));
    // Traffic in A while watched, a CLOSE_WAIT leak in A, and B coming to life.
    let (listener_a, kept_a2, leak) = a.run(move || {
        let more = churn_in(&listener_a, 100, 3);
        let mut leak = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(("127.0.0.1", 7200)).unwrap();
            let (server, _) = listener_a.accept().unwrap();
            drop(client);
            leak.push(server);
        }
        (listener_a, more, leak)
    });
    kept_a.extend(kept_a2);
    let (listener_b, kept_b) = b.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7300)).unwrap();
        let kept = churn_in(&listener, 40, 2);
        (listener, kept)
    });
    watcher.wait_for(Duration::from_secs(5), "B announced", added(b.inode()));
    let alert = watcher.wait_for(Duration::from_secs(10), "close_wait alert in A", |l| {
        l.contains("\"rule\":\"close_wait\"") && l.contains("\"status\":\"raised\"")
    });
    let alert: Value = serde_json::from_str(&alert).unwrap();
    assert_eq!(alert["netns"], a.inode(), "{alert}");
    assert_eq!(alert["owner"], format!("ip netns {}", a.name), "{alert}");
    assert_eq!(alert["subject"], format!("7200 in netns {}", a.inode()));
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains(&format!("[{}]", std::process::id())),
        "{alert}"
    );

    // Quiet now: each namespace's tally equals ss inside it.
    std::thread::sleep(Duration::from_millis(2500));
    let expected_a = ss_states(&format!("/run/netns/{}", a.name));
    let expected_b = ss_states(&format!("/run/netns/{}", b.name));
    let start = std::time::Instant::now();
    let (tally_a, tally_b) = loop {
        std::thread::sleep(Duration::from_millis(1100));
        let lines = watcher.lines();
        let tally = crate::harness::records(&lines, "tally").last().unwrap();
        let found = (
            namespace_tally(&tally, a.inode()),
            namespace_tally(&tally, b.inode()),
        );
        if let (Some(ta), Some(tb)) = &found {
            if nonzero_states(ta) == expected_a && nonzero_states(tb) == expected_b {
                break (ta.clone(), tb.clone());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "tallies never matched ss: A {expected_a:?} B {expected_b:?}\n{tally}"
        );
    };
    assert_eq!(nonzero_states(&tally_a)["TIME_WAIT"], 110);
    assert_eq!(nonzero_states(&tally_a)["CLOSE_WAIT"], 4);
    assert_eq!(nonzero_states(&tally_b)["TIME_WAIT"], 40);
    assert_eq!(tally_a["time_wait_sockstat_error"], 0, "{tally_a}");
    assert!(
        tally_a["transitions"].as_u64().unwrap() > 100 * 4,
        "{tally_a}"
    );

    // B is deleted while watched: it is said to be gone and leaves the tallies.
    drop((listener_b, kept_b));
    let b_inode = b.inode();
    drop(b);
    watcher.wait_for(Duration::from_secs(8), "B gone", |l| {
        l.contains("\"rule\":\"netns_gone\"") && l.contains(&format!("\"netns\":{b_inode}"))
    });
    std::thread::sleep(Duration::from_millis(1200));
    let (lines, status, stderr) = watcher.stop_with_stderr();
    assert!(status.success());
    // The exit line counts the other namespaces' transitions too.
    let exit_line = stderr.lines().last().unwrap_or_default();
    assert!(
        exit_line.contains(" in tcpmon's namespace and ") && exit_line.contains(" in others"),
        "{exit_line}"
    );
    let last = crate::harness::records(&lines, "tally").last().unwrap();
    assert!(namespace_tally(&last, b_inode).is_none(), "{last}");
    assert!(namespace_tally(&last, a.inode()).is_some());
    assert_eq!(last["mode"], "ebpf");
    crate::harness::check_schema(&lines);
    drop((listener_a, kept_a, leak));
}

/// Namespaces come with a CLOSE_WAIT leak (alerted at once) and go, round after round:
/// when one goes, so do its alerts, in /alerts and in the series.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn the_alerts_of_deleted_namespaces_end_with_them() {
    use crate::prometheus::{http_get, Killed};
    if !require_root("the_alerts_of_deleted_namespaces_end_with_them") {
        return;
    }
    let home = Netns::new("gone-home");
    let child = home
        .command(tcpmon_bin().to_str().unwrap())
        .args([
            "serve",
            "--no-history",
            "--all-netns",
            "--listen",
            "127.0.0.1:29833",
        ])
        .args(["--interval", "500ms", "--reconcile-interval", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Killed(child);
    let addr = "127.0.0.1:29833".parse().unwrap();
    let alerts = || -> Value {
        let (_, body) = http_get(&home, addr, "/alerts");
        serde_json::from_str(&body).unwrap_or(Value::Null)
    };
    let leaks_alerted = |inodes: &[u64]| -> usize {
        let doc = alerts();
        doc["alerts"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|a| {
                    a["rule"] == "close_wait"
                        && inodes
                            .iter()
                            .any(|i| a["subject"] == format!("7400 in netns {i}"))
                })
                .count()
        })
    };
    for round in 0..3 {
        let namespaces: Vec<Netns> = (0..10).map(|_| Netns::new("gone")).collect();
        let inodes: Vec<u64> = namespaces.iter().map(Netns::inode).collect();
        let leaks: Vec<_> = namespaces
            .iter()
            .map(|ns| {
                ns.run(|| {
                    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7400)).unwrap();
                    let held: Vec<TcpStream> = (0..3)
                        .map(|_| {
                            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 7400)).unwrap();
                            let (server, _) = listener.accept().unwrap();
                            // The peer closes: the server's end is in CLOSE_WAIT.
                            drop(client);
                            server
                        })
                        .collect();
                    (listener, held)
                })
            })
            .collect();
        let started = std::time::Instant::now();
        while leaks_alerted(&inodes) < inodes.len() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: not every leak alerted: {}",
                alerts()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // Sockets and namespaces go at once.
        drop(leaks);
        drop(namespaces);
        let started = std::time::Instant::now();
        loop {
            let doc = alerts();
            // Inodes are reused from round to round: a namespace is gone when its last
            // event says so.
            let events = doc["events"].as_array().cloned().unwrap_or_default();
            let gone = inodes
                .iter()
                .filter(|i| {
                    events
                        .iter()
                        .rev()
                        .find(|e| e["subject"] == i.to_string())
                        .is_some_and(|e| e["rule"] == "netns_gone")
                })
                .count();
            if gone == inodes.len() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: namespaces not said gone: {doc}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(leaks_alerted(&inodes), 0, "round {round}: {}", alerts());
        let (_, metrics) = http_get(&home, addr, "/metrics");
        for inode in &inodes {
            assert!(
                !metrics.contains(&format!("in netns {inode}\"")),
                "round {round}: a series of {inode} left"
            );
        }
    }
}

/// An unnamed namespace found through one process, then joined by another: when the
/// first exits, the namespace is still there, read through the other, never said gone.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_namespace_outlives_the_process_it_was_found_through() {
    if !require_root("a_namespace_outlives_the_process_it_was_found_through") {
        return;
    }
    let first = Holder::spawn({
        let mut c = Command::new("unshare");
        c.args(["-n", "sleep", "600"]);
        c
    });
    let inode = first.inode();
    let ns_path = first.ns_path();
    let _leak = run_in(ns_path.clone(), || {
        Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        close_wait_leak(8090, 41)
    });
    let home = Netns::new("outlive-home");
    let watcher = crate::harness::Watcher::start(
        Some(&home),
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--all-netns",
            "--tally-interval",
            "500ms",
            "--reconcile-interval",
            "1s",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    let close_wait_of = |lines: &[String]| {
        crate::harness::records(lines, "tally")
            .last()
            .and_then(|t| namespace_tally(&t, inode))
            .map(|n| nonzero_states(&n).get("CLOSE_WAIT").copied().unwrap_or(0))
    };
    let started = std::time::Instant::now();
    while close_wait_of(&watcher.lines()) != Some(41) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never tallied: {:?}",
            watcher.lines().last()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Another process joins it after it was found; the one it was found through exits;
    // several reconciliations and discoveries follow.
    let second = Holder::spawn({
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", first.ns_path()))
            .args(["sleep", "600"]);
        c
    });
    assert_eq!(second.inode(), inode);
    drop(first);
    std::thread::sleep(Duration::from_secs(4));
    let (lines, status) = watcher.stop();
    assert!(status.success());
    let gone: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains("\"rule\":\"netns_gone\"") && l.contains(&format!("\"netns\":{inode}"))
        })
        .collect();
    assert!(gone.is_empty(), "said gone while held: {gone:?}");
    assert_eq!(close_wait_of(&lines), Some(41));
    drop(second);
}

/// An `ip netns` name that is not UTF-8 is listed (shown escaped) and can be named with
/// `--netns`; a namespace another user's process holds is refused with the real cause.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn namespace_names_of_any_bytes_and_honest_refusals() {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
    if !require_root("namespace_names_of_any_bytes_and_honest_refusals") {
        return;
    }
    let name = OsStr::from_bytes(b"tcpmon-bytes-\xff\xfe");
    let added = Command::new("ip")
        .args(["netns", "add"])
        .arg(name)
        .status()
        .unwrap();
    assert!(added.success());
    struct Delete<'a>(&'a OsStr);
    impl Drop for Delete<'_> {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete"])
                .arg(self.0)
                .status();
        }
    }
    let _delete = Delete(name);
    let inode = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(std::path::Path::new("/run/netns").join(name))
            .unwrap()
            .ino()
    };
    let doc = tcpmon_json(&["states", "--all-netns"]);
    let listed = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["inode"] == inode)
        .unwrap_or_else(|| panic!("not listed: {}", doc["namespaces"]));
    assert_eq!(listed["name"], "tcpmon-bytes-\u{fffd}\u{fffd}");
    let out = Command::new(tcpmon_bin())
        .args(["states", "--json", "--netns"])
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["namespaces"][0]["inode"], inode);
    // As nobody: pid 1's namespace cannot be opened, and the error says why.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(tcpmon_bin())
        .args(["states", "--netns", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open /proc/1/ns/net: Permission denied")
            && err.contains("CAP_SYS_PTRACE"),
        "{err}"
    );
}

/// A container whose /etc is a FUSE filesystem that never answers (its server is stuck):
/// its hostname is given up after a deadline, said in a note, and neither a snapshot
/// nor the live engine waits on it.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_container_root_that_never_answers_stalls_nothing() {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    if !require_root("a_container_root_that_never_answers_stalls_nothing") {
        return;
    }
    // The FUSE connection: opened here, never read, so every request waits.
    // SAFETY: open(2) of a device; the fd is owned below.
    let fuse = unsafe {
        let fd = libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR);
        assert!(fd >= 0, "/dev/fuse: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    };
    // Made before the container so that it is removed after it, even on failure.
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4).map(std::path::PathBuf::from))
        .expect("a cgroup2 mount");
    struct Cgroup(std::path::PathBuf);
    impl Drop for Cgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let id = "5ca1ab1e".repeat(8);
    let cgroup = Cgroup(cgroup2.join(format!("system.slice/docker-{id}.scope")));
    std::fs::create_dir_all(&cgroup.0).unwrap();
    // A "container": its own network and mount namespaces, with /etc on that FUSE
    // mount, in a Docker-shaped cgroup (so its hostname is looked for).
    let container = Holder::spawn({
        let mut c = Command::new("unshare");
        c.args(["-n", "-m", "--propagation", "private", "sleep", "600"]);
        c
    });
    let fd = fuse.as_raw_fd();
    let mut mount = Command::new("nsenter");
    mount
        .args(["-t", &container.pid().to_string(), "-m"])
        .args(["mount", "-i", "-t", "fuse", "-o"])
        .arg(format!("fd={fd},rootmode=40000,user_id=0,group_id=0"))
        .args(["none", "/etc"]);
    // SAFETY: in the child before exec: only fcntl, to let the fd through exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        mount.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    assert!(mount.status().unwrap().success(), "mounting the FUSE /etc");
    std::fs::write(cgroup.0.join("cgroup.procs"), container.pid().to_string()).unwrap();

    // A snapshot: answered in well under the old wait (forever), with a note.
    let started = std::time::Instant::now();
    let out = Command::new("timeout")
        .arg("20")
        .arg(tcpmon_bin())
        .args(["report", "--all-netns"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(5), "report took {took:?}");
    assert!(text.contains("docker container 5ca1ab1e5ca1"), "{text}");
    // The note heads the report, with the other notes on how it was read.
    assert!(
        text.contains(&format!(
            "note: /proc/{}/root did not answer",
            container.pid()
        )),
        "{text}\n{err}"
    );
    // The live engine: starts, tallies, says it once, and stops at once.
    let home = Netns::new("fuse-home");
    let watcher = crate::harness::Watcher::start(
        Some(&home),
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--all-netns",
            "--tally-interval",
            "500ms",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    watcher.wait_for(Duration::from_secs(5), "a tally", |l| {
        l.contains("\"type\":\"tally\"")
    });
    let stopping = std::time::Instant::now();
    let (lines, status) = watcher.stop();
    assert!(status.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
    let said: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"rule\":\"owner_unanswered\""))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    eprintln!(
        "FUSE-stuck container: report in {took:?}, watch stopped in {:?}",
        stopping.elapsed()
    );
    drop(container);
    // Aborts the connection: the reads still waiting end with an error.
    drop(fuse);
}
