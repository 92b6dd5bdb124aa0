//! `tcpmon watch`: live transitions, tallies and alerts.
//!
//! eBPF mode attaches first, then reads the baseline snapshot, so no transition falls
//! between the two; poll mode (the fallback) diffs successive snapshots. Both feed the same
//! tally and detectors. Loss is counted and triggers a reconciliation from /proc.
use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;
use tcpmon::{
    analysis::{parse_net, PortRange},
    diag,
    ebpf::{own_netns, KernelCounters, LoadError, LoadOptions, NetnsFilter, Probe, StateHook},
    event::{decode_event, Endpoints, Record, Transition},
    kstats::{self, SynCounters},
    live::{monotonic_ns, Clock, FastWriter, Origin, TransitionRecord},
    model::{canonical_ip, endpoint, TcpState},
    poll,
    process::{find_owners, Process},
    procfs::Socket,
    render::{json_line, Style},
    rules::{
        half_open_worth_dumping, syn_trouble_hinted, Alert, Detector, Inputs, LiveThresholds,
        Status, SynCounterSwitch, SynCoverage, SynTracker,
    },
    tally::{ReconcileReport, Tally, TallyConfig},
    Snapshot,
};
use tcpmon_common::SockEvent;
use tokio::signal::unix::{signal, SignalKind};

use super::rings::Rings;
use crate::cli::{parse_duration, parse_state, Mode};

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// NDJSON: one record per line, "type" mode, transition, alert or tally.
    #[arg(long)]
    pub json: bool,
    /// auto: eBPF, else poll /proc (saying why); ebpf: fail if eBPF cannot load; poll: never load eBPF.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// How often to evaluate alerts and poll the cheap counters (and /proc in poll mode).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print a tally line this often.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub tally_interval: Duration,
    /// Rebuild the tallies from a /proc snapshot this often (and after any loss).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Alerts and tallies only, no transition lines.
    #[arg(long)]
    pub quiet_transitions: bool,
    /// Show transitions from every network namespace (tallies stay this namespace's).
    #[arg(long)]
    pub all_netns: bool,
    /// Only transitions whose local or remote port is PORT.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only transitions whose local or remote address is in ADDR|CIDR.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = parse_net)]
    pub ip: Option<ipnet::IpNet>,
    /// Only transitions into or out of these states.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<TcpState>,
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
    #[arg(long, value_enum, value_name = "HOOK", default_value_t = StateHook::Auto)]
    pub state_hook: StateHook,
    /// Nice value of the reader in eBPF mode, -20 to 19. By default it is raised to -19
    /// (never lowered), so that the traffic it watches does not keep preempting it.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: Option<i32>,
    /// Remote IPs tallied individually; beyond, they are aggregated (and the tally says so).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_ips: usize,
    #[command(flatten)]
    pub thresholds: LiveThresholdArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LiveThresholdArgs {
    /// TIME_WAIT total above which to warn.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub time_wait_warn: u64,
    /// TIME_WAIT total above which it is critical.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub time_wait_crit: u64,
    /// Client TIME_WAIT toward one ip:port, % of the ephemeral range, to warn.
    #[arg(long, default_value_t = 50.0, value_name = "PCT")]
    pub port_exhaustion_warn: f64,
    /// ... to call it critical.
    #[arg(long, default_value_t = 80.0, value_name = "PCT")]
    pub port_exhaustion_crit: f64,
    /// CLOSE_WAIT sockets older than this raise an alert.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub close_wait_age: Duration,
    /// More CLOSE_WAIT sockets than this on one port raise a critical alert.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub close_wait_count: u64,
    /// Connections from one remote IP above which to warn.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub per_ip_warn: u64,
    /// ... above which it is critical.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub per_ip_crit: u64,
    /// Half-open requests, % of the listener's backlog, that mean a SYN flood.
    #[arg(long, default_value_t = 50.0, value_name = "PCT")]
    pub syn_backlog: f64,
    /// SYN-ACK retransmits per second on one listener that mean a SYN flood.
    #[arg(long, default_value_t = 100.0, value_name = "N")]
    pub synack_retransmit_rate: f64,
    /// SYNs per second on one listener, with under half completing, that mean a SYN flood.
    #[arg(long, default_value_t = 1000.0, value_name = "N")]
    pub syn_rate: f64,
}

impl LiveThresholdArgs {
    fn thresholds(&self) -> LiveThresholds {
        LiveThresholds {
            time_wait_warn: self.time_wait_warn,
            time_wait_crit: self.time_wait_crit,
            port_exhaustion_warn_pct: self.port_exhaustion_warn,
            port_exhaustion_crit_pct: self.port_exhaustion_crit,
            close_wait_age_secs: self.close_wait_age.as_secs_f64(),
            close_wait_count: self.close_wait_count,
            per_ip_warn: self.per_ip_warn,
            per_ip_crit: self.per_ip_crit,
            syn_backlog_pct: self.syn_backlog,
            synack_retransmit_rate: self.synack_retransmit_rate,
            syn_rate: self.syn_rate,
        }
    }
}

