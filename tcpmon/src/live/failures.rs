//! Why connections fail, tallied: segments retransmitted and resets sent and received,
//! in all, per remote IP and per service port (as `established_by_port` counts them:
//! inbound under the local port, outbound under the remote one). Each table holds its
//! first `cap` keys exactly and the rest together, and says how much went there. Pure.
use std::net::IpAddr;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::host::ReasonNames;
use crate::{
    ebpf::decode::Failure,
    model::{canonical_ip, Direction, PortRange},
};

/// Counts of each kind of failure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    /// Segments sent again, as the kernel's RetransSegs counts them (a retransmitted TSO
    /// packet counts its segments).
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Segments sent by connections that retransmitted, each counted from its previous
    /// retransmit (or from its start, at its first): what the retransmits are a share of.
    /// 0 where the kernel's layout did not let them be read.
    #[serde(default)]
    pub segments_sent: u64,
}

impl FailureCounts {
    pub fn add(&mut self, failure: Failure, count: u64) {
        match failure {
            Failure::Retransmit => self.retransmits += count,
            Failure::ResetSent => self.resets_sent += count,
            Failure::ResetReceived => self.resets_received += count,
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.retransmits += other.retransmits;
        self.resets_sent += other.resets_sent;
        self.resets_received += other.resets_received;
        self.segments_sent += other.segments_sent;
    }

    /// Failures in all (segments sent are not failures).
    pub fn total(&self) -> u64 {
        self.retransmits + self.resets_sent + self.resets_received
    }

    /// Retransmitted segments as a percentage of the segments those connections sent,
    /// when known.
    pub fn retransmit_pct(&self) -> Option<f64> {
        (self.segments_sent > 0)
            .then(|| (self.retransmits as f64 * 100.0 / self.segments_sent as f64).min(100.0))
    }
}

/// One remote IP's failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFailures {
    pub ip: IpAddr,
    #[serde(flatten)]
    pub counts: FailureCounts,
}

/// One service port's failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFailures {
    pub port: u16,
    /// `in`: on this local port; `out`: toward this remote port.
    pub direction: Direction,
    #[serde(flatten)]
    pub counts: FailureCounts,
}

/// Drops or resets for one of the kernel's reasons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The kernel's name, without its prefix (`SKB_DROP_REASON_`, `SK_RST_REASON_`), in
    /// lower case (`reason_N` when this kernel's BTF did not name the value).
    pub reason: String,
    pub count: u64,
}

/// The failures of a tally record: totals since the start and the largest lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailuresRecord {
    #[serde(flatten)]
    pub totals: FailureCounts,
    /// TCP packets dropped by the kernel, in all and per reason (most first).
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub drops_by_reason: Vec<ReasonCount>,
    /// Resets sent per reason, most first (kernels whose reset record has a reason).
    #[serde(default)]
    pub resets_sent_by_reason: Vec<ReasonCount>,
    /// The remote IPs with the most failures, most first.
    pub by_peer: Vec<PeerFailures>,
    /// Every other remote IP's (those beyond the list and those not counted one by one).
    pub peers_other: FailureCounts,
    pub by_port: Vec<PortFailures>,
    pub ports_other: FailureCounts,
}

/// Keys counted one by one up to a bound, the rest together.
#[derive(Clone, Debug)]
struct Bounded<K> {
    exact: FxHashMap<K, FailureCounts>,
    beyond: FailureCounts,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Copy + Ord> Bounded<K> {
    fn new(cap: usize) -> Self {
        Self {
            exact: FxHashMap::default(),
            beyond: FailureCounts::default(),
            cap,
        }
    }

    fn add(&mut self, key: K, failure: Failure, count: u64) {
        self.counts_of(key).add(failure, count);
    }

    fn counts_of(&mut self, key: K) -> &mut FailureCounts {
        if self.exact.len() < self.cap || self.exact.contains_key(&key) {
            self.exact.entry(key).or_default()
        } else {
            &mut self.beyond
        }
    }

    /// The `top` keys with the most, most first (ties by key), and everything else.
    fn top(&self, top: usize) -> (Vec<(K, FailureCounts)>, FailureCounts) {
        let mut all: Vec<(K, FailureCounts)> = self.exact.iter().map(|(k, c)| (*k, *c)).collect();
        all.sort_unstable_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(&b.0)));
        let mut other = self.beyond;
        for (_, c) in all.iter().skip(top) {
            other.merge(c);
        }
        all.truncate(top);
        (all, other)
    }
}

