//! SYN-side evidence: SYN activity per listener between evaluations, whether anything
//! hints at SYN trouble, and the policy that attaches the costly SYN counter only then.
//! Pure: inputs in, decisions out.
use std::{collections::HashMap, net::IpAddr};

use super::record::SynTotals;
use crate::{host::kstats::SynCounters, model::HalfOpenCounter};

/// SYN activity of one listener over the last window, from the kernel programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SynWindow {
    pub syns: u64,
    /// Handshakes that completed (LISTEN -> SYN_RECV child sockets).
    pub completed: u64,
    pub synack_retransmits: u64,
    /// Distinct SYN sources (saturates at MAX_SOURCES).
    pub sources: u64,
}

/// Half-open requests (or SYNs outrunning completions) that a busy host has in flight
/// anyway: a loopback handshake lasts tens of microseconds. Fewer hint at nothing.
const SYN_SLACK: u64 = 64;

/// Whether anything in this window hints at SYN trouble: a SYN-ACK retransmitted, a SYN
/// or listen queue overflowed (cookies, drops), requests reset by their peers, the last
/// half-open dump finding more than [`SYN_SLACK`], or (only while the SYN counter is
/// attached) SYNs outrunning completions.
pub fn syn_trouble_hinted(
    syn: &HashMap<(IpAddr, u16), SynWindow>,
    syn_counters: &SynCounters,
    last_half_open: u64,
) -> bool {
    let (syns, completed, retransmits) = syn.values().fold((0, 0, 0), |acc, w| {
        (
            acc.0 + w.syns,
            acc.1 + w.completed,
            acc.2 + w.synack_retransmits,
        )
    });
    retransmits > 0
        || syns > completed + SYN_SLACK
        || last_half_open > SYN_SLACK
        || syn_counters.queue_overflowed()
        || syn_counters.listen_overflows + syn_counters.listen_drops > 0
        || syn_counters.embryonic_resets > 0
}

/// Whether to dump half-open request sockets this evaluation. The dump walks every
/// established and TIME_WAIT socket (request sockets share their hash table), a visible
/// cost under heavy churn, so it is skipped while nothing hints at SYN trouble and the
/// previous dump found none; at least every `HALF_OPEN_RECHECK_NS` anyway. Without the
/// SYN counter program (it did not load) it always dumps.
pub fn half_open_worth_dumping(
    hinted: bool,
    syn_counter_loaded: bool,
    last_half_open: u64,
    since_last_dump_ns: u64,
) -> bool {
    const HALF_OPEN_RECHECK_NS: u64 = 10_000_000_000;
    !syn_counter_loaded
        || hinted
        || last_half_open > 0
        || since_last_dump_ns >= HALF_OPEN_RECHECK_NS
}

/// How long the SYN counter stays attached after the last hint of SYN trouble.
pub const SYN_COUNTER_HOLD_NS: u64 = 60_000_000_000;

/// Attaches the SYN counter (a cgroup skb ingress program) on the first hint of SYN
/// trouble and detaches it after [`SYN_COUNTER_HOLD_NS`] without one. Attached, it runs
/// on every packet delivered to a socket on the host; idle, SYN trouble still shows
/// through retransmits, the TcpExt counters and the half-open dumps, and the SYN rate is
/// taken from the cookies the kernel sent, or said not to be counted, never zero.
#[derive(Debug, Default)]
pub struct SynCounterSwitch {
    last_hint_ns: Option<u64>,
    wanted: bool,
}

impl SynCounterSwitch {
    /// Whether the counter should be attached now.
    pub fn wanted(&mut self, hinted: bool, now_ns: u64) -> bool {
        if hinted {
            self.last_hint_ns = Some(now_ns);
        }
        self.wanted = self
            .last_hint_ns
            .is_some_and(|at| now_ns.saturating_sub(at) < SYN_COUNTER_HOLD_NS);
        self.wanted
    }

    /// What the last [`Self::wanted`] answered.
    pub fn holding(&self) -> bool {
        self.wanted
    }
}

