//! User-side view of the kernel's [`SockEvent`] records: checked decoding from ring-buffer
//! bytes into typed values (addresses, states), and back for tests.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpmon_common::{kind, SockEvent, AF_INET, AF_INET6, SHORT_EVENT_SIZE, SOCK_EVENT_SIZE};

use crate::model::{Endpoints, Family, Task, TcpState, Transition};

/// What a ring-buffer record can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Transition(Transition),
    /// A listener retransmitted a SYN-ACK: a handshake is stuck (flood or lossy client).
    SynAckRetransmit(Endpoints),
    /// A SYN reached a listener (cgroup skb ingress), cookie or request socket.
    SynRequest(Endpoints),
    /// A connection's segments were sent again: how many, and the connection's segments
    /// sent in all when the kernel's layout let them be read.
    Retransmit(Endpoints, u32, Option<u32>),
    /// A reset was sent (local is the sender) or received: one each.
    Failure(Failure, Endpoints, u32),
    /// A reset was sent (local is the sender), with its reason (`enum sk_rst_reason`'s
    /// value on this kernel) when the kernel says it.
    ResetSent(Endpoints, Option<u16>),
    /// The kernel dropped a TCP packet: its source as `remote`, its destination as
    /// `local`, and the reason (`enum skb_drop_reason`'s value on this kernel).
    Drop(Endpoints, u16),
}

/// Why a connection is failing, as one kernel event says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    Retransmit,
    ResetSent,
    ResetReceived,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes (expected {SOCK_EVENT_SIZE} or {SHORT_EVENT_SIZE})")]
    Length(usize),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("ring buffer {0} holds a record header longer than the ring: it is no longer read")]
    RingHeader(usize),
    #[error("the slot ring of CPU {0} holds what no writer produces: it is no longer read")]
    SlotCorrupt(usize),
}

/// Decodes one ring-buffer record; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let raw = SockEvent::from_bytes(bytes).ok_or(DecodeError::Length(bytes.len()))?;
    decode_event(&raw)
}

