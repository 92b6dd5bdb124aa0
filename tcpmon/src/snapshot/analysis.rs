//! Aggregation of one snapshot into what the commands show: pure, no I/O (process
//! owners and the port range are passed in).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::Row;
pub use crate::host::sock_diag::TcpInfo;
use crate::{
    host::{
        proc_net::{LineError, Socket},
        process::Owners,
    },
    model::{
        canonical_ip, listener_of, CloseWaitSide, Direction, EndpointFilter, Family,
        HalfOpenCounter, PortRange, Process, Refused, StateCounts, TcpState,
    },
};

/// Which sockets a command looks at.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Keep only these states (empty: all).
    pub states: Vec<TcpState>,
    /// Keep sockets with this port, or an address in this network, at either end.
    pub endpoints: EndpointFilter,
    pub family: Option<Family>,
}

impl Filter {
    pub fn matches(&self, s: &Socket) -> bool {
        (self.states.is_empty() || self.states.contains(&s.state))
            && self.family.is_none_or(|f| s.family == f)
            && self
                .endpoints
                .matches((s.local_ip, s.local_port), (s.remote_ip, s.remote_port))
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.endpoints.is_empty() && self.family.is_none()
    }
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

/// Examples of skipped lines kept.
pub(crate) const MAX_SKIP_EXAMPLES: usize = 5;

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

/// One remote address's sockets, listeners excluded. The per-IP rule judges `active`:
/// a proxy that closes first leaves TIME_WAIT behind at any request rate, which says
/// nothing about how many connections the peer holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpCount {
    pub ip: IpAddr,
    /// Live connections: ESTABLISHED and the handshake states (SYN_SENT, SYN_RECV).
    pub active: u64,
    pub total: u64,
    pub established: u64,
    pub syn_sent: u64,
    /// Full SYN_RECV sockets (a handshake completing).
    pub syn_recv: u64,
    /// Half-open request sockets (a SYN answered, no ACK yet): judged by the SYN-flood
    /// rule, not as connections.
    pub half_open: u64,
    pub time_wait: u64,
    pub close_wait: u64,
    /// Every other state (closing: FIN_WAIT1/2, LAST_ACK, CLOSING).
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
            active: 0,
            total: 0,
            established: 0,
            syn_sent: 0,
            syn_recv: 0,
            half_open: 0,
            time_wait: 0,
            close_wait: 0,
            other: 0,
        }
    }

    /// Counts one socket.
    pub fn add(&mut self, s: &Socket) {
        self.total += 1;
        // Request sockets have no inode.
        let request = matches!(s.state, TcpState::SynRecv | TcpState::NewSynRecv) && s.inode == 0;
        if s.state.is_live_connection() && !request {
            self.active += 1;
        }
        match s.state {
            TcpState::Established => self.established += 1,
            TcpState::SynSent => self.syn_sent += 1,
            TcpState::SynRecv | TcpState::NewSynRecv if request => self.half_open += 1,
            TcpState::SynRecv | TcpState::NewSynRecv => self.syn_recv += 1,
            TcpState::TimeWait => self.time_wait += 1,
            TcpState::CloseWait => self.close_wait += 1,
            _ => self.other += 1,
        }
    }

    /// Largest first: by live connections, then by every socket, then by address.
    pub fn order(a: &Self, b: &Self) -> std::cmp::Ordering {
        (b.active, b.total)
            .cmp(&(a.active, a.total))
            .then((a.ip, a.netns).cmp(&(b.ip, b.netns)))
    }
}

/// ESTABLISHED connections of one port: accepted on a local port (`in`), or made toward
/// a remote port from ephemeral local ports (`out`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PortCount {
    pub port: u16,
    pub direction: Direction,
    pub established: u64,
    /// From tcp_info (netlink with --info): over its ESTABLISHED connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<PortInfo>,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

impl PortCount {
    /// Largest first, then incoming before outgoing, then by port.
    pub fn order(a: &Self, b: &Self) -> std::cmp::Ordering {
        b.established
            .cmp(&a.established)
            .then((a.direction, a.port, a.netns).cmp(&(b.direction, b.port, b.netns)))
    }
}

/// A port's ESTABLISHED connections as tcp_info sees them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PortInfo {
    pub rtt_avg_ms: f64,
    pub rtt_max_ms: f64,
    /// Segments retransmitted, summed over the connections' lives.
    pub total_retrans: u64,
    /// Bytes waiting to be acknowledged or sent, summed.
    pub send_queue_bytes: u64,
}

