//! Command-line definitions (clap derive), converted into library types by the commands.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcpmon::{
    analysis::{parse_net, Filter},
    audit::{Severity, Thresholds},
    model::{Family, TcpState},
};

#[derive(Parser, Debug)]
#[command(
    name = "tcpmon",
    version,
    about = "TCP connection monitor: /proc snapshots (no privileges) and live eBPF state transitions",
    after_help = "Snapshot commands read /proc/net/tcp and /proc/net/tcp6 once per run.\n\
                  `tcpmon watch` needs root (or CAP_BPF + CAP_PERFMON) for eBPF; without it, it polls."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Totals, states, listeners, top remote IPs, top local ports and audit findings.
    Report(ReportArgs),
    /// Socket counts per TCP state.
    States(SnapshotArgs),
    /// Listening sockets with backlog, accept queue, half-open requests and owner.
    Listen(SnapshotArgs),
    /// ESTABLISHED connections.
    Established(SnapshotArgs),
    /// Connections per remote IP (listeners excluded; v4-mapped IPv6 counted as IPv4).
    PerIp(SnapshotArgs),
    /// ESTABLISHED connections per local port.
    PerPort(SnapshotArgs),
    /// TIME_WAIT count, the destinations holding it and ephemeral-port pressure.
    Timewait(SnapshotArgs),
    /// Findings with severities; exit 0 clean, 1 when one reaches --fail-on, 2 on error.
    Audit(AuditArgs),
    /// Live transitions, tallies and alerts (eBPF; falls back to polling).
    Watch(crate::cmd::watch::WatchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// Machine-readable output with stable field names.
    #[arg(long)]
    pub json: bool,
    /// Rows per list (a cut list says how many rows it left out).
    #[arg(long, value_name = "N", default_value_t = 20, conflicts_with = "all")]
    pub limit: usize,
    /// Show every row of every list.
    #[arg(long)]
    pub all: bool,
    /// Only sockets in these states (repeatable or comma-separated; ss names work too).
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<TcpState>,
    /// Only sockets whose local or remote port is PORT.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only sockets whose local or remote address is ADDR or inside CIDR.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = parse_net)]
    pub ip: Option<ipnet::IpNet>,
    /// IPv4 sockets only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 sockets only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Read another /proc (e.g. a host's /proc mounted into a container).
    #[arg(long, value_name = "PATH", default_value = "/proc")]
    pub proc_root: PathBuf,
}

impl SnapshotArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            states: self.state.clone(),
            port: self.port,
            net: self.ip,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(Family::Ipv4),
                (_, true) => Some(Family::Ipv6),
                _ => None,
            },
        }
    }

    pub fn limit(&self) -> Option<usize> {
        (!self.all).then_some(self.limit)
    }
}

pub fn parse_state(text: &str) -> Result<TcpState, String> {
    TcpState::parse_name(text).ok_or_else(|| {
        let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
        format!("unknown state '{text}'; one of {}", names.join(", "))
    })
}

/// Audit thresholds (defaults in the README).
#[derive(Args, Debug, Clone)]
pub struct ThresholdArgs {
    /// TIME_WAIT sockets above which to warn.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub time_wait_warn: u64,
    /// TIME_WAIT sockets above which it is critical.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub time_wait_crit: u64,
    /// CLOSE_WAIT sockets above which it is critical (any CLOSE_WAIT warns).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub close_wait_crit: u64,
    /// Half-open requests per listener, % of its backlog, above which to warn.
    #[arg(long, default_value_t = 50.0, value_name = "PCT")]
    pub syn_backlog_warn: f64,
    /// ... and above which it is critical.
    #[arg(long, default_value_t = 90.0, value_name = "PCT")]
    pub syn_backlog_crit: f64,
    /// Connections from one remote IP above which to warn.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub per_ip_warn: u64,
    /// Connections from one remote IP above which it is critical.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub per_ip_crit: u64,
    /// Local ports tied up toward one remote ip:port, % of the ephemeral range, to warn.
    #[arg(long, default_value_t = 50.0, value_name = "PCT")]
    pub port_exhaustion_warn: f64,
    /// ... and to call it critical.
    #[arg(long, default_value_t = 80.0, value_name = "PCT")]
    pub port_exhaustion_crit: f64,
}

impl ThresholdArgs {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            time_wait_warn: self.time_wait_warn,
            time_wait_crit: self.time_wait_crit,
            close_wait_crit: self.close_wait_crit,
            syn_backlog_warn_pct: self.syn_backlog_warn,
            syn_backlog_crit_pct: self.syn_backlog_crit,
            per_ip_warn: self.per_ip_warn,
            per_ip_crit: self.per_ip_crit,
            port_exhaustion_warn_pct: self.port_exhaustion_warn,
            port_exhaustion_crit_pct: self.port_exhaustion_crit,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Exit 1 when a finding is at least this severe.
    #[arg(long, default_value = "critical", value_name = "SEVERITY")]
    pub fail_on: Severity,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// eBPF when it loads, polling otherwise.
    Auto,
    /// eBPF or fail.
    Ebpf,
    /// Poll /proc snapshots.
    Poll,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 500ms, 2s, 1m)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("'{text}' must be positive"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}
