//! Alert and audit thresholds: one set of defaults shared by `audit`, `report`, `watch`
//! and `serve`, and the checks that keep a threshold from silently disabling its rule.
use serde::Serialize;

/// Thresholds of every rule. Snapshot audits and live alerts read the same values; a
/// field only one of them uses says so.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// TIME_WAIT sockets above which to warn.
    pub time_wait_warn: u64,
    /// TIME_WAIT sockets above which it is critical.
    pub time_wait_crit: u64,
    /// CLOSE_WAIT sockets on one local port above which it is critical (any CLOSE_WAIT
    /// is a warning in an audit; live, one older than `close_wait_age_secs` is).
    pub close_wait_crit: u64,
    /// Live: a CLOSE_WAIT socket older than this (seconds) raises a warning.
    pub close_wait_age_secs: f64,
    /// Half-open requests of one listener, % of its backlog, to warn.
    pub syn_backlog_warn_pct: f64,
    /// ... and to call it critical.
    pub syn_backlog_crit_pct: f64,
    /// Live: SYN-ACK retransmits per second on one listener that mean a SYN flood.
    pub synack_retransmit_rate: f64,
    /// Live: SYNs per second on one listener, with under half completing, that mean a
    /// SYN flood.
    pub syn_rate: f64,
    /// Live, on kernels that do not say a connection's segments sent: segments
    /// retransmitted per second toward one remote IP above which to warn (critical at ten
    /// times it). Elsewhere the share is judged, as `retrans_warn_pct`.
    pub retransmit_rate: f64,
    /// Live: resets per second sent on one local port (connections refused), or
    /// exchanged with one remote IP, above which to warn (critical at ten times it).
    pub reset_rate: f64,
    /// Connections from one remote IP above which to warn.
    pub per_ip_warn: u64,
    /// ... above which it is critical.
    pub per_ip_crit: u64,
    /// Local ports tied up toward one remote ip:port, % of the ephemeral range, to warn.
    pub port_exhaustion_warn_pct: f64,
    /// ... and to call it critical.
    pub port_exhaustion_crit_pct: f64,
    /// Segments retransmitted toward one remote IP, % of those sent, to warn: in a
    /// snapshot from tcp_info, live over a window of the connections that retransmitted
    /// (with at least 10 retransmitted) ...
    pub retrans_warn_pct: f64,
    /// ... and to call it critical.
    pub retrans_crit_pct: f64,
    /// Snapshot: segments sent toward a remote IP below which its ratio is not judged
    /// (a handful of segments says nothing).
    pub retrans_min_segs: u64,
    /// Snapshot: bytes queued toward one remote IP that stopped reading above which it is
    /// critical (any is a warning).
    pub stuck_crit_bytes: u64,
}

impl Thresholds {
    /// The defaults, documented in the README and shown by `--help`.
    pub const DEFAULT: Self = Self {
        time_wait_warn: 1000,
        time_wait_crit: 5000,
        close_wait_crit: 100,
        close_wait_age_secs: 60.0,
        syn_backlog_warn_pct: 50.0,
        syn_backlog_crit_pct: 90.0,
        synack_retransmit_rate: 100.0,
        syn_rate: 1000.0,
        retransmit_rate: 100.0,
        reset_rate: 50.0,
        per_ip_warn: 200,
        per_ip_crit: 1000,
        port_exhaustion_warn_pct: 50.0,
        port_exhaustion_crit_pct: 80.0,
        retrans_warn_pct: 2.0,
        retrans_crit_pct: 10.0,
        retrans_min_segs: 1000,
        stuck_crit_bytes: 16 << 20,
    };

    /// The longest CLOSE_WAIT age accepted: ten years, far inside what a `Duration` or a
    /// nanosecond clock can hold.
    pub const MAX_AGE_SECS: f64 = 10.0 * 365.0 * 86_400.0;

