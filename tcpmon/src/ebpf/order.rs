//! Puts the records of several per-CPU rings (slot rings and ring buffers) back in time
//! order.
//!
//! A socket's transitions can be recorded on different CPUs (connect() on one, the
//! handshake's softirq on another), so they land in different rings, and reading ring
//! after ring can meet a later transition before an earlier one. Two kernel facts make a
//! watermark enough to restore each socket's order:
//! - a record is stamped (`ts_ns`) at the start of its program and committed (its slots'
//!   position published, or its ring-buffer record submitted) before the program
//!   returns, and
//! - a socket changes state again only after the previous change's program returned
//!   (state changes of one socket are serialised by its lock).
//!
//! So if a record is stamped before time S, every earlier record of the same socket was
//! committed before S, and a pass over all rings that begins at S finds it. Releasing,
//! after such a pass, only the records stamped before S, oldest first, hands out each
//! socket's records in the order they happened. A record stamped before S but committed
//! after its ring was read comes in a later pass; none of its socket's later records can
//! be released before it, as they are stamped after it was committed.
//!
//! The one case this cannot order, in the ring buffers only (a slot ring has one writer,
//! and its reader sees only whole records): a reader stops at a reserved but unfinished
//! record, and a record committed after it in the same ring (by a program nested on the
//! same CPU, or by a second CPU sharing the ring on machines with more than RING_COUNT
//! CPUs) waits behind it, while that socket's next record, elsewhere, is read and
//! released. The whole chain must fit between a reservation and its commit, a few dozen
//! instructions; should it happen, the tally counts the transition as an inconsistency
//! and the next reconciliation repairs the counts.
use tcpmon_common::SockEvent;

/// Records read but not yet handed out, per ring.
#[derive(Debug, Default)]
pub struct Reorder {
    /// Each queue's records in the order read: in stamp order when one ring fills it,
    /// but for a program nested between another's stamp and reservation; a queue shared
    /// by several rings (a group of CPUs) interleaves them. Checked, and sorted if not.
    pending: Vec<Vec<SockEvent>>,
    /// Where the merge stands in each ring (reused).
    heads: Vec<usize>,
}

impl Reorder {
    /// Inlined, so that a record built by the caller is stored straight into the queue.
    #[inline]
    pub fn push(&mut self, ring: usize, record: SockEvent) {
        if ring >= self.pending.len() {
            self.pending.resize_with(ring + 1, Vec::new);
        }
        self.pending[ring].push(record);
    }

    pub fn len(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(Vec::is_empty)
    }

    /// Hands to `each`, oldest first, every held record stamped before `pass_started`:
    /// the monotonic time (the clock of bpf_ktime_get_ns) taken before the last complete
    /// pass over all rings began. Equal stamps go out in ring order.
    pub fn release(&mut self, pass_started: u64, mut each: impl FnMut(&SockEvent)) {
        for ring in &mut self.pending {
            if !ring.is_sorted_by_key(|r| r.ts_ns) {
                ring.sort_by_key(|r| r.ts_ns);
            }
        }
        self.heads.clear();
        self.heads.resize(self.pending.len(), 0);
        // A k-way merge over at most RING_COUNT rings: a linear scan for the oldest head.
        loop {
            let mut oldest: Option<(usize, u64)> = None;
            for (ring, records) in self.pending.iter().enumerate() {
                if let Some(r) = records.get(self.heads[ring]) {
                    if r.ts_ns < pass_started && oldest.is_none_or(|(_, ts)| r.ts_ns < ts) {
                        oldest = Some((ring, r.ts_ns));
                    }
                }
            }
            let Some((ring, _)) = oldest else { break };
            each(&self.pending[ring][self.heads[ring]]);
            self.heads[ring] += 1;
        }
        for (records, &head) in self.pending.iter_mut().zip(&self.heads) {
            records.drain(..head);
        }
    }

