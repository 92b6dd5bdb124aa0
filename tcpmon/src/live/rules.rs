//! Live detectors: they look at the tally and the SYN counters at each evaluation and
//! say when a problem starts, changes severity, and ends. Pure: inputs in, alerts out.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use super::{
    failures::{FailureCounts, FailureWindow},
    syn::{SynCoverage, SynWindow},
    tally::{CloseWaitView, Since, TallyView},
};
use crate::{
    host::{kstats::SynCounters, proc_net::Socket},
    model::{
        allowlist::Allowlist, at_least, endpoint, listener_of, severity, CloseWaitSide, Direction,
        PortRange, Process, Severity, TcpState, Thresholds,
    },
};

/// Entries of each list of the tally view the detectors evaluate (per namespace).
pub const DETECTOR_TOP: usize = 20;

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
    /// Owners of CLOSE_WAIT sockets by leak, when known.
    pub close_wait_owners: HashMap<CloseWaitSide, Vec<Process>>,
    /// Retransmits and resets over the window (eBPF; empty when polling).
    pub failures: FailureWindow,
    /// Packets each listener dropped over the window (its `sk_drops`: a full accept
    /// queue, mostly).
    pub listener_drops: Vec<((IpAddr, u16), u64)>,
}

/// Retransmits or resets in a window below which no rate is judged: a few events in a
/// short window make a high rate that says nothing.
pub const MIN_WINDOW_FAILURES: u64 = 10;

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
    /// In another network namespace it ends with " in netns INODE".
    pub subject: String,
    pub message: String,
    /// The network namespace it is about, when not tcpmon's own (`--all-netns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// That namespace's owner ("pod web-7d9 (container 3f2a9c1b7e44)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Alert {
    /// The alert as it is about another namespace: tagged, its subject made unique.
    pub fn in_namespace(mut self, inode: u64, owner: &str) -> Self {
        self.subject = format!("{} in netns {inode}", self.subject);
        self.message = format!("{} (in {owner}, netns {inode})", self.message);
        self.netns = Some(inode);
        self.owner = Some(owner.to_owned());
        self
    }
}

