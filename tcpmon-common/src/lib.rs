//! Types shared by tcpmon's kernel program and its user space.
//!
//! Everything here is `#[repr(C)]`, fixed-width and free of implicit padding, so the
//! bytes the kernel writes into the ring buffer are exactly the bytes user space reads.
#![no_std]

/// Kinds of record carried in the ring buffer (`SockEvent::kind`).
pub mod kind {
    /// sock:inet_sock_set_state: a TCP socket changed state.
    pub const STATE: u8 = 1;
    /// tcp:tcp_retransmit_synack: a listener retransmitted a SYN-ACK for a request socket.
    pub const SYNACK_RETRANSMIT: u8 = 2;
    /// A SYN reached a listener (cgroup skb ingress), whether it got a request socket or
    /// a SYN cookie.
    pub const SYN_REQUEST: u8 = 3;
    /// tcp:tcp_retransmit_skb: a packet was sent again; `oldstate` and `newstate` hold
    /// how many segments it stands for (low and high byte; 0 when unknown, read as 1),
    /// and `tgid` the connection's segments sent in all (`tcp_sock.segs_out`, 0 when
    /// unknown).
    pub const RETRANSMIT: u8 = 4;
    /// tcp:tcp_send_reset: a reset was sent (local is the sender); `oldstate` and
    /// `newstate` hold its reason (`enum sk_rst_reason`) plus one, 0 when unknown.
    pub const RESET_SENT: u8 = 5;
    /// tcp:tcp_receive_reset: a connection was reset by its peer.
    pub const RESET_RECEIVED: u8 = 6;
    /// skb:kfree_skb of a TCP packet: the kernel dropped it; `oldstate` and `newstate`
    /// hold the reason (`enum skb_drop_reason`, low and high byte). `saddr`/`sport` are
    /// the packet's source, `daddr`/`dport` its destination.
    pub const DROP: u8 = 7;
}

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// One record in the ring buffer: a state transition, a SYN-ACK retransmit or a new
/// half-open request, always with the socket's 4-tuple.
///
/// Ports are in host byte order. For IPv4, the address is in the first 4 bytes of
/// `saddr`/`daddr` in network order; for IPv6 all 16 bytes are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEvent {
    /// bpf_ktime_get_ns(): CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket: identifies it while it lives.
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Inode of the socket's network namespace (0 when it could not be read).
    pub netns: u32,
    /// Thread group id and name of the current task. Only meaningful for transitions the
    /// kernel makes inside a system call; in softirq they name whichever task was
    /// interrupted (the tracepoint does not say which context it ran in).
    pub tgid: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// One of [`kind`].
    pub kind: u8,
    /// Kernel TCP state numbers (1 = ESTABLISHED ... 12 = NEW_SYN_RECV).
    pub oldstate: u8,
    pub newstate: u8,
    /// Explicit so the layout has no implicit padding (three stores, no memset).
    pub _pad1: u8,
    pub _pad2: u16,
    pub _pad4: u32,
    pub comm: [u8; 16],
}

/// The ring-buffer record size; user space rejects any other length.
pub const SOCK_EVENT_SIZE: usize = 88;
const _: () = assert!(core::mem::size_of::<SockEvent>() == SOCK_EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<SockEvent>() == 8);
const _: () = assert!(core::mem::offset_of!(SockEvent, comm) == 72);

impl SockEvent {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            skaddr: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            netns: 0,
            tgid: 0,
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            oldstate: 0,
            newstate: 0,
            _pad1: 0,
            _pad2: 0,
            _pad4: 0,
            comm: [0; 16],
        }
    }

    /// The raw bytes of this record, as the kernel writes them.
    pub fn as_bytes(&self) -> &[u8; SOCK_EVENT_SIZE] {
        // SAFETY: SockEvent is repr(C), SOCK_EVENT_SIZE bytes (asserted above) and has no
        // padding, so every byte is initialised.
        unsafe { &*(self as *const Self as *const [u8; SOCK_EVENT_SIZE]) }
    }

    /// Decodes a record of either size (a [`ShortEvent`] is widened); `None` for any
    /// other length. Inlined (user space is another crate) so that the record is built
    /// where the caller keeps it.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        // SAFETY: the lengths are checked; every bit pattern is valid for both types
        // (integers and byte arrays only); read_unaligned because ring-buffer data is
        // only 8-aligned by convention, not by type.
        match bytes.len() {
            SOCK_EVENT_SIZE => {
                Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
            }
            SHORT_EVENT_SIZE => Some(
                unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const ShortEvent) }.widen(),
            ),
            _ => None,
        }
    }

    /// The record made of these 11 words (its memory, 8 bytes at a time). Built from
    /// whole words, the record is stored whole: one built field by field and then
    /// copied stalls on store forwarding.
    #[inline]
    pub fn from_words(words: [u64; SOCK_EVENT_SIZE / 8]) -> Self {
        // SAFETY: same size and alignment; every bit pattern is a valid SockEvent.
        unsafe { core::mem::transmute(words) }
    }
}

