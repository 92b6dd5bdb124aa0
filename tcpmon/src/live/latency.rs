//! How long clients wait for connections, from transitions the engine already sees: a
//! connect's SYN_SENT -> ESTABLISHED per remote ip:port, as histograms (the destinations
//! counted one by one up to a bound, the rest together). A server's SYN_RECV ->
//! ESTABLISHED is not timed: the kernel makes the full socket only when the handshake's
//! last ACK arrives (until then it is a request socket, which no state event shows), so
//! that interval is always about zero. Pure.
use std::net::{IpAddr, SocketAddr};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::model::{canonical_ip, TcpState, Transition};

/// Upper bounds of the buckets, in seconds (a last bucket, +Inf, takes the rest): from
/// loopback (under 100 µs) to SYN retransmits (1 s, 3 s...).
pub const BOUNDS_SECS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Observations per bucket (not cumulative; the last is above every bound), their sum
/// and count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum_secs: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BOUNDS_SECS.len() + 1],
            sum_secs: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        let bucket = BOUNDS_SECS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BOUNDS_SECS.len());
        if let Some(n) = self.buckets.get_mut(bucket) {
            *n += 1;
        }
        self.sum_secs += secs;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_secs += other.sum_secs;
        self.count += other.count;
    }
}

/// Connect times toward one destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationLatency {
    /// ip:port.
    pub destination: String,
    #[serde(flatten)]
    pub histogram: Histogram,
}

/// What a tally record says of connect times: the destinations with the most connects
/// (`--top`), and the rest together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectLatency {
    pub by_destination: Vec<DestinationLatency>,
    pub other: Histogram,
    /// Connects whose start was not kept (more were pending than the bound): not timed.
    pub untimed: u64,
}

/// Pending connects and the histograms.
#[derive(Clone, Debug)]
pub struct Connects {
    /// Socket -> when it entered SYN_SENT.
    pending: FxHashMap<u64, u64>,
    by_destination: FxHashMap<SocketAddr, Histogram>,
    beyond: Histogram,
    cap: usize,
    untimed: u64,
}

impl Connects {
    /// `cap`: pending connects kept, and destinations counted one by one.
    pub fn new(cap: usize) -> Self {
        Self {
            pending: FxHashMap::default(),
            by_destination: FxHashMap::default(),
            beyond: Histogram::default(),
            cap,
            untimed: 0,
        }
    }

    /// Notes `t`: a connect starting, ending, or its socket going away.
    #[inline]
    pub fn on_transition(&mut self, t: &Transition) {
        use TcpState::*;
        match (t.old, t.new) {
            (Close, SynSent) => {
                if self.pending.len() < self.cap {
                    self.pending.insert(t.at.skaddr, t.at.ts_ns);
                } else {
                    self.untimed += 1;
                }
            }
            (SynSent, Established) => {
                if let Some(started) = self.pending.remove(&t.at.skaddr) {
                    let secs = t.at.ts_ns.saturating_sub(started) as f64 / 1e9;
                    let destination =
                        SocketAddr::new(canonical_ip(t.at.remote_ip), t.at.remote_port);
                    self.histogram_of(destination).observe(secs);
                }
            }
            (SynSent, _) => {
                self.pending.remove(&t.at.skaddr);
            }
            _ => {}
        }
    }

    fn histogram_of(&mut self, destination: SocketAddr) -> &mut Histogram {
        if !self.by_destination.contains_key(&destination) && self.by_destination.len() >= self.cap
        {
            return &mut self.beyond;
        }
        self.by_destination.entry(destination).or_default()
    }

    /// The `top` destinations with the most connects, most first (ties by address), and
    /// the rest merged.
    pub fn record(&self, top: usize) -> ConnectLatency {
        let mut all: Vec<(&SocketAddr, &Histogram)> = self.by_destination.iter().collect();
        all.sort_unstable_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let mut other = self.beyond.clone();
        for (_, h) in all.iter().skip(top) {
            other.merge(h);
        }
        ConnectLatency {
            by_destination: all
                .into_iter()
                .take(top)
                .map(|(destination, histogram)| DestinationLatency {
                    destination: destination.to_string(),
                    histogram: histogram.clone(),
                })
                .collect(),
            other,
            untimed: self.untimed,
        }
    }

