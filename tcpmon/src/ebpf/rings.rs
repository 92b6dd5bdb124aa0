//! The per-CPU ring buffers and slot rings read as one stream in time order (see
//! [`super::order`]).
use std::{io, sync::Arc};

use tcpmon_common::{SockEvent, DOORBELL_SIZE, RING_COUNT};
use tokio::{io::unix::AsyncFd, sync::Notify, task::JoinHandle};

use super::{decode::DecodeError, order::Reorder, ringbuf::RingReader, slots::SlotRings};
use crate::host::clock::monotonic_ns;

pub struct Rings {
    rings: Vec<RingReader>,
    /// Rings found corrupt (a header claiming more than the ring): no longer read.
    broken: Vec<bool>,
    /// The state transitions' slot rings, when the kernel side uses them.
    slots: Option<SlotRings>,
    /// Slot rings found with impossible positions: no longer read.
    broken_slots: Vec<bool>,
    reorder: Reorder,
    /// Set when any ring's reader is woken.
    wake: Arc<Notify>,
    watchers: Vec<JoinHandle<()>>,
}

impl Rings {
    /// Takes the rings and starts one readiness watcher per ring buffer on the runtime
    /// (the slot rings have none: the kernel rings a ring buffer's doorbell for them).
    /// Must be called within a tokio runtime.
    pub fn new(rings: Vec<RingReader>, slots: Option<SlotRings>) -> io::Result<Self> {
        let wake = Arc::new(Notify::new());
        let mut watchers = Vec::with_capacity(rings.len());
        for ring in &rings {
            // A duplicate of the map fd: readiness is a property of the ring, not the fd.
            let fd = ring.fd().try_clone()?;
            // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open, and refers to the
            // same file, for as long as it is registered.
            let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
            let wake = Arc::clone(&wake);
            watchers.push(tokio::spawn(async move {
                while let Ok(mut ready) = fd.readable().await {
                    ready.clear_ready();
                    wake.notify_one();
                }
            }));
        }
        Ok(Self {
            broken: vec![false; rings.len()],
            rings,
            broken_slots: vec![false; slots.as_ref().map_or(0, |s| s.layout().cpus as usize)],
            slots,
            reorder: Reorder::default(),
            wake,
            watchers,
        })
    }

    /// Notified when some ring has been woken (its `notified()` completes at once when
    /// that happened since the last wait).
    pub fn wakeup(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Reads every ring and hands to `each`, oldest first, the records that are safe to
    /// hand out (all of them when `everything`, at detach); what cannot be decoded goes
    /// to `problems`. Two passes at least: the second lets the records the first one read
    /// go out at once. A slot ring is read SLOTS_PER_PASS at a time, so that a backlog
    /// (the reader kept off the CPU for a while) goes through the merge in bounded
    /// batches instead of all at once.
    pub fn read(
        &mut self,
        everything: bool,
        mut each: impl FnMut(&SockEvent),
        problems: &mut Vec<DecodeError>,
    ) {
        // At detach every ring is read to its end, however long that takes.
        let passes = if everything { usize::MAX } else { MAX_PASSES };
        for pass in 0..passes {
            let pass_started = monotonic_ns();
            // Records stamped before this are safe to hand out: every record a pass
            // beginning at `pass_started` can find, and nothing a ring left unread.
            let mut safe_before = pass_started;
            let mut any = false;
            for (index, ring) in self.rings.iter_mut().enumerate() {
                if self.broken[index] {
                    continue;
                }
                let reorder = &mut self.reorder;
                let walk = ring.read(|item| match SockEvent::from_bytes(item) {
                    Some(record) => reorder.push(index, record),
                    None if item.len() == DOORBELL_SIZE => {}
                    None => problems.push(DecodeError::Length(item.len())),
                });
                if walk.corrupt {
                    self.broken[index] = true;
                    problems.push(DecodeError::RingHeader(index));
                }
                any |= walk.records > 0;
            }
            let mut backlog = false;
            if let Some(slots) = &mut self.slots {
                for (cpu, broken) in self.broken_slots.iter_mut().enumerate() {
                    if *broken {
                        continue;
                    }
                    // CPU c's ring buffer is c % RING_COUNT: one queue per group of CPUs
                    // keeps the merge narrow (the queue sorts itself when they interleave).
                    let queue = cpu % RING_COUNT;
                    let reorder = &mut self.reorder;
                    match slots.read(cpu, SLOTS_PER_PASS, |record| reorder.push(queue, record)) {
                        Ok(read) => {
                            any |= read.slots > 0;
                            if let Some(stamp) = read.next_stamp {
                                backlog = true;
                                safe_before = safe_before.min(stamp);
                            }
                        }
                        Err(_) => {
                            *broken = true;
                            problems.push(DecodeError::SlotCorrupt(cpu));
                        }
                    }
                }
            }
            self.reorder.release(safe_before, &mut each);
            let done = pass >= 1 || (!any && self.reorder.is_empty());
            if done && !backlog {
                break;
            }
            if backlog && pass + 1 == passes {
                // Come back as soon as the runtime has run what else is due, rather than
                // at the next doorbell or drain tick.
                self.wake.notify_one();
            }
        }
        if everything {
            self.reorder.release_all(each);
        }
    }
}

/// Slots one pass reads from a ring at most: ~20 ms of one CPU at this machine's peak
/// churn, four times what a pass finds when the reader keeps up; the merge then holds
/// under 1 MiB per ring.
const SLOTS_PER_PASS: u64 = 1 << 13;

/// Passes one read makes at most; with a backlog left, the read asks to be called again.
const MAX_PASSES: usize = 16;

impl Drop for Rings {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}