/// Failures since the start, and since the detectors last looked.
#[derive(Clone, Debug)]
pub struct FailureTally {
    totals: FailureCounts,
    /// Drops by the kernel's reason value (at most the enum's few hundred values).
    drops: std::collections::BTreeMap<u16, u64>,
    /// Resets sent by the kernel's reason value.
    reset_reasons: std::collections::BTreeMap<u16, u64>,
    by_peer: Bounded<IpAddr>,
    by_port: Bounded<(Direction, u16)>,
    window_peer: Bounded<IpAddr>,
    window_port: Bounded<(Direction, u16)>,
    /// Each retransmitting connection's segments sent when it last retransmitted, by
    /// socket address, with the window it was seen in (to forget it when idle).
    last_sent: FxHashMap<u64, (u32, u64)>,
    windows: u64,
}

/// Connections whose segments sent are remembered between their retransmits; beyond,
/// a connection's are counted from its start each time (a larger denominator: a
/// smaller share, never a false alarm).
const LAST_SENT_CAP: usize = 65_536;
/// Windows after which a connection that stopped retransmitting is forgotten.
const LAST_SENT_IDLE_WINDOWS: u64 = 60;

/// Failures per remote IP and service port over one evaluation window (what the
/// detectors judge); keys beyond the bound are not judged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailureWindow {
    pub peers: Vec<(IpAddr, FailureCounts)>,
    pub ports: Vec<((Direction, u16), FailureCounts)>,
}

impl FailureTally {
    /// `cap`: keys counted one by one in each table.
    pub fn new(cap: usize) -> Self {
        Self {
            totals: FailureCounts::default(),
            drops: Default::default(),
            reset_reasons: Default::default(),
            by_peer: Bounded::new(cap),
            by_port: Bounded::new(cap),
            window_peer: Bounded::new(cap),
            window_port: Bounded::new(cap),
            last_sent: FxHashMap::default(),
            windows: 0,
        }
    }

    /// What came since the last call, and a new window.
    pub fn take_window(&mut self) -> FailureWindow {
        let cap = self.window_peer.cap;
        let peers = std::mem::replace(&mut self.window_peer, Bounded::new(cap));
        let ports = std::mem::replace(&mut self.window_port, Bounded::new(cap));
        self.windows += 1;
        if self.windows.is_multiple_of(LAST_SENT_IDLE_WINDOWS) {
            let oldest = self.windows - LAST_SENT_IDLE_WINDOWS;
            self.last_sent.retain(|_, (_, seen)| *seen >= oldest);
        }
        FailureWindow {
            peers: peers.exact.into_iter().collect(),
            ports: ports.exact.into_iter().collect(),
        }
    }

    /// `count` failures (segments retransmitted, or one reset) on the connection from
    /// `local` to `remote`.
    pub fn add(
        &mut self,
        failure: Failure,
        count: u64,
        local: u16,
        remote: (IpAddr, u16),
        range: PortRange,
    ) {
        let (peer, port) = (
            canonical_ip(remote.0),
            Direction::of(local, remote.1, range),
        );
        self.totals.add(failure, count);
        self.by_peer.add(peer, failure, count);
        self.by_port.add(port, failure, count);
        self.window_peer.add(peer, failure, count);
        self.window_port.add(port, failure, count);
    }

    /// Segments retransmitted on the connection at `skaddr`, which has sent `segs_out` in
    /// all (when the kernel said): its segments sent since its previous retransmit are
    /// added where its retransmits are.
    pub fn add_retransmit(
        &mut self,
        segments: u64,
        sent: Option<(u64, u32)>,
        local: u16,
        remote: (IpAddr, u16),
        range: PortRange,
    ) {
        self.add(Failure::Retransmit, segments, local, remote, range);
        let Some((skaddr, segs_out)) = sent else {
            return;
        };
        let since = match self.last_sent.get(&skaddr) {
            // Fewer than before: the address holds a new connection.
            Some(&(last, _)) if segs_out >= last => segs_out - last,
            _ => segs_out,
        };
        if self.last_sent.len() < LAST_SENT_CAP || self.last_sent.contains_key(&skaddr) {
            self.last_sent.insert(skaddr, (segs_out, self.windows));
        }
        let since = u64::from(since);
        let (peer, port) = (
            canonical_ip(remote.0),
            Direction::of(local, remote.1, range),
        );
        self.totals.segments_sent += since;
        self.by_peer.counts_of(peer).segments_sent += since;
        self.by_port.counts_of(port).segments_sent += since;
        self.window_peer.counts_of(peer).segments_sent += since;
        self.window_port.counts_of(port).segments_sent += since;
    }