    /// Entries held (for the bounded-memory promise).
    pub fn entries(&self) -> usize {
        self.pending.len() + self.by_destination.len()
    }
}

/// The address a connect goes to, as a record names it.
pub fn destination(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(canonical_ip(ip), port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoints, Family};

    fn t(sk: u64, ts_ns: u64, remote_port: u16, old: TcpState, new: TcpState) -> Transition {
        Transition {
            at: Endpoints {
                ts_ns,
                skaddr: sk,
                netns: 1,
                family: Family::Ipv4,
                local_ip: IpAddr::from([10, 0, 0, 5]),
                local_port: 40000,
                remote_ip: IpAddr::from([10, 0, 0, 9]),
                remote_port,
            },
            old,
            new,
            task: None,
        }
    }

    #[test]
    fn connects_are_timed_per_destination_into_buckets() {
        use TcpState::*;
        let mut c = Connects::new(100);
        let ms = 1_000_000;
        // 0.3 ms, 30 ms and a refused one to :5432; 1.2 s (a SYN retransmit) to :443.
        for (sk, port, took) in [
            (1, 5432, ms * 3 / 10),
            (2, 5432, 30 * ms),
            (4, 443, 1200 * ms),
        ] {
            c.on_transition(&t(sk, 0, port, Close, SynSent));
            c.on_transition(&t(sk, took, port, SynSent, Established));
        }
        c.on_transition(&t(3, 0, 5432, Close, SynSent));
        c.on_transition(&t(3, 5 * ms, 5432, SynSent, Close));
        // An ESTABLISHED seen without its start is not timed.
        c.on_transition(&t(9, 0, 5432, SynSent, Established));
        let r = c.record(10);
        let db = &r.by_destination[0];
        assert_eq!(db.destination, "10.0.0.9:5432");
        assert_eq!(db.histogram.count, 2);
        let bucket = |h: &Histogram, secs: f64| {
            h.buckets[BOUNDS_SECS.iter().position(|b| *b == secs).unwrap()]
        };
        assert_eq!(bucket(&db.histogram, 0.0005), 1);
        assert_eq!(bucket(&db.histogram, 0.05), 1);
        assert!((db.histogram.sum_secs - 0.0303).abs() < 1e-9);
        let web = &r.by_destination[1];
        assert_eq!(
            (web.destination.as_str(), bucket(&web.histogram, 2.5)),
            ("10.0.0.9:443", 1)
        );
        assert_eq!(c.entries(), 2, "nothing pending, two destinations");
    }

    #[test]
    fn bounds_hold_and_what_is_beyond_is_counted() {
        use TcpState::*;
        let mut c = Connects::new(2);
        for sk in 0..5u64 {
            c.on_transition(&t(sk, 0, 1000 + sk as u16, Close, SynSent));
        }
        // Two pending kept, three not timed.
        assert_eq!(c.record(10).untimed, 3);
        for sk in 0..2u64 {
            c.on_transition(&t(sk, 10, 1000 + sk as u16, SynSent, Established));
        }
        for sk in 10..14u64 {
            c.on_transition(&t(sk, 0, 2000, Close, SynSent));
            c.on_transition(&t(sk, 20, 2000, SynSent, Established));
        }
        let r = c.record(1);
        assert_eq!(r.by_destination.len(), 1);
        // The third destination went beyond the table; the second beyond the list.
        let total: u64 = r
            .by_destination
            .iter()
            .map(|d| d.histogram.count)
            .sum::<u64>()
            + r.other.count;
        assert_eq!(total, 6);
        assert!(c.entries() <= 4);
    }

    #[test]
    fn a_value_on_a_bound_goes_in_that_bucket_and_above_all_in_the_last() {
        let mut h = Histogram::default();
        h.observe(0.001);
        h.observe(60.0);
        assert_eq!(h.buckets[3], 1);
        assert_eq!(h.buckets[BOUNDS_SECS.len()], 1);
        assert_eq!(h.count, 2);
    }
}
