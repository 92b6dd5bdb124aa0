//! Reads the per-CPU slot rings the state program writes (tcpmon_common::Slot says why
//! they exist and how records are laid out): two mmapable array maps, one of slots (CPU
//! after CPU, `1 << shift` slots each) and one of cursors (one per CPU).
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use tcpmon_common::{
    slot_tag, ShortEvent, Slot, SlotCursor, SockEvent, MIN_SLOTS_PER_CPU, SLOT_CURSOR_SIZE,
    SLOT_HEAD_BYTES, SLOT_SIZE, SOCK_EVENT_SIZE,
};

use super::ringbuf::mmap_shared;

/// How many slot rings there are and how big.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLayout {
    /// One ring per possible CPU (the kernel's CPU numbers stay below this).
    pub cpus: u32,
    /// log2 of the slots per ring.
    pub shift: u32,
}

impl SlotLayout {
    /// The rings `bytes` buys for `cpus` CPUs: a power of two of slots each, at least
    /// MIN_SLOTS_PER_CPU. None when the slot map would not fit a u32 of entries.
    pub fn new(bytes: u64, cpus: u32) -> Option<Self> {
        let cpus = cpus.max(1);
        let share = (bytes / u64::from(cpus) / SLOT_SIZE as u64)
            .clamp(u64::from(MIN_SLOTS_PER_CPU), 1 << 31);
        let shift = 63 - share.leading_zeros();
        let layout = Self { cpus, shift };
        layout.entries().map(|_| layout)
    }

    pub fn slots(&self) -> u32 {
        1 << self.shift
    }

    /// The slot map's max_entries.
    pub fn entries(&self) -> Option<u32> {
        self.cpus.checked_mul(self.slots())
    }

    /// Bytes of slots in all.
    pub fn bytes(&self) -> u64 {
        u64::from(self.cpus) * u64::from(self.slots()) * SLOT_SIZE as u64
    }
}

/// A ring holding what no writer following the protocol produces (positions further
/// apart than the ring, an unknown tag), or a ring that does not exist: it is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// Where reading stopped.
    pub at: u64,
    pub produced: u64,
}

impl Corrupt {
    /// What reading a CPU number beyond the layout returns (nothing was read).
    const NO_SUCH_RING: Self = Self {
        at: 0,
        produced: u64::MAX,
    };
}

/// `record` in slots as the kernel writes it: one when it has a short form, else two
/// (the inverse of `record_at`).
pub fn encode(record: &SockEvent) -> Vec<Slot> {
    match ShortEvent::narrow(record) {
        Some(short) => {
            // SAFETY: a ShortEvent is five words of plain integers.
            let [w0, w1, w2, w3, w4]: [u64; 5] = unsafe { std::mem::transmute(short) };
            vec![Slot([w0, w1, w2, w3, w4, slot_tag::SHORT])]
        }
        None => {
            // SAFETY: a SockEvent is eleven words of plain integers.
            let [w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10]: [u64; 11] =
                unsafe { std::mem::transmute(*record) };
            vec![
                Slot([w0, w1, w2, w3, w4, slot_tag::FULL]),
                Slot([w5, w6, w7, w8, w9, w10]),
            ]
        }
    }
}

/// The record whose first slot is `head` (and, for a full record, whose second is what
/// `next` returns), with how many slots it took. Inlined, and the record returned by
/// value, so that it is built where the caller keeps it: a copy out of a record built
/// field by field on the stack stalls on store forwarding.
#[inline(always)]
fn record_at(head: &Slot, next: impl FnOnce() -> Option<Slot>) -> Option<(SockEvent, u64)> {
    let [h0, h1, h2, h3, h4, tag] = head.0;
    match tag {
        slot_tag::SHORT => {
            // SAFETY: five words are a ShortEvent's size and alignment; plain integers.
            let short: ShortEvent = unsafe { std::mem::transmute([h0, h1, h2, h3, h4]) };
            Some((short.widen(), 1))
        }
        slot_tag::FULL => {
            let [t0, t1, t2, t3, t4, t5] = next()?.0;
            let words = [h0, h1, h2, h3, h4, t0, t1, t2, t3, t4, t5];
            Some((SockEvent::from_words(words), 2))
        }
        _ => None,
    }
}

const _: () = assert!(SLOT_HEAD_BYTES == 5 * 8 && SOCK_EVENT_SIZE == 11 * 8);

/// Hands the records in slots `consumed..produced` of one ring of `mask + 1` slots to
/// `each`, reading slot `i` with `slot(i)`, until `limit` slots are read (the record
/// that reaches it is read whole); returns the new consumed position.
#[inline]
pub fn walk(
    mask: u64,
    consumed: u64,
    produced: u64,
    limit: u64,
    slot: impl Fn(usize) -> Slot,
    mut each: impl FnMut(SockEvent),
) -> Result<u64, Corrupt> {
    match produced.checked_sub(consumed) {
        Some(waiting) if waiting <= mask + 1 => {}
        _ => {
            return Err(Corrupt {
                at: consumed,
                produced,
            })
        }
    }
    let mut at = consumed;
    let stop = produced.min(consumed.saturating_add(limit));
    while at < stop {
        let next = || (at + 1 < produced).then(|| slot(((at + 1) & mask) as usize));
        let Some((record, used)) = record_at(&slot((at & mask) as usize), next) else {
            return Err(Corrupt { at, produced });
        };
        each(record);
        at += used;
    }
    Ok(at)
}

