//! The live engine: a source of transitions (the kernel's rings, or snapshots diffed when
//! polling) feeds the tally and the detectors; typed records go to a [`Sink`].
//!
//! The engine is a synchronous state machine ([`Engine::drain`], [`Engine::tick`],
//! [`Engine::write_tally`], [`Engine::reconcile`], [`Engine::finish`]) over a [`Host`]
//! and an [`EventSource`]; [`Engine::run`] drives it on tokio timers until a stop future
//! completes. Tests drive the state machine with fakes, without root.
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    io,
    net::IpAddr,
    time::Duration,
};

use tcpmon_common::SockEvent;

use super::{
    host::Host,
    loss::{self, LossTracker, Received},
    namespaces::{NamespaceRead, Namespaces},
    poll,
    record::{
        ActiveAlert, AlertRecord, CloseWaitPort, DestinationRecord, FamilyStates, HalfOpenListener,
        IpCountRecord, ListenerRecord, ModeRecord, PairCount, PerIpTally, PortCountRecord,
        ReconcileSummary, SummaryRecord, SynCounterState, SynTotals, TallyRecord, TimeWaitTally,
        Timestamp, TransitionEvent, SCHEMA_VERSION,
    },
    rules::{Alert, Detector, Inputs},
    source::EventSource,
    syn::{half_open_worth_dumping, syn_trouble_hinted, SynCounterSwitch, SynCoverage, SynTracker},
    tally::{ReconcileReport, Tally, TallyConfig},
};
use crate::{
    ebpf::{
        decode::{decode_event, Record},
        KernelCounters,
    },
    host::{
        clock::Clock, diag::ListenerQueues, kstats::SynCounters, netns::Namespace, proc_net::Socket,
    },
    model::{
        canonical_ip, endpoint, EndpointFilter, Endpoints, Origin, PortRange, Process, TcpState,
        Transition,
    },
    snapshot::SnapshotError,
};

/// Where typed records go. Called on the engine's thread; a slow sink slows the engine
/// (and an error ends it), so sinks that write somewhere slow buffer or drop, and say so.
pub trait Sink {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()>;
    /// The hot path: up to hundreds of thousands a second.
    fn transition(&mut self, event: &TransitionEvent<'_>) -> io::Result<()>;
    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()>;
    fn tally(&mut self, record: &TallyRecord) -> io::Result<()>;
    fn summary(&mut self, record: &SummaryRecord) -> io::Result<()>;
    /// End of a batch: write out what is buffered.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Which transitions become records (the tallies always see all of them).
#[derive(Clone, Debug, Default)]
pub struct TransitionFilter {
    /// A port, or an address in a network, at either end.
    pub endpoints: EndpointFilter,
    /// Into or out of one of these states (empty: any).
    pub states: Vec<TcpState>,
}

impl TransitionFilter {
    pub fn matches(&self, t: &Transition) -> bool {
        let at = &t.at;
        self.endpoints
            .matches((at.local_ip, at.local_port), (at.remote_ip, at.remote_port))
            && (self.states.is_empty()
                || self.states.contains(&t.old)
                || self.states.contains(&t.new))
    }
}

/// How the engine runs; built from flags by the binary, or by any library caller.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Evaluate alerts and poll the cheap counters (and, polling, the socket table).
    pub interval: Duration,
    /// Emit a tally record this often.
    pub tally_interval: Duration,
    /// Rebuild the tallies from a snapshot this often (and after loss).
    pub reconcile_interval: Duration,
    pub thresholds: crate::model::Thresholds,
    /// Remote IPs tallied individually (the rest aggregated, and said to be).
    pub max_ips: usize,
    /// Transitions that become records; `None`: none do (the engine then also skips
    /// tracking each socket's time in its state).
    pub transitions: Option<TransitionFilter>,
    /// The network namespace whose sockets are tallied (`None`: unknown, every event
    /// counts); other namespaces' transitions are still shown when the source sends them.
    pub own_netns: Option<u32>,
    /// Entries of each list in a tally record (remote IPs, ports, destinations).
    pub top: usize,
    /// Tally other network namespaces too, at most this many (`--all-netns`).
    pub max_netns: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            tally_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(30),
            thresholds: crate::model::Thresholds::DEFAULT,
            max_ips: 65_536,
            transitions: Some(TransitionFilter::default()),
            own_netns: None,
            top: 5,
            max_netns: None,
        }
    }
}

/// Why a config was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} of {value:?} is outside {min:?}..={max:?}")]
    Interval {
        name: &'static str,
        value: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("--max-ips must be at least 1")]
    MaxIps,
    #[error("--top must be from 1 to {max}", max = EngineConfig::MAX_TOP)]
    Top,
    #[error("--max-netns must be at least 1")]
    MaxNetns,
    #[error(transparent)]
    Thresholds(#[from] crate::model::InvalidThresholds),
}

impl EngineConfig {
    /// The shortest interval accepted: below it the timers would spin.
    pub const MIN_INTERVAL: Duration = crate::model::duration::MIN;
    /// The longest: ten years.
    pub const MAX_INTERVAL: Duration = crate::model::duration::MAX;
    /// The most entries a list of a tally record may have: it bounds every label set the
    /// exporter derives from them.
    pub const MAX_TOP: usize = 1000;

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("--interval", self.interval),
            ("--tally-interval", self.tally_interval),
            ("--reconcile-interval", self.reconcile_interval),
        ] {
            if !(Self::MIN_INTERVAL..=Self::MAX_INTERVAL).contains(&value) {
                return Err(ConfigError::Interval {
                    name,
                    value,
                    min: Self::MIN_INTERVAL,
                    max: Self::MAX_INTERVAL,
                });
            }
        }
        if self.max_ips == 0 {
            return Err(ConfigError::MaxIps);
        }
        if !(1..=Self::MAX_TOP).contains(&self.top) {
            return Err(ConfigError::Top);
        }
        if self.max_netns == Some(0) {
            return Err(ConfigError::MaxNetns);
        }
        Ok(self.thresholds.validate()?)
    }
}

