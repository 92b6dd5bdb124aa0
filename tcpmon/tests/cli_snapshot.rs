//! The snapshot commands end to end, on fixture /proc trees (no privileges needed).
//! JSON is deserialized, never compared as text.
use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tcpmon(args: &[&str], fixture_name: &str) -> assert_cmd::assert::Assert {
    Command::cargo_bin("tcpmon")
        .unwrap()
        .args(args)
        .arg("--proc-root")
        .arg(fixture(fixture_name))
        .env("NO_COLOR", "1")
        .assert()
}

fn json(args: &[&str], fixture_name: &str) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = tcpmon(&all, fixture_name)
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).expect("valid JSON")
}

fn text(args: &[&str], fixture_name: &str) -> String {
    String::from_utf8(
        tcpmon(args, fixture_name)
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap()
}

#[test]
fn report_counts_both_families_and_reports_bad_lines() {
    let r = json(&["report"], "mixed");
    assert_eq!(r["total"], 12);
    assert_eq!(r["ipv4"], 8);
    assert_eq!(r["ipv6"], 4);
    assert_eq!(r["states"]["ESTABLISHED"], 4);
    assert_eq!(r["states"]["TIME_WAIT"], 2);
    assert_eq!(r["states"]["CLOSE_WAIT"], 2);
    assert_eq!(r["states"]["LISTEN"], 3);
    assert_eq!(r["states"]["SYN_RECV"], 1);
    // garbage, an unknown state (0x0D) and a truncated last line of tcp6
    assert_eq!(r["skipped"]["count"], 3);
    assert_eq!(r["skipped"]["by_reason"]["unknown state 13"], 1);
    assert_eq!(r["skipped"]["examples"][0]["line"], 10);
    let rules: Vec<&str> = r["findings"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"unparsed_lines"), "{rules:?}");
    assert!(rules.contains(&"close_wait"), "{rules:?}");
}

#[test]
fn addresses_decode_and_v4_mapped_folds_into_ipv4() {
    let r = json(&["per-ip"], "mixed");
    let top = &r["per_ip"]["items"][0];
    // two IPv4 sockets plus one v4-mapped IPv6 socket from the same client
    assert_eq!(top["ip"], "192.0.2.10");
    assert_eq!(top["total"], 3);
    assert_eq!(top["established"], 3);
    let ips: Vec<&str> = r["per_ip"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap())
        .collect();
    assert!(ips.contains(&"2001:db8::99"), "{ips:?}");
    assert!(ips.contains(&"::1"), "{ips:?}");
    assert!(
        !ips.contains(&"0.0.0.0") && !ips.contains(&"::"),
        "listeners are excluded: {ips:?}"
    );
}

