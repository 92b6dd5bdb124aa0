//! Real output validated against the published schemas (docs/schema): every snapshot
//! command's document, and every NDJSON record type of `watch`.
use std::{path::PathBuf, process::Command};

use jsonschema::Validator;
use serde_json::Value;
use tcpmon::{
    ebpf::decode::{encode_endpoints, encode_transition},
    live::{
        fake::{FakeHost, FakeSource},
        record::{Mode, ModeRecord, SCHEMA_VERSION},
        Engine, EngineConfig,
    },
    model::{Endpoints, Family, Process, TcpState, Thresholds, Transition},
    output::live::NdjsonSink,
};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator(name: &str) -> Validator {
    let path = workspace().join("docs/schema").join(name);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(validator: &Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{doc:#}");
}

/// The sections each command adds to the source fields.
const COMMANDS: [(&str, &[&str]); 8] = [
    (
        "report",
        &[
            "states",
            "listeners",
            "per_ip",
            "per_port",
            "close_wait",
            "findings",
        ],
    ),
    ("states", &["states"]),
    ("listen", &["listeners"]),
    ("established", &["established"]),
    ("per-ip", &["per_ip"]),
    ("per-port", &["per_port"]),
    (
        "timewait",
        &["time_wait", "port_range", "destinations", "sockets"],
    ),
    ("audit", &["findings", "thresholds", "fail_on", "failed"]),
];

#[test]
fn every_snapshot_document_matches_the_schema() {
    let schema = validator("snapshot.schema.json");
    let fixtures = workspace().join("tcpmon/tests/fixtures");
    for fixture in ["mixed", "v4only", "golden"] {
        for (command, sections) in COMMANDS {
            let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
                .args([command, "--json", "--proc-root"])
                .arg(fixtures.join(fixture))
                .output()
                .unwrap();
            let doc: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{command} on {fixture}: {e}"));
            check(&schema, &doc, &format!("{command} on {fixture}"));
            assert_eq!(doc["schema_version"], tcpmon::snapshot::SCHEMA_VERSION);
            let keys: Vec<&str> = doc
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for section in sections {
                assert!(keys.contains(section), "{command} lacks {section}");
            }
            // The schema is strict: an undocumented field, or a missing one, fails.
            let mut extra = doc.clone();
            extra["surprise"] = Value::from(1);
            assert!(!schema.is_valid(&extra), "{command}: extra field accepted");
            let mut missing = doc.clone();
            missing.as_object_mut().unwrap().remove("total");
            assert!(
                !schema.is_valid(&missing),
                "{command}: missing field accepted"
            );
        }
    }
}

#[test]
fn this_machines_sockets_match_the_schema_too() {
    let schema = validator("snapshot.schema.json");
    for (command, _) in COMMANDS {
        for netns in [None, Some("--all-netns")] {
            let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
                .args([command, "--json", "--all"])
                .args(netns)
                .output()
                .unwrap();
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc.get("namespaces").is_some(), netns.is_some());
            check(&schema, &doc, command);
        }
    }
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Every record type, from the engine itself (fake kernel and machine).
#[test]
fn every_ndjson_record_type_matches_the_schema() {
    let schema = validator("watch.schema.json");
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut leak =
        tcpmon::host::proc_net::Socket::new(TcpState::CloseWait, (lo, 8080), (lo, 50000), 10);
    leak.rx_queue = 1;
    let mut sink = NdjsonSink::new(Vec::new());
    let mut engine = Engine::start(
        EngineConfig {
            thresholds: Thresholds {
                close_wait_age_secs: 1.0,
                ..Thresholds::DEFAULT
            },
            ..EngineConfig::default()
        }
        .validate()
        .expect("a valid config"),
        FakeHost {
            sockets: vec![leak],
            owners: [(
                10,
                Process {
                    pid: 7,
                    comm: "\u{1b}]0;x\u{7}".into(),
                },
            )]
            .into(),
            sockstat_time_wait: Some(0),
            ..FakeHost::default()
        },
        Some(FakeSource::default()),
        ModeRecord {
            schema_version: SCHEMA_VERSION,
            mode: Mode::Ebpf,
            reason: "schema test".into(),
            notes: vec!["a note".into()],
            fell_back: false,
            poll_interval: None,
        },
        &mut sink,
    )
    .unwrap();
    let at = Endpoints {
        ts_ns: 2_000_000_000,
        skaddr: 0xffff_8881_0000_1000,
        netns: 0,
        family: Family::Ipv6,
        local_ip: "::1".parse().unwrap(),
        local_port: 9000,
        remote_ip: "::".parse().unwrap(),
        remote_port: 0,
    };
    let source = engine.source_mut().unwrap();
    source.push(encode_transition(&Transition {
        at,
        old: TcpState::Close,
        new: TcpState::Listen,
        task: None,
    }));
    source.push(encode_endpoints(
        &at,
        tcpmon_common::kind::SYNACK_RETRANSMIT,
    ));
    engine.drain(&mut sink).unwrap();
    engine.host_mut().now_ns += 5_000_000_000;
    engine.tick(&mut sink).unwrap();
    engine.write_tally(&mut sink).unwrap();
    engine.finish(&mut sink).unwrap();
    let records = lines(&sink.into_inner().unwrap());
    let mut kinds: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for record in &records {
        check(&schema, record, record["type"].as_str().unwrap());
    }
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, ["alert", "mode", "summary", "tally", "transition"]);
}

/// The real binary's stream (poll mode needs no privilege).
#[test]
fn a_polling_watch_stream_matches_the_schema() {
    let schema = validator("watch.schema.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
        .args([
            "watch",
            "--json",
            "--mode",
            "poll",
            "--interval",
            "200ms",
            "--tally-interval",
            "300ms",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = lines(&out.stdout);
    assert_eq!(records[0]["type"], "mode");
    assert_eq!(records.last().unwrap()["type"], "summary");
    for record in &records {
        check(&schema, record, record["type"].as_str().unwrap());
    }
}
