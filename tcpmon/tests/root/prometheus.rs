//! `tcpmon serve` scraped by a real Prometheus server (Debian's), both in a private
//! namespace with a known population: the connection gauges equal `ss -tan`, the shipped
//! CLOSE_WAIT rule fires, and promtool finds nothing to say about a scrape. Also: serve
//! with exactly the capabilities of the shipped systemd unit.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{require_root, tcpmon_bin, Holder, Netns};

/// A child killed (and reaped) on drop, also when the test panics.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// GET `path` from `addr` inside `ns` (through a thread that entered it).
pub(crate) fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_owned())
    })
}

/// URL-encodes a PromQL query (the few characters queries here use).
fn encode_query(q: &str) -> String {
    q.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c.to_string(),
            other => format!("%{:02X}", other as u32),
        })
        .collect()
}

fn query(ns: &Netns, prometheus: SocketAddr, q: &str) -> Value {
    let (status, body) = http_get(
        ns,
        prometheus,
        &format!("/api/v1/query?query={}", encode_query(q)),
    );
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].clone()
}

/// `ss -tan` per state, in node_exporter's spelling.
fn ss_states(ns: &Netns) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in ns.exec_ok(&["ss", "-tan"]).lines().skip(1) {
        let state = match line.split_whitespace().next().unwrap() {
            "ESTAB" => "established".to_owned(),
            "SYN-RECV" => "syn_recv".to_owned(),
            other => other
                .to_ascii_lowercase()
                .replace('-', "_")
                .replace("fin_wait_", "fin_wait"),
        };
        *counts.entry(state).or_default() += 1;
    }
    counts
}

/// A population: listeners, ESTABLISHED pairs, client TIME_WAIT, and a CLOSE_WAIT leak
/// of 120 sockets on port 8080 (over the critical threshold).
fn population(ns: &Netns) -> (Vec<TcpStream>, Vec<TcpListener>) {
    ns.run(|| {
        let mut keep = Vec::new();
        let web = TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)).unwrap();
        let api = TcpListener::bind((Ipv4Addr::LOCALHOST, 9000)).unwrap();
        for _ in 0..120 {
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 8080)).unwrap();
            let (server, _) = web.accept().unwrap();
            drop(client);
            keep.push(server);
        }
        for i in 0..40 {
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, 9000)).unwrap();
            let (mut server, _) = api.accept().unwrap();
            if i % 2 == 0 {
                keep.push(client);
                keep.push(server);
            } else {
                drop(client);
                let mut b = [0u8; 1];
                let _ = server.read(&mut b);
            }
        }
        (keep, vec![web, api])
    })
}

/// tracefs mounted where systemd mounts it, for as long as this lives (and unmounted
/// after, when this mounted it).
struct SystemdLikeTracefs(bool);

impl SystemdLikeTracefs {
    fn ensure() -> Self {
        if std::path::Path::new("/sys/kernel/tracing/events").exists() {
            return Self(false);
        }
        crate::harness::run(
            "mount",
            &["-t", "tracefs", "tracefs", "/sys/kernel/tracing"],
        );
        Self(true)
    }
}

