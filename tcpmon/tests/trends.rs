//! `tcpmon trends` over a history written through the library: its text pinned by a
//! golden file, its JSON against docs/schema/trends.schema.json, its refusals; and a
//! history that survives `kill -9` of its writer at any moment.
use std::{
    path::{Path, PathBuf},
    process::{Command as Std, Stdio},
    thread,
    time::Duration,
};

use assert_cmd::Command;
use serde_json::Value;
use tcpmon::history::{
    sample::{AlertChange, ListenerSeen, TopEntry},
    History, NamespaceSample, Sample, METRICS,
};

/// 2026-12-01 00:00 UTC.
const START: i64 = 1_796_083_200;
const HOUR: i64 = 3600;

/// Three days, a sample a minute: ESTABLISHED peaks at 14:00 each day, TIME_WAIT toward
/// one destination peaks on the second afternoon, CLOSE_WAIT leaks at 2 an hour on the
/// third day, a debug listener lives two hours on the second day. Returns "now".
fn fixture(path: &Path) -> i64 {
    let mut h = History::open(path, 100 << 20).unwrap();
    let end = START + 3 * 24 * HOUR;
    let mut t = START;
    while t < end {
        let hour = (t - START) / HOUR;
        let hour_of_day = hour % 24;
        let day = hour / 24;
        let mut values = [0i64; METRICS.len()];
        // A daily cycle: 100 at night, 1,000 at 14:00.
        let distance = (hour_of_day - 14).abs().min(24 - (hour_of_day - 14).abs());
        values[0] = 1000 - 75 * distance.min(12);
        values[5] = 500
            + if day == 1 && (13..16).contains(&hour_of_day) {
                14_000
            } else {
                0
            };
        values[7] = if day == 2 { 2 * hour_of_day } else { 1 };
        values[9] = 2;
        values[11] = values[0] + values[5];
        values[13] = values[5] / 2;
        values[14] = 3;
        values[18] = 120;
        let mut listeners = vec![ListenerSeen {
            netns: 0,
            listener: "0.0.0.0:22".into(),
            process: "sshd".into(),
            backlog: Some(128),
            accept_queue: Some(0),
        }];
        if day == 1 && (10..12).contains(&hour_of_day) {
            listeners.push(ListenerSeen {
                netns: 0,
                listener: "0.0.0.0:9999".into(),
                process: "python3".into(),
                backlog: Some(5),
                accept_queue: Some(1),
            });
        }
        let tops = vec![
            TopEntry {
                kind: "peer",
                netns: 0,
                key: "203.0.113.7".into(),
                value: values[0] / 4,
                value2: 10,
                owners: String::new(),
            },
            TopEntry {
                kind: "close_wait",
                netns: 0,
                key: "on local port 8080".into(),
                value: values[7],
                value2: 60,
                owners: "java".into(),
            },
        ];
        h.record(&Sample {
            time: t,
            port_range: 28_232,
            namespaces: vec![NamespaceSample {
                netns: 0,
                owner: String::new(),
                values,
            }],
            tops,
            listeners,
        })
        .unwrap();
        if t == START + 2 * 24 * HOUR + 20 * HOUR {
            h.record_alert(&AlertChange {
                time: t,
                status: "raised".into(),
                severity: "warning".into(),
                rule: "close_wait".into(),
                subject: "8080".into(),
                message: "40 CLOSE_WAIT sockets on local port 8080".into(),
                netns: 0,
            })
            .unwrap();
        }
        t += 60;
    }
    end
}

fn trends(history: &Path, now: i64, args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("tcpmon")
        .unwrap()
        .arg("trends")
        .arg("--history")
        .arg(history)
        .args(["--now", &now.to_string()])
        .args(args)
        .env("NO_COLOR", "1")
        .assert()
}

fn history() -> (tempfile::TempDir, PathBuf, i64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let now = fixture(&path);
    (dir, path, now)
}

#[test]
fn trends_text() {
    let (_dir, path, now) = history();
    // The file's name changes from run to run.
    let text = |args: &[&str]| {
        let out = trends(&path, now, args)
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out)
            .unwrap()
            .replace(&path.display().to_string(), "HISTORY")
    };
    insta::assert_snapshot!(
        "trends_text",
        text(&[
            "--since",
            "24h",
            "--every",
            "3h",
            "--compare",
            "1d",
            "--listeners"
        ])
    );
    // The second day, with its debug listener and its TIME_WAIT peak.
    insta::assert_snapshot!(
        "trends_second_day",
        text(&[
            "--since",
            "2026-12-02",
            "--until",
            "2026-12-03",
            "--every",
            "6h",
            "--state",
            "time-wait,retransmits",
            "--listeners",
        ])
    );
}

