//! `--all-netns`: a tally, detectors and reconciliation for each other network namespace,
//! up to a bound (the rest are named, and their transitions counted together). Pure
//! bookkeeping: the engine does the reading (through its [`super::host::Host`]) and
//! hands the results in.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::{
    failures::FailureTally,
    host::ReasonNames,
    record::{
        CloseWaitRecord, ListenerRecord, NamespaceDetail, NamespaceTally, PerIpTally, SynTotals,
        Untracked,
    },
    rules::{
        close_wait_owners, close_wait_severity, Alert, Detector, Inputs, Status, DETECTOR_TOP,
    },
    syn::{half_open_of, SynCoverage},
    tally::{Applied, Tally, TallyConfig},
};
use crate::{
    ebpf::decode::Failure as FailureKind,
    host::{netns::Namespace, proc_net::Socket},
    model::{
        endpoint, CloseWaitSide, Endpoints, PortRange, Process, Severity, StateCounts, TcpState,
        Thresholds, Transition,
    },
    snapshot::namespaces::{label, Failure},
};

/// One tracked namespace.
#[derive(Debug)]
struct Scope {
    namespace: Namespace,
    /// How alerts name it ("pod web-7d9 (container 3f2a9c1b7e44), netns 4026532571").
    label: String,
    tally: Tally,
    detector: Detector,
    port_range: PortRange,
    /// Read from its sockets yet: until then its transitions are not applied.
    baselined: bool,
    transitions: u64,
    /// Inferred TIME_WAIT minus its sockstat, at the last evaluation.
    time_wait_error: Option<i64>,
    /// How far the last reconciliation found the tally off.
    reconcile_error: Option<u64>,
    close_wait_owners: HashMap<CloseWaitSide, Vec<Process>>,
    /// Its retransmits, resets and drops.
    failures: FailureTally,
}

/// Remote IPs and ports each other namespace counts failures for one by one.
const NAMESPACE_FAILURE_KEYS: usize = 1024;

impl Scope {
    fn detail(&self, top: usize, now_ns: u64, names: &ReasonNames) -> NamespaceDetail {
        let view = self.tally.view(top);
        let half_open: HashMap<(IpAddr, u16), u64> = view
            .half_open
            .iter()
            .map(|(ip, port, h)| ((*ip, *port), h.count))
            .collect();
        NamespaceDetail {
            listeners: view
                .listeners
                .iter()
                .map(|&(ip, port, sockets)| ListenerRecord {
                    listener: endpoint(ip, port),
                    sockets,
                    backlog: None,
                    accept_queue: None,
                    drops: None,
                    half_open: half_open_of(&half_open, ip, port),
                    syn: SynTotals::default(),
                    owners: None,
                })
                .collect(),
            per_ip: PerIpTally::of(&view),
            close_wait: CloseWaitRecord::of(&view, now_ns, top, &self.close_wait_owners),
            failures: self.failures.record(top, names),
        }
    }
}

/// What reading one namespace gave: its inode, when the read began, the sockets.
pub type NamespaceRead = (u64, u64, Result<Vec<Socket>, Failure>);

/// Every other namespace's live state.
#[derive(Debug)]
pub struct Namespaces {
    max: usize,
    own: Option<u64>,
    tally_config: TallyConfig,
    thresholds: Thresholds,
    tracked: BTreeMap<u64, Scope>,
    /// Known, over the bound.
    over_limit: BTreeSet<u64>,
    /// Known, but could not be read (no privilege): said once, not retried.
    unreadable: BTreeSet<u64>,
    untracked_transitions: u64,
    /// A transition came from a namespace discovery has not seen: look again.
    unknown_seen: bool,
    /// While namespaces are being read: which, and their transitions meanwhile, in order.
    window: Option<(HashSet<u64>, Vec<Transition>)>,
    owner_inodes: HashSet<u64>,
    owners_by_inode: HashMap<u64, Process>,
}

