//! One history sample, taken from a tally record: per-state counts per namespace, per
//! family, the busiest destination's TIME_WAIT, failures over the interval, and the lists
//! (top peers, CLOSE_WAIT leaks, listeners). Pure.
use crate::{
    live::record::TallyRecord,
    model::{Process, TcpState},
};

/// A number kept per sample and namespace, with its column name in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Column name (lower case); states are named as `ss` names them in lower case.
    pub column: &'static str,
    /// What a person is shown (`TIME_WAIT`, `ipv4`, ...).
    pub label: &'static str,
}

const fn m(column: &'static str, label: &'static str) -> Metric {
    Metric { column, label }
}

/// Every metric in the order of the file's columns. States first (new ones go at the
/// end, with a migration).
pub const METRICS: [Metric; 19] = [
    m("established", "ESTABLISHED"),
    m("syn_sent", "SYN_SENT"),
    m("syn_recv", "SYN_RECV"),
    m("fin_wait1", "FIN_WAIT1"),
    m("fin_wait2", "FIN_WAIT2"),
    m("time_wait", "TIME_WAIT"),
    m("close", "CLOSE"),
    m("close_wait", "CLOSE_WAIT"),
    m("last_ack", "LAST_ACK"),
    m("listen", "LISTEN"),
    m("closing", "CLOSING"),
    m("ipv4", "ipv4"),
    m("ipv6", "ipv6"),
    // TIME_WAIT toward the busiest ip:port (what exhausts its ephemeral ports).
    m(
        "tw_busiest_destination",
        "TIME_WAIT to the busiest destination",
    ),
    // Over the interval (not since the start): segments and resets.
    m("retransmits", "retransmitted segments"),
    m("resets_sent", "resets sent"),
    m("resets_received", "resets received"),
    m("drops", "packets dropped"),
    m("transitions", "transitions"),
];

/// The states in [`METRICS`], in order (SYN_RECV includes the request sockets).
pub const STATE_METRICS: [TcpState; 11] = TcpState::REPORTED;

/// A namespace's per-state values, in [`METRICS`]' order (the rest zero).
fn state_values(states: &crate::model::StateCounts) -> [i64; METRICS.len()] {
    let mut values = [0i64; METRICS.len()];
    for (i, state) in STATE_METRICS.iter().enumerate() {
        let mut n = states.get(*state);
        if *state == TcpState::SynRecv {
            n += states.get(TcpState::NewSynRecv);
        }
        values[i] = count(n);
    }
    values
}
/// Index of a metric by its column name or a state's name (`TIME_WAIT`, `time-wait`).
pub fn metric_index(name: &str) -> Option<usize> {
    let wanted = name.to_ascii_lowercase().replace('-', "_");
    METRICS.iter().position(|m| m.column == wanted).or_else(|| {
        let state = TcpState::parse_name(name)?;
        STATE_METRICS.iter().position(|s| *s == state)
    })
}

/// One namespace's metrics in a sample (`netns` 0: tcpmon's own).
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceSample {
    pub netns: u64,
    /// Its owner ("pod web-7d9"), empty for tcpmon's own.
    pub owner: String,
    pub values: [i64; METRICS.len()],
}

/// An entry of a sample's lists: top peers (`peer`: live connections, TIME_WAIT) and
/// CLOSE_WAIT leaks (`close_wait`: sockets, oldest seconds), with owners when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopEntry {
    pub kind: &'static str,
    pub netns: u64,
    pub key: String,
    pub value: i64,
    pub value2: i64,
    pub owners: String,
}

/// A listener as one sample saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSeen {
    pub netns: u64,
    /// `addr:port`.
    pub listener: String,
    /// Owners' names (comma-separated), empty when not known.
    pub process: String,
    pub backlog: Option<u32>,
    pub accept_queue: Option<u32>,
}

/// An alert raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AlertChange {
    pub time: i64,
    pub status: String,
    pub severity: String,
    pub rule: String,
    pub subject: String,
    pub message: String,
    pub netns: u64,
}

