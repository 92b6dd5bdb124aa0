//! Command-line definitions (clap derive), converted here into the library's types.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcpmon::{
    ebpf::{LoadOptions, StateHook},
    host::ProcRoot,
    live::{EngineConfig, ModeChoice, SourceOptions, TransitionFilter},
    model::{
        duration::{parse_duration, parse_moment, Moment},
        parse_net, EndpointFilter, Family, Severity, TcpState, Thresholds,
    },
    snapshot::{
        analysis::{Filter, SortKey},
        Info, NetnsChoice, ReadOptions, SourceChoice as Source, Want,
    },
};

#[derive(Parser, Debug)]
#[command(
    name = "tcpmon",
    version,
    about = "TCP connection monitor: socket snapshots, live state transitions (eBPF), alerts and a Prometheus exporter",
    after_help = "Snapshot commands read the sockets once through netlink sock_diag (what ss reads), \
                  or /proc/net/tcp{,6} where netlink is not available; no privileges needed, \
                  except to name other users' processes.\n\
                  `tcpmon watch` and `tcpmon serve` need root (or CAP_BPF + CAP_PERFMON) for eBPF; \
                  without it, they poll."
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
    Watch(WatchArgs),
    /// The live engine as a node agent: Prometheus metrics, health and active alerts
    /// over HTTP (loopback unless told otherwise).
    Serve(ServeArgs),
    /// A live dashboard in the terminal: states, listeners, peers, CLOSE_WAIT, alerts and
    /// namespaces from the engine, redrawn every --interval (? shows the keys).
    ///
    /// Keys: q or Ctrl-C quit; Space or p pause the screen (the engine keeps counting);
    /// Tab and the arrows move between panes and rows; s sorts by the next column, S
    /// reverses; / filters by address, port or process (Esc clears); Enter opens a
    /// peer's, port's or state's connections with tcp_info from a snapshot (Esc goes
    /// back), or scopes every pane to a namespace; n goes to the namespaces (with
    /// --all-netns); ? shows the keys. Needs a terminal: for pipes use `watch --json`.
    Top(TopArgs),
    /// Trends from the history serve (or watch --history) records: min/avg/max per
    /// bucket, a chart, and capacity findings (TIME_WAIT headroom, CLOSE_WAIT growth,
    /// the busiest hour, per-IP peaks), against the period before with --compare.
    Trends(TrendsArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TrendsArgs {
    /// The history file (default: serve's, $STATE_DIRECTORY/history.db or
    /// /var/lib/tcpmon/history.db).
    #[arg(long, value_name = "PATH")]
    pub history: Option<PathBuf>,
    /// Start of the period: a duration before now (24h, 7d) or a time (2026-12-07 08:00,
    /// UTC).
    #[arg(long, value_name = "WHEN", default_value = "24h", value_parser = parse_moment)]
    pub since: Moment,
    /// End of the period, as --since.
    #[arg(long, value_name = "WHEN", default_value = "now", value_parser = parse_moment)]
    pub until: Moment,
    /// Bucket width.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub every: Duration,
    /// What to show per bucket: states (ss names work) or other recorded series
    /// (ipv4, ipv6, retransmits, resets_sent, resets_received, drops, transitions).
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "ESTABLISHED,TIME_WAIT,CLOSE_WAIT"
    )]
    pub state: Vec<String>,
    /// The namespace: `host` (the recorder's own) or another's inode (with serve
    /// --all-netns).
    #[arg(long, value_name = "host|INODE", default_value = "host")]
    pub netns: String,
    /// Also the period this long before (1d, 1w), side by side.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub compare: Option<Duration>,
    /// List the listeners that appeared or went in the period.
    #[arg(long)]
    pub listeners: bool,
    /// Machine-readable output (docs/schema/trends.schema.json).
    #[arg(long)]
    pub json: bool,
    /// Unix seconds to take as now (tests pin their output with it).
    #[arg(long, hide = true)]
    pub now: Option<i64>,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Directory to write man/ and completions/ into.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
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
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = state_names())]
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
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// Where to read sockets: netlink sock_diag (what ss reads: faster, and tcp_info),
    /// /proc/net/tcp{,6}, or auto (netlink, else /proc with a note; --proc-root reads
    /// /proc).
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
    /// Inside each connection (established, per-port, report): RTT, retransmits,
    /// congestion window, bytes, from tcp_info (netlink).
    #[arg(long)]
    pub info: bool,
    /// Order listed connections by this, largest first (rtt, retrans and bytes read
    /// and show tcp_info).
    #[arg(long, value_name = "KEY", value_parser = sort_keys())]
    pub sort: Option<SortKey>,
    /// Name the process holding each connection listed (`established`; like `ss -p`: a
    /// walk of every process's file descriptors, which other users' processes need root
    /// for).
    #[arg(short = 'p', long)]
    pub processes: bool,
}