impl WatchArgs {
    fn shows(&self, t: &Transition) -> bool {
        let at = &t.at;
        !self.quiet_transitions
            && self
                .port
                .is_none_or(|p| at.local_port == p || at.remote_port == p)
            && self.ip.is_none_or(|net| {
                [at.local_ip, at.remote_ip]
                    .into_iter()
                    .any(|ip| net.contains(&ip) || net.contains(&canonical_ip(ip)))
            })
            && (self.state.is_empty() || self.state.contains(&t.old) || self.state.contains(&t.new))
    }
}

/// Counts the user-space side of the pipeline keeps.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Received {
    transitions: u64,
    synack_retransmits: u64,
    syn_requests: u64,
    /// Times the SYN counter was attached (it runs only while SYN trouble is suspected).
    syn_counter_attaches: u64,
    decode_errors: u64,
    /// Transitions from other namespaces (shown with --all-netns, never tallied).
    foreign: u64,
    /// CLOSE -> SYN_SENT and LISTEN -> SYN_RECV seen, to compare with the kernel's
    /// ActiveOpens / PassiveOpens.
    active_opens: u64,
    passive_opens: u64,
    /// Openings the kernel counted that never arrived as events, beyond what the loss
    /// counters explain: silent loss, estimated (a lower bound).
    unaccounted: u64,
}

/// Where the transitions come from.
enum Source {
    Ebpf { probe: Box<Probe>, rings: Rings },
    Poll { previous: poll::Index },
}

/// Everything one watch session keeps.
struct Session<'a> {
    args: &'a WatchArgs,
    style: Style,
    out: io::BufWriter<io::StdoutLock<'static>>,
    clock: Clock,
    tally: Tally,
    detector: Detector,
    proc_root: &'static Path,
    own_netns: Option<u32>,
    /// While /proc is being read, transitions are held here (see Tally::reconcile_window).
    window: Option<Vec<Transition>>,
    received: Received,
    kernel: KernelCounters,
    /// Loss already answered by a reconciliation.
    loss_reconciled: u64,
    syn: SynTracker,
    syn_counters: Option<SynCounters>,
    syn_switch: SynCounterSwitch,
    /// When the SYN counter was last attached, while it is.
    syn_counter_since: Option<u64>,
    syn_counter_failed: bool,
    syn_counter_loaded: bool,
    last_eval_ns: u64,
    time_wait_check: Option<(u64, i64)>,
    last_reconcile: Option<(ReconcileReport, &'static str)>,
    reconciliations: u64,
    close_wait_owners: HashMap<u16, Vec<Process>>,
    close_wait_inodes: HashSet<u64>,
    close_wait_owner_by_inode: HashMap<u64, Process>,
    backlogs: HashMap<(IpAddr, u16), u32>,
    somaxconn: Option<u32>,
    /// net.ipv4.ip_local_port_range, read once at start.
    port_range: PortRange,
    mode: &'static str,
    last_tally: (u64, u64),
    fast: FastWriter,
    /// When loss last triggered a reconciliation (they are expensive: at most one per 10 s).
    last_loss_reconcile_ns: u64,
    last_owner_lookup_ns: u64,
    /// SNMP opens at the baseline, and at the previous evaluation (a second of lag lets
    /// in-flight events arrive before they are missed).
    opens_base: Option<kstats::Opens>,
    opens_prev: Option<kstats::Opens>,
    last_half_open_dump_ns: u64,
}

/// Pending NDJSON bytes written in one go: larger than the BufWriter, so they bypass it,
/// and small enough that the reused buffer stays in cache (the consume bench: 134 -> 129
/// ns per transition against 1 MiB; 64 KiB is also a default pipe's capacity).
const RECORD_FLUSH_BYTES: usize = 64 << 10;

/// The longest a record waits in a ring once traffic stops (no doorbell comes then).
const DRAIN_AFTER: Duration = Duration::from_millis(25);

/// At most one /proc read a second to name the owners of CLOSE_WAIT sockets.
const OWNER_LOOKUP_GAP_NS: u64 = 1_000_000_000;

/// Loss-triggered reconciliations re-read /proc, which is costly under heavy churn.
const LOSS_RECONCILE_GAP_NS: u64 = 10_000_000_000;

pub fn run(args: &WatchArgs, style: Style) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(watch(args, style))
}