/// Why the engine stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("reading the socket table")]
    Snapshot(#[from] SnapshotError),
    #[error("writing output")]
    Output(#[from] io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why the tallies were rebuilt from a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Baseline,
    /// Poll mode: every interval's snapshot.
    Poll,
    Periodic,
    /// Events were lost.
    Loss,
    /// A CLOSE_WAIT alert needed its owner's name.
    Owners,
}

impl Reason {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Poll => "poll",
            Self::Periodic => "periodic",
            Self::Loss => "loss",
            Self::Owners => "owners",
        }
    }
}

/// At most one snapshot read a second to name the owners of CLOSE_WAIT sockets.
const OWNER_LOOKUP_GAP_NS: u64 = 1_000_000_000;

/// The longest a record waits in a ring once traffic stops (no doorbell comes then).
const DRAIN_AFTER: Duration = Duration::from_millis(25);

/// Top entries of each list in the view the detectors evaluate.
const DETECTOR_TOP: usize = 20;

/// Listeners whose SYN totals are kept apart; beyond, they add up under one entry.
const MAX_SYN_LISTENERS: usize = 4096;

/// The SYN side's state between evaluations.
#[derive(Debug, Default)]
struct SynState {
    tracker: SynTracker,
    /// TcpExt counters at the previous evaluation.
    counters: Option<SynCounters>,
    switch: SynCounterSwitch,
    /// When the SYN counter was last attached, while it is.
    attached_since: Option<u64>,
    attach_failed: bool,
    last_half_open_dump_ns: u64,
    /// SYNs and SYN-ACK retransmits per local address since the start (bounded by
    /// MAX_SYN_LISTENERS; the rest under `syn_totals_other`).
    totals: HashMap<(IpAddr, u16), (u64, u64)>,
    totals_other: (u64, u64),
}

/// Owners of CLOSE_WAIT sockets, kept between reconciliations.
#[derive(Debug, Default)]
struct Owners {
    by_port: HashMap<u16, Vec<Process>>,
    /// The CLOSE_WAIT inodes the last lookup was for, and what it found.
    inodes: HashSet<u64>,
    by_inode: HashMap<u64, Process>,
    last_lookup_ns: u64,
}

/// The live engine over host `H` and event source `S` (`None` of it when polling).
pub struct Engine<H: Host, S: EventSource> {
    cfg: EngineConfig,
    host: H,
    source: Option<S>,
    mode: ModeRecord,
    clock: Clock,
    started_ns: u64,
    tally: Tally,
    detector: Detector,
    /// While the socket table is being read, transitions are held here (see
    /// Tally::reconcile_window).
    window: Option<Vec<Transition>>,
    received: Received,
    /// Tallied transitions per (old, new).
    pairs: Box<[[u64; 12]; 12]>,
    kernel: KernelCounters,
    loss: LossTracker,
    syn: SynState,
    last_eval_ns: u64,
    time_wait_check: Option<(u64, i64)>,
    last_reconcile: Option<(ReconcileReport, Reason)>,
    reconciliations: u64,
    owners: Owners,
    /// Listener queues by address, from the last sock_diag dump.
    queues: HashMap<(IpAddr, u16), ListenerQueues>,
    backlogs: HashMap<(IpAddr, u16), u32>,
    somaxconn: Option<u32>,
    port_range: PortRange,
    /// When the last tally was written, and the transitions received by then.
    last_tally: (u64, u64),
    /// Polling: the previous snapshot, indexed.
    previous: poll::Index,
    problems: Vec<crate::ebpf::decode::DecodeError>,
    /// Other namespaces' tallies (`--all-netns`).
    others: Option<Namespaces>,
    last_discovery_ns: u64,
    last_other_owners_ns: Option<u64>,
    /// Other namespaces being read on their own thread.
    others_read: Option<OthersRead>,
    last_other_owner_lookup_ns: Option<u64>,
}

/// A read of other namespaces under way.
struct OthersRead {
    handle: std::thread::JoinHandle<Vec<NamespaceRead>>,
    /// It baselines namespaces (their first read).
    baseline: bool,
}

