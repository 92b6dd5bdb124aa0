//! Parser for /proc/net/tcp and /proc/net/tcp6.
//!
//! A file is read once into a `Bytes` buffer and every [`Socket`] is decoded from it in
//! place: no line is copied into a `String`, so the memory a command uses is the file it
//! read plus whatever it chooses to keep.
//!
//! The kernel prints each address as host-endian 32-bit words (`%08X` of a `__be32`
//! loaded as a native integer). On little-endian machines that reverses the bytes inside
//! every word, so `::1` appears as `00000000000000000000000001000000`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::model::{Family, TcpState, USER_HZ};

/// One row of /proc/net/tcp{,6}, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub family: Family,
    pub state: TcpState,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// Bytes sent but not acknowledged (0 for listeners: /proc does not show the backlog).
    pub tx_queue: u32,
    /// For LISTEN sockets: connections waiting in the accept queue (sk_ack_backlog).
    pub rx_queue: u32,
    /// Timer kind (0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe).
    pub timer: u8,
    /// Jiffies until the timer fires (may be negative when it is overdue).
    pub timer_jiffies: i64,
    pub retransmits: u32,
    pub uid: u32,
    /// Socket inode; 0 for TIME_WAIT and request (SYN_RECV) mini-sockets.
    pub inode: u64,
}

impl Socket {
    /// Seconds until the timer fires (negative when overdue).
    pub fn timer_secs(&self) -> f64 {
        self.timer_jiffies as f64 / USER_HZ as f64
    }

    /// Nanoseconds until the timer fires, 0 when overdue.
    pub fn timer_remaining_ns(&self) -> u64 {
        u64::try_from(self.timer_jiffies.max(0)).unwrap_or(0) * (1_000_000_000 / USER_HZ)
    }

    /// A socket with its identity only (queues, timers and uid zero), for tests and tools
    /// that build socket tables.
    pub fn new(state: TcpState, local: (IpAddr, u16), remote: (IpAddr, u16), inode: u64) -> Self {
        Self {
            family: if local.0.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            state,
            local_ip: local.0,
            local_port: local.1,
            remote_ip: remote.0,
            remote_port: remote.1,
            tx_queue: 0,
            rx_queue: 0,
            timer: 0,
            timer_jiffies: 0,
            retransmits: 0,
            uid: 0,
            inode,
        }
    }
}

/// Why a line could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum LineError {
    #[error("too few fields")]
    TooFewFields,
    #[error("bad local address")]
    BadLocalAddress,
    #[error("bad remote address")]
    BadRemoteAddress,
    #[error("bad state field")]
    BadState,
    #[error("unknown state {0}")]
    UnknownState(u8),
    #[error("bad queue field")]
    BadQueues,
    #[error("bad timer field")]
    BadTimer,
    #[error("bad number field")]
    BadNumber,
}

/// Iterates the data rows of one file (the header line is skipped), yielding each row's
/// 1-based line number and its decoded socket or the reason it was rejected.
pub fn parse(
    data: &[u8],
    family: Family,
) -> impl Iterator<Item = (usize, Result<Socket, LineError>)> + '_ {
    data.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .filter(|(_, line)| !is_header(line))
        .map(move |(index, line)| (index + 1, parse_line(line, family)))
}

fn is_header(line: &[u8]) -> bool {
    line.trim_ascii_start().starts_with(b"sl ")
}

