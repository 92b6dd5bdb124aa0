//! What the live engine emits, as typed records: sinks (terminal text, NDJSON, the
//! Prometheus exporter, tests) receive these and nothing else. The serde names are the
//! NDJSON interface (docs/schema), versioned by [`SCHEMA_VERSION`].
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    failures::{FailureCounts, FailuresRecord},
    latency::ConnectLatency,
    loss::Received,
    rules::Alert,
    syn::{half_open_of, SynState},
    tally::{ReconcileReport, Since, TallyView},
};
use crate::{
    ebpf::KernelCounters,
    host::{clock::Clock, diag::ListenerQueues},
    model::{
        endpoint, CloseWaitSide, Direction, Origin, PortRange, Process, Severity, StateCounts,
        TcpState, Transition,
    },
};

/// The version of the NDJSON record schemas; it changes when a field changes meaning or
/// goes away, and when the tally gains a section a strict validator would refuse (3: the
/// tally's `failures`).
pub const SCHEMA_VERSION: u32 = 3;

/// Which engine feeds the tallies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kernel programs report every transition.
    Ebpf,
    /// Snapshots are diffed every interval; transitions between two are not seen.
    Poll,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Poll => "poll",
        }
    }
}

/// A wall-clock instant, written as RFC 3339 with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_rfc3339(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// Said once, when the tallies are valid: which engine runs and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeRecord {
    pub schema_version: u32,
    pub mode: Mode,
    /// One line: what is watched and how (or why it polls).
    pub reason: String,
    /// Things worth saying once (a hook that did not load, a privilege missing).
    pub notes: Vec<String>,
    /// eBPF was wanted (auto) but could not load, so it polls.
    pub fell_back: bool,
    /// How often it polls, in poll mode.
    #[serde(with = "opt_secs", default)]
    pub poll_interval: Option<Duration>,
}

/// One transition, borrowed for the sink's call (the hot path: nothing is copied).
#[derive(Clone, Copy, Debug)]
pub struct TransitionEvent<'a> {
    pub transition: &'a Transition,
    /// Microseconds in the old state, when the engine saw the socket enter it.
    pub micros_in_old: Option<u64>,
    pub origin: Origin,
    /// Maps the transition's monotonic stamp to wall-clock time.
    pub clock: &'a Clock,
}

/// An alert raised, changed or cleared (or a one-off event).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertRecord<'a> {
    pub time: Timestamp,
    #[serde(flatten)]
    pub alert: &'a Alert,
}

/// How far the live tallies were from a fresh snapshot when it replaced them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileSummary {
    /// baseline, poll, periodic, loss or owners.
    pub reason: String,
    pub time: Timestamp,
    /// Live minus snapshot, per state that differed.
    pub error: BTreeMap<String, i64>,
    pub total_abs_error: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeWaitTally {
    pub count: u64,
    /// Live minus /proc/net/sockstat `tw` at its last check, before correcting to it.
    pub sockstat_error: Option<i64>,
    pub sockstat_time: Option<Timestamp>,
    /// Inferred entries not held past the kernel's tcp_max_tw_buckets.
    pub not_held: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpCountRecord {
    pub ip: IpAddr,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerIpTally {
    /// The remote IPs with the most live connections (ESTABLISHED and the handshakes),
    /// largest first.
    pub top: Vec<IpCountRecord>,
    /// Live connections of every other remote IP (those counted individually and the
    /// aggregate).
    pub other: u64,
    /// The remote IPs with the most TIME_WAIT sockets, largest first.
    pub time_wait_top: Vec<IpCountRecord>,
    /// TIME_WAIT sockets of every other remote IP.
    pub time_wait_other: u64,
    /// Remote IPs counted individually.
    pub tracked: usize,
    /// Sockets whose remote IP is not counted individually (the table is full).
    pub aggregated: u64,
    /// The remote IPs of either list with both counts, most sockets first (for
    /// in-process consumers such as `top`; not in the JSON record).
    #[serde(skip)]
    pub peers: Vec<PeerRecord>,
}

/// One remote IP's live connections and TIME_WAIT sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    pub ip: IpAddr,
    /// SYN_SENT, SYN_RECV and ESTABLISHED.
    pub connections: u64,
    pub time_wait: u64,
}

/// Sockets per state, by address family (IPv4 includes v4-mapped IPv6 sockets, as per-IP
/// grouping does). `unknown` holds what sockstat's TIME_WAIT correction adds: it has no
/// family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FamilyStates {
    pub ipv4: StateCounts,
    pub ipv6: StateCounts,
    pub unknown: StateCounts,
}

