//! Aggregation of one snapshot into what the commands show: pure, no I/O (process
//! owners and the port range are passed in).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::Row;
use crate::{
    host::proc_net::{LineError, Socket},
    model::{canonical_ip, Family, PortRange, Process, StateCounts, TcpState},
};

/// Which sockets a command looks at.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Keep only these states (empty: all).
    pub states: Vec<TcpState>,
    /// Keep sockets whose local or remote port is this.
    pub port: Option<u16>,
    /// Keep sockets whose local or remote address is inside this network.
    pub net: Option<IpNet>,
    pub family: Option<Family>,
}

impl Filter {
    pub fn matches(&self, s: &Socket) -> bool {
        (self.states.is_empty() || self.states.contains(&s.state))
            && self
                .port
                .is_none_or(|p| s.local_port == p || s.remote_port == p)
            && self.family.is_none_or(|f| s.family == f)
            && self.net.is_none_or(|net| {
                [s.local_ip, s.remote_ip]
                    .into_iter()
                    .any(|ip| net.contains(&ip) || net.contains(&canonical_ip(ip)))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.port.is_none() && self.net.is_none() && self.family.is_none()
    }
}

/// Parses `ADDR` or `ADDR/PREFIX`.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{text}' is neither an IP address nor a CIDR network"))
}

/// Lines that could not be decoded: counted, with a few examples, never silently dropped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Skipped {
    pub count: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub examples: Vec<SkippedLine>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SkippedLine {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

const MAX_SKIP_EXAMPLES: usize = 5;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listener {
    pub family: Family,
    pub ip: IpAddr,
    pub port: u16,
    /// Bound to 0.0.0.0 or :: (every interface).
    pub wildcard: bool,
    /// listen()'s backlog (from sock_diag: /proc does not show it); `None` when it could
    /// not be asked, e.g. for another machine's /proc.
    pub backlog: Option<u32>,
    pub accept_queue: u32,
    /// Half-open (SYN_RECV) request sockets attributed to this listener.
    pub half_open: u64,
    /// Distinct remote addresses among those requests.
    pub half_open_sources: u64,
    pub uid: u32,
    pub inode: u64,
    pub process: Option<Process>,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpCount {
    pub ip: IpAddr,
    pub total: u64,
    pub established: u64,
    pub time_wait: u64,
    pub close_wait: u64,
    pub syn_recv: u64,
    pub other: u64,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

impl IpCount {
    pub fn new(ip: IpAddr) -> Self {
        Self {
            netns: None,
            ip,
            total: 0,
            established: 0,
            time_wait: 0,
            close_wait: 0,
            syn_recv: 0,
            other: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortCount {
    pub port: u16,
    pub established: u64,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// CLOSE_WAIT sockets grouped by local port and owning process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloseWaitGroup {
    pub local_port: u16,
    pub process: Option<Process>,
    pub count: u64,
    /// Bytes the application has not read, summed over the group's sockets.
    pub unread_bytes: u64,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// Client-side sockets (local port in the ephemeral range) toward one remote ip:port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub time_wait: u64,
    pub total: u64,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// A connection as listed by `established` and `timewait`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Connection {
    pub family: Family,
    pub state: TcpState,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub send_queue: u32,
    pub recv_queue: u32,
    pub uid: u32,
    pub inode: u64,
    /// Seconds until the socket's timer fires (TIME_WAIT: until it disappears).
    pub timer_secs: Option<f64>,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// Everything one snapshot says, after filtering.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub states: StateCounts,
    pub skipped: Skipped,
    pub listeners: Vec<Listener>,
    /// By remote address (v4-mapped folded into IPv4), listeners excluded, largest first.
    pub per_ip: Vec<IpCount>,
    /// ESTABLISHED sockets by local port, largest first.
    pub per_port: Vec<PortCount>,
    pub close_wait: Vec<CloseWaitGroup>,
    /// Client-side destinations, most TIME_WAIT first.
    pub destinations: Vec<Destination>,
    pub port_range: PortRange,
    /// Half-open requests whose port has no listener in this snapshot.
    pub orphan_half_open: u64,
    /// Sockets whose owner was wanted but not visible (needs root).
    pub owners_unknown: u64,
    /// net.core.somaxconn: the most any listener's backlog can be.
    pub somaxconn: Option<u32>,
    /// Sockets the kernel listed twice because the table changed while it was read;
    /// counted once.
    pub duplicates: u64,
}

/// Options that make the aggregation do extra work only when a command shows it.
#[derive(Clone, Debug, Default)]
pub struct Collect {
    /// Keep these states' connections (for `established`, `timewait`); capped at `limit`.
    pub connections_of: Vec<TcpState>,
    pub connection_limit: Option<usize>,
}

/// Kernel USER_HZ as /proc reports timers in (clock_t): 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;
/// Distinct half-open sources tracked per listener before counting saturates.
const MAX_DISTINCT_SOURCES: usize = 1 << 16;

/// The first pass: everything except process owners, which need the inodes it finds.
#[derive(Debug, Default)]
pub struct Aggregator {
    filter: Filter,
    collect: Collect,
    total: u64,
    ipv4: u64,
    ipv6: u64,
    states: StateCounts,
    skipped: Skipped,
    listeners: Vec<Socket>,
    per_ip: FxHashMap<IpAddr, IpCount>,
    per_port: FxHashMap<u16, u64>,
    close_wait: FxHashMap<(u16, u64), (u64, u64)>,
    half_open: FxHashMap<(IpAddr, u16), (u64, FxHashSet<IpAddr>)>,
    destinations: FxHashMap<(IpAddr, u16), (u64, u64)>,
    port_range: Option<PortRange>,
    connections: Vec<Connection>,
    connections_seen: u64,
    inodes: FxHashSet<u64>,
    duplicates: u64,
}

impl Aggregator {
    pub fn new(filter: Filter, collect: Collect, port_range: PortRange) -> Self {
        Self {
            filter,
            collect,
            port_range: Some(port_range),
            ..Default::default()
        }
    }

    pub fn add_row(&mut self, row: &Row<'_>) {
        match row.socket {
            // /proc is walked while sockets come and go: a socket can be listed twice.
            Ok(socket) if socket.inode != 0 && !self.inodes.insert(socket.inode) => {
                self.duplicates += 1
            }
            Ok(socket) => self.add(&socket),
            Err(reason) => self.skip(row, reason),
        }
    }

    fn skip(&mut self, row: &Row<'_>, reason: LineError) {
        self.skipped.count += 1;
        *self
            .skipped
            .by_reason
            .entry(reason.to_string())
            .or_default() += 1;
        if self.skipped.examples.len() < MAX_SKIP_EXAMPLES {
            self.skipped.examples.push(SkippedLine {
                file: row.path.to_path_buf(),
                line: row.line,
                reason: reason.to_string(),
            });
        }
    }

    pub fn add(&mut self, s: &Socket) {
        if !self.filter.matches(s) {
            return;
        }
        self.total += 1;
        match s.family {
            Family::Ipv4 => self.ipv4 += 1,
            Family::Ipv6 => self.ipv6 += 1,
        }
        self.states.add(s.state, 1);
        let remote = canonical_ip(s.remote_ip);
        match s.state {
            TcpState::Listen => self.listeners.push(*s),
            TcpState::Established => *self.per_port.entry(s.local_port).or_default() += 1,
            TcpState::CloseWait => {
                let entry = self.close_wait.entry((s.local_port, s.inode)).or_default();
                entry.0 += 1;
                // rx_queue counts the peer's FIN as one byte of sequence space.
                entry.1 += u64::from(s.rx_queue.saturating_sub(1));
            }
            TcpState::SynRecv | TcpState::NewSynRecv => {
                let entry = self
                    .half_open
                    .entry((canonical_ip(s.local_ip), s.local_port))
                    .or_default();
                entry.0 += 1;
                if entry.1.len() < MAX_DISTINCT_SOURCES {
                    entry.1.insert(remote);
                }
            }
            _ => {}
        }
        if s.state != TcpState::Listen && !remote.is_unspecified() {
            let ip = self
                .per_ip
                .entry(remote)
                .or_insert_with(|| IpCount::new(remote));
            ip.total += 1;
            match s.state {
                TcpState::Established => ip.established += 1,
                TcpState::TimeWait => ip.time_wait += 1,
                TcpState::CloseWait => ip.close_wait += 1,
                TcpState::SynRecv | TcpState::NewSynRecv => ip.syn_recv += 1,
                _ => ip.other += 1,
            }
            let range = self.port_range.unwrap_or(PortRange::LINUX_DEFAULT);
            if range.contains(s.local_port) && s.state != TcpState::SynRecv {
                let dest = self
                    .destinations
                    .entry((remote, s.remote_port))
                    .or_default();
                dest.1 += 1;
                if s.state == TcpState::TimeWait {
                    dest.0 += 1;
                }
            }
        }
        if self.collect.connections_of.contains(&s.state) {
            self.connections_seen += 1;
            if self
                .collect
                .connection_limit
                .is_none_or(|limit| self.connections.len() < limit)
            {
                self.connections.push(Connection {
                    netns: None,
                    family: s.family,
                    state: s.state,
                    local_ip: s.local_ip,
                    local_port: s.local_port,
                    remote_ip: s.remote_ip,
                    remote_port: s.remote_port,
                    send_queue: s.tx_queue,
                    recv_queue: s.rx_queue,
                    uid: s.uid,
                    inode: s.inode,
                    timer_secs: (s.timer != 0).then_some(s.timer_jiffies as f64 / USER_HZ),
                });
            }
        }
    }

    /// Inodes whose owning process the summary shows: listeners and CLOSE_WAIT sockets.
    pub fn wanted_owners(&self) -> HashSet<u64> {
        self.listeners
            .iter()
            .map(|l| l.inode)
            .chain(self.close_wait.keys().map(|&(_, inode)| inode))
            .filter(|&inode| inode != 0)
            .collect()
    }

    /// Connections collected per [`Collect`], and how many matched in all.
    pub fn take_connections(&mut self) -> (Vec<Connection>, u64) {
        (std::mem::take(&mut self.connections), self.connections_seen)
    }

    /// Completes the summary with what the first pass could not know: owning processes
    /// and listener backlogs, both by socket inode.
    pub fn finish(self, owners: &HashMap<u64, Process>, backlogs: &HashMap<u64, u32>) -> Summary {
        let mut owners_unknown = 0;
        let mut owner = |inode: u64| {
            let found = owners.get(&inode).cloned();
            if found.is_none() && inode != 0 {
                owners_unknown += 1;
            }
            found
        };
        let mut listeners: Vec<Listener> = self
            .listeners
            .iter()
            .map(|s| Listener {
                netns: None,
                family: s.family,
                ip: s.local_ip,
                port: s.local_port,
                wildcard: s.local_ip.is_unspecified(),
                backlog: backlogs.get(&s.inode).copied(),
                accept_queue: s.rx_queue,
                half_open: 0,
                half_open_sources: 0,
                uid: s.uid,
                inode: s.inode,
                process: owner(s.inode),
            })
            .collect();
        listeners.sort_by_key(|l| (l.port, l.family, l.ip));

        let mut orphan_half_open = 0;
        let mut sources: HashMap<usize, HashSet<IpAddr>> = HashMap::new();
        for ((ip, port), (count, from)) in self.half_open {
            match best_listener(&listeners, ip, port) {
                Some(i) => {
                    listeners[i].half_open += count;
                    sources.entry(i).or_default().extend(from);
                }
                None => orphan_half_open += count,
            }
        }
        for (i, from) in sources {
            listeners[i].half_open_sources = from.len() as u64;
        }

        let mut per_ip: Vec<IpCount> = self.per_ip.into_values().collect();
        per_ip.sort_unstable_by(|a, b| b.total.cmp(&a.total).then(a.ip.cmp(&b.ip)));
        let mut per_port: Vec<PortCount> = self
            .per_port
            .into_iter()
            .map(|(port, established)| PortCount {
                port,
                established,
                netns: None,
            })
            .collect();
        per_port
            .sort_unstable_by(|a, b| b.established.cmp(&a.established).then(a.port.cmp(&b.port)));

        let mut grouped: HashMap<(u16, Option<Process>), (u64, u64)> = HashMap::new();
        for ((port, inode), (count, unread)) in self.close_wait {
            let entry = grouped.entry((port, owner(inode))).or_default();
            entry.0 += count;
            entry.1 += unread;
        }
        let mut close_wait: Vec<CloseWaitGroup> = grouped
            .into_iter()
            .map(
                |((local_port, process), (count, unread_bytes))| CloseWaitGroup {
                    netns: None,
                    local_port,
                    process,
                    count,
                    unread_bytes,
                },
            )
            .collect();
        close_wait.sort_by(|a, b| b.count.cmp(&a.count).then(a.local_port.cmp(&b.local_port)));

        let mut destinations: Vec<Destination> = self
            .destinations
            .into_iter()
            .map(|((ip, port), (time_wait, total))| Destination {
                netns: None,
                ip,
                port,
                time_wait,
                total,
            })
            .collect();
        destinations.sort_unstable_by(|a, b| {
            (b.time_wait, b.total)
                .cmp(&(a.time_wait, a.total))
                .then((a.ip, a.port).cmp(&(b.ip, b.port)))
        });

        Summary {
            total: self.total,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            states: self.states,
            skipped: self.skipped,
            listeners,
            per_ip,
            per_port,
            close_wait,
            destinations,
            port_range: self.port_range.unwrap_or(PortRange::LINUX_DEFAULT),
            orphan_half_open,
            owners_unknown,
            somaxconn: None,
            duplicates: self.duplicates,
        }
    }
}

/// The listener a request to `ip:port` belongs to: an exact address first, then a
/// wildcard of the same family, then any wildcard (a dual-stack `[::]` socket).
fn best_listener(listeners: &[Listener], ip: IpAddr, port: u16) -> Option<usize> {
    let on_port = || {
        listeners
            .iter()
            .enumerate()
            .filter(move |(_, l)| l.port == port)
    };
    on_port()
        .find(|(_, l)| canonical_ip(l.ip) == ip)
        .or_else(|| on_port().find(|(_, l)| l.wildcard && l.ip.is_ipv4() == ip.is_ipv4()))
        .or_else(|| on_port().find(|(_, l)| l.wildcard))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::proc_net::Socket;

    fn sock(state: TcpState, local: &str, lport: u16, remote: &str, rport: u16) -> Socket {
        let inode = u64::from(lport) * 7 + u64::from(rport);
        Socket::new(
            state,
            (local.parse().unwrap(), lport),
            (remote.parse().unwrap(), rport),
            inode,
        )
    }

    fn summarize(sockets: &[Socket], filter: Filter) -> Summary {
        let mut agg = Aggregator::new(filter, Collect::default(), PortRange::LINUX_DEFAULT);
        for s in sockets {
            agg.add(s);
        }
        agg.finish(&HashMap::new(), &HashMap::new())
    }

    #[test]
    fn per_ip_excludes_listeners_and_folds_v4_mapped() {
        let sockets = [
            sock(TcpState::Listen, "0.0.0.0", 80, "0.0.0.0", 0),
            sock(TcpState::Established, "10.0.0.1", 80, "192.0.2.7", 50000),
            sock(
                TcpState::Established,
                "::ffff:10.0.0.1",
                80,
                "::ffff:192.0.2.7",
                50001,
            ),
            sock(TcpState::TimeWait, "10.0.0.1", 80, "192.0.2.7", 50002),
            sock(TcpState::Established, "::1", 80, "::1", 50003),
        ];
        let s = summarize(&sockets, Filter::default());
        assert_eq!(s.total, 5);
        assert_eq!(s.per_ip.len(), 2);
        let top = &s.per_ip[0];
        assert_eq!(top.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!((top.total, top.established, top.time_wait), (3, 2, 1));
        assert_eq!(
            s.per_port,
            vec![PortCount {
                netns: None,
                port: 80,
                established: 3
            }]
        );
    }

    #[test]
    fn half_open_requests_go_to_the_right_listener() {
        let listener = sock(TcpState::Listen, "0.0.0.0", 80, "0.0.0.0", 0);
        let specific = sock(TcpState::Listen, "127.0.0.2", 80, "0.0.0.0", 0);
        let mut sockets = vec![listener, specific];
        for i in 0..10 {
            sockets.push(sock(
                TcpState::SynRecv,
                "10.0.0.1",
                80,
                &format!("192.0.2.{}", i % 3),
                1000 + i,
            ));
        }
        sockets.push(sock(TcpState::SynRecv, "127.0.0.2", 80, "192.0.2.1", 999));
        sockets.push(sock(TcpState::SynRecv, "10.0.0.1", 81, "192.0.2.1", 999));
        let mut agg = Aggregator::new(
            Filter::default(),
            Collect::default(),
            PortRange::LINUX_DEFAULT,
        );
        sockets.iter().for_each(|s| agg.add(s));
        let s = agg.finish(&HashMap::new(), &HashMap::from([(listener.inode, 128)]));
        let wildcard = s.listeners.iter().find(|l| l.wildcard).unwrap();
        assert_eq!(
            (
                wildcard.half_open,
                wildcard.half_open_sources,
                wildcard.backlog
            ),
            (10, 3, Some(128))
        );
        let exact = s.listeners.iter().find(|l| !l.wildcard).unwrap();
        assert_eq!(exact.half_open, 1);
        assert_eq!(s.orphan_half_open, 1);
    }

    #[test]
    fn a_socket_listed_twice_counts_once() {
        let s = sock(TcpState::Established, "10.0.0.1", 80, "192.0.2.7", 50000);
        let mut agg = Aggregator::new(
            Filter::default(),
            Collect::default(),
            PortRange::LINUX_DEFAULT,
        );
        let path = std::path::Path::new("/proc/net/tcp");
        for line in [2, 3] {
            agg.add_row(&Row {
                family: Family::Ipv4,
                path,
                line,
                socket: Ok(s),
            });
        }
        let summary = agg.finish(&HashMap::new(), &HashMap::new());
        assert_eq!((summary.total, summary.duplicates), (1, 1));
    }

    #[test]
    fn filters_combine() {
        let sockets = [
            sock(TcpState::Established, "10.0.0.1", 80, "192.0.2.7", 50000),
            sock(TcpState::Established, "10.0.0.1", 443, "192.0.2.8", 50001),
            sock(TcpState::TimeWait, "10.0.0.1", 80, "198.51.100.1", 50002),
            sock(TcpState::Established, "::1", 80, "::1", 50003),
        ];
        let by_port = summarize(
            &sockets,
            Filter {
                port: Some(80),
                ..Default::default()
            },
        );
        assert_eq!(by_port.total, 3);
        let by_net = summarize(
            &sockets,
            Filter {
                net: Some(parse_net("192.0.2.0/24").unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(by_net.total, 2);
        let by_state = summarize(
            &sockets,
            Filter {
                states: vec![TcpState::TimeWait],
                ..Default::default()
            },
        );
        assert_eq!(by_state.total, 1);
        let v6 = summarize(
            &sockets,
            Filter {
                family: Some(Family::Ipv6),
                ..Default::default()
            },
        );
        assert_eq!(v6.total, 1);
        assert!(parse_net("not-an-ip").is_err());
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn destinations_count_only_ephemeral_local_ports() {
        let sockets = [
            sock(TcpState::TimeWait, "10.0.0.1", 40000, "192.0.2.7", 80),
            sock(TcpState::TimeWait, "10.0.0.1", 40001, "192.0.2.7", 80),
            sock(TcpState::Established, "10.0.0.1", 40002, "192.0.2.7", 80),
            // A server-side TIME_WAIT (local port 80) is not a client port in use.
            sock(TcpState::TimeWait, "10.0.0.1", 80, "192.0.2.7", 40003),
        ];
        let s = summarize(&sockets, Filter::default());
        assert_eq!(
            s.destinations[0],
            Destination {
                netns: None,
                ip: "192.0.2.7".parse().unwrap(),
                port: 80,
                time_wait: 2,
                total: 3
            }
        );
        assert_eq!(s.destinations.len(), 1);
    }

    #[test]
    fn port_range_parses_sysctl_text() {
        assert_eq!(
            PortRange::parse("32768\t60999\n"),
            Some(PortRange::LINUX_DEFAULT)
        );
        assert_eq!(PortRange::LINUX_DEFAULT.size(), 28232);
        assert_eq!(PortRange::parse("9 1"), None);
        assert_eq!(PortRange::parse("x"), None);
    }
}
