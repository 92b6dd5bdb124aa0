//! Why connections fail: segments retransmitted, resets sent and resets received (classic
//! tracepoints), each a record with the connection's addresses. The field offsets are
//! those of this kernel's format files; the loader checks them before attaching.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
    Global,
};
use tcpmon_common::{
    kind,
    tracepoints::{kfree_skb, receive_reset, retransmit_skb, send_reset},
    AF_INET, AF_INET6,
};

use crate::{
    maps::{submit, Fields},
    netns::{inum_of, wanted},
    state::{field, wanted_netns},
};

/// `sk_buff.dev` and `net_device.nd_net.net`, from BTF: the namespace of a reset sent
/// without a socket (to a port nobody listens on), read through the packet's device.
#[unsafe(no_mangle)]
pub(crate) static SKB_DEV_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static DEV_NET_OFFSET: Global<u32> = Global::new(0);
/// `sk_buff.cb` and `tcp_skb_cb.tcp_gso_segs`, from BTF: how many segments a retransmitted
/// packet stands for, as the kernel adds them to RetransSegs.
#[unsafe(no_mangle)]
pub(crate) static SKB_CB_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static GSO_SEGS_OFFSET: Global<u32> = Global::new(0);
/// `tcp_sock.segs_out`, from BTF: the connection's segments sent in all, against which
/// user space judges what share it retransmits (0: unknown).
#[unsafe(no_mangle)]
pub(crate) static SEGS_OUT_OFFSET: Global<u32> = Global::new(0);
/// Offset of the record's `err` on kernels that trace failed retransmits too (0: the
/// field does not exist and every event went out). Only those that went out count, as
/// in RetransSegs.
#[unsafe(no_mangle)]
pub(crate) static RETRANSMIT_ERR_OFFSET: Global<u32> = Global::new(0);
/// Offset of the reset's `reason` in tcp:tcp_send_reset's record (0: this kernel's has
/// none).
#[unsafe(no_mangle)]
pub(crate) static SEND_RESET_REASON_OFFSET: Global<u32> = Global::new(0);

/// Addresses of a record in the common tracepoint layout (IPv4 at `v4`, IPv6 at `v6`).
#[inline(always)]
fn addresses(ctx: &TracePointContext, family: u16, v4: usize, v6: usize) -> (u64, u64) {
    // SAFETY: probe reads of offsets inside the record; a failure reads as zero.
    unsafe {
        if family == AF_INET {
            (u64::from(ctx.read_at::<u32>(v4).unwrap_or(0)), 0)
        } else {
            (
                ctx.read_at::<u64>(v6).unwrap_or(0),
                ctx.read_at::<u64>(v6 + 8).unwrap_or(0),
            )
        }
    }
}

#[inline(always)]
fn record(
    kind: u8,
    skaddr: u64,
    netns: u32,
    family: u16,
    ports: (u16, u16),
    addrs: [(u64, u64); 2],
    // How many (segments, or 1), and the connection's segments sent (0: none, unknown).
    (count, segs_out): (u16, u32),
) {
    submit(&Fields {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr,
        saddr: addrs[0],
        daddr: addrs[1],
        netns,
        tgid: segs_out,
        sport: ports.0,
        dport: ports.1,
        family,
        kind,
        oldstate: count as u8,
        newstate: (count >> 8) as u8,
        comm: (0, 0),
    });
}

/// `tcp_sk(sk)->segs_out`, 0 when it cannot be read.
#[inline(always)]
fn segs_out_of(skaddr: u64) -> u32 {
    let offset = SEGS_OUT_OFFSET.load();
    if skaddr == 0 || offset == 0 {
        return 0;
    }
    // SAFETY: probe reads tolerate any address.
    unsafe { bpf_probe_read_kernel((skaddr + u64::from(offset)) as *const u32) }.unwrap_or(0)
}