/// `--source`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceChoice {
    Auto,
    Netlink,
    Proc,
}

/// Which network namespaces to read (default: tcpmon's own).
#[derive(Args, Debug, Clone, Default)]
pub struct NetnsArgs {
    /// Every network namespace on the host (containers, pods, `ip netns`), each named
    /// by its owner.
    #[arg(long, conflicts_with = "netns")]
    pub all_netns: bool,
    /// This network namespace (repeatable): a pid, /proc/PID/ns/net, /run/netns/NAME or
    /// an `ip netns` name.
    #[arg(long, value_name = "SPEC", value_parser = clap::value_parser!(std::ffi::OsString))]
    pub netns: Vec<std::ffi::OsString>,
}

impl NetnsArgs {
    pub fn choice(&self) -> NetnsChoice {
        if self.all_netns {
            NetnsChoice::All
        } else if self.netns.is_empty() {
            NetnsChoice::Own
        } else {
            NetnsChoice::Specs(self.netns.clone())
        }
    }
}

impl SnapshotArgs {
    /// What the library's snapshot read is told: these flags, and what the command wants
    /// (`--info` asks for tcp_info to be shown).
    /// Whether tcp_info is to be shown: asked with --info, or needed by --sort.
    pub fn shows_info(&self) -> bool {
        self.info || self.sort.is_some_and(|s| s != SortKey::Queue)
    }

    pub fn read_options(&self, mut want: Want) -> ReadOptions {
        if self.shows_info() {
            want.info = Info::Shown;
        }
        want.connection_owners |= self.processes;
        ReadOptions {
            proc_root: self.proc_root(),
            source: match self.source {
                SourceChoice::Auto => Source::Auto,
                SourceChoice::Netlink => Source::Netlink,
                SourceChoice::Proc => Source::Proc,
            },
            netns: self.netns.choice(),
            filter: self.filter(),
            limit: self.limit(),
            sort: self.sort,
            want,
        }
    }

    pub fn filter(&self) -> Filter {
        Filter {
            states: self.state.clone(),
            endpoints: EndpointFilter {
                port: self.port,
                net: self.ip,
            },
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

    pub fn proc_root(&self) -> ProcRoot {
        ProcRoot::new(&self.proc_root)
    }
}

/// A flag value from a fixed list: the names are offered to `--help`, the man pages and
/// the shell completions, while `parse` may accept more spellings (any case, kernel
/// names).
#[derive(Clone)]
pub struct Named<T> {
    names: &'static [&'static str],
    parse: fn(&str) -> Option<T>,
    what: &'static str,
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        (self.parse)(&text).ok_or_else(|| {
            let flag = arg.map(|a| a.to_string()).unwrap_or_default();
            let message = format!(
                "invalid value '{text}' for '{flag}': not a {}; one of {}\n",
                self.what,
                self.names.join(", ")
            );
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, message).with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.names
                .iter()
                .map(|name| clap::builder::PossibleValue::new(*name)),
        ))
    }
}