/// How much of an evaluation window the SYN counter was attached for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SynCoverage {
    Whole,
    /// Attached during the window: the SYN rate is a lower bound.
    Partial,
    /// Not attached (idle, or it could not load): no SYN rate.
    #[default]
    None,
}

/// Accumulates SYN activity per listener between evaluations, in bounded memory: distinct
/// sources saturate at MAX_SOURCES per listener, so a flood from a million spoofed
/// addresses costs at most that many entries until the next evaluation empties it.
#[derive(Debug, Default)]
pub struct SynTracker {
    /// Per listener: completions and retransmits, and the SYNs with their sources.
    listeners: rustc_hash::FxHashMap<(IpAddr, u16), (SynWindow, HalfOpenCounter)>,
}

impl SynTracker {
    pub fn syn(&mut self, listener: (IpAddr, u16), source: IpAddr) {
        self.listeners.entry(listener).or_default().1.add(source);
    }

    pub fn completed(&mut self, listener: (IpAddr, u16)) {
        self.listeners.entry(listener).or_default().0.completed += 1;
    }

    pub fn synack_retransmit(&mut self, listener: (IpAddr, u16)) {
        self.listeners
            .entry(listener)
            .or_default()
            .0
            .synack_retransmits += 1;
    }

    /// The window so far, leaving the tracker empty.
    pub fn take(&mut self) -> HashMap<(IpAddr, u16), SynWindow> {
        std::mem::take(&mut self.listeners)
            .into_iter()
            .map(|(k, (mut w, syns))| {
                w.syns = syns.count();
                w.sources = syns.sources();
                (k, w)
            })
            .collect()
    }

    /// Entries held (for the bounded-memory promise).
    pub fn entries(&self) -> usize {
        self.listeners
            .values()
            .map(|(_, syns)| syns.sources() as usize + 1)
            .sum()
    }
}

/// Listeners whose SYN totals are kept apart; beyond, they add up under one entry.
const MAX_SYN_LISTENERS: usize = 4096;

/// The engine's SYN side between evaluations: the window being counted, the counters
/// and the SYN counter's switch as last seen, and totals per listener since the start.
#[derive(Debug, Default)]
pub struct SynState {
    pub tracker: SynTracker,
    /// TcpExt counters at the previous evaluation.
    pub counters: Option<SynCounters>,
    pub switch: SynCounterSwitch,
    /// When the SYN counter was last attached, while it is.
    pub attached_since: Option<u64>,
    pub attach_failed: bool,
    pub last_half_open_dump_ns: u64,
    /// SYNs and SYN-ACK retransmits per local address since the start (bounded by
    /// MAX_SYN_LISTENERS; the rest under `totals_other`).
    totals: HashMap<(IpAddr, u16), (u64, u64)>,
    totals_other: (u64, u64),
}

/// Whether a listener bound to `listener` takes connections to `local`: the same address,
/// or a wildcard of any family on the same port (a `[::]` socket is dual-stack).
pub fn covers(listener: (IpAddr, u16), local: (IpAddr, u16)) -> bool {
    listener.1 == local.1 && (listener.0 == local.0 || listener.0.is_unspecified())
}

/// The half-open requests a listener has: those to its own address, and for a wildcard
/// those to any address on its port that no specific listener has.
pub fn half_open_of(by_address: &HashMap<(IpAddr, u16), u64>, ip: IpAddr, port: u16) -> u64 {
    by_address
        .iter()
        .filter(|(k, _)| covers((ip, port), **k))
        .map(|(_, n)| n)
        .sum()
}

impl SynState {
    /// Adds a window's SYN activity to the totals since the start.
    pub fn add_totals(&mut self, window: &HashMap<(IpAddr, u16), SynWindow>) {
        for (key, w) in window {
            let room = self.totals.len() < MAX_SYN_LISTENERS;
            let slot = match self.totals.get_mut(key) {
                Some(slot) => slot,
                None if room => self.totals.entry(*key).or_default(),
                None => &mut self.totals_other,
            };
            slot.0 += w.syns;
            slot.1 += w.synack_retransmits;
        }
    }