/// Client-side TIME_WAIT toward one destination, and the share of the ephemeral port
/// range it ties up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationRecord {
    pub destination: String,
    pub time_wait: u64,
    /// time_wait / the size of net.ipv4.ip_local_port_range.
    pub ratio: f64,
}

/// SYN activity counted since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynTotals {
    /// SYNs that created a request socket, while the SYN counter was attached.
    pub syns: u64,
    pub synack_retransmits: u64,
}

/// CLOSE_WAIT sockets with one leak: a server's local port, or a client's remote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloseWaitRecord {
    #[serde(flatten)]
    pub side: CloseWaitSide,
    pub count: u64,
    /// Seconds since the oldest entered CLOSE_WAIT (for `since` "found": at least; for
    /// "at_start": since tcpmon started, its real age unknown).
    pub oldest_secs: f64,
    pub since: Since,
    /// Processes holding them, when known.
    pub owners: Option<Vec<Process>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HalfOpenListener {
    pub listener: String,
    pub count: u64,
    pub sources: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortCountRecord {
    pub port: u16,
    /// `in`: accepted on this local port; `out`: made toward this remote port.
    pub direction: Direction,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerRecord {
    pub listener: String,
    /// Sockets listening there (SO_REUSEPORT).
    pub sockets: u64,
    /// listen()'s backlog and the connections waiting for accept() (sock_diag; null when
    /// it could not be asked).
    #[serde(default)]
    pub backlog: Option<u32>,
    #[serde(default)]
    pub accept_queue: Option<u32>,
    /// Packets the listener dropped since it was made (`sk_drops`: a full accept queue,
    /// mostly; sock_diag; null when not known).
    #[serde(default)]
    pub drops: Option<u64>,
    /// Half-open requests at the last count.
    #[serde(default)]
    pub half_open: u64,
    /// SYN activity since the start, on this listener's address or any address its
    /// wildcard covers.
    #[serde(default)]
    pub syn: SynTotals,
    /// Processes holding it, when known.
    #[serde(default)]
    pub owners: Option<Vec<Process>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    pub rule: String,
    pub subject: String,
    pub severity: Severity,
}

/// How many transitions went from `old` to `new`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairCount {
    pub old: TcpState,
    pub new: TcpState,
    pub count: u64,
}

/// The SYN counter's state (a cgroup skb program attached only while SYN trouble is
/// suspected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SynCounterState {
    #[serde(rename = "attached")]
    Attached,
    /// Wanted, but attaching failed (a warning said why); retried.
    #[serde(rename = "attach failed")]
    AttachFailed,
    #[serde(rename = "idle")]
    Idle,
    /// It did not load, or the engine polls.
    #[serde(rename = "unavailable")]
    Unavailable,
}

/// The periodic summary of the live tallies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TallyRecord {
    pub schema_version: u32,
    pub time: Timestamp,
    pub mode: Mode,
    pub states: StateCounts,
    pub states_by_family: FamilyStates,
    pub time_wait: TimeWaitTally,
    /// The destinations with the most client-side TIME_WAIT, largest first.
    pub time_wait_by_destination: Vec<DestinationRecord>,
    pub reconcile: Option<ReconcileSummary>,
    pub reconciliations: u64,
    pub per_ip: PerIpTally,
    pub close_wait: Vec<CloseWaitRecord>,
    pub half_open: Vec<HalfOpenListener>,
    pub established_by_port: Vec<PortCountRecord>,
    pub listeners: Vec<ListenerRecord>,
    /// SYN activity on addresses no listener covers (a listener that went away).
    pub syn_elsewhere: SynTotals,
    /// The kernel's SYN-side TcpExt counters (namespace-wide, since boot).
    pub tcp_ext: crate::host::kstats::SynCounters,
    pub alerts_active: Vec<ActiveAlert>,
    /// Transitions tallied since the start, per (old, new) pair seen.
    pub transitions_by_pair: Vec<PairCount>,
    pub received: Received,
    pub syn_counter: SynCounterState,
    pub kernel: KernelCounters,
    /// Events lost, every cause (see `received` and `kernel` for which).
    pub lost: u64,
    /// Transitions that contradicted the tally since the last reconciliation (a sign of
    /// loss, repaired by the next one).
    pub inconsistencies: u64,
    pub transitions_per_sec: f64,
    /// With --all-netns: every other namespace, each tallied on its own, largest first
    /// (the fields above are tcpmon's own namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<NamespaceTally>>,
    /// With --all-netns: namespaces beyond --max-netns, not tallied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces_untracked: Option<Untracked>,
    /// Retransmits and resets in tcpmon's namespace since the start (eBPF only; zero
    /// when polling or where the hooks did not attach, which the mode's notes say).
    #[serde(default)]
    pub failures: FailuresRecord,
    /// How long connects in tcpmon's namespace took (SYN_SENT -> ESTABLISHED), per
    /// destination (eBPF only).
    #[serde(default)]
    pub connect_latency: ConnectLatency,
    /// How often it polls, in poll mode (the text line says it).
    #[serde(skip)]
    pub poll_interval: Option<Duration>,
}

