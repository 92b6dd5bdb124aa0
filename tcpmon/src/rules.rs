//! Live detectors: they look at the tally and the SYN counters at each evaluation and
//! say when a problem starts, changes severity, and ends. Pure: inputs in, alerts out.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    analysis::PortRange,
    audit::Severity,
    kstats::SynCounters,
    model::endpoint,
    process::Process,
    tally::{TallyView, MAX_SOURCES},
};

/// Alert thresholds for `watch` (defaults documented in the README; all are flags).
#[derive(Clone, Debug, Serialize)]
pub struct LiveThresholds {
    pub time_wait_warn: u64,
    pub time_wait_crit: u64,
    /// Client-side TIME_WAIT toward one destination, % of the ephemeral range.
    pub port_exhaustion_warn_pct: f64,
    pub port_exhaustion_crit_pct: f64,
    /// CLOSE_WAIT sockets older than this (seconds) raise an alert.
    pub close_wait_age_secs: f64,
    /// More CLOSE_WAIT sockets than this on one port raise an alert.
    pub close_wait_count: u64,
    pub per_ip_warn: u64,
    pub per_ip_crit: u64,
    /// Half-open requests, % of the listener's backlog.
    pub syn_backlog_pct: f64,
    /// SYN-ACK retransmits per second on one listener.
    pub synack_retransmit_rate: f64,
    /// SYNs per second on one listener with fewer than half completing.
    pub syn_rate: f64,
}

impl Default for LiveThresholds {
    fn default() -> Self {
        Self {
            time_wait_warn: 1000,
            time_wait_crit: 5000,
            port_exhaustion_warn_pct: 50.0,
            port_exhaustion_crit_pct: 80.0,
            close_wait_age_secs: 60.0,
            close_wait_count: 100,
            per_ip_warn: 200,
            per_ip_crit: 1000,
            syn_backlog_pct: 50.0,
            synack_retransmit_rate: 100.0,
            syn_rate: 1000.0,
        }
    }
}

/// SYN activity of one listener over the last window, from the kernel programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SynWindow {
    pub syns: u64,
    /// Handshakes that completed (LISTEN -> SYN_RECV child sockets).
    pub completed: u64,
    pub synack_retransmits: u64,
    /// Distinct SYN sources (saturates at MAX_SOURCES).
    pub sources: u64,
}

/// Half-open requests (or SYNs outrunning completions) that a busy host has in flight
/// anyway: a loopback handshake lasts tens of microseconds. Fewer hint at nothing.
const SYN_SLACK: u64 = 64;

/// Whether anything in this window hints at SYN trouble: a SYN-ACK retransmitted, a SYN
/// or listen queue overflowed (cookies, drops), requests reset by their peers, the last
/// half-open dump finding more than [`SYN_SLACK`], or (only while the SYN counter is
/// attached) SYNs outrunning completions.
pub fn syn_trouble_hinted(
    syn: &HashMap<(IpAddr, u16), SynWindow>,
    syn_counters: &SynCounters,
    last_half_open: u64,
) -> bool {
    let (syns, completed, retransmits) = syn.values().fold((0, 0, 0), |acc, w| {
        (
            acc.0 + w.syns,
            acc.1 + w.completed,
            acc.2 + w.synack_retransmits,
        )
    });
    retransmits > 0
        || syns > completed + SYN_SLACK
        || last_half_open > SYN_SLACK
        || syn_counters.queue_overflowed()
        || syn_counters.listen_overflows + syn_counters.listen_drops > 0
        || syn_counters.embryonic_resets > 0
}

/// Whether to dump half-open request sockets this evaluation. The dump walks every
/// established and TIME_WAIT socket (request sockets share their hash table), a visible
/// cost under heavy churn, so it is skipped while nothing hints at SYN trouble and the
/// previous dump found none; at least every `HALF_OPEN_RECHECK_NS` anyway. Without the
/// SYN counter program (it did not load) it always dumps.
pub fn half_open_worth_dumping(
    hinted: bool,
    syn_counter_loaded: bool,
    last_half_open: u64,
    since_last_dump_ns: u64,
) -> bool {
    const HALF_OPEN_RECHECK_NS: u64 = 10_000_000_000;
    !syn_counter_loaded
        || hinted
        || last_half_open > 0
        || since_last_dump_ns >= HALF_OPEN_RECHECK_NS
}

