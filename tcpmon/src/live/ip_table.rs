//! The per-IP part of the tally: remote addresses counted exactly up to a bound, the rest
//! together. Pure.
use std::{collections::HashMap, net::IpAddr};

use rustc_hash::FxHashMap;

/// Per-IP counts with a bounded table: the first `max_ips` addresses are exact, the rest
/// share one aggregate. Reconciliation rebuilds the table from the largest counts, so the
/// top talkers are exact again after every snapshot.
#[derive(Clone, Debug, Default)]
pub(super) struct IpTable {
    pub(super) exact: FxHashMap<IpAddr, u64>,
    pub(super) aggregated: u64,
    pub(super) cap: usize,
}

impl IpTable {
    pub(super) fn add(&mut self, ip: IpAddr) {
        if let Some(n) = self.exact.get_mut(&ip) {
            *n += 1;
        } else if self.exact.len() < self.cap {
            self.exact.insert(ip, 1);
        } else {
            self.aggregated += 1;
        }
    }

    /// Returns false when there was nothing to take (an inconsistency worth counting).
    pub(super) fn remove(&mut self, ip: IpAddr) -> bool {
        match self.exact.get_mut(&ip) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.exact.remove(&ip);
                true
            }
            None if self.aggregated > 0 => {
                self.aggregated -= 1;
                true
            }
            None => false,
        }
    }

    pub(super) fn rebuild(&mut self, counts: HashMap<IpAddr, u64>) {
        let mut all: Vec<(IpAddr, u64)> = counts.into_iter().collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        self.aggregated = all.iter().skip(self.cap).map(|(_, n)| n).sum();
        self.exact = all.into_iter().take(self.cap).collect();
    }

    /// The `n` addresses with the most, largest first.
    pub(super) fn top(&self, n: usize) -> Vec<(IpAddr, u64)> {
        let mut all: Vec<(IpAddr, u64)> = self.exact.iter().map(|(ip, n)| (*ip, *n)).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Everything counted, tracked or aggregated.
    pub(super) fn total(&self) -> u64 {
        self.exact.values().sum::<u64>() + self.aggregated
    }
}