    /// The totals of each of `listeners` (an exact address first, then a wildcard
    /// covering it), and of the addresses none covers.
    pub fn totals_by_listener(&self, listeners: &[(IpAddr, u16)]) -> (Vec<SynTotals>, SynTotals) {
        let mut out = vec![SynTotals::default(); listeners.len()];
        let mut elsewhere = SynTotals {
            syns: self.totals_other.0,
            synack_retransmits: self.totals_other.1,
        };
        for (key, (syns, retransmits)) in &self.totals {
            let at = listeners
                .iter()
                .position(|l| l == key)
                .or_else(|| listeners.iter().position(|l| covers(*l, *key)));
            let slot = match at {
                Some(i) => &mut out[i],
                None => &mut elsewhere,
            };
            slot.syns += syns;
            slot.synack_retransmits += retransmits;
        }
        (out, elsewhere)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn localhost() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn window(syns: u64, completed: u64, retransmits: u64) -> HashMap<(IpAddr, u16), SynWindow> {
        let mut m = HashMap::new();
        m.insert(
            (localhost(), 80),
            SynWindow {
                syns,
                completed,
                synack_retransmits: retransmits,
                sources: 1,
            },
        );
        m
    }

    #[test]
    fn syn_trouble_is_hinted_by_any_sign_of_it() {
        let none = SynCounters::default();
        let with = |f: fn(&mut SynCounters)| {
            let mut c = SynCounters::default();
            f(&mut c);
            c
        };
        // ((syns, completed, retransmits), counters, last half-open) -> hinted?
        let cases = [
            ((60_000, 59_990, 0), none, 0, false, "busy but healthy"),
            ((0, 60_000, 0), none, 0, false, "SYN counter idle, healthy"),
            ((0, 0, 0), none, 3, false, "a few requests in flight"),
            ((60_000, 50_000, 0), none, 0, true, "SYNs not completing"),
            ((10, 10, 1), none, 0, true, "SYN-ACK retransmitted"),
            ((0, 0, 0), none, 65, true, "half-open requests piling up"),
            (
                (0, 0, 0),
                with(|c| c.syncookies_sent = 1),
                0,
                true,
                "cookies sent",
            ),
            (
                (0, 0, 0),
                with(|c| c.listen_drops = 1),
                0,
                true,
                "listen drops",
            ),
            (
                (0, 0, 0),
                with(|c| c.embryonic_resets = 1),
                0,
                true,
                "requests reset by their peers",
            ),
        ];
        for ((syns, completed, retransmits), counters, last, hinted, why) in cases {
            assert_eq!(
                syn_trouble_hinted(&window(syns, completed, retransmits), &counters, last),
                hinted,
                "{why}"
            );
        }
    }

    #[test]
    fn half_open_dump_only_when_something_hints_at_it() {
        let second = 1_000_000_000;
        // (hinted, SYN counter loaded, last half-open, since the last dump) -> dump?
        let cases = [
            (false, true, 0, second, false, "nothing hints"),
            (true, true, 0, second, true, "a hint"),
            (false, true, 3, second, true, "half-open seen last time"),
            (false, false, 0, second, true, "no SYN counter"),
            (
                false,
                true,
                0,
                10 * second,
                true,
                "10 s since the last dump",
            ),
        ];
        for (hinted, loaded, last, since, dump, why) in cases {
            assert_eq!(
                half_open_worth_dumping(hinted, loaded, last, since),
                dump,
                "{why}"
            );
        }
    }

    #[test]
    fn syn_counter_attaches_on_a_hint_and_detaches_after_a_quiet_minute() {
        let mut switch = SynCounterSwitch::default();
        assert!(!switch.wanted(false, 0), "idle at start");
        assert!(switch.wanted(true, SEC), "attached on the first hint");
        assert!(switch.wanted(false, 30 * SEC), "held while quiet");
        assert!(switch.wanted(true, 50 * SEC), "a new hint");
        assert!(
            switch.wanted(false, 109 * SEC),
            "held 60 s from the last hint"
        );
        assert!(
            !switch.wanted(false, 110 * SEC),
            "detached after 60 quiet seconds"
        );
        assert!(switch.wanted(true, 111 * SEC), "and attached again");
    }
}
