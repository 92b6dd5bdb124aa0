//! The shared vocabulary: TCP states, address families, socket endpoints.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// Kernel TCP states (include/net/tcp_states.h); the numbers are the ones /proc and the
/// tracepoint use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

/// A state number outside 1..=12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state {0}")]
pub struct UnknownState(pub u8);

impl TryFrom<u8> for TcpState {
    type Error = UnknownState;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            other => return Err(UnknownState(other)),
        })
    }
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    /// The name /proc-reading tools and the kernel's tracepoint print.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Index 0..12 for dense per-state arrays.
    pub const fn index(self) -> usize {
        self as usize - 1
    }

    /// Accepts kernel names, ss names (`time-wait`, `syn-recv`) and any case.
    pub fn parse_name(name: &str) -> Option<Self> {
        let wanted: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        Self::ALL
            .into_iter()
            .find(|state| state.name().replace('_', "") == wanted)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// Shows a v4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it carries, so one
/// client is one client whichever socket family accepted it.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `ip:port` with IPv6 bracketed (`[::]:80`, `0.0.0.0:22`), so a wildcard's family stays
/// visible.
pub fn endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::try_from(state as u8), Ok(state));
            assert_eq!(TcpState::ALL[state.index()], state);
        }
        assert_eq!(TcpState::try_from(0), Err(UnknownState(0)));
        assert_eq!(TcpState::try_from(13), Err(UnknownState(13)));
    }

    #[test]
    fn state_names_parse_in_kernel_and_ss_spelling() {
        assert_eq!(TcpState::parse_name("TIME_WAIT"), Some(TcpState::TimeWait));
        assert_eq!(TcpState::parse_name("time-wait"), Some(TcpState::TimeWait));
        assert_eq!(TcpState::parse_name("syn-recv"), Some(TcpState::SynRecv));
        assert_eq!(
            TcpState::parse_name("established"),
            Some(TcpState::Established)
        );
        assert_eq!(TcpState::parse_name("bogus"), None);
    }

    #[test]
    fn v4_mapped_addresses_become_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
        let loopback6: IpAddr = "::1".parse().unwrap();
        assert_eq!(canonical_ip(loopback6), loopback6);
    }

    #[test]
    fn endpoints_print_like_ss() {
        assert_eq!(endpoint("0.0.0.0".parse().unwrap(), 22), "0.0.0.0:22");
        assert_eq!(endpoint("::".parse().unwrap(), 22), "[::]:22");
        assert_eq!(endpoint("::1".parse().unwrap(), 80), "[::1]:80");
        assert_eq!(endpoint("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
    }
}