/// The ss spellings of the states, in kernel order; `TcpState::parse_name` also takes
/// the kernel's (`TIME_WAIT`) and any case.
const STATE_NAMES: &[&str] = &[
    "established",
    "syn-sent",
    "syn-recv",
    "fin-wait1",
    "fin-wait2",
    "time-wait",
    "close",
    "close-wait",
    "last-ack",
    "listen",
    "closing",
    "new-syn-recv",
];

fn state_names() -> Named<TcpState> {
    Named {
        names: STATE_NAMES,
        parse: TcpState::parse_name,
        what: "TCP state",
    }
}

fn sort_keys() -> Named<SortKey> {
    Named {
        names: &["rtt", "retrans", "queue", "bytes"],
        parse: |text| match text {
            "rtt" => Some(SortKey::Rtt),
            "retrans" => Some(SortKey::Retrans),
            "queue" => Some(SortKey::Queue),
            "bytes" => Some(SortKey::Bytes),
            _ => None,
        },
        what: "sort key",
    }
}

fn severities() -> Named<Severity> {
    Named {
        names: &["info", "warning", "critical"],
        parse: |text| text.parse().ok(),
        what: "severity",
    }
}

/// A percentage, 0 to 100.
fn parse_pct(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("'{text}' is not a percentage from 0 to 100")),
    }
}

/// A rate: a finite number, 0 or more.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "'{text}' is not a rate (a finite number, 0 or more)"
        )),
    }
}

/// Thresholds shared by the snapshot audit and the live alerts (defaults:
/// `Thresholds::DEFAULT`, documented in the README).
#[derive(Args, Debug, Clone)]
pub struct ThresholdArgs {
    /// TIME_WAIT sockets above which to warn.
    #[arg(long, value_name = "N", default_value_t = Thresholds::DEFAULT.time_wait_warn)]
    pub time_wait_warn: u64,
    /// TIME_WAIT sockets above which it is critical.
    #[arg(long, value_name = "N", default_value_t = Thresholds::DEFAULT.time_wait_crit)]
    pub time_wait_crit: u64,
    /// CLOSE_WAIT sockets of one leak (a listener's port, or one client process toward
    /// one remote ip:port) above which it is critical.
    #[arg(long, visible_alias = "close-wait-count", value_name = "N",
          default_value_t = Thresholds::DEFAULT.close_wait_crit)]
    pub close_wait_crit: u64,
    /// Half-open requests per listener, % of its backlog, to warn.
    #[arg(long, visible_alias = "syn-backlog", value_name = "PCT", value_parser = parse_pct,
          default_value_t = Thresholds::DEFAULT.syn_backlog_warn_pct)]
    pub syn_backlog_warn: f64,
    /// ... and to call it critical.
    #[arg(long, value_name = "PCT", value_parser = parse_pct,
          default_value_t = Thresholds::DEFAULT.syn_backlog_crit_pct)]
    pub syn_backlog_crit: f64,
    /// Live connections (established or in the handshake) with one remote IP above which
    /// to warn; TIME_WAIT is shown apart, not judged.
    #[arg(long, value_name = "N", default_value_t = Thresholds::DEFAULT.per_ip_warn)]
    pub per_ip_warn: u64,
    /// Live connections with one remote IP above which it is critical.
    #[arg(long, value_name = "N", default_value_t = Thresholds::DEFAULT.per_ip_crit)]
    pub per_ip_crit: u64,
    /// Local ports tied up toward one remote ip:port, % of the ephemeral range, to warn.
    #[arg(long, value_name = "PCT", value_parser = parse_pct,
          default_value_t = Thresholds::DEFAULT.port_exhaustion_warn_pct)]
    pub port_exhaustion_warn: f64,
    /// ... and to call it critical.
    #[arg(long, value_name = "PCT", value_parser = parse_pct,
          default_value_t = Thresholds::DEFAULT.port_exhaustion_crit_pct)]
    pub port_exhaustion_crit: f64,
    /// Segments retransmitted toward one remote IP, % of those sent, to warn (snapshots:
    /// tcp_info; live: the connections that retransmitted in the window).
    #[arg(long, value_name = "PCT", value_parser = parse_pct,
          default_value_t = Thresholds::DEFAULT.retrans_warn_pct)]
    pub retrans_warn: f64,
    /// ... and to call it critical.
    #[arg(long, value_name = "PCT", value_parser = parse_pct,
          default_value_t = Thresholds::DEFAULT.retrans_crit_pct)]
    pub retrans_crit: f64,
}

