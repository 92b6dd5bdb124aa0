//! How the live engine runs: its typed config (built from flags by the binary, or by any
//! library caller), checked once into a [`ValidConfig`], and which transitions become
//! records.
use std::time::Duration;

use crate::model::{EndpointFilter, TcpState, Thresholds, Transition};

/// Which transitions become records (the tallies always see all of them).
#[derive(Clone, Debug, Default)]
pub struct TransitionFilter {
    /// A port, or an address in a network, at either end.
    pub endpoints: EndpointFilter,
    /// Into or out of one of these states (empty: any).
    pub states: Vec<TcpState>,
}

impl TransitionFilter {
    #[inline]
    pub fn matches(&self, t: &Transition) -> bool {
        let at = &t.at;
        self.endpoints
            .matches((at.local_ip, at.local_port), (at.remote_ip, at.remote_port))
            && (self.states.is_empty()
                || self.states.contains(&t.old)
                || self.states.contains(&t.new))
    }
}

/// How the engine runs; built from flags by the binary, or by any library caller.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Evaluate alerts and poll the cheap counters (and, polling, the socket table).
    pub interval: Duration,
    /// Emit a tally record this often.
    pub tally_interval: Duration,
    /// Rebuild the tallies from a snapshot this often (and after loss).
    pub reconcile_interval: Duration,
    pub thresholds: Thresholds,
    /// Remote IPs tallied individually (the rest aggregated, and said to be).
    pub max_ips: usize,
    /// Transitions that become records; `None`: none do (the engine then also skips
    /// tracking each socket's time in its state).
    pub transitions: Option<TransitionFilter>,
    /// The network namespace whose sockets are tallied (`None`: unknown, every event
    /// counts); other namespaces' transitions are still shown when the source sends them.
    pub own_netns: Option<u32>,
    /// Entries of each list in a tally record (remote IPs, ports, destinations).
    pub top: usize,
    /// Tally other network namespaces too, at most this many (`--all-netns`).
    pub max_netns: Option<usize>,
    /// With `max_netns`: each namespace's tally record carries its listeners, remote IPs
    /// and CLOSE_WAIT too (what `top` shows when scoped to a namespace).
    pub namespace_detail: bool,
    /// The listeners expected: a new one no line allows is a warning that says so (and an
    /// allowed one only information).
    pub listeners_allow: Option<crate::model::allowlist::Allowlist>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            tally_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(30),
            thresholds: Thresholds::DEFAULT,
            max_ips: 65_536,
            transitions: Some(TransitionFilter::default()),
            own_netns: None,
            top: 5,
            max_netns: None,
            namespace_detail: false,
            listeners_allow: None,
        }
    }
}

/// Why a config was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} of {value:?} is outside {min:?}..={max:?}")]
    Interval {
        name: &'static str,
        value: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("--max-ips must be at least 1")]
    MaxIps,
    #[error("--top must be from 1 to {max}", max = EngineConfig::MAX_TOP)]
    Top,
    #[error("--max-netns must be at least 1")]
    MaxNetns,
    #[error(transparent)]
    Thresholds(#[from] crate::model::InvalidThresholds),
}

impl EngineConfig {
    /// The shortest interval accepted: below it the timers would spin.
    pub const MIN_INTERVAL: Duration = crate::model::duration::MIN;
    /// The longest: ten years.
    pub const MAX_INTERVAL: Duration = crate::model::duration::MAX;
    /// The most entries a list of a tally record may have: it bounds every label set the
    /// exporter derives from them.
    pub const MAX_TOP: usize = 1000;

    /// The config as the engine takes it, or why it cannot run with it.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        for (name, value) in [
            ("--interval", self.interval),
            ("--tally-interval", self.tally_interval),
            ("--reconcile-interval", self.reconcile_interval),
        ] {
            if !(Self::MIN_INTERVAL..=Self::MAX_INTERVAL).contains(&value) {
                return Err(ConfigError::Interval {
                    name,
                    value,
                    min: Self::MIN_INTERVAL,
                    max: Self::MAX_INTERVAL,
                });
            }
        }
        if self.max_ips == 0 {
            return Err(ConfigError::MaxIps);
        }
        if !(1..=Self::MAX_TOP).contains(&self.top) {
            return Err(ConfigError::Top);
        }
        if self.max_netns == Some(0) {
            return Err(ConfigError::MaxNetns);
        }
        self.thresholds.validate()?;
        Ok(ValidConfig(self))
    }
}

/// A config that passed [`EngineConfig::validate`]: the only kind the engine starts with,
/// so it is checked once, before anything is loaded.
#[derive(Clone, Debug)]
pub struct ValidConfig(EngineConfig);

impl std::ops::Deref for ValidConfig {
    type Target = EngineConfig;

    fn deref(&self) -> &EngineConfig {
        &self.0
    }
}
