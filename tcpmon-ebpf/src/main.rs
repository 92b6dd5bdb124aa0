//! tcpmon's kernel side: attach points only. Each program filters, fills one
//! `SockEvent` and submits it; every loss is counted in `COUNTERS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{map, sock_ops, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{SockOpsContext, TracePointContext},
    Global,
};
use aya_log_ebpf::warn;
use tcpmon_common::{counter, kind, SockEvent, AF_INET, DEFAULT_RING_BYTES, IPPROTO_TCP};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

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

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not nest on one CPU (the kernel's recursion
        // guard skips a nested run instead), so nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Reads `sk->__sk_common.skc_net.net->ns.inum` with offsets user space found in BTF.
#[inline(always)]
fn netns_of(skaddr: u64) -> u32 {
    let sk_net = SK_NET_OFFSET.load();
    if sk_net == 0 {
        return 0;
    }
    // SAFETY: probe reads tolerate any address; a failure yields an error, not a fault.
    let net: u64 =
        match unsafe { bpf_probe_read_kernel((skaddr + u64::from(sk_net)) as *const u64) } {
            Ok(net) => net,
            Err(_) => return 0,
        };
    let inum = NET_INUM_OFFSET.load();
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((net + u64::from(inum)) as *const u32) }.unwrap_or(0)
}

/// Applies the namespace filter; `None` drops the event.
#[inline(always)]
fn wanted_netns(ctx: &TracePointContext, skaddr: u64) -> Option<u32> {
    let netns = netns_of(skaddr);
    if netns == 0 {
        bump(counter::NETNS_UNREADABLE);
        if SK_NET_OFFSET.load() != 0 {
            warn!(ctx, "tcpmon: could not read netns of sock {:x}", skaddr);
        }
    }
    let target = TARGET_NETNS.load();
    if target != 0 && netns != target {
        bump(counter::OTHER_NETNS);
        return None;
    }
    Some(netns)
}

/// Direct (aligned) read of a tracepoint record field; the verifier allows it for
/// offsets inside the record.
#[inline(always)]
unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: the caller passes an aligned offset inside the record, from the format file.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

/// An IPv4 address (network order, as loaded) in the first 4 bytes of a 16-byte field.
#[inline(always)]
fn widen_v4(addr: u32) -> [u8; 16] {
    let b = addr.to_ne_bytes();
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// A 16-byte address read as two aligned 8-byte loads: a byte-wise copy would walk a
/// modified context pointer, which the verifier refuses.
#[inline(always)]
unsafe fn v6_at(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    // SAFETY: the caller passes an 8-aligned offset of a 16-byte field of the record.
    let (lo, hi) = unsafe { (field::<u64>(ctx, offset), field::<u64>(ctx, offset + 8)) };
    let (a, b) = (lo.to_ne_bytes(), hi.to_ne_bytes());
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ]
}

/// Wake the reader when this much is waiting...
const WAKEUP_BYTES: u64 = 1 << 20;
/// ...or when it has not been woken for this long (user space also drains on a timer).
const WAKEUP_NS: u64 = 5_000_000;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// When the reader was last woken (one slot, shared by every CPU; races only shift a
/// wakeup by one event).
#[map(name = "LAST_WAKEUP")]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Batched notification: waking the reader for every record costs a context switch per
/// event under load; waking it per megabyte or every 5 ms keeps latency low when quiet
/// and cost flat when busy.
#[inline(always)]
fn wakeup_flags(now: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: valid map value pointer; a racy read-modify-write is harmless here.
    unsafe {
        if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES || now.wrapping_sub(*last) >= WAKEUP_NS {
            *last = now;
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        }
    }
}

