//! `--all-netns` and `--netns` on a fixture /proc tree whose processes sit in Docker,
//! Kubernetes (cgroup v1 and v2 shapes) and Podman cgroups: namespaces found through
//! processes, deduplicated, attributed, read, and a vanished one reported (no privileges
//! needed).
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use assert_cmd::Command;
use serde_json::Value;

const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const DOCKER_ID: &str = "3f2a9c1b7e44d8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef012";
const POD_UID: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
const POD_CONTAINER: &str = "8c7b6a5948372615abcdef0123456789abcdef0123456789abcdef0123456789";
const POD2_UID: &str = "11111111-2222-3333-4444-555555555555";
const POD2_CONTAINER: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
const PODMAN_ID: &str = "9e8d7c6b5a4938271605f4e3d2c1b0a99887766554433221100ffeeddccbbaa9";

/// A /proc/net/tcp row: `state` (hex), local and remote as hex "IP:PORT", the inode.
fn row(i: usize, local: &str, remote: &str, state: &str, inode: u64) -> String {
    format!(
        "{i:4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 ffff8881abcd0000 100 0 0 10 0\n"
    )
}

struct Process<'a> {
    pid: u32,
    netns: u64,
    cgroup: &'a str,
    comm: &'a str,
    hostname: Option<&'a str>,
    /// Rows of its namespace's net/tcp (every process of a namespace shows the same).
    tcp: &'a str,
    sockets: &'a [u64],
}

fn add(proc: &Path, p: &Process<'_>) {
    let dir = proc.join(p.pid.to_string());
    fs::create_dir_all(dir.join("ns")).unwrap();
    fs::create_dir_all(dir.join("net")).unwrap();
    fs::create_dir_all(dir.join("fd")).unwrap();
    symlink(format!("net:[{}]", p.netns), dir.join("ns/net")).unwrap();
    fs::write(dir.join("cgroup"), p.cgroup).unwrap();
    fs::write(dir.join("comm"), format!("{}\n", p.comm)).unwrap();
    fs::write(dir.join("net/tcp"), format!("{HEADER}{}", p.tcp)).unwrap();
    fs::write(dir.join("net/tcp6"), HEADER).unwrap();
    for (fd, inode) in p.sockets.iter().enumerate() {
        symlink(
            format!("socket:[{inode}]"),
            dir.join(format!("fd/{}", fd + 3)),
        )
        .unwrap();
    }
    if let Some(hostname) = p.hostname {
        fs::create_dir_all(dir.join("root/etc")).unwrap();
        fs::write(dir.join("root/etc/hostname"), format!("{hostname}\n")).unwrap();
    }
}