/// What one sample writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub time: i64,
    /// Size of the ephemeral port range, for TIME_WAIT headroom.
    pub port_range: i64,
    pub namespaces: Vec<NamespaceSample>,
    pub tops: Vec<TopEntry>,
    pub listeners: Vec<ListenerSeen>,
}

fn names(owners: Option<&Vec<Process>>) -> String {
    let mut names: Vec<&str> = owners
        .map(|o| o.iter().map(|p| p.comm.as_str()).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names.dedup();
    names.join(",")
}

/// Unix seconds of `t` (0 before the epoch): every time in the history.
pub fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Turns tally records into samples: the failure counters, totals since the start in a
/// record, become counts over the interval.
#[derive(Clone, Debug, Default)]
pub struct Sampler {
    port_range: i64,
    last_failures: Option<[u64; 4]>,
    last_transitions: Option<u64>,
}

impl Sampler {
    /// `port_range`: how many ephemeral ports there are (ip_local_port_range's size).
    pub fn new(port_range: u64) -> Self {
        Self {
            port_range: count(port_range),
            ..Self::default()
        }
    }

    pub fn sample(&mut self, t: &TallyRecord) -> Sample {
        let f = &t.failures;
        let failures = [
            f.totals.retransmits,
            f.totals.resets_sent,
            f.totals.resets_received,
            f.drops,
        ];
        let since = |now: u64, before: Option<u64>| count(now.saturating_sub(before.unwrap_or(0)));
        let transitions = t.received.transitions;
        let mut own = state_values(&t.states);
        own[11] = count(t.states_by_family.ipv4.total());
        own[12] = count(t.states_by_family.ipv6.total());
        own[13] = count(
            t.time_wait_by_destination
                .iter()
                .map(|d| d.time_wait)
                .max()
                .unwrap_or(0),
        );
        for (i, n) in failures.iter().enumerate() {
            own[14 + i] = since(*n, self.last_failures.map(|l| l[i]));
        }
        own[18] = since(transitions, self.last_transitions);
        self.last_failures = Some(failures);
        self.last_transitions = Some(transitions);
        let mut namespaces = vec![NamespaceSample {
            netns: 0,
            owner: String::new(),
            values: own,
        }];
        for n in t.namespaces.iter().flatten() {
            namespaces.push(NamespaceSample {
                netns: n.inode,
                owner: n.owner.clone(),
                values: state_values(&n.states),
            });
        }
        let mut tops = Vec::new();
        let time_wait_of = |ip| {
            t.per_ip
                .time_wait_top
                .iter()
                .find(|e| e.ip == ip)
                .map_or(0, |e| count(e.count))
        };
        for e in &t.per_ip.top {
            tops.push(TopEntry {
                kind: "peer",
                netns: 0,
                key: e.ip.to_string(),
                value: count(e.count),
                value2: time_wait_of(e.ip),
                owners: String::new(),
            });
        }
        for c in &t.close_wait {
            tops.push(TopEntry {
                kind: "close_wait",
                netns: 0,
                key: c.side.place(),
                value: count(c.count),
                value2: c.oldest_secs as i64,
                owners: names(c.owners.as_ref()),
            });
        }
        let listeners = t
            .listeners
            .iter()
            .map(|l| ListenerSeen {
                netns: 0,
                listener: l.listener.clone(),
                process: names(l.owners.as_ref()),
                backlog: l.backlog,
                accept_queue: l.accept_queue,
            })
            .collect();
        Sample {
            time: unix_seconds(t.time.0),
            port_range: self.port_range,
            namespaces,
            tops,
            listeners,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_found_by_column_or_state_name() {
        assert_eq!(metric_index("TIME_WAIT"), Some(5));
        assert_eq!(metric_index("time-wait"), Some(5));
        assert_eq!(metric_index("close_wait"), Some(7));
        assert_eq!(metric_index("retransmits"), Some(14));
        assert_eq!(metric_index("nonsense"), None);
        for (i, s) in STATE_METRICS.iter().enumerate() {
            assert_eq!(METRICS[i].label, s.name());
        }
    }
}
