//! The vocabulary every rule speaks, snapshot audit and live detector alike: how a value
//! is judged against its warning and critical thresholds, the half-open counter with its
//! bounded set of sources, and the endpoint filter. Pure.
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use super::{canonical_ip, PortRange, Severity};

/// The severity of `value`: critical strictly above `crit`, a warning strictly above
/// `warn`, nothing at or below `warn`. Every threshold of every rule means "above".
pub fn severity(value: f64, warn: f64, crit: f64) -> Option<Severity> {
    if value > crit {
        Some(Severity::Critical)
    } else if value > warn {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// Distinct sources counted per listener (and per window, live); beyond it the count
/// saturates, so a flood from millions of spoofed addresses cannot grow memory.
pub const MAX_SOURCES: usize = 65_536;

/// Half-open requests of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HalfOpen {
    pub count: u64,
    /// Distinct remote addresses, capped at [`MAX_SOURCES`] (then "at least").
    pub sources: u64,
}

impl HalfOpen {
    /// Whether the source count hit [`MAX_SOURCES`] and is a lower bound.
    pub fn sources_saturated(&self) -> bool {
        self.sources >= MAX_SOURCES as u64
    }
}

/// Counts requests and their distinct sources (v4-mapped addresses as IPv4), holding at
/// most [`MAX_SOURCES`] addresses.
#[derive(Clone, Debug, Default)]
pub struct HalfOpenCounter {
    count: u64,
    sources: FxHashSet<IpAddr>,
}

impl HalfOpenCounter {
    pub fn add(&mut self, source: IpAddr) {
        self.count += 1;
        self.add_source(source);
    }

    /// A source seen without a request to count (it is counted elsewhere).
    pub fn add_source(&mut self, source: IpAddr) {
        if self.sources.len() < MAX_SOURCES {
            self.sources.insert(canonical_ip(source));
        }
    }

    /// Another listener's requests, counted as this one's (a wildcard taking requests to
    /// any address on its port).
    pub fn merge(&mut self, other: HalfOpenCounter) {
        self.count += other.count;
        for source in other.sources {
            self.add_source(source);
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sources(&self) -> u64 {
        self.sources.len() as u64
    }

    pub fn finish(&self) -> HalfOpen {
        HalfOpen {
            count: self.count,
            sources: self.sources(),
        }
    }
}

/// Which connections a filter keeps by their endpoints: a port at either end, an address
/// at either end inside a network (v4-mapped addresses match their IPv4 network).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointFilter {
    pub port: Option<u16>,
    pub net: Option<IpNet>,
}

impl EndpointFilter {
    /// Inlined: the live engine asks it of every transition it may show.
    #[inline]
    pub fn matches(&self, local: (IpAddr, u16), remote: (IpAddr, u16)) -> bool {
        self.port.is_none_or(|p| local.1 == p || remote.1 == p)
            && self.net.is_none_or(|net| {
                [local.0, remote.0]
                    .into_iter()
                    .any(|ip| net.contains(&ip) || net.contains(&canonical_ip(ip)))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.port.is_none() && self.net.is_none()
    }
}

/// Which side of a connection a port count is about: `in` counts connections accepted
/// on a local port, `out` counts connections made from an ephemeral local port, by the
/// remote port they went to (a client's local ports say nothing, one per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    /// The side of a connection between `local` and `remote` ports, and the port it is
    /// counted under: outgoing when the local port is ephemeral and the remote one is
    /// not, incoming otherwise. Decided from the tuple alone, so a live tally counts a
    /// connection under the same port when it opens and when it closes.
    pub fn of(local: u16, remote: u16, range: PortRange) -> (Self, u16) {
        if range.contains(local) && !range.contains(remote) {
            (Self::Out, remote)
        } else {
            (Self::In, local)
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// Which of `listeners` (bound address, port) takes a request to `addr`: the listener on
/// that very address first, then a wildcard of the same family, then any wildcard (a
/// dual-stack `[::]` socket). One answer for the audit, the alerts and the series, so
/// that they name a listener the same way.
pub fn listener_of(listeners: &[(IpAddr, u16)], addr: (IpAddr, u16)) -> Option<usize> {
    let (ip, port) = (canonical_ip(addr.0), addr.1);
    let on_port = || {
        listeners
            .iter()
            .enumerate()
            .filter(move |(_, l)| l.1 == port)
    };
    on_port()
        .find(|(_, l)| canonical_ip(l.0) == ip)
        .or_else(|| on_port().find(|(_, l)| l.0.is_unspecified() && l.0.is_ipv4() == ip.is_ipv4()))
        .or_else(|| on_port().find(|(_, l)| l.0.is_unspecified()))
        .map(|(i, _)| i)
}

/// What leaks a group of CLOSE_WAIT sockets, the key every CLOSE_WAIT rule, alert and
/// series groups by. A server leaks on the port it accepted connections on; a client (a
/// connection pool, say) leaks toward the server it connected to, from a different
/// ephemeral port each time, so grouping it by local port would split one leak into as
/// many groups of one as it has sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "lowercase")]
pub enum CloseWaitSide {
    /// Sockets on a listener's port (or any port outside the ephemeral range).
    Server { local_port: u16 },
    /// Sockets from an ephemeral local port that no listener holds, toward `remote`.
    Client { remote: SocketAddr },
}

impl CloseWaitSide {
    /// The side of a CLOSE_WAIT socket from `local_port` to `remote`; `listening`: a
    /// listener holds `local_port`.
    pub fn of(local_port: u16, remote: (IpAddr, u16), listening: bool, range: PortRange) -> Self {
        if !listening && range.contains(local_port) {
            Self::Client {
                remote: SocketAddr::new(canonical_ip(remote.0), remote.1),
            }
        } else {
            Self::Server { local_port }
        }
    }

    /// The alert subject and label value: the local port, or the remote ip:port.
    pub fn subject(&self) -> String {
        match self {
            Self::Server { local_port } => local_port.to_string(),
            Self::Client { remote } => remote.to_string(),
        }
    }

    /// "on local port 8080" or "toward 203.0.113.9:6379".
    pub fn place(&self) -> String {
        match self {
            Self::Server { local_port } => format!("on local port {local_port}"),
            Self::Client { remote } => format!("toward {remote}"),
        }
    }

    /// What the leak means, for messages.
    pub fn meaning(&self) -> &'static str {
        match self {
            Self::Server { .. } => {
                "the peers closed these connections but the application never called close()"
            }
            Self::Client { .. } => {
                "that server closed these connections but the client never called close() (a \
                 connection pool that does not notice closed connections?)"
            }
        }
    }
}

/// Parses `ADDR` or `ADDR/PREFIX` (host bits cleared).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{text}' is neither an IP address nor a CIDR network"))
}

/// How a source count is prefixed in a message: "at least" once it saturated.
pub fn at_least(count: u64) -> &'static str {
    if count >= MAX_SOURCES as u64 {
        ">= "
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn thresholds_mean_strictly_above() {
        assert_eq!(severity(32.0, 32.0, 64.0), None);
        assert_eq!(severity(33.0, 32.0, 64.0), Some(Severity::Warning));
        assert_eq!(severity(64.0, 32.0, 64.0), Some(Severity::Warning));
        assert_eq!(severity(64.5, 32.0, 64.0), Some(Severity::Critical));
    }

    #[test]
    fn half_open_sources_saturate_and_fold_v4_mapped() {
        let mut c = HalfOpenCounter::default();
        c.add("10.0.0.1".parse().unwrap());
        c.add("::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(
            c.finish(),
            HalfOpen {
                count: 2,
                sources: 1
            }
        );
        for i in 0..(MAX_SOURCES as u32 + 10) {
            c.add(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)));
        }
        let h = c.finish();
        assert_eq!(h.count, MAX_SOURCES as u64 + 12);
        assert_eq!(h.sources, MAX_SOURCES as u64);
        assert!(h.sources_saturated());
        assert_eq!(at_least(h.sources), ">= ");
    }

    #[test]
    fn requests_go_to_the_listener_that_takes_them() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let listeners = [
            (ip("0.0.0.0"), 80),
            (ip("127.0.0.2"), 80),
            (ip("::"), 443),
            (ip("::"), 80),
        ];
        assert_eq!(listener_of(&listeners, (ip("127.0.0.2"), 80)), Some(1));
        assert_eq!(listener_of(&listeners, (ip("10.0.0.1"), 80)), Some(0));
        assert_eq!(listener_of(&listeners, (ip("2001:db8::1"), 80)), Some(3));
        assert_eq!(
            listener_of(&listeners, (ip("10.0.0.1"), 443)),
            Some(2),
            "a dual-stack wildcard takes IPv4 too"
        );
        assert_eq!(
            listener_of(&listeners, (ip("::ffff:127.0.0.2"), 80)),
            Some(1)
        );
        assert_eq!(listener_of(&listeners, (ip("10.0.0.1"), 81)), None);
    }

    #[test]
    fn close_wait_is_grouped_by_what_leaks_it() {
        let range = PortRange::LINUX_DEFAULT;
        let db = ("::ffff:203.0.113.9".parse().unwrap(), 6379);
        assert_eq!(
            CloseWaitSide::of(40820, db, false, range),
            CloseWaitSide::Client {
                remote: "203.0.113.9:6379".parse().unwrap()
            }
        );
        assert_eq!(
            CloseWaitSide::of(40821, db, false, range).subject(),
            "203.0.113.9:6379",
            "every ephemeral port of the pool is one group"
        );
        // A listener on an ephemeral port, and a fixed local port: server side.
        assert_eq!(
            CloseWaitSide::of(40820, db, true, range),
            CloseWaitSide::Server { local_port: 40820 }
        );
        assert_eq!(
            CloseWaitSide::of(8080, db, false, range).place(),
            "on local port 8080"
        );
        let json = serde_json::to_value(CloseWaitSide::of(40820, db, false, range)).unwrap();
        assert_eq!(json["side"], "client");
        assert_eq!(json["remote"], "203.0.113.9:6379");
    }

    #[test]
    fn endpoint_filter_checks_both_ends() {
        let f = EndpointFilter {
            port: Some(80),
            net: Some(parse_net("192.0.2.0/24").unwrap()),
        };
        let local = ("10.0.0.1".parse().unwrap(), 80);
        assert!(f.matches(local, ("192.0.2.9".parse().unwrap(), 5000)));
        assert!(f.matches(local, ("::ffff:192.0.2.9".parse().unwrap(), 5000)));
        assert!(!f.matches(local, ("198.51.100.1".parse().unwrap(), 5000)));
        assert!(!f.matches(
            ("10.0.0.1".parse().unwrap(), 81),
            ("192.0.2.9".parse().unwrap(), 5000)
        ));
        assert!(EndpointFilter::default().is_empty());
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("nope").is_err());
    }
}