/// How long the SYN counter stays attached after the last hint of SYN trouble.
pub const SYN_COUNTER_HOLD_NS: u64 = 60_000_000_000;

/// Attaches the SYN counter (cgroup sock_ops) on the first hint of SYN trouble and
/// detaches it after [`SYN_COUNTER_HOLD_NS`] without one. Attached, it runs on about nine
/// socket operations of every connection on the host (sock_ops has no per-operation
/// subscription), 1-2 points of connection rate under maximal churn; idle, SYN trouble
/// still shows through retransmits, the TcpExt counters and the half-open dumps, and
/// the SYN rate is reported as not counted rather than as zero.
#[derive(Debug, Default)]
pub struct SynCounterSwitch {
    last_hint_ns: Option<u64>,
    wanted: bool,
}

impl SynCounterSwitch {
    /// Whether the counter should be attached now.
    pub fn wanted(&mut self, hinted: bool, now_ns: u64) -> bool {
        if hinted {
            self.last_hint_ns = Some(now_ns);
        }
        self.wanted = self
            .last_hint_ns
            .is_some_and(|at| now_ns.saturating_sub(at) < SYN_COUNTER_HOLD_NS);
        self.wanted
    }

    /// What the last [`Self::wanted`] answered.
    pub fn holding(&self) -> bool {
        self.wanted
    }
}

/// How much of an evaluation window the SYN counter was attached for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SynCoverage {
    Whole,
    /// Attached during the window: the SYN rate is a lower bound.
    Partial,
    /// Not attached (idle, or it could not load): no SYN rate.
    #[default]
    None,
}

/// Accumulates SYN activity per listener between evaluations, in bounded memory: distinct
/// sources saturate at MAX_SOURCES per listener, so a flood from a million spoofed
/// addresses costs at most that many entries until the next evaluation empties it.
#[derive(Debug, Default)]
pub struct SynTracker {
    listeners: rustc_hash::FxHashMap<(IpAddr, u16), (SynWindow, rustc_hash::FxHashSet<IpAddr>)>,
}

impl SynTracker {
    pub fn syn(&mut self, listener: (IpAddr, u16), source: IpAddr) {
        let (w, sources) = self.listeners.entry(listener).or_default();
        w.syns += 1;
        if sources.len() < MAX_SOURCES {
            sources.insert(source);
        }
    }

    pub fn completed(&mut self, listener: (IpAddr, u16)) {
        self.listeners.entry(listener).or_default().0.completed += 1;
    }

    pub fn synack_retransmit(&mut self, listener: (IpAddr, u16)) {
        self.listeners
            .entry(listener)
            .or_default()
            .0
            .synack_retransmits += 1;
    }

    /// The window so far, leaving the tracker empty.
    pub fn take(&mut self) -> HashMap<(IpAddr, u16), SynWindow> {
        std::mem::take(&mut self.listeners)
            .into_iter()
            .map(|(k, (mut w, sources))| {
                w.sources = sources.len() as u64;
                (k, w)
            })
            .collect()
    }

    /// Entries held (for the bounded-memory promise).
    pub fn entries(&self) -> usize {
        self.listeners.values().map(|(_, s)| s.len() + 1).sum()
    }
}

/// Everything an evaluation looks at besides the tally.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub now_ns: u64,
    pub window_secs: f64,
    pub syn: HashMap<(IpAddr, u16), SynWindow>,
    /// TcpExt counter increases over the window (whole namespace).
    pub syn_counters: SynCounters,
    /// Whether `syn` counts every SYN of the window.
    pub syn_coverage: SynCoverage,
    pub backlogs: HashMap<(IpAddr, u16), u32>,
    pub somaxconn: Option<u32>,
    pub port_range: PortRange,
    /// Owners of CLOSE_WAIT sockets by local port, when known.
    pub close_wait_owners: HashMap<u16, Vec<Process>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Raised,
    /// Still active, severity changed.
    Changed,
    Cleared,
    /// A one-off event (a new listener) with nothing to clear.
    Event,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub status: Status,
    pub severity: Severity,
    /// syn_flood, close_wait, time_wait, port_exhaustion, per_ip, new_listener.
    pub rule: &'static str,
    /// What the alert is about (listener, port, destination, IP); stable while it lasts.
    pub subject: String,
    pub message: String,
}