/// A port's tcp_info as it is summed up, before the averages.
#[derive(Clone, Copy, Debug, Default)]
struct PortInfoSum {
    connections: u64,
    rtt_sum_ms: f64,
    rtt_max_ms: f64,
    total_retrans: u64,
    send_queue_bytes: u64,
}

/// One remote IP's connections as tcp_info sees them: how much they retransmit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Retransmits {
    pub ip: IpAddr,
    pub connections: u64,
    pub segs_out: u64,
    pub total_retrans: u64,
    /// total_retrans / segs_out, in percent.
    pub retrans_pct: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// Connections toward one remote IP whose peer stopped reading: its receive window is
/// zero (a zero-window probe is running, or tcp_info says so) with data queued.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stuck {
    pub ip: IpAddr,
    pub connections: u64,
    pub queued_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// What `--sort` orders connections by (largest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    Rtt,
    Retrans,
    Queue,
    Bytes,
}

impl SortKey {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rtt => "rtt",
            Self::Retrans => "retrans",
            Self::Queue => "queue",
            Self::Bytes => "bytes",
        }
    }

    fn of(self, c: &Connection) -> f64 {
        let info = c.info.unwrap_or_default();
        match self {
            Self::Rtt => info.rtt_ms,
            Self::Retrans => f64::from(info.total_retrans),
            Self::Queue => f64::from(c.send_queue) + f64::from(c.recv_queue),
            Self::Bytes => (info.bytes_acked + info.bytes_received) as f64,
        }
    }
}

/// CLOSE_WAIT sockets grouped by what leaks them: the local port and process on the
/// server side, the process and remote ip:port on the client side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloseWaitGroup {
    #[serde(flatten)]
    pub side: CloseWaitSide,
    pub process: Option<Process>,
    pub count: u64,
    /// Bytes the application has not read, summed over the group's sockets.
    pub unread_bytes: u64,
    /// The network namespace (inode) it is in, when several were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

impl CloseWaitGroup {
    /// Largest first, then by what leaks and who.
    pub fn order(a: &Self, b: &Self) -> std::cmp::Ordering {
        b.count
            .cmp(&a.count)
            .then((a.side, &a.process, a.netns).cmp(&(b.side, &b.process, b.netns)))
    }
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
    /// From tcp_info (netlink with --info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<TcpInfo>,
    /// The process holding it (with `--processes`), when visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
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
    /// By remote address (v4-mapped folded into IPv4), listeners excluded, most live
    /// connections first.
    pub per_ip: Vec<IpCount>,
    /// ESTABLISHED sockets by local port, largest first.
    pub per_port: Vec<PortCount>,
    pub close_wait: Vec<CloseWaitGroup>,
    /// Client-side destinations, most TIME_WAIT first.
    pub destinations: Vec<Destination>,
    pub port_range: PortRange,
    /// Half-open requests whose port has no listener in this snapshot.
    pub orphan_half_open: u64,
    /// Sockets whose owner was looked for and not found.
    pub owners_unknown: u64,
    /// When some were not found: the processes that could not be looked into.
    pub owners_refused: Refused,
    /// net.core.somaxconn: the most any listener's backlog can be.
    pub somaxconn: Option<u32>,
    /// Sockets the kernel listed twice because the table changed while it was read;
    /// counted once.
    pub duplicates: u64,
    /// Whether tcp_info was read (netlink): the retransmit figures exist only then.
    pub tcp_info: bool,
    /// Remote IPs by how much their connections retransmit, worst first.
    pub retransmits: Vec<Retransmits>,
    /// Remote IPs whose connections have a full send queue, most queued first.
    pub stuck: Vec<Stuck>,
}

/// Options that make the aggregation do extra work only when a command shows it.
#[derive(Clone, Debug, Default)]
pub struct Collect {
    /// Keep these states' connections (for `established`, `timewait`); capped at `limit`.
    pub connections_of: Vec<TcpState>,
    pub connection_limit: Option<usize>,
    /// Keep the `connection_limit` largest by this, not the first ones.
    pub sort: Option<SortKey>,
    /// Name the owning process of every connection kept (like `ss -p`).
    pub owners: bool,
}

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
    per_port: FxHashMap<(Direction, u16), u64>,
    /// CLOSE_WAIT sockets: local port, remote, inode, unread bytes.
    close_wait: Vec<(u16, (IpAddr, u16), u64, u64)>,
    half_open: FxHashMap<(IpAddr, u16), HalfOpenCounter>,
    destinations: FxHashMap<(IpAddr, u16), (u64, u64)>,
    port_range: Option<PortRange>,
    connections: Vec<Connection>,
    connections_seen: u64,
    inodes: FxHashSet<u64>,
    duplicates: u64,
    tcp_info: bool,
    /// Per remote IP: connections, segments out, retransmitted.
    retransmits: FxHashMap<IpAddr, (u64, u64, u64)>,
    /// Per remote IP: stuck connections, bytes queued.
    stuck: FxHashMap<IpAddr, (u64, u64)>,
    /// Per local port: connections with tcp_info, RTT sum and max, retransmits, queue.
    port_info: FxHashMap<(Direction, u16), PortInfoSum>,
}