const _: () = assert!(SOCK_EVENT_SIZE.is_multiple_of(8) && SHORT_EVENT_SIZE.is_multiple_of(8));

/// The record of the commonest case, an IPv4 record without a task (every transition
/// outside a system call): 40 bytes instead of 88, which with the ring's 8-byte header
/// stays within one cache line. Measured on the state program: 135 ns per run instead
/// of 178. User space widens it into a [`SockEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortEvent {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub _pad1: u8,
    pub _pad2: u16,
}

pub const SHORT_EVENT_SIZE: usize = 40;
const _: () = assert!(core::mem::size_of::<ShortEvent>() == SHORT_EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<ShortEvent>() == 8);

impl ShortEvent {
    /// The full record this one stands for (no task, IPv4 addresses in the first bytes).
    #[inline]
    pub fn widen(&self) -> SockEvent {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: same size and alignment; plain integers.
            let words: [u64; SHORT_EVENT_SIZE / 8] = unsafe { core::mem::transmute(*self) };
            SockEvent::from_words(Self::widen_words(words))
        }
        #[cfg(not(target_endian = "little"))]
        self.widen_by_fields()
    }

    /// `widen` on the records' words, for a little-endian host: each full-record word
    /// gathered from the short one's (see both layouts).
    #[cfg(target_endian = "little")]
    #[inline]
    fn widen_words(short: [u64; SHORT_EVENT_SIZE / 8]) -> [u64; SOCK_EVENT_SIZE / 8] {
        const LOW32: u64 = 0xffff_ffff;
        let [ts_ns, skaddr, addrs, netns_ports, rest] = short;
        [
            ts_ns,
            skaddr,
            addrs & LOW32,                              // saddr[0..4]
            0,                                          // saddr[8..16]
            addrs >> 32,                                // daddr[0..4]
            0,                                          // daddr[8..16]
            netns_ports & LOW32,                        // netns, tgid 0
            (netns_ports >> 32) | (rest & LOW32) << 32, // ports, family, kind, oldstate
            (rest >> 32) & 0xff,                        // newstate, padding
            0,                                          // comm
            0,
        ]
    }

    /// `widen`, field by field (any byte order).
    pub fn widen_by_fields(&self) -> SockEvent {
        let mut full = SockEvent::zeroed();
        full.ts_ns = self.ts_ns;
        full.skaddr = self.skaddr;
        full.saddr[..4].copy_from_slice(&self.saddr);
        full.daddr[..4].copy_from_slice(&self.daddr);
        full.netns = self.netns;
        full.sport = self.sport;
        full.dport = self.dport;
        full.family = self.family;
        full.kind = self.kind;
        full.oldstate = self.oldstate;
        full.newstate = self.newstate;
        full
    }

    /// The short form of `full`, when it has one: IPv4, no task, nothing past the IPv4
    /// address bytes.
    pub fn narrow(full: &SockEvent) -> Option<Self> {
        let fits = full.family == AF_INET
            && full.tgid == 0
            && full.comm == [0; 16]
            && full.saddr[4..] == [0; 12]
            && full.daddr[4..] == [0; 12];
        fits.then(|| Self {
            ts_ns: full.ts_ns,
            skaddr: full.skaddr,
            saddr: [full.saddr[0], full.saddr[1], full.saddr[2], full.saddr[3]],
            daddr: [full.daddr[0], full.daddr[1], full.daddr[2], full.daddr[3]],
            netns: full.netns,
            sport: full.sport,
            dport: full.dport,
            family: full.family,
            kind: full.kind,
            oldstate: full.oldstate,
            newstate: full.newstate,
            _pad1: 0,
            _pad2: 0,
        })
    }

    pub fn as_bytes(&self) -> &[u8; SHORT_EVENT_SIZE] {
        // SAFETY: repr(C), SHORT_EVENT_SIZE bytes (asserted above), no padding.
        unsafe { &*(self as *const Self as *const [u8; SHORT_EVENT_SIZE]) }
    }
}

