//! `--all-netns`: a tally, detectors and reconciliation for each other network namespace,
//! up to a bound (the rest are named, and their transitions counted together). Pure
//! bookkeeping: the engine does the reading (through its [`super::host::Host`]) and
//! hands the results in.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{
    record::{NamespaceTally, Untracked},
    rules::{Alert, Detector, Inputs, Status},
    syn::SynCoverage,
    tally::{Applied, Tally, TallyConfig},
};
use crate::{
    host::{netns::Namespace, proc_net::Socket},
    model::{PortRange, Process, Severity, StateCounts, TcpState, Thresholds, Transition},
    snapshot::namespaces::{label, Failure},
};

/// Top entries of each list the detectors look at, per namespace.
const DETECTOR_TOP: usize = 20;

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
    close_wait_owners: HashMap<u16, Vec<Process>>,
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
    untracked_transitions: u64,
    /// A transition came from a namespace discovery has not seen: look again.
    unknown_seen: bool,
    /// While namespaces are being read: the transitions of tracked ones, in order.
    window: Option<Vec<Transition>>,
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
        for ns in found {
            if self.tracked.contains_key(&ns.inode) {
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
                    namespace: ns,
                },
            );
        }
        events
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
            if !self.over_limit.contains(&inode) {
                self.unknown_seen = true;
            }
            return (None, None);
        };
        scope.transitions += 1;
        let applied = match (&mut self.window, scope.baselined) {
            (Some(window), _) => {
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

    /// Starts holding transitions: namespaces are about to be read.
    pub fn open_window(&mut self) {
        self.window = Some(Vec::new());
    }

    /// Rebuilds the tallies of the namespaces read (`reads`: inode, when the read began,
    /// what it found) against the transitions held meanwhile; a namespace found gone is
    /// dropped and reported.
    pub fn reconcile(&mut self, reads: &[NamespaceRead], baseline: bool) -> Vec<Alert> {
        let window = self.window.take().unwrap_or_default();
        let mut events = Vec::new();
        for (inode, at, read) in reads {
            let (inode, at) = (*inode, *at);
            let Some(scope) = self.tracked.get_mut(&inode) else {
                continue;
            };
            match read {
                Ok(sockets) => {
                    let held: Vec<Transition> = window
                        .iter()
                        .filter(|t| u64::from(t.at.netns) == inode)
                        .copied()
                        .collect();
                    let report = scope.tally.reconcile_window(sockets, at, &held);
                    let first = !scope.baselined;
                    scope.baselined = true;
                    scope.reconcile_error =
                        (!(baseline || first)).then_some(report.total_abs_error);
                }
                Err(failure) => {
                    if let Some(scope) = self.tracked.remove(&inode) {
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
            scope.close_wait_owners.clear();
            for s in sockets.iter().filter(|s| s.state == TcpState::CloseWait) {
                if let Some(p) = self.owners_by_inode.get(&s.inode) {
                    let list = scope.close_wait_owners.entry(s.local_port).or_default();
                    if !list.contains(p) {
                        list.push(p.clone());
                    }
                }
            }
        }
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

    /// Each tracked namespace, largest first.
    pub fn tallies(&self) -> Vec<NamespaceTally> {
        let mut out: Vec<NamespaceTally> = self
            .tracked
            .values()
            .filter(|s| s.baselined)
            .map(|s| {
                let states = StateCounts(s.tally.state_counts());
                NamespaceTally {
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
            format!("ip netns {}", crate::model::printable(name))
        }
        _ => ns.owner.to_string(),
    }
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