    /// Rejects values that would silently disable a rule or make it fire on anything:
    /// NaN, infinities, negative rates, percentages outside 0-100, a warning level above
    /// its critical level.
    pub fn validate(&self) -> Result<(), InvalidThresholds> {
        let pct = |name: &'static str, value: f64| {
            if value.is_finite() && (0.0..=100.0).contains(&value) {
                Ok(())
            } else {
                Err(InvalidThresholds::Percent { name, value })
            }
        };
        let rate = |name: &'static str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(InvalidThresholds::Rate { name, value })
            }
        };
        pct("syn-backlog-warn", self.syn_backlog_warn_pct)?;
        pct("syn-backlog-crit", self.syn_backlog_crit_pct)?;
        pct("port-exhaustion-warn", self.port_exhaustion_warn_pct)?;
        pct("port-exhaustion-crit", self.port_exhaustion_crit_pct)?;
        pct("retrans-warn", self.retrans_warn_pct)?;
        pct("retrans-crit", self.retrans_crit_pct)?;
        rate("synack-retransmit-rate", self.synack_retransmit_rate)?;
        rate("syn-rate", self.syn_rate)?;
        rate("retransmit-rate", self.retransmit_rate)?;
        rate("reset-rate", self.reset_rate)?;
        if !(self.close_wait_age_secs.is_finite()
            && self.close_wait_age_secs > 0.0
            && self.close_wait_age_secs <= Self::MAX_AGE_SECS)
        {
            return Err(InvalidThresholds::Age(self.close_wait_age_secs));
        }
        let ordered = |rule: &'static str, warn: f64, crit: f64| {
            if warn <= crit {
                Ok(())
            } else {
                Err(InvalidThresholds::Inverted { rule, warn, crit })
            }
        };
        ordered(
            "time-wait",
            self.time_wait_warn as f64,
            self.time_wait_crit as f64,
        )?;
        ordered(
            "syn-backlog",
            self.syn_backlog_warn_pct,
            self.syn_backlog_crit_pct,
        )?;
        ordered("per-ip", self.per_ip_warn as f64, self.per_ip_crit as f64)?;
        ordered("retrans", self.retrans_warn_pct, self.retrans_crit_pct)?;
        ordered(
            "port-exhaustion",
            self.port_exhaustion_warn_pct,
            self.port_exhaustion_crit_pct,
        )
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a set of thresholds was refused (each names the flag to fix).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidThresholds {
    #[error("--{name} {value} is not a percentage from 0 to 100")]
    Percent { name: &'static str, value: f64 },
    #[error("--{name} {value} is not a rate (a finite number, 0 or more)")]
    Rate { name: &'static str, value: f64 },
    #[error("--close-wait-age {0}s is not an age between 0 and ten years")]
    Age(f64),
    #[error("--{rule}-warn {warn} is above --{rule}-crit {crit}: the warning would never be seen")]
    Inverted {
        rule: &'static str,
        warn: f64,
        crit: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Thresholds::default().validate(), Ok(()));
    }

    #[test]
    fn values_that_would_disable_a_rule_are_refused() {
        let with = |f: fn(&mut Thresholds)| {
            let mut t = Thresholds::DEFAULT;
            f(&mut t);
            t.validate().unwrap_err().to_string()
        };
        assert!(with(|t| t.syn_backlog_warn_pct = f64::NAN).contains("--syn-backlog-warn NaN"));
        assert!(with(|t| t.port_exhaustion_crit_pct = 150.0).contains("0 to 100"));
        assert!(with(|t| t.syn_rate = f64::INFINITY).contains("--syn-rate"));
        assert!(with(|t| t.synack_retransmit_rate = -1.0).contains("rate"));
        assert!(with(|t| t.close_wait_age_secs = 1e300).contains("--close-wait-age"));
        assert!(with(|t| t.close_wait_age_secs = 0.0).contains("--close-wait-age"));
        let inverted = with(|t| t.time_wait_warn = 6000);
        assert!(
            inverted.contains("--time-wait-warn 6000 is above --time-wait-crit 5000"),
            "{inverted}"
        );
        assert!(with(|t| t.syn_backlog_warn_pct = 95.0).contains("--syn-backlog-warn"));
        assert!(with(|t| t.per_ip_crit = 10).contains("--per-ip-warn"));
    }

    #[test]
    fn equal_levels_are_allowed() {
        let t = Thresholds {
            time_wait_warn: 10,
            time_wait_crit: 10,
            ..Thresholds::DEFAULT
        };
        assert_eq!(t.validate(), Ok(()));
    }
}