/// Checks and types a record already cut to size. Inlined into the reader (another
/// crate): returned through memory, the record was copied out with wider loads than the
/// stores that built it, which stalled on store forwarding.
#[inline]
pub fn decode_event(raw: &SockEvent) -> Result<Record, DecodeError> {
    let family = match raw.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        other => return Err(DecodeError::Family(other)),
    };
    let ip = |octets: [u8; 16]| match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(octets)),
    };
    let at = Endpoints {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        netns: raw.netns,
        family,
        local_ip: ip(raw.saddr),
        local_port: raw.sport,
        remote_ip: ip(raw.daddr),
        remote_port: raw.dport,
    };
    match raw.kind {
        kind::STATE => {
            let state = |n: u8| TcpState::try_from(n).map_err(|_| DecodeError::State(n));
            let (old, new) = (state(raw.oldstate)?, state(raw.newstate)?);
            let task = Task {
                pid: raw.tgid,
                comm: raw.comm,
            };
            Ok(Record::Transition(Transition {
                at,
                old,
                new,
                task: task.attributable(old, new).then_some(task),
            }))
        }
        kind::SYNACK_RETRANSMIT => Ok(Record::SynAckRetransmit(at)),
        kind::SYN_REQUEST => Ok(Record::SynRequest(at)),
        kind::RETRANSMIT => {
            let segments = u32::from(raw.oldstate) | u32::from(raw.newstate) << 8;
            let sent = (raw.tgid != 0).then_some(raw.tgid);
            Ok(Record::Retransmit(at, segments.max(1), sent))
        }
        kind::RESET_SENT => {
            let coded = u16::from(raw.oldstate) | u16::from(raw.newstate) << 8;
            Ok(Record::ResetSent(at, coded.checked_sub(1)))
        }
        kind::RESET_RECEIVED => Ok(Record::Failure(Failure::ResetReceived, at, 1)),
        kind::DROP => {
            // The kernel writes the packet's source first: the other way round from a
            // socket's local-first records.
            let packet = Endpoints {
                local_ip: at.remote_ip,
                local_port: at.remote_port,
                remote_ip: at.local_ip,
                remote_port: at.local_port,
                ..at
            };
            Ok(Record::Drop(
                packet,
                u16::from(raw.oldstate) | u16::from(raw.newstate) << 8,
            ))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// The kernel record for a transition: the inverse of [`decode`], for tests and replay.
pub fn encode_transition(t: &Transition) -> SockEvent {
    let mut raw = endpoints_raw(&t.at, kind::STATE);
    raw.oldstate = t.old as u8;
    raw.newstate = t.new as u8;
    if let Some(task) = t.task {
        raw.tgid = task.pid;
        raw.comm = task.comm;
    }
    raw
}

fn endpoints_raw(at: &Endpoints, record_kind: u8) -> SockEvent {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&v4.octets());
            o
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut raw = SockEvent::zeroed();
    raw.ts_ns = at.ts_ns;
    raw.skaddr = at.skaddr;
    raw.netns = at.netns;
    raw.family = match at.family {
        Family::Ipv4 => AF_INET,
        Family::Ipv6 => AF_INET6,
    };
    raw.saddr = octets(at.local_ip);
    raw.daddr = octets(at.remote_ip);
    raw.sport = at.local_port;
    raw.dport = at.remote_port;
    raw.kind = record_kind;
    raw
}

/// The record for a SYN-ACK retransmit or SYN request, for tests and replay.
pub fn encode_endpoints(at: &Endpoints, record_kind: u8) -> SockEvent {
    endpoints_raw(at, record_kind)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tcpmon_common::ShortEvent;

    use super::*;

    fn arb_endpoints() -> impl Strategy<Value = Endpoints> {
        (
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<(u64, u64, u32, u16, u16)>(),
        )
            .prop_map(|(v6, l, r, (ts, sk, ns, lp, rp))| {
                let (family, local_ip, remote_ip) = if v6 {
                    (Family::Ipv6, IpAddr::from(l), IpAddr::from(r))
                } else {
                    (
                        Family::Ipv4,
                        IpAddr::from([l[0], l[1], l[2], l[3]]),
                        IpAddr::from([r[0], r[1], r[2], r[3]]),
                    )
                };
                Endpoints {
                    ts_ns: ts,
                    skaddr: sk,
                    netns: ns,
                    family,
                    local_ip,
                    local_port: lp,
                    remote_ip,
                    remote_port: rp,
                }
            })
    }

    proptest! {
        #[test]
        fn transitions_round_trip(at in arb_endpoints(), old in 1u8..=12, new in 1u8..=12,
                                  pid in any::<u32>(), comm in any::<[u8; 16]>()) {
            let (old, new) = (TcpState::try_from(old).unwrap(), TcpState::try_from(new).unwrap());
            let task = Some(Task { pid, comm }).filter(|t| t.attributable(old, new));
            let t = Transition { at, old, new, task };
            let raw = encode_transition(&t);
            prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::Transition(t)));
            // The kernel sends IPv4 records without a task in the short form: it must
            // decode to the same transition, and exist exactly for those.
            let short = ShortEvent::narrow(&raw);
            prop_assert_eq!(short.is_some(), at.family == Family::Ipv4 && t.task.is_none());
            if let Some(short) = short {
                prop_assert_eq!(decode(short.as_bytes()), Ok(Record::Transition(t)));
            }
        }

        #[test]
        fn synack_records_round_trip(at in arb_endpoints()) {
            let raw = encode_endpoints(&at, kind::SYNACK_RETRANSMIT);
            prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::SynAckRetransmit(at)));
        }

        #[test]
        fn failure_records_round_trip(at in arb_endpoints(), which in 0usize..3) {
            let (record_kind, failure) = [
                (kind::RETRANSMIT, Failure::Retransmit),
                (kind::RESET_SENT, Failure::ResetSent),
                (kind::RESET_RECEIVED, Failure::ResetReceived),
            ][which];
            let mut raw = encode_endpoints(&at, record_kind);
            if failure == Failure::ResetSent {
                prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::ResetSent(at, None)));
                // Reason 2 (+1 on the wire).
                raw.oldstate = 3;
                prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::ResetSent(at, Some(2))));
                return Ok(());
            }
            if failure == Failure::ResetReceived {
                prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::Failure(failure, at, 1)));
                return Ok(());
            }
            prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::Retransmit(at, 1, None)));
            // A 45-segment burst: low byte in oldstate, high in newstate.
            (raw.oldstate, raw.newstate) = (45, 0);
            prop_assert_eq!(decode(raw.as_bytes()), Ok(Record::Retransmit(at, 45, None)));
            (raw.oldstate, raw.newstate) = (0x2c, 0x01);
            // ... on a connection that sent 70,000 segments in all.
            raw.tgid = 70_000;
            prop_assert_eq!(
                decode(raw.as_bytes()),
                Ok(Record::Retransmit(at, 300, Some(70_000)))
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Length(10)));
        assert_eq!(decode(&[0u8; 96]), Err(DecodeError::Length(96)));
        assert_eq!(decode(&[0u8; 41]), Err(DecodeError::Length(41)));
        // A short record still goes through every check.
        assert_eq!(decode(&[0u8; 40]), Err(DecodeError::Family(0)));
        let mut raw = SockEvent::zeroed();
        assert_eq!(decode(raw.as_bytes()), Err(DecodeError::Family(0)));
        raw.family = AF_INET;
        assert_eq!(decode(raw.as_bytes()), Err(DecodeError::Kind(0)));
        raw.kind = kind::STATE;
        raw.oldstate = 1;
        raw.newstate = 99;
        assert_eq!(decode(raw.as_bytes()), Err(DecodeError::State(99)));
    }

    #[test]
    fn only_syscall_transitions_carry_a_task() {
        let mut raw = SockEvent::zeroed();
        raw.family = AF_INET;
        raw.kind = kind::STATE;
        raw.tgid = 4242;
        raw.comm[..4].copy_from_slice(b"java");
        let task_of = |raw: &SockEvent| match decode(raw.as_bytes()) {
            Ok(Record::Transition(t)) => t.task.map(|t| (t.pid, t.comm())),
            other => panic!("{other:?}"),
        };
        // ESTABLISHED -> CLOSE_WAIT happens when the peer's FIN arrives: softirq.
        (raw.oldstate, raw.newstate) = (TcpState::Established as u8, TcpState::CloseWait as u8);
        assert_eq!(task_of(&raw), None);
        // CLOSE_WAIT -> LAST_ACK is the application's close().
        (raw.oldstate, raw.newstate) = (TcpState::CloseWait as u8, TcpState::LastAck as u8);
        assert_eq!(task_of(&raw), Some((4242, "java".to_owned())));
        raw.comm = *b"ksoftirqd/1\0\0\0\0\0";
        assert_eq!(task_of(&raw), None);
        // No task recorded (pid 0 is the idle task, never a socket's owner): none, so
        // that a record decodes and re-encodes to the same thing (found by fuzzing).
        raw.comm = [0; 16];
        raw.tgid = 0;
        assert_eq!(task_of(&raw), None);
    }
}
