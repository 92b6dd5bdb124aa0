//! The SYN hooks: SYN-ACK retransmits of half-open requests (a classic tracepoint) and
//! SYN arrivals at listeners (cgroup skb ingress), which no state change shows.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_ktime_get_ns, bpf_sk_fullsock},
    macros::{cgroup_skb, tracepoint},
    programs::{SkBuffContext, TracePointContext},
};
use tcpmon_common::{counter, kind, AF_INET, AF_INET6};

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

/// TCP_LISTEN in `struct bpf_sock`'s state.
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// SYN set, ACK clear: a connection request.
const TCP_SYN: u8 = 0x02;
const TCP_SYN_ACK_MASK: u8 = 0x12;

/// One record per SYN that reaches a listener, whatever the kernel does with it next: a
/// request socket, a SYN cookie (the default once a SYN queue fills, which creates no
/// socket), or a drop. A cgroup `skb` ingress program on the root cgroup runs for every
/// packet delivered to a socket, before TCP looks at it, so it is attached only while
/// SYN trouble is suspected; it returns "allow" for everything.
#[cgroup_skb(ingress)]
pub fn syn_arrival(ctx: SkBuffContext) -> i32 {
    // SAFETY: the context is the kernel's __sk_buff for this packet.
    unsafe { count_syn(&ctx) };
    1
}

/// # Safety
/// `ctx` is a cgroup skb program's context.
#[inline(always)]
unsafe fn count_syn(ctx: &SkBuffContext) -> Option<()> {
    let skb = ctx.skb.skb;
    // SAFETY: the socket the packet is delivered to, possibly a request or timewait
    // socket (the verifier wants it checked for null first): only a full socket is
    // looked at.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket pointer from the context.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a full socket the helper vouched for.
    let (state, protocol) = unsafe { ((*sk).state, (*sk).protocol) };
    if state != TCP_LISTEN || protocol != IPPROTO_TCP {
        return None;
    }
    let target = TARGET_NETNS_COOKIE.load();
    // SAFETY: helper allowed for cgroup skb programs.
    if target != 0 && unsafe { bpf_get_netns_cookie(skb.cast()) } != target {
        bump(counter::OTHER_NETNS);
        return None;
    }
    // The packet from its network header; its family may differ from the listener's (an
    // IPv4 SYN to a dual-stack [::] listener).
    // SAFETY: a field of the context.
    let ether_type = u16::from_be(unsafe { (*skb).protocol } as u16);
    let (family, saddr, daddr, tcp) = match ether_type {
        ETH_P_IP => {
            let version_ihl: u8 = ctx.load(0).ok()?;
            let ip_protocol: u8 = ctx.load(9).ok()?;
            if ip_protocol != 6 {
                return None;
            }
            let src: u32 = ctx.load(12).ok()?;
            let dst: u32 = ctx.load(16).ok()?;
            (
                AF_INET,
                (u64::from(src), 0),
                (u64::from(dst), 0),
                usize::from(version_ihl & 0x0f) * 4,
            )
        }
        ETH_P_IPV6 => {
            let next_header: u8 = ctx.load(6).ok()?;
            if next_header != 6 {
                return None;
            }
            (
                AF_INET6,
                (ctx.load::<u64>(8).ok()?, ctx.load::<u64>(16).ok()?),
                (ctx.load::<u64>(24).ok()?, ctx.load::<u64>(32).ok()?),
                40,
            )
        }
        _ => return None,
    };
    let flags: u8 = ctx.load(tcp + 13).ok()?;
    if flags & TCP_SYN_ACK_MASK != TCP_SYN {
        return None;
    }
    let sport: u16 = ctx.load(tcp).ok()?;
    let dport: u16 = ctx.load(tcp + 2).ok()?;
    submit(&Fields {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: 0,
        // The request as the listener sees it: local is where the SYN went.
        saddr: daddr,
        daddr: saddr,
        netns: 0,
        tgid: 0,
        sport: u16::from_be(dport),
        dport: u16::from_be(sport),
        family,
        kind: kind::SYN_REQUEST,
        oldstate: 0,
        newstate: 0,
        comm: (0, 0),
    });
    Some(())
}
