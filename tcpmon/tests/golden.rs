//! Golden output: every snapshot command's text on the `golden` fixture (a small web
//! host's /proc, see fixtures/golden/make.py), pinned as reviewed insta snapshots. A
//! change to any table, header, finding or cut line shows up here as a diff to review.
//! The fixture's path is the only thing scrubbed.
use std::path::PathBuf;

use assert_cmd::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// The command's stdout with the fixture's path replaced, and its exit code.
fn run(args: &[&str]) -> (String, i32) {
    let output = Command::cargo_bin("tcpmon")
        .unwrap()
        .args(args)
        .arg("--proc-root")
        .arg(fixture())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        output.stderr.is_empty(),
        "{args:?} wrote to stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    (
        text.replace(&fixture().display().to_string(), "[FIXTURE]"),
        output.status.code().unwrap_or(-1),
    )
}

fn golden(name: &str, args: &[&str], expected_status: i32) {
    let (text, status) = run(args);
    assert_eq!(status, expected_status, "{args:?}:\n{text}");
    insta::assert_snapshot!(name, text, &args.join(" "));
}

#[test]
fn report() {
    golden("report", &["report"], 0);
}

#[test]
fn report_with_cut_lists() {
    golden("report_limit_2", &["report", "--limit", "2"], 0);
}

#[test]
fn states() {
    golden("states", &["states"], 0);
}

#[test]
fn listen() {
    golden("listen", &["listen"], 0);
}

#[test]
fn established() {
    golden("established", &["established"], 0);
}

#[test]
fn established_cut() {
    golden("established_limit_3", &["established", "--limit", "3"], 0);
}

#[test]
fn established_with_processes() {
    golden("established_processes", &["established", "-p"], 0);
}

#[test]
fn per_ip() {
    golden("per_ip", &["per-ip"], 0);
}

#[test]
fn per_port() {
    golden("per_port", &["per-port"], 0);
}

#[test]
fn timewait() {
    golden("timewait", &["timewait"], 0);
}

#[test]
fn audit() {
    golden("audit", &["audit"], 0);
}

#[test]
fn audit_failing() {
    golden(
        "audit_fail_on_warning",
        &["audit", "--fail-on", "warning"],
        1,
    );
}
