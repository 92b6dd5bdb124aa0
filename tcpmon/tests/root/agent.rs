//! `watch` as a long-running root agent: how it stops (signals, a blocked stdout), what it
//! leaves behind (mounts, programs, links), which capabilities each feature needs, and
//! its memory under floods.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::OwnedFd,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{records, require_root, run, tcpmon_bin, Netns};

/// tcpmon's program names as the kernel shows them (truncated to 15 bytes).
const PROGRAMS: [&str; 6] = [
    "inet_sock_set_s",
    "tcp_retransmit_",
    "syn_request",
    "inet_sock_set_state",
    "inet_sock_set_state_raw",
    "inet_sock_set_state_btf",
];

/// IDs of the loaded programs named like tcpmon's (the root tests run one at a time, so
/// they are the watcher's).
fn tcpmon_program_ids() -> BTreeSet<u64> {
    let out = run("bpftool", &["-j", "prog", "show"]);
    let progs: Value = serde_json::from_str(&out).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| PROGRAMS.contains(&n)))
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// Program IDs that some BPF link attaches.
fn linked_programs() -> BTreeSet<u64> {
    let out = run("bpftool", &["-j", "link", "show"]);
    let links: Value = serde_json::from_str(&out).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["prog_id"].as_u64())
        .collect()
}

