//! One scenario, judged three ways: `audit`, `watch`'s alerts and `serve`'s series and
//! /alerts must name the same problems with the same subjects and severities. The
//! scenario is the one a new user tried: a server leaking CLOSE_WAIT, a connection pool
//! leaking CLOSE_WAIT toward a cache, one client holding 250 connections, and an
//! ordinary client whose closed connections leave TIME_WAIT behind.
use std::{
    collections::BTreeSet,
    io::Read,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::{
    harness::{records, require_root, tcpmon_bin, Netns, Watcher},
    prometheus::{http_get, Killed},
};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const HEAVY_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const CLOSING_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 4);

/// (rule, subject, severity)
type Judgment = (String, String, String);

/// A connection from `from` (an address of the client namespace) to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&SocketAddr::from(to).into()).unwrap();
    socket.into()
}

/// `n` connections made in `client` to `listener` in `server`, accepted in batches the
/// listen backlog holds; (client ends, server ends).
fn connections(
    client: &Netns,
    server: &Netns,
    listener: &TcpListener,
    from: Ipv4Addr,
    n: usize,
) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let to = match listener.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("IPv4 listeners"),
    };
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    let mut left = n;
    while left > 0 {
        let batch = left.min(64);
        clients.extend(client.run(move || {
            (0..batch)
                .map(|_| connect_from(from, to))
                .collect::<Vec<_>>()
        }));
        let listener = listener.try_clone().unwrap();
        servers.extend(server.run(move || {
            (0..batch)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        }));
        left -= batch;
    }
    (clients, servers)
}

struct Scenario {
    _keep: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
}

/// Builds the scenario in `server` (the namespace tcpmon watches), with its peers in
/// `client`.
fn scenario(server: &Netns, client: &Netns) -> Scenario {
    for extra in [HEAVY_CLIENT, CLOSING_CLIENT] {
        client.exec_ok(&["ip", "addr", "add", &format!("{extra}/32"), "dev", "lo"]);
    }
    let bind = |ns: &Netns, ip: Ipv4Addr, port: u16| {
        ns.run(move || TcpListener::bind((ip, port)).unwrap())
    };
    let web = bind(server, SERVER, 8080);
    let api = bind(server, SERVER, 9000);
    let pages = bind(server, SERVER, 9001);
    let cache = bind(client, CLIENT, 6379);
    let mut keep = Vec::new();
    // A server leak: clients close, the server never does.
    let (clients, servers) = connections(client, server, &web, CLIENT, 120);
    drop(clients);
    keep.extend(servers);
    // A client pool leak: the cache closes, the pool (in the watched namespace) never does.
    let (pool, cache_ends) = connections(server, client, &cache, SERVER, 150);
    drop(cache_ends);
    keep.extend(pool);
    // One client holding 250 live connections.
    let (heavy, api_ends) = connections(client, server, &api, HEAVY_CLIENT, 250);
    keep.extend(heavy);
    keep.extend(api_ends);
    // An ordinary client of a server that closes first: TIME_WAIT on the server side,
    // nothing live.
    let (readers, page_ends) = connections(client, server, &pages, CLOSING_CLIENT, 300);
    drop(page_ends);
    for mut reader in readers {
        let mut b = [0u8; 1];
        assert_eq!(reader.read(&mut b).unwrap(), 0);
    }
    Scenario {
        _keep: keep,
        _listeners: vec![web, api, pages, cache],
    }
}

fn expected() -> BTreeSet<Judgment> {
    [
        ("close_wait", "8080", "critical"),
        ("close_wait", "10.77.0.2:6379", "critical"),
        ("per_ip", "10.77.0.3", "warning"),
    ]
    .into_iter()
    .map(|(r, s, v)| (r.to_owned(), s.to_owned(), v.to_owned()))
    .collect()
}

