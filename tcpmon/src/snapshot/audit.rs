//! Snapshot audit: rules over a [`Summary`] that return findings with a severity and a
//! message an operator can act on. Pure: no I/O, no rendering.
use serde::{Deserialize, Serialize};

use super::analysis::Summary;
use crate::model::{endpoint, severity, Process, Severity, Thresholds};

/// A finding: the rule, what it is about, the figure it judged against which thresholds,
/// and a message. Programs read the structured fields; the message is for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the rule: time_wait, close_wait, syn_flood, per_ip,
    /// port_exhaustion, retransmits, stuck_send_queue, wildcard_listener, unparsed_lines,
    /// owners_hidden, netns_unread, unexpected_listener.
    pub rule: String,
    /// What it is about: "total", a local port or remote ip:port (CLOSE_WAIT), a
    /// listener, a remote IP, a destination, a namespace.
    pub subject: String,
    pub message: String,
    /// The figure the rule judged, in `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// sockets, connections, percent_of_backlog, percent_of_range, percent_of_segments,
    /// bytes, lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The thresholds `value` was judged against (strictly above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_above: Option<f64>,
    /// The process it is about, when known (a CLOSE_WAIT leak, a listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The network namespace (inode) it is in, when several were read, and its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_owner: Option<String>,
}

/// The structured part of a finding, as each rule fills it.
#[derive(Default)]
struct Facts {
    subject: String,
    value: Option<f64>,
    unit: Option<&'static str>,
    warning_above: Option<f64>,
    critical_above: Option<f64>,
    process: Option<Process>,
}

impl Facts {
    fn about(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            ..Self::default()
        }
    }

    /// The figure judged, and the thresholds it was judged against.
    fn judged(mut self, value: f64, unit: &'static str, warn: f64, crit: f64) -> Self {
        self.value = Some(value);
        self.unit = Some(unit);
        self.warning_above = Some(warn);
        self.critical_above = Some(crit);
        self
    }

    fn counted(mut self, value: f64, unit: &'static str) -> Self {
        self.value = Some(value);
        self.unit = Some(unit);
        self
    }

    fn held_by(mut self, process: Option<&Process>) -> Self {
        self.process = process.cloned();
        self
    }
}

/// Runs every rule; findings come back most severe first.
pub fn audit(summary: &Summary, t: &Thresholds) -> Vec<Finding> {
    audit_in(summary, t, None)
}