impl Namespaces {
    /// `own`: the engine's own namespace (tallied by the engine itself).
    pub fn new(
        max: usize,
        own: Option<u64>,
        tally_config: TallyConfig,
        thresholds: Thresholds,
    ) -> Self {
        Self {
            max,
            own,
            tally_config,
            thresholds,
            tracked: BTreeMap::new(),
            over_limit: BTreeSet::new(),
            unreadable: BTreeSet::new(),
            untracked_transitions: 0,
            unknown_seen: false,
            window: None,
            owner_inodes: HashSet::new(),
            owners_by_inode: HashMap::new(),
        }
    }

    /// Applies discovery's answer: namespaces gone are dropped, new ones tracked (up to
    /// the bound; each then needs a baseline), the rest marked over the bound. Returns the
    /// events to report.
    pub fn update(
        &mut self,
        found: Vec<Namespace>,
        mut port_range: impl FnMut(&Namespace) -> Option<PortRange>,
    ) -> Vec<Alert> {
        self.unknown_seen = false;
        let found: Vec<Namespace> = found
            .into_iter()
            .filter(|n| Some(n.inode) != self.own)
            .collect();
        let present: HashSet<u64> = found.iter().map(|n| n.inode).collect();
        let mut events = Vec::new();
        let gone: Vec<u64> = self
            .tracked
            .keys()
            .filter(|inode| !present.contains(inode))
            .copied()
            .collect();
        for inode in gone {
            if let Some(scope) = self.tracked.remove(&inode) {
                events.extend(ended(
                    scope.detector,
                    &scope.namespace,
                    "the network namespace is gone",
                ));
                events.push(event(
                    "netns_gone",
                    Severity::Info,
                    &scope.namespace,
                    format!(
                        "network namespace {} is gone: no longer tallied",
                        scope.label
                    ),
                ));
            }
        }
        self.over_limit.retain(|inode| present.contains(inode));
        self.unreadable.retain(|inode| present.contains(inode));
        for ns in found {
            if let Some(scope) = self.tracked.get_mut(&ns.inode) {
                // The processes it is read through change: keep the ones holding it now.
                scope.namespace.access = ns.access;
                continue;
            }
            if self.unreadable.contains(&ns.inode) {
                continue;
            }
            if self.tracked.len() >= self.max {
                if self.over_limit.insert(ns.inode) {
                    events.push(event(
                        "netns_untracked",
                        Severity::Warning,
                        &ns,
                        format!(
                            "network namespace {} not tallied: --max-netns {} reached (its transitions are counted with the other untracked ones)",
                            label(&ns),
                            self.max
                        ),
                    ));
                }
                continue;
            }
            self.over_limit.remove(&ns.inode);
            let range = port_range(&ns);
            let scope_label = label(&ns);
            events.push(event(
                "netns_added",
                Severity::Info,
                &ns,
                format!("network namespace {scope_label} tallied from now"),
            ));
            self.tracked.insert(
                ns.inode,
                Scope {
                    label: scope_label,
                    tally: Tally::new(TallyConfig {
                        port_range: range.unwrap_or(self.tally_config.port_range),
                        ..self.tally_config.clone()
                    }),
                    detector: Detector::new(self.thresholds.clone()),
                    port_range: range.unwrap_or(self.tally_config.port_range),
                    baselined: false,
                    transitions: 0,
                    time_wait_error: None,
                    reconcile_error: None,
                    close_wait_owners: HashMap::new(),
                    failures: FailureTally::new(NAMESPACE_FAILURE_KEYS),
                    namespace: ns,
                },
            );
        }
        events
    }

    /// A retransmit or reset (with its reason, if any) in another namespace: tallied
    /// when that namespace is; false when it is not.
    pub fn failure(
        &mut self,
        failure: FailureKind,
        count: u64,
        at: &Endpoints,
        reset_reason: Option<u16>,
    ) -> bool {
        let Some(scope) = self.tracked.get_mut(&u64::from(at.netns)) else {
            return false;
        };
        let remote = (at.remote_ip, at.remote_port);
        scope
            .failures
            .add(failure, count, at.local_port, remote, scope.port_range);
        if let Some(reason) = reset_reason {
            scope.failures.add_reset_reason(reason);
        }
        true
    }

