//! The collectors: every series the exposition holds, built from a [`MetricsSnapshot`]
//! into a fresh prometheus-client registry, with their bounded label sets.
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType},
    registry::Registry,
};

use super::{MetricsSnapshot, ProcessUsage, ScrapeFigures, MAX_LISTENERS};
use crate::{
    live::{
        failures::FailureCounts,
        latency::{Histogram, BOUNDS_SECS},
        record::{IpCountRecord, TallyRecord},
    },
    model::{printable, CloseWaitSide, Process, TcpState},
};

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
struct NetnsOwnerLabels {
    netns: String,
    owner: String,
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
    /// A server's local port, empty on the client side.
    port: String,
    /// A client's remote ip:port, empty on the server side.
    remote: String,
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerInfoLabels {
    listener: String,
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseWaitOwnerLabels {
    port: String,
    remote: String,
    process: String,
    pid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpLabels {
    ip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: String,
    direction: &'static str,
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
const STATES: [TcpState; 11] = TcpState::REPORTED;
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

/// The series that move between publications, read at each scrape.
pub fn scrape_registry(figures: &ScrapeFigures) -> Registry {
    let mut r = Registry::default();
    // No tally yet: the age of the engine's start stands in, so a start that never
    // completes shows too.
    float_gauge(
        &mut r,
        "tcpmon_last_tally_age_seconds",
        "Seconds since the engine published its last tally (or since it started, before the first), on the monotonic clock: a stuck engine shows here while /metrics keeps serving its last figures",
        figures.tally_age.as_secs_f64(),
    );
    gauge(
        &mut r,
        "tcpmon_http_connections",
        "HTTP connections open now",
        to_i64(figures.http.open),
    );
    counter(
        &mut r,
        "tcpmon_http_connections_refused",
        "HTTP connections closed at once because every connection of their address (or of the server) was busy",
        figures.http.refused,
    );
    counter(
        &mut r,
        "tcpmon_http_connections_evicted",
        "HTTP connections closed to make room for a newcomer: idle ones, or ones that stalled",
        figures.http.evicted,
    );
    counter(
        &mut r,
        "tcpmon_http_connections_stalled",
        "HTTP connections closed after moving no byte for 10 s",
        figures.http.stalled,
    );
    counter(
        &mut r,
        "tcpmon_http_accept_errors",
        "Connections the HTTP side failed to accept (out of file descriptors, most likely)",
        figures.http.accept_errors,
    );
    r
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
    let kinds: [(&str, &str, CountOf); 3] = [
        ("retransmit_segments", "Segments retransmitted", |c| {
            c.retransmits
        }),
        ("resets_sent", "Resets sent", |c| c.resets_sent),
        ("resets_received", "Resets received", |c| c.resets_received),
    ];
    for (name, help, count) in kinds {
        let family = counter_family::<NetnsOwnerLabels>(
            r,
            &format!("tcpmon_netns_{name}"),
            &format!("{help} in each other network namespace tallied since it was first seen (--all-netns; eBPF)"),
        );
        for n in namespaces {
            family
                .get_or_create(&NetnsOwnerLabels {
                    netns: n.inode.to_string(),
                    owner: n.owner.clone(),
                })
                .inc_by(count(&n.failures));
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
        "TCP sockets per state and address family (ipv4 includes v4-mapped IPv6); TIME_WAIT that only sockstat knows of is tcpmon_time_wait_sockstat_correction",
    );
    for (family, counts) in [
        ("ipv4", &t.states_by_family.ipv4),
        ("ipv6", &t.states_by_family.ipv6),
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
    gauge(
        r,
        "tcpmon_time_wait_sockstat_correction",
        "TIME_WAIT sockets /proc/net/sockstat counts beyond those tcpmon saw enter (no family is known for them): add it to tcpmon_connections{state=\"time_wait\"} for the total",
        to_i64(t.states_by_family.unknown.get(TcpState::TimeWait)),
    );
    listener_metrics(r, t);
    failure_metrics(r, t);
    connect_latency_metrics(r, t);
    namespace_metrics(r, t);
    close_wait_metrics(r, t);
    per_ip_family(
        r,
        "tcpmon_remote_ip_connections",
        "Live connections (ESTABLISHED and the handshakes) per remote IP, the IPs with the most (--top); ip=\"other\" for every other one",
        &t.per_ip.top,
        t.per_ip.other,
    );
    per_ip_family(
        r,
        "tcpmon_remote_ip_time_wait_sockets",
        "TIME_WAIT sockets per remote IP, the IPs with the most (--top); ip=\"other\" for every other one",
        &t.per_ip.time_wait_top,
        t.per_ip.time_wait_other,
    );
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
        "SYNs that reached each listener (answered with a request socket or a SYN cookie), counted while the SYN counter was attached (it attaches on the first sign of SYN trouble)",
    );
    let retransmits = counter_family::<ListenerLabels>(
        r,
        "tcpmon_listener_synack_retransmits",
        "SYN-ACK retransmits per listener",
    );
    let drops = counter_family::<ListenerLabels>(
        r,
        "tcpmon_listener_drops",
        "Packets each listener dropped since it was made (its sk_drops: SYNs and ACKs turned away because the accept queue was full, mostly)",
    );
    let info = gauge_family::<ListenerInfoLabels>(
        r,
        "tcpmon_listener_info",
        "1 for each listener, with the names of the processes holding it (unknown when not visible): a new series is a new listener",
    );
    let mut other = (0u64, 0u64, 0u64);
    for (i, l) in t.listeners.iter().enumerate() {
        if i >= MAX_LISTENERS {
            other.0 += l.half_open;
            other.1 += l.syn.syns;
            other.2 += l.syn.synack_retransmits;
            continue;
        }
        info.get_or_create(&ListenerInfoLabels {
            listener: l.listener.clone(),
            process: process_names(l.owners.as_deref()),
        })
        .set(1);
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
        if let Some(n) = l.drops {
            drops.get_or_create(&labels).inc_by(n);
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
    counter(
        r,
        "tcpmon_socket_read_failures",
        "Reads of the socket table that failed after the start (out of file descriptors, say), each retried with a growing wait; the socket_read alert is active while they fail",
        t.received.socket_read_failures,
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

/// A gauge per remote IP of `top`, and `ip="other"` for the rest.
/// Histograms the engine has already counted, one per label set: exposed as they are.
#[derive(Debug)]
struct CountedHistograms(Vec<(DestinationLabels, Histogram)>);

impl EncodeMetric for CountedHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            let buckets: Vec<(f64, u64)> = BOUNDS_SECS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(h.buckets.iter().copied())
                .collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_secs, h.count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Connect times (SYN_SENT -> ESTABLISHED) per destination: the --top with the most
/// connects and destination="other".
fn connect_latency_metrics(r: &mut Registry, t: &TallyRecord) {
    let c = &t.connect_latency;
    let mut all: Vec<(DestinationLabels, Histogram)> = c
        .by_destination
        .iter()
        .map(|d| {
            (
                DestinationLabels {
                    destination: d.destination.clone(),
                },
                d.histogram.clone(),
            )
        })
        .collect();
    all.push((
        DestinationLabels {
            destination: "other".into(),
        },
        c.other.clone(),
    ));
    r.register(
        "tcpmon_connect_duration_seconds",
        "Time from connect() to ESTABLISHED (SYN_SENT -> ESTABLISHED) in tcpmon's namespace, per destination ip:port: the --top with the most connects; destination=\"other\" for the rest (eBPF)",
        CountedHistograms(all),
    );
}

/// Which count of a [`FailureCounts`] a series shows.
type CountOf = fn(&FailureCounts) -> u64;

/// Retransmits and resets: totals (counters), and per remote IP and service port since
/// the start (gauges: the ones with the most, --top, and "other" for the rest, which
/// moves both ways as the listed ones change; rates come from the totals).
fn failure_metrics(r: &mut Registry, t: &TallyRecord) {
    let f = &t.failures;
    let kinds: [(&str, &str, CountOf); 4] = [
        ("retransmit_segments", "Segments retransmitted", |c| {
            c.retransmits
        }),
        (
            "retransmitting_segments_sent",
            "Segments sent by connections that retransmitted (from each one's previous retransmit, or its start: what retransmit_segments is a share of)",
            |c| c.segments_sent,
        ),
        ("resets_sent", "Resets sent", |c| c.resets_sent),
        (
            "resets_received",
            "Resets received (connections reset by their peer)",
            |c| c.resets_received,
        ),
    ];
    let drops = counter_family::<DropLabels>(
        r,
        "tcpmon_drops",
        "TCP packets the kernel dropped in tcpmon's namespace since it started, by the kernel's reason (skb:kfree_skb; its enum skb_drop_reason, in lower case without SKB_DROP_REASON_)",
    );
    for d in &f.drops_by_reason {
        drops
            .get_or_create(&DropLabels {
                reason: d.reason.clone(),
            })
            .inc_by(d.count);
    }
    let reset_reasons = counter_family::<DropLabels>(
        r,
        "tcpmon_resets_sent_by_reason",
        "Resets sent in tcpmon's namespace since it started, by the kernel's reason (its enum sk_rst_reason, lower case, without SK_RST_REASON_; kernels whose tcp_send_reset says it)",
    );
    for d in &f.resets_sent_by_reason {
        reset_reasons
            .get_or_create(&DropLabels {
                reason: d.reason.clone(),
            })
            .inc_by(d.count);
    }
    for (name, help, count) in kinds {
        counter(
            r,
            &format!("tcpmon_{name}"),
            &format!("{help} in tcpmon's namespace since it started (eBPF)"),
            count(&f.totals),
        );
        let by_ip = gauge_family::<IpLabels>(
            r,
            &format!("tcpmon_remote_ip_{name}"),
            &format!("{help} since tcpmon started, per remote IP: the IPs with the most failures (--top); ip=\"other\" for every other one"),
        );
        for p in &f.by_peer {
            by_ip
                .get_or_create(&IpLabels {
                    ip: p.ip.to_string(),
                })
                .set(to_i64(count(&p.counts)));
        }
        by_ip
            .get_or_create(&IpLabels { ip: "other".into() })
            .set(to_i64(count(&f.peers_other)));
        let by_port = gauge_family::<PortLabels>(
            r,
            &format!("tcpmon_port_{name}"),
            &format!("{help} since tcpmon started, per service port (direction=\"in\": a local port, \"out\": a remote one), the ports with the most (--top); port=\"other\" for the rest"),
        );
        for p in &f.by_port {
            by_port
                .get_or_create(&PortLabels {
                    port: p.port.to_string(),
                    direction: p.direction.name(),
                })
                .set(to_i64(count(&p.counts)));
        }
        by_port
            .get_or_create(&PortLabels {
                port: "other".into(),
                direction: "",
            })
            .set(to_i64(count(&f.ports_other)));
    }
}

fn per_ip_family(r: &mut Registry, name: &str, help: &str, top: &[IpCountRecord], other: u64) {
    let family = gauge_family::<IpLabels>(r, name, help);
    for ip in top {
        family
            .get_or_create(&IpLabels {
                ip: ip.ip.to_string(),
            })
            .set(to_i64(ip.count));
    }
    family
        .get_or_create(&IpLabels { ip: "other".into() })
        .set(to_i64(other));
}

/// CLOSE_WAIT by leak: `port` (a server's local port) or `remote` (a client's server),
/// with the processes holding them by name; their pids in an info series, so that the
/// main series survive a restart of the leaking process.
fn close_wait_metrics(r: &mut Registry, t: &TallyRecord) {
    let close_wait = gauge_family::<CloseWaitLabels>(
        r,
        "tcpmon_close_wait_sockets",
        "CLOSE_WAIT sockets per leak: a server's local port (port) or a client's remote ip:port (remote), with the names of the processes holding them; the leaks with the most (--top), port=\"other\" for the rest",
    );
    let oldest = float_family::<CloseWaitLabels>(
        r,
        "tcpmon_close_wait_oldest_seconds",
        "Age of the oldest CLOSE_WAIT socket per leak (a lower bound for sockets found by a reconciliation; since tcpmon started for sockets that were there then)",
    );
    let owners = gauge_family::<CloseWaitOwnerLabels>(
        r,
        "tcpmon_close_wait_owner_info",
        "1 for each process holding a leak's CLOSE_WAIT sockets, with its pid",
    );
    let mut shown = 0;
    for cw in &t.close_wait {
        let (port, remote) = match cw.side {
            CloseWaitSide::Server { local_port } => (local_port.to_string(), String::new()),
            CloseWaitSide::Client { remote } => (String::new(), remote.to_string()),
        };
        let holders = cw.owners.as_deref().unwrap_or_default();
        let process = process_names(cw.owners.as_deref());
        for p in holders {
            owners
                .get_or_create(&CloseWaitOwnerLabels {
                    port: port.clone(),
                    remote: remote.clone(),
                    process: printable(&p.comm).into_owned(),
                    pid: p.pid.to_string(),
                })
                .set(1);
        }
        let labels = CloseWaitLabels {
            port,
            remote,
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
            remote: "other".into(),
            process: "other".into(),
        })
        .set(to_i64(rest));
}

/// The names of the processes holding something, sorted and comma-separated, `unknown`
/// when none is known: a label that stays the same across restarts (pids do not).
fn process_names(holders: Option<&[Process]>) -> String {
    let mut names: Vec<String> = holders
        .unwrap_or_default()
        .iter()
        .map(|p| printable(&p.comm).into_owned())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "unknown".to_owned()
    } else {
        names.join(",")
    }
}