/// `TCP_SKB_CB(skb)->tcp_gso_segs`, 0 when it cannot be read.
#[inline(always)]
fn segments_of(skbaddr: u64) -> u16 {
    let (cb, segs) = (SKB_CB_OFFSET.load(), GSO_SEGS_OFFSET.load());
    if skbaddr == 0 || cb == 0 {
        return 0;
    }
    // SAFETY: probe reads tolerate any address.
    unsafe { bpf_probe_read_kernel((skbaddr + u64::from(cb) + u64::from(segs)) as *const u16) }
        .unwrap_or(0)
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    use retransmit_skb as f;
    // SAFETY: aligned offsets inside the record, from the format file.
    let (skbaddr, skaddr, sport, dport, family): (u64, u64, u16, u16, u16) = unsafe {
        (
            field(&ctx, f::SKBADDR),
            field(&ctx, f::SKADDR),
            field(&ctx, f::SPORT),
            field(&ctx, f::DPORT),
            field(&ctx, f::FAMILY),
        )
    };
    let err_offset = RETRANSMIT_ERR_OFFSET.load();
    // SAFETY: a probe read inside the record; a failure reads as "went out".
    if err_offset != 0 && unsafe { ctx.read_at::<i32>(err_offset as usize) }.unwrap_or(0) != 0 {
        return 0;
    }
    let Some(netns) = wanted_netns(&ctx, skaddr) else {
        return 0;
    };
    let saddr = addresses(&ctx, family, f::SADDR, f::SADDR_V6);
    let daddr = addresses(&ctx, family, f::DADDR, f::DADDR_V6);
    record(
        kind::RETRANSMIT,
        skaddr,
        netns,
        family,
        (sport, dport),
        [saddr, daddr],
        (segments_of(skbaddr), segs_out_of(skaddr)),
    );
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    use receive_reset as f;
    // SAFETY: aligned offsets inside the record, from the format file.
    let (skaddr, sport, dport, family): (u64, u16, u16, u16) = unsafe {
        (
            field(&ctx, f::SKADDR),
            field(&ctx, f::SPORT),
            field(&ctx, f::DPORT),
            field(&ctx, f::FAMILY),
        )
    };
    let Some(netns) = wanted_netns(&ctx, skaddr) else {
        return 0;
    };
    let saddr = addresses(&ctx, family, f::SADDR, f::SADDR_V6);
    let daddr = addresses(&ctx, family, f::DADDR, f::DADDR_V6);
    record(
        kind::RESET_RECEIVED,
        skaddr,
        netns,
        family,
        (sport, dport),
        [saddr, daddr],
        (1, 0),
    );
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    use send_reset as f;
    // SAFETY: aligned offsets inside the record, from the format file.
    let (skbaddr, skaddr): (u64, u64) =
        unsafe { (field(&ctx, f::SKBADDR), field(&ctx, f::SKADDR)) };
    let netns = if skaddr != 0 {
        crate::netns::netns_of(skaddr)
    } else {
        netns_of_skb(skbaddr)
    };
    let Some(netns) = wanted(&ctx, skaddr, netns) else {
        return 0;
    };
    // SAFETY: aligned offsets inside the record; the addresses are probe reads.
    let (family, sport, dport): (u16, u16, u16) = unsafe {
        (
            field(&ctx, f::SADDR),
            u16::from_be(field(&ctx, f::SADDR + 2)),
            u16::from_be(field(&ctx, f::DADDR + 2)),
        )
    };
    // sockaddr_in: the address at 4; sockaddr_in6: at 8.
    let saddr = addresses(&ctx, family, f::SADDR + 4, f::SADDR + 8);
    let daddr = addresses(&ctx, family, f::DADDR + 4, f::DADDR + 8);
    let reason_offset = SEND_RESET_REASON_OFFSET.load();
    let reason = if reason_offset == 0 {
        0
    } else {
        // SAFETY: a probe read inside the record.
        unsafe { ctx.read_at::<u32>(reason_offset as usize) }
            .map_or(0, |r| (r as u16).saturating_add(1))
    };
    record(
        kind::RESET_SENT,
        skaddr,
        netns,
        family,
        (sport, dport),
        [saddr, daddr],
        (reason, 0),
    );
    0
}

