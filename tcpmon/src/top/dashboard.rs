//! What the engine has said, kept for drawing: the latest tally, a bounded history of
//! state counts per namespace (the sparklines and the change column), each listener's
//! SYN rate, and the alerts with when they rose and ended. Fed by records only, so it
//! is as deterministic as the engine that feeds it.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use crate::{
    live::{
        record::{AlertRecord, ModeRecord, TallyRecord},
        rules::Status,
    },
    model::{Severity, StateCounts},
};

/// Samples of state counts kept per namespace: five minutes at the default interval.
pub const HISTORY_SAMPLES: usize = 300;
/// Namespaces with a history at most (the largest; the others start one when they
/// grow into the set).
pub const MAX_HISTORIES: usize = 64;
/// Ended alerts and one-off events shown, at most, and for how long.
pub const RECENT_ALERTS: usize = 32;
pub const RECENT_FOR: Duration = Duration::from_secs(600);

/// Which namespace a figure is about: `None` is tcpmon's own.
pub type Scope = Option<u64>;

/// An alert as the screen lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEntry {
    pub rule: &'static str,
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    pub netns: Option<u64>,
    /// When it rose (or, for a one-off event, happened).
    pub since: SystemTime,
    /// When it cleared; `None` while active.
    pub ended: Option<SystemTime>,
    /// A one-off event (a new listener), not an alert that clears.
    pub event: bool,
}

/// Everything the screen draws from, as the engine last said it.
#[derive(Clone, Debug, Default)]
pub struct Dashboard {
    pub mode: Option<ModeRecord>,
    pub latest: Option<TallyRecord>,
    history: HashMap<Scope, VecDeque<StateCounts>>,
    /// SYNs per second on each listener over the last interval.
    syn_rates: HashMap<String, f64>,
    previous_syns: HashMap<String, u64>,
    previous_time: Option<SystemTime>,
    /// Active alerts, oldest first.
    active: Vec<AlertEntry>,
    /// Ended alerts and events, newest first.
    recent: VecDeque<AlertEntry>,
    /// tcpmon's own CPU use, in cores (fed by the caller, which can measure it).
    pub cpu: Option<f64>,
    /// Counts the records taken in: a screen redraws when it moves.
    pub generation: u64,
}

impl Dashboard {
    pub fn on_mode(&mut self, record: &ModeRecord) {
        self.mode = Some(record.clone());
    }

    pub fn on_alert(&mut self, record: &AlertRecord<'_>) {
        self.generation += 1;
        let alert = record.alert;
        let at = record.time.0;
        let same = |e: &AlertEntry| e.rule == alert.rule && e.subject == alert.subject;
        let entry = AlertEntry {
            rule: alert.rule,
            subject: alert.subject.clone(),
            severity: alert.severity,
            message: alert.message.clone(),
            netns: alert.netns,
            since: at,
            ended: None,
            event: false,
        };
        match alert.status {
            Status::Raised => {
                self.active.retain(|e| !same(e));
                self.active.push(entry);
            }
            Status::Changed => match self.active.iter_mut().find(|e| same(e)) {
                Some(e) => {
                    e.severity = alert.severity;
                    e.message = alert.message.clone();
                }
                None => self.active.push(entry),
            },
            Status::Cleared => {
                let since = self.active.iter().find(|e| same(e)).map(|e| e.since);
                self.active.retain(|e| !same(e));
                self.remember(AlertEntry {
                    since: since.unwrap_or(at),
                    ended: Some(at),
                    ..entry
                });
            }
            Status::Event => self.remember(AlertEntry {
                ended: Some(at),
                event: true,
                ..entry
            }),
        }
    }

    fn remember(&mut self, entry: AlertEntry) {
        self.recent.push_front(entry);
        self.recent.truncate(RECENT_ALERTS);
    }

    pub fn on_tally(&mut self, record: TallyRecord) {
        self.generation += 1;
        let now = record.time.0;
        let mut scopes: Vec<(Scope, StateCounts)> = vec![(None, record.states)];
        if let Some(namespaces) = &record.namespaces {
            scopes.extend(
                namespaces
                    .iter()
                    .take(MAX_HISTORIES - 1)
                    .map(|n| (Some(n.inode), n.states)),
            );
        }
        self.history
            .retain(|scope, _| scopes.iter().any(|(s, _)| s == scope));
        for (scope, states) in scopes {
            let samples = self.history.entry(scope).or_default();
            if samples.len() == HISTORY_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(states);
        }
        let elapsed = self
            .previous_time
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs_f64())
            .filter(|s| *s > 0.0);
        self.syn_rates = record
            .listeners
            .iter()
            .filter_map(|l| {
                let before = self.previous_syns.get(&l.listener)?;
                let rate = l.syn.syns.saturating_sub(*before) as f64 / elapsed?;
                Some((l.listener.clone(), rate))
            })
            .collect();
        self.previous_syns = record
            .listeners
            .iter()
            .map(|l| (l.listener.clone(), l.syn.syns))
            .collect();
        self.previous_time = Some(now);
        self.recent.retain(|e| {
            e.ended
                .and_then(|t| now.duration_since(t).ok())
                .is_none_or(|age| age <= RECENT_FOR)
        });
        self.latest = Some(record);
    }

    /// When the engine last said anything: the clock ages are measured against.
    pub fn now(&self) -> Option<SystemTime> {
        self.latest.as_ref().map(|t| t.time.0)
    }

    /// The state counts of `scope` over time, oldest first.
    pub fn history(&self, scope: Scope) -> Option<&VecDeque<StateCounts>> {
        self.history.get(&scope)
    }

    /// Each state's change over the last interval in `scope` (none before two samples).
    pub fn change(&self, scope: Scope) -> Option<[i64; 12]> {
        let samples = self.history.get(&scope)?;
        let n = samples.len();
        (n >= 2).then(|| {
            let (a, b) = (&samples[n - 2], &samples[n - 1]);
            std::array::from_fn(|i| b.0[i] as i64 - a.0[i] as i64)
        })
    }

    pub fn syn_rate(&self, listener: &str) -> Option<f64> {
        self.syn_rates.get(listener).copied()
    }

    /// Active alerts, newest first.
    pub fn active_alerts(&self) -> impl Iterator<Item = &AlertEntry> {
        self.active.iter().rev()
    }

    /// Ended alerts and events of the last minutes, newest first.
    pub fn recent_alerts(&self) -> impl Iterator<Item = &AlertEntry> {
        self.recent.iter()
    }
}