    /// Segments retransmitted in another namespace: tallied when that namespace is.
    pub fn retransmitted(&mut self, segments: u64, sent: Option<u32>, at: &Endpoints) -> bool {
        let Some(scope) = self.tracked.get_mut(&u64::from(at.netns)) else {
            return false;
        };
        scope.failures.add_retransmit(
            segments,
            sent.map(|s| (at.skaddr, s)),
            at.local_port,
            (at.remote_ip, at.remote_port),
            scope.port_range,
        );
        true
    }

    /// A TCP packet dropped in another namespace: tallied when that namespace is.
    pub fn dropped(&mut self, netns: u32, reason: u16) -> bool {
        let Some(scope) = self.tracked.get_mut(&u64::from(netns)) else {
            return false;
        };
        scope.failures.add_drop(reason);
        true
    }

    /// Whether a transition from an unknown namespace asks for discovery again.
    pub fn rediscover_wanted(&self) -> bool {
        self.unknown_seen
    }

    /// Tracked namespaces that have no baseline yet.
    pub fn pending(&self) -> Vec<Namespace> {
        self.tracked
            .values()
            .filter(|s| !s.baselined)
            .map(|s| s.namespace.clone())
            .collect()
    }

    /// Every tracked namespace.
    pub fn all(&self) -> Vec<Namespace> {
        self.tracked.values().map(|s| s.namespace.clone()).collect()
    }

    pub fn tracked_count(&self) -> usize {
        self.tracked.len()
    }

    /// A transition of another namespace: applied to its tally (held in the window while
    /// namespaces are being read), or counted as untracked. Returns what the tally made
    /// of it, and the new-listener event it raises, if any.
    pub fn transition(&mut self, t: &Transition) -> (Option<Applied>, Option<Alert>) {
        let inode = u64::from(t.at.netns);
        let Some(scope) = self.tracked.get_mut(&inode) else {
            self.untracked_transitions += 1;
            if !self.over_limit.contains(&inode) && !self.unreadable.contains(&inode) {
                self.unknown_seen = true;
            }
            return (None, None);
        };
        scope.transitions += 1;
        let held = self
            .window
            .as_mut()
            .filter(|(reading, _)| reading.contains(&inode));
        let applied = match (held, scope.baselined) {
            (Some((_, window)), _) => {
                window.push(*t);
                scope.tally.observe(t)
            }
            (None, true) => scope.tally.apply(t),
            // Read before its baseline: the baseline will hold its effect.
            (None, false) => scope.tally.observe(t),
        };
        let listener = (applied.new_listener && scope.baselined).then(|| {
            let by = t.task.map(|task| Process {
                pid: task.pid,
                comm: task.comm(),
            });
            scope
                .detector
                .new_listener(
                    crate::model::canonical_ip(t.at.local_ip),
                    t.at.local_port,
                    by.as_ref(),
                )
                .in_namespace(inode, &owner_text(&scope.namespace))
        });
        (Some(applied), listener)
    }

    /// Starts holding the transitions of `reading`: those namespaces are about to be read.
    pub fn open_window(&mut self, reading: &[Namespace]) {
        self.window = Some((reading.iter().map(|n| n.inode).collect(), Vec::new()));
    }

    /// Whether namespaces are being read (a window is open).
    pub fn reading(&self) -> bool {
        self.window.is_some()
    }

    /// Rebuilds the tallies of the namespaces read (`reads`: inode, when the read began,
    /// what it found) against the transitions held meanwhile; a namespace found gone is
    /// dropped and reported.
    pub fn reconcile(&mut self, reads: &[NamespaceRead], baseline: bool) -> Vec<Alert> {
        let window = self.window.take().map(|(_, w)| w).unwrap_or_default();
        let mut events = Vec::new();
        for (inode, at, read) in reads {
            let (inode, at) = (*inode, *at);
            let Some(scope) = self.tracked.get_mut(&inode) else {
                continue;
            };
            match read {
                Ok(sockets) => {
                    // The window opened before the first namespace was read; this one's
                    // read began at `at`: what happened before that is not in doubt, so
                    // it is applied first, and the correction measured from there.
                    let (before, during): (Vec<Transition>, Vec<Transition>) = window
                        .iter()
                        .filter(|t| u64::from(t.at.netns) == inode)
                        .partition(|t| t.at.ts_ns < at);
                    if scope.baselined {
                        for t in &before {
                            scope.tally.apply(t);
                        }
                    }
                    let report = scope.tally.reconcile_window(sockets, at, &during);
                    let first = !scope.baselined;
                    scope.baselined = true;
                    scope.reconcile_error =
                        (!(baseline || first)).then_some(report.total_abs_error);
                }
                Err(failure) => {
                    if !failure.gone {
                        self.unreadable.insert(inode);
                    }
                    if let Some(scope) = self.tracked.remove(&inode) {
                        let why = if failure.gone {
                            "the network namespace is gone"
                        } else {
                            "the network namespace can no longer be read"
                        };
                        events.extend(ended(scope.detector, &scope.namespace, why));
                        events.push(event(
                            if failure.gone {
                                "netns_gone"
                            } else {
                                "netns_unread"
                            },
                            if failure.gone {
                                Severity::Info
                            } else {
                                Severity::Warning
                            },
                            &scope.namespace,
                            format!(
                                "network namespace {} no longer tallied: {}",
                                scope.label, failure.reason
                            ),
                        ));
                    }
                }
            }
        }
        events
    }