/// Waits (at most 3 s: the kernel frees a program after its last fd closes, not at once)
/// until no program named like tcpmon's is loaded; what is left otherwise.
fn tcpmon_programs_left() -> BTreeSet<u64> {
    let started = Instant::now();
    loop {
        let left = tcpmon_program_ids();
        if left.is_empty() || started.elapsed() > Duration::from_secs(3) {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: signalling a child of this test, not yet reaped.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Waits for `child` to exit, at most `limit`; how long it took.
fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after the signal");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `tcpmon watch ARGS` in `ns`, its stdout a pipe nobody reads (the read end is kept,
/// so writes block once it is full), stderr collected.
fn watch_into_unread_pipe(ns: &Netns, args: &[&str]) -> (Child, OwnedFd) {
    let (reader, writer) = std::io::pipe().unwrap();
    let child = ns
        .command(tcpmon_bin().to_str().unwrap())
        .arg("watch")
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, OwnedFd::from(reader))
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_stop_signal_ends_watch_within_two_seconds_whatever_stdout_does() {
    if !require_root("a_stop_signal_ends_watch_within_two_seconds_whatever_stdout_does") {
        return;
    }
    for mode in ["poll", "ebpf"] {
        let ns = Netns::new("stop");
        let (mut child, _unread) = watch_into_unread_pipe(
            &ns,
            &[
                "--json",
                "--mode",
                mode,
                "--interval",
                "10ms",
                "--tally-interval",
                "1ms",
            ],
        );
        // Tallies every millisecond fill the pipe, then tcpmon's queue.
        thread::sleep(Duration::from_secs(4));
        assert!(child.try_wait().unwrap().is_none(), "{mode}: still running");
        let pid = child.id();
        let held = tcpmon_program_ids();
        assert_eq!(held.is_empty(), mode == "poll", "{mode}: programs {held:?}");
        if mode == "ebpf" {
            assert!(
                !held.is_disjoint(&linked_programs()),
                "attached while watching"
            );
        }
        signal(pid, libc::SIGTERM);
        // While it waits on the blocked output, its programs are detached: each classic
        // tracepoint's link takes a grace period to close (the kernel serializes them),
        // so this is looked for over a second, not at once.
        if mode == "ebpf" {
            let asked = Instant::now();
            let detached = loop {
                let running = child.try_wait().unwrap().is_none();
                if !running || held.is_disjoint(&linked_programs()) {
                    break running;
                }
                assert!(
                    asked.elapsed() < Duration::from_millis(1500),
                    "links left while finishing"
                );
                thread::sleep(Duration::from_millis(20));
            };
            eprintln!(
                "detached {:?} after the signal (still finishing: {detached})",
                asked.elapsed()
            );
        }
        let (status, took) = wait_exit(&mut child, Duration::from_secs(5));
        let err = stderr_of(&mut child);
        assert!(
            took < Duration::from_secs(2),
            "{mode}: took {took:?}; {err}"
        );
        assert!(status.success(), "{mode}: {status}; {err}");
        assert!(err.contains("tcpmon: detached"), "{mode}: {err}");
        assert!(err.contains("not all written"), "{mode}: {err}");
        assert!(tcpmon_programs_left().is_empty());
        eprintln!("{mode}: SIGTERM with a blocked stdout ended watch in {took:?}");
    }
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_second_signal_exits_at_once_and_sighup_stops_cleanly() {
    if !require_root("a_second_signal_exits_at_once_and_sighup_stops_cleanly") {
        return;
    }
    let ns = Netns::new("sig2");
    let (mut child, _unread) = watch_into_unread_pipe(
        &ns,
        &[
            "--json",
            "--mode",
            "poll",
            "--interval",
            "10ms",
            "--tally-interval",
            "1ms",
        ],
    );
    thread::sleep(Duration::from_secs(3));
    signal(child.id(), libc::SIGTERM);
    thread::sleep(Duration::from_millis(50));
    signal(child.id(), libc::SIGINT);
    let (status, took) = wait_exit(&mut child, Duration::from_secs(3));
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status}");

    // SIGHUP, output read: the final tally and summary, exit 0.
    let mut child = ns
        .command(tcpmon_bin().to_str().unwrap())
        .args([
            "watch",
            "--json",
            "--mode",
            "ebpf",
            "--tally-interval",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mode = lines.next().unwrap().unwrap();
    assert!(mode.contains("\"type\":\"mode\""), "{mode}");
    signal(child.id(), libc::SIGHUP);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(3));
    assert!(status.success(), "{status}");
    assert_eq!(records(&rest, "summary").count(), 1, "{rest:?}");
    assert!(records(&rest, "tally").count() >= 1);
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_signal_during_start_up_is_handled() {
    if !require_root("a_signal_during_start_up_is_handled") {
        return;
    }
    let ns = Netns::new("early");
    for delay_ms in [30, 150, 400] {
        // Spawned from a thread inside the namespace, so the signal reaches tcpmon itself
        // (not an `ip netns exec` that has not exec'd it yet).
        let mut child = ns.run(|| {
            Command::new(tcpmon_bin())
                .args(["watch", "--json", "--mode", "ebpf"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        });
        thread::sleep(Duration::from_millis(delay_ms));
        signal(child.id(), libc::SIGTERM);
        let (status, took) = wait_exit(&mut child, Duration::from_secs(5));
        let err = stderr_of(&mut child);
        // Killed by the signal's default action would be no exit code at all.
        assert_eq!(
            status.code(),
            Some(0),
            "after {delay_ms} ms: {status}; {err}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    assert!(tcpmon_programs_left().is_empty());
}

/// Mount points of one mount namespace, as (mount point, filesystem type).
fn mounts(mountinfo: &str) -> BTreeSet<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            Some((
                mount.split_whitespace().nth(4)?.to_owned(),
                fs.split_whitespace().next()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn nothing_is_left_mounted_or_attached() {
    if !require_root("nothing_is_left_mounted_or_attached") {
        return;
    }
    let ns = Netns::new("mounts");
    let bin = tcpmon_bin();
    // `ip netns exec` remounts /sys, so tracefs and cgroup2 are missing there: tcpmon has
    // to provide both. The mount table is read before and after, in the same namespace.
    for stop in ["--duration 2s", "SIGTERM"] {
        let script = format!(
            "cat /proc/self/mountinfo > $T/before; \
             {bin} watch --json --mode ebpf {} > $T/out 2> $T/err & pid=$!; \
             sleep 2.5; [ '{stop}' = SIGTERM ] && kill -TERM $pid; wait $pid; echo $? > $T/status; \
             cat /proc/self/mountinfo > $T/after",
            if stop == "SIGTERM" { "" } else { stop },
            bin = bin.display(),
        );
        let dir = tempfile::tempdir().unwrap();
        let out = ns
            .command("sh")
            .args(["-c", &script])
            .env("T", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("status").trim(), "0", "{stop}: {}", read("err"));
        let mode = read("out").lines().next().unwrap_or_default().to_owned();
        assert!(mode.contains("\"mode\":\"ebpf\""), "{mode}");
        assert!(
            mode.contains("mounted tracefs at /sys/kernel/tracing to attach, and unmounted it"),
            "tcpmon had to mount tracefs: {mode}"
        );
        assert!(
            mode.contains("SYN counter attached on the first sign"),
            "cgroup2 found without a mount point: {mode}"
        );
        assert_eq!(
            mounts(&read("before")),
            mounts(&read("after")),
            "{stop}: mounts left behind"
        );
        let left = tcpmon_programs_left();
        assert!(left.is_empty(), "{stop}: programs left: {left:?}");
    }
}

/// `tcpmon ARGS` in `ns` as nobody with exactly `caps` (ambient, so they survive exec).
/// `host_mounts`: in this process's mount namespace (where cgroup2 is mounted), not
/// `ip netns exec`'s (which has neither cgroup2 nor tracefs).
fn with_caps(ns: &Netns, host_mounts: bool, caps: &[&str], args: &[&str]) -> std::process::Output {
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = if list.is_empty() {
        "-all".to_owned()
    } else {
        format!("-all,{}", list.join(","))
    };
    let mut cmd = if host_mounts {
        Command::new("setpriv")
    } else {
        ns.command("setpriv")
    };
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={list}"),
        &format!("--ambient-caps={list}"),
        &format!("--bounding-set={list}"),
    ])
    .arg(tcpmon_bin())
    .args(args);
    if host_mounts {
        // Spawned from a thread inside the network namespace: the child is in it too.
        ns.run(move || cmd.output().unwrap())
    } else {
        cmd.output().unwrap()
    }
}

/// The documented set for `watch`: every feature on.
const WATCH_CAPS: [&str; 7] = [
    "bpf",
    "perfmon",
    "net_admin",
    "sys_admin",
    "sys_ptrace",
    "dac_read_search",
    "sys_nice",
];

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn each_capability_enables_its_feature_and_its_absence_is_said() {
    if !require_root("each_capability_enables_its_feature_and_its_absence_is_said") {
        return;
    }
    let ns = Netns::new("caps");
    // A CLOSE_WAIT held by this (root) process: naming it needs CAP_SYS_PTRACE.
    let _held = ns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 9100)).unwrap();
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 9100)).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        (listener, server)
    });
    let args = [
        "watch",
        "--json",
        "--duration",
        "2500ms",
        "--close-wait-age",
        "1s",
        "--tally-interval",
        "1s",
    ];
    let watch_in = |host_mounts: bool, caps: &[&str]| {
        let out = with_caps(&ns, host_mounts, caps, &args);
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{caps:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let mode = records(&lines, "mode")
            .next()
            .unwrap_or_else(|| panic!("{err}"));
        (mode, lines, err)
    };
    let watch = |caps: &[&str]| watch_in(false, caps);
    let owner_named = |lines: &[String]| {
        records(lines, "alert").any(|a| {
            a["rule"] == "close_wait"
                && a["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("[{}]", std::process::id()))
        })
    };

    // Everything documented: every feature, and no note but the tracefs mount (`ip
    // netns exec` has none).
    let (mode, lines, err) = watch(&WATCH_CAPS);
    let reason = mode["reason"].as_str().unwrap();
    assert_eq!(mode["mode"], "ebpf", "{err}");
    assert!(
        reason.contains("SYN counter attached on the first sign"),
        "{reason}"
    );
    assert!(reason.contains("reader at nice -19"), "{reason}");
    assert!(owner_named(&lines), "{lines:?}");
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("note:") && !l.contains("mounted tracefs"))
        .collect();
    assert!(notes.is_empty(), "no feature missing: {notes:?}");

    let without = |dropped: &[&str]| -> Vec<&str> {
        WATCH_CAPS
            .iter()
            .copied()
            .filter(|c| !dropped.contains(c))
            .collect()
    };

    // Without CAP_BPF or CAP_PERFMON (and CAP_SYS_ADMIN, which grants both): polling,
    // said once.
    for dropped in [["bpf", "sys_admin"], ["perfmon", "sys_admin"]] {
        let (mode, _, err) = watch(&without(&dropped));
        assert_eq!(mode["mode"], "poll", "without {dropped:?}");
        assert_eq!(err.matches("eBPF unavailable").count(), 1, "{err}");
    }
    // Without CAP_NET_ADMIN (and CAP_SYS_ADMIN, which grants it too), where cgroup2 is
    // mounted: the SYN counter may not load, said once.
    let (mode, _, err) = watch_in(true, &without(&["net_admin", "sys_admin"]));
    assert_eq!(mode["mode"], "ebpf");
    assert!(mode["reason"].as_str().unwrap().contains("no SYN counter"));
    let note: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("note: SYN arrivals not counted"))
        .collect();
    assert_eq!(note.len(), 1, "{err}");
    assert!(note[0].contains("not permitted"), "{err}");
    // Without CAP_SYS_ADMIN: neither tracefs nor cgroup2 can be mounted here; the state
    // hook (BTF) needs neither.
    let (mode, _, err) = watch(&without(&["sys_admin"]));
    assert_eq!(mode["mode"], "ebpf");
    assert!(
        err.contains("note: SYN-ACK retransmits not watched"),
        "{err}"
    );
    assert!(err.contains("note: SYN arrivals not counted"), "{err}");
    // Without CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH: owners unknown, said.
    for cap in ["sys_ptrace", "dac_read_search"] {
        let (_, lines, err) = watch(&without(&[cap]));
        assert!(!owner_named(&lines), "without {cap}: {lines:?}");
        assert_eq!(
            err.matches("note: cannot see other users' processes")
                .count(),
            1,
            "{err}"
        );
    }
    // Without CAP_SYS_NICE: the inherited priority, said.
    let (mode, _, err) = watch(&without(&["sys_nice"]));
    assert!(mode["reason"]
        .as_str()
        .unwrap()
        .contains("inherited priority"));
    assert_eq!(
        err.matches("note: could not set the reader's priority")
            .count(),
        1,
        "{err}"
    );
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn churn_in_other_namespaces_keeps_memory_bounded_and_output_flowing() {
    if !require_root("churn_in_other_namespaces_keeps_memory_bounded_and_output_flowing") {
        return;
    }
    let watched = Netns::new("quiet");
    let busy = Netns::new("busy");
    for all_netns in [false, true] {
        // Only the watched namespace (tallies and alerts), or every namespace's
        // transitions printed.
        let scope = if all_netns {
            "--all-netns"
        } else {
            "--quiet-transitions"
        };
        let watcher = crate::harness::Watcher::start(
            Some(&watched),
            &["watch", "--json", "--tally-interval", "500ms", scope],
            |l| l.contains("\"type\":\"mode\""),
        );
        // Bounded churn in the other namespace: 4 threads x 3000 connections.
        busy.run(|| {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = thread::spawn(move || {
                for _ in 0..12_000 {
                    let _ = listener.accept();
                }
            });
            let clients: Vec<_> = (0..4)
                .map(|_| {
                    thread::spawn(move || {
                        for _ in 0..3000 {
                            drop(TcpStream::connect(addr));
                        }
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
            acceptor.join().unwrap();
        });
        let before = watcher.count("tally");
        thread::sleep(Duration::from_millis(1200));
        assert!(watcher.count("tally") > before, "tallies keep flowing");
        let peak = crate::harness::peak_rss_kib(watcher.pid());
        let (lines, status) = watcher.stop();
        assert!(status.success());
        let tally = records(&lines, "tally").last().unwrap();
        let kernel = &tally["kernel"];
        if !all_netns {
            assert!(kernel["other_netns"].as_u64().unwrap() > 10_000, "{kernel}");
            assert_eq!(tally["received"]["foreign"], 0);
        } else {
            assert!(
                tally["received"]["foreign"].as_u64().unwrap() > 10_000,
                "{tally}"
            );
            assert!(
                records(&lines, "transition").count() > 10_000,
                "shown with --all-netns"
            );
        }
        assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
        eprintln!(
            "other-namespace churn ({scope}): peak RSS {} MiB",
            peak / 1024
        );
    }
}