/// Remembers which alerts are active so each start and end is reported once.
#[derive(Clone, Debug, Default)]
pub struct Detector {
    pub thresholds: Thresholds,
    active: BTreeMap<(&'static str, String), (Severity, String)>,
    /// Listeners expected (`--listeners-allow`).
    allow: Option<Allowlist>,
}

/// What a cleared alert's subject looks like now: the figures of this evaluation, never
/// those the alert was raised with.
fn now_text(
    rule: &str,
    subject: &str,
    t: &Thresholds,
    view: &TallyView,
    inputs: &Inputs,
    syn: &BTreeMap<(IpAddr, u16), (u64, u64, SynWindow)>,
) -> String {
    match rule {
        "time_wait" => format!(
            "{} socket{} in TIME_WAIT now (warning above {})",
            view.time_wait,
            plural(view.time_wait),
            t.time_wait_warn
        ),
        "port_exhaustion" => {
            let n = view
                .time_wait_by_dest
                .iter()
                .find(|(ip, port, _)| endpoint(*ip, *port) == subject)
                .map_or(0, |d| d.2);
            format!(
                "{n} client-side TIME_WAIT socket{} toward {subject} now, {:.0}% of the ephemeral \
                 range (warning above {}%)",
                plural(n),
                n as f64 * 100.0 / inputs.port_range.size() as f64,
                t.port_exhaustion_warn_pct
            )
        }
        "close_wait" => {
            let group = view.close_wait.iter().find(|g| g.side.subject() == subject);
            let place = match subject.parse::<u16>() {
                Ok(port) => format!("on local port {port}"),
                Err(_) => format!("toward {subject}"),
            };
            match group {
                Some(g) => format!(
                    "{} CLOSE_WAIT socket{} {place} now, oldest {} (alerted when older than {:.0}s or more than {})",
                    g.count,
                    plural(g.count),
                    age_text(g, inputs.now_ns),
                    t.close_wait_age_secs,
                    t.close_wait_crit
                ),
                None => format!("no CLOSE_WAIT socket {place} now"),
            }
        }
        "per_ip" => match view
            .per_ip_top
            .iter()
            .find(|(ip, _)| ip.to_string() == subject)
        {
            Some((_, n)) => format!(
                "remote {subject} holds {n} live connection{} now (warning above {})",
                plural(*n),
                t.per_ip_warn
            ),
            None => format!(
                "remote {subject} holds at most {} live connections now",
                t.per_ip_warn
            ),
        },
        "syn_flood" => match syn.iter().find(|(k, _)| endpoint(k.0, k.1) == subject) {
            Some((_, (half_open, _, w))) => format!(
                "{half_open} half-open on {subject} now, {:.0} SYN/s, {:.0} completed/s",
                w.syns as f64 / inputs.window_secs.max(1e-3),
                w.completed as f64 / inputs.window_secs.max(1e-3)
            ),
            None => format!("no half-open request or SYN on {subject} now"),
        },
        _ => format!("{rule} on {subject} is over"),
    }
}

/// Whether a CLOSE_WAIT group calls for an alert, and how severe: critical above the
/// count threshold, a warning once it is older than the age threshold or was already
/// there when tcpmon started (a snapshot audit flags it at once too).
pub fn close_wait_severity(group: &CloseWaitView, now_ns: u64, t: &Thresholds) -> Option<Severity> {
    let age = now_ns.saturating_sub(group.oldest_ns) as f64 / 1e9;
    if group.count > t.close_wait_crit {
        Some(Severity::Critical)
    } else if group.since == Since::AtStart || age >= t.close_wait_age_secs {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// The oldest socket's age as far as it is known.
fn age_text(group: &CloseWaitView, now_ns: u64) -> String {
    let age = now_ns.saturating_sub(group.oldest_ns) as f64 / 1e9;
    match group.since {
        Since::Seen => format!("{age:.0}s"),
        Since::Found => format!(">= {age:.0}s"),
        Since::AtStart => "age unknown, present at start".into(),
    }
}

/// The processes holding each leak's CLOSE_WAIT sockets, from a snapshot of the socket
/// table and the owners found for its inodes.
pub fn close_wait_owners(
    sockets: &[Socket],
    by_inode: &HashMap<u64, Process>,
    range: PortRange,
) -> HashMap<CloseWaitSide, Vec<Process>> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.local_port)
        .collect();
    let mut out: HashMap<CloseWaitSide, Vec<Process>> = HashMap::new();
    for s in sockets.iter().filter(|s| s.state == TcpState::CloseWait) {
        if let Some(p) = by_inode.get(&s.inode) {
            let side = CloseWaitSide::of(
                s.local_port,
                (s.remote_ip, s.remote_port),
                listening.contains(&s.local_port),
                range,
            );
            let list = out.entry(side).or_default();
            if !list.contains(p) {
                list.push(p.clone());
            }
        }
    }
    out
}

/// The processes holding each listener (canonical address, port), from a snapshot of
/// the socket table and the owners found for its inodes.
pub fn listener_owners(
    sockets: &[Socket],
    by_inode: &HashMap<u64, Process>,
) -> HashMap<(IpAddr, u16), Vec<Process>> {
    let mut out: HashMap<(IpAddr, u16), Vec<Process>> = HashMap::new();
    for s in sockets.iter().filter(|s| s.state == TcpState::Listen) {
        if let Some(p) = by_inode.get(&s.inode) {
            let list = out
                .entry((crate::model::canonical_ip(s.local_ip), s.local_port))
                .or_default();
            if !list.contains(p) {
                list.push(p.clone());
            }
        }
    }
    out
}

/// The plural ending for a count of `n`.
/// `n` failures in `secs` against a per-second threshold (critical at ten times it):
/// the severity and rate, with at least [`MIN_WINDOW_FAILURES`] to judge.
fn failure_rate(n: u64, secs: f64, threshold: f64) -> Option<(Severity, f64)> {
    let rate = n as f64 / secs;
    (n >= MIN_WINDOW_FAILURES)
        .then(|| severity(rate, threshold, threshold * 10.0))
        .flatten()
        .map(|sev| (sev, rate))
}

/// A remote IP's retransmits over a window: judged as a share of the segments its
/// retransmitting connections sent (as the snapshot audit judges tcp_info's), or by
/// rate where the kernel did not say the segments sent.
fn retransmit_storm(
    ip: &IpAddr,
    c: &FailureCounts,
    secs: f64,
    t: &Thresholds,
) -> Option<(Severity, String)> {
    if c.retransmits < MIN_WINDOW_FAILURES {
        return None;
    }
    let Some(pct) = c.retransmit_pct() else {
        let (sev, rate) = failure_rate(c.retransmits, secs, t.retransmit_rate)?;
        return Some((sev, format!(
            "{rate:.0} segments/s retransmitted toward {ip} ({} in {secs:.1}s; warning above {}/s, critical above {}/s): packets to or from it are being lost",
            c.retransmits, t.retransmit_rate, t.retransmit_rate * 10.0
        )));
    };
    let sev = severity(pct, t.retrans_warn_pct, t.retrans_crit_pct)?;
    Some((sev, format!(
        "{pct:.1}% of the segments sent toward {ip} were retransmitted ({} of {} in {secs:.1}s, on the connections that retransmitted; warning above {}%, critical above {}%): packets to or from it are being lost",
        c.retransmits, c.segments_sent, t.retrans_warn_pct, t.retrans_crit_pct
    )))
}

pub fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            active: BTreeMap::new(),
            allow: None,
        }
    }

    /// New listeners judged against `allow`.
    pub fn with_allowlist(mut self, allow: Option<Allowlist>) -> Self {
        self.allow = allow;
        self
    }

    pub fn active(&self) -> impl Iterator<Item = (&str, &str, Severity)> {
        self.active
            .iter()
            .map(|((rule, subject), (sev, _))| (*rule, subject.as_str(), *sev))
    }

    /// Ends every active alert (what they are about is no longer watched): one cleared
    /// alert each, saying `why`.
    pub fn end_all(&mut self, why: &str) -> Vec<Alert> {
        std::mem::take(&mut self.active)
            .into_iter()
            .map(|((rule, subject), (severity, _))| Alert {
                status: Status::Cleared,
                severity,
                rule,
                subject,
                message: format!("cleared: {why}"),
                netns: None,
                owner: None,
            })
            .collect()
    }

    /// A listener appeared: reported once, as it happens. Against an allowlist, one it
    /// does not allow is a warning that says so, an allowed one information.
    pub fn new_listener(&self, ip: IpAddr, port: u16, by: Option<&Process>) -> Alert {
        let who = by.map(|p| format!(" by {p}")).unwrap_or_default();
        let allowed = self.allow.as_ref().map(|a| {
            let names: Vec<&str> = by.map(|p| p.comm.as_str()).into_iter().collect();
            a.allows(ip, port, &names)
        });
        let (severity, verdict) = match allowed {
            Some(true) => (Severity::Info, ": in the listener allowlist"),
            Some(false) if by.is_none() => (
                Severity::Warning,
                ": not in the listener allowlist (its process is not known)",
            ),
            Some(false) => (Severity::Warning, ": not in the listener allowlist"),
            None if ip.is_unspecified() => (Severity::Warning, ""),
            None => (Severity::Info, ""),
        };
        Alert {
            status: Status::Event,
            severity,
            rule: "new_listener",
            subject: endpoint(ip, port),
            message: format!(
                "new listener on {}{who}{}{verdict}",
                endpoint(ip, port),
                if ip.is_unspecified() {
                    " (all addresses)"
                } else {
                    ""
                }
            ),
            netns: None,
            owner: None,
        }
    }

    /// Evaluates every rule; returns the alerts that started, changed or ended.
    pub fn evaluate(&mut self, view: &TallyView, inputs: &Inputs) -> Vec<Alert> {
        let mut firing: BTreeMap<(&'static str, String), (Severity, String)> = BTreeMap::new();
        let t = &self.thresholds;

        // TIME_WAIT total.
        if let Some(sev) = severity(
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
            if let Some(sev) = severity(pct, t.port_exhaustion_warn_pct, t.port_exhaustion_crit_pct)
            {
                firing.insert(
                    ("port_exhaustion", endpoint(ip, port)),
                    (sev, format!(
                        "{n} TIME_WAIT sockets toward {} hold {pct:.0}% of the ephemeral range {}-{}: new connections there will fail",
                        endpoint(ip, port), inputs.port_range.low, inputs.port_range.high
                    )),
                );
            }
        }
        // CLOSE_WAIT per leak (a server's port, a client's remote): too many, or too old.
        for group in &view.close_wait {
            let Some(severity) = close_wait_severity(group, inputs.now_ns, t) else {
                continue;
            };
            let owners = inputs
                .close_wait_owners
                .get(&group.side)
                .filter(|o| !o.is_empty())
                .map(|o| {
                    o.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "an unknown process".into());
            firing.insert(
                ("close_wait", group.side.subject()),
                (
                    severity,
                    format!(
                        "{} CLOSE_WAIT socket{} {} held by {owners}, oldest {}: {}",
                        group.count,
                        plural(group.count),
                        group.side.place(),
                        age_text(group, inputs.now_ns),
                        group.side.meaning()
                    ),
                ),
            );
        }
        // One remote IP holding too many connections.
        for &(ip, n) in &view.per_ip_top {
            match severity(n as f64, t.per_ip_warn as f64, t.per_ip_crit as f64) {
                Some(sev) => {
                    firing.insert(
                        ("per_ip", ip.to_string()),
                        (
                            sev,
                            format!(
                                "remote {ip} holds {n} live connections (ESTABLISHED and \
                                 handshakes; warning above {}, critical above {})",
                                t.per_ip_warn, t.per_ip_crit
                            ),
                        ),
                    );
                }
                None => break,
            }
        }
        // Retransmit and reset storms.
        let secs = inputs.window_secs.max(1e-3);
        let storm = |n: u64, threshold: f64| failure_rate(n, secs, threshold);
        for (ip, c) in &inputs.failures.peers {
            if let Some((sev, message)) = retransmit_storm(ip, c, secs, t) {
                firing.insert(("retransmits", ip.to_string()), (sev, message));
            }
            let resets = c.resets_sent + c.resets_received;
            if let Some((sev, rate)) = storm(resets, t.reset_rate) {
                firing.insert(
                    ("resets", ip.to_string()),
                    (sev, format!(
                        "{rate:.0} resets/s with {ip} ({} sent, {} received in {secs:.1}s; warning above {}/s): it is refused, or refuses, connections",
                        c.resets_sent, c.resets_received, t.reset_rate
                    )),
                );
            }
        }
        for ((direction, port), c) in &inputs.failures.ports {
            if *direction != Direction::In {
                continue;
            }
            if let Some((sev, rate)) = storm(c.resets_sent, t.reset_rate) {
                firing.insert(
                    ("resets", format!("port {port}")),
                    (sev, format!(
                        "{rate:.0} connections/s refused on local port {port} ({} resets sent in {secs:.1}s; warning above {}/s): a scan, or a service that is down",
                        c.resets_sent, t.reset_rate
                    )),
                );
            }
        }
        // Accept queues that overflowed in the window, per listener.
        let listening: Vec<(IpAddr, u16)> = view.listeners.iter().map(|l| (l.0, l.1)).collect();
        let mut overflowed: BTreeMap<(IpAddr, u16), u64> = BTreeMap::new();
        for (addr, n) in &inputs.listener_drops {
            let key = listener_of(&listening, *addr).map_or(*addr, |i| listening[i]);
            *overflowed.entry(key).or_default() += n;
        }
        for ((ip, port), n) in overflowed {
            let backlog = inputs
                .backlogs
                .get(&(ip, port))
                .map_or_else(String::new, |b| format!(" (backlog {b})"));
            firing.insert(
                ("listen_overflow", endpoint(ip, port)),
                (Severity::Warning, format!(
                    "{n} packet{} to {} dropped in {secs:.1}s: its accept queue{backlog} is full (or the listener is otherwise overrun), the application does not accept() fast enough",
                    plural(n),
                    endpoint(ip, port)
                )),
            );
        }
        // SYN floods, per listener: requests to an address count for the listener that
        // takes them (the same key as the listener series).
        let keys: Vec<(IpAddr, u16)> = view.listeners.iter().map(|l| (l.0, l.1)).collect();
        let listener = |addr: (IpAddr, u16)| listener_of(&keys, addr).map_or(addr, |i| keys[i]);
        let mut listeners: BTreeMap<(IpAddr, u16), (u64, u64, SynWindow)> = BTreeMap::new();
        for (ip, port, h) in &view.half_open {
            let e = listeners.entry(listener((*ip, *port))).or_default();
            e.0 += h.count;
            // Sources of two addresses cannot be told apart: at least the larger set.
            e.1 = e.1.max(h.sources);
        }
        for (k, w) in &inputs.syn {
            let e = &mut listeners.entry(listener(*k)).or_default().2;
            e.syns += w.syns;
            e.completed += w.completed;
            e.synack_retransmits += w.synack_retransmits;
            e.sources = e.sources.max(w.sources);
        }
        // Cookies and request drops are namespace-wide: pin them on the busiest listener.
        let busiest = listeners
            .iter()
            .max_by_key(|(_, (half, _, w))| (half + w.syns, w.synack_retransmits))
            .map(|(k, _)| *k);
        let secs = inputs.window_secs.max(1e-3);
        let c = &inputs.syn_counters;
        let cookies = c.syncookies_sent + c.reqq_full_do_cookies;
        for (key, (half_open, half_sources, w)) in &listeners {
            let backlog = inputs.backlogs.get(key).copied().or(inputs.somaxconn);
            let pct = backlog
                .filter(|b| *b > 0)
                .map(|b| *half_open as f64 * 100.0 / f64::from(b));
            let backlog_severity =
                pct.and_then(|p| severity(p, t.syn_backlog_warn_pct, t.syn_backlog_crit_pct));
            let retrans_rate = w.synack_retransmits as f64 / secs;
            let is_busiest = Some(*key) == busiest;
            let overflow = is_busiest && c.queue_overflowed();
            // SYNs answered with cookies make no request socket: counted where they
            // arrive when the SYN counter runs, else (namespace-wide) from the counters.
            let syns = match inputs.syn_coverage {
                SynCoverage::None if is_busiest => cookies,
                SynCoverage::None => 0,
                _ => w.syns,
            };
            let syn_rate = syns as f64 / secs;
            let mut reasons = Vec::new();
            if backlog_severity.is_some() {
                reasons.push("half-open queue filling");
            }
            if retrans_rate > t.synack_retransmit_rate {
                reasons.push("SYN-ACKs unanswered");
            }
            if syn_rate > t.syn_rate && (w.completed as f64) < syns as f64 / 2.0 {
                reasons.push("SYNs not completing");
            }
            if overflow {
                reasons.push("SYN queue overflowing (cookies/drops)");
            }
            if reasons.is_empty() {
                continue;
            }
            let sources = (*half_sources).max(w.sources);
            let saturated = at_least(sources);
            let severity = if overflow || backlog_severity == Some(Severity::Critical) {
                Severity::Critical
            } else {
                Severity::Warning
            };
            firing.insert(
                ("syn_flood", endpoint(key.0, key.1)),
                (severity, format!(
                    "SYN flood on {}: {half_open} half-open{}, {}, {:.0} completed/s, {retrans_rate:.0} SYN-ACK retransmits/s, {} cookies, {} dropped; {saturated}{sources} distinct source{} ({}) [{}]",
                    endpoint(key.0, key.1),
                    match (pct, backlog) { (Some(p), Some(b)) => format!(" ({p:.0}% of backlog {b})"), _ => String::new() },
                    match inputs.syn_coverage {
                        SynCoverage::Whole => format!("{syn_rate:.0} SYN/s"),
                        SynCoverage::Partial => format!(">= {syn_rate:.0} SYN/s (counting began in this window)"),
                        SynCoverage::None if syns > 0 => format!(">= {syn_rate:.0} SYN/s (those answered with cookies, namespace-wide)"),
                        SynCoverage::None => "SYN/s not counted yet".to_owned(),
                    },
                    w.completed as f64 / secs,
                    cookies,
                    c.reqq_full_drop + c.listen_drops,
                    plural(sources),
                    if sources > 100 || sources * 10 > (*half_open).max(syns) { "many sources: spoofed or distributed" } else { "few sources: one client or a handshake problem" },
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
                    netns: None,
                    owner: None,
                }),
                Some((prev, _)) if prev != severity => out.push(Alert {
                    status: Status::Changed,
                    severity: *severity,
                    rule: key.0,
                    subject: key.1.clone(),
                    message: message.clone(),
                    netns: None,
                    owner: None,
                }),
                Some(_) => {}
            }
        }
        for (key, (severity, _)) in &self.active {
            if !firing.contains_key(key) {
                out.push(Alert {
                    status: Status::Cleared,
                    severity: *severity,
                    rule: key.0,
                    subject: key.1.clone(),
                    message: format!(
                        "cleared: {}",
                        now_text(key.0, &key.1, t, view, inputs, &listeners)
                    ),
                    netns: None,
                    owner: None,
                });
            }
        }
        self.active = firing;
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        live::{
            syn::SynTracker,
            tally::{CloseWaitView, Since},
        },
        model::{CloseWaitSide, HalfOpen, MAX_SOURCES},
    };

    const SEC: u64 = 1_000_000_000;

    fn view() -> TallyView {
        TallyView {
            states: Default::default(),
            time_wait: 0,
            listeners: vec![],
            established_by_port: vec![],
            per_ip_top: vec![],
            per_ip_tracked: 0,
            per_ip_aggregated: 0,
            per_ip_total: 0,
            per_ip_time_wait_top: vec![],
            per_ip_time_wait_total: 0,
            peers: vec![],
            close_wait: vec![],
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

    #[test]
    fn retransmit_and_reset_storms_need_a_rate_and_a_count() {
        use crate::live::failures::FailureCounts;
        let peer = IpAddr::from([10, 0, 0, 9]);
        let mut d = Detector::new(Thresholds::DEFAULT);
        let mut i = inputs(SEC);
        i.failures.peers = vec![(
            peer,
            FailureCounts {
                retransmits: 150,
                resets_received: 3,
                ..Default::default()
            },
        )];
        // 600 connections refused on port 9 in a second: over ten times the rate.
        i.failures.ports = vec![(
            (Direction::In, 9),
            FailureCounts {
                resets_sent: 600,
                ..Default::default()
            },
        )];
        let a = d.evaluate(&view(), &i);
        let fired: Vec<(&str, &str, Severity)> = a
            .iter()
            .map(|a| (a.rule, a.subject.as_str(), a.severity))
            .collect();
        assert!(
            fired.contains(&("retransmits", "10.0.0.9", Severity::Warning)),
            "{fired:?}"
        );
        assert!(
            fired.contains(&("resets", "port 9", Severity::Critical)),
            "{fired:?}"
        );
        assert_eq!(
            fired.len(),
            2,
            "3 resets with the peer are not a storm: {fired:?}"
        );
        assert!(a[0].message.contains("/s"), "{}", a[0].message);
        // The next window is quiet: both clear.
        let a = d.evaluate(&view(), &inputs(2 * SEC));
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|a| a.status == Status::Cleared));
        // Nine in a hundredth of a second is a high rate of too few to judge.
        let mut i = inputs(3 * SEC);
        i.window_secs = 0.01;
        i.failures.peers = vec![(
            peer,
            FailureCounts {
                retransmits: 9,
                ..Default::default()
            },
        )];
        assert!(d.evaluate(&view(), &i).is_empty());
    }

    #[test]
    fn retransmits_are_judged_by_their_share_where_the_segments_sent_are_known() {
        use crate::live::failures::FailureCounts;
        let peers = |list: &[(u8, u64, u64)]| {
            list.iter()
                .map(|&(last, retransmits, segments_sent)| {
                    (
                        IpAddr::from([10, 0, 0, last]),
                        FailureCounts {
                            retransmits,
                            segments_sent,
                            ..Default::default()
                        },
                    )
                })
                .collect()
        };
        let mut d = Detector::new(Thresholds::DEFAULT);
        let mut i = inputs(SEC);
        i.failures.peers = peers(&[
            // 5% of 2,000 segments: a warning (above 2%), though only 100 segments/s.
            (1, 100, 2_000),
            // 15%: critical (above 10%).
            (2, 30, 200),
            // 2,000 segments/s retransmitted, but 1% of a fast link's: not a storm.
            (3, 2_000, 200_000),
            // 9 of 10: too few to judge.
            (4, 9, 10),
        ]);
        let a = d.evaluate(&view(), &i);
        let fired: Vec<(&str, Severity)> =
            a.iter().map(|a| (a.subject.as_str(), a.severity)).collect();
        assert_eq!(
            fired,
            vec![
                ("10.0.0.1", Severity::Warning),
                ("10.0.0.2", Severity::Critical)
            ]
        );
        assert!(
            a[0].message
                .starts_with("5.0% of the segments sent toward 10.0.0.1"),
            "{}",
            a[0].message
        );
        assert!(a[0].message.contains("100 of 2000"), "{}", a[0].message);
    }

    #[test]
    fn overflows_are_alerted_on_the_listener_that_takes_them() {
        let mut v = view();
        v.listeners = vec![(IpAddr::from([0, 0, 0, 0]), 8080, 1)];
        let mut i = inputs(SEC);
        i.listener_drops = vec![((localhost(), 8080), 7)];
        i.backlogs.insert((IpAddr::from([0, 0, 0, 0]), 8080), 16);
        let mut d = Detector::new(Thresholds::DEFAULT);
        let a = d.evaluate(&v, &i);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].rule, a[0].subject.as_str()),
            ("listen_overflow", "0.0.0.0:8080")
        );
        assert!(a[0].message.contains("7 packets") && a[0].message.contains("backlog 16"));
        let a = d.evaluate(&v, &inputs(2 * SEC));
        assert_eq!(a[0].status, Status::Cleared);
    }

    #[test]
    fn an_uncounted_syn_rate_is_said_not_measured() {
        let flood = |coverage| {
            let mut d = Detector::new(Thresholds::default());
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
        let mut d = Detector::new(Thresholds::default());
        let mut v = view();
        // Requests to 127.0.0.1 belong to the listener on every address: the alert names
        // that listener, as its series do.
        v.listeners = vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080, 1)];
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
                "0.0.0.0:8080"
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

    /// Thresholds mean "above" for the SYN backlog as for every rule, in audit and live:
    /// 32 half-open of a backlog of 64 is 50 %, not above the 50 % default.
    #[test]
    fn the_syn_backlog_threshold_is_strictly_above() {
        let judged = |half_open: u64| {
            let mut d = Detector::new(Thresholds::default());
            let mut v = view();
            v.listeners = vec![(localhost(), 7000, 1)];
            v.half_open = vec![(
                localhost(),
                7000,
                HalfOpen {
                    count: half_open,
                    sources: half_open,
                },
            )];
            let mut i = inputs(SEC);
            i.backlogs.insert((localhost(), 7000), 64);
            d.evaluate(&v, &i).first().map(|a| a.severity)
        };
        assert_eq!(judged(32), None);
        assert_eq!(judged(33), Some(Severity::Warning));
        assert_eq!(judged(57), Some(Severity::Warning), "89 %");
        assert_eq!(judged(58), Some(Severity::Critical), "over 90 %");
    }

    /// With SYN cookies (the Linux default) a flood makes no request socket; before the
    /// SYN counter attaches, the rate comes from the cookies the kernel sent.
    #[test]
    fn a_cookie_flood_reports_its_rate_from_the_cookies() {
        let mut d = Detector::new(Thresholds::default());
        let mut v = view();
        v.listeners = vec![(localhost(), 7000, 1)];
        v.half_open = vec![(
            localhost(),
            7000,
            HalfOpen {
                count: 64,
                sources: 64,
            },
        )];
        let mut i = inputs(SEC);
        i.syn_coverage = SynCoverage::None;
        i.syn_counters.syncookies_sent = 15_000;
        let a = &d.evaluate(&v, &i)[0];
        assert!(
            a.message
                .contains(">= 15000 SYN/s (those answered with cookies"),
            "{}",
            a.message
        );
        assert!(a.message.contains("15000 cookies"), "{}", a.message);
        assert_eq!(a.severity, Severity::Critical, "the queue overflowed");
    }

    /// A cleared alert says how things are now, not the figure it was raised with.
    #[test]
    fn a_cleared_alert_gives_the_figures_of_now() {
        let mut d = Detector::new(Thresholds::default());
        let peer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let mut v = view();
        v.per_ip_top = vec![(peer, 230)];
        v.time_wait = 1500;
        assert_eq!(d.evaluate(&v, &inputs(SEC)).len(), 2);
        v.per_ip_top = vec![(peer, 150)];
        v.time_wait = 20;
        let mut cleared = d.evaluate(&v, &inputs(2 * SEC));
        cleared.sort_by_key(|a| a.rule);
        let messages: Vec<(&str, &str)> = cleared
            .iter()
            .map(|a| (a.rule, a.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            vec![
                (
                    "per_ip",
                    "cleared: remote 198.51.100.7 holds 150 live connections now (warning above 200)"
                ),
                (
                    "time_wait",
                    "cleared: 20 sockets in TIME_WAIT now (warning above 1000)"
                ),
            ]
        );
        assert!(cleared.iter().all(|a| a.status == Status::Cleared));
    }

    #[test]
    fn busy_but_healthy_listeners_are_not_floods() {
        let mut d = Detector::new(Thresholds::default());
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

    fn group(side: CloseWaitSide, count: u64, oldest_ns: u64, since: Since) -> CloseWaitView {
        CloseWaitView {
            side,
            count,
            oldest_ns,
            since,
        }
    }

    #[test]
    fn close_wait_alerts_by_age_or_count_with_owner() {
        let mut d = Detector::new(Thresholds {
            close_wait_age_secs: 2.0,
            ..Default::default()
        });
        let server = CloseWaitSide::Server { local_port: 8080 };
        let mut v = view();
        v.close_wait = vec![group(server, 3, 10 * SEC, Since::Seen)];
        let mut i = inputs(11 * SEC);
        assert!(d.evaluate(&v, &i).is_empty(), "1 s old, threshold 2 s");
        i.now_ns = 12 * SEC;
        i.close_wait_owners.insert(
            server,
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
        v.close_wait = vec![group(server, 101, 12 * SEC, Since::Found)];
        let a = &d.evaluate(&v, &i)[0];
        assert_eq!(
            (a.status, a.severity),
            (Status::Changed, Severity::Critical)
        );
        assert!(a.message.contains("oldest >= 0s"), "{}", a.message);
    }

    /// A client pool leaking toward one server, from a new ephemeral port each time, is
    /// one leak: one alert, critical once it passes the count.
    #[test]
    fn a_client_pool_leak_is_one_alert_by_server() {
        let mut d = Detector::new(Thresholds::default());
        let pool = CloseWaitSide::Client {
            remote: "203.0.113.9:6379".parse().unwrap(),
        };
        let mut v = view();
        v.close_wait = vec![group(pool, 150, SEC, Since::Seen)];
        let alerts = d.evaluate(&v, &inputs(2 * SEC));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(
            (a.rule, a.subject.as_str(), a.severity),
            ("close_wait", "203.0.113.9:6379", Severity::Critical)
        );
        assert!(
            a.message
                .starts_with("150 CLOSE_WAIT sockets toward 203.0.113.9:6379 held by"),
            "{}",
            a.message
        );
    }

    /// CLOSE_WAIT already there at start is alerted at once, as an audit would flag it.
    #[test]
    fn close_wait_present_at_start_is_alerted_at_once() {
        let mut d = Detector::new(Thresholds::default());
        let mut v = view();
        v.close_wait = vec![group(
            CloseWaitSide::Server { local_port: 8080 },
            2,
            SEC,
            Since::AtStart,
        )];
        let alerts = d.evaluate(&v, &inputs(SEC));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].severity, Severity::Warning);
        assert!(
            alerts[0]
                .message
                .contains("oldest age unknown, present at start"),
            "{}",
            alerts[0].message
        );
    }

    #[test]
    fn time_wait_and_port_exhaustion() {
        let mut d = Detector::new(Thresholds::default());
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
        let mut d = Detector::new(Thresholds::default());
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
        let mut d = Detector::new(Thresholds::default());
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