/// Remembers which alerts are active so each start and end is reported once.
#[derive(Clone, Debug, Default)]
pub struct Detector {
    pub thresholds: LiveThresholds,
    active: BTreeMap<(&'static str, String), (Severity, String)>,
}

fn level(value: f64, warn: f64, crit: f64) -> Option<Severity> {
    if value > crit {
        Some(Severity::Critical)
    } else if value > warn {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// The plural ending for a count of `n`.
pub fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Detector {
    pub fn new(thresholds: LiveThresholds) -> Self {
        Self {
            thresholds,
            active: BTreeMap::new(),
        }
    }

    pub fn active(&self) -> impl Iterator<Item = (&str, &str, Severity)> {
        self.active
            .iter()
            .map(|((rule, subject), (sev, _))| (*rule, subject.as_str(), *sev))
    }

    /// A listener appeared: reported once, as it happens.
    pub fn new_listener(&self, ip: IpAddr, port: u16, by: Option<&Process>) -> Alert {
        let who = by.map(|p| format!(" by {p}")).unwrap_or_default();
        Alert {
            status: Status::Event,
            severity: if ip.is_unspecified() {
                Severity::Warning
            } else {
                Severity::Info
            },
            rule: "new_listener",
            subject: endpoint(ip, port),
            message: format!(
                "new listener on {}{who}{}",
                endpoint(ip, port),
                if ip.is_unspecified() {
                    " (all addresses)"
                } else {
                    ""
                }
            ),
        }
    }

    /// Evaluates every rule; returns the alerts that started, changed or ended.
    pub fn evaluate(&mut self, view: &TallyView, inputs: &Inputs) -> Vec<Alert> {
        let mut firing: BTreeMap<(&'static str, String), (Severity, String)> = BTreeMap::new();
        let t = &self.thresholds;

        // TIME_WAIT total.
        if let Some(sev) = level(
            view.time_wait as f64,
            t.time_wait_warn as f64,
            t.time_wait_crit as f64,
        ) {
            firing.insert(
                ("time_wait", "total".into()),
                (
                    sev,
                    format!(
                        "{} sockets in TIME_WAIT (warning above {}, critical above {})",
                        view.time_wait, t.time_wait_warn, t.time_wait_crit
                    ),
                ),
            );
        }
        // Ephemeral ports tied up toward one destination.
        let range = inputs.port_range.size() as f64;
        for &(ip, port, n) in &view.time_wait_by_dest {
            let pct = n as f64 * 100.0 / range;
            if let Some(sev) = level(pct, t.port_exhaustion_warn_pct, t.port_exhaustion_crit_pct) {
                firing.insert(
                    ("port_exhaustion", endpoint(ip, port)),
                    (sev, format!(
                        "{n} TIME_WAIT sockets toward {} hold {pct:.0}% of the ephemeral range {}-{}: new connections there will fail",
                        endpoint(ip, port), inputs.port_range.low, inputs.port_range.high
                    )),
                );
            }
        }
        // CLOSE_WAIT per local port: too many, or too old.
        for &(port, count, since_ns, known) in &view.close_wait_by_port {
            let age = inputs.now_ns.saturating_sub(since_ns) as f64 / 1e9;
            let too_old = age >= t.close_wait_age_secs;
            let too_many = count > t.close_wait_count;
            if !(too_old || too_many) {
                continue;
            }
            let owners = inputs
                .close_wait_owners
                .get(&port)
                .filter(|o| !o.is_empty())
                .map(|o| {
                    o.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "an unknown process".into());
            firing.insert(
                ("close_wait", port.to_string()),
                (
                    if too_many { Severity::Critical } else { Severity::Warning },
                    format!(
                        "{count} CLOSE_WAIT socket{} on local port {port} held by {owners}, oldest {}{age:.0}s: the application is not closing connections its peers closed",
                        plural(count),
                        if known { "" } else { ">= " }
                    ),
                ),
            );
        }
        // One remote IP holding too many connections.
        for &(ip, n) in &view.per_ip_top {
            match level(n as f64, t.per_ip_warn as f64, t.per_ip_crit as f64) {
                Some(sev) => {
                    firing.insert(
                        ("per_ip", ip.to_string()),
                        (
                            sev,
                            format!(
                                "remote {ip} holds {n} connections (warning above {})",
                                t.per_ip_warn
                            ),
                        ),
                    );
                }
                None => break,
            }
        }
        // SYN floods, per listener.
        let mut listeners: BTreeMap<(IpAddr, u16), (u64, u64, SynWindow)> = BTreeMap::new();
        for (ip, port, h) in &view.half_open {
            let e = listeners.entry((*ip, *port)).or_default();
            e.0 = h.count;
            e.1 = h.sources;
        }
        for (k, w) in &inputs.syn {
            listeners.entry(*k).or_default().2 = w.clone();
        }
        // Cookies and request drops are namespace-wide: pin them on the busiest listener.
        let busiest = listeners
            .iter()
            .max_by_key(|(_, (half, _, w))| (half + w.syns, w.synack_retransmits))
            .map(|(k, _)| *k);
        let secs = inputs.window_secs.max(1e-3);
        for (key, (half_open, half_sources, w)) in &listeners {
            let backlog = inputs
                .backlogs
                .get(key)
                .or_else(|| inputs.backlogs.get(&(unspecified_like(key.0), key.1)))
                .copied()
                .or(inputs.somaxconn);
            let pct = backlog
                .filter(|b| *b > 0)
                .map(|b| *half_open as f64 * 100.0 / f64::from(b));
            let syn_rate = w.syns as f64 / secs;
            let retrans_rate = w.synack_retransmits as f64 / secs;
            let overflow = Some(*key) == busiest && inputs.syn_counters.queue_overflowed();
            let mut reasons = Vec::new();
            if pct.is_some_and(|p| p >= t.syn_backlog_pct) {
                reasons.push("half-open queue filling");
            }
            if retrans_rate >= t.synack_retransmit_rate {
                reasons.push("SYN-ACKs unanswered");
            }
            if inputs.syn_coverage != SynCoverage::None
                && syn_rate >= t.syn_rate
                && (w.completed as f64) < w.syns as f64 / 2.0
            {
                reasons.push("SYNs not completing");
            }
            if overflow {
                reasons.push("SYN queue overflowing (cookies/drops)");
            }
            if reasons.is_empty() {
                continue;
            }
            let sources = (*half_sources).max(w.sources);
            let saturated = if sources >= MAX_SOURCES as u64 {
                ">= "
            } else {
                ""
            };
            let severity = if overflow || pct.is_some_and(|p| p >= 90.0) {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let c = &inputs.syn_counters;
            firing.insert(
                ("syn_flood", endpoint(key.0, key.1)),
                (severity, format!(
                    "SYN flood on {}: {half_open} half-open{}, {}, {:.0} completed/s, {retrans_rate:.0} SYN-ACK retransmits/s, {} cookies, {} dropped; {saturated}{sources} distinct source{} ({}) [{}]",
                    endpoint(key.0, key.1),
                    match (pct, backlog) { (Some(p), Some(b)) => format!(" ({p:.0}% of backlog {b})"), _ => String::new() },
                    match inputs.syn_coverage {
                        SynCoverage::Whole => format!("{syn_rate:.0} SYN/s"),
                        SynCoverage::Partial => format!(">= {syn_rate:.0} SYN/s (counting began in this window)"),
                        SynCoverage::None => "SYN/s not counted".to_owned(),
                    },
                    w.completed as f64 / secs,
                    c.syncookies_sent + c.reqq_full_do_cookies,
                    c.reqq_full_drop + c.listen_drops,
                    plural(sources),
                    if sources > 100 || sources * 10 > (*half_open).max(w.syns) { "many sources: spoofed or distributed" } else { "few sources: one client or a handshake problem" },
                    reasons.join(", ")
                )),
            );
        }

        let mut out = Vec::new();
        for (key, (severity, message)) in &firing {
            match self.active.get(key) {
                None => out.push(Alert {
                    status: Status::Raised,
                    severity: *severity,
                    rule: key.0,
                    subject: key.1.clone(),
                    message: message.clone(),
                }),
                Some((prev, _)) if prev != severity => out.push(Alert {
                    status: Status::Changed,
                    severity: *severity,
                    rule: key.0,
                    subject: key.1.clone(),
                    message: message.clone(),
                }),
                Some(_) => {}
            }
        }
        for (key, (severity, message)) in &self.active {
            if !firing.contains_key(key) {
                out.push(Alert {
                    status: Status::Cleared,
                    severity: *severity,
                    rule: key.0,
                    subject: key.1.clone(),
                    message: format!("cleared: {message}"),
                });
            }
        }
        self.active = firing;
        out
    }
}

/// The wildcard of the same family: requests to 127.0.0.1:80 belong to a 0.0.0.0:80
/// listener when there is no 127.0.0.1:80 one.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::tally::HalfOpen;

    const SEC: u64 = 1_000_000_000;

    fn view() -> TallyView {
        TallyView {
            states: HashMap::new(),
            time_wait: 0,
            listeners: vec![],
            established_by_port: vec![],
            per_ip_top: vec![],
            per_ip_tracked: 0,
            per_ip_aggregated: 0,
            close_wait_by_port: vec![],
            time_wait_by_dest: vec![],
            half_open: vec![],
            inconsistencies: 0,
        }
    }

    fn inputs(now_ns: u64) -> Inputs {
        Inputs {
            now_ns,
            window_secs: 1.0,
            port_range: PortRange::LINUX_DEFAULT,
            syn_coverage: SynCoverage::Whole,
            ..Default::default()
        }
    }

    fn localhost() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn window(syns: u64, completed: u64, retransmits: u64) -> HashMap<(IpAddr, u16), SynWindow> {
        let mut m = HashMap::new();
        m.insert(
            (localhost(), 80),
            SynWindow {
                syns,
                completed,
                synack_retransmits: retransmits,
                sources: 1,
            },
        );
        m
    }

    #[test]
    fn syn_trouble_is_hinted_by_any_sign_of_it() {
        let none = SynCounters::default();
        let with = |f: fn(&mut SynCounters)| {
            let mut c = SynCounters::default();
            f(&mut c);
            c
        };
        // ((syns, completed, retransmits), counters, last half-open) -> hinted?
        let cases = [
            ((60_000, 59_990, 0), none, 0, false, "busy but healthy"),
            ((0, 60_000, 0), none, 0, false, "SYN counter idle, healthy"),
            ((0, 0, 0), none, 3, false, "a few requests in flight"),
            ((60_000, 50_000, 0), none, 0, true, "SYNs not completing"),
            ((10, 10, 1), none, 0, true, "SYN-ACK retransmitted"),
            ((0, 0, 0), none, 65, true, "half-open requests piling up"),
            (
                (0, 0, 0),
                with(|c| c.syncookies_sent = 1),
                0,
                true,
                "cookies sent",
            ),
            (
                (0, 0, 0),
                with(|c| c.listen_drops = 1),
                0,
                true,
                "listen drops",
            ),
            (
                (0, 0, 0),
                with(|c| c.embryonic_resets = 1),
                0,
                true,
                "requests reset by their peers",
            ),
        ];
        for ((syns, completed, retransmits), counters, last, hinted, why) in cases {
            assert_eq!(
                syn_trouble_hinted(&window(syns, completed, retransmits), &counters, last),
                hinted,
                "{why}"
            );
        }
    }

    #[test]
    fn half_open_dump_only_when_something_hints_at_it() {
        let second = 1_000_000_000;
        // (hinted, SYN counter loaded, last half-open, since the last dump) -> dump?
        let cases = [
            (false, true, 0, second, false, "nothing hints"),
            (true, true, 0, second, true, "a hint"),
            (false, true, 3, second, true, "half-open seen last time"),
            (false, false, 0, second, true, "no SYN counter"),
            (
                false,
                true,
                0,
                10 * second,
                true,
                "10 s since the last dump",
            ),
        ];
        for (hinted, loaded, last, since, dump, why) in cases {
            assert_eq!(
                half_open_worth_dumping(hinted, loaded, last, since),
                dump,
                "{why}"
            );
        }
    }

    #[test]
    fn syn_counter_attaches_on_a_hint_and_detaches_after_a_quiet_minute() {
        let mut switch = SynCounterSwitch::default();
        assert!(!switch.wanted(false, 0), "idle at start");
        assert!(switch.wanted(true, SEC), "attached on the first hint");
        assert!(switch.wanted(false, 30 * SEC), "held while quiet");
        assert!(switch.wanted(true, 50 * SEC), "a new hint");
        assert!(
            switch.wanted(false, 109 * SEC),
            "held 60 s from the last hint"
        );
        assert!(
            !switch.wanted(false, 110 * SEC),
            "detached after 60 quiet seconds"
        );
        assert!(switch.wanted(true, 111 * SEC), "and attached again");
    }

    #[test]
    fn an_uncounted_syn_rate_is_said_not_measured() {
        let flood = |coverage| {
            let mut d = Detector::new(LiveThresholds::default());
            let mut i = inputs(SEC);
            i.syn_coverage = coverage;
            // What an idle counter leaves: completions, retransmits, no SYNs.
            i.syn.insert(
                (localhost(), 80),
                SynWindow {
                    syns: if coverage == SynCoverage::None {
                        0
                    } else {
                        1500
                    },
                    completed: 0,
                    synack_retransmits: 500,
                    sources: 0,
                },
            );
            d.evaluate(&view(), &i).remove(0).message
        };
        let none = flood(SynCoverage::None);
        assert!(none.contains("SYN/s not counted"), "{none}");
        assert!(!none.contains("0 SYN/s"), "{none}");
        let partial = flood(SynCoverage::Partial);
        assert!(partial.contains(">= 1500 SYN/s"), "{partial}");
        assert!(partial.contains("SYNs not completing"), "{partial}");
        let whole = flood(SynCoverage::Whole);
        assert!(whole.contains(", 1500 SYN/s,"), "{whole}");
    }

    #[test]
    fn syn_flood_raises_then_clears() {
        let mut d = Detector::new(LiveThresholds::default());
        let mut v = view();
        v.half_open = vec![(
            localhost(),
            8080,
            HalfOpen {
                count: 600,
                sources: 600,
            },
        )];
        let mut i = inputs(SEC);
        i.backlogs
            .insert((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080), 1024);
        i.syn.insert(
            (localhost(), 8080),
            SynWindow {
                syns: 2000,
                completed: 0,
                synack_retransmits: 0,
                sources: 2000,
            },
        );
        let alerts = d.evaluate(&v, &i);
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            (a.status, a.severity, a.rule, a.subject.as_str()),
            (
                Status::Raised,
                Severity::Warning,
                "syn_flood",
                "127.0.0.1:8080"
            )
        );
        assert!(
            a.message.contains("600 half-open (59% of backlog 1024)"),
            "{}",
            a.message
        );
        assert!(a.message.contains("2000 SYN/s"), "{}", a.message);
        assert!(a.message.contains("spoofed"), "{}", a.message);
        // Same condition: nothing new to say.
        assert!(d.evaluate(&v, &i).is_empty());
        // The queue overflows: severity goes up.
        i.syn_counters.syncookies_sent = 50;
        let changed = d.evaluate(&v, &i);
        assert_eq!(
            (changed[0].status, changed[0].severity),
            (Status::Changed, Severity::Critical)
        );
        // Flood over.
        let cleared = d.evaluate(&view(), &inputs(2 * SEC));
        assert_eq!(
            (cleared[0].status, cleared[0].rule),
            (Status::Cleared, "syn_flood")
        );
        assert_eq!(d.active().count(), 0);
    }

    #[test]
    fn busy_but_healthy_listeners_are_not_floods() {
        let mut d = Detector::new(LiveThresholds::default());
        let mut i = inputs(SEC);
        i.syn.insert(
            (localhost(), 80),
            SynWindow {
                syns: 5000,
                completed: 4990,
                synack_retransmits: 0,
                sources: 3,
            },
        );
        assert!(d.evaluate(&view(), &i).is_empty());
    }

    #[test]
    fn close_wait_alerts_by_age_or_count_with_owner() {
        let mut d = Detector::new(LiveThresholds {
            close_wait_age_secs: 2.0,
            ..Default::default()
        });
        let mut v = view();
        v.close_wait_by_port = vec![(8080, 3, 10 * SEC, true)];
        let mut i = inputs(11 * SEC);
        assert!(d.evaluate(&v, &i).is_empty(), "1 s old, threshold 2 s");
        i.now_ns = 12 * SEC;
        i.close_wait_owners.insert(
            8080,
            vec![Process {
                pid: 42,
                comm: "leaky".into(),
            }],
        );
        let a = &d.evaluate(&v, &i)[0];
        assert_eq!(
            (a.rule, a.subject.as_str(), a.severity),
            ("close_wait", "8080", Severity::Warning)
        );
        assert!(
            a.message
                .contains("3 CLOSE_WAIT sockets on local port 8080 held by leaky[42], oldest 2s"),
            "{}",
            a.message
        );
        v.close_wait_by_port = vec![(8080, 101, 12 * SEC, false)];
        let a = &d.evaluate(&v, &i)[0];
        assert_eq!(
            (a.status, a.severity),
            (Status::Changed, Severity::Critical)
        );
        assert!(a.message.contains("oldest >= 0s"), "{}", a.message);
    }

    #[test]
    fn time_wait_and_port_exhaustion() {
        let mut d = Detector::new(LiveThresholds::default());
        let mut v = view();
        v.time_wait = 5001;
        v.time_wait_by_dest = vec![(localhost(), 5432, 15_000)];
        let mut alerts = d.evaluate(&v, &inputs(SEC));
        alerts.sort_by_key(|a| a.rule);
        assert_eq!(
            alerts
                .iter()
                .map(|a| (a.rule, a.severity))
                .collect::<Vec<_>>(),
            vec![
                ("port_exhaustion", Severity::Warning),
                ("time_wait", Severity::Critical)
            ]
        );
        assert!(
            alerts[0].message.contains("127.0.0.1:5432 hold 53%"),
            "{}",
            alerts[0].message
        );
    }

    #[test]
    fn a_million_spoofed_sources_use_bounded_memory() {
        let mut tracker = SynTracker::default();
        let listener = (localhost(), 8080);
        for i in 0..1_000_000u32 {
            tracker.syn(listener, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(tracker.entries(), MAX_SOURCES + 1);
        let window = tracker.take();
        assert_eq!(
            window[&listener],
            SynWindow {
                syns: 1_000_000,
                completed: 0,
                synack_retransmits: 0,
                sources: MAX_SOURCES as u64
            }
        );
        assert_eq!(tracker.entries(), 0);
        // The alert says the count saturated.
        let mut d = Detector::new(LiveThresholds::default());
        let mut i = inputs(SEC);
        i.syn = window;
        let alert = &d.evaluate(&view(), &i)[0];
        assert!(
            alert.message.contains(">= 65536 distinct sources"),
            "{}",
            alert.message
        );
    }

    #[test]
    fn per_ip_and_new_listener() {
        let mut d = Detector::new(LiveThresholds::default());
        let mut v = view();
        v.per_ip_top = vec![
            (localhost(), 201),
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5),
        ];
        let a = d.evaluate(&v, &inputs(SEC));
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].rule, a[0].subject.as_str()), ("per_ip", "127.0.0.1"));
        let l = d.new_listener(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            4444,
            Some(&Process {
                pid: 7,
                comm: "nc".into(),
            }),
        );
        assert_eq!((l.status, l.severity), (Status::Event, Severity::Warning));
        assert_eq!(
            l.message,
            "new listener on 0.0.0.0:4444 by nc[7] (all addresses)"
        );
    }
}