/// What one read of a slot ring found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRead {
    /// Slots read.
    pub slots: u64,
    /// The stamp of the first record left unread, when the read stopped at its limit.
    pub next_stamp: Option<u64>,
}

/// One shared mapping of a map fd, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let ptr = mmap_shared(fd.as_raw_fd(), len, prot, 0)?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in new() with this length.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The mapped slot rings. The fds keep the maps alive.
pub struct SlotRings {
    slots: Mapping,
    cursors: Mapping,
    layout: SlotLayout,
    /// Each ring's consumed position as last published.
    consumed: Vec<u64>,
    _fds: [OwnedFd; 2],
}

// SAFETY: the mappings are owned by this value and touched through &mut self, or
// atomics for the shared positions.
unsafe impl Send for SlotRings {}

impl SlotRings {
    /// Maps the slot map (`layout.entries()` slots) and the cursor map (`layout.cpus`).
    pub fn new(slots_fd: OwnedFd, cursors_fd: OwnedFd, layout: SlotLayout) -> io::Result<Self> {
        let entries = layout
            .entries()
            .ok_or_else(|| io::Error::other("slot map too large"))?;
        // Array map elements are value_size rounded up to 8: both sizes already are.
        let slots = Mapping::new(&slots_fd, entries as usize * SLOT_SIZE)?;
        let cursors = Mapping::new(&cursors_fd, layout.cpus as usize * SLOT_CURSOR_SIZE)?;
        let mut rings = Self {
            slots,
            cursors,
            layout,
            consumed: vec![0; layout.cpus as usize],
            _fds: [slots_fd, cursors_fd],
        };
        for cpu in 0..layout.cpus as usize {
            rings.consumed[cpu] = rings.position(cpu, std::mem::offset_of!(SlotCursor, consumed));
        }
        Ok(rings)
    }

    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// The cursor field at `offset` of CPU `cpu`'s cursor; callers check `cpu < cpus`.
    fn cursor_field(&self, cpu: usize, offset: usize) -> &AtomicU64 {
        assert!(cpu < self.layout.cpus as usize && offset + 8 <= SLOT_CURSOR_SIZE);
        // SAFETY: inside the cursor mapping (cpu < cpus), 8-aligned (page-aligned base,
        // 128-byte cursors, fields at 0 and 64); shared with the kernel, hence atomic.
        unsafe {
            &*self
                .cursors
                .ptr
                .as_ptr()
                .add(cpu * SLOT_CURSOR_SIZE + offset)
                .cast::<AtomicU64>()
        }
    }

    fn position(&self, cpu: usize, offset: usize) -> u64 {
        self.cursor_field(cpu, offset).load(Ordering::Acquire)
    }

    /// Hands the records CPU `cpu` has written since the last read to `each`, about
    /// `limit` slots of them at most, then tells the kernel their slots are free. A CPU
    /// beyond the layout has no ring: an error, nothing read.
    #[inline]
    pub fn read(
        &mut self,
        cpu: usize,
        limit: u64,
        each: impl FnMut(SockEvent),
    ) -> Result<SlotRead, Corrupt> {
        if cpu >= self.layout.cpus as usize {
            return Err(Corrupt::NO_SUCH_RING);
        }
        let produced = self.position(cpu, std::mem::offset_of!(SlotCursor, produced));
        let consumed = self.consumed[cpu];
        let base = self.slots.ptr.as_ptr();
        let first = cpu << self.layout.shift;
        let mask = u64::from(self.layout.slots() - 1);
        // SAFETY: slot `first + i` (i below the ring's length) lies inside the mapping,
        // 16-aligned; the kernel finished it before publishing `produced` (read with
        // Acquire above) and leaves it alone until `consumed` passes it.
        let slot = |i: usize| unsafe { base.add((first + i) * SLOT_SIZE).cast::<Slot>().read() };
        let after = walk(mask, consumed, produced, limit, slot, each)?;
        if after != consumed {
            self.consumed[cpu] = after;
            self.cursor_field(cpu, std::mem::offset_of!(SlotCursor, consumed))
                .store(after, Ordering::Release);
        }
        Ok(SlotRead {
            slots: after - consumed,
            // Every record starts with its stamp.
            next_stamp: (after < produced).then(|| slot((after & mask) as usize).0[0]),
        })
    }
}

#[cfg(test)]
mod tests {
    use tcpmon_common::{ShortEvent, AF_INET, AF_INET6};

    use super::*;

    fn short(ts_ns: u64) -> ShortEvent {
        let mut full = SockEvent::zeroed();
        full.ts_ns = ts_ns;
        full.family = AF_INET;
        full.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        full.sport = 7000;
        ShortEvent::narrow(&full).unwrap()
    }