/// What a tally record is made of: the engine's state at one moment.
pub(crate) struct TallyInputs<'a> {
    pub now_ns: u64,
    pub clock: &'a Clock,
    pub mode: Mode,
    pub view: TallyView,
    /// Entries of each list.
    pub top: usize,
    /// IPv4, IPv6 and the family-less sockstat correction.
    pub family_counts: [StateCounts; 3],
    pub time_wait_unheld: u64,
    /// When TIME_WAIT was last checked against sockstat, and how far off it was.
    pub time_wait_check: Option<(u64, i64)>,
    pub port_range: PortRange,
    pub transitions_per_sec: f64,
    /// The last reconciliation, and why it ran.
    pub last_reconcile: Option<(&'a ReconcileReport, &'static str)>,
    pub reconciliations: u64,
    pub close_wait_owners: &'a HashMap<CloseWaitSide, Vec<Process>>,
    pub listener_owners: &'a HashMap<(IpAddr, u16), Vec<Process>>,
    pub queues: &'a HashMap<(IpAddr, u16), ListenerQueues>,
    pub syn: &'a SynState,
    pub syn_counter: SynCounterState,
    pub alerts_active: Vec<ActiveAlert>,
    pub pairs: &'a [[u64; 12]; 12],
    pub received: Received,
    pub kernel: KernelCounters,
    pub lost: u64,
    pub namespaces: Option<Vec<NamespaceTally>>,
    pub namespaces_untracked: Option<Untracked>,
    pub failures: FailuresRecord,
    pub connect_latency: ConnectLatency,
    pub poll_interval: Option<Duration>,
}