impl Drop for SystemdLikeTracefs {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn prometheus_scrapes_serve_and_the_close_wait_rule_fires() {
    if !require_root("prometheus_scrapes_serve_and_the_close_wait_rule_fires") {
        return;
    }
    // The population and serve in one namespace; Prometheus, and every query this test
    // makes, in another, so that monitoring adds nothing but the scrape connection to
    // what is counted.
    let ns = Netns::new("prom");
    let monitor = Netns::new("promsrv");
    ns.link(&monitor, "10.200.0.1/24", "10.200.0.2/24");
    let _sockets = population(&ns);
    let serve_addr: SocketAddr = "10.200.0.1:29827".parse().unwrap();
    let prom_addr: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let _serve = Killed(
        ns.command(tcpmon_bin().to_str().unwrap())
            .args([
                "serve",
                "--no-history",
                "--interval",
                "500ms",
                "--listen",
                "10.200.0.1:29827",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = workspace().join("deploy/prometheus/tcpmon.rules.yml");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tcpmon\n    static_configs:\n      - targets: ['{serve_addr}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        monitor
            .command("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's prometheus package (cargo xtask setup installs it)"),
    );
    // The scrape itself passes promtool.
    let started = Instant::now();
    let exposition = loop {
        let (status, body) = http_get(&monitor, serve_addr, "/metrics");
        if status == 200 && body.contains("tcpmon_connections") {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never answered"
        );
        thread::sleep(Duration::from_millis(200));
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {checked:?}"
    );

    // tcpmon_connections per state, with sockstat's TIME_WAIT correction, as Prometheus
    // stored them, equals ss (read again each time: the scrape connection itself comes
    // and goes).
    let started = Instant::now();
    loop {
        let expected = ss_states(&ns);
        let result = query(
            &monitor,
            prom_addr,
            r#"sum by (state) (tcpmon_connections or label_replace(tcpmon_time_wait_sockstat_correction, "state", "time_wait", "", ""))"#,
        );
        let got: BTreeMap<String, u64> = result
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metric"]["state"].as_str().unwrap().to_owned(),
                    s["value"][1].as_str().unwrap().parse::<f64>().unwrap() as u64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        if got == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Prometheus has {got:?}, ss says {expected:?}"
        );
        thread::sleep(Duration::from_secs(1));
    }

    // The shipped rule: over 100 CLOSE_WAIT on port 8080 for a minute.
    let started = Instant::now();
    loop {
        let (status, body) = http_get(&monitor, prom_addr, "/api/v1/alerts");
        assert_eq!(status, 200);
        let alerts: Value = serde_json::from_str(&body).unwrap();
        let firing = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "TcpmonCloseWaitLeakCritical"
                    && a["labels"]["port"] == "8080"
                    && a["state"] == "firing"
            });
        if firing {
            eprintln!(
                "TcpmonCloseWaitLeakCritical firing {:?} after start",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the rule did not fire: {body}"
        );
        thread::sleep(Duration::from_secs(2));
    }
}

/// Stops `serve` with SIGTERM, checks it exited 0, and returns its stderr.
fn terminate(mut serve: Killed) -> String {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    let status = serve.0.wait().unwrap();
    let mut err = String::new();
    serve
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    err
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn serve_works_with_exactly_the_units_capabilities() {
    if !require_root("serve_works_with_exactly_the_units_capabilities") {
        return;
    }
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/tcpmon.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .unwrap()
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let list = format!("-all,{}", caps.join(","));
    let ns = Netns::new("unit");
    let _sockets = population(&ns);
    // StateDirectory=: a directory of the unit's user, named in $STATE_DIRECTORY.
    let state = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(state.path(), Some(65534), Some(65534)).unwrap();
    let state_dir = state.path().to_owned();
    // The unit has no CAP_SYS_ADMIN: it relies on systemd having mounted tracefs.
    let _tracefs = SystemdLikeTracefs::ensure();
    // In this process's mount namespace (tracefs and cgroup2 mounted, as systemd does),
    // as nobody, with the unit's capability set only.
    let child = ns.run(move || {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &format!("--inh-caps={list}"),
                &format!("--ambient-caps={list}"),
                &format!("--bounding-set={list}"),
            ])
            .arg(tcpmon_bin())
            .env("STATE_DIRECTORY", &state_dir)
            .args([
                "serve",
                "--interval",
                "500ms",
                "--close-wait-age",
                "1s",
                "--listen",
                "127.0.0.1:29830",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    });
    let serve = Killed(child);
    let addr: SocketAddr = "127.0.0.1:29830".parse().unwrap();
    let started = Instant::now();
    let body = loop {
        let (status, body) = http_get(&ns, addr, "/metrics");
        if status == 200 && body.contains("tcpmon_close_wait_sockets{port=\"8080\"") {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metrics: {body}"
        );
        thread::sleep(Duration::from_millis(300));
    };
    assert!(
        body.contains(r#"tcpmon_mode_info{mode="ebpf"} 1"#),
        "{body}"
    );
    // The owner of the leak (this test process) is named, its pid in the info series.
    let pid = format!("pid=\"{}\"", std::process::id());
    assert!(
        body.lines().any(|l| l
            .starts_with("tcpmon_close_wait_owner_info{port=\"8080\",remote=\"\"")
            && l.contains(&pid)),
        "{body}"
    );
    let err = terminate(serve);
    // Every feature on: no note at all.
    let notes: Vec<&str> = err.lines().filter(|l| l.contains("note:")).collect();
    assert!(notes.is_empty(), "{notes:?}");
    // It recorded its history in the state directory, as its user.
    let history = state.path().join("history.db");
    let meta = std::fs::metadata(&history).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

/// The DaemonSet's container, as a runtime starts it: uid 0 with only the capabilities
/// the manifest adds, its args (`--all-netns` included), in the node's namespace, with a
/// pod beside it.
#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn serve_works_with_exactly_the_daemonsets_capabilities_and_args() {
    if !require_root("serve_works_with_exactly_the_daemonsets_capabilities_and_args") {
        return;
    }
    let manifest =
        std::fs::read_to_string(workspace().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let caps: Vec<String> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .expect("capabilities: add: [...]")
        .trim_end_matches(']')
        .split(',')
        .map(|c| format!("+{}", c.trim().trim_matches('"').to_ascii_lowercase()))
        .collect();
    let list = format!("-all,{}", caps.join(","));
    let history_dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = manifest
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|a| {
            a.replace("$(NODE_IP)", "127.0.0.1")
                .replace(":29827", ":29831")
                // The node's history directory (a hostPath volume): a temporary one here.
                .replace("/var/lib/tcpmon", &history_dir.path().display().to_string())
        })
        .collect();
    assert!(args.iter().any(|a| a == "--all-netns"), "{args:?}");
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    // A pod's namespace is held by its pause process: without CAP_SYS_ADMIN, tcpmon
    // reads a namespace through a process inside it.
    let mut pause = pod.command("sleep");
    pause.arg("600");
    let _pause = Holder::spawn(pause);
    let _sockets = population(&pod);
    let _tracefs = SystemdLikeTracefs::ensure();
    let child = node.run(move || {
        Command::new("setpriv")
            .args([
                &format!("--inh-caps={list}"),
                &format!("--ambient-caps={list}"),
                &format!("--bounding-set={list}"),
            ])
            .arg(tcpmon_bin())
            .args(&args)
            .args(["--interval", "500ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    });
    let serve = Killed(child);
    let addr: SocketAddr = "127.0.0.1:29831".parse().unwrap();
    let pod_series = format!("tcpmon_netns_connections{{netns=\"{}\"", pod.inode());
    let started = Instant::now();
    let body = loop {
        let (status, body) = http_get(&node, addr, "/metrics");
        if status == 200
            && body
                .lines()
                .any(|l| l.starts_with(&pod_series) && l.contains("state=\"close_wait\""))
        {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pod's namespace is not tallied: {body}"
        );
        thread::sleep(Duration::from_millis(300));
    };
    let close_wait = body
        .lines()
        .find(|l| l.starts_with(&pod_series) && l.contains("state=\"close_wait\""))
        .unwrap();
    assert!(close_wait.ends_with(" 120"), "{close_wait}");
    assert!(
        close_wait.contains(&format!("ip netns {}", pod.name)),
        "{close_wait}"
    );
    assert!(
        body.contains(r#"tcpmon_mode_info{mode="ebpf"} 1"#),
        "{body}"
    );
    let err = terminate(serve);
    // Every feature on; the notes left say what --all-netns is, and that namespaces no
    // process holds (this test's node) are not entered without CAP_SYS_ADMIN.
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("note:"))
        .filter(|l| !l.contains("every network namespace is tallied on its own"))
        .filter(|l| !l.contains("held only by a bind mount cannot be entered"))
        .collect();
    assert!(notes.is_empty(), "{notes:?}");
}