fn judgment(v: &Value) -> Judgment {
    (
        v["rule"].as_str().unwrap().to_owned(),
        v["subject"].as_str().unwrap().to_owned(),
        v["severity"].as_str().unwrap().to_owned(),
    )
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn audit_watch_and_serve_judge_one_scenario_alike() {
    if !require_root("audit_watch_and_serve_judge_one_scenario_alike") {
        return;
    }
    let server = Netns::new("agree-srv");
    let client = Netns::new("agree-cli");
    server.link(&client, "10.77.0.1/24", "10.77.0.2/24");
    let _scenario = scenario(&server, &client);

    // audit
    let out = server
        .command(tcpmon_bin().to_str().unwrap())
        .args(["audit", "--json", "--all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "critical findings: {out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = doc["findings"]["items"].as_array().unwrap();
    let audited: BTreeSet<Judgment> = findings.iter().map(judgment).collect();
    assert_eq!(audited, expected(), "{findings:#?}");
    let value_of = |subject: &str| {
        findings
            .iter()
            .find(|f| f["subject"] == subject)
            .map(|f| f["value"].as_f64().unwrap())
    };
    assert_eq!(value_of("8080"), Some(120.0));
    assert_eq!(value_of("10.77.0.2:6379"), Some(150.0));
    assert_eq!(value_of("10.77.0.3"), Some(250.0));
    let out = server
        .command(tcpmon_bin().to_str().unwrap())
        .args(["per-ip", "--json", "--all"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let per_ip = doc["per_ip"]["items"].as_array().unwrap();
    let closing = per_ip.iter().find(|i| i["ip"] == "10.77.0.4").unwrap();
    assert_eq!(
        (closing["active"].as_u64(), closing["time_wait"].as_u64()),
        (Some(0), Some(300))
    );

    // watch: the same alerts, raised at once (all present at start) or at the first tally
    let watcher = Watcher::start(
        Some(&server),
        &[
            "watch",
            "--json",
            "--quiet-transitions",
            "--tally-interval",
            "1s",
        ],
        |line| line.contains("\"type\":\"mode\""),
    );
    let started = Instant::now();
    let raised = loop {
        let raised: BTreeSet<Judgment> = records(&watcher.lines(), "alert")
            .filter(|a| a["status"] == "raised" || a["status"] == "changed")
            .map(|a| judgment(&a))
            .collect();
        if raised.is_superset(&expected()) || started.elapsed() > Duration::from_secs(10) {
            break raised;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let (lines, status) = watcher.stop();
    assert!(status.success(), "{status}");
    // What is raised last for each subject is what audit says.
    let mut last = std::collections::BTreeMap::new();
    for a in records(&lines, "alert").filter(|a| a["status"] != "event") {
        let (rule, subject, severity) = judgment(&a);
        last.insert(
            (rule, subject),
            (a["status"].as_str().unwrap().to_owned(), severity),
        );
    }
    let watched: BTreeSet<Judgment> = last
        .into_iter()
        .filter(|(_, (status, _))| status != "cleared")
        .map(|((rule, subject), (_, severity))| (rule, subject, severity))
        .collect();
    assert_eq!(watched, expected(), "raised: {raised:?}");

    // serve: the series and /alerts
    let child = server
        .command(tcpmon_bin().to_str().unwrap())
        .args([
            "serve",
            "--no-history",
            "--listen",
            "127.0.0.1:29832",
            "--interval",
            "500ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Killed(child);
    let addr: SocketAddr = "127.0.0.1:29832".parse().unwrap();
    let started = Instant::now();
    let (metrics, alerts) = loop {
        let (status, metrics) = http_get(&server, addr, "/metrics");
        let (_, alerts) = http_get(&server, addr, "/alerts");
        let alerts: Value = serde_json::from_str(&alerts).unwrap_or(Value::Null);
        let served: BTreeSet<Judgment> = alerts["alerts"]
            .as_array()
            .map(|a| a.iter().map(judgment).collect())
            .unwrap_or_default();
        if status == 200 && served == expected() {
            break (metrics, served);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/alerts {alerts} is not {:?}",
            expected()
        );
        thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(alerts, expected());
    let sample = |prefix: &str| -> Vec<(String, f64)> {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect()
    };
    let close_wait = sample("tcpmon_close_wait_sockets{");
    let by_place = |port: &str, remote: &str| {
        let head =
            format!("tcpmon_close_wait_sockets{{port=\"{port}\",remote=\"{remote}\",process=\"");
        close_wait
            .iter()
            .find(|(s, _)| s.starts_with(&head) && !s.contains("process=\"other\""))
            .map(|(_, v)| *v)
    };
    assert_eq!(by_place("8080", ""), Some(120.0), "{close_wait:?}");
    assert_eq!(
        by_place("", "10.77.0.2:6379"),
        Some(150.0),
        "{close_wait:?}"
    );
    let live = sample("tcpmon_remote_ip_connections{");
    assert!(
        live.contains(&(
            "tcpmon_remote_ip_connections{ip=\"10.77.0.3\"}".to_owned(),
            250.0
        )),
        "{live:?}"
    );
    assert!(
        !live
            .iter()
            .any(|(s, v)| s.contains("10.77.0.4") && *v > 0.0),
        "{live:?}"
    );
    let time_wait = sample("tcpmon_remote_ip_time_wait_sockets{");
    assert!(
        time_wait.contains(&(
            "tcpmon_remote_ip_time_wait_sockets{ip=\"10.77.0.4\"}".to_owned(),
            300.0
        )),
        "{time_wait:?}"
    );
}
