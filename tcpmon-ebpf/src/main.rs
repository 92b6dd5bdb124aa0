//! tcpmon's kernel side: attach points only. Each program filters, fills one record and
//! commits it: state changes into this CPU's slot ring (see tcpmon_common::Slot), the
//! rarer SYN records into this CPU's ring buffer; every loss is counted in `COUNTERS`.
//!
//! The hot path matters (it runs on every TCP state change of the machine): records are
//! written field by field straight into their slots, with no zeroing pass, no lock and
//! no helper call that the record does not need.
#![no_std]
#![no_main]

use core::{
    mem::{offset_of, MaybeUninit},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skc_to_tcp_sock,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, sock_ops, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, SockOpsContext, TracePointContext},
    EbpfContext, Global,
};
use aya_log_ebpf::warn;
use tcpmon_common::{
    counter, kind, made_by_syscall, slot_tag, ShortEvent, Slot, SlotCursor, SockEvent, AF_INET,
    BPF_F_MMAPABLE, DEFAULT_RING_BYTES, IPPROTO_TCP, RING_COUNT, SLOT_HEAD_BYTES,
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

/// The `struct net` address of TARGET_NETNS, learned from the first socket seen in it (the
/// namespace outlives tcpmon's watch of it, so the address cannot be reused meanwhile).
#[map(name = "TARGET_NET")]
static TARGET_NET: Array<u64> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static TARGET_NETNS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SK_NET_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static NET_INUM_OFFSET: Global<u32> = Global::new(0);
/// Netns cookie to keep in the sock_ops program (0 keeps every namespace): cgroup
/// programs have bpf_get_netns_cookie() but no struct offsets.
#[unsafe(no_mangle)]
static TARGET_NETNS_COOKIE: Global<u64> = Global::new(0);

/// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
mod set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// Field offsets from /sys/kernel/tracing/events/tcp/tcp_retransmit_synack/format.
mod retransmit_synack {
    pub const SKADDR: usize = 8;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const SADDR: usize = 30;
    pub const DADDR: usize = 34;
    pub const SADDR_V6: usize = 38;
    pub const DADDR_V6: usize = 54;
}

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

/// BPF_SOCK_OPS_TIMEOUT_INIT: the kernel asks for a SYN-ACK timeout when it creates a
/// request socket for an incoming SYN (and for its own SYN on connect, a full socket).
const SOCK_OPS_TIMEOUT_INIT: u32 = 1;

/// One record's content, as scalars: addresses as two native-endian u64 halves of their
/// 16 network-order bytes.
#[derive(Clone, Copy)]
struct Fields {
    ts_ns: u64,
    skaddr: u64,
    saddr: (u64, u64),
    daddr: (u64, u64),
    netns: u32,
    tgid: u32,
    sport: u16,
    dport: u16,
    family: u16,
    kind: u8,
    oldstate: u8,
    newstate: u8,
    comm: (u64, u64),
}

#[inline(always)]
fn bump(index: u32) {
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
fn submit_state(f: &Fields) {
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
fn submit(f: &Fields) {
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

/// Reads `sk->__sk_common.skc_net.net->ns.inum` with offsets user space found in BTF.
#[inline(always)]
fn netns_of(skaddr: u64) -> u32 {
    let sk_net = SK_NET_OFFSET.load();
    if sk_net == 0 {
        return 0;
    }
    // SAFETY: probe reads tolerate any address; a failure yields an error, not a fault.
    match unsafe { bpf_probe_read_kernel((skaddr + u64::from(sk_net)) as *const u64) } {
        Ok(net) => inum_of(net),
        Err(_) => 0,
    }
}

/// `net->ns.inum`. The target namespace's `struct net` address is remembered once seen,
/// so sockets of that namespace (the common case) cost no read here.
#[inline(always)]
fn inum_of(net: u64) -> u32 {
    if net == 0 {
        return 0;
    }
    let target = TARGET_NETNS.load();
    let cache = TARGET_NET.get_ptr_mut(0);
    if let Some(cache) = cache {
        // SAFETY: valid map value pointer.
        if target != 0 && unsafe { *cache } == net {
            return target;
        }
    }
    let inum_offset = NET_INUM_OFFSET.load();
    // SAFETY: probe reads tolerate any address.
    let inum =
        unsafe { bpf_probe_read_kernel((net + u64::from(inum_offset)) as *const u32) }.unwrap_or(0);
    if let Some(cache) = cache {
        if target != 0 && inum == target {
            // SAFETY: valid map value pointer; every writer stores the same value.
            unsafe { *cache = net };
        }
    }
    inum
}

/// Applies the namespace filter to an inode already read, logging an unreadable one;
/// `None` drops the event.
#[inline(always)]
fn wanted<C: EbpfContext>(ctx: &C, skaddr: u64, netns: u32) -> Option<u32> {
    if netns == 0 && SK_NET_OFFSET.load() != 0 {
        warn!(ctx, "tcpmon: could not read netns of sock {:x}", skaddr);
    }
    netns_filter(netns)
}

/// The namespace filter and its counters, without a log line.
#[inline(always)]
fn netns_filter(netns: u32) -> Option<u32> {
    if netns == 0 {
        bump(counter::NETNS_UNREADABLE);
    }
    let target = TARGET_NETNS.load();
    if target != 0 && netns != target {
        bump(counter::OTHER_NETNS);
        return None;
    }
    Some(netns)
}

#[inline(always)]
fn wanted_netns(ctx: &TracePointContext, skaddr: u64) -> Option<u32> {
    wanted(ctx, skaddr, netns_of(skaddr))
}

/// Direct (aligned) read of a tracepoint record field; the verifier allows it for
/// offsets inside the record (past the 8-byte common header).
#[inline(always)]
unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the caller passes an aligned offset inside the record, from the format file.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

/// The current task's name as two u64 halves.
#[inline(always)]
fn comm() -> (u64, u64) {
    let name = bpf_get_current_comm().unwrap_or([0; 16]);
    let p = name.as_ptr() as *const u64;
    // SAFETY: a 16-byte stack array read as two (unaligned) u64s.
    unsafe { (p.read_unaligned(), p.add(1).read_unaligned()) }
}

/// A state change as both state programs read it.
struct Transition {
    skaddr: u64,
    saddr: (u64, u64),
    daddr: (u64, u64),
    netns: u32,
    sport: u16,
    dport: u16,
    family: u16,
    oldstate: u8,
    newstate: u8,
}

/// Stamps and submits a state change. Only syscall transitions are attributed (see
/// tcpmon-common), so only they pay for the task lookups.
#[inline(always)]
fn submit_transition(t: Transition) {
    let (tgid, comm) = if made_by_syscall(t.oldstate, t.newstate) {
        ((bpf_get_current_pid_tgid() >> 32) as u32, comm())
    } else {
        (0, (0, 0))
    };
    submit_state(&Fields {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: t.skaddr,
        saddr: t.saddr,
        daddr: t.daddr,
        netns: t.netns,
        tgid,
        sport: t.sport,
        dport: t.dport,
        family: t.family,
        kind: kind::STATE,
        oldstate: t.oldstate,
        newstate: t.newstate,
        comm,
    });
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    use set_state as f;
    // SAFETY: every offset below comes from the tracepoint's format file and is aligned.
    unsafe {
        if field::<u16>(&ctx, f::PROTOCOL) != IPPROTO_TCP {
            return 0;
        }
        let skaddr: u64 = field(&ctx, f::SKADDR);
        let Some(netns) = wanted_netns(&ctx, skaddr) else {
            return 0;
        };
        let family: u16 = field(&ctx, f::FAMILY);
        let oldstate = field::<i32>(&ctx, f::OLDSTATE) as u8;
        let newstate = field::<i32>(&ctx, f::NEWSTATE) as u8;
        let (saddr, daddr) = if family == AF_INET {
            (
                (u64::from(field::<u32>(&ctx, f::SADDR)), 0),
                (u64::from(field::<u32>(&ctx, f::DADDR)), 0),
            )
        } else {
            (
                (field(&ctx, f::SADDR_V6), field(&ctx, f::SADDR_V6 + 8)),
                (field(&ctx, f::DADDR_V6), field(&ctx, f::DADDR_V6 + 8)),
            )
        };
        submit_transition(Transition {
            skaddr,
            saddr,
            daddr,
            netns,
            sport: field(&ctx, f::SPORT),
            dport: field(&ctx, f::DPORT),
            family,
            oldstate,
            newstate,
        });
    }
    0
}

/// `struct sock` offsets the raw program reads, from BTF.
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFFSET: Global<u32> = Global::new(0);
/// Offset of `inet_sock.inet_saddr`; `inet_sport` follows 6 bytes later (the loader
/// checks), so one 8-byte read yields both.
#[unsafe(no_mangle)]
static INET_SADDR_OFFSET: Global<u32> = Global::new(0);

/// The head of `struct sock_common` the raw program copies in one read. The loader
/// checks these offsets against the running kernel's BTF and attaches the classic
/// tracepoint instead when they differ.
mod sock_common {
    pub const LEN: usize = 88;
    pub const DADDR: usize = 0;
    pub const RCV_SADDR: usize = 4;
    pub const DPORT: usize = 12;
    pub const NUM: usize = 14;
    pub const FAMILY: usize = 16;
    pub const NET: usize = 48;
    pub const V6_DADDR: usize = 56;
    pub const V6_RCV_SADDR: usize = 72;
}

#[inline(always)]
fn head_field<T: Copy>(head: &[u64; sock_common::LEN / 8], offset: usize) -> T {
    // SAFETY: constant offsets inside the copied head, aligned for T.
    unsafe { core::ptr::read((head.as_ptr() as *const u8).add(offset) as *const T) }
}

/// The same records as `inet_sock_set_state`, from the raw tracepoint. The classic one
/// fills a perf trace record for every state change before the program runs; this one
/// is handed the socket and reads what it needs. Measured with a program that does
/// nothing: 2-4 points less connection-rate loss under max churn.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    use sock_common as c;
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let skaddr: u64 = ctx.arg(0);
    let oldstate = ctx.arg::<u64>(1) as u8;
    let newstate = ctx.arg::<u64>(2) as u8;
    // SAFETY: probe reads of kernel memory; a failure returns an error, never a fault.
    unsafe {
        let Ok(protocol) =
            bpf_probe_read_kernel((skaddr + u64::from(SK_PROTOCOL_OFFSET.load())) as *const u16)
        else {
            bump(counter::SOCK_UNREADABLE);
            return 0;
        };
        if protocol != IPPROTO_TCP {
            return 0;
        }
        let Ok(head) = bpf_probe_read_kernel(skaddr as *const [u64; c::LEN / 8]) else {
            bump(counter::SOCK_UNREADABLE);
            return 0;
        };
        let Some(netns) = wanted(&ctx, skaddr, inum_of(head_field(&head, c::NET))) else {
            return 0;
        };
        // inet_saddr (4 bytes), uc_ttl (2), inet_sport (2, network order). The source
        // port comes from inet_sport, as in the classic tracepoint: skc_num is already
        // 0 when a socket moves to CLOSE.
        let inet =
            bpf_probe_read_kernel((skaddr + u64::from(INET_SADDR_OFFSET.load())) as *const u64)
                .unwrap_or(0);
        let family: u16 = head_field(&head, c::FAMILY);
        let (saddr, daddr) = if family == AF_INET {
            (
                (inet & 0xffff_ffff, 0),
                (u64::from(head_field::<u32>(&head, c::DADDR)), 0),
            )
        } else {
            (
                (
                    head_field(&head, c::V6_RCV_SADDR),
                    head_field(&head, c::V6_RCV_SADDR + 8),
                ),
                (
                    head_field(&head, c::V6_DADDR),
                    head_field(&head, c::V6_DADDR + 8),
                ),
            )
        };
        submit_transition(Transition {
            skaddr,
            saddr,
            daddr,
            netns,
            sport: u16::from_be((inet >> 48) as u16),
            dport: u16::from_be(head_field::<u16>(&head, c::DPORT)),
            family,
            oldstate,
            newstate,
        });
    }
    0
}

/// A load from a BTF-typed kernel pointer at a constant offset. The verifier checks the
/// offset against the type and turns the load into a fault-tolerant one; volatile so that
/// LLVM neither merges neighbouring loads (a load spanning two members is refused) nor
/// moves them.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: the caller passes a BTF pointer and a member's offset and size.
    unsafe { core::ptr::read_volatile(base.add(offset) as *const T) }
}

/// The same records again, from the BTF tracepoint: the socket arrives as a typed
/// pointer, so fields are plain loads instead of bpf_probe_read_kernel calls.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    use sock_common as c;
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const u8 = ctx.arg(0);
    let oldstate = ctx.arg::<u64>(1) as u8;
    let newstate = ctx.arg::<u64>(2) as u8;
    // SAFETY: typed loads at offsets the loader checked against this kernel's BTF.
    unsafe {
        // Fields of struct sock are read in place; bpf_skc_to_tcp_sock, which would also
        // filter the protocol, costs a helper call (~25 ns here) on every run.
        if load::<u16>(sk, SK_PROTOCOL_OFFSET.load() as usize) != IPPROTO_TCP {
            return 0;
        }
        let net: *const u8 = load(sk, c::NET);
        let netns = if net.is_null() {
            0
        } else {
            load::<u32>(net, NET_INUM_OFFSET.load() as usize)
        };
        // A typed pointer: stored as is, never formatted (the verifier forbids
        // arithmetic on it), so no log line here; the counter still tells.
        let skaddr = sk as u64;
        let Some(netns) = netns_filter(netns) else {
            return 0;
        };
        let family: u16 = load(sk, c::FAMILY);
        // For TCP the bound source address (skc_rcv_saddr) is the source address the
        // classic tracepoint shows (inet_saddr): connect(), accept and bind set both.
        let (saddr, daddr) = if family == AF_INET {
            (
                (u64::from(load::<u32>(sk, c::RCV_SADDR)), 0),
                (u64::from(load::<u32>(sk, c::DADDR)), 0),
            )
        } else {
            (
                (load(sk, c::V6_RCV_SADDR), load(sk, c::V6_RCV_SADDR + 8)),
                (load(sk, c::V6_DADDR), load(sk, c::V6_DADDR + 8)),
            )
        };
        // skc_num is the local port, but 0 once a closing socket has given its port
        // back (inet_put_port runs before the move to CLOSE). Then inet_sport, as the
        // classic tracepoint reads it, past struct sock: only a tcp_sock pointer may.
        let num: u16 = load(sk, c::NUM);
        let sport = if num != 0 {
            num
        } else {
            let tcp = bpf_skc_to_tcp_sock(sk as *mut _) as *const u8;
            if tcp.is_null() {
                0
            } else {
                u16::from_be(load(tcp, INET_SADDR_OFFSET.load() as usize + 6))
            }
        };
        submit_transition(Transition {
            skaddr,
            saddr,
            daddr,
            netns,
            sport,
            dport: u16::from_be(load(sk, c::DPORT)),
            family,
            oldstate,
            newstate,
        });
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    use retransmit_synack as f;
    // SAFETY: offsets from the format file; the unaligned address fields go through
    // probe reads.
    unsafe {
        let skaddr: u64 = field(&ctx, f::SKADDR);
        let Some(netns) = wanted_netns(&ctx, skaddr) else {
            return 0;
        };
        let family: u16 = field(&ctx, f::FAMILY);
        let (saddr, daddr) = if family == AF_INET {
            (
                (u64::from(ctx.read_at::<u32>(f::SADDR).unwrap_or(0)), 0),
                (u64::from(ctx.read_at::<u32>(f::DADDR).unwrap_or(0)), 0),
            )
        } else {
            let pair = |off: usize| {
                (
                    ctx.read_at::<u64>(off).unwrap_or(0),
                    ctx.read_at::<u64>(off + 8).unwrap_or(0),
                )
            };
            (pair(f::SADDR_V6), pair(f::DADDR_V6))
        };
        submit(&Fields {
            ts_ns: bpf_ktime_get_ns(),
            skaddr,
            saddr,
            daddr,
            netns,
            tgid: 0,
            sport: field(&ctx, f::SPORT),
            dport: field(&ctx, f::DPORT),
            family,
            kind: kind::SYNACK_RETRANSMIT,
            oldstate: 0,
            newstate: 0,
            comm: (0, 0),
        });
    }
    0
}

/// One record per SYN that got a request socket: the SYN arrival rate and sources that
/// inet_sock_set_state never shows (request sockets have no state tracepoint).
#[sock_ops]
pub fn syn_request(ctx: SockOpsContext) -> u32 {
    // SAFETY: the context pointer is the kernel's bpf_sock_ops for this call.
    let is_fullsock = unsafe { (*ctx.ops).is_fullsock };
    if ctx.op() != SOCK_OPS_TIMEOUT_INIT || is_fullsock != 0 {
        return 1;
    }
    let target = TARGET_NETNS_COOKIE.load();
    // SAFETY: helper allowed for sock_ops programs (Linux >= 5.15).
    if target != 0 && unsafe { bpf_get_netns_cookie(ctx.ops.cast()) } != target {
        bump(counter::OTHER_NETNS);
        return 1;
    }
    let family = ctx.family() as u16;
    let (saddr, daddr) = if family == AF_INET {
        (
            (u64::from(ctx.local_ip4()), 0),
            (u64::from(ctx.remote_ip4()), 0),
        )
    } else {
        // SAFETY: constant-offset reads of the context, one volatile load per word: a
        // copied array would walk a modified context pointer, which the verifier refuses.
        unsafe {
            let ops = ctx.ops;
            let word = |p: *const u32| u64::from(core::ptr::read_volatile(p));
            (
                (
                    word(&(*ops).local_ip6[0]) | word(&(*ops).local_ip6[1]) << 32,
                    word(&(*ops).local_ip6[2]) | word(&(*ops).local_ip6[3]) << 32,
                ),
                (
                    word(&(*ops).remote_ip6[0]) | word(&(*ops).remote_ip6[1]) << 32,
                    word(&(*ops).remote_ip6[2]) | word(&(*ops).remote_ip6[3]) << 32,
                ),
            )
        }
    };
    submit(&Fields {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: 0,
        saddr,
        daddr,
        netns: 0,
        tgid: 0,
        sport: ctx.local_port() as u16,
        // remote_port holds the network-order port in its upper half (little endian).
        dport: u16::from_be((ctx.remote_port() >> 16) as u16),
        family,
        kind: kind::SYN_REQUEST,
        oldstate: 0,
        newstate: 0,
        comm: (0, 0),
    });
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