/// Transitions the kernel only makes inside a system call of the socket's owner
/// (listen(), connect(), close()/shutdown()), numbered as the kernel numbers states. Only
/// these carry a pid and command: elsewhere the current task is whoever was interrupted.
pub const fn made_by_syscall(old: u8, new: u8) -> bool {
    const ESTABLISHED: u8 = 1;
    const SYN_SENT: u8 = 2;
    const FIN_WAIT1: u8 = 4;
    const CLOSE: u8 = 7;
    const CLOSE_WAIT: u8 = 8;
    const LAST_ACK: u8 = 9;
    const LISTEN: u8 = 10;
    matches!(
        (old, new),
        (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (CLOSE, SYN_SENT)
            | (ESTABLISHED, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

/// Indexes into the per-CPU `COUNTERS` array the kernel program keeps.
pub mod counter {
    /// Records committed to a ring buffer or slot ring.
    pub const SUBMITTED: u32 = 0;
    /// Records lost because their ring buffer or slot ring was full.
    pub const RINGBUF_FULL: u32 = 1;
    /// Records whose netns could not be read (sent with netns 0).
    pub const NETNS_UNREADABLE: u32 = 2;
    /// Records filtered out because they belong to another network namespace.
    pub const OTHER_NETNS: u32 = 3;
    /// Transitions dropped because the socket itself could not be read (raw tracepoint).
    pub const SOCK_UNREADABLE: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Names shared by the kernel object and the loader.
pub mod names {
    /// The ring buffers, one per CPU (modulo [`RING_COUNT`](super::RING_COUNT)).
    pub const EVENTS_MAPS: [&str; super::RING_COUNT] = [
        "EVENTS0", "EVENTS1", "EVENTS2", "EVENTS3", "EVENTS4", "EVENTS5", "EVENTS6", "EVENTS7",
    ];
    pub const COUNTERS_MAP: &str = "COUNTERS";
    /// The per-CPU slot rings of state transitions, and their positions.
    pub const STATE_SLOTS_MAP: &str = "STATE_SLOTS";
    pub const STATE_CURSORS_MAP: &str = "STATE_CURSORS";
    /// Global: log2 of the slots per CPU (0: no slot rings, transitions use the ring
    /// buffers).
    pub const SLOTS_SHIFT: &str = "SLOTS_SHIFT";
    pub const STATE_PROGRAM: &str = "inet_sock_set_state";
    /// The same program on the raw tracepoint (preferred: no perf trace record).
    pub const RAW_STATE_PROGRAM: &str = "inet_sock_set_state_raw";
    pub const BTF_STATE_PROGRAM: &str = "inet_sock_set_state_btf";
    /// Globals: `struct sock` offsets the raw program reads (from BTF).
    pub const SK_PROTOCOL_OFFSET: &str = "SK_PROTOCOL_OFFSET";
    pub const INET_SADDR_OFFSET: &str = "INET_SADDR_OFFSET";
    pub const INET_SPORT_OFFSET: &str = "INET_SPORT_OFFSET";
    /// Global: netns inode to keep (0 keeps every namespace).
    pub const TARGET_NETNS: &str = "TARGET_NETNS";
    /// Global: offset of `__sk_common.skc_net` in `struct sock` (0: unknown).
    pub const SK_NET_OFFSET: &str = "SK_NET_OFFSET";
    /// Global: offset of `ns.inum` in `struct net`.
    pub const NET_INUM_OFFSET: &str = "NET_INUM_OFFSET";
    /// Global: netns cookie the SYN-arrival program keeps (0 keeps every namespace).
    pub const TARGET_NETNS_COOKIE: &str = "TARGET_NETNS_COOKIE";
    pub const SYN_PROGRAM: &str = "syn_arrival";
    pub const SYNACK_PROGRAM: &str = "tcp_retransmit_synack";
    pub const RETRANSMIT_PROGRAM: &str = "tcp_retransmit_skb";
    pub const SEND_RESET_PROGRAM: &str = "tcp_send_reset";
    pub const RECEIVE_RESET_PROGRAM: &str = "tcp_receive_reset";
    /// Globals: `sk_buff.dev` and `net_device.nd_net.net` (from BTF; 0: unknown).
    pub const SKB_DEV_OFFSET: &str = "SKB_DEV_OFFSET";
    pub const DEV_NET_OFFSET: &str = "DEV_NET_OFFSET";
    /// Globals: `sk_buff.cb` and `tcp_skb_cb.tcp_gso_segs` (from BTF; 0: unknown).
    pub const SKB_CB_OFFSET: &str = "SKB_CB_OFFSET";
    pub const GSO_SEGS_OFFSET: &str = "GSO_SEGS_OFFSET";
    /// Global: `tcp_sock.segs_out` (from BTF; 0: unknown).
    pub const SEGS_OUT_OFFSET: &str = "SEGS_OUT_OFFSET";
    /// Global: offset of `err` in tcp:tcp_retransmit_skb's record (0: no such field).
    pub const RETRANSMIT_ERR_OFFSET: &str = "RETRANSMIT_ERR_OFFSET";
    pub const DROP_PROGRAM: &str = "kfree_skb";
    /// Global: offset of `reason` in tcp:tcp_send_reset's record (0: no such field).
    pub const SEND_RESET_REASON_OFFSET: &str = "SEND_RESET_REASON_OFFSET";
    /// Globals: `sk_buff.head` and `sk_buff.network_header` (from BTF; 0: unknown).
    pub const SKB_HEAD_OFFSET: &str = "SKB_HEAD_OFFSET";
    pub const SKB_NETWORK_HEADER_OFFSET: &str = "SKB_NETWORK_HEADER_OFFSET";
}

/// Where the failure programs read their classic tracepoints' records, as this kernel's
/// format files give them; the loader checks each (name, offset) against the running
/// kernel's format file before attaching.
pub mod tracepoints {
    /// tcp:tcp_retransmit_skb
    pub mod retransmit_skb {
        pub const SKBADDR: usize = 8;
        pub const SKADDR: usize = 16;
        pub const SPORT: usize = 28;
        pub const DPORT: usize = 30;
        pub const FAMILY: usize = 32;
        pub const SADDR: usize = 34;
        pub const DADDR: usize = 38;
        pub const SADDR_V6: usize = 42;
        pub const DADDR_V6: usize = 58;
        pub const FIELDS: [(&str, usize); 9] = [
            ("skbaddr", SKBADDR),
            ("skaddr", SKADDR),
            ("sport", SPORT),
            ("dport", DPORT),
            ("family", FAMILY),
            ("saddr", SADDR),
            ("daddr", DADDR),
            ("saddr_v6", SADDR_V6),
            ("daddr_v6", DADDR_V6),
        ];
    }

    /// tcp:tcp_receive_reset
    pub mod receive_reset {
        pub const SKADDR: usize = 8;
        pub const SPORT: usize = 16;
        pub const DPORT: usize = 18;
        pub const FAMILY: usize = 20;
        pub const SADDR: usize = 22;
        pub const DADDR: usize = 26;
        pub const SADDR_V6: usize = 30;
        pub const DADDR_V6: usize = 46;
        pub const FIELDS: [(&str, usize); 8] = [
            ("skaddr", SKADDR),
            ("sport", SPORT),
            ("dport", DPORT),
            ("family", FAMILY),
            ("saddr", SADDR),
            ("daddr", DADDR),
            ("saddr_v6", SADDR_V6),
            ("daddr_v6", DADDR_V6),
        ];
    }

    /// skb:kfree_skb
    pub mod kfree_skb {
        pub const SKBADDR: usize = 8;
        pub const PROTOCOL: usize = 32;
        pub const REASON: usize = 36;
        pub const FIELDS: [(&str, usize); 3] = [
            ("skbaddr", SKBADDR),
            ("protocol", PROTOCOL),
            ("reason", REASON),
        ];
    }

    /// tcp:tcp_send_reset: the sender's and the receiver's `struct sockaddr_in6` (or
    /// `_in`), 28 bytes each.
    pub mod send_reset {
        pub const SKBADDR: usize = 8;
        pub const SKADDR: usize = 16;
        pub const SADDR: usize = 32;
        pub const DADDR: usize = 60;
        pub const FIELDS: [(&str, usize); 4] = [
            ("skbaddr", SKBADDR),
            ("skaddr", SKADDR),
            ("saddr", SADDR),
            ("daddr", DADDR),
        ];
    }
}

/// Records go to ring buffer `cpu % RING_COUNT`. One ring shared by every CPU made each
/// record pay for a contended lock and producer position (measured: 240 ns per record
/// with two CPUs contending, 125 ns per CPU-local ring). User space puts the rings back
/// in timestamp order.
pub const RING_COUNT: usize = 8;

/// State transitions, the bulk of the records, do not go through the BPF ring buffers:
/// each CPU has its own ring of 48-byte slots in an mmapable array map (`STATE_SLOTS`),
/// with its positions in `STATE_CURSORS`. A CPU's ring has one writer, the state program
/// running on it (the kernel skips a run nested on the same CPU, and counts it as a
/// recursion miss), so writing needs no lock: fill the slots at `produced`, then publish
/// the new `produced`. Measured here, that costs ~40 ns a record where bpf_ringbuf_output
/// costs ~80 ns (an IRQ-saving spinlock, two calls through the mitigation thunks).
///
/// A `ShortEvent` takes one slot; a `SockEvent` two: its first [`SLOT_HEAD_BYTES`] in
/// the first slot, the rest in the next. The word at [`SLOT_HEAD_BYTES`] of a record's
/// first slot says which ([`slot_tag`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot(pub [u64; 6]);

pub const SLOT_SIZE: usize = 48;
/// Record bytes in a record's first slot; the tag follows.
pub const SLOT_HEAD_BYTES: usize = 40;
const _: () = assert!(core::mem::size_of::<Slot>() == SLOT_SIZE);
const _: () = assert!(SHORT_EVENT_SIZE == SLOT_HEAD_BYTES);
const _: () = assert!(SOCK_EVENT_SIZE - SLOT_HEAD_BYTES <= SLOT_SIZE);

/// What a record's first slot holds.
pub mod slot_tag {
    pub const SHORT: u64 = 1;
    pub const FULL: u64 = 2;
}

/// The positions of one CPU's slot ring, in slots: the kernel writes `produced`, user
/// space `consumed`; each on its own cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCursor {
    pub produced: u64,
    pub _pad1: [u64; 7],
    pub consumed: u64,
    pub _pad2: [u64; 7],
}

pub const SLOT_CURSOR_SIZE: usize = 128;
const _: () = assert!(core::mem::size_of::<SlotCursor>() == SLOT_CURSOR_SIZE);
const _: () = assert!(core::mem::offset_of!(SlotCursor, consumed) == 64);

/// `BPF_F_MMAPABLE`: the slot maps are read by user space through mmap.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Fewest slots a CPU's ring gets, whatever the budget.
pub const MIN_SLOTS_PER_CPU: u32 = 64;

/// A ring buffer record of this size carries no event: the state program sends one to
/// wake the reader when the slot rings have news (at most every few milliseconds).
pub const DOORBELL_SIZE: usize = 8;

/// Default ring memory (slot rings and ring buffers together). 16 MiB of ring buffer held
/// every event of a ~400k transitions/s loopback churn on the reference machine where
/// 256 KiB dropped some (KERNEL_FACTS.md), but here a reader kept off the CPU for ~0.6 s
/// overflowed 2 x 128 Ki slots once in 10 minutes of ~620k/s: 28 MiB gives two CPUs
/// 2 x 256 Ki slots (~0.8 s each at that rate) and 2 x 1 MiB of ring buffer, which
/// (mapped twice) still stays under the 32 MiB of mapping the 16 MiB of ring buffer took.
pub const DEFAULT_RING_BYTES: u32 = 28 << 20;

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding, every bit pattern valid.
unsafe impl aya::Pod for SockEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ShortEvent {}