/// Decodes one data row:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`
pub fn parse_line(line: &[u8], family: Family) -> Result<Socket, LineError> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let mut next = || fields.next().ok_or(LineError::TooFewFields);
    let _slot = next()?;
    let (local_ip, local_port) =
        parse_endpoint(next()?, family).ok_or(LineError::BadLocalAddress)?;
    let (remote_ip, remote_port) =
        parse_endpoint(next()?, family).ok_or(LineError::BadRemoteAddress)?;
    let state_field = next()?;
    if state_field.len() != 2 {
        return Err(LineError::BadState);
    }
    let state_num = hex_u64(state_field).ok_or(LineError::BadState)? as u8;
    let state = TcpState::try_from(state_num).map_err(|e| LineError::UnknownState(e.0))?;
    let (tx, rx) = split_pair(next()?).ok_or(LineError::BadQueues)?;
    let tx_queue = hex_u32(tx).ok_or(LineError::BadQueues)?;
    let rx_queue = hex_u32(rx).ok_or(LineError::BadQueues)?;
    let (tr, when) = split_pair(next()?).ok_or(LineError::BadTimer)?;
    let timer = hex_u64(tr)
        .filter(|t| *t <= 0xff)
        .ok_or(LineError::BadTimer)? as u8;
    // The kernel prints `jiffies_delta_to_clock_t(...)` with %08lX: a negative delta shows
    // as a huge unsigned value, so read it as a two's complement i64.
    let timer_jiffies = hex_u64(when).ok_or(LineError::BadTimer)? as i64;
    let retransmits = hex_u32(next()?).ok_or(LineError::BadNumber)?;
    let uid = dec_u64(next()?)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(LineError::BadNumber)?;
    let _timeout = next()?;
    let inode = dec_u64(next()?).ok_or(LineError::BadNumber)?;
    Ok(Socket {
        family,
        state,
        local_ip,
        local_port,
        remote_ip,
        remote_port,
        tx_queue,
        rx_queue,
        timer,
        timer_jiffies,
        retransmits,
        uid,
        inode,
    })
}

fn split_pair(field: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = field.iter().position(|&b| b == b':')?;
    Some((&field[..colon], &field[colon + 1..]))
}