#[test]
fn trends_json_matches_its_schema_and_the_fixture() {
    let (_dir, path, now) = history();
    let out = trends(
        &path,
        now,
        &[
            "--json",
            "--since",
            "3d",
            "--every",
            "1d",
            "--compare",
            "1d",
            "--listeners",
        ],
    )
    .success()
    .get_output()
    .stdout
    .clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let schema_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/trends.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
    // Three daily buckets of 1,440 samples (the last minute is rolled up when the next
    // sample comes); the 1-minute tier holds three days.
    let buckets = doc["buckets"].as_array().unwrap();
    let samples: Vec<i64> = buckets
        .iter()
        .map(|b| b["samples"].as_i64().unwrap())
        .collect();
    assert_eq!(samples, [1440, 1440, 1439], "{doc:#}");
    assert_eq!(doc["tier"], "minute");
    assert_eq!(buckets[1]["max"]["TIME_WAIT"], 14_500);
    assert_eq!(buckets[0]["min"]["ESTABLISHED"], 100);
    // The debug listener came and went.
    let listeners = doc["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert_eq!(listeners[0]["listener"], "0.0.0.0:9999");
    assert_eq!(listeners[0]["change"], "appeared and went");
    assert_eq!(listeners[0]["first_seen"], START + 34 * HOUR);
    assert_eq!(listeners[0]["last_seen"], START + 36 * HOUR - 60);
    let kinds: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "time_wait_headroom",
            "close_wait_growth",
            "busiest_hour",
            "per_ip_peak"
        ]
    );
    assert_eq!(doc["alerts"][0]["rule"], "close_wait");
}

#[test]
fn what_trends_cannot_read_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.db");
    let err = |assert: assert_cmd::assert::Assert| {
        String::from_utf8(assert.code(2).get_output().stderr.clone()).unwrap()
    };
    let e = err(trends(&missing, START, &[]));
    assert!(e.contains("no history here yet"), "{e}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello\n").unwrap();
    let e = err(trends(&text, START, &[]));
    assert!(e.contains("not a tcpmon history"), "{e}");
    let (_d, path, now) = history();
    let e = err(trends(&path, now, &["--state", "bogus"]));
    assert!(e.contains("--state bogus: not recorded"), "{e}");
    let e = err(trends(&path, now, &["--since", "1h", "--until", "2h"]));
    assert!(e.contains("is not before --until"), "{e}");
    // A period with nothing recorded says so.
    let out = trends(
        &path,
        now,
        &["--since", "2020-01-01", "--until", "2020-01-02"],
    )
    .success()
    .get_output()
    .stdout
    .clone();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("No samples in this period."));
}

/// `trends --json` of the last hour, minute by minute, from `path` (now: the clock's).
fn last_hour(path: &Path) -> assert_cmd::assert::Assert {
    Command::cargo_bin("tcpmon")
        .unwrap()
        .args([
            "trends",
            "--json",
            "--since",
            "1h",
            "--every",
            "1m",
            "--history",
        ])
        .arg(path)
        .assert()
}

/// `watch --history` killed with SIGKILL at moments spread over its writes: each time
/// the file passes integrity_check, and the next run goes on appending to it.
#[test]
fn a_killed_writer_leaves_a_sound_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let bin = assert_cmd::cargo::cargo_bin("tcpmon");
    let mut samples = 0;
    for round in 0..8u64 {
        let mut child = Std::new(&bin)
            .args(["watch", "--mode", "poll", "--quiet-transitions"])
            .args(["--interval", "100ms", "--tally-interval", "100ms"])
            .args(["--history-interval", "1s", "--history"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // At moments spread over a second of steady writing.
        thread::sleep(Duration::from_millis(1500 + 130 * round));
        if round == 3 {
            // Read while it writes.
            last_hour(&path).success();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let verdict: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(verdict, "ok", "round {round}");
        let now: i64 = conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .unwrap();
        assert!(now >= samples, "round {round}: {now} < {samples}");
        samples = now;
    }
    assert!(samples >= 8, "{samples} samples written");
    // Periods end before "now": the last sample's second must have passed.
    thread::sleep(Duration::from_millis(1100));
    let out = last_hour(&path).success().get_output().stdout.clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let counted: i64 = doc["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["samples"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, samples);
}

/// A file that is not a history is refused by the writers too, untouched; with
/// --history-reset it is moved aside and a new history starts.
#[test]
fn a_foreign_file_is_never_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    std::fs::write(&path, "my notes\n").unwrap();
    let watch = |extra: &[&str]| {
        Command::cargo_bin("tcpmon")
            .unwrap()
            .args([
                "watch",
                "--mode",
                "poll",
                "--quiet-transitions",
                "--duration",
                "1s",
            ])
            .args(["--tally-interval", "200ms", "--history-interval", "1s"])
            .args(extra)
            .arg("--history")
            .arg(&path)
            .assert()
    };
    let out = watch(&[]).code(2).get_output().stderr.clone();
    let err = String::from_utf8(out).unwrap();
    assert!(
        err.contains("not a tcpmon history (not an SQLite database)"),
        "{err}"
    );
    assert!(err.contains("--history-reset"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "my notes\n");
    let out = watch(&["--history-reset"])
        .success()
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(err.contains("the old history was moved to"), "{err}");
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".old"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), "my notes\n");
    assert!(History::open_read(&path).is_ok());
    // Under a second: at least the sample of the final tally.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let samples: i64 = conn
        .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
        .unwrap();
    assert!(samples >= 1);
}
