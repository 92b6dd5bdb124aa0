//! What `tcpmon trends` shows, read from a history: buckets of the chosen metrics,
//! capacity findings, a comparison with the period before, listeners that came and went,
//! and the alerts of the period. JSON under docs/schema/trends.schema.json.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    sample::{AlertChange, METRICS},
    store::{Bucket, History, HistoryError, ListenerHistory, Tier},
    trends::{self, Comparison, Finding},
};

/// Version of the `trends --json` document.
pub const TRENDS_SCHEMA_VERSION: u32 = 1;

/// What to read.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendsQuery {
    /// Unix seconds now (the tiers' keeps are counted from it).
    pub now: i64,
    pub since: i64,
    pub until: i64,
    /// Bucket width, seconds.
    pub every: i64,
    /// 0: the writer's own namespace.
    pub netns: u64,
    /// Indexes into [`METRICS`].
    pub metrics: Vec<usize>,
    /// Also the period this long before.
    pub compare: Option<i64>,
    pub listeners: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BucketOut {
    pub start: i64,
    pub samples: i64,
    pub min: BTreeMap<String, i64>,
    pub avg: BTreeMap<String, f64>,
    pub max: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareOut {
    pub since: i64,
    pub until: i64,
    pub metrics: Vec<Comparison>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerChange {
    /// `appeared`, `went`, or `appeared and went` within the period.
    pub change: &'static str,
    #[serde(flatten)]
    pub listener: ListenerHistory,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrendsReport {
    pub schema_version: u32,
    pub history: String,
    pub netns: u64,
    pub owner: Option<String>,
    pub since: i64,
    pub until: i64,
    pub every_secs: i64,
    /// Which tier the buckets were read from.
    pub tier: Tier,
    pub metrics: Vec<String>,
    pub buckets: Vec<BucketOut>,
    pub findings: Vec<Finding>,
    pub compare: Option<CompareOut>,
    /// With `--listeners`: those that appeared or went in the period.
    pub listeners: Option<Vec<ListenerChange>>,
    /// Alerts raised and cleared in the period.
    pub alerts: Vec<AlertChange>,
}

const ESTABLISHED: usize = 0;
const TIME_WAIT: usize = 5;
const CLOSE_WAIT: usize = 7;
const TW_BUSIEST: usize = 13;

fn labels(metrics: &[usize]) -> Vec<String> {
    metrics
        .iter()
        .map(|&i| METRICS[i].label.to_owned())
        .collect()
}

fn out(b: &Bucket, labels: &[String]) -> BucketOut {
    BucketOut {
        start: b.start,
        samples: b.samples,
        min: labels.iter().cloned().zip(b.min.iter().copied()).collect(),
        avg: labels.iter().cloned().zip(b.avg.iter().copied()).collect(),
        max: labels.iter().cloned().zip(b.max.iter().copied()).collect(),
    }
}

/// Reads the period and judges it.
pub fn trends(h: &History, q: &TrendsQuery) -> Result<TrendsReport, HistoryError> {
    let period = (q.since, q.until);
    let tier = Tier::for_query(q.since, q.now, q.every);
    let names = labels(&q.metrics);
    let buckets = h.buckets(tier, q.netns, &q.metrics, period, q.every)?;
    // The findings' own metrics, in the same buckets, and by the hour.
    let needed = [ESTABLISHED, TIME_WAIT, CLOSE_WAIT, TW_BUSIEST];
    let base = h.buckets(tier, q.netns, &needed, period, q.every)?;
    let hourly_tier = Tier::for_query(q.since, q.now, 3600);
    let hourly = h.buckets(hourly_tier, q.netns, &[ESTABLISHED], period, 3600)?;
    let mut findings = Vec::new();
    findings.extend(trends::time_wait_headroom(&base, 3, h.port_range(q.until)?));
    let leaks = h.top_peaks("close_wait", q.netns, period, 1)?;
    findings.extend(trends::close_wait_growth(&base, 2, &leaks));
    findings.extend(trends::busiest_hour(&hourly, 0, "ESTABLISHED"));
    findings.extend(trends::per_ip_peaks(
        &h.top_peaks("peer", q.netns, period, 5)?,
    ));
    let compare = match q.compare {
        Some(shift) => {
            let before = (q.since - shift, q.until - shift);
            let tier_before = Tier::for_query(before.0, q.now, q.every);
            let then = h.buckets(tier_before, q.netns, &q.metrics, before, q.every)?;
            let label_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            Some(CompareOut {
                since: before.0,
                until: before.1,
                metrics: trends::compare(&label_refs, &buckets, &then),
            })
        }
        None => None,
    };
    let listeners = if q.listeners {
        Some(listener_changes(h, q)?)
    } else {
        None
    };
    let owner = h
        .namespaces()?
        .into_iter()
        .find(|(n, _)| *n == q.netns)
        .map(|(_, owner)| owner)
        .filter(|o| !o.is_empty());
    Ok(TrendsReport {
        schema_version: TRENDS_SCHEMA_VERSION,
        history: h.path().display().to_string(),
        netns: q.netns,
        owner,
        since: q.since,
        until: q.until,
        every_secs: q.every,
        tier,
        buckets: buckets.iter().map(|b| out(b, &names)).collect(),
        metrics: names,
        findings,
        compare,
        listeners,
        alerts: h
            .alerts(period)?
            .into_iter()
            .filter(|a| a.netns == q.netns || q.netns == 0 && a.netns == 0)
            .collect(),
    })
}

/// Listeners that appeared after recording began, or went before its last sample.
fn listener_changes(h: &History, q: &TrendsQuery) -> Result<Vec<ListenerChange>, HistoryError> {
    let first = [Tier::Hour, Tier::Minute, Tier::Raw]
        .iter()
        .filter_map(|t| h.span(*t, q.netns).ok().flatten().map(|s| s.0))
        .min();
    let last = h.span(Tier::Raw, q.netns)?.map(|s| s.1);
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Vec::new());
    };
    // A listener is seen in every sample: a minute's gap is a change, not a late sample.
    let margin = 60;
    Ok(h.listeners((q.since, q.until))?
        .into_iter()
        .filter(|l| l.netns == q.netns)
        .filter_map(|l| {
            let appeared = l.first_seen > first + margin && l.first_seen >= q.since;
            let went = l.last_seen < last - margin && l.last_seen < q.until;
            let change = match (appeared, went) {
                (true, true) => "appeared and went",
                (true, false) => "appeared",
                (false, true) => "went",
                (false, false) => return None,
            };
            Some(ListenerChange {
                change,
                listener: l,
            })
        })
        .collect())
}