/// The tree: the host, a Docker container with a CLOSE_WAIT leak (two processes in its
/// namespace), two pods, a Podman container, and a process whose namespace vanished
/// (its net/ is gone).
fn build() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    let listen = |i, port: u16, inode| {
        row(
            i,
            &format!("00000000:{port:04X}"),
            "00000000:0000",
            "0A",
            inode,
        )
    };
    add(
        &proc,
        &Process {
            pid: 1,
            netns: 4026531840,
            cgroup: "0::/init.scope\n",
            comm: "systemd",
            hostname: None,
            tcp: &listen(0, 22, 5001),
            sockets: &[5001],
        },
    );
    let mut docker_tcp = listen(0, 8080, 6001);
    let leak: Vec<u64> = (0..12).map(|i| 6100 + i).collect();
    for (i, inode) in leak.iter().enumerate() {
        docker_tcp += &row(
            i + 1,
            "0200110A:1F90",
            &format!("0300110A:{:04X}", 40000 + i),
            "08",
            *inode,
        );
    }
    let docker_cgroup = format!("0::/system.slice/docker-{DOCKER_ID}.scope\n");
    let mut java_sockets = vec![6001];
    java_sockets.extend(&leak);
    for (pid, comm, sockets) in [(200, "java", &java_sockets[..]), (201, "sidecar", &[][..])] {
        add(
            &proc,
            &Process {
                pid,
                netns: 4026532200,
                cgroup: &docker_cgroup,
                comm,
                hostname: Some("3f2a9c1b7e44"),
                tcp: &docker_tcp,
                sockets,
            },
        );
    }
    let tw: String = (0..5)
        .map(|i| row(i, "0100007F:C350", "0100007F:1F90", "06", 0))
        .collect();
    let v1 = format!(
        "12:pids:/kubepods/burstable/pod{POD_UID}/{POD_CONTAINER}\n\
         11:memory:/kubepods/burstable/pod{POD_UID}/{POD_CONTAINER}\n"
    );
    add(
        &proc,
        &Process {
            pid: 300,
            netns: 4026532300,
            cgroup: &v1,
            comm: "payments",
            hostname: Some("payments-7d9"),
            tcp: &tw,
            sockets: &[],
        },
    );
    let v2 = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{POD2_CONTAINER}.scope\n",
        POD2_UID.replace('-', "_")
    );
    add(
        &proc,
        &Process {
            pid: 400,
            netns: 4026532400,
            cgroup: &v2,
            comm: "nginx",
            hostname: None,
            tcp: &listen(0, 80, 7001),
            sockets: &[7001],
        },
    );
    // A hostile container: its hostname is a link to one of the host's files. It is
    // resolved inside the container's root, where it does not exist.
    fs::create_dir_all(proc.join("400/root/etc")).unwrap();
    symlink("/etc/passwd", proc.join("400/root/etc/hostname")).unwrap();
    add(
        &proc,
        &Process {
            pid: 500,
            netns: 4026532500,
            cgroup: &format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN_ID}.scope\n"
            ),
            comm: "redis",
            hostname: None,
            tcp: "",
            sockets: &[],
        },
    );
    add(
        &proc,
        &Process {
            pid: 600,
            netns: 4026532600,
            cgroup: "0::/system.slice/gone.service\n",
            comm: "gone",
            hostname: None,
            tcp: "",
            sockets: &[],
        },
    );
    fs::remove_dir_all(proc.join("600/net")).unwrap();
    dir
}

fn proc_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("proc")
}

fn run(dir: &tempfile::TempDir, args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("tcpmon")
        .unwrap()
        .args(args)
        .arg("--proc-root")
        .arg(proc_of(dir))
        .env("NO_COLOR", "1")
        .assert()
}

fn json(dir: &tempfile::TempDir, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run(dir, &all).get_output().stdout.clone();
    serde_json::from_slice(&out).expect("valid JSON")
}

fn namespace(doc: &Value, inode: u64) -> &Value {
    doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["inode"] == inode)
        .unwrap_or_else(|| panic!("no namespace {inode} in {}", doc["namespaces"]))
}

#[test]
fn every_namespace_is_found_once_and_attributed() {
    let dir = build();
    let doc = json(&dir, &["report", "--all-netns", "--all"]);
    let inodes: Vec<u64> = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["inode"].as_u64().unwrap())
        .collect();
    // Largest first; the Docker namespace is listed once although two processes are in it.
    assert_eq!(
        inodes,
        [4026532200, 4026532300, 4026531840, 4026532400, 4026532500]
    );
    assert_eq!(namespace(&doc, 4026531840)["owner"]["kind"], "host");

    let docker = &namespace(&doc, 4026532200)["owner"];
    assert_eq!(docker["kind"], "container");
    assert_eq!(docker["container"]["runtime"], "docker");
    assert_eq!(docker["container"]["id"], DOCKER_ID);
    assert_eq!(namespace(&doc, 4026532200)["total"], 13);
    assert_eq!(namespace(&doc, 4026532200)["states"]["CLOSE_WAIT"], 12);

    let pod = namespace(&doc, 4026532300u64);
    assert_eq!(pod["owner"]["kind"], "pod");
    assert_eq!(pod["owner"]["uid"], POD_UID);
    assert_eq!(pod["owner"]["name"], "payments-7d9");
    assert_eq!(pod["owner"]["container"]["id"], POD_CONTAINER);
    assert_eq!(pod["states"]["TIME_WAIT"], 5);
    assert_eq!(pod["label"], "pod payments-7d9 (container 8c7b6a594837)");

    let pod2 = &namespace(&doc, 4026532400)["owner"];
    assert_eq!(pod2["uid"], POD2_UID);
    assert_eq!(pod2["container"]["runtime"], "containerd");
    assert_eq!(pod2["container"]["id"], POD2_CONTAINER);
    // The hostile hostname link was not followed out of the container.
    assert!(pod2["name"].is_null(), "{pod2}");

    let podman = &namespace(&doc, 4026532500)["owner"];
    assert_eq!(podman["container"]["runtime"], "podman");

    // The namespace whose tables vanished is reported as gone, not an error.
    let skipped = doc["namespaces_skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["inode"], 4026532600u64);
    assert_eq!(skipped[0]["gone"], true);

    assert_eq!(doc["total"], 1 + 13 + 5 + 1);

    // The leak's finding names the process, the container and the namespace.
    let finding = doc["findings"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "close_wait")
        .expect("a close_wait finding");
    assert_eq!(finding["netns"], 4026532200u64);
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("12 CLOSE_WAIT sockets on local port 8080 held by java[200]")
            && message.contains("in docker container 3f2a9c1b7e44, netns 4026532200"),
        "{message}"
    );
    assert_eq!(finding["severity"], "warning");
    // Rows carry their namespace.
    let listeners = doc["listeners"]["items"].as_array().unwrap();
    assert!(listeners
        .iter()
        .any(|l| l["port"] == 8080 && l["netns"] == 4026532200u64 && l["process"]["pid"] == 200));
}

