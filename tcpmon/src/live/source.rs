//! Where live transitions come from: the kernel programs' rings ([`EbpfSource`]), or
//! nothing at all when the engine polls (it then diffs snapshots from its host).
use std::{io, sync::Arc};

use tcpmon_common::SockEvent;
use tokio::sync::Notify;

use super::host::ReasonNames;
use crate::{
    ebpf::{
        decode::DecodeError, rings::Rings, KernelCounters, LoadError, LoadOptions, NetnsFilter,
        Probe, SynCounterError,
    },
    host::priority,
};

/// A stream of kernel records, read in batches, with the kernel's own loss counters and
/// the switchable SYN counter.
pub trait EventSource {
    /// Hands every record that is safe to hand out (all of them when `everything`),
    /// oldest first, to `each`; what cannot be decoded goes to `problems`.
    fn read<F: FnMut(&SockEvent)>(
        &mut self,
        everything: bool,
        each: F,
        problems: &mut Vec<DecodeError>,
    );
    /// Loss and filter counters, summed over CPUs.
    fn counters(&self) -> io::Result<KernelCounters>;
    /// Notified when records wait to be read (`None`: the caller polls on its timers).
    fn wakeup(&self) -> Option<Arc<Notify>>;
    /// The SYN counter loaded and can be attached.
    fn syn_counter_loaded(&self) -> bool;
    /// How the kernel names the reasons its drop and reset records carry.
    fn reason_names(&self) -> ReasonNames {
        ReasonNames::default()
    }
    fn syn_counter_attached(&self) -> bool;
    fn set_syn_counter(&mut self, attached: bool) -> Result<(), SynCounterError>;
    /// Stops the kernel side producing records; what is queued stays readable.
    fn detach(&mut self);
    /// Forwards kernel diagnostics (aya-log) to the log; called after each read.
    fn flush_log(&mut self) {}
}

/// The kernel programs and their rings.
pub struct EbpfSource {
    probe: Probe,
    rings: Rings,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// What loading found worth saying.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The mode line: what is watched and how.
    pub description: String,
    pub notes: Vec<String>,
}

impl EbpfSource {
    /// Loads and attaches the programs, maps the rings and raises the reader's priority
    /// (`nice`, see [`priority`]). Must run inside a tokio runtime (the rings register
    /// their readiness with it).
    pub fn load(options: &LoadOptions, nice: Option<i32>) -> Result<(Self, Loaded), LoadError> {
        let mut probe = Probe::load(options)?;
        let mut notes = std::mem::take(&mut probe.notes);
        let reader = match priority::apply(nice) {
            Ok(nice) => format!("reader at nice {nice}"),
            Err(e) => {
                notes.push(format!(
                    "could not set the reader's priority ({e}): under a load that keeps every CPU busy it is preempted more often, and the rings fill sooner"
                ));
                "reader at its inherited priority".to_owned()
            }
        };
        let layout = probe.ring_layout;
        let slot_layout = probe.slot_rings.as_ref().map(|s| s.layout());
        let rings = Rings::new(std::mem::take(&mut probe.rings), probe.slot_rings.take())
            .map_err(|e| LoadError::Other(format!("watching the rings: {e}")))?;
        let scope = match options.netns {
            NetnsFilter::All => "all network namespaces".to_owned(),
            NetnsFilter::Only(inode) => format!("network namespace {inode}"),
        };
        let description = format!(
            "watching TCP state transitions with eBPF ({scope}; {}; {}ring buffers {} x {} KiB; {}; {reader})",
            probe.state_hook.describe(),
            slot_layout.map_or_else(String::new, |l| format!(
                "slot rings {} x {} KiB, ",
                l.cpus,
                l.bytes() / u64::from(l.cpus) / 1024
            )),
            layout.used,
            layout.each / 1024,
            if probe.syn_counter_loaded() {
                "SYN counter attached on the first sign of SYN trouble"
            } else {
                "no SYN counter"
            }
        );
        let logger = probe.take_logger();
        Ok((
            Self {
                probe,
                rings,
                logger,
            },
            Loaded { description, notes },
        ))
    }
}

impl EventSource for EbpfSource {
    fn reason_names(&self) -> ReasonNames {
        self.probe.reason_names.clone()
    }

    #[inline]
    fn read<F: FnMut(&SockEvent)>(
        &mut self,
        everything: bool,
        each: F,
        problems: &mut Vec<DecodeError>,
    ) {
        self.rings.read(everything, each, problems);
    }

    fn counters(&self) -> io::Result<KernelCounters> {
        self.probe.counters()
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        Some(self.rings.wakeup())
    }

    fn syn_counter_loaded(&self) -> bool {
        self.probe.syn_counter_loaded()
    }

    fn syn_counter_attached(&self) -> bool {
        self.probe.syn_counter_attached()
    }

    fn set_syn_counter(&mut self, attached: bool) -> Result<(), SynCounterError> {
        self.probe.set_syn_counter(attached)
    }

    fn detach(&mut self) {
        self.logger = None;
        self.probe.detach();
    }

    fn flush_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }
}
