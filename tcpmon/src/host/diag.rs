//! Netlink sock_diag queries: the one thing /proc/net/tcp cannot say about a listener is
//! its backlog limit (it prints the send queue, 0, where sock_diag reports
//! sk_max_ack_backlog), so listeners get their backlog from here.
use std::{collections::HashMap, io, net::IpAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::model::{canonical_ip, HalfOpen, HalfOpenCounter};

/// A listener's queues as sock_diag reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerQueues {
    /// listen()'s backlog, capped by net.core.somaxconn.
    pub backlog: u32,
    /// Connections completed and waiting for accept().
    pub accept_queue: u32,
    /// Packets the listener dropped since it was made (its `sk_drops`: SYNs and ACKs
    /// turned away because the accept queue was full, mostly); `None` when the kernel
    /// did not say.
    pub drops: Option<u64>,
}

/// Backlogs of every listening TCP socket in this process's network namespace, by inode.
pub fn listener_queues() -> io::Result<HashMap<u64, ListenerQueues>> {
    let mut queues = HashMap::new();
    dump_states(StateFlags::LISTEN, ExtensionFlags::empty(), |r| {
        let h = &r.header;
        queues.insert(
            u64::from(h.inode),
            ListenerQueues {
                backlog: h.send_queue,
                accept_queue: h.recv_queue,
                drops: None,
            },
        );
    })?;
    Ok(queues)
}

/// Listeners by (canonical address, port) with their queues: for the live engine, which
/// knows listeners by address rather than inode. SO_REUSEPORT listeners on one address
/// add up.
pub fn listener_queues_by_address() -> io::Result<HashMap<(IpAddr, u16), ListenerQueues>> {
    let mut out: HashMap<(IpAddr, u16), ListenerQueues> = HashMap::new();
    dump_states(StateFlags::LISTEN, ExtensionFlags::SKMEMINFO, |r| {
        let h = &r.header;
        let key = (
            canonical_ip(h.socket_id.source_address),
            h.socket_id.source_port,
        );
        let q = out.entry(key).or_insert(ListenerQueues {
            backlog: 0,
            accept_queue: 0,
            drops: None,
        });
        q.backlog += h.send_queue;
        q.accept_queue += h.recv_queue;
        let drops = r.nlas.iter().find_map(|nla| match nla {
            Nla::MemInfo(m) => Some(u64::from(m.drops)),
            _ => None,
        });
        if let Some(n) = drops {
            q.drops = Some(q.drops.unwrap_or(0) + n);
        }
    })?;
    Ok(out)
}

/// Half-open request sockets per local (address, port), with distinct sources: cheap,
/// because the kernel filters by state and formats nothing.
pub fn half_open() -> io::Result<HashMap<(IpAddr, u16), HalfOpen>> {
    let mut counters: HashMap<(IpAddr, u16), HalfOpenCounter> = HashMap::new();
    // inet_diag widens SYN_RECV to include request sockets (TCP_NEW_SYN_RECV).
    dump_states(StateFlags::SYN_RECV, ExtensionFlags::empty(), |r| {
        let h = &r.header;
        counters
            .entry((
                canonical_ip(h.socket_id.source_address),
                h.socket_id.source_port,
            ))
            .or_default()
            .add(h.socket_id.destination_address);
    })?;
    Ok(counters
        .into_iter()
        .map(|(k, counter)| (k, counter.finish()))
        .collect())
}

fn dump_states(
    states: StateFlags,
    extensions: ExtensionFlags,
    mut each: impl FnMut(&InetResponse),
) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    for (family, socket_id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: extensions.clone(),
                states: states.clone(),
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        socket.send(&buf, 0)?;
        dump(&socket, &mut each)?;
    }
    Ok(())
}

fn dump(socket: &Socket, each: &mut impl FnMut(&InetResponse)) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..size])
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}"))
                })?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    each(&response)
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(io::Error::other(super::sock_diag::refusal(code)));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_our_listeners_backlog() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // std listens with a backlog of 128 (capped by somaxconn).
        let port = listener.local_addr().unwrap().port();
        let snapshot = crate::snapshot::Snapshot::read(&crate::host::ProcRoot::host()).unwrap();
        let inode = snapshot
            .rows()
            .filter_map(|r| r.socket.ok())
            .find(|s| s.local_port == port && s.state == crate::model::TcpState::Listen)
            .unwrap()
            .inode;
        let queues = listener_queues().expect("sock_diag works without privileges");
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            queues[&inode],
            ListenerQueues {
                backlog: 128.min(somaxconn),
                accept_queue: 0,
                drops: None,
            }
        );
    }
}
