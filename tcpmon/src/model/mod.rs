//! The shared vocabulary: TCP states, address families, endpoints and tuples, port
//! ranges, severities, processes, thresholds and the transitions the live engine applies.
//! No I/O here: every other module may depend on this one, and it depends on none.
pub mod allowlist;
pub mod duration;
mod listed;
pub mod owner;
mod printable;
mod refused;
mod rule;
mod thresholds;
mod transition;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

pub use listed::Listed;
pub use printable::{printable, printable_bytes, printable_clipped};
pub use refused::{Refused, RefusedProcess};
pub use rule::{
    at_least, listener_of, parse_net, severity, CloseWaitSide, Direction, EndpointFilter, HalfOpen,
    HalfOpenCounter, MAX_SOURCES,
};
pub use thresholds::{InvalidThresholds, Thresholds};
pub use transition::{made_by_syscall, Endpoints, Origin, Task, Transition};

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

    /// The states reported as node_exporter's tcpstat reports them: every one but
    /// NEW_SYN_RECV, a request socket, which is counted as SYN_RECV.
    pub const REPORTED: [TcpState; 11] = {
        // ALL without its last, NEW_SYN_RECV.
        let mut out = [Self::Established; 11];
        let mut i = 0;
        while i < out.len() {
            out[i] = Self::ALL[i];
            i += 1;
        }
        out
    };

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

    /// A live connection, as every per-IP count and rule judges it: ESTABLISHED and the
    /// handshakes (a SYN_RECV request socket is a half-open request instead, judged by
    /// the SYN-flood rule). TIME_WAIT and the closing states are not.
    pub const fn is_live_connection(self) -> bool {
        matches!(self, Self::Established | Self::SynSent | Self::SynRecv)
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

/// A connection's identity while it lives: family-canonical addresses and both ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple {
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

/// Five words instead of the derived walk over two address enums and their byte arrays:
/// tuples are hashed several times per connection under churn. (An IPv4 address and its
/// v4-mapped form hash alike; tuples are canonical, and equal ones still hash equal.)
impl std::hash::Hash for Tuple {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        state.write_u128(bits(self.local_ip));
        state.write_u128(bits(self.remote_ip));
        state.write_u32(u32::from(self.local_port) << 16 | u32::from(self.remote_port));
    }
}

impl Tuple {
    /// The canonical tuple of these endpoints (v4-mapped addresses as IPv4).
    pub fn new(local: (IpAddr, u16), remote: (IpAddr, u16)) -> Self {
        Self {
            local_ip: canonical_ip(local.0),
            local_port: local.1,
            remote_ip: canonical_ip(remote.0),
            remote_port: remote.1,
        }
    }
}

/// The ephemeral port range (net.ipv4.ip_local_port_range), inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        Self::LINUX_DEFAULT
    }
}

impl PortRange {
    /// The kernel's default when the sysctl cannot be read.
    pub const LINUX_DEFAULT: Self = Self {
        low: 32768,
        high: 60999,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
    pub fn size(&self) -> u64 {
        u64::from(self.high.saturating_sub(self.low)) + 1
    }
    /// `"32768\t60999"` as the sysctl prints it.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace().map(str::parse::<u16>);
        let (low, high) = (parts.next()?.ok()?, parts.next()?.ok()?);
        (low <= high).then_some(Self { low, high })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Self::Info),
            "warning" | "warn" => Ok(Self::Warning),
            "critical" | "crit" => Ok(Self::Critical),
            other => Err(format!(
                "unknown severity '{other}' (info, warning, critical)"
            )),
        }
    }
}

/// Clock ticks per second of the timers /proc shows (USER_HZ): 100 on every Linux ABI.
pub const USER_HZ: u64 = 100;

/// A process that holds a socket. `comm` is whatever name the process gave itself: any
/// bytes a local user chose, so text output escapes it (see `output::sanitize`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// `comm[pid]`, the name escaped for a terminal.
impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", printable(&self.comm), self.pid)
    }
}

/// Counts per TCP state, in kernel order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts(pub [u64; 12]);

impl StateCounts {
    pub fn get(&self, state: TcpState) -> u64 {
        self.0[state.index()]
    }
    pub fn add(&mut self, state: TcpState, n: u64) {
        self.0[state.index()] += n;
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        TcpState::ALL.into_iter().map(|s| (s, self.get(s)))
    }
}

/// As a JSON object of every state's kernel name (zeros included), in kernel order.
impl Serialize for StateCounts {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(12))?;
        for (state, n) in self.iter() {
            map.serialize_entry(state.name(), &n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StateCounts {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let by_name = std::collections::BTreeMap::<String, u64>::deserialize(de)?;
        let mut counts = Self::default();
        for (name, n) in by_name {
            let state = TcpState::parse_name(&name)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown state {name}")))?;
            counts.add(state, n);
        }
        Ok(counts)
    }
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
    fn port_ranges_parse_like_the_sysctl() {
        assert_eq!(
            PortRange::parse("32768\t60999\n"),
            Some(PortRange::LINUX_DEFAULT)
        );
        assert_eq!(PortRange::LINUX_DEFAULT.size(), 28_232);
        assert_eq!(PortRange::parse("5000 4000"), None);
        assert_eq!(PortRange::parse("5000"), None);
    }

    #[test]
    fn state_counts_read_back_from_json() {
        let mut counts = StateCounts::default();
        counts.add(TcpState::TimeWait, 3);
        counts.add(TcpState::Listen, 1);
        let json = serde_json::to_value(counts).unwrap();
        assert_eq!(json["TIME_WAIT"], 3);
        assert_eq!(json["CLOSE_WAIT"], 0);
        assert_eq!(serde_json::from_value::<StateCounts>(json).unwrap(), counts);
    }

    #[test]
    fn endpoints_print_like_ss() {
        assert_eq!(endpoint("0.0.0.0".parse().unwrap(), 22), "0.0.0.0:22");
        assert_eq!(endpoint("::".parse().unwrap(), 22), "[::]:22");
        assert_eq!(endpoint("::1".parse().unwrap(), 80), "[::1]:80");
        assert_eq!(endpoint("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
    }
}