    /// Records owners of CLOSE_WAIT sockets per namespace from the last reads; `lookup`
    /// walks the processes only when the set of sockets changed.
    pub fn refresh_owners(
        &mut self,
        reads: &[NamespaceRead],
        lookup: impl FnOnce(&HashSet<u64>) -> HashMap<u64, Process>,
    ) {
        let sockets_of: Vec<(u64, &[Socket])> = reads
            .iter()
            .filter_map(|(inode, _, r)| r.as_ref().ok().map(|s| (*inode, s.as_slice())))
            .collect();
        let wanted: HashSet<u64> = sockets_of
            .iter()
            .flat_map(|(_, s)| s.iter())
            .filter(|s| s.state == TcpState::CloseWait && s.inode != 0)
            .map(|s| s.inode)
            .collect();
        if wanted != self.owner_inodes {
            self.owners_by_inode = lookup(&wanted);
            self.owner_inodes = wanted;
        }
        for (inode, sockets) in sockets_of {
            let Some(scope) = self.tracked.get_mut(&inode) else {
                continue;
            };
            scope.close_wait_owners =
                close_wait_owners(sockets, &self.owners_by_inode, scope.port_range);
        }
    }

    /// Namespaces with a CLOSE_WAIT port about to be alerted whose owner is not known:
    /// a read of them and a look at the processes would let the alert name it.
    pub fn wanting_owners(&self, now_ns: u64) -> Vec<Namespace> {
        let t = &self.thresholds;
        self.tracked
            .values()
            .filter(|s| s.baselined)
            .filter(|s| {
                s.tally.view(DETECTOR_TOP).close_wait.iter().any(|group| {
                    close_wait_severity(group, now_ns, t).is_some()
                        && !s.close_wait_owners.contains_key(&group.side)
                })
            })
            .map(|s| s.namespace.clone())
            .collect()
    }

    /// One evaluation: expiry, TIME_WAIT against each namespace's sockstat
    /// (`time_wait_of`), and the detectors (SYN floods are judged in tcpmon's own
    /// namespace only: the SYN counters are per namespace and read there).
    pub fn evaluate(
        &mut self,
        now_ns: u64,
        window_secs: f64,
        mut time_wait_of: impl FnMut(&Namespace) -> Option<u64>,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (inode, scope) in self.tracked.iter_mut().filter(|(_, s)| s.baselined) {
            scope.tally.expire(now_ns);
            if let Some(tw) = time_wait_of(&scope.namespace) {
                scope.time_wait_error = Some(scope.tally.reconcile_time_wait(tw));
            }
            let view = scope.tally.view(DETECTOR_TOP);
            let inputs = Inputs {
                now_ns,
                window_secs,
                syn: HashMap::new(),
                syn_counters: Default::default(),
                syn_coverage: SynCoverage::None,
                backlogs: HashMap::new(),
                somaxconn: None,
                port_range: scope.port_range,
                close_wait_owners: std::mem::take(&mut scope.close_wait_owners),
                failures: scope.failures.take_window(),
                // Listener queues are read in tcpmon's namespace only.
                listener_drops: Vec::new(),
            };
            let owner = owner_text(&scope.namespace);
            alerts.extend(
                scope
                    .detector
                    .evaluate(&view, &inputs)
                    .into_iter()
                    .map(|a| a.in_namespace(*inode, &owner)),
            );
            scope.close_wait_owners = inputs.close_wait_owners;
        }
        alerts
    }

