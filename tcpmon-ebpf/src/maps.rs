//! The maps records leave through, and the output path: every record is written field
//! by field straight into its slot (state changes, this CPU's slot ring) or copied into
//! this CPU's ring buffer (SYN records, and state changes without slot rings), and every
//! loss is counted in `COUNTERS`.
use core::{
    mem::{offset_of, MaybeUninit},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    Global,
};
use tcpmon_common::{
    counter, slot_tag, ShortEvent, Slot, SlotCursor, SockEvent, AF_INET, BPF_F_MMAPABLE,
    DEFAULT_RING_BYTES, RING_COUNT, SLOT_HEAD_BYTES,
};

// One ring per CPU (see RING_COUNT); user space sets their sizes and leaves the rings
// no CPU maps to at one page.
#[map(name = "EVENTS0")]
static EVENTS0: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS1")]
static EVENTS1: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS2")]
static EVENTS2: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS3")]
static EVENTS3: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS4")]
static EVENTS4: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS5")]
static EVENTS5: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS6")]
static EVENTS6: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "EVENTS7")]
static EVENTS7: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
const _: () = assert!(RING_COUNT == 8);

// State transitions: one ring of slots per CPU (see tcpmon-common's Slot). User
// space sizes both maps (CPUs << SLOTS_SHIFT slots, one cursor per CPU).
#[map(name = "STATE_SLOTS")]
static STATE_SLOTS: Array<Slot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "STATE_CURSORS")]
static STATE_CURSORS: Array<SlotCursor> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[unsafe(no_mangle)]
static SLOTS_SHIFT: Global<u32> = Global::new(0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// When the reader was last woken, by any CPU through any ring: it reads every ring
/// whichever woke it, so one clock for all halves the wakeups of a per-ring one on two
/// busy CPUs. (CPUs race on it; that only shifts a wakeup by a record. It is written at
/// most once per interval, so the cache line stays shared.)
#[map(name = "LAST_WAKEUP")]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Wake the reader for a ring-buffer record when it has not been woken for this long (user
/// space also drains on a timer). No byte threshold: at this machine's peak (~30 MB/s over
/// all rings) 5 ms fill well under 1 MiB, and asking the ring how full it is costs a helper
/// call per record.
const WAKEUP_NS: u64 = 5_000_000;
/// The same for slot-ring records, which also wake the reader when a ring passes a
/// sixteenth full (the fill is known there for free). Fewer, larger batches: at peak
/// churn 20 ms instead of 5 ms took ~0.4 points off the CPU cost (fewer wakeups and
/// context switches on CPUs that are all busy), and 20 ms is still below what a person
/// reading the output notices.
const SLOT_WAKEUP_NS: u64 = 20_000_000;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// One record's content, as scalars: addresses as two native-endian u64 halves of their
/// 16 network-order bytes.
#[derive(Clone, Copy)]
pub(crate) struct Fields {
    pub(crate) ts_ns: u64,
    pub(crate) skaddr: u64,
    pub(crate) saddr: (u64, u64),
    pub(crate) daddr: (u64, u64),
    pub(crate) netns: u32,
    pub(crate) tgid: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) family: u16,
    pub(crate) kind: u8,
    pub(crate) oldstate: u8,
    pub(crate) newstate: u8,
    pub(crate) comm: (u64, u64),
}

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not nest on one CPU (the kernel's recursion
        // guard skips a nested run instead), so nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Batched notification: waking the reader for every record costs a context switch per
/// record under load; waking it at most every `interval_ns` keeps latency low when quiet
/// and the cost flat when busy. True when this record should wake the reader.
#[inline(always)]
fn wakeup_due(now: u64, interval_ns: u64) -> bool {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: valid map value pointer; a racy read-modify-write is harmless here.
    unsafe {
        if now.wrapping_sub(*last) >= interval_ns {
            *last = now;
            true
        } else {
            false
        }
    }
}

/// One field store. Volatile, so that the compiler keeps the stores of a slot record in
/// order before the volatile store of the position that publishes it (the BPF backend
/// has no compiler fence).
#[inline(always)]
unsafe fn put<T>(base: *mut u8, offset: usize, value: T) {
    // SAFETY: the caller writes inside a record at a field's own offset.
    unsafe { write_volatile(base.add(offset) as *mut T, value) }
}

/// The ring buffer CPU `cpu` writes to.
#[inline(always)]
fn ring_of(cpu: u32) -> u32 {
    cpu % RING_COUNT as u32
}

/// Copies a record into ring buffer `ring` and commits it: one helper call, where
/// reserving in place and submitting takes two (each call and return goes through the
/// kernel's mitigation thunks). Each ring is named in its own branch: map pointers must be
/// constants the verifier can see.
#[inline(always)]
fn ring_output<T>(ring: u32, record: &T, flags: u64) -> Result<(), i32> {
    macro_rules! on {
        ($map:ident) => {
            $map.output::<T>(record, flags)
        };
    }
    match ring {
        0 => on!(EVENTS0),
        1 => on!(EVENTS1),
        2 => on!(EVENTS2),
        3 => on!(EVENTS3),
        4 => on!(EVENTS4),
        5 => on!(EVENTS5),
        6 => on!(EVENTS6),
        _ => on!(EVENTS7),
    }
}

/// Sends a finished record through this CPU's ring buffer, counting it.
#[inline(always)]
fn output<T>(record: &T, now: u64) {
    // SAFETY: helper without preconditions.
    let ring = ring_of(unsafe { bpf_get_smp_processor_id() });
    let flags = if wakeup_due(now, WAKEUP_NS) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    bump(if ring_output(ring, record, flags).is_ok() {
        counter::SUBMITTED
    } else {
        counter::RINGBUF_FULL
    });
}

/// Writes a state transition into this CPU's slot ring, or into its ring buffer when
/// there are no slot rings.
#[inline(always)]
pub(crate) fn submit_state(f: &Fields) {
    let shift = SLOTS_SHIFT.load();
    if shift == 0 {
        submit(f);
        return;
    }
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(cursor) = STATE_CURSORS.get_ptr_mut(cpu) else {
        submit(f);
        return;
    };
    let short = is_short(f);
    let needed: u64 = if short { 1 } else { 2 };
    // SAFETY: `cursor` and the slots are map value pointers. This program is the ring's
    // only writer (see tcpmon_common::Slot); user space only ever writes `consumed`, and
    // reads a slot only below the `produced` published after the slot was written.
    let filled_before = unsafe {
        let produced = read_volatile(&(*cursor).produced);
        let consumed = read_volatile(&(*cursor).consumed);
        let filled = produced.wrapping_sub(consumed);
        if filled + needed > 1u64 << shift {
            bump(counter::RINGBUF_FULL);
            return;
        }
        // Below max_entries: user space sizes the map as possible CPUs << shift.
        let first = cpu << shift;
        let mask = (1u32 << shift) - 1;
        let Some(head) = STATE_SLOTS.get_ptr_mut(first | (produced as u32 & mask)) else {
            submit(f);
            return;
        };
        let head = head as *mut u8;
        // Volatile stores stay in program order, and x86 (TSO) makes them visible in
        // that order: the record is whole before the position that shows it.
        if short {
            write_short(head, f);
            put(head, SLOT_HEAD_BYTES, slot_tag::SHORT);
        } else {
            let next = first | ((produced as u32 + 1) & mask);
            let Some(tail) = STATE_SLOTS.get_ptr_mut(next) else {
                submit(f);
                return;
            };
            write_full(head, tail as *mut u8, f);
            put(head, SLOT_HEAD_BYTES, slot_tag::FULL);
        }
        write_volatile(&mut (*cursor).produced, produced + needed);
        filled
    };
    bump(counter::SUBMITTED);
    let ring = ring_of(cpu);
    // Once per crossing of a sixteenth of the ring, so that a small ring is read before
    // it fills (at peak churn a 4096-slot ring fills in ~13 ms; woken at a quarter, a
    // reader competing with busy CPUs still lost 2 % there, at a sixteenth as little as
    // with 5 ms doorbells). A default-sized ring reaches the mark only if the reader
    // stalls.
    let mark = (1u64 << shift) >> 4;
    let crossed_mark = filled_before < mark && filled_before + needed >= mark;
    if wakeup_due(f.ts_ns, SLOT_WAKEUP_NS) || crossed_mark {
        // A lost doorbell only delays the read to user space's next timed drain.
        let _ = ring_output(ring, &f.ts_ns, BPF_RB_FORCE_WAKEUP);
    }
}

/// The short record form fits: IPv4 without a task, the commonest case.
#[inline(always)]
fn is_short(f: &Fields) -> bool {
    f.family == AF_INET && f.tgid == 0
}

/// Writes the record (every byte, padding included) into a ring buffer and commits it.
#[inline(always)]
pub(crate) fn submit(f: &Fields) {
    if is_short(f) {
        let mut record = MaybeUninit::<ShortEvent>::uninit();
        // SAFETY: every byte of the record is written before it is read.
        unsafe {
            write_short(record.as_mut_ptr() as *mut u8, f);
            output(record.assume_init_ref(), f.ts_ns);
        }
    } else {
        let mut record = MaybeUninit::<SockEvent>::uninit();
        let p = record.as_mut_ptr() as *mut u8;
        // SAFETY: as above; the tail follows the head.
        unsafe {
            write_full(p, p.add(SLOT_HEAD_BYTES), f);
            output(record.assume_init_ref(), f.ts_ns);
        }
    }
}

/// Writes every byte of a `ShortEvent` (padding included) at `p`.
#[inline(always)]
unsafe fn write_short(p: *mut u8, f: &Fields) {
    // SAFETY: the caller passes room for a ShortEvent; these are its fields' offsets. The
    // IPv4 address is the low 4 bytes of the first address half (native order = memory
    // order).
    unsafe {
        put(p, offset_of!(ShortEvent, ts_ns), f.ts_ns);
        put(p, offset_of!(ShortEvent, skaddr), f.skaddr);
        put(p, offset_of!(ShortEvent, saddr), f.saddr.0 as u32);
        put(p, offset_of!(ShortEvent, daddr), f.daddr.0 as u32);
        put(p, offset_of!(ShortEvent, netns), f.netns);
        put(p, offset_of!(ShortEvent, sport), f.sport);
        put(p, offset_of!(ShortEvent, dport), f.dport);
        put(p, offset_of!(ShortEvent, family), f.family);
        put(p, offset_of!(ShortEvent, kind), f.kind);
        put(p, offset_of!(ShortEvent, oldstate), f.oldstate);
        put(p, offset_of!(ShortEvent, newstate), f.newstate);
        put(p, offset_of!(ShortEvent, _pad1), 0u8);
        put(p, offset_of!(ShortEvent, _pad2), 0u16);
    }
}

/// Writes every byte of a `SockEvent` (padding included): its first SLOT_HEAD_BYTES at
/// `head`, the rest at `tail`.
#[inline(always)]
unsafe fn write_full(head: *mut u8, tail: *mut u8, f: &Fields) {
    macro_rules! field {
        ($offset:expr, $value:expr) => {{
            let offset = $offset;
            // SAFETY: the caller passes room for the head and the tail; the offsets are
            // SockEvent's own, constants, so this branch folds away.
            unsafe {
                if offset < SLOT_HEAD_BYTES {
                    put(head, offset, $value)
                } else {
                    put(tail, offset - SLOT_HEAD_BYTES, $value)
                }
            }
        }};
    }
    field!(offset_of!(SockEvent, ts_ns), f.ts_ns);
    field!(offset_of!(SockEvent, skaddr), f.skaddr);
    field!(offset_of!(SockEvent, saddr), f.saddr.0);
    field!(offset_of!(SockEvent, saddr) + 8, f.saddr.1);
    field!(offset_of!(SockEvent, daddr), f.daddr.0);
    field!(offset_of!(SockEvent, daddr) + 8, f.daddr.1);
    field!(offset_of!(SockEvent, netns), f.netns);
    field!(offset_of!(SockEvent, tgid), f.tgid);
    field!(offset_of!(SockEvent, sport), f.sport);
    field!(offset_of!(SockEvent, dport), f.dport);
    field!(offset_of!(SockEvent, family), f.family);
    field!(offset_of!(SockEvent, kind), f.kind);
    field!(offset_of!(SockEvent, oldstate), f.oldstate);
    field!(offset_of!(SockEvent, newstate), f.newstate);
    field!(offset_of!(SockEvent, _pad1), 0u8);
    field!(offset_of!(SockEvent, _pad2), 0u16);
    field!(offset_of!(SockEvent, _pad4), 0u32);
    field!(offset_of!(SockEvent, comm), f.comm.0);
    field!(offset_of!(SockEvent, comm) + 8, f.comm.1);
}