    /// The connection at `skaddr` closed: a later one there starts afresh.
    pub fn forget(&mut self, skaddr: u64) {
        if !self.last_sent.is_empty() {
            self.last_sent.remove(&skaddr);
        }
    }

    /// A reset sent for `reason` (counted by [`Self::add`] too).
    pub fn add_reset_reason(&mut self, reason: u16) {
        *self.reset_reasons.entry(reason).or_default() += 1;
    }

    /// A TCP packet the kernel dropped for `reason`.
    pub fn add_drop(&mut self, reason: u16) {
        *self.drops.entry(reason).or_default() += 1;
    }

    pub fn totals(&self) -> FailureCounts {
        self.totals
    }

    /// What a tally record carries: the totals and lists of at most `top` entries, drop
    /// and reset reasons named as this kernel names them.
    pub fn record(&self, top: usize, names: &ReasonNames) -> FailuresRecord {
        let (peers, peers_other) = self.by_peer.top(top);
        let (ports, ports_other) = self.by_port.top(top);
        FailuresRecord {
            totals: self.totals,
            drops: self.drops.values().sum(),
            drops_by_reason: named(&self.drops, &names.drops),
            resets_sent_by_reason: named(&self.reset_reasons, &names.resets),
            by_peer: peers
                .into_iter()
                .map(|(ip, counts)| PeerFailures { ip, counts })
                .collect(),
            peers_other,
            by_port: ports
                .into_iter()
                .map(|((direction, port), counts)| PortFailures {
                    port,
                    direction,
                    counts,
                })
                .collect(),
            ports_other,
        }
    }

    /// Entries held (for the bounded-memory promise).
    pub fn entries(&self) -> usize {
        self.by_peer.exact.len() + self.by_port.exact.len() + self.last_sent.len()
    }
}