    /// Hands out everything still held, oldest first (at detach, when no ring will be
    /// read again).
    pub fn release_all(&mut self, mut each: impl FnMut(&SockEvent)) {
        self.release(u64::MAX, &mut each);
        // Stamped u64::MAX, if any such record exists.
        for records in &mut self.pending {
            records.drain(..).for_each(|r| each(&r));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(ts_ns: u64, skaddr: u64, step: u8) -> SockEvent {
        let mut r = SockEvent::zeroed();
        r.ts_ns = ts_ns;
        r.skaddr = skaddr;
        r.newstate = step;
        r
    }

    #[test]
    fn holds_what_is_not_yet_safe_and_sorts_the_rest() {
        let mut reorder = Reorder::default();
        for (ring, ts, sk) in [(0, 30, 1), (1, 10, 2), (1, 50, 3), (0, 20, 1)] {
            reorder.push(ring, record(ts, sk, 0));
        }
        let mut out = Vec::new();
        reorder.release(31, |r| out.push(*r));
        assert_eq!(
            out.iter().map(|r| r.ts_ns).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        assert_eq!(reorder.len(), 1);
        out.clear();
        reorder.release_all(|r| out.push(*r));
        assert_eq!(out.iter().map(|r| r.ts_ns).collect::<Vec<_>>(), [50]);
        assert!(reorder.is_empty());
    }

    /// One simulated record: which socket, its place in that socket's history, which
    /// ring (CPU) it went to, when it was stamped and when committed.
    #[derive(Clone, Copy, Debug)]
    struct Sim {
        socket: u64,
        step: u8,
        ring: usize,
        stamped: u64,
        committed: u64,
    }

    /// Builds histories the way the kernel makes them: each socket's next record is
    /// stamped after its previous one was committed, on any CPU, with any commit delay;
    /// a CPU runs one program at a time, so its ring is written in stamp order.
    fn histories() -> impl Strategy<Value = Vec<Sim>> {
        prop::collection::vec((0u64..6, 0usize..3, 1u64..40, 0u64..30), 1..120).prop_map(|steps| {
            let mut next_free = [0u64; 6];
            let mut ring_free = [0u64; 3];
            let mut next_step = [0u8; 6];
            let mut clock = 0u64;
            steps
                .into_iter()
                .map(|(socket, ring, gap, delay)| {
                    clock += gap;
                    let stamped = clock
                        .max(next_free[socket as usize] + 1)
                        .max(ring_free[ring] + 1);
                    let committed = stamped + delay;
                    next_free[socket as usize] = committed;
                    ring_free[ring] = committed;
                    let step = next_step[socket as usize];
                    next_step[socket as usize] += 1;
                    Sim {
                        socket,
                        step,
                        ring,
                        stamped,
                        committed,
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the read timing, each socket's records come out in history order,
        /// and none is lost or duplicated; also when a pass reads at most `chunk`
        /// records of a ring and then hands out only what is stamped before the first
        /// record it left unread (as the reader does with a backlog).
        #[test]
        fn every_socket_comes_out_in_history_order(
            sims in histories(),
            pass_gaps in prop::collection::vec(1u64..60, 1..40),
            ring_gap in 0u64..10,
            chunk in prop::option::of(1usize..6),
        ) {
            // Each ring holds its records in reservation (stamp) order; a reader sees a
            // ring's committed prefix.
            let mut rings: Vec<Vec<Sim>> = vec![Vec::new(); 3];
            let mut by_stamp = sims.clone();
            by_stamp.sort_by_key(|s| s.stamped);
            for s in by_stamp {
                rings[s.ring].push(s);
            }
            let mut read = [0usize; 3];
            let mut reorder = Reorder::default();
            let mut out = Vec::new();
            let mut now = 0u64;
            for gap in pass_gaps {
                now += gap;
                let pass_started = now;
                let mut safe_before = pass_started;
                for (i, ring) in rings.iter().enumerate() {
                    now += ring_gap;
                    let mut taken = 0;
                    while read[i] < ring.len() && ring[read[i]].committed <= now {
                        if chunk.is_some_and(|c| taken == c) {
                            safe_before = safe_before.min(ring[read[i]].stamped);
                            break;
                        }
                        let s = ring[read[i]];
                        reorder.push(i, record(s.stamped, s.socket, s.step));
                        read[i] += 1;
                        taken += 1;
                    }
                }
                reorder.release(safe_before, |r| out.push(*r));
            }
            // Drain the rest as at detach.
            for (i, ring) in rings.iter().enumerate() {
                for s in &ring[read[i]..] {
                    reorder.push(i, record(s.stamped, s.socket, s.step));
                }
            }
            reorder.release_all(|r| out.push(*r));
            prop_assert_eq!(out.len(), sims.len());
            let mut expected_step = [0u8; 6];
            for r in &out {
                let sk = r.skaddr as usize;
                prop_assert_eq!(r.newstate, expected_step[sk], "socket {} out of order", sk);
                expected_step[sk] += 1;
            }
        }
    }
}