impl<H: Host, S: EventSource> Engine<H, S> {
    /// Reads the baseline (the source, when there is one, is already attached, so nothing
    /// falls between the two), then emits the mode record: the tallies are valid from
    /// here on.
    pub fn start(
        cfg: EngineConfig,
        mut host: H,
        source: Option<S>,
        mode: ModeRecord,
        sink: &mut impl Sink,
    ) -> Result<Self, EngineError> {
        cfg.validate()?;
        let port_range = host.port_range();
        let tally_defaults = TallyConfig::default();
        let tally_config = TallyConfig {
            max_ips: cfg.max_ips,
            port_range,
            max_time_wait: host.max_time_wait().unwrap_or(tally_defaults.max_time_wait),
            // Without transition records nothing shows the time in a state.
            max_tracked_sockets: if cfg.transitions.is_some() {
                tally_defaults.max_tracked_sockets
            } else {
                0
            },
        };
        let tally = Tally::new(tally_config.clone());
        let others = cfg.max_netns.map(|max| {
            let own = cfg
                .own_netns
                .map(u64::from)
                .or_else(|| host.own_namespace());
            Namespaces::new(max, own, tally_config, cfg.thresholds.clone())
        });
        let now = host.now_ns();
        let clock = Clock::fixed(host.wall_now(), now);
        let mut engine = Self {
            detector: Detector::new(cfg.thresholds.clone()),
            cfg,
            host,
            source,
            mode,
            clock,
            started_ns: now,
            tally,
            window: None,
            received: Received::default(),
            pairs: Box::new([[0; 12]; 12]),
            kernel: KernelCounters::default(),
            loss: LossTracker::default(),
            syn: SynState::default(),
            last_eval_ns: now,
            time_wait_check: None,
            last_reconcile: None,
            reconciliations: 0,
            owners: Owners::default(),
            queues: HashMap::new(),
            backlogs: HashMap::new(),
            somaxconn: None,
            port_range,
            last_tally: (now, 0),
            previous: poll::Index::default(),
            problems: Vec::new(),
            others,
            last_discovery_ns: now,
            last_other_owners_ns: None,
            others_read: None,
            last_other_owner_lookup_ns: None,
        };
        engine.host.release_memory();
        if engine.source.is_some() {
            let opens = engine.host.snmp_opens();
            engine.loss.set_base(opens);
        }
        let sockets = engine.reconcile(Reason::Baseline, sink)?;
        if engine.source.is_none() {
            engine.previous = poll::Index::new(&sockets);
        }
        engine.refresh_listener_info();
        let events = engine.discover_namespaces(true, sink)?;
        sink.mode(&engine.mode)?;
        for event in &events {
            engine.emit_alert(event, sink)?;
        }
        sink.flush()?;
        Ok(engine)
    }

    /// Looks for namespaces that appeared or went, and baselines the new ones (on a
    /// thread of their own unless `inline`). Returns the events to report.
    fn discover_namespaces(
        &mut self,
        inline: bool,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        let Some(others) = self.others.as_mut() else {
            return Ok(Vec::new());
        };
        self.last_discovery_ns = self.host.now_ns();
        let found = self.host.namespaces();
        let host = &mut self.host;
        let mut events = others.update(found, |ns| host.namespace_port_range(ns));
        events.extend(self.reconcile_others(true, inline, sink)?);
        Ok(events)
    }