impl Aggregator {
    fn range(&self) -> PortRange {
        self.port_range.unwrap_or(PortRange::LINUX_DEFAULT)
    }

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
            Ok(socket) => self.add_unique(&socket, None),
            Err(reason) => self.skip(row, reason),
        }
    }

    /// A socket from a walk of the tables (/proc or sock_diag), which the kernel makes
    /// while sockets come and go: one listed twice is counted once.
    pub fn add_unique(&mut self, socket: &Socket, info: Option<&TcpInfo>) {
        if socket.inode != 0 && !self.inodes.insert(socket.inode) {
            self.duplicates += 1;
        } else {
            self.add_with_info(socket, info);
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
        self.add_with_info(s, None);
    }

    /// A socket and, from sock_diag, what its tcp_info says.
    pub fn add_with_info(&mut self, s: &Socket, info: Option<&TcpInfo>) {
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
            TcpState::Established => {
                let key = Direction::of(s.local_port, s.remote_port, self.range());
                *self.per_port.entry(key).or_default() += 1;
            }
            TcpState::CloseWait => self.close_wait.push((
                s.local_port,
                (s.remote_ip, s.remote_port),
                s.inode,
                // rx_queue counts the peer's FIN as one byte of sequence space.
                u64::from(s.rx_queue.saturating_sub(1)),
            )),
            TcpState::SynRecv | TcpState::NewSynRecv => {
                self.half_open
                    .entry((canonical_ip(s.local_ip), s.local_port))
                    .or_default()
                    .add(remote);
            }
            _ => {}
        }
        if s.state != TcpState::Listen && !remote.is_unspecified() {
            self.per_ip
                .entry(remote)
                .or_insert_with(|| IpCount::new(remote))
                .add(s);
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
        self.add_info(s, remote, info);
        if self.collect.connections_of.contains(&s.state) {
            self.connections_seen += 1;
            let room = self
                .collect
                .connection_limit
                .is_none_or(|limit| self.connections.len() < limit);
            if room || self.collect.sort.is_some() {
                self.connections.push(Connection {
                    info: info.copied(),
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
                    timer_secs: (s.timer != 0).then_some(s.timer_secs()),
                    process: None,
                });
                self.trim_sorted(false);
            }
        }
    }

    /// Sorted collection keeps the largest `limit`: trimmed whenever it holds twice that
    /// (`all`: to exactly that, in order), so the cost stays linear.
    fn trim_sorted(&mut self, all: bool) {
        let (Some(key), Some(limit)) = (self.collect.sort, self.collect.connection_limit) else {
            if let Some(key) = self.collect.sort.filter(|_| all) {
                self.connections
                    .sort_by(|a, b| key.of(b).total_cmp(&key.of(a)));
            }
            return;
        };
        let by = |a: &Connection, b: &Connection| key.of(b).total_cmp(&key.of(a));
        if self.connections.len() >= 2 * limit.max(1) || (all && self.connections.len() > limit) {
            let nth = limit.saturating_sub(1).min(self.connections.len() - 1);
            self.connections.select_nth_unstable_by(nth, by);
            self.connections.truncate(limit);
        }
        if all {
            self.connections.sort_by(by);
        }
    }

    /// What tcp_info (or, without it, a zero-window probe) says about a connection.
    fn add_info(&mut self, s: &Socket, remote: IpAddr, info: Option<&TcpInfo>) {
        let open = matches!(
            s.state,
            TcpState::Established | TcpState::CloseWait | TcpState::FinWait1
        );
        if !open {
            return;
        }
        // A zero-window probe (timer 4) means the peer advertises no room.
        let zero_window = s.timer == 4 || info.is_some_and(|i| i.snd_wnd == 0);
        // The send queue (write_seq - snd_una) already holds the bytes not yet sent.
        let queued = u64::from(s.tx_queue);
        if zero_window && queued > 0 {
            let entry = self.stuck.entry(remote).or_default();
            entry.0 += 1;
            entry.1 += queued;
        }
        let Some(info) = info else {
            return;
        };
        self.tcp_info = true;
        let entry = self.retransmits.entry(remote).or_default();
        entry.0 += 1;
        entry.1 += u64::from(info.segs_out);
        entry.2 += u64::from(info.total_retrans);
        if s.state == TcpState::Established {
            let key = Direction::of(s.local_port, s.remote_port, self.range());
            let port = self.port_info.entry(key).or_default();
            port.connections += 1;
            port.rtt_sum_ms += info.rtt_ms;
            port.rtt_max_ms = port.rtt_max_ms.max(info.rtt_ms);
            port.total_retrans += u64::from(info.total_retrans);
            port.send_queue_bytes += u64::from(s.tx_queue);
        }
    }

    /// Inodes whose owning process the summary shows: listeners and CLOSE_WAIT sockets.
    pub fn wanted_owners(&self) -> HashSet<u64> {
        let kept = self
            .connections
            .iter()
            .filter(|_| self.collect.owners)
            .map(|c| c.inode);
        self.listeners
            .iter()
            .map(|l| l.inode)
            .chain(self.close_wait.iter().map(|&(_, _, inode, _)| inode))
            .chain(kept)
            .filter(|&inode| inode != 0)
            .collect()
    }

    /// Connections collected per [`Collect`] (their owners named from `owners` when it
    /// asks), and how many matched in all.
    pub fn take_connections(&mut self, owners: Option<&Owners>) -> (Vec<Connection>, u64) {
        self.trim_sorted(true);
        let mut connections = std::mem::take(&mut self.connections);
        if let (true, Some(owners)) = (self.collect.owners, owners) {
            for c in &mut connections {
                c.process = owners.by_inode.get(&c.inode).cloned();
            }
        }
        (connections, self.connections_seen)
    }

    /// Completes the summary with what the first pass could not know: owning processes
    /// (`None`: not looked for) and listener backlogs, both by socket inode.
    pub fn finish(self, owners: Option<&Owners>, backlogs: &HashMap<u64, u32>) -> Summary {
        let mut owners_unknown = 0;
        let mut owner = |inode: u64| {
            let found = owners.and_then(|o| o.by_inode.get(&inode).cloned());
            if found.is_none() && inode != 0 && owners.is_some() {
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
        let keys: Vec<(IpAddr, u16)> = listeners.iter().map(|l| (l.ip, l.port)).collect();
        let mut by_listener: HashMap<usize, HalfOpenCounter> = HashMap::new();
        for ((ip, port), requests) in self.half_open {
            match listener_of(&keys, (ip, port)) {
                Some(i) => by_listener.entry(i).or_default().merge(requests),
                None => orphan_half_open += requests.count(),
            }
        }
        for (i, requests) in by_listener {
            listeners[i].half_open = requests.count();
            listeners[i].half_open_sources = requests.sources();
        }

        let mut per_ip: Vec<IpCount> = self.per_ip.into_values().collect();
        per_ip.sort_unstable_by(IpCount::order);
        let mut per_port: Vec<PortCount> = self
            .per_port
            .into_iter()
            .map(|((direction, port), established)| PortCount {
                info: self.port_info.get(&(direction, port)).map(|sum| PortInfo {
                    rtt_avg_ms: sum.rtt_sum_ms / sum.connections.max(1) as f64,
                    rtt_max_ms: sum.rtt_max_ms,
                    total_retrans: sum.total_retrans,
                    send_queue_bytes: sum.send_queue_bytes,
                }),
                port,
                direction,
                established,
                netns: None,
            })
            .collect();
        per_port.sort_unstable_by(PortCount::order);

        let range = self.port_range.unwrap_or(PortRange::LINUX_DEFAULT);
        let listening: HashSet<u16> = listeners.iter().map(|l| l.port).collect();
        let mut grouped: HashMap<(CloseWaitSide, Option<Process>), (u64, u64)> = HashMap::new();
        for (port, remote, inode, unread) in self.close_wait {
            let side = CloseWaitSide::of(port, remote, listening.contains(&port), range);
            let entry = grouped.entry((side, owner(inode))).or_default();
            entry.0 += 1;
            entry.1 += unread;
        }
        let mut close_wait: Vec<CloseWaitGroup> = grouped
            .into_iter()
            .map(|((side, process), (count, unread_bytes))| CloseWaitGroup {
                netns: None,
                side,
                process,
                count,
                unread_bytes,
            })
            .collect();
        close_wait.sort_by(CloseWaitGroup::order);

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

        let mut retransmits: Vec<Retransmits> = self
            .retransmits
            .into_iter()
            .map(|(ip, (connections, segs_out, total_retrans))| Retransmits {
                ip,
                connections,
                segs_out,
                total_retrans,
                retrans_pct: total_retrans as f64 * 100.0 / segs_out.max(1) as f64,
                netns: None,
            })
            .collect();
        retransmits.sort_by(|a, b| {
            b.retrans_pct
                .total_cmp(&a.retrans_pct)
                .then(b.total_retrans.cmp(&a.total_retrans))
                .then(a.ip.cmp(&b.ip))
        });
        let mut stuck: Vec<Stuck> = self
            .stuck
            .into_iter()
            .map(|(ip, (connections, queued_bytes))| Stuck {
                ip,
                connections,
                queued_bytes,
                netns: None,
            })
            .collect();
        stuck.sort_by(|a, b| b.queued_bytes.cmp(&a.queued_bytes).then(a.ip.cmp(&b.ip)));

        Summary {
            tcp_info: self.tcp_info,
            retransmits,
            stuck,
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
            owners_refused: match owners {
                Some(o) if owners_unknown > 0 => o.refused.clone(),
                _ => Refused::default(),
            },
            owners_unknown,
            somaxconn: None,
            duplicates: self.duplicates,
        }
    }
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
        agg.finish(Some(&Owners::default()), &HashMap::new())
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
                direction: Direction::In,
                established: 3,
                info: None,
            }]
        );
    }

    /// A client's connections are counted by the server port they go to, not by their
    /// ephemeral local ports (one row each).
    #[test]
    fn per_port_counts_clients_by_the_port_they_connect_to() {
        let mut sockets: Vec<Socket> = (0..50)
            .map(|i| {
                sock(
                    TcpState::Established,
                    "10.0.0.1",
                    40000 + i,
                    "192.0.2.7",
                    5432,
                )
            })
            .collect();
        sockets.push(sock(
            TcpState::Established,
            "10.0.0.1",
            443,
            "192.0.2.8",
            51000,
        ));
        let s = summarize(&sockets, Filter::default());
        let rows: Vec<(Direction, u16, u64)> = s
            .per_port
            .iter()
            .map(|p| (p.direction, p.port, p.established))
            .collect();
        assert_eq!(
            rows,
            vec![(Direction::Out, 5432, 50), (Direction::In, 443, 1)]
        );
    }

    #[test]
    fn sorted_listings_keep_the_largest_whatever_the_order() {
        let mut agg = Aggregator::new(
            Filter::default(),
            Collect {
                connections_of: vec![TcpState::Established],
                connection_limit: Some(5),
                sort: Some(SortKey::Rtt),
                owners: false,
            },
            PortRange::LINUX_DEFAULT,
        );
        // RTTs 0..100 ms in a scrambled order.
        for i in 0..100u16 {
            let rtt = f64::from((i * 37) % 100);
            let s = Socket::new(
                TcpState::Established,
                ([10, 0, 0, 1].into(), 40000 + i),
                ([10, 0, 0, 2].into(), 443),
                u64::from(i) + 1,
            );
            agg.add_with_info(
                &s,
                Some(&TcpInfo {
                    rtt_ms: rtt,
                    ..TcpInfo::default()
                }),
            );
        }
        let (kept, matched) = agg.take_connections(None);
        let rtts: Vec<f64> = kept.iter().map(|c| c.info.unwrap().rtt_ms).collect();
        assert_eq!(rtts, [99.0, 98.0, 97.0, 96.0, 95.0]);
        assert_eq!(matched, 100);
        let summary = agg.finish(Some(&Owners::default()), &HashMap::new());
        let port = summary.per_port.iter().find(|p| p.port == 443).unwrap();
        assert_eq!(port.direction, Direction::Out);
        assert_eq!(port.info.unwrap().rtt_max_ms, 99.0);
        assert_eq!(summary.retransmits.len(), 1);
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
        let s = agg.finish(
            Some(&Owners::default()),
            &HashMap::from([(listener.inode, 128)]),
        );
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
        let summary = agg.finish(Some(&Owners::default()), &HashMap::new());
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
                endpoints: EndpointFilter {
                    port: Some(80),
                    net: None,
                },
                ..Default::default()
            },
        );
        assert_eq!(by_port.total, 3);
        let by_net = summarize(
            &sockets,
            Filter {
                endpoints: EndpointFilter {
                    port: None,
                    net: Some(crate::model::parse_net("192.0.2.0/24").unwrap()),
                },
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
