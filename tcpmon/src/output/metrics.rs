//! The Prometheus exporter's side of the engine: a [`MetricsSink`] keeps what the engine
//! emits, publishes it as a [`MetricsSnapshot`] once per tally, and [`encode`] turns a
//! snapshot into the Prometheus text or OpenMetrics exposition with prometheus-client.
//!
//! Every label set is bounded (docs/METRICS.md): states and families are fixed sets,
//! transitions at most 12 x 12 pairs, lists `--top` long with the rest as `other`,
//! listeners at most [`MAX_LISTENERS`], active alerts at most [`MAX_ACTIVE_ALERTS`].
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use prometheus_client::{
    encoding::{text, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

use crate::{
    live::{
        record::{AlertRecord, ModeRecord, SummaryRecord, TallyRecord, Timestamp, TransitionEvent},
        rules::Status,
        Sink,
    },
    model::{printable, Severity, TcpState},
};

pub use crate::host::process::ProcessUsage;

/// Listener series at most; beyond, they add up under `listener="other"`.
pub const MAX_LISTENERS: usize = 1000;
/// Active-alert series at most; the rest are counted in `tcpmon_alerts_active_omitted`.
pub const MAX_ACTIVE_ALERTS: usize = 256;

/// An alert that is active now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActiveAlert {
    pub rule: &'static str,
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    /// When it was raised.
    pub since: Timestamp,
}

/// What the exporter publishes: the latest tally and everything counted up to it.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub mode: Option<ModeRecord>,
    pub tally: Option<TallyRecord>,
    /// Alerts raised or escalated since the start, per (rule, severity).
    pub alerts_total: Vec<(&'static str, Severity, u64)>,
    pub active: Vec<ActiveAlert>,
    /// Active alerts beyond [`MAX_ACTIVE_ALERTS`].
    pub active_omitted: u64,
    /// The engine ended (and why), when it did.
    pub stopped: Option<String>,
}

/// What the HTTP side reads; the engine thread writes it once per tally.
#[derive(Debug, Default)]
pub struct Published {
    latest: Mutex<Arc<MetricsSnapshot>>,
    /// Bumped at every publication, so encodings can be cached per version.
    version: AtomicU64,
}

impl Published {
    pub fn latest(&self) -> (u64, Arc<MetricsSnapshot>) {
        let snapshot = Arc::clone(&self.latest.lock().unwrap_or_else(|p| p.into_inner()));
        (self.version.load(Ordering::Acquire), snapshot)
    }

    fn publish(&self, snapshot: MetricsSnapshot) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// The engine's sink when serving metrics: counts transitions on the hot path (one array
/// increment), follows alerts, and publishes a snapshot at every tally.
#[derive(Debug)]
pub struct MetricsSink {
    published: Arc<Published>,
    mode: Option<ModeRecord>,
    alerts_total: BTreeMap<(&'static str, Severity), u64>,
    active: BTreeMap<(&'static str, String), ActiveAlert>,
    stopped: Option<String>,
    tally: Option<TallyRecord>,
}

impl MetricsSink {
    pub fn new(published: Arc<Published>) -> Self {
        Self {
            published,
            mode: None,
            alerts_total: BTreeMap::new(),
            active: BTreeMap::new(),
            stopped: None,
            tally: None,
        }
    }

    fn publish(&self) {
        self.published.publish(MetricsSnapshot {
            mode: self.mode.clone(),
            tally: self.tally.clone(),
            alerts_total: self
                .alerts_total
                .iter()
                .map(|(&(rule, sev), &n)| (rule, sev, n))
                .collect(),
            active: self
                .active
                .values()
                .take(MAX_ACTIVE_ALERTS)
                .cloned()
                .collect(),
            active_omitted: self.active.len().saturating_sub(MAX_ACTIVE_ALERTS) as u64,
            stopped: self.stopped.clone(),
        });
    }
}

impl Sink for MetricsSink {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()> {
        self.mode = Some(record.clone());
        self.publish();
        Ok(())
    }

    /// Transitions are counted by the engine (the tally's `transitions_by_pair`).
    fn transition(&mut self, _: &TransitionEvent<'_>) -> io::Result<()> {
        Ok(())
    }

    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()> {
        let alert = record.alert;
        let key = (alert.rule, alert.subject.clone());
        match alert.status {
            Status::Raised | Status::Changed => {
                *self
                    .alerts_total
                    .entry((alert.rule, alert.severity))
                    .or_default() += 1;
                let since = match self.active.get(&key) {
                    Some(active) => active.since,
                    None => record.time,
                };
                self.active.insert(
                    key,
                    ActiveAlert {
                        rule: alert.rule,
                        subject: alert.subject.clone(),
                        severity: alert.severity,
                        message: alert.message.clone(),
                        since,
                    },
                );
            }
            Status::Cleared => {
                self.active.remove(&key);
            }
            Status::Event => {
                *self
                    .alerts_total
                    .entry((alert.rule, alert.severity))
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    fn tally(&mut self, record: &TallyRecord) -> io::Result<()> {
        self.tally = Some(record.clone());
        self.publish();
        Ok(())
    }

    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        self.stopped = Some("the engine stopped".into());
        self.publish();
        Ok(())
    }
}

/// The two expositions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// What to answer a request's `Accept` header with: OpenMetrics when it is asked
    /// for (and not refused with q=0), the Prometheus text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|part| {
                let mut params = part.split(';').map(str::trim);
                let media = params.next().unwrap_or_default();
                let refused = params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetnsLabels {
    netns: String,
    owner: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseWaitLabels {
    port: String,
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpLabels {
    ip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    rule: &'static str,
    severity: &'static str,
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A state's name as node_exporter spells it (`established`, `syn_recv`, ...).
fn state_label(state: TcpState) -> String {
    state.name().to_ascii_lowercase()
}

/// The states node_exporter's tcpstat reports (NEW_SYN_RECV is a request socket, counted
/// as SYN_RECV).
const STATES: [TcpState; 11] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::Close,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
];

fn gauge_family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn float_family<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge<f64, AtomicU64>>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge<f64, AtomicU64>>::default();
    registry.register(name, help, family.clone());
    family
}

fn counter_family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn float_gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every metric of `snapshot`, and of this process's `usage`, in a fresh registry.
pub fn registry(snapshot: &MetricsSnapshot, usage: ProcessUsage) -> Registry {
    let mut r = Registry::default();
    let build = gauge_family::<BuildLabels>(&mut r, "tcpmon_build_info", "tcpmon's version");
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    let mode = gauge_family::<ModeLabels>(
        &mut r,
        "tcpmon_mode_info",
        "Which engine feeds the tallies: ebpf, or poll (eBPF could not load)",
    );
    if let Some(m) = &snapshot.mode {
        mode.get_or_create(&ModeLabels {
            mode: m.mode.name(),
        })
        .set(1);
    }
    gauge(
        &mut r,
        "tcpmon_up",
        "1 while the engine runs, 0 once it stopped",
        i64::from(snapshot.stopped.is_none() && snapshot.tally.is_some()),
    );
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(usage.cpu_seconds);
    r.register(
        "process_cpu_seconds",
        "User and system CPU time spent by tcpmon, in seconds",
        cpu,
    );
    gauge(
        &mut r,
        "process_resident_memory_bytes",
        "tcpmon's resident memory, in bytes",
        to_i64(usage.resident_bytes),
    );
    float_gauge(
        &mut r,
        "process_start_time_seconds",
        "When tcpmon started, in seconds since the Unix epoch",
        usage.start_time_seconds,
    );
    let alerts_total = counter_family::<RuleLabels>(
        &mut r,
        "tcpmon_alerts",
        "Alerts raised or escalated (and one-off events) since tcpmon started",
    );
    for (rule, severity, n) in &snapshot.alerts_total {
        alerts_total
            .get_or_create(&RuleLabels {
                rule,
                severity: severity.name(),
            })
            .inc_by(*n);
    }
    let active = gauge_family::<AlertLabels>(
        &mut r,
        "tcpmon_alert_active",
        "1 for each alert active now, by rule, severity and subject",
    );
    for a in &snapshot.active {
        active
            .get_or_create(&AlertLabels {
                rule: a.rule,
                severity: a.severity.name(),
                subject: printable(&a.subject).into_owned(),
            })
            .set(1);
    }
    gauge(
        &mut r,
        "tcpmon_alerts_active_omitted",
        "Active alerts beyond the 256 shown as tcpmon_alert_active series",
        to_i64(snapshot.active_omitted),
    );
    if let Some(t) = &snapshot.tally {
        tally_metrics(&mut r, t);
    }
    r
}

/// The metrics a tally record carries.
/// With --all-netns: every other namespace's sockets per state (at most --max-netns
/// namespaces), and what was left untracked.
fn namespace_metrics(r: &mut Registry, t: &TallyRecord) {
    let Some(namespaces) = &t.namespaces else {
        return;
    };
    let sockets = gauge_family::<NetnsLabels>(
        r,
        "tcpmon_netns_connections",
        "TCP sockets per state in each other network namespace tallied (--all-netns, at most --max-netns), labelled with its inode and owner",
    );
    for n in namespaces {
        for state in STATES {
            let mut count = n.states.get(state);
            if state == TcpState::SynRecv {
                count += n.states.get(TcpState::NewSynRecv);
            }
            sockets
                .get_or_create(&NetnsLabels {
                    netns: n.inode.to_string(),
                    owner: n.owner.clone(),
                    state: state_label(state),
                })
                .set(to_i64(count));
        }
    }
    let untracked = t.namespaces_untracked.clone().unwrap_or_default();
    gauge(
        r,
        "tcpmon_netns_untracked",
        "Network namespaces seen but not tallied (beyond --max-netns)",
        to_i64(untracked.namespaces as u64),
    );
    let transitions = Counter::<u64>::default();
    transitions.inc_by(untracked.transitions);
    r.register(
        "tcpmon_netns_untracked_transitions",
        "Transitions in network namespaces not tallied (beyond --max-netns)",
        transitions,
    );
}

fn tally_metrics(r: &mut Registry, t: &TallyRecord) {
    let transitions = counter_family::<PairLabels>(
        r,
        "tcpmon_state_transitions",
        "TCP state transitions tallied since tcpmon started (inferred ones when polling)",
    );
    for pair in &t.transitions_by_pair {
        transitions
            .get_or_create(&PairLabels {
                from: state_label(pair.old),
                to: state_label(pair.new),
            })
            .inc_by(pair.count);
    }
    let connections = gauge_family::<StateLabels>(
        r,
        "tcpmon_connections",
        "TCP sockets per state and address family (ipv4 includes v4-mapped IPv6; unknown is sockstat's TIME_WAIT correction)",
    );
    for (family, counts) in [
        ("ipv4", &t.states_by_family.ipv4),
        ("ipv6", &t.states_by_family.ipv6),
        ("unknown", &t.states_by_family.unknown),
    ] {
        for state in STATES {
            let mut n = counts.get(state);
            if state == TcpState::SynRecv {
                n += counts.get(TcpState::NewSynRecv);
            }
            connections
                .get_or_create(&StateLabels {
                    state: state_label(state),
                    family,
                })
                .set(to_i64(n));
        }
    }
    listener_metrics(r, t);
    namespace_metrics(r, t);
    let close_wait = gauge_family::<CloseWaitLabels>(
        r,
        "tcpmon_close_wait_sockets",
        "CLOSE_WAIT sockets per local port and owning processes, the ports with the most (--top); port=\"other\" for the rest",
    );
    let oldest = float_family::<CloseWaitLabels>(
        r,
        "tcpmon_close_wait_oldest_seconds",
        "Age of the oldest CLOSE_WAIT socket per local port (a lower bound for sockets that were already there when first seen)",
    );
    let mut shown = 0;
    for cw in &t.close_wait {
        let process = cw.owners.as_ref().filter(|o| !o.is_empty()).map_or_else(
            || "unknown".to_owned(),
            |o| {
                o.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let labels = CloseWaitLabels {
            port: cw.port.to_string(),
            process,
        };
        close_wait.get_or_create(&labels).set(to_i64(cw.count));
        oldest.get_or_create(&labels).set(cw.oldest_secs);
        shown += cw.count;
    }
    let rest = t.states.get(TcpState::CloseWait).saturating_sub(shown);
    close_wait
        .get_or_create(&CloseWaitLabels {
            port: "other".into(),
            process: "other".into(),
        })
        .set(to_i64(rest));
    let per_ip = gauge_family::<IpLabels>(
        r,
        "tcpmon_remote_ip_connections",
        "Connections per remote IP (listeners excluded), the IPs with the most (--top); ip=\"other\" for every other one",
    );
    for ip in &t.per_ip.top {
        per_ip
            .get_or_create(&IpLabels {
                ip: ip.ip.to_string(),
            })
            .set(to_i64(ip.count));
    }
    per_ip
        .get_or_create(&IpLabels { ip: "other".into() })
        .set(to_i64(t.per_ip.other));
    let exhaustion = float_family::<DestinationLabels>(
        r,
        "tcpmon_port_exhaustion_ratio",
        "Share of the ephemeral port range (net.ipv4.ip_local_port_range) tied up in client-side TIME_WAIT toward one destination, the destinations with the most (--top)",
    );
    let dest_tw = gauge_family::<DestinationLabels>(
        r,
        "tcpmon_destination_time_wait_sockets",
        "Client-side TIME_WAIT sockets toward one destination (--top)",
    );
    for d in &t.time_wait_by_destination {
        let labels = DestinationLabels {
            destination: d.destination.clone(),
        };
        exhaustion.get_or_create(&labels).set(d.ratio);
        dest_tw.get_or_create(&labels).set(to_i64(d.time_wait));
    }
    let ext = &t.tcp_ext;
    counter(
        r,
        "tcpmon_syncookies_sent",
        "SYN cookies sent (TcpExt SyncookiesSent, namespace-wide, since boot)",
        ext.syncookies_sent,
    );
    counter(
        r,
        "tcpmon_syn_queue_full_cookies",
        "SYNs answered with a cookie because a SYN queue was full (TcpExt TCPReqQFullDoCookies)",
        ext.reqq_full_do_cookies,
    );
    counter(
        r,
        "tcpmon_syn_queue_full_drops",
        "SYNs dropped because a SYN queue was full (TcpExt TCPReqQFullDrop)",
        ext.reqq_full_drop,
    );
    counter(
        r,
        "tcpmon_listen_overflows",
        "Connections dropped because an accept queue was full (TcpExt ListenOverflows)",
        ext.listen_overflows,
    );
    counter(
        r,
        "tcpmon_listen_drops",
        "Connection requests a listener dropped, any reason (TcpExt ListenDrops)",
        ext.listen_drops,
    );
    self_metrics(r, t);
}

fn listener_metrics(r: &mut Registry, t: &TallyRecord) {
    let half_open = gauge_family::<ListenerLabels>(
        r,
        "tcpmon_listener_half_open",
        "Half-open (SYN_RECV) requests per listener",
    );
    let backlog = gauge_family::<ListenerLabels>(
        r,
        "tcpmon_listener_backlog",
        "listen() backlog per listener (sock_diag)",
    );
    let accept_queue = gauge_family::<ListenerLabels>(
        r,
        "tcpmon_listener_accept_queue",
        "Connections waiting for accept() per listener",
    );
    let syns = counter_family::<ListenerLabels>(
        r,
        "tcpmon_listener_syns",
        "SYNs that created a request socket per listener, counted while the SYN counter was attached (it attaches on the first sign of SYN trouble)",
    );
    let retransmits = counter_family::<ListenerLabels>(
        r,
        "tcpmon_listener_synack_retransmits",
        "SYN-ACK retransmits per listener",
    );
    let mut other = (0u64, 0u64, 0u64);
    for (i, l) in t.listeners.iter().enumerate() {
        if i >= MAX_LISTENERS {
            other.0 += l.half_open;
            other.1 += l.syn.syns;
            other.2 += l.syn.synack_retransmits;
            continue;
        }
        let labels = ListenerLabels {
            listener: l.listener.clone(),
        };
        half_open.get_or_create(&labels).set(to_i64(l.half_open));
        if let Some(b) = l.backlog {
            backlog.get_or_create(&labels).set(i64::from(b));
        }
        if let Some(q) = l.accept_queue {
            accept_queue.get_or_create(&labels).set(i64::from(q));
        }
        syns.get_or_create(&labels).inc_by(l.syn.syns);
        retransmits
            .get_or_create(&labels)
            .inc_by(l.syn.synack_retransmits);
    }
    // SYNs to addresses no listener covers, and listeners beyond the bound.
    let labels = ListenerLabels {
        listener: "other".into(),
    };
    half_open.get_or_create(&labels).set(to_i64(other.0));
    syns.get_or_create(&labels)
        .inc_by(other.1 + t.syn_elsewhere.syns);
    retransmits
        .get_or_create(&labels)
        .inc_by(other.2 + t.syn_elsewhere.synack_retransmits);
}

fn self_metrics(r: &mut Registry, t: &TallyRecord) {
    let received = counter_family::<KindLabels>(
        r,
        "tcpmon_events_received",
        "Kernel records received, by kind",
    );
    for (kind, n) in [
        ("transition", t.received.transitions),
        ("synack_retransmit", t.received.synack_retransmits),
        ("syn_request", t.received.syn_requests),
        ("other_namespace", t.received.foreign),
    ] {
        received.get_or_create(&KindLabels { kind }).inc_by(n);
    }
    let lost = counter_family::<ReasonLabels>(
        r,
        "tcpmon_events_lost",
        "Events lost, by cause: ring_full (a ring was full), kernel_skipped (runs the kernel skipped, any namespace), socket_unreadable, undecodable, unaccounted (openings the kernel counted that no event or counter explains)",
    );
    for (reason, n) in [
        ("ring_full", t.kernel.ringbuf_full),
        ("kernel_skipped", t.kernel.recursion_misses),
        ("socket_unreadable", t.kernel.sock_unreadable),
        ("undecodable", t.received.decode_errors),
        ("unaccounted", t.received.unaccounted),
    ] {
        lost.get_or_create(&ReasonLabels { reason }).inc_by(n);
    }
    counter(
        r,
        "tcpmon_reconciliations",
        "Times the tallies were rebuilt from a snapshot of the socket table",
        t.reconciliations,
    );
    gauge(
        r,
        "tcpmon_reconcile_last_correction_sockets",
        "Sockets the last reconciliation corrected (live counts minus the snapshot, summed over states)",
        t.reconcile.as_ref().map_or(0, |c| to_i64(c.total_abs_error)),
    );
    gauge(
        r,
        "tcpmon_time_wait_sockstat_error",
        "Inferred TIME_WAIT count minus /proc/net/sockstat's at its last check, before correcting to it",
        t.time_wait.sockstat_error.unwrap_or(0),
    );
    gauge(
        r,
        "tcpmon_inconsistencies",
        "Transitions that contradicted the tallies since the last reconciliation (a sign of loss)",
        to_i64(t.inconsistencies),
    );
    float_gauge(
        r,
        "tcpmon_transitions_per_second",
        "Transitions per second over the last tally interval",
        t.transitions_per_sec,
    );
}

/// `snapshot` (and this process's `usage`) as an exposition.
pub fn encode(snapshot: &MetricsSnapshot, usage: ProcessUsage, format: Format) -> String {
    let registry = registry(snapshot, usage);
    let mut out = String::with_capacity(16 << 10);
    // Writing into a String cannot fail.
    let _ = text::encode(&mut out, &registry);
    match format {
        Format::OpenMetrics => out,
        Format::Prometheus => prometheus_text(&out),
    }
}

/// prometheus-client writes OpenMetrics only. Its output is the Prometheus text format
/// but for three things, undone here: a counter's HELP and TYPE name the family without
/// the `_total` its samples carry, `# UNIT` lines, and the closing `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    let _ = writeln!(out, "{prefix}{name}_total {tail}");
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The active alerts, as `/alerts` answers.
#[derive(Clone, Debug, Serialize)]
pub struct AlertsDocument<'a> {
    pub schema_version: u32,
    pub time: Timestamp,
    pub alerts: &'a [ActiveAlert],
    /// Active alerts beyond the ones listed.
    pub omitted: u64,
}

impl<'a> AlertsDocument<'a> {
    pub fn of(snapshot: &'a MetricsSnapshot) -> Self {
        Self {
            schema_version: crate::live::record::SCHEMA_VERSION,
            time: Timestamp(SystemTime::now()),
            alerts: &snapshot.active,
            omitted: snapshot.active_omitted,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr};

    use super::*;
    use crate::{
        ebpf::decode::encode_transition,
        host::proc_net::Socket,
        live::{
            fake::{FakeHost, FakeSource},
            record::{ListenerRecord, Mode, SynTotals, SCHEMA_VERSION},
            rules::Alert,
            Engine, EngineConfig,
        },
        model::{Endpoints, Family, Thresholds, Transition},
    };

    /// `name{labels} value` lines of an exposition, by series.
    fn series(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    fn mode() -> ModeRecord {
        ModeRecord {
            schema_version: SCHEMA_VERSION,
            mode: Mode::Ebpf,
            reason: "test".into(),
            notes: Vec::new(),
            fell_back: false,
            poll_interval: None,
        }
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=0.5")),
            Format::Prometheus
        );
        // What Prometheus sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }

    fn lo() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn the_engine_s_records_become_series() {
        let published = Arc::new(Published::default());
        let mut sink = MetricsSink::new(Arc::clone(&published));
        let mut sockets: Vec<Socket> = (0..3)
            .map(|i| {
                Socket::new(
                    TcpState::Established,
                    (lo(), 80),
                    (lo(), 5000 + i),
                    10 + u64::from(i),
                )
            })
            .collect();
        sockets.push(Socket::new(
            TcpState::CloseWait,
            (lo(), 8080),
            (lo(), 6000),
            20,
        ));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        sockets.push(Socket::new(
            TcpState::Established,
            (v6, 443),
            (v6, 7000),
            30,
        ));
        let mut engine = Engine::start(
            EngineConfig {
                top: 2,
                thresholds: Thresholds {
                    close_wait_age_secs: 1.0,
                    ..Thresholds::DEFAULT
                },
                transitions: None,
                ..EngineConfig::default()
            },
            FakeHost {
                sockets,
                owners: [(
                    20,
                    crate::model::Process {
                        pid: 7,
                        comm: "leaky".into(),
                    },
                )]
                .into(),
                ..FakeHost::default()
            },
            Some(FakeSource::default()),
            mode(),
            &mut sink,
        )
        .unwrap();
        let t = Transition {
            at: Endpoints {
                ts_ns: 2_000_000_000,
                skaddr: 99,
                netns: 0,
                family: Family::Ipv4,
                local_ip: lo(),
                local_port: 80,
                remote_ip: lo(),
                remote_port: 5000,
            },
            old: TcpState::Established,
            new: TcpState::CloseWait,
            task: None,
        };
        engine.source_mut().unwrap().push(encode_transition(&t));
        engine.drain(&mut sink).unwrap();
        // What the table shows now (the alert's owner lookup re-reads it).
        engine.host_mut().sockets[0].state = TcpState::CloseWait;
        engine.host_mut().now_ns += 5_000_000_000;
        engine.tick(&mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        let s = series(&text);
        let get = |k: &str| {
            s.get(k)
                .copied()
                .unwrap_or_else(|| panic!("no {k} in\n{text}"))
        };
        assert_eq!(
            get(r#"tcpmon_connections{state="established",family="ipv4"}"#),
            2.0
        );
        assert_eq!(
            get(r#"tcpmon_connections{state="established",family="ipv6"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_connections{state="close_wait",family="ipv4"}"#),
            2.0
        );
        assert_eq!(
            get(r#"tcpmon_state_transitions_total{from="established",to="close_wait"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_sockets{port="8080",process="leaky[7]"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_sockets{port="80",process="unknown"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_sockets{port="other",process="other"}"#),
            0.0
        );
        let close_wait_total: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with("tcpmon_close_wait_sockets"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(close_wait_total, 2.0);
        let ips: Vec<&String> = s
            .keys()
            .filter(|k| k.starts_with("tcpmon_remote_ip_connections"))
            .collect();
        assert_eq!(ips.len(), 3, "the top two and other: {ips:?}");
        assert_eq!(
            get(r#"tcpmon_alert_active{rule="close_wait",severity="warning",subject="8080"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_alerts_total{rule="close_wait",severity="warning"}"#),
            2.0,
            "ports 80 and 8080"
        );
        assert_eq!(get(r#"tcpmon_mode_info{mode="ebpf"}"#), 1.0);
        assert_eq!(get("tcpmon_up"), 1.0);
        assert_eq!(
            get(r#"tcpmon_events_received_total{kind="transition"}"#),
            1.0
        );
        // OpenMetrics carries the same series and the EOF marker.
        let om = encode(&snapshot, ProcessUsage::default(), Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"));
        assert_eq!(series(&om.replace("# EOF\n", "")).len(), s.len());
    }

    #[test]
    fn label_sets_stay_bounded() {
        let mut sink = MetricsSink::new(Arc::new(Published::default()));
        let alert = |i: usize| Alert {
            status: Status::Raised,
            severity: Severity::Warning,
            rule: "per_ip",
            subject: format!("10.0.{}.{}", i / 256, i % 256),
            message: String::new(),
            netns: None,
            owner: None,
        };
        for i in 0..1000 {
            let a = alert(i);
            sink.alert(&AlertRecord {
                time: Timestamp(SystemTime::UNIX_EPOCH),
                alert: &a,
            })
            .unwrap();
        }
        sink.publish();
        let (_, mut snapshot) = sink.published.latest();
        assert_eq!(snapshot.active.len(), MAX_ACTIVE_ALERTS);
        assert_eq!(snapshot.active_omitted, 1000 - MAX_ACTIVE_ALERTS as u64);
        // Thousands of listeners: at most MAX_LISTENERS series each, and "other".
        let mut tally = Arc::make_mut(&mut snapshot).clone();
        tally.tally = Some(crate::live::record::TallyRecord {
            listeners: (0..3000u16)
                .map(|p| ListenerRecord {
                    listener: format!("0.0.0.0:{p}"),
                    sockets: 1,
                    backlog: Some(128),
                    accept_queue: Some(0),
                    half_open: 1,
                    syn: SynTotals::default(),
                })
                .collect(),
            ..sample_tally()
        });
        let text = encode(&tally, ProcessUsage::default(), Format::Prometheus);
        let half_open = text
            .lines()
            .filter(|l| l.starts_with("tcpmon_listener_half_open{"))
            .count();
        assert_eq!(half_open, MAX_LISTENERS + 1);
        assert!(text.contains(r#"tcpmon_listener_half_open{listener="other"} 2000"#));
    }

    #[test]
    fn other_namespaces_become_labelled_series() {
        use crate::live::record::{NamespaceTally, Untracked};
        let mut tally = sample_tally();
        let mut states = crate::model::StateCounts::default();
        states.add(TcpState::CloseWait, 12);
        states.add(TcpState::NewSynRecv, 2);
        tally.namespaces = Some(vec![NamespaceTally {
            inode: 4026532200,
            name: None,
            owner: "pod web-7d9".into(),
            total: 14,
            states,
            transitions: 40,
            time_wait_sockstat_error: Some(0),
            reconcile_error: None,
        }]);
        tally.namespaces_untracked = Some(Untracked {
            namespaces: 3,
            transitions: 17,
        });
        let published = Arc::new(Published::default());
        let mut sink = MetricsSink::new(Arc::clone(&published));
        sink.mode(&mode()).unwrap();
        sink.tally(&tally).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        let s = series(&text);
        let netns = |state: &str| {
            s[&format!(
                r#"tcpmon_netns_connections{{netns="4026532200",owner="pod web-7d9",state="{state}"}}"#
            )]
        };
        assert_eq!(netns("close_wait"), 12.0);
        assert_eq!(netns("syn_recv"), 2.0);
        assert_eq!(s["tcpmon_netns_untracked"], 3.0);
        assert_eq!(s["tcpmon_netns_untracked_transitions_total"], 17.0);
        // Without --all-netns there is no such series.
        let mut sink = MetricsSink::new(Arc::clone(&published));
        sink.mode(&mode()).unwrap();
        sink.tally(&sample_tally()).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        assert!(!text.contains("tcpmon_netns"), "{text}");
    }

    fn sample_tally() -> crate::live::record::TallyRecord {
        let mut sink = crate::live::fake::RecordingSink::default();
        let mut engine = Engine::start(
            EngineConfig::default(),
            FakeHost::default(),
            Some(FakeSource::default()),
            mode(),
            &mut sink,
        )
        .unwrap();
        engine.tally_record()
    }
}