impl ThresholdArgs {
    pub fn apply(&self, t: &mut Thresholds) {
        t.time_wait_warn = self.time_wait_warn;
        t.time_wait_crit = self.time_wait_crit;
        t.close_wait_crit = self.close_wait_crit;
        t.syn_backlog_warn_pct = self.syn_backlog_warn;
        t.syn_backlog_crit_pct = self.syn_backlog_crit;
        t.per_ip_warn = self.per_ip_warn;
        t.per_ip_crit = self.per_ip_crit;
        t.port_exhaustion_warn_pct = self.port_exhaustion_warn;
        t.port_exhaustion_crit_pct = self.port_exhaustion_crit;
        t.retrans_warn_pct = self.retrans_warn;
        t.retrans_crit_pct = self.retrans_crit;
    }

    pub fn thresholds(&self) -> Thresholds {
        let mut t = Thresholds::DEFAULT;
        self.apply(&mut t);
        t
    }
}

/// Thresholds of the snapshot audit (report, audit): the shared ones and those only
/// tcp_info feeds.
#[derive(Args, Debug, Clone)]
pub struct AuditThresholdArgs {
    #[command(flatten)]
    pub shared: ThresholdArgs,
    /// Segments sent toward a remote IP below which its retransmit ratio is not judged.
    #[arg(long, value_name = "N", default_value_t = Thresholds::DEFAULT.retrans_min_segs)]
    pub retrans_min_segs: u64,
    /// Bytes queued toward a remote IP that stopped reading (zero window) above which it
    /// is critical; any is a warning.
    #[arg(long, value_name = "BYTES", default_value_t = Thresholds::DEFAULT.stuck_crit_bytes)]
    pub stuck_crit_bytes: u64,
    /// The listeners expected, one `[ADDR:]PORT [PROCESS]` per line (# comments): each
    /// other one is an unexpected_listener finding.
    #[arg(long, value_name = "FILE")]
    pub listeners_allow: Option<PathBuf>,
}

impl AuditThresholdArgs {
    pub fn thresholds(&self) -> Thresholds {
        let mut t = self.shared.thresholds();
        t.retrans_min_segs = self.retrans_min_segs;
        t.stuck_crit_bytes = self.stuck_crit_bytes;
        t
    }
}

/// Thresholds only the live alerts use.
#[derive(Args, Debug, Clone)]
pub struct LiveThresholdArgs {
    #[command(flatten)]
    pub shared: ThresholdArgs,
    /// CLOSE_WAIT sockets older than this raise an alert.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          default_value = "60s")]
    pub close_wait_age: Duration,
    /// SYN-ACK retransmits per second on one listener that mean a SYN flood.
    #[arg(long, value_name = "N", value_parser = parse_rate,
          default_value_t = Thresholds::DEFAULT.synack_retransmit_rate)]
    pub synack_retransmit_rate: f64,
    /// SYNs per second on one listener, with under half completing, that mean a SYN flood.
    #[arg(long, value_name = "N", value_parser = parse_rate,
          default_value_t = Thresholds::DEFAULT.syn_rate)]
    pub syn_rate: f64,
    /// Segments retransmitted per second toward one remote IP that raise a warning
    /// (critical at ten times it), where the kernel does not say the segments sent (else
    /// the share is judged, --retrans-warn).
    #[arg(long, value_name = "N", value_parser = parse_rate,
          default_value_t = Thresholds::DEFAULT.retransmit_rate)]
    pub retransmit_rate: f64,
    /// Resets per second sent on one local port (connections refused), or exchanged with
    /// one remote IP, that raise a warning (critical at ten times it).
    #[arg(long, value_name = "N", value_parser = parse_rate,
          default_value_t = Thresholds::DEFAULT.reset_rate)]
    pub reset_rate: f64,
}