#[test]
fn listeners_show_backlog_queue_and_half_open() {
    let r = json(&["listen"], "mixed");
    let items = r["listeners"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let ssh = items.iter().find(|l| l["port"] == 22).unwrap();
    assert_eq!(ssh["wildcard"], true);
    // /proc does not show backlogs, and a fixture's sockets cannot be asked via sock_diag.
    assert_eq!(ssh["backlog"], Value::Null);
    assert_eq!(ssh["half_open"], 1);
    assert_eq!(ssh["half_open_sources"], 1);
    let pg = items.iter().find(|l| l["port"] == 5432).unwrap();
    assert_eq!(
        (
            pg["ip"].as_str(),
            pg["wildcard"].as_bool(),
            pg["accept_queue"].as_u64()
        ),
        (Some("127.0.0.1"), Some(false), Some(3))
    );
    let web = items.iter().find(|l| l["port"] == 80).unwrap();
    assert_eq!(
        (web["family"].as_str(), web["ip"].as_str()),
        (Some("ipv6"), Some("::"))
    );
    assert!(text(&["listen"], "mixed").contains("[::]:80"));
}

#[test]
fn per_port_counts_established_by_local_port() {
    let r = json(&["per-port"], "mixed");
    let items = r["per_port"]["items"].as_array().unwrap();
    let count = |port: u64| {
        items
            .iter()
            .find(|p| p["port"] == port)
            .map(|p| p["established"].as_u64().unwrap())
    };
    assert_eq!(count(22), Some(2));
    assert_eq!(count(80), Some(2));
    assert_eq!(count(8080), None, "CLOSE_WAIT is not ESTABLISHED");
}

#[test]
fn limits_say_what_they_leave_out() {
    let r = json(&["per-ip", "--limit", "2"], "mixed");
    assert_eq!(r["per_ip"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(r["per_ip"]["total"], 6);
    assert_eq!(r["per_ip"]["omitted"], 4);
    let human = text(&["per-ip", "--limit", "2"], "mixed");
    assert!(human.contains("4 more remote IPs not shown"), "{human}");
    let all = json(&["per-ip", "--all"], "mixed");
    assert_eq!(all["per_ip"]["omitted"], 0);
}

#[test]
fn filters_narrow_every_count() {
    assert_eq!(
        json(&["states", "--state", "time-wait"], "mixed")["total"],
        2
    );
    assert_eq!(
        json(&["states", "--state", "ESTABLISHED,CLOSE_WAIT"], "mixed")["total"],
        6
    );
    assert_eq!(json(&["states", "-6"], "mixed")["total"], 4);
    assert_eq!(json(&["states", "-4"], "mixed")["total"], 8);
    assert_eq!(json(&["states", "--port", "22"], "mixed")["total"], 4);
    // 192.0.2.10 twice over IPv4, once v4-mapped; 192.0.2.20 once
    assert_eq!(
        json(&["states", "--ip", "192.0.2.0/24"], "mixed")["total"],
        4
    );
    assert_eq!(
        json(&["states", "--ip", "2001:db8::99"], "mixed")["total"],
        1
    );
    tcpmon(&["states", "--ip", "nonsense"], "mixed")
        .failure()
        .code(2);
    tcpmon(&["states", "--state", "bogus"], "mixed")
        .failure()
        .code(2);
}

#[test]
fn established_lists_connections() {
    let r = json(&["established"], "mixed");
    assert_eq!(r["established"]["total"], 4);
    let first = &r["established"]["items"][0];
    assert_eq!(first["local_port"], 22);
    assert_eq!(first["remote_ip"], "192.0.2.10");
    assert_eq!(first["timer_secs"], 70.0);
}

#[test]
fn timewait_groups_client_side_destinations() {
    let r = json(&["timewait"], "mixed");
    assert_eq!(r["time_wait"], 2);
    assert_eq!(r["port_range"]["low"], 32768);
    let dest = &r["destinations"]["items"][0];
    assert_eq!(
        (
            dest["ip"].as_str(),
            dest["port"].as_u64(),
            dest["time_wait"].as_u64()
        ),
        (Some("198.51.100.7"), Some(443), Some(2))
    );
    let secs: Vec<f64> = r["sockets"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["timer_secs"].as_f64().unwrap())
        .collect();
    assert_eq!(secs, vec![60.0, 30.0]);
}

#[test]
fn audit_exit_status_follows_fail_on() {
    // CLOSE_WAIT and bad lines are warnings: clean at the default (critical) ...
    tcpmon(&["audit"], "mixed").success().code(0);
    // ... failing when warnings count
    tcpmon(&["audit", "--fail-on", "warning"], "mixed").code(1);
    // ... and critical once the threshold is lowered below one port's CLOSE_WAIT count
    // (each port has one: the threshold is per port, not host-wide).
    tcpmon(&["audit", "--close-wait-crit", "1"], "mixed").code(0);
    let r = Command::cargo_bin("tcpmon")
        .unwrap()
        .args(["audit", "--json", "--close-wait-crit", "0", "--proc-root"])
        .arg(fixture("mixed"))
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let r: Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(r["failed"], true);
    assert_eq!(r["findings"]["items"][0]["severity"], "critical");
    assert_eq!(r["findings"]["items"][0]["rule"], "close_wait");
}

#[test]
fn errors_are_one_clear_line_and_exit_2() {
    let out = tcpmon(&["audit"], "does-not-exist")
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(
        err.starts_with("tcpmon: reading the socket tables: cannot read"),
        "{err}"
    );
    assert!(err.contains("No such file"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_missing_tcp6_is_said_not_hidden() {
    let r = json(&["report"], "v4only");
    assert_eq!(r["total"], 3);
    assert!(r["missing"][0].as_str().unwrap().ends_with("net/tcp6"));
    assert!(text(&["states"], "v4only").contains("tcp6 does not exist"));
}

#[test]
fn human_report_has_every_section() {
    let out = text(&["report"], "mixed");
    for heading in [
        "TCP sockets: 12",
        "STATES",
        "LISTENERS (3)",
        "TOP REMOTE IPS",
        "TOP PORTS",
        "CLOSE_WAIT BY LEAK",
        "FINDINGS",
    ] {
        assert!(out.contains(heading), "missing {heading}:\n{out}");
    }
    assert!(out.contains("3 malformed line(s) skipped"), "{out}");
}

#[test]
fn the_source_is_said_and_info_without_netlink_is_a_note() {
    // Another /proc is read as /proc, whatever the default.
    let doc = json(&["established", "--info"], "mixed");
    assert_eq!(doc["source"], "proc");
    assert_eq!(doc["only_states"], serde_json::json!(["ESTABLISHED"]));
    let notes = doc["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("--info needs netlink")),
        "{notes:?}"
    );
    let out = tcpmon(&["states", "--source", "netlink"], "mixed")
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(
        err.contains("--source netlink") && err.contains("--proc-root"),
        "{err}"
    );
    // Commands that show some states say so in their header.
    let text = text(&["listen"], "mixed");
    assert!(
        text.starts_with("TCP sockets in LISTEN, SYN_RECV:"),
        "{text}"
    );
    let out = tcpmon(&["established", "--sort", "latency"], "mixed")
        .code(2)
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("rtt, retrans, queue, bytes"));
}

#[test]
fn this_machine_is_read_through_netlink_with_tcp_info() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(&[1u8; 50_000]).unwrap();
    let mut buf = vec![0u8; 50_000];
    server.read_exact(&mut buf).unwrap();
    let out = Command::cargo_bin("tcpmon")
        .unwrap()
        .args([
            "established",
            "--info",
            "--all",
            "--json",
            "--port",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["source"], "netlink");
    let client_port = client.local_addr().unwrap().port();
    let ours = doc["established"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["local_port"] == client_port)
        .expect("the client side")
        .clone();
    assert_eq!(ours["info"]["bytes_acked"], 50_001, "{ours}");
    assert!(ours["info"]["snd_cwnd"].as_u64().unwrap() >= 10);
}

/// Copies the golden fixture (a /proc tree with processes) into a temporary directory.
fn golden_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(fixture("golden").join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// `audit --all` of the /proc tree at `proc`, its stdout.
fn audit_all(proc: &std::path::Path) -> String {
    let out = Command::cargo_bin("tcpmon")
        .unwrap()
        .args(["audit", "--all", "--proc-root"])
        .arg(proc)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// An owner that cannot be found is explained by what happened: the process that refused
/// (named, with its error), and advice to run as root only when tcpmon is not root.
#[test]
fn owners_not_found_are_explained_by_what_refused() {
    let proc = golden_copy();
    // pid 600's fd table cannot be listed; the app's CLOSE_WAIT sockets lose their owner.
    let init = proc.path().join("600");
    std::fs::create_dir(&init).unwrap();
    std::fs::write(init.join("comm"), "init\n").unwrap();
    std::fs::write(init.join("fd"), "not a directory").unwrap();
    std::fs::remove_dir_all(proc.path().join("400")).unwrap();
    let text = audit_all(proc.path());
    assert!(
        text.contains("held by an unknown process (see owners_hidden)"),
        "{text}"
    );
    let hidden = text
        .lines()
        .find(|l| l.contains("owners_hidden "))
        .unwrap_or_else(|| panic!("no owners_hidden finding:\n{text}"));
    assert!(
        hidden.contains("the owning process of 4 listener/CLOSE_WAIT sockets was not found"),
        "{hidden}"
    );
    assert!(hidden.contains("init[600]: Not a directory"), "{hidden}");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert_eq!(hidden.contains("run as root"), !root, "{hidden}");
    if root {
        assert!(hidden.contains("even with CAP_SYS_PTRACE"), "{hidden}");
    }
}

/// Without any process refusing, an owner not found is not blamed on privilege.
#[test]
fn owners_in_no_process_are_not_blamed_on_privilege() {
    let proc = golden_copy();
    std::fs::remove_dir_all(proc.path().join("400")).unwrap();
    let text = audit_all(proc.path());
    let hidden = text.lines().find(|l| l.contains("owners_hidden ")).unwrap();
    assert!(
        hidden.contains("no process in this /proc holds them"),
        "{hidden}"
    );
    assert!(!hidden.contains("root"), "{hidden}");
}

/// Flags that would do nothing in a command are usage errors that say why, not silently
/// ignored.
#[test]
fn flags_a_command_would_ignore_are_usage_errors() {
    for (args, says) in [
        (
            &["established", "--state", "TIME_WAIT"][..],
            "`established` shows ESTABLISHED sockets only",
        ),
        (
            &["per-port", "--state", "close-wait"][..],
            "`per-port` shows ESTABLISHED sockets only",
        ),
        (
            &["listen", "--state", "TIME_WAIT"][..],
            "`listen` shows LISTEN",
        ),
        (&["states", "--sort", "rtt"][..], "`states` lists none"),
        (
            &["timewait", "--sort", "queue"][..],
            "`timewait` lists none",
        ),
        (
            &["established", "--sort", "rtt"][..],
            "--sort rtt needs each connection's tcp_info",
        ),
        (&["per-ip", "--info"][..], "`per-ip` shows none"),
    ] {
        let out = tcpmon(args, "mixed").code(2).get_output().clone();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // What is meaningful still works: a state the command shows, a sort on queues.
    tcpmon(&["listen", "--state", "syn-recv"], "mixed").success();
    tcpmon(&["established", "--sort", "queue"], "mixed").success();
}

/// Findings carry what a program needs without parsing the message: the subject, the
/// figure judged, its unit and thresholds, the process.
#[test]
fn findings_are_structured() {
    let doc = json(&["audit", "--all"], "golden");
    let findings = doc["findings"]["items"].as_array().unwrap();
    let find = |rule: &str, subject: &str| {
        findings
            .iter()
            .find(|f| f["rule"] == rule && f["subject"] == subject)
            .unwrap_or_else(|| panic!("no {rule} finding about {subject}: {findings:#?}"))
    };
    let server = find("close_wait", "8080");
    assert_eq!(server["value"], 3.0);
    assert_eq!(server["unit"], "sockets");
    assert_eq!(server["critical_above"], 100.0);
    assert_eq!(server["process"]["comm"], "app");
    assert_eq!(server["process"]["pid"], 400);
    let client = find("close_wait", "203.0.113.9:6379");
    assert_eq!(client["value"], 2.0);
    assert_eq!(client["process"]["comm"], "worker");
    let listener = find("wildcard_listener", "[::]:80");
    assert_eq!(listener["process"]["comm"], "nginx");
    let lines = find("unparsed_lines", "socket tables");
    assert_eq!(
        (lines["value"].as_f64(), lines["unit"].as_str()),
        (Some(1.0), Some("lines"))
    );
}

/// `established -p` names the process of every connection it lists, in text and JSON.
#[test]
fn established_names_each_connection_s_process() {
    let doc = json(&["established", "--processes", "--all"], "golden");
    let items = doc["established"]["items"].as_array().unwrap();
    let of_port = |port: u64| -> Vec<&Value> {
        items
            .iter()
            .filter(|c| c["local_port"] == port)
            .map(|c| &c["process"])
            .collect()
    };
    assert!(of_port(8080)
        .iter()
        .all(|p| p["comm"] == "app" && p["pid"] == 400));
    assert_eq!(of_port(41000)[0]["comm"], "worker");
    assert!(
        of_port(22).iter().all(|p| p.is_null()),
        "no process holds them in the fixture"
    );
    // Without it, no walk of the processes and no field.
    let doc = json(&["established", "--all"], "golden");
    assert!(doc["established"]["items"][0].get("process").is_none());
}

#[test]
fn listeners_are_judged_against_an_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("allow");
    // The fixture listens on [::]:80, 0.0.0.0:22 and 127.0.0.1:5432; its processes are
    // not known (a fixture /proc has no such process), so a line naming one cannot
    // allow it.
    std::fs::write(&allow, "# expected\n22\n127.0.0.1:5432 postgres\n").unwrap();
    let allow = allow.to_str().unwrap();
    let r = json(&["audit", "--listeners-allow", allow], "mixed");
    let unexpected: Vec<&str> = r["findings"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "unexpected_listener")
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(unexpected, vec!["[::]:80", "127.0.0.1:5432"]);
    let report = text(&["report", "--listeners-allow", allow], "mixed");
    assert!(
        report.contains(
            "listening on [::]:80 (its process is not known): not in the listener allowlist"
        ),
        "{report}"
    );
    // Warnings: audit fails on them when told.
    tcpmon(
        &["audit", "--fail-on", "warning", "--listeners-allow", allow],
        "mixed",
    )
    .code(1);
    // A bad line is a usage error naming its number.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "22\n# fine\nhttp nginx\n").unwrap();
    let err = tcpmon(
        &["audit", "--listeners-allow", bad.to_str().unwrap()],
        "mixed",
    )
    .code(2)
    .get_output()
    .stderr
    .clone();
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("line 3: 'http nginx' is not [ADDR:]PORT [PROCESS]"),
        "{err}"
    );
}