/// Counts by reason value, named by `names`, most first.
fn named(
    counts: &std::collections::BTreeMap<u16, u64>,
    names: &[(u32, String)],
) -> Vec<ReasonCount> {
    let mut out: Vec<ReasonCount> = counts
        .iter()
        .map(|(value, count)| ReasonCount {
            reason: names
                .iter()
                .find(|(v, _)| *v == u32::from(*value))
                .map_or_else(|| format!("reason_{value}"), |(_, name)| name.clone()),
            count: *count,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn failures_are_counted_per_peer_and_service_port() {
        let range = PortRange::LINUX_DEFAULT;
        let mut t = FailureTally::new(100);
        // Retransmits from a server on 8080 to a client's ephemeral port.
        for _ in 0..5 {
            t.add(Failure::Retransmit, 1, 8080, (ip(1), 50000), range);
        }
        // Resets to connects to a closed port 9 (sent), and a client reset by 10.0.0.2:443.
        for _ in 0..3 {
            t.add(Failure::ResetSent, 1, 9, (ip(2), 40000 + 1), range);
        }
        t.add(Failure::ResetReceived, 1, 40001, (ip(2), 443), range);
        // A v4-mapped address is its IPv4 peer.
        t.add(
            Failure::Retransmit,
            1,
            8080,
            ("::ffff:10.0.0.1".parse().unwrap(), 50001),
            range,
        );
        let r = t.record(10, &ReasonNames::default());
        assert_eq!(
            r.totals,
            FailureCounts {
                retransmits: 6,
                resets_sent: 3,
                resets_received: 1,
                segments_sent: 0,
            }
        );
        assert_eq!(r.by_peer[0].ip, ip(1));
        assert_eq!(r.by_peer[0].counts.retransmits, 6);
        assert_eq!(r.by_peer[1].counts.resets_sent, 3);
        assert_eq!(r.by_peer[1].counts.resets_received, 1);
        let port = |port: u16, direction| {
            r.by_port
                .iter()
                .find(|p| p.port == port && p.direction == direction)
                .map(|p| p.counts)
        };
        assert_eq!(port(8080, Direction::In).map(|c| c.retransmits), Some(6));
        assert_eq!(port(9, Direction::In).map(|c| c.resets_sent), Some(3));
        assert_eq!(
            port(443, Direction::Out).map(|c| c.resets_received),
            Some(1)
        );
        assert_eq!(r.peers_other, FailureCounts::default());
    }

    #[test]
    fn segments_sent_are_counted_between_a_connections_retransmits() {
        let range = PortRange::LINUX_DEFAULT;
        let mut t = FailureTally::new(100);
        let server = (ip(9), 443);
        let (a, b) = (0xa000, 0xb000);
        // A's first retransmit: everything it sent since it opened.
        t.add_retransmit(2, Some((a, 100)), 50000, server, range);
        // Its next: only what it sent since.
        t.add_retransmit(1, Some((a, 150)), 50000, server, range);
        t.add_retransmit(1, Some((b, 40)), 50001, server, range);
        let w = t.take_window();
        assert_eq!(w.peers[0].1.retransmits, 4);
        assert_eq!(w.peers[0].1.segments_sent, 190);
        assert_eq!(w.peers[0].1.retransmit_pct(), Some(4.0 * 100.0 / 190.0));
        // A closed; a new connection at its address counts from its start.
        t.forget(a);
        t.add_retransmit(1, Some((a, 30)), 50002, server, range);
        // B's address holds a new connection too (fewer segments than before), unseen
        // close or not.
        t.add_retransmit(1, Some((b, 10)), 50003, server, range);
        // A kernel that does not say: the retransmit counts, no segments.
        t.add_retransmit(3, None, 50004, server, range);
        let w = t.take_window();
        assert_eq!(
            (w.peers[0].1.retransmits, w.peers[0].1.segments_sent),
            (5, 40)
        );
        let r = t.record(10, &ReasonNames::default());
        assert_eq!((r.totals.retransmits, r.totals.segments_sent), (9, 230));
        assert_eq!(r.by_port[0].port, 443);
        assert_eq!(r.by_port[0].counts.segments_sent, 230);
        assert_eq!(FailureCounts::default().retransmit_pct(), None);
    }

    #[test]
    fn connections_that_stop_retransmitting_are_forgotten() {
        let range = PortRange::LINUX_DEFAULT;
        let mut t = FailureTally::new(10);
        for sk in 0..100u64 {
            t.add_retransmit(1, Some((sk, 10)), 50000, (ip(1), 443), range);
        }
        assert_eq!(t.entries(), 2 + 100);
        for _ in 0..LAST_SENT_IDLE_WINDOWS {
            t.take_window();
        }
        assert_eq!(
            t.entries(),
            2 + 100,
            "idle for fewer windows than the limit"
        );
        t.add_retransmit(1, Some((7, 20)), 50000, (ip(1), 443), range);
        for _ in 0..LAST_SENT_IDLE_WINDOWS {
            t.take_window();
        }
        assert_eq!(t.entries(), 2 + 1, "only the one seen since is kept");
    }

    #[test]
    fn drops_are_named_as_this_kernel_names_their_reasons() {
        let mut t = FailureTally::new(4);
        for _ in 0..3 {
            t.add_drop(12);
        }
        t.add_drop(200);
        t.add_reset_reason(2);
        let names = ReasonNames {
            drops: vec![(12, "netfilter_drop".into()), (2, "not_specified".into())],
            resets: vec![(2, "no_socket".into())],
        };
        let r = t.record(5, &names);
        assert_eq!(
            r.resets_sent_by_reason,
            vec![ReasonCount {
                reason: "no_socket".into(),
                count: 1
            }]
        );
        assert_eq!(r.drops, 4);
        assert_eq!(
            r.drops_by_reason,
            vec![
                ReasonCount {
                    reason: "netfilter_drop".into(),
                    count: 3
                },
                ReasonCount {
                    reason: "reason_200".into(),
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn tables_are_bounded_and_say_what_went_beyond() {
        let range = PortRange::LINUX_DEFAULT;
        let mut t = FailureTally::new(4);
        for last in 0..10u8 {
            t.add(
                Failure::Retransmit,
                u64::from(last) + 1,
                80,
                (ip(last), 50000),
                range,
            );
        }
        assert_eq!(t.entries(), 4 + 1);
        let r = t.record(2, &ReasonNames::default());
        // The first four peers are exact; the two largest of them are listed.
        assert_eq!(
            r.by_peer
                .iter()
                .map(|p| (p.ip, p.counts.retransmits))
                .collect::<Vec<_>>(),
            vec![(ip(3), 4), (ip(2), 3)]
        );
        let listed: u64 = r.by_peer.iter().map(|p| p.counts.retransmits).sum();
        assert_eq!(listed + r.peers_other.retransmits, r.totals.retransmits);
        assert_eq!(r.totals.retransmits, (1..=10).sum::<u64>());
    }
}