#[inline(always)]
fn submit(fill: impl FnOnce(&mut SockEvent)) {
    match EVENTS.reserve::<SockEvent>(0) {
        Some(mut entry) => {
            let event = entry.write(SockEvent::zeroed());
            fill(event);
            let flags = wakeup_flags(event.ts_ns);
            entry.submit(flags);
            bump(counter::SUBMITTED);
        }
        None => bump(counter::RINGBUF_FULL),
    }
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
        let oldstate: i32 = field(&ctx, f::OLDSTATE);
        let newstate: i32 = field(&ctx, f::NEWSTATE);
        let sport: u16 = field(&ctx, f::SPORT);
        let dport: u16 = field(&ctx, f::DPORT);
        let (saddr, daddr) = if family == AF_INET {
            (
                widen_v4(field::<u32>(&ctx, f::SADDR)),
                widen_v4(field::<u32>(&ctx, f::DADDR)),
            )
        } else {
            (v6_at(&ctx, f::SADDR_V6), v6_at(&ctx, f::DADDR_V6))
        };
        submit(|e| {
            e.ts_ns = bpf_ktime_get_ns();
            e.skaddr = skaddr;
            e.saddr = saddr;
            e.daddr = daddr;
            e.netns = netns;
            e.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            e.sport = sport;
            e.dport = dport;
            e.family = family;
            e.kind = kind::STATE;
            e.oldstate = oldstate as u8;
            e.newstate = newstate as u8;
            e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
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
        let sport: u16 = field(&ctx, f::SPORT);
        let dport: u16 = field(&ctx, f::DPORT);
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            saddr[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(f::SADDR).unwrap_or([0; 4]));
            daddr[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(f::DADDR).unwrap_or([0; 4]));
        } else {
            saddr = ctx.read_at::<[u8; 16]>(f::SADDR_V6).unwrap_or([0; 16]);
            daddr = ctx.read_at::<[u8; 16]>(f::DADDR_V6).unwrap_or([0; 16]);
        }
        submit(|e| {
            e.ts_ns = bpf_ktime_get_ns();
            e.skaddr = skaddr;
            e.saddr = saddr;
            e.daddr = daddr;
            e.netns = netns;
            e.sport = sport;
            e.dport = dport;
            e.family = family;
            e.kind = kind::SYNACK_RETRANSMIT;
        });
    }
    0
}

/// BPF_SOCK_OPS_TIMEOUT_INIT: the kernel asks for a SYN-ACK timeout when it creates a
/// request socket for an incoming SYN (and for its own SYN on connect, a full socket).
const SOCK_OPS_TIMEOUT_INIT: u32 = 1;

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
        (widen_v4(ctx.local_ip4()), widen_v4(ctx.remote_ip4()))
    } else {
        // SAFETY: constant-offset reads of the context; one volatile load per word,
        // because a copied array would walk a modified context pointer (refused).
        unsafe {
            let ops = ctx.ops;
            let word = |p: *const u32| core::ptr::read_volatile(p);
            let local = [
                word(&(*ops).local_ip6[0]),
                word(&(*ops).local_ip6[1]),
                word(&(*ops).local_ip6[2]),
                word(&(*ops).local_ip6[3]),
            ];
            let remote = [
                word(&(*ops).remote_ip6[0]),
                word(&(*ops).remote_ip6[1]),
                word(&(*ops).remote_ip6[2]),
                word(&(*ops).remote_ip6[3]),
            ];
            (v6_words(local), v6_words(remote))
        }
    };
    let sport = ctx.local_port() as u16;
    // remote_port holds the network-order port shifted into the upper half (little endian).
    let dport = u16::from_be((ctx.remote_port() >> 16) as u16);
    submit(|e| {
        // SAFETY: helper without preconditions.
        e.ts_ns = unsafe { bpf_ktime_get_ns() };
        e.saddr = saddr;
        e.daddr = daddr;
        e.sport = sport;
        e.dport = dport;
        e.family = family;
        e.kind = kind::SYN_REQUEST;
    });
    1
}

/// Four network-order 32-bit words as 16 address bytes.
#[inline(always)]
fn v6_words(words: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        words[0].to_ne_bytes(),
        words[1].to_ne_bytes(),
        words[2].to_ne_bytes(),
        words[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