async fn watch(args: &WatchArgs, style: Style) -> Result<u8> {
    let own_netns = own_netns().ok();
    let netns = match (args.all_netns, own_netns) {
        (false, Some(inode)) => NetnsFilter::Only(inode),
        _ => NetnsFilter::All,
    };
    // Attach before the baseline is read (in eBPF mode), so nothing falls between.
    let (source, mode_reason) = match args.mode {
        Mode::Poll => (None, "polling /proc (--mode poll)".to_owned()),
        Mode::Ebpf | Mode::Auto => {
            match Probe::load(&LoadOptions {
                netns,
                ring_bytes: args.ring_bytes,
                synack: true,
                state_hook: args.state_hook,
                slot_rings: !args.ring_buffers_only && LoadOptions::default().slot_rings,
            }) {
                Ok(probe) => (Some(probe), String::new()),
                Err(e) if args.mode == Mode::Ebpf => {
                    eprintln!("tcpmon: eBPF unavailable: {e}");
                    return Ok(2);
                }
                Err(e) => {
                    let why = match &e {
                        LoadError::Permission(_) => {
                            "no privilege for eBPF (run as root, or grant CAP_BPF and CAP_PERFMON)"
                                .to_owned()
                        }
                        other => other.to_string(),
                    };
                    (None, format!("eBPF unavailable: {why}; polling /proc every {:?} instead (transitions are inferred from differences)", args.interval))
                }
            }
        }
    };
    let stdout: &'static io::Stdout = Box::leak(Box::new(io::stdout()));
    let port_range = tcpmon::port_range(Path::new("/proc"));
    let tally_defaults = TallyConfig::default();
    let mut session = Session {
        args,
        style,
        out: io::BufWriter::with_capacity(32 << 10, stdout.lock()),
        clock: Clock::now(),
        tally: Tally::new(TallyConfig {
            max_ips: args.max_ips,
            port_range,
            // The kernel's cap on TIME_WAIT sockets in this namespace.
            max_time_wait: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(tally_defaults.max_time_wait),
            // Without transition lines nothing shows the time in a state.
            max_tracked_sockets: if args.quiet_transitions {
                0
            } else {
                tally_defaults.max_tracked_sockets
            },
        }),
        detector: Detector::new(args.thresholds.thresholds()),
        proc_root: Path::new("/proc"),
        own_netns,
        window: None,
        received: Received::default(),
        kernel: KernelCounters::default(),
        loss_reconciled: 0,
        syn: SynTracker::default(),
        syn_counters: None,
        syn_switch: SynCounterSwitch::default(),
        syn_counter_since: None,
        syn_counter_failed: false,
        syn_counter_loaded: false,
        last_eval_ns: monotonic_ns(),
        time_wait_check: None,
        last_reconcile: None,
        reconciliations: 0,
        close_wait_owners: HashMap::new(),
        close_wait_inodes: HashSet::new(),
        close_wait_owner_by_inode: HashMap::new(),
        backlogs: HashMap::new(),
        somaxconn: None,
        port_range,
        mode: if source.is_some() { "ebpf" } else { "poll" },
        last_tally: (monotonic_ns(), 0),
        fast: FastWriter::default(),
        last_loss_reconcile_ns: 0,
        last_owner_lookup_ns: 0,
        opens_base: None,
        opens_prev: None,
        last_half_open_dump_ns: 0,
    };
    release_free_memory();
    let mode_line: (String, Vec<String>);
    let mut source = match source {
        Some(mut probe) => {
            session.syn_counter_loaded = probe.syn_counter_loaded();
            let mut notes = std::mem::take(&mut probe.notes);
            let reader = match tcpmon::priority::apply(args.nice) {
                Ok(nice) => format!("reader at nice {nice}"),
                Err(e) => {
                    notes.push(format!(
                        "could not set the reader's priority ({e}): under a load that keeps every CPU busy it is preempted more often, and the rings fill sooner"
                    ));
                    "reader at its inherited priority".to_owned()
                }
            };
            let layout = probe.ring_layout;
            let slot_layout = probe.slot_rings.as_ref().map(|s| s.layout());
            let rings = Rings::new(std::mem::take(&mut probe.rings), probe.slot_rings.take())?;
            let scope = match netns {
                NetnsFilter::All => "all network namespaces".to_owned(),
                NetnsFilter::Only(inode) => format!("network namespace {inode}"),
            };
            mode_line = (
                format!(
                    "watching TCP state transitions with eBPF ({scope}; {}; {}ring buffers {} x {} KiB; {}; {reader})",
                    probe.state_hook.describe(),
                    slot_layout.map_or_else(String::new, |l| format!(
                        "slot rings {} x {} KiB, ",
                        l.cpus,
                        l.bytes() / u64::from(l.cpus) / 1024
                    )),
                    layout.used,
                    layout.each / 1024,
                    if probe.syn_counter_loaded() {
                        "SYN counter attached on the first sign of SYN trouble"
                    } else {
                        "no SYN counter"
                    }
                ),
                notes,
            );
            Source::Ebpf {
                probe: Box::new(probe),
                rings,
            }
        }
        None => {
            mode_line = (mode_reason, Vec::new());
            Source::Poll {
                previous: poll::Index::default(),
            }
        }
    };
    let mut logger = match &mut source {
        Source::Ebpf { probe, .. } => probe.take_logger(),
        Source::Poll { .. } => None,
    };
    if let Source::Ebpf { .. } = source {
        // Read after attach: events before this read are counted but not in the delta, so
        // the silent-loss estimate can only err low.
        session.opens_base = std::fs::read_to_string("/proc/net/snmp")
            .ok()
            .and_then(|t| kstats::snmp_opens(&t));
    }
    // Baseline.
    let sockets = session.reconcile("baseline", &mut source)?;
    if let Source::Poll { previous } = &mut source {
        *previous = poll::Index::new(&sockets);
    }
    session.refresh_listener_info();
    // Said once the tallies are valid: attached, and the baseline read.
    session.mode_line(&mode_line.0, &mode_line.1)?;
    session.flush()?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(args.interval);
    let mut tally_tick = tokio::time::interval(args.tally_interval);
    let mut reconcile_tick = tokio::time::interval(args.reconcile_interval);
    // The kernel batches wakeups (see tcpmon-ebpf): pick up what a batch left behind,
    // DRAIN_AFTER after the last read (under load the doorbells come first, and a
    // periodic timer would only add wakeups).
    let drain_timer = tokio::time::sleep(DRAIN_AFTER);
    tokio::pin!(drain_timer);
    for t in [&mut tick, &mut tally_tick, &mut reconcile_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.tick().await;
    }
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stop = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);

    loop {
        let ring_ready = async {
            match &mut source {
                Source::Ebpf { rings, .. } => rings.woken().await,
                Source::Poll { .. } => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ring_ready => {
                if let Source::Ebpf { rings, .. } = &mut source {
                    session.drain(rings)?;
                }
                if let Some(logger) = logger.as_mut() {
                    logger.flush();
                }
                session.flush()?;
                drain_timer.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER);
            }
            _ = tick.tick() => {
                if let Source::Poll { .. } = source {
                    session.poll_once(&mut source)?;
                }
                session.evaluate(&mut source)?;
                session.flush()?;
            }
            () = &mut drain_timer => {
                if let Source::Ebpf { rings, .. } = &mut source {
                    session.drain(rings)?;
                    session.flush()?;
                }
                drain_timer.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER);
            }
            _ = tally_tick.tick() => {
                session.write_tally()?;
                session.flush()?;
            }
            _ = reconcile_tick.tick() => {
                if let Source::Ebpf { .. } = source {
                    session.reconcile("periodic", &mut source)?;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut stop => break,
        }
    }
    if let Source::Ebpf { rings, probe } = &mut source {
        session.drain_rings(rings, true)?;
        session.kernel = probe.counters().unwrap_or(session.kernel);
    }
    session.write_tally()?;
    session.flush()?;
    drop(source);
    // One line for whoever reads stderr (and for scripts that sent stdout elsewhere).
    eprintln!(
        "tcpmon: detached ({} mode): {} transitions, {} lost {}, {} reconciliation{}",
        session.mode,
        session.received.transitions,
        session.lost(),
        session.loss_breakdown(),
        session.reconciliations,
        tcpmon::rules::plural(session.reconciliations)
    );
    Ok(0)
}