    /// The alerts active in every tracked namespace.
    pub fn active_alerts(&self) -> impl Iterator<Item = (&str, String, Severity)> {
        self.tracked.iter().flat_map(|(inode, scope)| {
            scope
                .detector
                .active()
                .map(move |(rule, subject, severity)| {
                    (rule, format!("{subject} in netns {inode}"), severity)
                })
        })
    }

    /// Each tracked namespace, largest first; with `detail` (lists of at most `top`
    /// entries, ages at `now_ns`), what each holds beyond its state counts.
    pub fn tallies(
        &self,
        detail: Option<(usize, u64)>,
        names: &ReasonNames,
    ) -> Vec<NamespaceTally> {
        let mut out: Vec<NamespaceTally> = self
            .tracked
            .values()
            .filter(|s| s.baselined)
            .map(|s| {
                let states = StateCounts(s.tally.state_counts());
                NamespaceTally {
                    detail: detail.map(|(top, now_ns)| Box::new(s.detail(top, now_ns, names))),
                    failures: s.failures.totals(),
                    inode: s.namespace.inode,
                    name: s.namespace.name.clone(),
                    owner: owner_text(&s.namespace),
                    total: states.total(),
                    states,
                    transitions: s.transitions,
                    time_wait_sockstat_error: s.time_wait_error,
                    reconcile_error: s.reconcile_error,
                }
            })
            .collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then(a.inode.cmp(&b.inode)));
        out
    }

    pub fn untracked(&self) -> Untracked {
        Untracked {
            namespaces: self.over_limit.len(),
            transitions: self.untracked_transitions,
        }
    }
}

/// The owner as alerts and tallies show it.
fn owner_text(ns: &Namespace) -> String {
    match &ns.name {
        Some(name) if matches!(ns.owner, crate::model::owner::Owner::Unknown { .. }) => {
            format!(
                "ip netns {}",
                crate::model::printable_clipped(name, crate::model::owner::SHOWN_NAME_MAX)
            )
        }
        _ => ns.owner.to_string(),
    }
}

/// The cleared alerts of a namespace no longer tallied: nothing would clear them later.
fn ended(mut detector: Detector, ns: &Namespace, why: &str) -> Vec<Alert> {
    let owner = owner_text(ns);
    detector
        .end_all(why)
        .into_iter()
        .map(|a| a.in_namespace(ns.inode, &owner))
        .collect()
}