#[test]
fn every_document_matches_the_schema() {
    let dir = build();
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/snapshot.schema.json");
    let schema: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for command in [
        "report",
        "states",
        "listen",
        "established",
        "per-ip",
        "per-port",
        "timewait",
        "audit",
    ] {
        let mut all = vec![command, "--all-netns", "--all", "--json"];
        let proc = proc_of(&dir);
        all.extend(["--proc-root", proc.to_str().unwrap()]);
        let out = Command::cargo_bin("tcpmon")
            .unwrap()
            .args(&all)
            .output()
            .unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{command}: {errors:#?}");
    }
}

#[test]
fn the_human_report_starts_with_the_namespaces() {
    let dir = build();
    let out = run(&dir, &["report", "--all-netns"]).success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let namespaces = text.find("NAMESPACES (5)").expect(&text);
    assert!(namespaces < text.find("STATES").unwrap());
    assert!(text.contains("in 5 network namespaces"), "{text}");
    assert!(
        text.contains("note: network namespace 4026532600 (service gone.service) gone"),
        "{text}"
    );
    assert!(text.contains("pod payments-7d9"), "{text}");
    // Other namespaces' sysctls cannot be read through a /proc tree.
    assert!(
        text.contains("ephemeral port range of 5 namespace(s) could not be read"),
        "{text}"
    );
}

#[test]
fn states_has_a_row_per_namespace_and_a_total() {
    let dir = build();
    let out = run(&dir, &["states", "--all-netns"]).success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|c: &Vec<&str>| c.len() > 2)
        .collect();
    let header = rows.iter().find(|r| r[0] == "NETNS").expect(&text);
    assert_eq!(header[..3], ["NETNS", "INODE", "TOTAL"]);
    let total = rows.iter().find(|r| r[0] == "TOTAL").expect(&text);
    assert_eq!(total[1], "20");
    let pod = rows
        .iter()
        .find(|r| r.contains(&"4026532300"))
        .expect(&text);
    assert_eq!(pod[..3], ["pod", "payments-7d9", "4026532300"]);
}

#[test]
fn netns_selects_by_pid_and_path() {
    let dir = build();
    let proc = proc_of(&dir);
    let by_path = proc.join("300/ns/net");
    let doc = json(
        &dir,
        &[
            "states",
            "--netns",
            "200",
            "--netns",
            by_path.to_str().unwrap(),
        ],
    );
    let inodes: Vec<u64> = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["inode"].as_u64().unwrap())
        .collect();
    assert_eq!(inodes, [4026532200, 4026532300]);
    assert_eq!(doc["total"], 18);
    // Two spellings of one namespace read it once.
    let doc = json(&dir, &["states", "--netns", "200", "--netns", "201"]);
    assert_eq!(doc["namespaces"].as_array().unwrap().len(), 1);

    let out = run(&dir, &["states", "--netns", "999"]).code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("--netns 999") && err.contains("not a network namespace"),
        "{err}"
    );
    run(&dir, &["states", "--netns", "200", "--all-netns"]).code(2);
}

