//! `tcpmon generate`: the man pages and completions the .deb ships, checked as a person
//! meets them (sections of the page, what Tab offers in bash).
use std::{fs, path::Path, process::Command as Process};

use assert_cmd::Command;

const COMMANDS: &[&str] = &[
    "report",
    "states",
    "listen",
    "established",
    "per-ip",
    "per-port",
    "timewait",
    "audit",
    "watch",
    "serve",
];

fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("tcpmon")
        .unwrap()
        .arg("generate")
        .arg(dir.path())
        .assert()
        .success();
    dir
}

#[test]
fn every_man_page_has_examples_exit_status_and_see_also() {
    let dir = generated();
    let pages: Vec<String> = std::iter::once("tcpmon".to_owned())
        .chain(COMMANDS.iter().map(|c| format!("tcpmon-{c}")))
        .collect();
    for page in &pages {
        let path = dir.path().join("man").join(format!("{page}.1"));
        let roff = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        for section in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
            assert!(roff.contains(section), "{page} lacks {section}");
        }
        assert!(roff.contains("tcpmon"), "{page}");
        for other in pages.iter().filter(|p| *p != page) {
            let escaped = other.replace('-', "\\-");
            assert!(
                roff.contains(&format!("\\fI{escaped}\\fR(1")),
                "{page} does not refer to {other}"
            );
        }
    }
    let audit = fs::read_to_string(dir.path().join("man/tcpmon-audit.1")).unwrap();
    assert!(
        audit.contains("A finding reached \\-\\-fail\\-on"),
        "{audit}"
    );
}

#[test]
fn the_pages_say_snapshots_come_from_netlink() {
    let dir = generated();
    let top = fs::read_to_string(dir.path().join("man/tcpmon.1")).unwrap();
    assert!(top.contains("netlink sock_diag"), "{top}");
    assert!(!top.contains("read /proc/net/tcp and"), "{top}");
    let help = Command::cargo_bin("tcpmon")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("netlink sock_diag"), "{help}");
    let manifest =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("Snapshot commands read /proc;"),
        "the .deb description"
    );
    assert!(
        manifest.contains("netlink sock_diag"),
        "the .deb description"
    );
}

/// What bash offers after `tcpmon <words> <Tab>`, through the generated completion
/// function (the way bash-completion calls it).
fn bash_offers(completions: &Path, words: &[&str]) -> Vec<String> {
    let script = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; _tcpmon tcpmon \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        completions.join("tcpmon.bash").display(),
        words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        words.len() - 1,
    );
    let out = Process::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_offer_the_values_of_enum_flags() {
    let dir = generated();
    let completions = dir.path().join("completions");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["tcpmon", "audit", "--fail-on", ""],
            &["info", "warning", "critical"],
        ),
        (
            &["tcpmon", "established", "--sort", ""],
            &["rtt", "retrans", "queue", "bytes"],
        ),
        (
            &["tcpmon", "report", "--source", ""],
            &["auto", "netlink", "proc"],
        ),
        (&["tcpmon", "watch", "--state", "t"], &["time-wait"]),
        (
            &["tcpmon", "states", "--state", "close"],
            &["close", "close-wait"],
        ),
    ];
    for (words, wanted) in cases {
        let mut offered = bash_offers(&completions, words);
        offered.sort();
        let mut wanted: Vec<String> = wanted.iter().map(|w| (*w).to_owned()).collect();
        wanted.sort();
        assert_eq!(offered, wanted, "{words:?}");
    }
    // Everything offered for --state parses back.
    let states = bash_offers(&completions, &["tcpmon", "states", "--state", ""]);
    assert_eq!(states.len(), 12, "{states:?}");
    for state in &states {
        Command::cargo_bin("tcpmon")
            .unwrap()
            .args(["states", "--proc-root", "/proc", "--state", state])
            .assert()
            .success();
    }
    let zsh = fs::read_to_string(completions.join("_tcpmon")).unwrap();
    assert!(
        zsh.contains(":SEVERITY:(info warning critical)"),
        "zsh --fail-on"
    );
    let fish = fs::read_to_string(completions.join("tcpmon.fish")).unwrap();
    assert!(
        fish.contains("-l sort") && fish.contains("-a \"rtt\\t"),
        "fish --sort"
    );
}