    fn full(ts_ns: u64) -> SockEvent {
        let mut full = SockEvent::zeroed();
        full.ts_ns = ts_ns;
        full.family = AF_INET6;
        full.saddr = [0xfd; 16];
        full.daddr = [0x20; 16];
        full.tgid = 4242;
        full.comm = *b"curl\0\0\0\0\0\0\0\0\0\0\0\0";
        full
    }

    /// Writes `record` into `ring` at position `at`, as the kernel does.
    fn put(ring: &mut [Slot], at: usize, record: &SockEvent) {
        let len = ring.len();
        for (i, slot) in encode(record).into_iter().enumerate() {
            ring[(at + i) % len] = slot;
        }
    }

    proptest::proptest! {
        /// The word-shuffling widen (what the reader runs) and the field-by-field one
        /// agree on every short record.
        #[test]
        fn widening_by_words_matches_by_fields(
            ts_ns: u64, skaddr: u64, saddr: [u8; 4], daddr: [u8; 4], netns: u32,
            sport: u16, dport: u16, kind: u8, oldstate: u8, newstate: u8,
        ) {
            let short = ShortEvent {
                ts_ns, skaddr, saddr, daddr, netns, sport, dport, family: AF_INET, kind,
                oldstate, newstate, _pad1: 0, _pad2: 0,
            };
            proptest::prop_assert_eq!(short.widen(), short.widen_by_fields());
        }
    }

    #[test]
    fn layout_spends_the_budget_in_powers_of_two_with_a_floor() {
        // 12 MiB over 2 CPUs: 131,072 slots of 48 bytes fit each exactly.
        let two = SlotLayout::new(12 << 20, 2).unwrap();
        assert_eq!((two.cpus, two.slots()), (2, 131_072));
        assert_eq!(two.entries(), Some(262_144));
        assert_eq!(two.bytes(), 12 << 20);
        // A little less: the next power of two down.
        assert_eq!(SlotLayout::new((12 << 20) - 1, 2).unwrap().slots(), 65_536);
        // A tiny budget still gets the floor; no CPUs counts as one.
        assert_eq!(SlotLayout::new(4096, 8).unwrap().slots(), MIN_SLOTS_PER_CPU);
        assert_eq!(SlotLayout::new(1 << 20, 0).unwrap().cpus, 1);
        // Entries beyond a u32: no slot rings.
        assert_eq!(SlotLayout::new(u64::MAX, 1 << 16), None);
    }

    #[test]
    fn walks_short_and_split_full_records_across_the_end_of_the_ring() {
        // A ring of 4 slots holding positions 5..9: a short record (slot 1), a full
        // one (slots 2 and 3), and a short one past the end (slot 0).
        let mut ring = vec![Slot::default(); 4];
        put(&mut ring, 5, &short(10).widen());
        put(&mut ring, 6, &full(11));
        put(&mut ring, 8, &short(12).widen());
        let mut seen = Vec::new();
        let after = walk(3, 5, 9, u64::MAX, |i| ring[i], |r| seen.push(r)).unwrap();
        assert_eq!(after, 9);
        assert_eq!(seen, [short(10).widen(), full(11), short(12).widen()]);
        // A limit stops the walk after the record that reaches it: one slot of the full
        // record at 6 is within a limit of 2 from 5, so it is read whole.
        let mut seen = Vec::new();
        assert_eq!(walk(3, 5, 9, 2, |i| ring[i], |r| seen.push(r.ts_ns)), Ok(8));
        assert_eq!(seen, [10, 11]);
        // A full record whose halves straddle the end: slots 3 and 0.
        put(&mut ring, 11, &full(13));
        let mut seen = Vec::new();
        assert_eq!(
            walk(3, 11, 13, u64::MAX, |i| ring[i], |r| seen.push(r)),
            Ok(13)
        );
        assert_eq!(seen, [full(13)]);
        // Nothing new: nothing handed out, position unchanged.
        assert_eq!(
            walk(3, 13, 13, u64::MAX, |i| ring[i], |_| panic!("no record")),
            Ok(13)
        );
    }

    #[test]
    fn impossible_contents_are_corrupt() {
        let mut ring = vec![Slot::default(); 4];
        // More waiting than the ring holds, or the producer behind the consumer.
        for (consumed, produced) in [(0, 5), (7, 3)] {
            assert_eq!(
                walk(
                    3,
                    consumed,
                    produced,
                    u64::MAX,
                    |i| ring[i],
                    |_| panic!("no record")
                ),
                Err(Corrupt {
                    at: consumed,
                    produced
                })
            );
        }
        // An unknown tag stops the walk where it is, after what came before.
        put(&mut ring, 0, &short(1).widen());
        let mut seen = 0;
        assert_eq!(
            walk(3, 0, 2, u64::MAX, |i| ring[i], |_| seen += 1),
            Err(Corrupt { at: 1, produced: 2 })
        );
        assert_eq!(seen, 1);
        // A full record's head as the last published slot: its tail is not there.
        put(&mut ring, 2, &full(2));
        assert_eq!(
            walk(3, 2, 3, u64::MAX, |i| ring[i], |_| panic!("no record")),
            Err(Corrupt { at: 2, produced: 3 })
        );
    }
}