#[test]
fn audit_judges_each_namespace_and_names_it() {
    let dir = build();
    let out = run(&dir, &["audit", "--all-netns", "--fail-on", "warning"]).code(1);
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("held by java[200]"), "{text}");
    assert!(text.contains("netns 4026532200"), "{text}");
    // Per namespace: 12 is critical only where the threshold is 10.
    let out = run(
        &dir,
        &[
            "audit",
            "--all-netns",
            "--close-wait-crit",
            "10",
            "--fail-on",
            "critical",
        ],
    )
    .code(1);
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("CRITICAL"), "{text}");
    // The pod alone is clean.
    run(&dir, &["audit", "--netns", "300", "--fail-on", "warning"]).code(0);
}

#[test]
fn listing_commands_carry_the_namespace() {
    let dir = build();
    let doc = json(&dir, &["timewait", "--all-netns"]);
    let sockets = doc["sockets"]["items"].as_array().unwrap();
    assert_eq!(sockets.len(), 5);
    assert!(sockets.iter().all(|s| s["netns"] == 4026532300u64));
    let out = run(&dir, &["listen", "--all-netns"]).success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let line = text.lines().find(|l| l.contains(":8080")).expect(&text);
    assert!(
        line.trim_start().starts_with("docker 3f2a9c1b7e44"),
        "{line}"
    );
}

/// An LXC container named with terminal escapes, and a process whose cgroup path runs to
/// thousands of characters: every text view shows them escaped and cut, JSON exactly.
#[test]
fn hostile_owner_names_are_escaped_and_cut_in_every_view() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    let hostile = "\u{1b}]0;PWN\u{7}\u{1b}[2J";
    let lxc_cgroup = format!("0::/lxc/{hostile}\n");
    let long_cgroup = format!("0::/{}\n", "deep/".repeat(720));
    let listener = |port: u16, inode| {
        row(
            0,
            &format!("00000000:{port:04X}"),
            "00000000:0000",
            "0A",
            inode,
        ) + &row(1, "0100007F:1F90", "0100007F:9C40", "01", inode + 1)
    };
    for (pid, netns, cgroup, tcp) in [
        (
            1,
            4026531840,
            "0::/init.scope\n".to_owned(),
            listener(22, 5001),
        ),
        (300, 4026532300, lxc_cgroup, listener(8080, 7001)),
        (400, 4026532400, long_cgroup, listener(9090, 8001)),
    ] {
        add(
            &proc,
            &Process {
                pid,
                netns,
                cgroup: &cgroup,
                comm: "app",
                hostname: None,
                tcp: &tcp,
                sockets: &[],
            },
        );
    }
    for command in [
        "report",
        "states",
        "listen",
        "established",
        "per-ip",
        "per-port",
        "audit",
    ] {
        let out = run(&dir, &[command, "--all-netns", "--all"])
            .get_output()
            .clone();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{command}: {text:?}"
        );
        let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest < 400, "{command}: a line of {widest} columns");
    }
    let report = run(&dir, &["report", "--all-netns"])
        .get_output()
        .stdout
        .clone();
    let report = String::from_utf8(report).unwrap();
    assert!(
        report.contains("lxc container \\e]0;PWN\\x07\\e[2J"),
        "{report}"
    );
    assert!(report.contains("cgroup /deep/deep/"), "{report}");
    assert!(report.contains('…'), "{report}");
    let doc = json(&dir, &["states", "--all-netns"]);
    assert_eq!(
        namespace(&doc, 4026532300)["owner"]["container"]["id"],
        hostile
    );
    assert_eq!(
        namespace(&doc, 4026532400)["owner"]["cgroup"]
            .as_str()
            .unwrap()
            .len(),
        3600
    );
}

/// `--source netlink` cannot read other namespaces: refused with the reason, as with
/// `--proc-root`, never silently read through /proc.
#[test]
fn netlink_with_other_namespaces_is_refused_with_the_reason() {
    let dir = build();
    for netns in [&["--all-netns"][..], &["--netns", "200"][..]] {
        let mut args = vec!["states", "--source", "netlink"];
        args.extend_from_slice(netns);
        let out = run(&dir, &args).failure().code(2).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--source netlink reads tcpmon's own network namespace")
                && err.contains("use --source auto or proc"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}
