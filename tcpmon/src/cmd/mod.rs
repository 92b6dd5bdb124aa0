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

/// Reads the snapshot a command needs, as its flags say.
pub fn read(args: &SnapshotArgs, want: Want) -> Result<SnapshotRead> {
    Ok(snapshot::read(&args.read_options(want))?)
}
