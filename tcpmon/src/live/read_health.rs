//! Socket-table reads after the baseline (periodic, after loss, for owners, each poll)
//! can fail for a while (out of file descriptors, say). That must not end an agent that
//! runs for months: each failure is counted, the next read waits a backoff that doubles
//! up to [`MAX_BACKOFF_NS`], and a streak of failures is one alert, cleared by the next
//! read that works. Pure: the engine says when reads fail and succeed.
use super::rules::{Alert, Status};
use crate::model::Severity;

/// The longest wait between two attempts.
pub const MAX_BACKOFF_NS: u64 = 60_000_000_000;

pub const RULE: &str = "socket_read";
const SUBJECT: &str = "socket table";

#[derive(Debug, Default)]
pub struct ReadHealth {
    failures: u64,
    streak: Option<Streak>,
}

#[derive(Debug)]
struct Streak {
    next_try_ns: u64,
    backoff_ns: u64,
}

impl ReadHealth {
    /// Failed reads since the start.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The alert raised while reads fail: (rule, subject, severity).
    pub fn active(&self) -> Option<(&'static str, String, Severity)> {
        self.streak
            .as_ref()
            .map(|_| (RULE, SUBJECT.to_owned(), Severity::Warning))
    }

    /// Whether a read may be attempted at `now_ns` (not while backing off).
    pub fn may_try(&self, now_ns: u64) -> bool {
        self.streak.as_ref().is_none_or(|s| now_ns >= s.next_try_ns)
    }

    /// A read failed with `error`; the first of a streak raises the alert. `min_backoff_ns`
    /// is the first wait (the engine's interval).
    pub fn failed(&mut self, now_ns: u64, error: &str, min_backoff_ns: u64) -> Option<Alert> {
        self.failures += 1;
        let first = self.streak.is_none();
        let backoff_ns = match &self.streak {
            Some(s) => (s.backoff_ns * 2).min(MAX_BACKOFF_NS),
            None => min_backoff_ns.clamp(1, MAX_BACKOFF_NS),
        };
        self.streak = Some(Streak {
            next_try_ns: now_ns.saturating_add(backoff_ns),
            backoff_ns,
        });
        first.then(|| Alert {
            status: Status::Raised,
            severity: Severity::Warning,
            rule: RULE,
            subject: SUBJECT.into(),
            message: format!(
                "reading the socket table failed: {error}; the tallies go on from events and are corrected by the next read that works (retried with a growing wait, at most {} s)",
                MAX_BACKOFF_NS / 1_000_000_000
            ),
            netns: None,
            owner: None,
        })
    }

    /// A read worked: a streak of failures ends with a cleared alert.
    pub fn succeeded(&mut self) -> Option<Alert> {
        self.streak.take()?;
        Some(Alert {
            status: Status::Cleared,
            severity: Severity::Warning,
            rule: RULE,
            subject: SUBJECT.into(),
            message: format!(
                "cleared: the socket table reads again ({} failed reads since the start)",
                self.failures
            ),
            netns: None,
            owner: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_streak_is_one_alert_with_a_doubling_wait_and_ends_when_a_read_works() {
        let mut h = ReadHealth::default();
        assert!(h.may_try(0));
        let raised = h
            .failed(SEC, "Too many open files (os error 24)", SEC)
            .unwrap();
        assert_eq!((raised.status, raised.rule), (Status::Raised, RULE));
        assert!(raised.message.contains("Too many open files"));
        assert!(!h.may_try(SEC + SEC / 2));
        assert!(h.may_try(2 * SEC));
        // Still failing: no second alert, and a longer wait.
        assert!(h.failed(2 * SEC, "Too many open files", SEC).is_none());
        assert!(!h.may_try(3 * SEC));
        assert!(h.may_try(4 * SEC));
        for _ in 0..10 {
            h.failed(4 * SEC, "again", SEC);
        }
        assert!(h.may_try(4 * SEC + MAX_BACKOFF_NS));
        assert_eq!(h.failures(), 12);
        let cleared = h.succeeded().unwrap();
        assert_eq!(cleared.status, Status::Cleared);
        assert!(h.may_try(4 * SEC));
        assert!(h.succeeded().is_none(), "said once");
    }
}
