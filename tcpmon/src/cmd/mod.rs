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
pub mod watch;

use anyhow::Result;
use tcpmon::snapshot::{self, SnapshotRead, Want};

use crate::cli::{Command, SnapshotArgs};

/// Checks what clap cannot check flag by flag (a warning level above its critical one);
/// the message is a usage error.
pub fn check(command: &Command) -> Result<(), String> {
    let thresholds = match command {
        Command::Report(a) => a.thresholds.thresholds(),
        Command::Audit(a) => a.thresholds.thresholds(),
        Command::Watch(a) => a.live.thresholds.thresholds(),
        Command::Serve(a) => a.live.thresholds.thresholds(),
        _ => return Ok(()),
    };
    thresholds.validate().map_err(|e| e.to_string())
}

/// Reads the snapshot a command needs, as its flags say.
pub fn read(args: &SnapshotArgs, want: Want) -> Result<SnapshotRead> {
    Ok(snapshot::read(&args.read_options(want))?)
}
