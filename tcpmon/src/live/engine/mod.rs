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
    config::{ConfigError, EngineConfig, ValidConfig},
    failures::FailureTally,
    host::{Host, ReasonNames},
    latency::Connects,
    loss::{self, LossTracker, Received},
    namespaces::Namespaces,
    poll,
    read_health::ReadHealth,
    record::{
        ActiveAlert, AlertRecord, ModeRecord, SummaryRecord, SynCounterState, TallyInputs,
        TallyRecord, Timestamp, TransitionEvent, SCHEMA_VERSION,
    },
    rules::{
        close_wait_owners, close_wait_severity, listener_owners, Alert, Detector, Inputs,
        DETECTOR_TOP,
    },
    source::EventSource,
    syn::SynState,
    tally::{ReconcileReport, Tally, TallyConfig},
};
use crate::{
    ebpf::{
        decode::{decode_event, Failure, Record},
        KernelCounters,
    },
    host::{clock::Clock, diag::ListenerQueues, proc_net::Socket},
    model::{
        canonical_ip, CloseWaitSide, Endpoints, Origin, PortRange, Process, TcpState, Transition,
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

/// A failure event as the tallies take it.
#[derive(Clone, Copy, Debug)]
enum FailureEvent {
    /// Segments retransmitted, and the connection's segments sent in all when known.
    Retransmitted(u64, Option<u32>),
    /// A reset (sent, with its reason when known).
    Counted(Failure, u64, Option<u16>),
    /// A TCP packet dropped, for the kernel's reason.
    Dropped(u16),
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

/// Owners of CLOSE_WAIT sockets, kept between reconciliations.
#[derive(Debug, Default)]
struct Owners {
    by_side: HashMap<CloseWaitSide, Vec<Process>>,
    /// Who holds each listener: from the last lookup, and from new listeners' events.
    by_listener: HashMap<(IpAddr, u16), Vec<Process>>,
    /// The CLOSE_WAIT and listener inodes the last lookup was for, and what it found.
    inodes: HashSet<u64>,
    by_inode: HashMap<u64, Process>,
    last_lookup_ns: u64,
}

/// The live engine over host `H` and event source `S` (`None` of it when polling).
pub struct Engine<H: Host, S: EventSource> {
    cfg: ValidConfig,
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
    /// Retransmits and resets in tcpmon's namespace.
    failures: FailureTally,
    /// Connect times in tcpmon's namespace (eBPF: polling sees no handshake).
    connects: Connects,
    /// This kernel's drop and reset reason names, by value.
    reasons: ReasonNames,
    /// Each listener's drops (`sk_drops`) at the last evaluation.
    listener_drops_seen: HashMap<(IpAddr, u16), u64>,
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
    /// When and how they are read.
    others_io: others::OthersIo,
    /// Socket-table reads after the baseline that failed, and the wait before the next.
    reads: ReadHealth,
}

impl<H: Host, S: EventSource> Engine<H, S> {
    /// Reads the baseline (the source, when there is one, is already attached, so nothing
    /// falls between the two), then emits the mode record: the tallies are valid from
    /// here on.
    pub fn start(
        cfg: ValidConfig,
        mut host: H,
        source: Option<S>,
        mode: ModeRecord,
        sink: &mut impl Sink,
    ) -> Result<Self, EngineError> {
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
        let failures = FailureTally::new(cfg.max_ips);
        let connects = Connects::new(cfg.max_ips);
        let mut engine = Self {
            detector: Detector::new(cfg.thresholds.clone())
                .with_allowlist(cfg.listeners_allow.clone()),
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
            failures,
            connects,
            reasons: ReasonNames::default(),
            listener_drops_seen: HashMap::new(),
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
            others_io: others::OthersIo::new(now),
            reads: ReadHealth::default(),
        };
        if engine.source.is_some() {
            engine.reasons = engine
                .source
                .as_ref()
                .map(EventSource::reason_names)
                .unwrap_or_default();
        }
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
            .chain(self.reads.active())
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
                self.syn.tracker.synack_retransmit(local_of(&at));
            }
            Ok(Record::SynRequest(at)) => {
                self.received.syn_requests += 1;
                self.syn
                    .tracker
                    .syn(local_of(&at), canonical_ip(at.remote_ip));
            }
            Ok(Record::Drop(at, reason)) => self.failure_event(&at, FailureEvent::Dropped(reason)),
            Ok(Record::ResetSent(at, reason)) => {
                self.failure_event(&at, FailureEvent::Counted(Failure::ResetSent, 1, reason));
            }
            Ok(Record::Retransmit(at, segments, sent)) => {
                self.failure_event(&at, FailureEvent::Retransmitted(u64::from(segments), sent));
            }
            Ok(Record::Failure(failure, at, count)) => {
                self.failure_event(&at, FailureEvent::Counted(failure, u64::from(count), None));
            }
            Err(e) => {
                self.received.decode_errors += 1;
                log::warn!("undecodable ring-buffer record: {e}");
            }
        }
        Ok(())
    }

    /// A retransmit, reset or drop: tallied in tcpmon's namespace, else in the other
    /// namespace's when it is tallied (`--all-netns`), else counted as foreign.
    fn failure_event(&mut self, at: &Endpoints, event: FailureEvent) {
        if at.netns == 0 || self.cfg.own_netns.is_none_or(|own| own == at.netns) {
            match event {
                FailureEvent::Dropped(reason) => self.failures.add_drop(reason),
                FailureEvent::Retransmitted(segments, sent) => self.failures.add_retransmit(
                    segments,
                    sent.map(|s| (at.skaddr, s)),
                    at.local_port,
                    (at.remote_ip, at.remote_port),
                    self.port_range,
                ),
                FailureEvent::Counted(failure, count, reset_reason) => {
                    let remote = (at.remote_ip, at.remote_port);
                    self.failures
                        .add(failure, count, at.local_port, remote, self.port_range);
                    if let Some(reason) = reset_reason {
                        self.failures.add_reset_reason(reason);
                    }
                }
            }
            return;
        }
        let tallied = self.others.as_mut().is_some_and(|others| match event {
            FailureEvent::Dropped(reason) => others.dropped(at.netns, reason),
            FailureEvent::Retransmitted(segments, sent) => others.retransmitted(segments, sent, at),
            FailureEvent::Counted(failure, count, reset_reason) => {
                others.failure(failure, count, at, reset_reason)
            }
        });
        if !tallied {
            self.received.foreign_failures += 1;
        }
    }

    fn transition(
        &mut self,
        t: &Transition,
        origin: Origin,
        sink: &mut impl Sink,
    ) -> io::Result<()> {
        // The kernel also reports a socket "changing" to the state it is in (FIN_WAIT1 ->
        // FIN_WAIT1 when a FIN is queued again): no change, counted once in the summary.
        if t.old == t.new {
            self.received.self_transitions += 1;
            return Ok(());
        }
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
                self.connects.on_transition(t);
                match (t.old, t.new) {
                    (TcpState::Listen, TcpState::SynRecv) => {
                        self.received.passive_opens += 1;
                        self.syn.tracker.completed(local_of(&t.at));
                    }
                    (TcpState::Close, TcpState::SynSent) => self.received.active_opens += 1,
                    (_, TcpState::Close) => self.failures.forget(t.at.skaddr),
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
        // FIN_WAIT2/CLOSING -> CLOSE is the socket entering TIME_WAIT (no event says so):
        // shown as what it is, inferred, as polling shows it.
        let into_time_wait =
            origin == Origin::Ebpf && applied.is_some_and(|a| a.time_wait_inferred);
        let (shown, shown_origin) = if into_time_wait {
            (
                Transition {
                    new: TcpState::TimeWait,
                    ..*t
                },
                Origin::Inferred,
            )
        } else {
            (*t, origin)
        };
        if self
            .cfg
            .transitions
            .as_ref()
            .is_some_and(|f| f.matches(&shown))
        {
            sink.transition(&TransitionEvent {
                transition: &shown,
                micros_in_old: applied.and_then(|a| a.micros_in_old),
                origin: shown_origin,
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
            let at = (canonical_ip(t.at.local_ip), t.at.local_port);
            let alert = self.detector.new_listener(at.0, at.1, by.as_ref());
            if let Some(by) = by {
                self.owners.by_listener.insert(at, vec![by]);
            }
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
        let Some(sockets) = self.reconcile_if_readable(Reason::Poll, sink)? else {
            return Ok(());
        };
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
        let window_secs = now.saturating_sub(self.last_eval_ns) as f64 / 1e9;
        let syn = self.syn_window(now);
        self.last_eval_ns = now;
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
            self.reconcile_if_readable(Reason::Loss, sink)?;
        }
        // A CLOSE_WAIT port about to be alerted whose owner is not known yet: look it up
        // now rather than at the next periodic reconciliation, so the alert names the
        // process. Only for ports that cross a threshold: under churn, CLOSE_WAIT comes
        // and goes all the time and each lookup re-reads the socket table.
        let mut view = self.tally.view(DETECTOR_TOP);
        let t = &self.detector.thresholds;
        let alerting = view.close_wait.iter().any(|group| {
            close_wait_severity(group, now, t).is_some()
                && !self.owners.by_side.contains_key(&group.side)
        });
        if self.source.is_some()
            && alerting
            && now.saturating_sub(self.owners.last_lookup_ns) >= OWNER_LOOKUP_GAP_NS
        {
            self.owners.last_lookup_ns = now;
            self.reconcile_if_readable(Reason::Owners, sink)?;
            view = self.tally.view(DETECTOR_TOP);
        }
        // The maps are lent to the detector for this evaluation, not copied.
        let inputs = Inputs {
            now_ns: now,
            window_secs,
            syn: syn.per_listener,
            syn_counters: syn.counters,
            syn_coverage: syn.coverage,
            backlogs: std::mem::take(&mut self.backlogs),
            somaxconn: self.somaxconn,
            port_range: self.port_range,
            close_wait_owners: std::mem::take(&mut self.owners.by_side),
            failures: self.failures.take_window(),
            listener_drops: self.listener_drops_window(),
        };
        let mut alerts = self.detector.evaluate(&view, &inputs);
        (self.backlogs, self.owners.by_side) = (inputs.backlogs, inputs.close_wait_owners);
        alerts.extend(self.evaluate_others(now, window_secs, sink)?);
        for alert in alerts {
            self.emit_alert(&alert, sink)?;
        }
        Ok(())
    }

    /// Each listener's drops since the last evaluation (none for one seen the first time:
    /// its count covers its whole life).
    fn listener_drops_window(&mut self) -> Vec<((IpAddr, u16), u64)> {
        let now: HashMap<(IpAddr, u16), u64> = self
            .queues
            .iter()
            .filter_map(|(k, q)| Some((*k, q.drops?)))
            .collect();
        let window = now
            .iter()
            .filter_map(|(k, n)| {
                let before = self.listener_drops_seen.get(k)?;
                (n > before).then(|| (*k, n - before))
            })
            .collect();
        self.listener_drops_seen = now;
        window
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

    /// Owners of CLOSE_WAIT sockets, by leak, for the alerts that name them, and of
    /// listeners, for the series that name them.
    fn refresh_owners(&mut self, sockets: &[Socket]) {
        let wanted: HashSet<u64> = sockets
            .iter()
            .filter(|s| matches!(s.state, TcpState::CloseWait | TcpState::Listen) && s.inode != 0)
            .map(|s| s.inode)
            .collect();
        // The walk of every process's fds is the costly part; the same sockets as last
        // time (the usual case when polling) have the same owners.
        if wanted != self.owners.inodes {
            self.owners.by_inode = self.host.owners(&wanted);
            self.owners.inodes = wanted;
        }
        self.owners.by_side = close_wait_owners(sockets, &self.owners.by_inode, self.port_range);
        // A listener whose owner the walk did not find keeps the one its opening event
        // named (the walk may be refused a process the event saw).
        let mut by_listener = listener_owners(sockets, &self.owners.by_inode);
        for (key, owners) in std::mem::take(&mut self.owners.by_listener) {
            let listening = sockets.iter().any(|s| {
                s.state == TcpState::Listen && (canonical_ip(s.local_ip), s.local_port) == key
            });
            if listening {
                by_listener.entry(key).or_insert(owners);
            }
        }
        self.owners.by_listener = by_listener;
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
        let now = self.host.now_ns();
        let elapsed = now.saturating_sub(self.last_tally.0) as f64 / 1e9;
        let rate = (self.received.transitions - self.last_tally.1) as f64 / elapsed.max(1e-3);
        self.last_tally = (now, self.received.transitions);
        TallyRecord::build(TallyInputs {
            now_ns: now,
            clock: &self.clock,
            mode: self.mode.mode,
            view: self.tally.view(self.cfg.top),
            top: self.cfg.top,
            family_counts: self.tally.family_counts(),
            time_wait_unheld: self.tally.time_wait_unheld,
            time_wait_check: self.time_wait_check,
            port_range: self.port_range,
            transitions_per_sec: rate,
            last_reconcile: self
                .last_reconcile
                .as_ref()
                .map(|(report, why)| (report, why.name())),
            reconciliations: self.reconciliations,
            close_wait_owners: &self.owners.by_side,
            listener_owners: &self.owners.by_listener,
            queues: &self.queues,
            syn: &self.syn,
            syn_counter: self.syn_counter_state(),
            alerts_active: self
                .active_alerts()
                .map(|(rule, subject, severity)| ActiveAlert {
                    rule: rule.to_owned(),
                    subject,
                    severity,
                })
                .collect(),
            pairs: &self.pairs,
            received: self.received,
            kernel: self.kernel,
            lost: self.lost(),
            namespaces: self.others.as_ref().map(|others| {
                others.tallies(
                    self.cfg.namespace_detail.then_some((self.cfg.top, now)),
                    &self.reasons,
                )
            }),
            namespaces_untracked: self.others.as_ref().map(Namespaces::untracked),
            failures: self.failures.record(self.cfg.top, &self.reasons),
            connect_latency: self.connects.record(self.cfg.top),
            poll_interval: self.source.is_none().then_some(self.cfg.interval),
        })
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
                    self.reconcile_if_readable(Reason::Periodic, sink)?;
                }
                () = &mut stop => return Ok(()),
            }
        }
    }
}

/// The local address and port of a request or handshake.
fn local_of(at: &Endpoints) -> (IpAddr, u16) {
    (canonical_ip(at.local_ip), at.local_port)
}

mod others;
mod reads;
mod syn;
#[cfg(test)]
mod tests;
