//! Loss accounting: what user space received, what the kernel says it could not deliver,
//! and the independent check against the kernel's own count of connection openings.
//! Pure: counters in, verdicts out.
use serde::{Deserialize, Serialize};

use crate::{
    ebpf::KernelCounters,
    host::kstats::{self, Opens},
};

/// Counts the user-space side of the pipeline keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub transitions: u64,
    pub synack_retransmits: u64,
    pub syn_requests: u64,
    /// Times the SYN counter was attached (it runs only while SYN trouble is suspected).
    pub syn_counter_attaches: u64,
    /// Transitions from a state to itself (the kernel reports some): not shown or
    /// tallied, counted here.
    #[serde(default)]
    pub self_transitions: u64,
    pub decode_errors: u64,
    /// Transitions from other namespaces (shown with --all-netns, never tallied).
    pub foreign: u64,
    /// Retransmits and resets from other namespaces (with --all-netns): not tallied.
    #[serde(default)]
    pub foreign_failures: u64,
    /// CLOSE -> SYN_SENT and LISTEN -> SYN_RECV seen, to compare with the kernel's
    /// ActiveOpens / PassiveOpens.
    pub active_opens: u64,
    pub passive_opens: u64,
    /// Openings the kernel counted that never arrived as events, beyond what the loss
    /// counters explain: silent loss, estimated (a lower bound).
    pub unaccounted: u64,
    /// Reads of the socket table that failed after the baseline (retried with backoff).
    #[serde(default)]
    pub socket_read_failures: u64,
}

/// Events lost, every cause.
pub fn lost(kernel: &KernelCounters, received: &Received) -> u64 {
    kernel.lost() + received.decode_errors + received.unaccounted
}

/// Loss-triggered reconciliations re-read /proc, which is costly under heavy churn: at
/// most one per this gap.
pub const LOSS_RECONCILE_GAP_NS: u64 = 10_000_000_000;

/// Decides when loss calls for a reconciliation, and keeps the silent-loss check.
#[derive(Clone, Debug, Default)]
pub struct LossTracker {
    /// Loss already answered by a reconciliation.
    reconciled: u64,
    last_reconcile_ns: Option<u64>,
    /// SNMP opens at the baseline, and at the previous evaluation (a second of lag lets
    /// in-flight events arrive before they are missed).
    opens_base: Option<Opens>,
    opens_prev: Option<Opens>,
}

impl LossTracker {
    /// The kernel's opening counters when watching began (read after attaching: events
    /// before the read are counted but not in the delta, so the estimate can only err low).
    pub fn set_base(&mut self, opens: Option<Opens>) {
        self.opens_base = opens;
    }

    /// Updates `received.unaccounted` from the openings the kernel counted by the
    /// previous evaluation, and remembers `now` for the next one.
    pub fn check_opens(&mut self, now: Option<Opens>, received: &mut Received, reported: u64) {
        if let (Some(base), Some(prev)) = (self.opens_base, self.opens_prev) {
            let seen = Opens {
                active: received.active_opens,
                passive: received.passive_opens,
            };
            received.unaccounted = received
                .unaccounted
                .max(kstats::unexplained_opens(base, prev, seen, reported));
        }
        self.opens_prev = now;
    }

    /// Whether loss not yet answered calls for a reconciliation now; if so, it counts as
    /// answered.
    pub fn reconcile_due(&mut self, lost: u64, now_ns: u64) -> bool {
        let gap_over = self
            .last_reconcile_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= LOSS_RECONCILE_GAP_NS);
        if lost > self.reconciled && gap_over {
            self.reconciled = lost;
            self.last_reconcile_ns = Some(now_ns);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn loss_reconciles_at_most_every_ten_seconds() {
        let mut t = LossTracker::default();
        assert!(!t.reconcile_due(0, SEC), "no loss");
        assert!(t.reconcile_due(5, 2 * SEC), "new loss");
        assert!(!t.reconcile_due(5, 20 * SEC), "already answered");
        assert!(!t.reconcile_due(9, 3 * SEC), "too soon after the last");
        assert!(t.reconcile_due(9, 12 * SEC), "gap over");
    }

    #[test]
    fn unaccounted_opens_lag_one_evaluation() {
        let mut t = LossTracker::default();
        let opens = |active, passive| Some(Opens { active, passive });
        t.set_base(opens(100, 100));
        let mut received = Received::default();
        t.check_opens(opens(110, 110), &mut received, 0);
        assert_eq!(received.unaccounted, 0, "no previous evaluation yet");
        received.active_opens = 8;
        received.passive_opens = 10;
        t.check_opens(opens(120, 120), &mut received, 0);
        assert_eq!(
            received.unaccounted, 2,
            "2 of the first 20 openings never arrived"
        );
        // Loss the kernel counters report is not counted a second time.
        t.check_opens(opens(130, 130), &mut received, 20);
        assert_eq!(received.unaccounted, 2);
        // The missing events arrived late: the estimate, a lower bound, stays.
        received.active_opens = 30;
        received.passive_opens = 30;
        t.check_opens(opens(130, 130), &mut received, 0);
        assert_eq!(received.unaccounted, 2, "never lowered");
    }
}