/// Hands freed heap back to the kernel: parsing the kernel's BTF at start-up and each
/// snapshot read leave tens of MiB free in the allocator, which would otherwise stay in
/// the resident set of a process meant to run for days.
fn release_free_memory() {
    // SAFETY: glibc's malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// The listener a request or handshake belongs to: its local address and port.
fn listener_of(at: &Endpoints) -> (IpAddr, u16) {
    (canonical_ip(at.local_ip), at.local_port)
}

impl Session<'_> {
    /// Events lost, all causes.
    fn lost(&self) -> u64 {
        self.kernel.lost() + self.received.decode_errors + self.received.unaccounted
    }

    /// "(ring buffer full N, ...)": every way an event can go missing, each counted.
    fn loss_breakdown(&self) -> String {
        let unreadable = if self.kernel.sock_unreadable > 0 {
            format!(", socket unreadable {}", self.kernel.sock_unreadable)
        } else {
            String::new()
        };
        format!(
            "(ring buffer full {}, kernel skipped {} (any netns){unreadable}, undecodable {}, unaccounted vs SNMP {})",
            self.kernel.ringbuf_full,
            self.kernel.recursion_misses,
            self.received.decode_errors,
            self.received.unaccounted
        )
    }

    fn now_text(&self) -> String {
        let wall = self.clock.wall(monotonic_ns());
        humantime::format_rfc3339_millis(wall).to_string()
    }

    fn mode_line(&mut self, reason: &str, notes: &[String]) -> Result<()> {
        if self.args.json {
            json_line(
                &mut self.out,
                &serde_json::json!({"type": "mode", "mode": self.mode, "reason": reason, "notes": notes}),
            )?;
        } else {
            writeln!(self.out, "tcpmon: {reason}")?;
        }
        for note in notes {
            eprintln!("tcpmon: note: {note}");
        }
        if self.mode == "poll" && self.args.mode == Mode::Auto {
            eprintln!("tcpmon: {reason}");
        }
        self.out.flush()?;
        Ok(())
    }

    /// Reads /proc, rebuilds the tallies from it and says how far off they were. Events
    /// queued before the read are applied first; those that arrive during it are resolved
    /// against the snapshot so none counts twice.
    fn reconcile(&mut self, reason: &'static str, source: &mut Source) -> Result<Vec<Socket>> {
        if let Source::Ebpf { rings, .. } = source {
            self.drain(rings)?;
        }
        let at = monotonic_ns();
        let snapshot =
            Snapshot::read(self.proc_root).context("reading the socket tables from /proc")?;
        let sockets: Vec<Socket> = snapshot.rows().filter_map(|r| r.socket.ok()).collect();
        self.window = Some(Vec::new());
        if let Source::Ebpf { rings, .. } = source {
            self.drain(rings)?;
        }
        let window = self.window.take().unwrap_or_default();
        let report = self.tally.reconcile_window(&sockets, at, &window);
        self.reconciliations += 1;
        // Owners of CLOSE_WAIT sockets, by local port, for the alerts that name them.
        let wanted: HashSet<u64> = sockets
            .iter()
            .filter(|s| s.state == TcpState::CloseWait && s.inode != 0)
            .map(|s| s.inode)
            .collect();
        // The walk of /proc/PID/fd is the costly part; the same CLOSE_WAIT sockets as last
        // time (the usual case when polling every second) have the same owners.
        if wanted != self.close_wait_inodes {
            self.close_wait_owner_by_inode = find_owners(self.proc_root, &wanted).by_inode;
            self.close_wait_inodes = wanted;
        }
        let owners = &self.close_wait_owner_by_inode;
        self.close_wait_owners.clear();
        for s in sockets.iter().filter(|s| s.state == TcpState::CloseWait) {
            if let Some(p) = owners.get(&s.inode) {
                let list = self.close_wait_owners.entry(s.local_port).or_default();
                if !list.contains(p) {
                    list.push(p.clone());
                }
            }
        }
        if reason != "baseline" && reason != "poll" && report.total_abs_error > 0 {
            log::info!(
                "reconciliation ({reason}) corrected {} sockets",
                report.total_abs_error
            );
        }
        self.last_reconcile = Some((report, reason));
        release_free_memory();
        Ok(sockets)
    }

    fn refresh_listener_info(&mut self) {
        if let Ok(backlogs) = diag::listener_backlogs_by_address() {
            self.backlogs = backlogs;
        }
        self.somaxconn = std::fs::read_to_string(self.proc_root.join("sys/net/core/somaxconn"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
    }

    /// Applies what the rings hold, in time order.
    fn drain(&mut self, rings: &mut Rings) -> Result<()> {
        self.drain_rings(rings, false)
    }

    /// Reads the rings and applies, in time order, what is safe to apply: everything
    /// when `everything` (at detach, records held for ordering included).
    fn drain_rings(&mut self, rings: &mut Rings, everything: bool) -> Result<()> {
        let mut problems = Vec::new();
        // Records are handled as the merge hands them out, without an intermediate copy.
        // A failed write ends the watch: the records after it are left alone.
        let mut failed = None;
        rings.read(
            everything,
            |raw| {
                if failed.is_none() {
                    failed = self.ring_record(raw).err();
                }
            },
            &mut problems,
        );
        for problem in problems {
            self.received.decode_errors += 1;
            log::warn!("undecodable ring-buffer record: {problem}");
        }
        failed.map_or(Ok(()), Err)
    }

    fn ring_record(&mut self, raw: &SockEvent) -> Result<()> {
        match decode_event(raw) {
            Ok(Record::Transition(t)) => self.transition(&t, Origin::Ebpf)?,
            Ok(Record::SynAckRetransmit(at)) => {
                self.received.synack_retransmits += 1;
                self.syn.synack_retransmit(listener_of(&at));
            }
            Ok(Record::SynRequest(at)) => {
                self.received.syn_requests += 1;
                self.syn.syn(listener_of(&at), canonical_ip(at.remote_ip));
            }
            Err(e) => {
                self.received.decode_errors += 1;
                log::warn!("undecodable ring-buffer record: {e}");
            }
        }
        Ok(())
    }

    fn transition(&mut self, t: &Transition, origin: Origin) -> Result<()> {
        let ours =
            origin == Origin::Inferred || t.at.netns == 0 || Some(t.at.netns) == self.own_netns;
        let applied = if !ours {
            self.received.foreign += 1;
            None
        } else {
            self.received.transitions += 1;
            if origin == Origin::Ebpf {
                match (t.old, t.new) {
                    (TcpState::Listen, TcpState::SynRecv) => {
                        self.received.passive_opens += 1;
                        self.syn.completed(listener_of(&t.at));
                    }
                    (TcpState::Close, TcpState::SynSent) => self.received.active_opens += 1,
                    _ => {}
                }
            }
            Some(match self.window.as_mut() {
                Some(window) => {
                    window.push(*t);
                    self.tally.observe(t)
                }
                None => self.tally.apply(t),
            })
        };
        if self.args.shows(t) {
            let micros = applied.and_then(|a| a.micros_in_old);
            if self.args.json {
                // Records pile up in one buffer written out in large pieces (see
                // flush_records), sparing a copy through the BufWriter per record.
                self.fast.json(t, &self.clock, micros, origin);
                if self.fast.buf.len() >= RECORD_FLUSH_BYTES {
                    self.flush_records()?;
                }
            } else {
                TransitionRecord::new(t, &self.clock, micros, origin).write_human(&mut self.out)?;
            }
        }
        if applied.is_some_and(|a| a.new_listener) {
            let by = t.task.map(|task| Process {
                pid: task.pid,
                comm: task.comm(),
            });
            let alert = self.detector.new_listener(
                canonical_ip(t.at.local_ip),
                t.at.local_port,
                by.as_ref(),
            );
            self.write_alert(&alert)?;
        }
        Ok(())
    }

    fn poll_once(&mut self, source: &mut Source) -> Result<()> {
        let sockets = self.reconcile("poll", source)?;
        let Source::Poll { previous } = source else {
            return Ok(());
        };
        let now = poll::Index::new(&sockets);
        let ts = monotonic_ns();
        for t in poll::diff(previous, &now, ts) {
            let listener_born = t.old == TcpState::Close && t.new == TcpState::Listen;
            self.transition(&t, Origin::Inferred)?;
            if listener_born && !previous.is_empty() {
                let alert =
                    self.detector
                        .new_listener(canonical_ip(t.at.local_ip), t.at.local_port, None);
                self.write_alert(&alert)?;
            }
        }
        *previous = now;
        Ok(())
    }

    fn evaluate(&mut self, source: &mut Source) -> Result<()> {
        let now = monotonic_ns();
        self.tally.expire(now);
        // TIME_WAIT: reconcile the inferred count with sockstat, every evaluation.
        if let Ok(text) = std::fs::read_to_string(self.proc_root.join("net/sockstat")) {
            if let Some(tw) = kstats::sockstat_time_wait(&text) {
                let error = self.tally.reconcile_time_wait(tw);
                self.time_wait_check = Some((now, error));
            }
        }
        let counters = std::fs::read_to_string(self.proc_root.join("net/netstat"))
            .map(|t| SynCounters::from_tcp_ext(&kstats::tcp_ext(&t)))
            .unwrap_or_default();
        let syn_counters = self
            .syn_counters
            .map(|prev| counters.since(&prev))
            .unwrap_or_default();
        self.syn_counters = Some(counters);
        let window_start = self.last_eval_ns;
        let window_secs = now.saturating_sub(window_start) as f64 / 1e9;
        self.last_eval_ns = now;
        let syn = self.syn.take();
        let syn_coverage = match self.syn_counter_since {
            Some(at) if at <= window_start => SynCoverage::Whole,
            Some(_) => SynCoverage::Partial,
            None => SynCoverage::None,
        };
        // Half-open requests never fire the state tracepoint: poll them (netlink), when
        // anything hints at them (see half_open_worth_dumping).
        if let Source::Ebpf { probe, .. } = source {
            if half_open_worth_dumping(
                syn_trouble_hinted(&syn, &syn_counters, self.tally.half_open_total()),
                probe.syn_counter_loaded(),
                self.tally.half_open_total(),
                now.saturating_sub(self.last_half_open_dump_ns),
            ) {
                self.last_half_open_dump_ns = now;
                if let Ok(half_open) = diag::half_open() {
                    self.tally.set_half_open(half_open);
                }
            }
            // After the dump, which can be the first sign of trouble.
            let hinted = syn_trouble_hinted(&syn, &syn_counters, self.tally.half_open_total());
            let wanted = self.syn_switch.wanted(hinted, now);
            if probe.syn_counter_loaded() && wanted != probe.syn_counter_attached() {
                match probe.set_syn_counter(wanted) {
                    Ok(()) => {
                        self.syn_counter_since = wanted.then_some(now);
                        self.received.syn_counter_attaches += u64::from(wanted);
                    }
                    // Once: it would fail the same way every second.
                    Err(e) if !self.syn_counter_failed => {
                        self.syn_counter_failed = true;
                        log::warn!("SYN counter (cgroup sock_ops): {e}");
                    }
                    Err(_) => {}
                }
            }
            match probe.counters() {
                Ok(kernel) => self.kernel = kernel,
                Err(e) => log::warn!("reading kernel counters: {e}"),
            }
        }
        self.refresh_listener_info();
        // Silent loss: openings the kernel counted a second ago that never arrived.
        if let Source::Ebpf { rings, .. } = source {
            self.drain(rings)?;
            let opens = std::fs::read_to_string(self.proc_root.join("net/snmp"))
                .ok()
                .and_then(|t| kstats::snmp_opens(&t));
            if let (Some(base), Some(prev)) = (self.opens_base, self.opens_prev) {
                let seen = kstats::Opens {
                    active: self.received.active_opens,
                    passive: self.received.passive_opens,
                };
                let reported = self.kernel.lost() + self.received.decode_errors;
                self.received.unaccounted = self
                    .received
                    .unaccounted
                    .max(kstats::unexplained_opens(base, prev, seen, reported));
            }
            self.opens_prev = opens;
        }
        // Loss makes the live counts drift: rebuild them from /proc.
        let lost = self.lost();
        if lost > self.loss_reconciled
            && now.saturating_sub(self.last_loss_reconcile_ns) >= LOSS_RECONCILE_GAP_NS
        {
            self.loss_reconciled = lost;
            self.last_loss_reconcile_ns = now;
            self.reconcile("loss", source)?;
        }
        // A CLOSE_WAIT port about to be alerted whose owner is not known yet: look it up
        // now rather than at the next periodic reconciliation, so the alert names the
        // process. Only for ports that cross a threshold: under churn, CLOSE_WAIT comes
        // and goes all the time and each lookup re-reads /proc.
        let mut view = self.tally.view(20);
        let t = &self.detector.thresholds;
        let alerting = view
            .close_wait_by_port
            .iter()
            .any(|(port, count, since, _)| {
                let age = now.saturating_sub(*since) as f64 / 1e9;
                (age >= t.close_wait_age_secs || *count > t.close_wait_count)
                    && !self.close_wait_owners.contains_key(port)
            });
        if matches!(source, Source::Ebpf { .. })
            && alerting
            && now.saturating_sub(self.last_owner_lookup_ns) >= OWNER_LOOKUP_GAP_NS
        {
            self.last_owner_lookup_ns = now;
            self.reconcile("owners", source)?;
            view = self.tally.view(20);
        }
        // The maps are lent to the detector for this evaluation, not copied.
        let inputs = Inputs {
            now_ns: now,
            window_secs,
            syn,
            syn_counters,
            syn_coverage,
            backlogs: std::mem::take(&mut self.backlogs),
            somaxconn: self.somaxconn,
            port_range: self.port_range,
            close_wait_owners: std::mem::take(&mut self.close_wait_owners),
        };
        let alerts = self.detector.evaluate(&view, &inputs);
        (self.backlogs, self.close_wait_owners) = (inputs.backlogs, inputs.close_wait_owners);
        for alert in alerts {
            self.write_alert(&alert)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_records()?;
        self.out.flush()?;
        Ok(())
    }

    /// Writes pending transition records; everything else that prints calls this first,
    /// so output keeps the order things happened in.
    fn flush_records(&mut self) -> Result<()> {
        if !self.fast.buf.is_empty() {
            self.out.write_all(&self.fast.buf)?;
            self.fast.buf.clear();
        }
        Ok(())
    }

    fn write_alert(&mut self, alert: &Alert) -> Result<()> {
        self.flush_records()?;
        if self.args.json {
            #[derive(Serialize)]
            struct Record<'a> {
                #[serde(rename = "type")]
                kind: &'static str,
                time: String,
                #[serde(flatten)]
                alert: &'a Alert,
            }
            let time = self.now_text();
            json_line(
                &mut self.out,
                &Record {
                    kind: "alert",
                    time,
                    alert,
                },
            )?;
        } else {
            let label = match alert.status {
                Status::Cleared => "CLEARED".to_owned(),
                _ => self.style.severity(alert.severity),
            };
            writeln!(
                self.out,
                "{} ALERT {label} [{}] {}",
                &self.now_text()[11..23],
                alert.rule,
                alert.message
            )?;
        }
        Ok(())
    }

    fn write_tally(&mut self) -> Result<()> {
        self.flush_records()?;
        let view = self.tally.view(5);
        let now = monotonic_ns();
        let elapsed = now.saturating_sub(self.last_tally.0) as f64 / 1e9;
        let rate = (self.received.transitions - self.last_tally.1) as f64 / elapsed.max(1e-3);
        self.last_tally = (now, self.received.transitions);
        let lost = self.lost();
        if self.args.json {
            let reconcile = self.last_reconcile.as_ref().map(|(r, why)| {
                serde_json::json!({
                    "reason": why,
                    "time": humantime::format_rfc3339_millis(self.clock.wall(r.at_ns)).to_string(),
                    "error": r.error,
                    "total_abs_error": r.total_abs_error,
                })
            });
            let record = serde_json::json!({
                "type": "tally",
                "time": self.now_text(),
                "mode": self.mode,
                "states": view.states,
                "time_wait": {
                    "count": view.time_wait,
                    "sockstat_error": self.time_wait_check.map(|c| c.1),
                    "sockstat_time": self.time_wait_check.map(|c| humantime::format_rfc3339_millis(self.clock.wall(c.0)).to_string()),
                    // Inferred entries not held past the kernel's tcp_max_tw_buckets.
                    "not_held": self.tally.time_wait_unheld,
                },
                "reconcile": reconcile,
                "reconciliations": self.reconciliations,
                "per_ip": {
                    "top": view.per_ip_top.iter().map(|(ip, n)| serde_json::json!({"ip": ip, "count": n})).collect::<Vec<_>>(),
                    "tracked": view.per_ip_tracked,
                    "aggregated": view.per_ip_aggregated,
                },
                "close_wait": view.close_wait_by_port.iter().map(|(p, n, since, known)| serde_json::json!({
                    "port": p, "count": n, "oldest_secs": now.saturating_sub(*since) as f64 / 1e9, "age_known": known,
                    "owners": self.close_wait_owners.get(p),
                })).collect::<Vec<_>>(),
                "half_open": view.half_open.iter().map(|(ip, port, h)| serde_json::json!({"listener": endpoint(*ip, *port), "count": h.count, "sources": h.sources})).collect::<Vec<_>>(),
                "established_by_port": view.established_by_port.iter().map(|(port, n)| serde_json::json!({"port": port, "count": n})).collect::<Vec<_>>(),
                "listeners": view.listeners.iter().map(|(ip, port, n)| serde_json::json!({"listener": endpoint(*ip, *port), "sockets": n})).collect::<Vec<_>>(),
                "alerts_active": self.detector.active().map(|(rule, subject, sev)| serde_json::json!({"rule": rule, "subject": subject, "severity": sev})).collect::<Vec<_>>(),
                "received": self.received,
                "syn_counter": match (self.syn_counter_since, self.syn_counter_loaded) {
                    (Some(_), _) => "attached",
                    // Wanted, but attaching failed (the warning said why); retried.
                    (None, true) if self.syn_counter_failed && self.syn_switch.holding() => "attach failed",
                    (None, true) => "idle",
                    (None, false) => "unavailable",
                },
                "kernel": self.kernel,
                "lost": lost,
                "inconsistencies": view.inconsistencies,
                "transitions_per_sec": rate,
            });
            json_line(&mut self.out, &record)?;
            return Ok(());
        }
        let s = |name: &str| view.states.get(name).copied().unwrap_or(0);
        let tw_check = self
            .time_wait_check
            .map_or_else(String::new, |(_, e)| format!(" (sockstat {e:+})"));
        let top = view
            .per_ip_top
            .first()
            .map_or_else(String::new, |(ip, n)| format!(" | top IP {ip} {n}"));
        let aggregated = if view.per_ip_aggregated > 0 {
            format!(
                " ({} sockets from untracked IPs aggregated)",
                view.per_ip_aggregated
            )
        } else {
            String::new()
        };
        let recon = self
            .last_reconcile
            .as_ref()
            .map_or_else(String::new, |(r, why)| {
                format!(" | last reconcile ({why}) off by {}", r.total_abs_error)
            });
        let loss = if self.mode == "poll" {
            format!(
                "polled every {:?}: transitions between polls are not seen",
                self.args.interval
            )
        } else {
            format!("lost {lost} {}", self.loss_breakdown())
        };
        writeln!(
            self.out,
            "{} tally [{}] ESTAB {} SYN_SENT {} SYN_RECV {} FIN_WAIT1 {} FIN_WAIT2 {} TIME_WAIT {}{tw_check} CLOSE_WAIT {} LAST_ACK {} CLOSING {} LISTEN {} | {rate:.0} transitions/s | {loss}{recon}{top}{aggregated}",
            &self.now_text()[11..23],
            self.mode,
            s("ESTABLISHED"),
            s("SYN_SENT"),
            s("SYN_RECV"),
            s("FIN_WAIT1"),
            s("FIN_WAIT2"),
            view.time_wait,
            s("CLOSE_WAIT"),
            s("LAST_ACK"),
            s("CLOSING"),
            s("LISTEN"),
        )?;
        Ok(())
    }
}
