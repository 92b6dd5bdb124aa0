//! A known population recorded by `watch --history` with eBPF in a private namespace,
//! read back through `tcpmon trends --json`: every bucket holds exactly what `ss` sees.
use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::harness::{require_root, ss_states, tcpmon_bin, Netns, Watcher};

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn a_recorded_population_reads_back_through_trends() {
    if !require_root("a_recorded_population_reads_back_through_trends") {
        return;
    }
    let ns = Netns::new("history");
    // 30 connections both ends open (60 ESTABLISHED), 20 the clients closed and the
    // server never does (20 CLOSE_WAIT, 20 FIN_WAIT2), one listener.
    let _population = ns.run(|| {
        let web = TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)).unwrap();
        let mut keep = Vec::new();
        for i in 0..50 {
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 8080)).unwrap();
            let (server, _) = web.accept().unwrap();
            if i < 30 {
                keep.push(client);
            } else {
                drop(client);
            }
            keep.push(server);
        }
        (web, keep)
    });
    thread::sleep(Duration::from_millis(200));
    let expected = ss_states(&format!("/run/netns/{}", ns.name));
    assert_eq!(expected.get("CLOSE_WAIT"), Some(&20), "{expected:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let history = path.to_str().unwrap().to_owned();
    let watcher = Watcher::start(
        Some(&ns),
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--mode",
            "ebpf",
            "--tally-interval",
            "500ms",
            "--history",
            &history,
            "--history-interval",
            "1s",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    thread::sleep(Duration::from_millis(4500));
    let (_lines, status, stderr) = watcher.stop_with_stderr();
    assert!(status.success(), "{status}: {stderr}");
    let out = std::process::Command::new(tcpmon_bin())
        .args([
            "trends",
            "--json",
            "--since",
            "10m",
            "--every",
            "1m",
            "--listeners",
        ])
        .args([
            "--state",
            "established,close_wait,fin_wait2,listen",
            "--history",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let buckets = doc["buckets"].as_array().unwrap();
    let samples: i64 = buckets.iter().map(|b| b["samples"].as_i64().unwrap()).sum();
    assert!(samples >= 3, "{samples} samples in 4.5 s at 1 s: {doc:#}");
    for state in ["ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT2", "LISTEN"] {
        let want = expected.get(state).copied().unwrap_or(0) as i64;
        for b in buckets {
            assert_eq!(
                (b["min"][state].as_i64(), b["max"][state].as_i64()),
                (Some(want), Some(want)),
                "{state}: {doc:#}"
            );
        }
    }
    // The leak was alerted as present at start, and recorded.
    assert!(
        doc["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "close_wait" && a["status"] == "raised"),
        "{doc:#}"
    );
    // No listener came or went; the one there is in the file with its first and last
    // sighting.
    assert_eq!(doc["listeners"], serde_json::json!([]));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (first, last): (i64, i64) = conn
        .query_row(
            "SELECT first_seen, last_seen FROM listeners WHERE listener = '127.0.0.1:8080'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(last - first >= 2, "{first}..{last}");
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
}