/// Listeners no line of `allow` allows: an `unexpected_listener` warning each (one per
/// address, however many sockets share it), added to `findings` in severity order.
pub fn judge_listeners(
    findings: &mut Vec<Finding>,
    listeners: &[crate::snapshot::analysis::Listener],
    allow: &crate::model::allowlist::Allowlist,
) {
    let mut seen = std::collections::BTreeSet::new();
    for l in listeners {
        if !seen.insert((l.netns, l.ip, l.port)) {
            continue;
        }
        let names: Vec<&str> = l.process.iter().map(|p| p.comm.as_str()).collect();
        if allow.allows(l.ip, l.port, &names) {
            continue;
        }
        let owner = l.process.as_ref().map_or_else(
            || " (its process is not known)".to_owned(),
            |p| format!(" by {p}"),
        );
        let facts = Facts::about(endpoint(l.ip, l.port)).held_by(l.process.as_ref());
        findings.push(Finding {
            severity: Severity::Warning,
            rule: "unexpected_listener".into(),
            subject: facts.subject,
            message: format!(
                "listening on {}{owner}: not in the listener allowlist",
                endpoint(l.ip, l.port)
            ),
            value: None,
            unit: None,
            warning_above: None,
            critical_above: None,
            process: facts.process,
            netns: l.netns,
            netns_owner: None,
        });
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
}

/// The rules over one namespace's summary; `place` names it in every message.
fn audit_in(summary: &Summary, t: &Thresholds, place: Option<(u64, &str)>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut push = |severity, rule: &str, facts: Facts, message: String| {
        findings.push(Finding {
            netns: place.map(|(inode, _)| inode),
            netns_owner: place.map(|(_, label)| label.to_owned()),
            severity,
            rule: rule.into(),
            subject: facts.subject,
            value: facts.value,
            unit: facts.unit.map(str::to_owned),
            warning_above: facts.warning_above,
            critical_above: facts.critical_above,
            process: facts.process,
            message: match place {
                // A CLOSE_WAIT finding names its place after the process that holds it.
                Some((_, label)) if rule != "close_wait" => format!("In {label}: {message}"),
                _ => message,
            },
        })
    };

    let tw = summary.states.get(crate::model::TcpState::TimeWait);
    if let Some(sev) = severity(tw as f64, t.time_wait_warn as f64, t.time_wait_crit as f64) {
        push(
            sev,
            "time_wait",
            Facts::about("total").judged(
                tw as f64,
                "sockets",
                t.time_wait_warn as f64,
                t.time_wait_crit as f64,
            ),
            format!(
                "{tw} sockets in TIME_WAIT (warning above {}, critical above {}): short-lived \
                 connections are closing faster than the 60 s TIME_WAIT drains them",
                t.time_wait_warn, t.time_wait_crit
            ),
        );
    }

    // Each leak (a server's port and process, or a client's process and server) is
    // judged on its own count.
    for group in &summary.close_wait {
        let cw_sev = if group.count > t.close_wait_crit {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let owner = group.process.as_ref().map_or_else(
            || "an unknown process (see owners_hidden)".to_owned(),
            |p| p.to_string(),
        );
        let owner = match place {
            Some((_, label)) => format!("{owner} in {label}"),
            None => owner,
        };
        push(
            cw_sev,
            "close_wait",
            Facts::about(group.side.subject())
                .judged(group.count as f64, "sockets", 0.0, t.close_wait_crit as f64)
                .held_by(group.process.as_ref()),
            format!(
                "{} CLOSE_WAIT socket{} {} held by {owner}: {}{}",
                group.count,
                if group.count == 1 { "" } else { "s" },
                group.side.place(),
                group.side.meaning(),
                if group.unread_bytes > 0 {
                    format!(" ({} unread bytes)", group.unread_bytes)
                } else {
                    String::new()
                }
            ),
        );
    }

    for l in &summary.listeners {
        // Without the listener's own backlog, somaxconn caps it: the percentage is then a
        // lower bound, and the message says so.
        let Some(backlog) = l.backlog.or(summary.somaxconn).filter(|b| *b > 0) else {
            continue;
        };
        if l.half_open == 0 {
            continue;
        }
        let pct = l.half_open as f64 * 100.0 / f64::from(backlog);
        if let Some(sev) = severity(pct, t.syn_backlog_warn_pct, t.syn_backlog_crit_pct) {
            push(
                sev,
                "syn_flood",
                Facts::about(endpoint(l.ip, l.port))
                    .judged(
                        pct,
                        "percent_of_backlog",
                        t.syn_backlog_warn_pct,
                        t.syn_backlog_crit_pct,
                    )
                    .held_by(l.process.as_ref()),
                format!(
                    "{} half-open (SYN_RECV) requests on listener {} = {:.0}% of {} {} \
                     from {} distinct source{}{}",
                    l.half_open,
                    endpoint(l.ip, l.port),
                    pct,
                    if l.backlog.is_some() {
                        "its backlog"
                    } else {
                        "at most (somaxconn)"
                    },
                    backlog,
                    l.half_open_sources,
                    if l.half_open_sources == 1 { "" } else { "s" },
                    if l.half_open_sources * 10 >= l.half_open {
                        " (many sources: looks like a spoofed SYN flood)"
                    } else {
                        " (few sources: one misbehaving client or a handshake problem)"
                    }
                ),
            );
        }
    }

    for ip in &summary.per_ip {
        match severity(ip.active as f64, t.per_ip_warn as f64, t.per_ip_crit as f64) {
            Some(sev) => push(
                sev,
                "per_ip",
                Facts::about(ip.ip.to_string()).judged(
                    ip.active as f64,
                    "connections",
                    t.per_ip_warn as f64,
                    t.per_ip_crit as f64,
                ),
                format!(
                    "remote {} holds {} live connections ({} established, {} in handshake; \
                     warning above {}, critical above {}); besides, {} TIME_WAIT and {} \
                     CLOSE_WAIT",
                    ip.ip,
                    ip.active,
                    ip.established,
                    ip.syn_sent + ip.syn_recv,
                    t.per_ip_warn,
                    t.per_ip_crit,
                    ip.time_wait,
                    ip.close_wait
                ),
            ),
            // per_ip is sorted largest first: nothing below can pass either threshold.
            None => break,
        }
    }

    let range = summary.port_range;
    for dest in &summary.destinations {
        let pct = dest.total as f64 * 100.0 / range.size() as f64;
        if let Some(sev) = severity(pct, t.port_exhaustion_warn_pct, t.port_exhaustion_crit_pct) {
            push(
                sev,
                "port_exhaustion",
                Facts::about(endpoint(dest.ip, dest.port)).judged(
                    pct,
                    "percent_of_range",
                    t.port_exhaustion_warn_pct,
                    t.port_exhaustion_crit_pct,
                ),
                format!(
                    "{} local ports ({} in TIME_WAIT) are tied up toward {} = {:.0}% of the \
                     ephemeral range {}-{}: new connections there will fail with EADDRNOTAVAIL",
                    dest.total,
                    dest.time_wait,
                    endpoint(dest.ip, dest.port),
                    pct,
                    range.low,
                    range.high
                ),
            );
        }
    }

    // From tcp_info: remote IPs whose connections keep retransmitting.
    for r in &summary.retransmits {
        if r.segs_out < t.retrans_min_segs {
            continue;
        }
        if let Some(sev) = severity(r.retrans_pct, t.retrans_warn_pct, t.retrans_crit_pct) {
            push(
                sev,
                "retransmits",
                Facts::about(r.ip.to_string()).judged(
                    r.retrans_pct,
                    "percent_of_segments",
                    t.retrans_warn_pct,
                    t.retrans_crit_pct,
                ),
                format!(
                    "connections to {} retransmit {:.1}% of their segments ({} of {} over {} \
                     connection{}; warning above {}%): loss or congestion on the path",
                    r.ip,
                    r.retrans_pct,
                    r.total_retrans,
                    r.segs_out,
                    r.connections,
                    if r.connections == 1 { "" } else { "s" },
                    t.retrans_warn_pct
                ),
            );
        }
    }

    // Connections whose peer stopped reading: its window is zero and data waits.
    for s in &summary.stuck {
        push(
            if s.queued_bytes > t.stuck_crit_bytes {
                Severity::Critical
            } else {
                Severity::Warning
            },
            "stuck_send_queue",
            Facts::about(s.ip.to_string()).judged(
                s.queued_bytes as f64,
                "bytes",
                0.0,
                t.stuck_crit_bytes as f64,
            ),
            format!(
                "{} connection{} to {} cannot send: the peer advertises a zero window (it is \
                 not reading) with {} bytes queued",
                s.connections,
                if s.connections == 1 { "" } else { "s" },
                s.ip,
                s.queued_bytes
            ),
        );
    }

    for l in summary.listeners.iter().filter(|l| l.wildcard) {
        let owner = l
            .process
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        push(
            Severity::Info,
            "wildcard_listener",
            Facts::about(endpoint(l.ip, l.port)).held_by(l.process.as_ref()),
            format!(
                "listening on all {} addresses: {}{owner}",
                l.family.name(),
                endpoint(l.ip, l.port)
            ),
        );
    }

    if summary.skipped.count > 0 {
        push(
            Severity::Warning,
            "unparsed_lines",
            Facts::about("socket tables").counted(summary.skipped.count as f64, "lines"),
            format!(
                "{} line{} of /proc/net/tcp{{,6}} could not be decoded and {} not counted",
                summary.skipped.count,
                if summary.skipped.count == 1 { "" } else { "s" },
                if summary.skipped.count == 1 {
                    "is"
                } else {
                    "are"
                }
            ),
        );
    }
    if summary.owners_unknown > 0 {
        push(
            Severity::Info,
            "owners_hidden",
            Facts::about("owners").counted(summary.owners_unknown as f64, "sockets"),
            format!(
                "the owning process of {} listener/CLOSE_WAIT socket{} was not found: {}",
                summary.owners_unknown,
                if summary.owners_unknown == 1 { "" } else { "s" },
                owners_hidden_why(&summary.owners_refused)
            ),
        );
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// Why owners were not found: the processes that refused to be looked into, or, when
/// none did, that no process in this /proc holds the sockets.
pub fn owners_hidden_why(refused: &crate::model::Refused) -> String {
    if refused.is_empty() {
        "no process in this /proc holds them (their processes are in another PID \
         namespace, or they were closed while tcpmon looked)"
            .to_owned()
    } else {
        refused.explain("CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
    }
}

/// One namespace to audit: its inode, how findings name it, and its summary.
pub struct NamespaceAudit<'a> {
    pub inode: u64,
    pub label: String,
    pub summary: &'a Summary,
}

/// Audits each namespace on its own (thresholds such as TIME_WAIT and the ephemeral port
/// range are per namespace in the kernel too); every finding names its namespace. A
/// namespace that could not be read (`unread`: inode, owner, reason) is a warning: what
/// it holds was not judged.
pub fn audit_namespaces(
    parts: &[NamespaceAudit<'_>],
    unread: &[(u64, String, String)],
    t: &Thresholds,
) -> Vec<Finding> {
    let mut findings: Vec<Finding> = parts
        .iter()
        .flat_map(|part| audit_in(part.summary, t, Some((part.inode, &part.label))))
        .collect();
    findings.extend(unread.iter().map(|(inode, owner, reason)| Finding {
        severity: Severity::Warning,
        rule: "netns_unread".into(),
        subject: inode.to_string(),
        message: format!(
            "network namespace {inode} ({}) was not read and its sockets were not judged: {reason}",
            crate::model::printable(owner)
        ),
        value: None,
        unit: None,
        warning_above: None,
        critical_above: None,
        process: None,
        netns: Some(*inode),
        netns_owner: Some(owner.clone()),
    }));
    // Stable: within a severity, the largest namespace's findings come first.
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// Findings as shown: at most `limit` per rule (most severe first), and how many of each
/// rule were left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingList {
    pub total: usize,
    pub omitted: usize,
    pub items: Vec<Finding>,
    /// Rules some of whose findings were left out, with how many.
    pub omitted_by_rule: std::collections::BTreeMap<String, usize>,
}

/// Cuts `findings` (as `audit` returns them, most severe first) to `limit` per rule.
pub fn cut(findings: &[Finding], limit: Option<usize>) -> FindingList {
    let mut shown: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut list = FindingList {
        total: findings.len(),
        omitted: 0,
        items: Vec::new(),
        omitted_by_rule: Default::default(),
    };
    for f in findings {
        let n = shown.entry(f.rule.as_str()).or_default();
        if limit.is_none_or(|l| *n < l) {
            *n += 1;
            list.items.push(f.clone());
        } else {
            list.omitted += 1;
            *list.omitted_by_rule.entry(f.rule.clone()).or_default() += 1;
        }
    }
    list
}

/// `audit`'s exit status: 1 when any finding reaches `fail_on`.
pub fn fails(findings: &[Finding], fail_on: Severity) -> bool {
    findings.iter().any(|f| f.severity >= fail_on)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        host::{proc_net::Socket, process::Owners},
        model::{PortRange, TcpState},
        snapshot::analysis::{Aggregator, Collect, Filter, TcpInfo},
    };

    fn sock(state: TcpState, lport: u16, remote: [u8; 4], rport: u16) -> Socket {
        Socket::new(
            state,
            ([10, 0, 0, 1].into(), lport),
            (remote.into(), rport),
            1,
        )
    }

    fn run(sockets: impl IntoIterator<Item = Socket>, range: PortRange) -> Vec<Finding> {
        let mut agg = Aggregator::new(Filter::default(), Collect::default(), range);
        sockets.into_iter().for_each(|s| agg.add(&s));
        audit(
            &agg.finish(Some(&Owners::default()), &HashMap::new()),
            &Thresholds::default(),
        )
    }

    fn rules(findings: &[Finding]) -> Vec<(&str, Severity)> {
        // The fixtures have no processes, so every owner is "hidden"; that rule has its own test.
        findings
            .iter()
            .filter(|f| f.rule != "owners_hidden")
            .map(|f| (f.rule.as_str(), f.severity))
            .collect()
    }

    #[test]
    fn time_wait_thresholds_are_strictly_above() {
        let tw = |n: u32| {
            (0..n).map(|i| {
                sock(
                    TcpState::TimeWait,
                    80,
                    [192, 0, 2, (i % 250) as u8],
                    1024 + i as u16,
                )
            })
        };
        assert!(rules(&run(tw(1000), PortRange::LINUX_DEFAULT))
            .iter()
            .all(|r| r.0 != "time_wait"));
        assert!(rules(&run(tw(1001), PortRange::LINUX_DEFAULT))
            .contains(&("time_wait", Severity::Warning)));
        assert!(rules(&run(tw(5001), PortRange::LINUX_DEFAULT))
            .contains(&("time_wait", Severity::Critical)));
    }

    #[test]
    fn one_close_wait_warns_and_many_are_critical() {
        let one = run(
            [sock(TcpState::CloseWait, 8080, [192, 0, 2, 1], 5000)],
            PortRange::LINUX_DEFAULT,
        );
        assert_eq!(rules(&one), vec![("close_wait", Severity::Warning)]);
        assert!(one[0].message.contains("local port 8080"));
        let many = run(
            (0..101).map(|i| sock(TcpState::CloseWait, 8080, [192, 0, 2, 1], 5000 + i)),
            PortRange::LINUX_DEFAULT,
        );
        assert_eq!(rules(&many), vec![("close_wait", Severity::Critical)]);
        assert!(many[0].message.starts_with("101 CLOSE_WAIT sockets"));
        assert!(fails(&many, Severity::Critical));
        assert!(!fails(&one, Severity::Critical));
        assert!(fails(&one, Severity::Warning));
    }

    #[test]
    fn close_wait_severity_is_per_port_not_host_wide() {
        let sockets = (0..60)
            .map(|i| sock(TcpState::CloseWait, 8080, [192, 0, 2, 1], 5000 + i))
            .chain((0..60).map(|i| sock(TcpState::CloseWait, 9090, [192, 0, 2, 1], 5000 + i)));
        let findings = run(sockets, PortRange::LINUX_DEFAULT);
        assert_eq!(
            rules(&findings),
            vec![
                ("close_wait", Severity::Warning),
                ("close_wait", Severity::Warning)
            ],
            "120 in all, but 60 per port"
        );
    }

    /// A proxy closing first leaves TIME_WAIT toward its peer at every request: no
    /// per-IP finding, however many; 201 live connections are one.
    #[test]
    fn per_ip_judges_live_connections_not_time_wait() {
        let time_wait =
            (0..1500).map(|i| sock(TcpState::TimeWait, 8080, [192, 0, 2, 7], 20_000 + i));
        let findings = run(time_wait.clone(), PortRange::LINUX_DEFAULT);
        assert!(
            findings.iter().all(|f| f.rule != "per_ip"),
            "{:?}",
            rules(&findings)
        );
        let live = (0..150)
            .map(|i| sock(TcpState::Established, 8080, [192, 0, 2, 7], 30_000 + i))
            .chain((0..51).map(|i| sock(TcpState::SynSent, 40_000 + i, [192, 0, 2, 7], 443)));
        let findings = run(live.chain(time_wait), PortRange::LINUX_DEFAULT);
        let per_ip: Vec<&Finding> = findings.iter().filter(|f| f.rule == "per_ip").collect();
        assert_eq!(per_ip.len(), 1);
        assert_eq!(per_ip[0].severity, Severity::Warning);
        assert!(
            per_ip[0].message.starts_with(
                "remote 192.0.2.7 holds 201 live connections (150 established, 51 in handshake;"
            ),
            "{}",
            per_ip[0].message
        );
        assert!(
            per_ip[0]
                .message
                .ends_with("besides, 1500 TIME_WAIT and 0 CLOSE_WAIT"),
            "{}",
            per_ip[0].message
        );
    }

    /// A client pool leaking 150 sockets toward one server, each from its own ephemeral
    /// port, is one critical leak, not 150 warnings of one.
    #[test]
    fn a_client_pool_leak_is_one_finding_by_server() {
        let pool = (0..150).map(|i| sock(TcpState::CloseWait, 40_000 + i, [203, 0, 113, 9], 6379));
        let findings = run(pool, PortRange::LINUX_DEFAULT);
        assert_eq!(rules(&findings), vec![("close_wait", Severity::Critical)]);
        assert!(
            findings[0]
                .message
                .starts_with("150 CLOSE_WAIT sockets toward 203.0.113.9:6379 held by"),
            "{}",
            findings[0].message
        );
        // The same sockets on a listener's port are the server's leak, by that port.
        let mut agg = Aggregator::new(
            Filter::default(),
            Collect::default(),
            PortRange::LINUX_DEFAULT,
        );
        agg.add(&sock(TcpState::Listen, 40_000, [0, 0, 0, 0], 0));
        agg.add(&sock(TcpState::CloseWait, 40_000, [203, 0, 113, 9], 6379));
        let summary = agg.finish(None, &HashMap::new());
        assert_eq!(
            summary.close_wait[0].side,
            crate::model::CloseWaitSide::Server { local_port: 40_000 }
        );
    }

    /// The same threshold semantics as the live alert: 32 half-open of a backlog of 64
    /// is 50 %, not above 50 %.
    #[test]
    fn the_syn_backlog_threshold_is_strictly_above() {
        let judged = |half_open: u16| {
            let mut agg = Aggregator::new(
                Filter::default(),
                Collect::default(),
                PortRange::LINUX_DEFAULT,
            );
            agg.add(&sock(TcpState::Listen, 7000, [0, 0, 0, 0], 0));
            for i in 0..half_open {
                let mut s = sock(TcpState::SynRecv, 7000, [198, 51, 100, 1], 1000 + i);
                s.inode = 0;
                agg.add(&s);
            }
            let summary = agg.finish(None, &HashMap::from([(1, 64)]));
            audit(&summary, &Thresholds::default())
                .into_iter()
                .find(|f| f.rule == "syn_flood")
                .map(|f| f.severity)
        };
        assert_eq!(judged(32), None);
        assert_eq!(judged(33), Some(Severity::Warning));
        assert_eq!(judged(58), Some(Severity::Critical));
    }

    #[test]
    fn findings_are_cut_per_rule_and_say_how_many_were_left_out() {
        let mut sockets = Vec::new();
        for host in 1..=30u8 {
            sockets.extend(
                (0..201).map(|i| sock(TcpState::Established, 443, [198, 51, 100, host], 1000 + i)),
            );
        }
        sockets.push(sock(TcpState::CloseWait, 8080, [192, 0, 2, 1], 5000));
        let findings = run(sockets, PortRange::LINUX_DEFAULT);
        let list = cut(&findings, Some(5));
        assert_eq!(list.total, findings.len());
        assert_eq!(list.items.iter().filter(|f| f.rule == "per_ip").count(), 5);
        assert_eq!(list.omitted_by_rule.get("per_ip"), Some(&25));
        assert!(list.items.iter().any(|f| f.rule == "close_wait"));
        assert_eq!(list.omitted, 25);
        assert_eq!(cut(&findings, None).items.len(), findings.len());
    }

    #[test]
    fn every_ip_is_checked_not_only_the_top() {
        let mut sockets = Vec::new();
        for host in 1..=30u8 {
            sockets.extend(
                (0..201).map(|i| sock(TcpState::Established, 443, [198, 51, 100, host], 1000 + i)),
            );
        }
        let findings = run(sockets, PortRange::LINUX_DEFAULT);
        assert_eq!(findings.iter().filter(|f| f.rule == "per_ip").count(), 30);
    }

    #[test]
    fn port_exhaustion_compares_with_the_range() {
        let range = PortRange {
            low: 40000,
            high: 40099,
        };
        let sockets = (0..60).map(|i| sock(TcpState::TimeWait, 40000 + i, [192, 0, 2, 9], 80));
        let findings = run(sockets, range);
        assert_eq!(
            rules(&findings),
            vec![("port_exhaustion", Severity::Warning)]
        );
        assert!(
            findings[0].message.contains("192.0.2.9:80"),
            "{}",
            findings[0].message
        );
        let sockets = (0..81).map(|i| sock(TcpState::Established, 40000 + i, [192, 0, 2, 9], 80));
        assert_eq!(
            rules(&run(sockets, range)),
            vec![("port_exhaustion", Severity::Critical)]
        );
    }

    #[test]
    fn syn_backlog_uses_the_listener_backlog() {
        let mut listener = sock(TcpState::Listen, 80, [0, 0, 0, 0], 0);
        listener.local_ip = [0, 0, 0, 0].into();
        let flood: Vec<Socket> = (0..95)
            .map(|i| {
                sock(
                    TcpState::SynRecv,
                    80,
                    [203, 0, 113, (i % 200) as u8],
                    2000 + i,
                )
            })
            .collect();
        let summary = |backlogs: HashMap<u64, u32>| {
            let mut agg = Aggregator::new(
                Filter::default(),
                Collect::default(),
                PortRange::LINUX_DEFAULT,
            );
            std::iter::once(&listener)
                .chain(&flood)
                .for_each(|s| agg.add(s));
            agg.finish(Some(&Owners::default()), &backlogs)
        };
        let findings = audit(&summary(HashMap::from([(1, 100)])), &Thresholds::default());
        let syn = findings.iter().find(|f| f.rule == "syn_flood").unwrap();
        assert_eq!(syn.severity, Severity::Critical);
        assert!(syn.message.contains("95 half-open"), "{}", syn.message);
        assert!(
            syn.message.contains("95% of its backlog 100"),
            "{}",
            syn.message
        );
        assert!(
            syn.message.contains("95 distinct sources"),
            "{}",
            syn.message
        );
        assert!(findings
            .iter()
            .any(|f| f.rule == "wildcard_listener" && f.severity == Severity::Info));
        // Without the backlog, somaxconn bounds it and the message says so.
        let mut unknown = summary(HashMap::new());
        unknown.somaxconn = Some(128);
        let findings = audit(&unknown, &Thresholds::default());
        let syn = findings.iter().find(|f| f.rule == "syn_flood").unwrap();
        assert_eq!(syn.severity, Severity::Warning);
        assert!(
            syn.message.contains("74% of at most (somaxconn) 128"),
            "{}",
            syn.message
        );
    }

    #[test]
    fn namespaces_are_judged_each_on_its_own_and_named() {
        let summary_of = |sockets: Vec<Socket>| {
            let mut agg = Aggregator::new(
                Filter::default(),
                Collect::default(),
                PortRange::LINUX_DEFAULT,
            );
            sockets.iter().for_each(|s| agg.add(s));
            agg.finish(Some(&Owners::default()), &HashMap::new())
        };
        // 3,000 TIME_WAIT in each of two namespaces: 6,000 together would be critical,
        // but no namespace's own table is above the 5,000 threshold.
        let tw = || {
            (0..3000u32)
                .map(|i| {
                    sock(
                        TcpState::TimeWait,
                        80,
                        [192, 0, 2, (i % 250) as u8],
                        1024 + i as u16,
                    )
                })
                .collect::<Vec<_>>()
        };
        let leak = summary_of(vec![sock(TcpState::CloseWait, 8080, [192, 0, 2, 9], 40000)]);
        let (a, b) = (summary_of(tw()), summary_of(tw()));
        let parts = [
            NamespaceAudit {
                inode: 1,
                label: "pod web, netns 1".into(),
                summary: &a,
            },
            NamespaceAudit {
                inode: 2,
                label: "netns 2".into(),
                summary: &b,
            },
            NamespaceAudit {
                inode: 3,
                label: "docker container 3f2a, netns 3".into(),
                summary: &leak,
            },
        ];
        let unread = [(
            4,
            "docker container 9e".to_owned(),
            "cannot enter it".to_owned(),
        )];
        let findings = audit_namespaces(&parts, &unread, &Thresholds::default());
        let tw: Vec<_> = findings.iter().filter(|f| f.rule == "time_wait").collect();
        assert_eq!(tw.len(), 2, "{findings:?}");
        assert!(tw.iter().all(|f| f.severity == Severity::Warning));
        assert!(
            tw[0]
                .message
                .starts_with("In pod web, netns 1: 3000 sockets"),
            "{}",
            tw[0].message
        );
        let cw = findings.iter().find(|f| f.rule == "close_wait").unwrap();
        assert_eq!(cw.netns, Some(3));
        assert!(
            cw.message.contains(
                "held by an unknown process (see owners_hidden) in docker container 3f2a, \
                 netns 3: the peers closed"
            ),
            "{}",
            cw.message
        );
        let unread = findings.iter().find(|f| f.rule == "netns_unread").unwrap();
        assert_eq!(
            (unread.severity, unread.netns),
            (Severity::Warning, Some(4))
        );
        assert!(
            unread.message.contains("cannot enter it"),
            "{}",
            unread.message
        );
        // Most severe first across namespaces.
        assert!(findings.windows(2).all(|w| w[0].severity >= w[1].severity));
    }

    #[test]
    fn retransmits_and_stuck_peers_are_judged_from_tcp_info() {
        let mut agg = Aggregator::new(
            Filter::default(),
            Collect::default(),
            PortRange::LINUX_DEFAULT,
        );
        let info = |segs_out: u32, total_retrans: u32, snd_wnd: u32| TcpInfo {
            segs_out,
            total_retrans,
            snd_wnd,
            ..TcpInfo::default()
        };
        // 192.0.2.1: 5% retransmitted over 2,000 segments (a warning).
        for i in 0..2 {
            agg.add_with_info(
                &sock(TcpState::Established, 40000 + i, [192, 0, 2, 1], 443),
                Some(&info(1000, 50, 65535)),
            );
        }
        // 192.0.2.2: 50% but over too few segments to judge.
        agg.add_with_info(
            &sock(TcpState::Established, 40010, [192, 0, 2, 2], 443),
            Some(&info(10, 5, 65535)),
        );
        // 192.0.2.3: zero window with 20 MiB queued (critical), and 192.0.2.4 through a
        // zero-window probe timer alone (what /proc shows).
        let mut full = sock(TcpState::Established, 40020, [192, 0, 2, 3], 443);
        full.tx_queue = 20 << 20;
        // Part of the queue not sent yet: tcp_info's notsent is inside the send queue.
        let unsent = TcpInfo {
            notsent_bytes: 1 << 20,
            ..info(100, 0, 0)
        };
        agg.add_with_info(&full, Some(&unsent));
        let mut probing = sock(TcpState::Established, 40030, [192, 0, 2, 4], 443);
        probing.tx_queue = 1000;
        probing.timer = 4;
        agg.add(&probing);
        let summary = agg.finish(Some(&Owners::default()), &HashMap::new());
        assert!(summary.tcp_info);
        let queued: Vec<u64> = summary.stuck.iter().map(|s| s.queued_bytes).collect();
        assert_eq!(queued, [20 << 20, 1000]);
        let findings = audit(&summary, &Thresholds::default());
        let found: Vec<(&str, Severity, &str)> = findings
            .iter()
            .filter(|f| matches!(f.rule.as_str(), "retransmits" | "stuck_send_queue"))
            .map(|f| (f.rule.as_str(), f.severity, f.message.as_str()))
            .collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found.iter().any(|(r, s, m)| *r == "retransmits"
            && *s == Severity::Warning
            && m.contains(
                "192.0.2.1 retransmit 5.0% of their segments (100 of 2000 over 2 connections"
            )));
        assert!(found.iter().any(|(r, s, m)| *r == "stuck_send_queue"
            && *s == Severity::Critical
            && m.contains("1 connection to 192.0.2.3")));
        assert!(found.iter().any(|(r, s, m)| *r == "stuck_send_queue"
            && *s == Severity::Warning
            && m.contains("192.0.2.4")
            && m.contains("1000 bytes queued")));
    }

    #[test]
    fn hidden_owners_are_reported() {
        let findings = run(
            [sock(TcpState::CloseWait, 8080, [192, 0, 2, 1], 5000)],
            PortRange::LINUX_DEFAULT,
        );
        let hidden = findings.iter().find(|f| f.rule == "owners_hidden").unwrap();
        assert_eq!(hidden.severity, Severity::Info);
        assert!(findings[0].message.contains("unknown process"));
    }

    #[test]
    fn severities_parse_and_order() {
        assert_eq!("crit".parse::<Severity>(), Ok(Severity::Critical));
        assert_eq!("Warning".parse::<Severity>(), Ok(Severity::Warning));
        assert!("x".parse::<Severity>().is_err());
        assert!(Severity::Critical > Severity::Warning && Severity::Warning > Severity::Info);
    }
}