    /// Reads other namespaces (only those without a baseline when `pending_only`) and
    /// rebuilds their tallies; transitions that arrive meanwhile are resolved against the
    /// reads. On the real machine the reads run on a thread of their own (under churn a
    /// socket table read takes seconds, and the rings must keep draining): the result is
    /// applied when it is ready (see `poll_others_read`). One read at a time.
    fn reconcile_others(
        &mut self,
        pending_only: bool,
        inline: bool,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        if self.others_read.is_some() {
            return Ok(Vec::new());
        }
        let targets = match &self.others {
            Some(others) if pending_only => others.pending(),
            Some(others) => others.all(),
            None => return Ok(Vec::new()),
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        self.drain_source(false, sink)?;
        if let Some(others) = self.others.as_mut() {
            others.open_window(&targets);
        }
        let mut reader = self.host.namespace_reader();
        let mut read_all = move |targets: Vec<Namespace>| -> Vec<NamespaceRead> {
            targets
                .iter()
                .map(|ns| {
                    let (at, read) = reader(ns);
                    (ns.inode, at, read)
                })
                .collect()
        };
        if !inline && self.host.reads_in_background() {
            self.others_read = Some(OthersRead {
                handle: std::thread::Builder::new()
                    .name("tcpmon-netns".into())
                    .spawn(move || read_all(targets))?,
                baseline: pending_only,
            });
            return Ok(Vec::new());
        }
        let reads = read_all(targets);
        self.apply_others_read(&reads, pending_only, false, sink)
    }

    /// Another namespace's CLOSE_WAIT alert about to be raised without its owner: read
    /// that namespace now (inline: the alert waits for it) and look at the processes, at
    /// most once a second, as for tcpmon's own namespace.
    fn look_up_other_owners(&mut self, now: u64, sink: &mut impl Sink) -> Result<(), EngineError> {
        let Some(others) = self.others.as_ref() else {
            return Ok(());
        };
        if self
            .last_other_owner_lookup_ns
            .is_some_and(|at| now.saturating_sub(at) < OWNER_LOOKUP_GAP_NS)
            || others.wanting_owners(now).is_empty()
        {
            return Ok(());
        }
        // A read under way holds the window: let it end first.
        self.poll_others_read(true, sink)?;
        let targets = match self.others.as_ref() {
            Some(others) => others.wanting_owners(now),
            None => return Ok(()),
        };
        if targets.is_empty() {
            return Ok(());
        }
        self.last_other_owner_lookup_ns = Some(now);
        self.drain_source(false, sink)?;
        if let Some(others) = self.others.as_mut() {
            others.open_window(&targets);
        }
        let mut reader = self.host.namespace_reader();
        let reads: Vec<NamespaceRead> = targets
            .iter()
            .map(|ns| {
                let (at, read) = reader(ns);
                (ns.inode, at, read)
            })
            .collect();
        let events = self.apply_others_read(&reads, false, true, sink)?;
        for event in &events {
            self.emit_alert(event, sink)?;
        }
        Ok(())
    }

    /// Applies a finished read of other namespaces (waiting for it when `wait`).
    fn poll_others_read(&mut self, wait: bool, sink: &mut impl Sink) -> Result<(), EngineError> {
        if !self
            .others_read
            .as_ref()
            .is_some_and(|r| wait || r.handle.is_finished())
        {
            return Ok(());
        }
        let Some(pending) = self.others_read.take() else {
            return Ok(());
        };
        // A reader that panicked read nothing: the window closes, the tallies stay.
        let reads = pending.handle.join().unwrap_or_default();
        let events = self.apply_others_read(&reads, pending.baseline, false, sink)?;
        for event in &events {
            self.emit_alert(event, sink)?;
        }
        Ok(())
    }

    /// `owners`: look the CLOSE_WAIT sockets' owners up now, whenever it was last done.
    fn apply_others_read(
        &mut self,
        reads: &[NamespaceRead],
        baseline: bool,
        owners: bool,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        // Everything that happened up to now is in the window.
        let drained = self.drain_source(false, sink);
        let Some(others) = self.others.as_mut() else {
            return Ok(Vec::new());
        };
        let events = others.reconcile(reads, baseline);
        drained?;
        // The walk of every process is the costly part: at most once a reconcile interval.
        let now = self.host.now_ns();
        let due = owners
            || self.last_other_owners_ns.is_none_or(|at| {
                now.saturating_sub(at) >= self.cfg.reconcile_interval.as_nanos() as u64
            });
        if due {
            self.last_other_owners_ns = Some(now);
            let host = &mut self.host;
            others.refresh_owners(reads, |wanted| host.owners(wanted));
        }
        self.host.release_memory();
        Ok(events)
    }

    pub fn mode(&self) -> &ModeRecord {
        &self.mode
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn received(&self) -> &Received {
        &self.received
    }

    /// The kernel's loss and filter counters, as last read.
    pub fn kernel(&self) -> &KernelCounters {
        &self.kernel
    }

    /// Events lost, every cause.
    pub fn lost(&self) -> u64 {
        loss::lost(&self.kernel, &self.received)
    }

    pub fn reconciliations(&self) -> u64 {
        self.reconciliations
    }

    /// The alerts active now, every namespace's: (rule, subject, severity).
    pub fn active_alerts(&self) -> impl Iterator<Item = (&str, String, crate::model::Severity)> {
        self.detector
            .active()
            .map(|(rule, subject, severity)| (rule, subject.to_owned(), severity))
            .chain(self.others.iter().flat_map(Namespaces::active_alerts))
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, to change what it answers (tests).
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// The source, `None` when polling (tests feed it through this).
    pub fn source_mut(&mut self) -> Option<&mut S> {
        self.source.as_mut()
    }

    /// Applies what the source holds, in time order.
    pub fn drain(&mut self, sink: &mut impl Sink) -> Result<(), EngineError> {
        self.drain_source(false, sink)?;
        self.poll_others_read(false, sink)?;
        if let Some(source) = self.source.as_mut() {
            source.flush_log();
        }
        Ok(())
    }

    /// Reads the source and applies, in time order, what is safe to apply: everything
    /// when `everything` (at the end, records held for ordering included).
    fn drain_source(&mut self, everything: bool, sink: &mut impl Sink) -> io::Result<()> {
        let Some(mut source) = self.source.take() else {
            return Ok(());
        };
        let mut problems = std::mem::take(&mut self.problems);
        // A failed write ends the engine: the records after it are left alone.
        let mut failed = None;
        source.read(
            everything,
            |raw| {
                if failed.is_none() {
                    failed = self.record(raw, sink).err();
                }
            },
            &mut problems,
        );
        self.source = Some(source);
        for problem in problems.drain(..) {
            self.received.decode_errors += 1;
            log::warn!("undecodable ring-buffer record: {problem}");
        }
        self.problems = problems;
        failed.map_or(Ok(()), Err)
    }

    fn record(&mut self, raw: &SockEvent, sink: &mut impl Sink) -> io::Result<()> {
        match decode_event(raw) {
            Ok(Record::Transition(t)) => self.transition(&t, Origin::Ebpf, sink)?,
            Ok(Record::SynAckRetransmit(at)) => {
                self.received.synack_retransmits += 1;
                self.syn.tracker.synack_retransmit(listener_of(&at));
            }
            Ok(Record::SynRequest(at)) => {
                self.received.syn_requests += 1;
                self.syn
                    .tracker
                    .syn(listener_of(&at), canonical_ip(at.remote_ip));
            }
            Err(e) => {
                self.received.decode_errors += 1;
                log::warn!("undecodable ring-buffer record: {e}");
            }
        }
        Ok(())
    }

    fn transition(
        &mut self,
        t: &Transition,
        origin: Origin,
        sink: &mut impl Sink,
    ) -> io::Result<()> {
        let ours = origin == Origin::Inferred
            || t.at.netns == 0
            || self.cfg.own_netns.is_none_or(|own| own == t.at.netns);
        let mut other_listener = None;
        let applied = if !ours {
            self.received.foreign += 1;
            match self.others.as_mut() {
                Some(others) => {
                    let (applied, listener) = others.transition(t);
                    other_listener = listener;
                    applied
                }
                None => None,
            }
        } else {
            self.received.transitions += 1;
            self.pairs[t.old.index()][t.new.index()] += 1;
            if origin == Origin::Ebpf {
                match (t.old, t.new) {
                    (TcpState::Listen, TcpState::SynRecv) => {
                        self.received.passive_opens += 1;
                        self.syn.tracker.completed(listener_of(&t.at));
                    }
                    (TcpState::Close, TcpState::SynSent) => self.received.active_opens += 1,
                    _ => {}
                }
            }
            Some(match (origin, self.window.as_mut()) {
                // Inferred from the snapshot the tally was just rebuilt from: applying it
                // again would count it twice.
                (Origin::Inferred, _) => self.tally.observe(t),
                (Origin::Ebpf, Some(window)) => {
                    window.push(*t);
                    self.tally.observe(t)
                }
                (Origin::Ebpf, None) => self.tally.apply(t),
            })
        };
        if self.cfg.transitions.as_ref().is_some_and(|f| f.matches(t)) {
            sink.transition(&TransitionEvent {
                transition: t,
                micros_in_old: applied.and_then(|a| a.micros_in_old),
                origin,
                clock: &self.clock,
            })?;
        }
        if let Some(alert) = other_listener {
            self.emit_alert(&alert, sink)?;
        }
        // Polling reports new listeners itself (with no process: it cannot know).
        if ours && origin == Origin::Ebpf && applied.is_some_and(|a| a.new_listener) {
            let by = t.task.map(|task| Process {
                pid: task.pid,
                comm: task.comm(),
            });
            let alert = self.detector.new_listener(
                canonical_ip(t.at.local_ip),
                t.at.local_port,
                by.as_ref(),
            );
            self.emit_alert(&alert, sink)?;
        }
        Ok(())
    }

    fn emit_alert(&mut self, alert: &Alert, sink: &mut impl Sink) -> io::Result<()> {
        let time = Timestamp(self.clock.wall(self.host.now_ns()));
        sink.alert(&AlertRecord { time, alert })
    }

    /// Polling: diffs a new snapshot against the previous one into inferred transitions.
    fn poll_once(&mut self, sink: &mut impl Sink) -> Result<(), EngineError> {
        let sockets = self.reconcile(Reason::Poll, sink)?;
        let now = poll::Index::new(&sockets);
        let ts = self.host.now_ns();
        let had_sockets = !self.previous.is_empty();
        for t in poll::diff(&self.previous, &now, ts) {
            let listener_born = t.old == TcpState::Close && t.new == TcpState::Listen;
            self.transition(&t, Origin::Inferred, sink)?;
            if listener_born && had_sockets {
                let alert =
                    self.detector
                        .new_listener(canonical_ip(t.at.local_ip), t.at.local_port, None);
                self.emit_alert(&alert, sink)?;
            }
        }
        self.previous = now;
        Ok(())
    }

    /// One evaluation (every `interval`): polls when polling, checks the cheap counters,
    /// watches for loss and SYN trouble, and runs the detectors.
    pub fn tick(&mut self, sink: &mut impl Sink) -> Result<(), EngineError> {
        if self.source.is_none() {
            self.poll_once(sink)?;
        }
        self.poll_others_read(false, sink)?;
        self.evaluate(sink)?;
        sink.flush()?;
        Ok(())
    }

    fn evaluate(&mut self, sink: &mut impl Sink) -> Result<(), EngineError> {
        let now = self.host.now_ns();
        self.tally.expire(now);
        // TIME_WAIT: reconcile the inferred count with sockstat, every evaluation.
        if let Some(tw) = self.host.sockstat_time_wait() {
            let error = self.tally.reconcile_time_wait(tw);
            self.time_wait_check = Some((now, error));
        }
        let counters = self.host.syn_counters().unwrap_or_default();
        let syn_counters = self
            .syn
            .counters
            .map(|prev| counters.since(&prev))
            .unwrap_or_default();
        self.syn.counters = Some(counters);
        let window_start = self.last_eval_ns;
        let window_secs = now.saturating_sub(window_start) as f64 / 1e9;
        self.last_eval_ns = now;
        let syn = self.syn.tracker.take();
        self.syn.add_totals(&syn);
        let syn_coverage = match self.syn.attached_since {
            Some(at) if at <= window_start => SynCoverage::Whole,
            Some(_) => SynCoverage::Partial,
            None => SynCoverage::None,
        };
        if let Some(source) = self.source.as_mut() {
            // Half-open requests never fire the state tracepoint: poll them (netlink),
            // when anything hints at them (see half_open_worth_dumping).
            if half_open_worth_dumping(
                syn_trouble_hinted(&syn, &syn_counters, self.tally.half_open_total()),
                source.syn_counter_loaded(),
                self.tally.half_open_total(),
                now.saturating_sub(self.syn.last_half_open_dump_ns),
            ) {
                self.syn.last_half_open_dump_ns = now;
                if let Some(half_open) = self.host.half_open() {
                    self.tally.set_half_open(half_open);
                }
            }
            // After the dump, which can be the first sign of trouble.
            let hinted = syn_trouble_hinted(&syn, &syn_counters, self.tally.half_open_total());
            let wanted = self.syn.switch.wanted(hinted, now);
            if source.syn_counter_loaded() && wanted != source.syn_counter_attached() {
                match source.set_syn_counter(wanted) {
                    Ok(()) => {
                        self.syn.attached_since = wanted.then_some(now);
                        self.received.syn_counter_attaches += u64::from(wanted);
                    }
                    // Once: it would fail the same way every second.
                    Err(e) if !self.syn.attach_failed => {
                        self.syn.attach_failed = true;
                        log::warn!("SYN counter (cgroup sock_ops): {e}");
                    }
                    Err(_) => {}
                }
            }
            match source.counters() {
                Ok(kernel) => self.kernel = kernel,
                Err(e) => log::warn!("reading kernel counters: {e}"),
            }
        }
        self.refresh_listener_info();
        // Silent loss: openings the kernel counted a second ago that never arrived.
        if self.source.is_some() {
            self.drain_source(false, sink)?;
            let opens = self.host.snmp_opens();
            let reported = self.kernel.lost() + self.received.decode_errors;
            self.loss.check_opens(opens, &mut self.received, reported);
        }
        // Loss makes the live counts drift: rebuild them from a snapshot.
        if self.loss.reconcile_due(self.lost(), now) {
            self.reconcile(Reason::Loss, sink)?;
        }
        // A CLOSE_WAIT port about to be alerted whose owner is not known yet: look it up
        // now rather than at the next periodic reconciliation, so the alert names the
        // process. Only for ports that cross a threshold: under churn, CLOSE_WAIT comes
        // and goes all the time and each lookup re-reads the socket table.
        let mut view = self.tally.view(DETECTOR_TOP);
        let t = &self.detector.thresholds;
        let alerting = view
            .close_wait_by_port
            .iter()
            .any(|(port, count, since, _)| {
                let age = now.saturating_sub(*since) as f64 / 1e9;
                (age >= t.close_wait_age_secs || *count > t.close_wait_crit)
                    && !self.owners.by_port.contains_key(port)
            });
        if self.source.is_some()
            && alerting
            && now.saturating_sub(self.owners.last_lookup_ns) >= OWNER_LOOKUP_GAP_NS
        {
            self.owners.last_lookup_ns = now;
            self.reconcile(Reason::Owners, sink)?;
            view = self.tally.view(DETECTOR_TOP);
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
            close_wait_owners: std::mem::take(&mut self.owners.by_port),
        };
        let mut alerts = self.detector.evaluate(&view, &inputs);
        (self.backlogs, self.owners.by_port) = (inputs.backlogs, inputs.close_wait_owners);
        self.look_up_other_owners(now, sink)?;
        if let Some(others) = self.others.as_mut() {
            let host = &mut self.host;
            alerts.extend(others.evaluate(now, window_secs, |ns| host.namespace_time_wait(ns)));
        }
        // A namespace that sent transitions but is not known: look again (at most once a
        // second).
        let rediscover = self
            .others
            .as_ref()
            .is_some_and(Namespaces::rediscover_wanted);
        if rediscover && now.saturating_sub(self.last_discovery_ns) >= OWNER_LOOKUP_GAP_NS {
            alerts.extend(self.discover_namespaces(false, sink)?);
        }
        for alert in alerts {
            self.emit_alert(&alert, sink)?;
        }
        Ok(())
    }

    fn refresh_listener_info(&mut self) {
        if let Some(queues) = self.host.listener_queues() {
            self.backlogs = queues.iter().map(|(k, q)| (*k, q.backlog)).collect();
            self.queues = queues;
        }
        self.somaxconn = self.host.somaxconn();
    }

    /// Reads the socket table, rebuilds the tallies from it and records how far off they
    /// were. Records queued before the read are applied first; those that arrive during
    /// it are resolved against the snapshot so none counts twice.
    pub fn reconcile(
        &mut self,
        reason: Reason,
        sink: &mut impl Sink,
    ) -> Result<Vec<Socket>, EngineError> {
        self.drain_source(false, sink)?;
        let at = self.host.now_ns();
        let sockets = self.host.sockets()?;
        self.window = Some(Vec::new());
        let drained = self.drain_source(false, sink);
        let window = self.window.take().unwrap_or_default();
        drained?;
        let mut report = self.tally.reconcile_window(&sockets, at, &window);
        if reason == Reason::Baseline {
            // Nothing was counted before the baseline: there is no drift to report.
            report.error.clear();
            report.total_abs_error = 0;
        }
        self.reconciliations += 1;
        self.refresh_owners(&sockets);
        if !matches!(reason, Reason::Baseline | Reason::Poll) && report.total_abs_error > 0 {
            log::info!(
                "reconciliation ({}) corrected {} sockets",
                reason.name(),
                report.total_abs_error
            );
        }
        self.last_reconcile = Some((report, reason));
        self.host.release_memory();
        if matches!(reason, Reason::Periodic | Reason::Loss | Reason::Poll) && self.others.is_some()
        {
            // Periodically, namespaces that appeared or went are looked for too.
            let mut events = if reason == Reason::Periodic {
                self.discover_namespaces(false, sink)?
            } else {
                Vec::new()
            };
            events.extend(self.reconcile_others(false, false, sink)?);
            for event in &events {
                self.emit_alert(event, sink)?;
            }
        }
        Ok(sockets)
    }

    /// Owners of CLOSE_WAIT sockets, by local port, for the alerts that name them.
    fn refresh_owners(&mut self, sockets: &[Socket]) {
        let wanted: HashSet<u64> = sockets
            .iter()
            .filter(|s| s.state == TcpState::CloseWait && s.inode != 0)
            .map(|s| s.inode)
            .collect();
        // The walk of every process's fds is the costly part; the same CLOSE_WAIT
        // sockets as last time (the usual case when polling) have the same owners.
        if wanted != self.owners.inodes {
            self.owners.by_inode = self.host.owners(&wanted);
            self.owners.inodes = wanted;
        }
        self.owners.by_port.clear();
        for s in sockets.iter().filter(|s| s.state == TcpState::CloseWait) {
            if let Some(p) = self.owners.by_inode.get(&s.inode) {
                let list = self.owners.by_port.entry(s.local_port).or_default();
                if !list.contains(p) {
                    list.push(p.clone());
                }
            }
        }
    }

    fn syn_counter_state(&self) -> SynCounterState {
        match &self.source {
            Some(_) if self.syn.attached_since.is_some() => SynCounterState::Attached,
            Some(s) if s.syn_counter_loaded() => {
                if self.syn.attach_failed && self.syn.switch.holding() {
                    SynCounterState::AttachFailed
                } else {
                    SynCounterState::Idle
                }
            }
            _ => SynCounterState::Unavailable,
        }
    }

    /// The tallies now, as a record (also what an exporter publishes).
    pub fn tally_record(&mut self) -> TallyRecord {
        let top = self.cfg.top;
        let view = self.tally.view(top);
        let now = self.host.now_ns();
        let elapsed = now.saturating_sub(self.last_tally.0) as f64 / 1e9;
        let rate = (self.received.transitions - self.last_tally.1) as f64 / elapsed.max(1e-3);
        self.last_tally = (now, self.received.transitions);
        let wall = |ns: u64| Timestamp(self.clock.wall(ns));
        let [ipv4, ipv6, unknown] = self.tally.family_counts();
        let half_open: HashMap<(IpAddr, u16), u64> = view
            .half_open
            .iter()
            .map(|(ip, port, h)| ((*ip, *port), h.count))
            .collect();
        let listed: Vec<(IpAddr, u16)> = view.listeners.iter().map(|l| (l.0, l.1)).collect();
        let (syn_by_listener, syn_elsewhere) = self.syn.totals_by_listener(&listed);
        let range = self.port_range.size() as f64;
        let shown_per_ip: u64 = view.per_ip_top.iter().map(|(_, n)| n).sum();
        TallyRecord {
            schema_version: SCHEMA_VERSION,
            time: wall(now),
            mode: self.mode.mode,
            states: view.states,
            states_by_family: FamilyStates {
                ipv4,
                ipv6,
                unknown,
            },
            time_wait: TimeWaitTally {
                count: view.time_wait,
                sockstat_error: self.time_wait_check.map(|c| c.1),
                sockstat_time: self.time_wait_check.map(|c| wall(c.0)),
                not_held: self.tally.time_wait_unheld,
            },
            time_wait_by_destination: view
                .time_wait_by_dest
                .iter()
                .map(|&(ip, port, n)| DestinationRecord {
                    destination: endpoint(ip, port),
                    time_wait: n,
                    ratio: n as f64 / range,
                })
                .collect(),
            reconcile: self
                .last_reconcile
                .as_ref()
                .map(|(r, why)| ReconcileSummary {
                    reason: why.name().to_owned(),
                    time: wall(r.at_ns),
                    error: r
                        .error
                        .iter()
                        .map(|(state, n)| ((*state).to_owned(), *n))
                        .collect(),
                    total_abs_error: r.total_abs_error,
                }),
            reconciliations: self.reconciliations,
            per_ip: PerIpTally {
                top: view
                    .per_ip_top
                    .iter()
                    .map(|&(ip, count)| IpCountRecord { ip, count })
                    .collect(),
                other: view.per_ip_total.saturating_sub(shown_per_ip),
                tracked: view.per_ip_tracked,
                aggregated: view.per_ip_aggregated,
            },
            close_wait: view
                .close_wait_by_port
                .iter()
                .take(top)
                .map(|&(port, count, since, age_known)| CloseWaitPort {
                    port,
                    count,
                    oldest_secs: now.saturating_sub(since) as f64 / 1e9,
                    age_known,
                    owners: self.owners.by_port.get(&port).cloned(),
                })
                .collect(),
            half_open: view
                .half_open
                .iter()
                .map(|(ip, port, h)| HalfOpenListener {
                    listener: endpoint(*ip, *port),
                    count: h.count,
                    sources: h.sources,
                })
                .collect(),
            established_by_port: view
                .established_by_port
                .iter()
                .map(|&(port, count)| PortCountRecord { port, count })
                .collect(),
            listeners: view
                .listeners
                .iter()
                .zip(syn_by_listener)
                .map(|(&(ip, port, sockets), syn)| {
                    let queues = self.queues.get(&(ip, port));
                    ListenerRecord {
                        listener: endpoint(ip, port),
                        sockets,
                        backlog: queues.map(|q| q.backlog),
                        accept_queue: queues.map(|q| q.accept_queue),
                        half_open: half_open_of(&half_open, ip, port),
                        syn,
                    }
                })
                .collect(),
            syn_elsewhere,
            tcp_ext: self.syn.counters.unwrap_or_default(),
            alerts_active: self
                .active_alerts()
                .map(|(rule, subject, severity)| ActiveAlert {
                    rule: rule.to_owned(),
                    subject,
                    severity,
                })
                .collect(),
            transitions_by_pair: TcpState::ALL
                .iter()
                .flat_map(|&old| TcpState::ALL.iter().map(move |&new| (old, new)))
                .filter_map(|(old, new)| {
                    let count = self.pairs[old.index()][new.index()];
                    (count > 0).then_some(PairCount { old, new, count })
                })
                .collect(),
            received: self.received,
            syn_counter: self.syn_counter_state(),
            kernel: self.kernel,
            lost: self.lost(),
            inconsistencies: view.inconsistencies,
            transitions_per_sec: rate,
            namespaces: self.others.as_ref().map(Namespaces::tallies),
            namespaces_untracked: self.others.as_ref().map(Namespaces::untracked),
            poll_interval: self.source.is_none().then_some(self.cfg.interval),
        }
    }

    /// Emits a tally record.
    pub fn write_tally(&mut self, sink: &mut impl Sink) -> Result<(), EngineError> {
        let record = self.tally_record();
        sink.tally(&record)?;
        sink.flush()?;
        Ok(())
    }

    /// Stops the source (its kernel programs detached), applies what it still holds,
    /// emits the final tally and the summary, and returns the summary.
    pub fn finish(&mut self, sink: &mut impl Sink) -> Result<SummaryRecord, EngineError> {
        if let Some(source) = self.source.as_mut() {
            source.detach();
        }
        // Detached, the rings only hold what is already there: this read ends.
        self.poll_others_read(true, sink)?;
        self.drain_source(true, sink)?;
        if let Some(kernel) = self.source.as_ref().and_then(|s| s.counters().ok()) {
            self.kernel = kernel;
        }
        self.write_tally(sink)?;
        let now = self.host.now_ns();
        let summary = SummaryRecord {
            schema_version: SCHEMA_VERSION,
            time: Timestamp(self.clock.wall(now)),
            mode: self.mode.mode,
            seconds: now.saturating_sub(self.started_ns) as f64 / 1e9,
            transitions: self.received.transitions,
            lost: self.lost(),
            received: self.received,
            kernel: self.kernel,
            reconciliations: self.reconciliations,
        };
        sink.summary(&summary)?;
        sink.flush()?;
        Ok(summary)
    }

    /// Runs the engine on tokio timers until `stop` completes (or an error): records as
    /// the source wakes it, an evaluation every `interval`, a tally every
    /// `tally_interval`, a reconciliation every `reconcile_interval`. Call
    /// [`Engine::finish`] afterwards.
    pub async fn run(
        &mut self,
        sink: &mut impl Sink,
        stop: impl Future<Output = ()>,
    ) -> Result<(), EngineError> {
        let wakeup = self.source.as_ref().and_then(EventSource::wakeup);
        let polling = self.source.is_none();
        let mut tick = tokio::time::interval(self.cfg.interval);
        let mut tally_tick = tokio::time::interval(self.cfg.tally_interval);
        let mut reconcile_tick = tokio::time::interval(self.cfg.reconcile_interval);
        // The kernel batches wakeups (see tcpmon-ebpf): pick up what a batch left behind,
        // DRAIN_AFTER after the last read (under load the doorbells come first, and a
        // periodic timer would only add wakeups).
        let drain_timer = tokio::time::sleep(DRAIN_AFTER);
        tokio::pin!(drain_timer);
        for t in [&mut tick, &mut tally_tick, &mut reconcile_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.tick().await;
        }
        tokio::pin!(stop);
        loop {
            let ring_ready = async {
                match &wakeup {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ring_ready => {
                    self.drain(sink)?;
                    sink.flush()?;
                    drain_timer.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER);
                }
                _ = tick.tick() => self.tick(sink)?,
                () = &mut drain_timer, if !polling => {
                    self.drain(sink)?;
                    sink.flush()?;
                    drain_timer.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER);
                }
                _ = tally_tick.tick() => self.write_tally(sink)?,
                _ = reconcile_tick.tick(), if !polling => {
                    self.reconcile(Reason::Periodic, sink)?;
                }
                () = &mut stop => return Ok(()),
            }
        }
    }
}

/// The listener a request or handshake belongs to: its local address and port.
fn listener_of(at: &Endpoints) -> (IpAddr, u16) {
    (canonical_ip(at.local_ip), at.local_port)
}

/// Whether a listener bound to `listener` takes connections to `local`: the same address,
/// or a wildcard of any family on the same port (a `[::]` socket is dual-stack).
fn covers(listener: (IpAddr, u16), local: (IpAddr, u16)) -> bool {
    listener.1 == local.1 && (listener.0 == local.0 || listener.0.is_unspecified())
}

/// The half-open requests a listener has: those to its own address, and for a wildcard
/// those to any address on its port that no specific listener has.
fn half_open_of(by_address: &HashMap<(IpAddr, u16), u64>, ip: IpAddr, port: u16) -> u64 {
    by_address
        .iter()
        .filter(|(k, _)| covers((ip, port), **k))
        .map(|(_, n)| n)
        .sum()
}

impl SynState {
    /// Adds a window's SYN activity to the totals since the start.
    fn add_totals(&mut self, window: &HashMap<(IpAddr, u16), super::syn::SynWindow>) {
        for (key, w) in window {
            let room = self.totals.len() < MAX_SYN_LISTENERS;
            let slot = match self.totals.get_mut(key) {
                Some(slot) => slot,
                None if room => self.totals.entry(*key).or_default(),
                None => &mut self.totals_other,
            };
            slot.0 += w.syns;
            slot.1 += w.synack_retransmits;
        }
    }

    /// The totals of each of `listeners` (an exact address first, then a wildcard
    /// covering it), and of the addresses none covers.
    fn totals_by_listener(&self, listeners: &[(IpAddr, u16)]) -> (Vec<SynTotals>, SynTotals) {
        let mut out = vec![SynTotals::default(); listeners.len()];
        let mut elsewhere = SynTotals {
            syns: self.totals_other.0,
            synack_retransmits: self.totals_other.1,
        };
        for (key, (syns, retransmits)) in &self.totals {
            let at = listeners
                .iter()
                .position(|l| l == key)
                .or_else(|| listeners.iter().position(|l| covers(*l, *key)));
            let slot = match at {
                Some(i) => &mut out[i],
                None => &mut elsewhere,
            };
            slot.syns += syns;
            slot.synack_retransmits += retransmits;
        }
        (out, elsewhere)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