impl TallyRecord {
    /// The record of `i`, its lists cut to `i.top`.
    pub(crate) fn build(i: TallyInputs<'_>) -> Self {
        let view = &i.view;
        let wall = |ns: u64| Timestamp(i.clock.wall(ns));
        let [ipv4, ipv6, unknown] = i.family_counts;
        let half_open: HashMap<(IpAddr, u16), u64> = view
            .half_open
            .iter()
            .map(|(ip, port, h)| ((*ip, *port), h.count))
            .collect();
        let listed: Vec<(IpAddr, u16)> = view.listeners.iter().map(|l| (l.0, l.1)).collect();
        let (syn_by_listener, syn_elsewhere) = i.syn.totals_by_listener(&listed);
        let range = i.port_range.size() as f64;
        TallyRecord {
            schema_version: SCHEMA_VERSION,
            time: wall(i.now_ns),
            mode: i.mode,
            states: view.states,
            states_by_family: FamilyStates {
                ipv4,
                ipv6,
                unknown,
            },
            time_wait: TimeWaitTally {
                count: view.time_wait,
                sockstat_error: i.time_wait_check.map(|c| c.1),
                sockstat_time: i.time_wait_check.map(|c| wall(c.0)),
                not_held: i.time_wait_unheld,
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
            reconcile: i.last_reconcile.map(|(r, why)| ReconcileSummary {
                reason: why.to_owned(),
                time: wall(r.at_ns),
                error: r
                    .error
                    .iter()
                    .map(|(state, n)| ((*state).to_owned(), *n))
                    .collect(),
                total_abs_error: r.total_abs_error,
            }),
            reconciliations: i.reconciliations,
            per_ip: PerIpTally::of(view),
            close_wait: CloseWaitRecord::of(view, i.now_ns, i.top, i.close_wait_owners),
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
                .map(|&(direction, port, count)| PortCountRecord {
                    port,
                    direction,
                    count,
                })
                .collect(),
            listeners: view
                .listeners
                .iter()
                .zip(syn_by_listener)
                .map(|(&(ip, port, sockets), syn)| {
                    let queues = i.queues.get(&(ip, port));
                    ListenerRecord {
                        listener: endpoint(ip, port),
                        sockets,
                        backlog: queues.map(|q| q.backlog),
                        accept_queue: queues.map(|q| q.accept_queue),
                        drops: queues.and_then(|q| q.drops),
                        half_open: half_open_of(&half_open, ip, port),
                        syn,
                        owners: i.listener_owners.get(&(ip, port)).cloned(),
                    }
                })
                .collect(),
            syn_elsewhere,
            tcp_ext: i.syn.counters.unwrap_or_default(),
            alerts_active: i.alerts_active,
            transitions_by_pair: TcpState::ALL
                .iter()
                .flat_map(|&old| TcpState::ALL.iter().map(move |&new| (old, new)))
                .filter_map(|(old, new)| {
                    let count = i.pairs[old.index()][new.index()];
                    (count > 0).then_some(PairCount { old, new, count })
                })
                .collect(),
            received: i.received,
            syn_counter: i.syn_counter,
            kernel: i.kernel,
            lost: i.lost,
            inconsistencies: view.inconsistencies,
            transitions_per_sec: i.transitions_per_sec,
            namespaces: i.namespaces,
            namespaces_untracked: i.namespaces_untracked,
            failures: i.failures,
            connect_latency: i.connect_latency,
            poll_interval: i.poll_interval,
        }
    }
}

impl PerIpTally {
    pub(crate) fn of(view: &TallyView) -> Self {
        let shown: u64 = view.per_ip_top.iter().map(|(_, n)| n).sum();
        let shown_time_wait: u64 = view.per_ip_time_wait_top.iter().map(|(_, n)| n).sum();
        PerIpTally {
            top: view
                .per_ip_top
                .iter()
                .map(|&(ip, count)| IpCountRecord { ip, count })
                .collect(),
            other: view.per_ip_total.saturating_sub(shown),
            time_wait_top: view
                .per_ip_time_wait_top
                .iter()
                .map(|&(ip, count)| IpCountRecord { ip, count })
                .collect(),
            time_wait_other: view.per_ip_time_wait_total.saturating_sub(shown_time_wait),
            tracked: view.per_ip_tracked,
            aggregated: view.per_ip_aggregated,
            peers: view
                .peers
                .iter()
                .map(|&(ip, connections, time_wait)| PeerRecord {
                    ip,
                    connections,
                    time_wait,
                })
                .collect(),
        }
    }
}

impl CloseWaitRecord {
    /// The `top` largest groups of `view`, aged at `now_ns`.
    pub(crate) fn of(
        view: &TallyView,
        now_ns: u64,
        top: usize,
        owners: &HashMap<CloseWaitSide, Vec<Process>>,
    ) -> Vec<Self> {
        view.close_wait
            .iter()
            .take(top)
            .map(|group| CloseWaitRecord {
                side: group.side,
                count: group.count,
                oldest_secs: now_ns.saturating_sub(group.oldest_ns) as f64 / 1e9,
                since: group.since,
                owners: owners.get(&group.side).cloned(),
            })
            .collect()
    }
}

/// One namespace in a tally record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceTally {
    pub inode: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its owner, as text.
    pub owner: String,
    pub total: u64,
    pub states: StateCounts,
    /// Its transitions tallied since it was first seen.
    pub transitions: u64,
    /// Inferred TIME_WAIT minus its sockstat (`None` when that could not be read).
    pub time_wait_sockstat_error: Option<i64>,
    /// Sockets its last reconciliation corrected.
    pub reconcile_error: Option<u64>,
    /// Its listeners, remote IPs and CLOSE_WAIT, when the engine was asked for them
    /// (`EngineConfig::namespace_detail`; not in the JSON record).
    #[serde(skip)]
    pub detail: Option<Box<NamespaceDetail>>,
    /// Its retransmits, resets received and sent since it was first seen (eBPF).
    #[serde(default)]
    pub failures: FailureCounts,
}

/// What a namespace's own tally holds beyond its state counts. Listener queues, SYN
/// counts and listener owners are read in tcpmon's own namespace only: absent here.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceDetail {
    pub listeners: Vec<ListenerRecord>,
    pub per_ip: PerIpTally,
    pub close_wait: Vec<CloseWaitRecord>,
    pub failures: FailuresRecord,
}

/// Namespaces beyond `--max-netns`: named by count, their transitions counted together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Untracked {
    pub namespaces: usize,
    pub transitions: u64,
}

/// Said once, at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRecord {
    pub schema_version: u32,
    pub time: Timestamp,
    pub mode: Mode,
    /// How long the engine ran.
    pub seconds: f64,
    pub transitions: u64,
    pub lost: u64,
    pub received: Received,
    pub kernel: KernelCounters,
    pub reconciliations: u64,
}

/// Optional durations as seconds (f64) in JSON.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => ser.serialize_some(&d.as_secs_f64()),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(de)?
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64))
    }
}