impl LiveThresholdArgs {
    pub fn thresholds(&self) -> Thresholds {
        let mut t = self.shared.thresholds();
        t.close_wait_age_secs = self.close_wait_age.as_secs_f64();
        t.synack_retransmit_rate = self.synack_retransmit_rate;
        t.syn_rate = self.syn_rate;
        t.retransmit_rate = self.retransmit_rate;
        t.reset_rate = self.reset_rate;
        t
    }
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub thresholds: AuditThresholdArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub thresholds: AuditThresholdArgs,
    /// Exit 1 when a finding is at least this severe.
    #[arg(long, default_value = "critical", value_name = "SEVERITY", value_parser = severities())]
    pub fail_on: Severity,
}

/// `--state-hook`: the ways to hook sock:inet_sock_set_state, cheapest first.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateHookArg {
    /// The first of btf, raw, classic that loads, saying why the others did not.
    Auto,
    /// BTF tracepoint: the socket is a typed pointer, fields are plain loads.
    Btf,
    /// Raw tracepoint: the socket is an address, read with bpf_probe_read_kernel.
    Raw,
    /// Classic tracepoint: the kernel fills a trace record first; needs tracefs.
    Classic,
}

impl From<StateHookArg> for StateHook {
    fn from(arg: StateHookArg) -> Self {
        match arg {
            StateHookArg::Auto => Self::Auto,
            StateHookArg::Btf => Self::Btf,
            StateHookArg::Raw => Self::Raw,
            StateHookArg::Classic => Self::Classic,
        }
    }
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

/// Recording a history (`watch`, `serve`); `tcpmon trends` reads it.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Record samples of the tallies in this SQLite file (WAL; `tcpmon trends` reads it
    /// while this runs).
    #[arg(long, value_name = "PATH")]
    pub history: Option<PathBuf>,
    /// How often a sample is recorded (no more often than a tally is made).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub history_interval: Duration,
    /// The file's bound: over it, the oldest samples go first (raw, then minutes, then
    /// hours).
    #[arg(long, value_name = "BYTES", default_value_t = 100 << 20,
          value_parser = clap::value_parser!(u64).range(65_536..))]
    pub history_max_bytes: u64,
    /// Move the history file aside (PATH.TIME.old) and start a new one: for a file
    /// tcpmon refuses as damaged or not its own.
    #[arg(long)]
    pub history_reset: bool,
}

