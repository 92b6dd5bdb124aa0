//! The SYN hooks: SYN-ACK retransmits of half-open requests (a classic tracepoint) and
//! SYN arrivals that created a request socket (cgroup sock_ops), which no state change
//! shows.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_ktime_get_ns},
    macros::{sock_ops, tracepoint},
    programs::{SockOpsContext, TracePointContext},
};
use tcpmon_common::{counter, kind, AF_INET};

use crate::{
    maps::{bump, submit, Fields},
    netns::TARGET_NETNS_COOKIE,
    state::{field, wanted_netns},
};

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

/// BPF_SOCK_OPS_TIMEOUT_INIT: the kernel asks for a SYN-ACK timeout when it creates a
/// request socket for an incoming SYN (and for its own SYN on connect, a full socket).
const SOCK_OPS_TIMEOUT_INIT: u32 = 1;

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