fn event(rule: &'static str, severity: Severity, ns: &Namespace, message: String) -> Alert {
    Alert {
        status: Status::Event,
        severity,
        rule,
        subject: ns.inode.to_string(),
        message,
        netns: Some(ns.inode),
        owner: Some(owner_text(ns)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        host::netns::Access,
        model::{owner::Owner, Endpoints, Family, TcpState::*},
    };

    const NS: u64 = 4_026_532_900;
    const SEC: u64 = 1_000_000_000;

    fn lo() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn namespace() -> Namespace {
        Namespace {
            inode: NS,
            name: Some("blue".into()),
            owner: Owner::Unknown {
                cgroup: "(no process)".into(),
            },
            access: Access::Pids(vec![7]),
        }
    }

    fn transition(ts: u64, old: TcpState, new: TcpState) -> Transition {
        Transition {
            at: Endpoints {
                ts_ns: ts,
                skaddr: 1,
                netns: NS as u32,
                family: Family::Ipv4,
                local_ip: lo(),
                local_port: 8080,
                remote_ip: lo(),
                remote_port: 40000,
            },
            old,
            new,
            task: None,
        }
    }

    #[test]
    fn a_read_is_measured_from_when_it_began() {
        let mut ns = Namespaces::new(8, None, TallyConfig::default(), Thresholds::DEFAULT);
        let events = ns.update(vec![namespace()], |_| None);
        assert_eq!(events[0].owner.as_deref(), Some("ip netns blue"));
        let established = |state| {
            vec![
                Socket::new(state, (lo(), 8080), (lo(), 40000), 11),
                Socket::new(Established, (lo(), 40000), (lo(), 8080), 12),
            ]
        };
        ns.open_window(&[namespace()]);
        ns.reconcile(&[(NS, 5, Ok(established(Established)))], true);
        // A second read opens its window at 10; the peer closes at 15; the read of this
        // namespace begins at 20 and sees it.
        ns.open_window(&[namespace()]);
        let (applied, _) = ns.transition(&transition(15, Established, CloseWait));
        assert!(applied.is_some());
        ns.reconcile(&[(NS, 20, Ok(established(CloseWait)))], false);
        let tally = &ns.tallies(None, &ReasonNames::default())[0];
        assert_eq!(
            (tally.states.get(CloseWait), tally.states.get(Established)),
            (1, 1)
        );
        // What happened before the read began is not a correction.
        assert_eq!(tally.reconcile_error, Some(0));
        assert_eq!(tally.transitions, 1);
    }

    /// A namespace is read through the processes holding it now, not those it was
    /// first found through (they may exit while others hold it).
    #[test]
    fn discovery_refreshes_the_processes_a_namespace_is_read_through() {
        let mut ns = Namespaces::new(8, None, TallyConfig::default(), Thresholds::DEFAULT);
        ns.update(vec![namespace()], |_| None);
        let moved = Namespace {
            access: Access::Pids(vec![42, 43]),
            ..namespace()
        };
        assert!(
            ns.update(vec![moved], |_| None).is_empty(),
            "not new, not gone"
        );
        assert_eq!(ns.all()[0].access, Access::Pids(vec![42, 43]));
    }

    /// Nothing evaluates a namespace once it is dropped, so its alerts end with it.
    #[test]
    fn the_alerts_of_a_namespace_that_goes_end_with_it() {
        let mut ns = Namespaces::new(8, None, TallyConfig::default(), Thresholds::DEFAULT);
        ns.update(vec![namespace()], |_| None);
        ns.open_window(&[namespace()]);
        let leak = vec![
            Socket::new(Listen, (lo(), 8080), (IpAddr::from([0, 0, 0, 0]), 0), 10),
            Socket::new(CloseWait, (lo(), 8080), (lo(), 40000), 11),
        ];
        ns.reconcile(&[(NS, 5, Ok(leak))], true);
        let raised = ns.evaluate(SEC, 1.0, |_| None);
        assert_eq!(
            raised
                .iter()
                .map(|a| (a.status, a.rule, a.subject.as_str()))
                .collect::<Vec<_>>(),
            vec![(Status::Raised, "close_wait", "8080 in netns 4026532900")]
        );
        assert_eq!(ns.active_alerts().count(), 1);
        let events = ns.update(vec![], |_| None);
        let ended: Vec<_> = events
            .iter()
            .map(|a| (a.status, a.rule, a.subject.as_str(), a.netns))
            .collect();
        assert_eq!(
            ended,
            vec![
                (
                    Status::Cleared,
                    "close_wait",
                    "8080 in netns 4026532900",
                    Some(NS)
                ),
                (Status::Event, "netns_gone", "4026532900", Some(NS)),
            ]
        );
        assert!(events[0].message.contains("the network namespace is gone"));
        assert_eq!(ns.active_alerts().count(), 0);
    }

    #[test]
    fn a_read_that_fails_drops_the_namespace_and_says_why() {
        let mut ns = Namespaces::new(8, None, TallyConfig::default(), Thresholds::DEFAULT);
        ns.update(vec![namespace()], |_| None);
        ns.open_window(&[namespace()]);
        let events = ns.reconcile(
            &[(
                NS,
                5,
                Err(Failure {
                    reason: "cannot enter it".into(),
                    gone: false,
                }),
            )],
            true,
        );
        assert_eq!(events[0].rule, "netns_unread");
        assert_eq!(events[0].severity, Severity::Warning);
        assert!(events[0].message.contains("cannot enter it"));
        assert_eq!(ns.tracked_count(), 0);
        assert!(!ns.reading());
        // Not retried at every look: it was said once.
        assert!(ns.update(vec![namespace()], |_| None).is_empty());
        assert!(ns.pending().is_empty());
    }
}
