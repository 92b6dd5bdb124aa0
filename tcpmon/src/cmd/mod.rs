//! One module per subcommand. A snapshot command reads through the library
//! (`tcpmon::snapshot::read`) and renders (`crate::render`); `watch` and `serve` run the
//! live engine through one sequence (`live`).
pub mod audit;
pub mod established;
pub mod generate;
pub mod listen;
mod live;
pub mod per_ip;
pub mod per_port;
pub mod report;
pub mod serve;
pub mod states;
pub mod timewait;
pub mod top;
pub mod trends;
mod usage;
pub mod watch;

use anyhow::Result;
use tcpmon::snapshot::{self, SnapshotRead, Want};

use crate::cli::{Command, SnapshotArgs};

/// Checks what clap cannot check flag by flag: a warning level above its critical one,
/// and flags that would do nothing in this command (a usage error says so rather than
/// ignoring them).
pub fn check(command: &Command) -> Result<(), String> {
    let thresholds = match command {
        Command::Report(a) => Some(a.thresholds.thresholds()),
        Command::Audit(a) => Some(a.thresholds.thresholds()),
        Command::Watch(a) => Some(a.live.thresholds.thresholds()),
        Command::Serve(a) => Some(a.live.thresholds.thresholds()),
        Command::Top(a) => Some(a.live.thresholds.thresholds()),
        _ => None,
    };
    if let Some(t) = thresholds {
        t.validate().map_err(|e| e.to_string())?;
    }
    let history = match command {
        Command::Watch(a) => Some(&a.history),
        Command::Serve(a) => Some(&a.history),
        _ => None,
    };
    if history.is_some_and(|h| h.history_interval < std::time::Duration::from_secs(1)) {
        return Err(
            "--history-interval is at least 1s: a history keeps one sample a second at most".into(),
        );
    }
    let (name, args) = match command {
        Command::Report(a) => ("report", &a.snapshot),
        Command::Audit(a) => ("audit", &a.snapshot),
        Command::States(a) => ("states", a),
        Command::Listen(a) => ("listen", a),
        Command::Established(a) => ("established", a),
        Command::PerIp(a) => ("per-ip", a),
        Command::PerPort(a) => ("per-port", a),
        Command::Timewait(a) => ("timewait", a),
        Command::Watch(_)
        | Command::Serve(_)
        | Command::Top(_)
        | Command::Generate(_)
        | Command::Trends(_) => return Ok(()),
    };
    usage::check_snapshot(name, args)
}

/// Reads `--listeners-allow FILE`; a bad line is an error naming its number.
pub fn read_allowlist(path: &std::path::Path) -> Result<tcpmon::model::allowlist::Allowlist> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--listeners-allow {}", path.display()))?;
    tcpmon::model::allowlist::Allowlist::parse(&text)
        .with_context(|| format!("--listeners-allow {}", path.display()))
}

/// The audit's findings over `loaded`, listeners judged against `allow` too.
pub fn audited(
    loaded: &SnapshotRead,
    thresholds: &tcpmon::model::Thresholds,
    allow: Option<&tcpmon::model::allowlist::Allowlist>,
) -> Vec<tcpmon::snapshot::audit::Finding> {
    let mut findings = loaded.audit(thresholds);
    if let Some(allow) = allow {
        tcpmon::snapshot::audit::judge_listeners(&mut findings, &loaded.summary.listeners, allow);
    }
    findings
}

/// `--listeners-allow`, read before the sockets are (a bad file fails fast).
pub fn allowlist_of(
    args: &crate::cli::AuditThresholdArgs,
) -> Result<Option<tcpmon::model::allowlist::Allowlist>> {
    args.listeners_allow
        .as_deref()
        .map(read_allowlist)
        .transpose()
}

/// Reads the snapshot a command needs, as its flags say.
pub fn read(args: &SnapshotArgs, want: Want) -> Result<SnapshotRead> {
    Ok(snapshot::read(&args.read_options(want))?)
}