/// `AABBCCDD:PPPP` (IPv4) or 32 hex digits `:PPPP` (IPv6).
fn parse_endpoint(field: &[u8], family: Family) -> Option<(IpAddr, u16)> {
    let (addr, port) = split_pair(field)?;
    if port.len() != 4 {
        return None;
    }
    let port = hex_u64(port)? as u16;
    let ip = match family {
        Family::Ipv4 => {
            if addr.len() != 8 {
                return None;
            }
            let word = hex_u32(addr)?;
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        }
        Family::Ipv6 => {
            if addr.len() != 32 {
                return None;
            }
            let mut octets = [0u8; 16];
            for (i, chunk) in addr.chunks_exact(8).enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&hex_u32(chunk)?.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    Some((ip, port))
}

#[inline]
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[inline]
fn hex_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 16 {
        return None;
    }
    field
        .iter()
        .try_fold(0u64, |acc, &b| Some((acc << 4) | u64::from(hex_digit(b)?)))
}

#[inline]
fn hex_u32(field: &[u8]) -> Option<u32> {
    if field.len() > 8 {
        return None;
    }
    hex_u64(field).map(|v| v as u32)
}

#[inline]
fn dec_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 20 {
        return None;
    }
    field.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Renders a socket back into the kernel's line format: used by tests and by the
/// benchmark's fixture generator, so the parser is checked against its exact inverse.
pub fn format_line(slot: usize, s: &Socket) -> String {
    fn addr_hex(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => v6
                .octets()
                .chunks_exact(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        }
    }
    format!(
        "{slot:4}: {}:{:04X} {}:{:04X} {:02X} {:08X}:{:08X} {:02X}:{:08X} {:08X} {:5} {:8} {} 1 0000000000000000 100 0 0 10 0",
        addr_hex(s.local_ip),
        s.local_port,
        addr_hex(s.remote_ip),
        s.remote_port,
        s.state as u8,
        s.tx_queue,
        s.rx_queue,
        s.timer,
        s.timer_jiffies as u64,
        s.retransmits,
        s.uid,
        0,
        s.inode,
    )
}

/// The header the kernel prints first.
pub fn header(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        Family::Ipv6 => "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0277 00000000:0000 0A 00000000:00000080 00:00000000 00000000     0        0 23171 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C5A 0100007F:0277 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn decodes_ipv4_listener_and_time_wait() {
        let rows: Vec<_> = parse(TCP.as_bytes(), Family::Ipv4).collect();
        assert_eq!(rows.len(), 2);
        let (line, listener) = rows[0];
        assert_eq!(line, 2);
        let listener = listener.unwrap();
        assert_eq!(listener.state, TcpState::Listen);
        assert_eq!(listener.local_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(listener.local_port, 631);
        assert_eq!(listener.rx_queue, 128);
        assert_eq!(listener.inode, 23171);
        let tw = rows[1].1.unwrap();
        assert_eq!(tw.state, TcpState::TimeWait);
        assert_eq!(tw.local_port, 40026);
        assert_eq!(tw.remote_port, 631);
        assert_eq!(tw.timer, 3);
        assert_eq!(tw.timer_jiffies, 6000);
    }

    #[test]
    fn ipv6_words_are_host_endian() {
        let line = "   0: 00000000000000000000000001000000:0016 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 02:000AFC80 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1";
        let s = parse_line(line.as_bytes(), Family::Ipv6).unwrap();
        assert_eq!(s.local_ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.remote_ip, "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.local_port, 22);
        assert_eq!(s.remote_port, 0xD431);
        assert_eq!(s.uid, 1000);
        assert_eq!(s.state, TcpState::Established);
        let doc: IpAddr = "2001:db8::1:2".parse().unwrap();
        let s2 = Socket { local_ip: doc, ..s };
        let reparsed = parse_line(format_line(0, &s2).as_bytes(), Family::Ipv6).unwrap();
        assert_eq!(reparsed.local_ip, doc);
    }

    #[test]
    fn malformed_lines_are_rejected_with_a_reason() {
        let v4 = Family::Ipv4;
        assert_eq!(
            parse_line(b"   0: 0100007F:0277", v4),
            Err(LineError::TooFewFields)
        );
        assert_eq!(
            parse_line(b"   0: 0100007G:0277 00000000:0000 0A 0:0 00:0 0 0 0 1", v4),
            Err(LineError::BadLocalAddress)
        );
        assert_eq!(
            parse_line(b"   0: 0100007F:0277 00000000:0000 0D 0:0 00:0 0 0 0 1", v4),
            Err(LineError::UnknownState(13))
        );
        assert_eq!(
            parse_line(
                b"   0: 0100007F:0277 00000000:0000 0A 00:0 00:0 0 x 0 1",
                v4
            ),
            Err(LineError::BadNumber)
        );
        assert_eq!(
            parse_line(
                b"   0: 0100007F:0277 00000000:0000 0A 0:0 0:0 0 0 0 99999999999999999999999",
                v4
            ),
            Err(LineError::BadNumber)
        );
    }

    #[test]
    fn overdue_timers_read_as_negative() {
        let line = "   0: 0100007F:0277 0100007F:1234 01 00000000:00000000 01:FFFFFFFFFFFFFFFE 00000000     0        0 1 1";
        let s = parse_line(line.as_bytes(), Family::Ipv4).unwrap();
        assert_eq!(s.timer_jiffies, -2);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_ip(family: Family) -> BoxedStrategy<IpAddr> {
            match family {
                Family::Ipv4 => any::<[u8; 4]>().prop_map(IpAddr::from).boxed(),
                Family::Ipv6 => any::<[u8; 16]>().prop_map(IpAddr::from).boxed(),
            }
        }

        fn arb_socket() -> impl Strategy<Value = Socket> {
            prop_oneof![Just(Family::Ipv4), Just(Family::Ipv6)].prop_flat_map(|family| {
                (
                    arb_ip(family),
                    any::<u16>(),
                    arb_ip(family),
                    any::<u16>(),
                    1u8..=12,
                    any::<(u32, u32, u8, u32, u32, u64)>(),
                    any::<i64>(),
                )
                    .prop_map(
                        move |(lip, lp, rip, rp, st, (tx, rx, tr, re, uid, ino), when)| Socket {
                            family,
                            state: TcpState::try_from(st).unwrap(),
                            local_ip: lip,
                            local_port: lp,
                            remote_ip: rip,
                            remote_port: rp,
                            tx_queue: tx,
                            rx_queue: rx,
                            timer: tr,
                            timer_jiffies: when,
                            retransmits: re,
                            uid,
                            inode: ino,
                        },
                    )
            })
        }

        proptest! {
            #[test]
            fn format_then_parse_is_identity(s in arb_socket(), slot in 0usize..100_000) {
                let line = format_line(slot, &s);
                prop_assert_eq!(parse_line(line.as_bytes(), s.family), Ok(s));
            }

            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                for family in [Family::Ipv4, Family::Ipv6] {
                    for (_, row) in parse(&data, family) {
                        let _ = row;
                    }
                }
            }

            #[test]
            fn damaged_valid_lines_never_panic(s in arb_socket(), cut in 0usize..200, flip in any::<(usize, u8)>()) {
                let mut line = format_line(1, &s).into_bytes();
                let idx = flip.0 % line.len();
                line[idx] = flip.1;
                line.truncate(cut.min(line.len()));
                let _ = parse_line(&line, s.family);
            }
        }
    }
}
