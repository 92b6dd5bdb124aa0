//! The network-namespace filter: which namespace a socket belongs to (offsets from BTF,
//! set by the loader) and whether its events are wanted.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::map, maps::Array, EbpfContext, Global};
use aya_log_ebpf::warn;
use tcpmon_common::counter;

use crate::maps::bump;

/// The `struct net` address of TARGET_NETNS, learned from the first socket seen in it (the
/// namespace outlives tcpmon's watch of it, so the address cannot be reused meanwhile).
#[map(name = "TARGET_NET")]
static TARGET_NET: Array<u64> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
pub(crate) static TARGET_NETNS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SK_NET_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static NET_INUM_OFFSET: Global<u32> = Global::new(0);
/// Netns cookie to keep in the SYN-arrival program (0 keeps every namespace): cgroup
/// programs have bpf_get_netns_cookie() but no struct offsets.
#[unsafe(no_mangle)]
pub(crate) static TARGET_NETNS_COOKIE: Global<u64> = Global::new(0);

/// Reads `sk->__sk_common.skc_net.net->ns.inum` with offsets user space found in BTF.
#[inline(always)]
pub(crate) fn netns_of(skaddr: u64) -> u32 {
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
pub(crate) fn inum_of(net: u64) -> u32 {
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
pub(crate) fn wanted<C: EbpfContext>(ctx: &C, skaddr: u64, netns: u32) -> Option<u32> {
    if netns == 0 && SK_NET_OFFSET.load() != 0 {
        warn!(ctx, "tcpmon: could not read netns of sock {:x}", skaddr);
    }
    netns_filter(netns)
}

/// The namespace filter and its counters, without a log line.
#[inline(always)]
pub(crate) fn netns_filter(netns: u32) -> Option<u32> {
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
