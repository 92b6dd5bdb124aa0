//! The snapshot commands against /proc trees a hostile user could build: special files
//! where regular ones belong, control characters in process names, a reader that closes
//! the pipe, far more findings than a screen holds. Each must end promptly with a clear
//! result; none may hang, abort or write raw control characters to a terminal.
use std::{
    ffi::CString,
    fs,
    net::IpAddr,
    os::unix::ffi::OsStrExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpmon::{
    host::proc_net::{format_line, header, Socket},
    model::{Family, TcpState},
};

fn tcpmon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpmon"));
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs `cmd`, killing it (and failing) if it takes longer than 10 s.
fn run_bounded(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("{cmd:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// A /proc tree: net/tcp holding `sockets`, an empty net/tcp6.
fn proc_tree(sockets: &[Socket]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("net")).unwrap();
    let mut tcp = vec![header(Family::Ipv4).to_owned()];
    tcp.extend(sockets.iter().enumerate().map(|(i, s)| format_line(i, s)));
    fs::write(dir.path().join("net/tcp"), tcp.join("\n") + "\n").unwrap();
    fs::write(
        dir.path().join("net/tcp6"),
        header(Family::Ipv6).to_owned() + "\n",
    )
    .unwrap();
    dir
}

/// A process `pid` named `comm` holding socket `inode`.
fn process(root: &Path, pid: u32, comm: &[u8], inode: u64) {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(dir.join("fd")).unwrap();
    fs::write(dir.join("comm"), [comm, b"\n"].concat()).unwrap();
    std::os::unix::fs::symlink(format!("socket:[{inode}]"), dir.join("fd/3")).unwrap();
}

#[test]
fn special_files_in_the_tree_are_refused_not_waited_on() {
    // A FIFO as net/tcp: an error at once.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("net")).unwrap();
    mkfifo(&dir.path().join("net/tcp"));
    let out = run_bounded(tcpmon().args(["states", "--proc-root"]).arg(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // tcp6 as /dev/zero: refused, not read until memory runs out.
    let dir = proc_tree(&[]);
    fs::remove_file(dir.path().join("net/tcp6")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("net/tcp6")).unwrap();
    let out = run_bounded(tcpmon().args(["states", "--proc-root"]).arg(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a device, not a regular file"));

    // FIFOs as a process name, a process's fd directory, and two sysctls: those reads
    // fail and the rest of the report stands.
    let listener = Socket::new(
        TcpState::Listen,
        (lo(), 8080),
        (IpAddr::from([0; 4]), 0),
        4242,
    );
    let dir = proc_tree(&[listener]);
    let root = dir.path();
    process(root, 100, b"server", 4242);
    fs::remove_file(root.join("100/comm")).unwrap();
    mkfifo(&root.join("100/comm"));
    fs::create_dir_all(root.join("101")).unwrap();
    mkfifo(&root.join("101/fd"));
    fs::create_dir_all(root.join("sys/net/core")).unwrap();
    fs::create_dir_all(root.join("sys/net/ipv4")).unwrap();
    mkfifo(&root.join("sys/net/core/somaxconn"));
    mkfifo(&root.join("sys/net/ipv4/ip_local_port_range"));
    let out = run_bounded(tcpmon().args(["report", "--json", "--proc-root"]).arg(root));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["states"]["LISTEN"], 1);
    let owner = &r["listeners"]["items"][0]["process"];
    assert_eq!(owner["pid"], 100);
    assert_eq!(owner["comm"], "?", "the name could not be read");
}

#[test]
fn process_names_cannot_drive_the_terminal() {
    let listener = Socket::new(
        TcpState::Listen,
        (lo(), 8080),
        (IpAddr::from([0; 4]), 0),
        4242,
    );
    let mut leak = Socket::new(TcpState::CloseWait, (lo(), 8080), (lo(), 50000), 4343);
    leak.rx_queue = 1;
    let dir = proc_tree(&[listener, leak]);
    let evil = b"\x1b[1A\x1b[2K\x1b]0;owned\x07";
    process(dir.path(), 100, evil, 4242);
    process(dir.path(), 101, evil, 4343);
    for command in ["report", "listen", "audit"] {
        let out = run_bounded(tcpmon().args([command, "--proc-root"]).arg(dir.path()));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains('\x1b') && !text.contains('\x07'),
            "{command}: {text:?}"
        );
        assert!(
            text.contains("\\e[1A\\e[2K\\e]0;owned\\x07["),
            "{command}: {text}"
        );
    }
    // JSON keeps the name exactly (serde escapes it for JSON).
    let out = run_bounded(
        tcpmon()
            .args(["listen", "--json", "--proc-root"])
            .arg(dir.path()),
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["listeners"]["items"][0]["process"]["comm"],
        String::from_utf8(evil.to_vec()).unwrap()
    );
}

#[test]
fn a_closed_pipe_keeps_the_audit_status() {
    let leak = Socket::new(TcpState::CloseWait, (lo(), 8080), (lo(), 50000), 4343);
    let dir = proc_tree(&[leak]);
    // The reader is gone before tcpmon writes a byte: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = tcpmon()
        .args(["audit", "--fail-on", "warning", "--proc-root"])
        .arg(dir.path())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "the finding still fails");
    assert!(
        status.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // And clean stays clean.
    let dir = proc_tree(&[]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = tcpmon()
        .args(["audit", "--proc-root"])
        .arg(dir.path())
        .stdout(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn thousands_of_findings_are_cut_like_every_list() {
    // 40 remote hosts with 201 connections each: 40 per_ip findings.
    let sockets: Vec<Socket> = (1..=40u8)
        .flat_map(|host| {
            (0..201u16).map(move |i| {
                Socket::new(
                    TcpState::Established,
                    (lo(), 443),
                    (IpAddr::from([198, 51, 100, host]), 1000 + i),
                    u64::from(host) * 1000 + u64::from(i),
                )
            })
        })
        .collect();
    let dir = proc_tree(&sockets);
    let out = run_bounded(
        tcpmon()
            .args(["audit", "--limit", "3", "--proc-root"])
            .arg(dir.path()),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("per_ip").count(),
        4,
        "3 shown + the cut line: {text}"
    );
    assert!(
        text.contains("... 37 more per_ip findings not shown"),
        "{text}"
    );
    let out = run_bounded(
        tcpmon()
            .args(["audit", "--json", "--limit", "3", "--proc-root"])
            .arg(dir.path()),
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["findings"]["total"], 40);
    assert_eq!(r["findings"]["items"].as_array().unwrap().len(), 3);
    assert_eq!(r["findings"]["omitted_by_rule"]["per_ip"], 37);
}

#[test]
fn absurd_flag_values_are_usage_errors() {
    for args in [
        &["watch", "--interval", "1e-10s"][..],
        &["watch", "--tally-interval", "0.0000000001"],
        &["watch", "--reconcile-interval", "1e-12"],
        &["watch", "--duration", "1e300"],
        &["watch", "--duration", "1.8e19"],
        &["watch", "--close-wait-age", "1e300"],
        &["watch", "--syn-backlog-warn", "NaN"],
        &["watch", "--time-wait-warn", "6000"],
        &["watch", "--max-ips", "0"],
        &["audit", "--per-ip-warn", "2000"],
        &["report", "--port-exhaustion-crit", "400"],
    ] {
        let out = run_bounded(tcpmon().args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Every line tcpmon writes to stderr goes out in one write, so it cannot be cut by
/// stdout's lines when both go to one pipe (`2>&1`): checked on the system calls.
#[test]
fn stderr_lines_are_written_whole() {
    if !Path::new("/usr/bin/strace").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "strace is missing (cargo xtask setup installs it)"
        );
        eprintln!("SKIPPED: strace is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    // An error (a /proc root without the tables), and a poll watch's last line.
    for args in [
        &["states", "--proc-root", "/nonexistent"][..],
        &["watch", "--mode", "poll", "--duration", "300ms", "--json"][..],
    ] {
        let status = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=write",
                "-e",
                "signal=none",
                "-s",
                "4096",
                "-o",
            ])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_tcpmon"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.code().is_some(), "{args:?}: {status}");
        let text = std::fs::read_to_string(&trace).unwrap();
        let to_stderr: Vec<&str> = text.lines().filter(|l| l.contains("write(2, ")).collect();
        assert!(
            !to_stderr.is_empty(),
            "{args:?} wrote nothing to stderr:\n{text}"
        );
        for call in &to_stderr {
            let body = call
                .split_once("write(2, \"")
                .and_then(|(_, rest)| rest.rsplit_once("\","))
                .map(|(body, _)| body)
                .unwrap_or_else(|| panic!("unexpected trace line {call}"));
            assert!(
                body.ends_with("\\n") && !body[..body.len() - 2].contains("\\n"),
                "{args:?}: a write to stderr that is not one whole line: {call}"
            );
        }
    }
}

/// A full disk under `watch > file` is said as such (exit 2), not as a slow reader.
#[test]
fn a_full_disk_is_said_as_such() {
    let child = tcpmon()
        .args([
            "watch",
            "--mode",
            "poll",
            "--interval",
            "200ms",
            "--duration",
            "1s",
        ])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the output was not all written: No space left on device (os error 28)"),
        "{err}"
    );
    assert!(!err.contains("stopped reading"), "{err}");
}
