//! The engine's SYN side at each evaluation: the window of SYN activity the kernel
//! programs counted, the TcpExt counters' increase, the half-open dump when anything
//! hints at trouble, and the SYN counter attached only while it does (see `live::syn`).
use std::{collections::HashMap, net::IpAddr};

use super::Engine;
use crate::{
    host::kstats::SynCounters,
    live::{
        host::Host,
        source::EventSource,
        syn::{half_open_worth_dumping, syn_trouble_hinted, SynCoverage, SynWindow},
    },
};

/// What one evaluation window saw of SYNs.
pub(super) struct SynEvaluation {
    pub per_listener: HashMap<(IpAddr, u16), SynWindow>,
    /// TcpExt counter increases over the window (whole namespace).
    pub counters: SynCounters,
    pub coverage: SynCoverage,
}

impl<H: Host, S: EventSource> Engine<H, S> {
    /// Closes the SYN window that began at the last evaluation, polls half-open requests
    /// when worth it, and switches the SYN counter on or off.
    pub(super) fn syn_window(&mut self, now: u64) -> SynEvaluation {
        let absolute = self.host.syn_counters().unwrap_or_default();
        let syn_counters = self
            .syn
            .counters
            .map(|prev| absolute.since(&prev))
            .unwrap_or_default();
        self.syn.counters = Some(absolute);
        let window_start = self.last_eval_ns;
        let syn = self.syn.tracker.take();
        self.syn.add_totals(&syn);
        let syn_coverage = match self.syn.attached_since {
            Some(at) if at <= window_start => SynCoverage::Whole,
            Some(_) => SynCoverage::Partial,
            None => SynCoverage::None,
        };
        if let Some(source) = self.source.as_mut() {
            // Half-open requests never fire the state tracepoint: poll them (netlink),
            // when anything hints at them (see half_open_worth_dumping).
            if half_open_worth_dumping(
                syn_trouble_hinted(&syn, &syn_counters, self.tally.half_open_total()),
                source.syn_counter_loaded(),
                self.tally.half_open_total(),
                now.saturating_sub(self.syn.last_half_open_dump_ns),
            ) {
                self.syn.last_half_open_dump_ns = now;
                if let Some(half_open) = self.host.half_open() {
                    self.tally.set_half_open(half_open);
                }
            }
            // After the dump, which can be the first sign of trouble.
            let hinted = syn_trouble_hinted(&syn, &syn_counters, self.tally.half_open_total());
            let wanted = self.syn.switch.wanted(hinted, now);
            if source.syn_counter_loaded() && wanted != source.syn_counter_attached() {
                match source.set_syn_counter(wanted) {
                    Ok(()) => {
                        self.syn.attached_since = wanted.then_some(now);
                        self.received.syn_counter_attaches += u64::from(wanted);
                    }
                    // Once: it would fail the same way every second.
                    Err(e) if !self.syn.attach_failed => {
                        self.syn.attach_failed = true;
                        log::warn!("SYN counter (cgroup skb ingress): {e}");
                    }
                    Err(_) => {}
                }
            }
            match source.counters() {
                Ok(kernel) => self.kernel = kernel,
                Err(e) => log::warn!("reading kernel counters: {e}"),
            }
        }
        SynEvaluation {
            per_listener: syn,
            counters: syn_counters,
            coverage: syn_coverage,
        }
    }
}