/// The live engine's flags, shared by `watch` and `serve`.
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// The listeners expected, one `[ADDR:]PORT [PROCESS]` per line (# comments): a new
    /// listener none allows is a warning that says so.
    #[arg(long, value_name = "FILE")]
    pub listeners_allow: Option<PathBuf>,
    /// auto: eBPF, else poll the socket table (saying why); ebpf: fail if eBPF cannot load; poll: never load eBPF.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// How often to evaluate alerts and poll the cheap counters (and /proc in poll mode).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Rebuild the tallies from a /proc snapshot this often (and after any loss).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Stop after this long (default: until Ctrl-C / SIGTERM / SIGHUP).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Watch every network namespace: each (up to --max-netns) gets its own baseline,
    /// tally, reconciliation and alerts, named by its owner.
    #[arg(long)]
    pub all_netns: bool,
    /// Namespaces tallied at most with --all-netns; the rest are named and their
    /// transitions counted together.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_netns: u32,
    /// Ring memory in all: seven eighths for the per-CPU slot rings of state transitions
    /// (48-byte slots), an eighth for the ring buffers (SYN records), each ring rounded
    /// down to a power of two; all of it for the ring buffers with --ring-buffers-only.
    #[arg(long, value_name = "BYTES", default_value_t = tcpmon_common::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Send state transitions through the BPF ring buffers too, not the per-CPU slot
    /// rings (which cost the kernel ~40 ns less per transition; x86-64 only).
    #[arg(long)]
    pub ring_buffers_only: bool,
    /// How to hook sock:inet_sock_set_state: auto takes the cheapest that loads (btf,
    /// then raw, then classic); the others force one, for a kernel where it misbehaves.
    #[arg(long, value_enum, value_name = "HOOK", default_value_t = StateHookArg::Auto)]
    pub state_hook: StateHookArg,
    /// Nice value of the reader in eBPF mode, -20 to 19. By default it is raised to -19
    /// (never lowered), so that the traffic it watches does not keep preempting it.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: Option<i32>,
    /// Remote IPs tallied individually; beyond, they are aggregated (and the tally says so).
    #[arg(long, value_name = "N", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_ips: u32,
    #[command(flatten)]
    pub thresholds: LiveThresholdArgs,
}

impl LiveArgs {
    /// The engine's config, with the lists of a tally `top` long and `transitions` shown.
    pub fn engine_config(
        &self,
        tally_interval: Duration,
        top: usize,
        transitions: Option<TransitionFilter>,
    ) -> EngineConfig {
        EngineConfig {
            interval: self.interval,
            tally_interval,
            reconcile_interval: self.reconcile_interval,
            thresholds: self.thresholds.thresholds(),
            max_ips: self.max_ips as usize,
            transitions,
            own_netns: None,
            top,
            max_netns: self.all_netns.then_some(self.max_netns as usize),
            namespace_detail: false,
            // Read from --listeners-allow when the engine starts.
            listeners_allow: None,
        }
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            mode: match self.mode {
                Mode::Auto => ModeChoice::Auto,
                Mode::Ebpf => ModeChoice::Ebpf,
                Mode::Poll => ModeChoice::Poll,
            },
            load: LoadOptions {
                ring_bytes: self.ring_bytes,
                state_hook: self.state_hook.into(),
                slot_rings: !self.ring_buffers_only && LoadOptions::default().slot_rings,
                ..LoadOptions::default()
            },
            all_netns: self.all_netns,
            nice: self.nice,
            proc_root: ProcRoot::host(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// NDJSON: one record per line, "type" mode, transition, alert, tally or summary.
    #[arg(long)]
    pub json: bool,
    /// Print a tally line this often.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub tally_interval: Duration,
    /// Alerts and tallies only, no transition lines.
    #[arg(long)]
    pub quiet_transitions: bool,
    /// Only transitions whose local or remote port is PORT.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only transitions whose local or remote address is in ADDR|CIDR.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = parse_net)]
    pub ip: Option<ipnet::IpNet>,
    /// Only transitions into or out of these states.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = state_names())]
    pub state: Vec<TcpState>,
    /// Entries of each list in a tally (remote IPs, ports, destinations).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top: u32,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
}

impl WatchArgs {
    pub fn engine_config(&self) -> EngineConfig {
        self.live.engine_config(
            self.tally_interval,
            self.top as usize,
            (!self.quiet_transitions).then(|| TransitionFilter {
                endpoints: EndpointFilter {
                    port: self.port,
                    net: self.ip,
                },
                states: self.state.clone(),
            }),
        )
    }
}

/// tcpmon's default metrics port: outside 9100-9999, the range Prometheus allocates to
/// exporters, and below Linux's ephemeral ports.
pub const DEFAULT_SERVE_PORT: u16 = 29827;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to serve HTTP on. The default is loopback only: give a routable address to
    /// let a Prometheus elsewhere scrape it.
    #[arg(long, value_name = "ADDR:PORT",
          default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_SERVE_PORT)))]
    pub listen: std::net::SocketAddr,
    /// Series per bounded list: remote IPs, CLOSE_WAIT ports, destinations (the rest as
    /// "other").
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top: u32,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Record no history (serve records by default, in its state directory:
    /// $STATE_DIRECTORY/history.db under systemd, else /var/lib/tcpmon/history.db).
    #[arg(long, conflicts_with = "history")]
    pub no_history: bool,
}

