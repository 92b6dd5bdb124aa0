//! Whole socket tables from netlink sock_diag (INET_DIAG dumps of AF_INET and AF_INET6):
//! what `ss` reads. Binary records instead of text the kernel formats and tcpmon parses
//! back, a state filter applied in the kernel, and `tcp_info` (RTT, retransmits, window)
//! for each connection when asked. Each record is decoded in place from the receive
//! buffer and handed to the caller, so a dump of a million sockets is never held.
use std::{io, net::IpAddr, os::fd::AsRawFd};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NlasIterator, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket as NetlinkSocket, SocketAddr};

use super::proc_net::Socket;
use crate::model::{Family, TcpState, USER_HZ};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_msg`: the fixed part of every record.
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
/// The receive buffer asked of the kernel: a dump chunk is at most 32 KiB, several may
/// queue while the reader works.
const RCVBUF: usize = 4 << 20;
/// What one recv can return.
const USER_BUF: usize = 1 << 20;

/// Which sockets to dump.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Kernel state bits (1 << state); SYN_RECV includes request sockets.
    pub states: u32,
    /// Ask for each connection's `tcp_info`.
    pub info: bool,
}

impl Request {
    /// Every state.
    pub const ALL: Self = Self {
        states: u32::MAX,
        info: false,
    };

    /// Only these states (none: every state).
    pub fn states(states: &[TcpState], info: bool) -> Self {
        if states.is_empty() {
            return Self { info, ..Self::ALL };
        }
        let mut bits = 0u32;
        for s in states {
            bits |= 1 << (*s as u32);
            // /proc calls request sockets SYN_RECV too; sock_diag files them under it.
            if *s == TcpState::NewSynRecv {
                bits |= 1 << (TcpState::SynRecv as u32);
            }
        }
        Self { states: bits, info }
    }
}

/// One socket of a dump.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub socket: Socket,
    /// A listener's backlog (sock_diag reports it where /proc prints 0).
    pub backlog: Option<u32>,
    /// The raw `struct tcp_info`, when asked for and sent (see [`TcpInfo::parse`]).
    pub info: Option<&'a [u8]>,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot open a sock_diag socket: {0}")]
    Open(io::Error),
    #[error("sock_diag: {0}")]
    Io(#[from] io::Error),
    #[error("{}", refusal(*.0))]
    Kernel(i32),
    #[error("sock_diag sent a malformed message: {0}")]
    Malformed(String),
    /// The tables changed in a way the kernel says spoils the dump (NLM_F_DUMP_INTR).
    #[error("the dump was interrupted by changes to the socket tables")]
    Interrupted,
}

/// What a dump cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub sockets: u64,
    pub bytes: u64,
    pub recvs: u64,
    /// Dump requests sent: 1 when the kernel dumps both families at once.
    pub requests: u32,
}

/// What a sock_diag refusal with errno `code` means, in words: the kernel's text, and
/// what to do about the commonest.
pub fn refusal(code: i32) -> String {
    let text = io::Error::from_raw_os_error(code);
    let hint = match code {
        libc::ENOENT => {
            ": this kernel has no TCP sock_diag (inet_diag and tcp_diag are modules: `modprobe tcp_diag`)"
        }
        libc::EPERM | libc::EACCES => ": not permitted here",
        _ => "",
    };
    format!("the kernel refused the sock_diag request ({text}){hint}")
}

/// Dumps every TCP socket of this thread's network namespace that `request` selects,
/// IPv4 then IPv6, calling `each` for every record in the order the kernel sends them.
pub fn dump(request: Request, each: impl FnMut(&Record<'_>)) -> Result<DumpStats, DumpError> {
    dump_with(request, true, each)
}

fn dump_with(
    request: Request,
    compat: bool,
    mut each: impl FnMut(&Record<'_>),
) -> Result<DumpStats, DumpError> {
    let mut socket = NetlinkSocket::new(NETLINK_SOCK_DIAG).map_err(DumpError::Open)?;
    socket.bind_auto().map_err(DumpError::Open)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(DumpError::Open)?;
    set_rcvbuf(&socket);
    let mut buf = vec![0u8; USER_BUF];
    let mut stats = DumpStats::default();
    // Each dump walks the kernel's whole established hash, whatever the family asked
    // for: the compat request (TCPDIAG_GETSOCK) dumps both families in one walk, which
    // halves the kernel's work. A kernel without it answers with an error before any
    // record, and then each family is asked for in turn.
    if compat {
        send_compat_request(&socket, request)?;
        stats.requests += 1;
        match receive(&socket, &mut buf, &mut stats, &mut each) {
            Ok(()) => return Ok(stats),
            Err(DumpError::Kernel(_)) if stats.sockets == 0 => {}
            Err(e) => return Err(e),
        }
    }
    for family in [AF_INET, AF_INET6] {
        send_request(&socket, family, request)?;
        stats.requests += 1;
        receive(&socket, &mut buf, &mut stats, &mut each)?;
    }
    Ok(stats)
}

fn receive(
    socket: &NetlinkSocket,
    buf: &mut [u8],
    stats: &mut DumpStats,
    each: &mut impl FnMut(&Record<'_>),
) -> Result<(), DumpError> {
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        stats.recvs += 1;
        stats.bytes += size as u64;
        if decode_chunk(&buf[..size], stats, each)? {
            return Ok(());
        }
    }
}

/// `struct inet_diag_req` under TCPDIAG_GETSOCK: the kernel dumps every family for it.
fn send_compat_request(socket: &NetlinkSocket, request: Request) -> Result<(), DumpError> {
    const REQ_LEN: usize = 60;
    let mut message = [0u8; 16 + REQ_LEN];
    message[0..4].copy_from_slice(&((16 + REQ_LEN) as u32).to_ne_bytes());
    message[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    message[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    let body = &mut message[16..];
    body[0] = AF_INET;
    body[3] = if request.info {
        1 << (INET_DIAG_INFO - 1)
    } else {
        0
    };
    // id: ports, addresses, interface and cookie all zero (any); the cookie's "none".
    body[44..48].copy_from_slice(&u32::MAX.to_ne_bytes());
    body[48..52].copy_from_slice(&u32::MAX.to_ne_bytes());
    body[52..56].copy_from_slice(&request.states.to_ne_bytes());
    socket.send(&message, 0)?;
    Ok(())
}

fn set_rcvbuf(socket: &NetlinkSocket) {
    let size = RCVBUF as libc::c_int;
    // SAFETY: a valid socket fd and an int option of the size passed. Failing leaves the
    // default buffer, which only means more, smaller reads.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn send_request(socket: &NetlinkSocket, family: u8, request: Request) -> Result<(), DumpError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: if request.info {
                ExtensionFlags::INFO
            } else {
                ExtensionFlags::empty()
            },
            states: StateFlags::from_bits_truncate(request.states),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    Ok(())
}

/// Decodes the messages of one receive; true at the end of the dump (NLMSG_DONE).
pub fn decode_chunk(
    chunk: &[u8],
    stats: &mut DumpStats,
    each: &mut impl FnMut(&Record<'_>),
) -> Result<bool, DumpError> {
    let mut offset = 0;
    while offset < chunk.len() {
        let message = NetlinkBuffer::new_checked(&chunk[offset..])
            .map_err(|e| DumpError::Malformed(e.to_string()))?;
        let length = message.length() as usize;
        if length < 16 {
            return Err(DumpError::Malformed(format!("a message of {length} bytes")));
        }
        if message.flags() & NLM_F_DUMP_INTR != 0 {
            return Err(DumpError::Interrupted);
        }
        match message.message_type() {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let payload = message.payload();
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-1);
                return Err(DumpError::Kernel(-code));
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                if let Some(record) = decode_record(message.payload())? {
                    stats.sockets += 1;
                    each(&record);
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        offset += (length + 3) & !3;
    }
    Ok(false)
}

/// One `inet_diag_msg` and its attributes; None for a state tcpmon does not know.
fn decode_record(payload: &[u8]) -> Result<Option<Record<'_>>, DumpError> {
    use netlink_packet_core::Parseable;
    let header =
        InetResponseHeader::parse(payload).map_err(|e| DumpError::Malformed(e.to_string()))?;
    let Ok(state) = TcpState::try_from(header.state) else {
        return Ok(None);
    };
    let family = if header.family == AF_INET6 {
        Family::Ipv6
    } else {
        Family::Ipv4
    };
    let raw = &payload[..INET_DIAG_MSG_LEN.min(payload.len())];
    // idiag_timer, idiag_retrans and idiag_expires (ms), read as /proc shows them.
    let timer = raw.get(2).copied().unwrap_or(0);
    let retransmits = raw.get(3).copied().unwrap_or(0);
    let expires_ms = raw
        .get(52..56)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    let id = &header.socket_id;
    let listening = state == TcpState::Listen;
    let socket = Socket {
        family,
        state,
        local_ip: id.source_address,
        local_port: id.source_port,
        remote_ip: remote_ip(id.destination_address, listening, family),
        remote_port: id.destination_port,
        // /proc prints 0 as a listener's send queue; sock_diag puts the backlog there.
        tx_queue: if listening { 0 } else { header.send_queue },
        rx_queue: header.recv_queue,
        timer,
        // /proc shows timers in clock ticks.
        timer_jiffies: i64::from(expires_ms) * USER_HZ as i64 / 1000,
        retransmits: u32::from(retransmits),
        uid: header.uid,
        inode: u64::from(header.inode),
    };
    let attributes = payload.get(INET_DIAG_MSG_LEN..).unwrap_or_default();
    let mut info = None;
    let mut at = 0;
    // Checked by the crate's iterator; the value is then taken from the same bytes,
    // because its view borrows from the iterator rather than from the buffer.
    for nla in NlasIterator::new(attributes) {
        let nla = nla.map_err(|e| DumpError::Malformed(e.to_string()))?;
        let length = usize::from(nla.length());
        if nla.kind() == INET_DIAG_INFO {
            info = attributes.get(at + 4..at + length);
        }
        at += (length + 3) & !3;
    }
    Ok(Some(Record {
        socket,
        backlog: listening.then_some(header.send_queue),
        info,
    }))
}

/// A listener's peer is the wildcard of its family.
fn remote_ip(ip: IpAddr, listening: bool, family: Family) -> IpAddr {
    match (listening, family) {
        (true, Family::Ipv4) => IpAddr::from([0, 0, 0, 0]),
        (true, Family::Ipv6) => IpAddr::from([0u16; 8]),
        _ => ip,
    }
}

/// What `tcp_info` says about one connection (the subset operators read in `ss -ti`).
/// Fields a kernel does not send (an older, shorter struct) are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TcpInfo {
    /// Smoothed round-trip time, and its variation, in ms.
    pub rtt_ms: f64,
    pub rttvar_ms: f64,
    pub min_rtt_ms: f64,
    /// Retransmissions of the oldest unacknowledged segment right now (RTO backoff).
    pub retransmits: u8,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Segments thought lost, and sent but not acknowledged, now.
    pub lost: u32,
    pub unacked: u32,
    /// Congestion window and slow-start threshold, in segments.
    pub snd_cwnd: u32,
    pub snd_ssthresh: u32,
    /// The peer's receive window, bytes (0: it is not reading).
    pub snd_wnd: u32,
    /// Bytes written but not sent yet.
    pub notsent_bytes: u32,
    pub segs_out: u32,
    pub segs_in: u32,
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_retrans: u64,
    /// Bytes a second.
    pub delivery_rate: u64,
    pub pacing_rate: u64,
    /// Time sending, and limited by the peer's receive window or by the send buffer, ms.
    pub busy_ms: u64,
    pub rwnd_limited_ms: u64,
    pub sndbuf_limited_ms: u64,
}

impl TcpInfo {
    /// Reads `struct tcp_info` (linux/tcp.h) as the kernel lays it out; a shorter struct
    /// leaves the fields it lacks at zero.
    pub fn parse(raw: &[u8]) -> Self {
        let u8_at = |at: usize| raw.get(at).copied().unwrap_or(0);
        let u32_at = |at: usize| {
            raw.get(at..at + 4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let u64_at = |at: usize| {
            raw.get(at..at + 8).map_or(0, |b| {
                u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            })
        };
        let ms = |us: u32| f64::from(us) / 1000.0;
        Self {
            retransmits: u8_at(2),
            unacked: u32_at(24),
            lost: u32_at(32),
            rtt_ms: ms(u32_at(68)),
            rttvar_ms: ms(u32_at(72)),
            snd_ssthresh: u32_at(76),
            snd_cwnd: u32_at(80),
            total_retrans: u32_at(100),
            pacing_rate: u64_at(104),
            bytes_acked: u64_at(120),
            bytes_received: u64_at(128),
            segs_out: u32_at(136),
            segs_in: u32_at(140),
            notsent_bytes: u32_at(144),
            min_rtt_ms: ms(u32_at(148)),
            delivery_rate: u64_at(160),
            busy_ms: u64_at(168) / 1000,
            rwnd_limited_ms: u64_at(176) / 1000,
            sndbuf_limited_ms: u64_at(184) / 1000,
            bytes_sent: u64_at(200),
            bytes_retrans: u64_at(208),
            snd_wnd: u32_at(228),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    #[test]
    fn a_dump_lists_what_proc_lists() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let v6_port = v6.local_addr().unwrap().port();
        let mut ours: BTreeMap<u64, Socket> = BTreeMap::new();
        let mut backlog = None;
        let mut saw_v6 = false;
        let stats = dump(Request::ALL, |r| {
            saw_v6 |= r.socket.local_port == v6_port && r.socket.family == Family::Ipv6;
            // Inode 0 (TIME_WAIT, requests) is someone else's socket that happens to use
            // the port: a busy host holds thousands.
            if (r.socket.local_port == port || r.socket.remote_port == port) && r.socket.inode != 0
            {
                ours.insert(r.socket.inode, r.socket);
                if r.socket.state == TcpState::Listen {
                    backlog = r.backlog;
                }
            }
        })
        .expect("sock_diag works without privileges");
        // Both families in one walk of the kernel's tables on this kernel.
        assert!(saw_v6);
        assert_eq!(stats.requests, 1);
        let snapshot = crate::snapshot::Snapshot::read(&crate::host::ProcRoot::host()).unwrap();
        let from_proc: BTreeMap<u64, Socket> = snapshot
            .sockets()
            .filter(|s| (s.local_port == port || s.remote_port == port) && s.inode != 0)
            .map(|s| (s.inode, s))
            .collect();
        assert_eq!(ours.len(), 3);
        for (inode, s) in &from_proc {
            let d = &ours[inode];
            assert_eq!(
                (
                    d.state,
                    d.local_ip,
                    d.local_port,
                    d.remote_ip,
                    d.remote_port,
                    d.uid
                ),
                (
                    s.state,
                    s.local_ip,
                    s.local_port,
                    s.remote_ip,
                    s.remote_port,
                    s.uid
                ),
                "inode {inode}"
            );
        }
        assert!(backlog.is_some_and(|b| b > 0));
        drop((client, server));
    }

    #[test]
    fn one_walk_and_a_walk_per_family_list_the_same_sockets() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let ports = [
            v4.local_addr().unwrap().port(),
            v6.local_addr().unwrap().port(),
        ];
        let listed = |compat: bool| {
            let mut found = Vec::new();
            let stats = dump_with(Request::states(&[TcpState::Listen], false), compat, |r| {
                if ports.contains(&r.socket.local_port) {
                    found.push((r.socket.family, r.socket.local_port, r.socket.inode));
                }
            })
            .unwrap();
            found.sort_unstable();
            (found, stats.requests)
        };
        let (one, requests) = listed(true);
        let (each, per_family) = listed(false);
        assert_eq!(one.len(), 2);
        assert_eq!(one, each);
        assert_eq!((requests, per_family), (1, 2));
    }

    #[test]
    fn the_state_filter_is_applied_by_the_kernel() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut states = Vec::new();
        dump(Request::states(&[TcpState::Listen], false), |r| {
            states.push(r.socket.state)
        })
        .unwrap();
        assert!(!states.is_empty());
        assert!(states.iter().all(|s| *s == TcpState::Listen), "{states:?}");
    }

    #[test]
    fn tcp_info_says_what_the_connection_did() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let payload = vec![7u8; 100_000];
        client.write_all(&payload).unwrap();
        let mut got = vec![0u8; payload.len()];
        server.read_exact(&mut got).unwrap();
        let client_port = client.local_addr().unwrap().port();
        let mut info = None;
        dump(Request::states(&[TcpState::Established], true), |r| {
            if r.socket.local_port == client_port && r.socket.remote_port == port {
                info = r.info.map(TcpInfo::parse);
            }
        })
        .unwrap();
        let info = info.expect("tcp_info for the connection");
        assert_eq!(info.bytes_acked, 100_000 + 1, "{info:?}");
        assert_eq!(info.bytes_sent, 100_000, "{info:?}");
        assert!(info.rtt_ms > 0.0 && info.rtt_ms < 1000.0, "{info:?}");
        assert!(
            info.min_rtt_ms > 0.0 && info.min_rtt_ms <= info.rtt_ms * 10.0,
            "{info:?}"
        );
        assert!(info.snd_cwnd >= 10, "{info:?}");
        assert!(info.segs_out > 2, "{info:?}");
        assert!(info.snd_wnd > 0, "{info:?}");
        assert_eq!(
            (info.unacked, info.total_retrans, info.retransmits),
            (0, 0, 0)
        );
        // A short struct (an old kernel) leaves the rest at zero.
        assert_eq!(TcpInfo::parse(&[0u8; 10]), TcpInfo::default());
    }

    #[test]
    fn malformed_chunks_are_errors_not_panics() {
        let mut stats = DumpStats::default();
        let mut each = |_: &Record<'_>| {};
        // A header claiming more bytes than there are.
        let mut chunk = vec![0u8; 20];
        chunk[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(decode_chunk(&chunk, &mut stats, &mut each).is_err());
        // A record too short for inet_diag_msg.
        let mut chunk = vec![0u8; 24];
        chunk[..4].copy_from_slice(&24u32.to_ne_bytes());
        chunk[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(decode_chunk(&chunk, &mut stats, &mut each).is_err());
        // An interrupted dump says so.
        let mut chunk = vec![0u8; 16];
        chunk[..4].copy_from_slice(&16u32.to_ne_bytes());
        chunk[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        chunk[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        assert!(matches!(
            decode_chunk(&chunk, &mut stats, &mut each),
            Err(DumpError::Interrupted)
        ));
        // An error message carries the kernel's code.
        let mut chunk = vec![0u8; 20];
        chunk[..4].copy_from_slice(&20u32.to_ne_bytes());
        chunk[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        chunk[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(matches!(
            decode_chunk(&chunk, &mut stats, &mut each),
            Err(DumpError::Kernel(1))
        ));
    }

    #[test]
    fn refusals_are_said_in_words() {
        // A kernel whose inet_diag and tcp_diag are modules not loaded answers ENOENT.
        assert_eq!(
            DumpError::Kernel(libc::ENOENT).to_string(),
            "the kernel refused the sock_diag request (No such file or directory (os error 2)): this kernel has no TCP sock_diag (inet_diag and tcp_diag are modules: `modprobe tcp_diag`)"
        );
        assert!(!refusal(libc::EINVAL).contains("ErrorMessage"));
    }
}