/// `skb->dev->nd_net.net->ns.inum`, 0 when any step cannot be read.
#[inline(always)]
fn netns_of_skb(skbaddr: u64) -> u32 {
    let (dev_offset, net_offset) = (SKB_DEV_OFFSET.load(), DEV_NET_OFFSET.load());
    if skbaddr == 0 || dev_offset == 0 || net_offset == 0 {
        return 0;
    }
    // SAFETY: probe reads tolerate any address.
    let dev = unsafe { bpf_probe_read_kernel((skbaddr + u64::from(dev_offset)) as *const u64) };
    let Ok(dev) = dev else { return 0 };
    if dev == 0 {
        return 0;
    }
    // SAFETY: as above.
    match unsafe { bpf_probe_read_kernel((dev + u64::from(net_offset)) as *const u64) } {
        Ok(net) => inum_of(net),
        Err(_) => 0,
    }
}

/// `sk_buff.head` and `sk_buff.network_header`, from BTF: where a dropped packet's IP
/// header is (0: unknown, and drops are not watched).
#[unsafe(no_mangle)]
pub(crate) static SKB_HEAD_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SKB_NETWORK_HEADER_OFFSET: Global<u32> = Global::new(0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

/// A TCP packet the kernel dropped, with its reason. Every other protocol is left at
/// the first check.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    use kfree_skb as f;
    // SAFETY: aligned offsets inside the record, from the format file.
    let (skbaddr, protocol, reason): (u64, u16, u32) = unsafe {
        (
            field(&ctx, f::SKBADDR),
            field(&ctx, f::PROTOCOL),
            field(&ctx, f::REASON),
        )
    };
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return 0;
    }
    let _ = dropped_tcp(skbaddr, protocol == ETH_P_IPV6, reason);
    0
}

#[inline(always)]
fn dropped_tcp(skbaddr: u64, v6: bool, reason: u32) -> Option<()> {
    let (head_offset, nh_offset) = (SKB_HEAD_OFFSET.load(), SKB_NETWORK_HEADER_OFFSET.load());
    if head_offset == 0 || nh_offset == 0 {
        return None;
    }
    // SAFETY: probe reads tolerate any address; a failure ends the check.
    unsafe {
        let head: u64 =
            bpf_probe_read_kernel((skbaddr + u64::from(head_offset)) as *const u64).ok()?;
        let nh: u16 = bpf_probe_read_kernel((skbaddr + u64::from(nh_offset)) as *const u16).ok()?;
        if head == 0 || nh == u16::MAX {
            return None;
        }
        let ip = head + u64::from(nh);
        let read_u8 = |at: u64| bpf_probe_read_kernel(at as *const u8).ok();
        let read_u64 = |at: u64| bpf_probe_read_kernel(at as *const u64).ok();
        let (family, saddr, daddr, tcp) = if v6 {
            if read_u8(ip + 6)? != IPPROTO_TCP {
                return None;
            }
            (
                AF_INET6,
                (read_u64(ip + 8)?, read_u64(ip + 16)?),
                (read_u64(ip + 24)?, read_u64(ip + 32)?),
                ip + 40,
            )
        } else {
            let version_ihl = read_u8(ip)?;
            if read_u8(ip + 9)? != IPPROTO_TCP {
                return None;
            }
            let src = bpf_probe_read_kernel((ip + 12) as *const u32).ok()?;
            let dst = bpf_probe_read_kernel((ip + 16) as *const u32).ok()?;
            (
                AF_INET,
                (u64::from(src), 0),
                (u64::from(dst), 0),
                ip + u64::from(version_ihl & 0x0f) * 4,
            )
        };
        let sport = u16::from_be(bpf_probe_read_kernel(tcp as *const u16).ok()?);
        let dport = u16::from_be(bpf_probe_read_kernel((tcp + 2) as *const u16).ok()?);
        // A packet without a device (built locally and dropped early) has no namespace
        // here: counted as unreadable, never logged (drops come in floods).
        let netns = crate::netns::netns_filter(netns_of_skb(skbaddr))?;
        record(
            kind::DROP,
            0,
            netns,
            family,
            (sport, dport),
            [saddr, daddr],
            (reason as u16, 0),
        );
    }
    Some(())
}