impl ServeArgs {
    /// The engine publishes every `--interval`, and shows no transition (it only counts
    /// them).
    pub fn engine_config(&self) -> EngineConfig {
        self.live
            .engine_config(self.live.interval, self.top as usize, None)
    }
}

#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// Rows kept per list (listeners are all kept): remote IPs, CLOSE_WAIT leaks.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top: u32,
    #[command(flatten)]
    pub live: LiveArgs,
}

impl TopArgs {
    /// A tally every `--interval` (each one redraws the screen), no transition shown,
    /// and with `--all-netns` each namespace's lists too (for its scope).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            namespace_detail: self.live.all_netns,
            ..self
                .live
                .engine_config(self.live.interval, self.top as usize, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offered_state_names_are_every_state_once() {
        let parsed: Vec<TcpState> = STATE_NAMES
            .iter()
            .map(|n| TcpState::parse_name(n).unwrap_or_else(|| panic!("{n}")))
            .collect();
        assert_eq!(parsed, TcpState::ALL.to_vec());
    }

    #[test]
    fn named_values_parse_leniently_and_refuse_with_the_list() {
        let ok =
            Cli::try_parse_from(["tcpmon", "states", "--state", "TIME_WAIT,syn-recv"]).unwrap();
        let Command::States(args) = ok.command else {
            panic!("states")
        };
        assert_eq!(args.state, vec![TcpState::TimeWait, TcpState::SynRecv]);
        let err = Cli::try_parse_from(["tcpmon", "states", "--state", "open"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("'open'") && text.contains("time-wait"),
            "{text}"
        );
        let err = Cli::try_parse_from(["tcpmon", "audit", "--fail-on", "loud"]).unwrap_err();
        assert!(err.to_string().contains("info, warning, critical"), "{err}");
        let err = Cli::try_parse_from(["tcpmon", "established", "--sort", "age"]).unwrap_err();
        assert!(
            err.to_string().contains("rtt, retrans, queue, bytes"),
            "{err}"
        );
    }

    #[test]
    fn durations_parse_within_bounds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in [
            "1e-10s",
            "0.0000000001",
            "1e-12",
            "1e300",
            "1.8e19",
            "NaN",
            "inf",
            "-1s",
            "0",
            "",
            "ms",
            "abc",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn percentages_and_rates_refuse_nonsense() {
        assert_eq!(parse_pct("50"), Ok(50.0));
        assert!(parse_pct("NaN").is_err());
        assert!(parse_pct("101").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("-3").is_err());
        assert_eq!(parse_rate("0"), Ok(0.0));
    }

    #[test]
    fn threshold_flags_default_to_the_shared_defaults() {
        let cli = Cli::parse_from(["tcpmon", "watch"]);
        let Command::Watch(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.live.thresholds.thresholds(), Thresholds::DEFAULT);
        let cli = Cli::parse_from(["tcpmon", "audit"]);
        let Command::Audit(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.thresholds.thresholds(), Thresholds::DEFAULT);
    }

    #[test]
    fn old_watch_flag_names_still_work() {
        let cli = Cli::parse_from([
            "tcpmon",
            "watch",
            "--close-wait-count",
            "7",
            "--syn-backlog",
            "40",
        ]);
        let Command::Watch(args) = cli.command else {
            unreachable!()
        };
        let t = args.live.thresholds.thresholds();
        assert_eq!((t.close_wait_crit, t.syn_backlog_warn_pct), (7, 40.0));
    }
}
