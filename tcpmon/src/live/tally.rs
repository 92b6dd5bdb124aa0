//! The live state machine: per-state, per-remote-IP, per-port, listener, CLOSE_WAIT and
//! TIME_WAIT tallies, seeded from a snapshot and moved by transitions.
//!
//! Pure: no I/O and no clock. Every input carries its time (`ts_ns`, CLOCK_MONOTONIC like
//! the kernel's) and callers pass `now_ns` where expiry matters.
//!
//! What the tracepoint cannot show is handled explicitly:
//! - TIME_WAIT has no event: entry is inferred from FIN_WAIT2/CLOSING -> CLOSE on the
//!   active closer; it ends 60 s later, or when a new connection takes its 4-tuple (the
//!   kernel kills a TIME_WAIT socket to reuse its tuple, for a SYN to the listener or a
//!   connect() with tcp_tw_reuse). [`Tally::reconcile_time_wait`] corrects the total
//!   from /proc/net/sockstat for the ends no event shows (an RST, say).
//! - Half-open request sockets have no event: SYN_RECV is whatever the last poll of
//!   request sockets said ([`Tally::set_half_open`]).
//! - Lost events make counts drift: [`Tally::reconcile`] rebuilds everything from a fresh
//!   snapshot and reports how far off the live counts were.
use std::{
    collections::{hash_map::Entry, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    ip_table::IpTable,
    time_wait_table::{TimeWaitEntry, TimeWaitTable},
};
use crate::{
    host::proc_net::Socket,
    model::{
        canonical_ip, CloseWaitSide, Direction, HalfOpen, HalfOpenCounter, PortRange, StateCounts,
        TcpState, Transition, Tuple,
    },
};

/// Whole microseconds (the precision the output prints), kept an integer on the hot path:
/// a float division per transition showed in profiles.
fn whole_micros(ns: u64) -> u64 {
    ns / 1000
}

/// Linux keeps a socket in TIME_WAIT for TCP_TIMEWAIT_LEN, fixed at 60 s.
pub const TIME_WAIT_NS: u64 = 60_000_000_000;

#[derive(Clone, Debug)]
pub struct TallyConfig {
    /// Remote IPs counted individually; the rest are aggregated (and said to be).
    pub max_ips: usize,
    /// Sockets whose state entry time is remembered (for "time in old state"); 0 when
    /// nothing shows it (watch --quiet-transitions), which spares two map operations per
    /// transition.
    pub max_tracked_sockets: usize,
    /// TIME_WAIT entries held at most (the kernel's net.ipv4.tcp_max_tw_buckets, past
    /// which it creates none).
    pub max_time_wait: usize,
    pub port_range: PortRange,
}

impl Default for TallyConfig {
    fn default() -> Self {
        Self {
            max_ips: 65_536,
            max_tracked_sockets: 1 << 20,
            max_time_wait: 1 << 18,
            port_range: PortRange::LINUX_DEFAULT,
        }
    }
}

/// The tuple of a /proc row.
fn tuple_of_socket(s: &Socket) -> Tuple {
    Tuple::new((s.local_ip, s.local_port), (s.remote_ip, s.remote_port))
}

/// A CLOSE_WAIT socket and since when it has been there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CloseWaitEntry {
    pub since_ns: u64,
    pub since: Since,
}

/// How well a CLOSE_WAIT socket's age is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// Its transition into CLOSE_WAIT was seen: `since_ns` is when.
    Seen,
    /// A reconciliation found it (its transition was lost): at least as old as
    /// `since_ns`.
    Found,
    /// It was there when tcpmon started: its age is unknown, and as far as anyone can
    /// tell it has leaked for as long as a snapshot audit would say.
    AtStart,
}

/// CLOSE_WAIT sockets with one leak: how many, and the oldest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CloseWaitView {
    pub side: CloseWaitSide,
    pub count: u64,
    /// The oldest socket's `since_ns`, and how well its age is known.
    pub oldest_ns: u64,
    pub since: Since,
}

/// What applying one transition meant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Applied {
    /// Microseconds in the old state, when tcpmon saw the socket enter it.
    pub micros_in_old: Option<u64>,
    /// A listener appeared on an address/port that had none.
    pub new_listener: bool,
    /// The transition was read as entry into TIME_WAIT.
    pub time_wait_inferred: bool,
}

/// How far the live tallies were from a fresh snapshot when it replaced them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReconcileReport {
    pub at_ns: u64,
    /// live minus snapshot, per state, for the states that differed.
    pub error: HashMap<&'static str, i64>,
    pub total_abs_error: u64,
}

/// The tally at one moment, for output and detectors.
#[derive(Clone, Debug, Serialize)]
pub struct TallyView {
    pub states: StateCounts,
    pub time_wait: u64,
    /// Listeners as (address, port) with how many sockets listen there (SO_REUSEPORT).
    pub listeners: Vec<(IpAddr, u16, u64)>,
    /// ESTABLISHED by port and direction (see `model::Direction`), largest first.
    pub established_by_port: Vec<(Direction, u16, u64)>,
    /// Live connections (ESTABLISHED and the handshakes) of the remote IPs with the most.
    pub per_ip_top: Vec<(IpAddr, u64)>,
    pub per_ip_tracked: usize,
    /// Connections whose remote IP is not tracked individually (table full).
    pub per_ip_aggregated: u64,
    /// Live connections counted per remote IP in all (tracked and aggregated).
    pub per_ip_total: u64,
    /// TIME_WAIT of the remote IPs with the most, and of every remote IP.
    pub per_ip_time_wait_top: Vec<(IpAddr, u64)>,
    pub per_ip_time_wait_total: u64,
    /// Every remote IP of either top list with both its counts (live connections,
    /// TIME_WAIT), most sockets first.
    pub peers: Vec<(IpAddr, u64, u64)>,
    /// CLOSE_WAIT sockets by what leaks them, largest first.
    pub close_wait: Vec<CloseWaitView>,
    /// Client-side TIME_WAIT toward one remote ip:port, largest first.
    pub time_wait_by_dest: Vec<(IpAddr, u16, u64)>,
    pub half_open: Vec<(IpAddr, u16, HalfOpen)>,
    /// Transitions whose effect contradicted the tally (e.g. leaving a state it had none
    /// of): a sign of lost events, fixed by the next reconciliation.
    pub inconsistencies: u64,
}

#[derive(Clone, Debug)]
pub struct Tally {
    cfg: TallyConfig,
    /// Event-driven counts per address family (see [`family_of`]); SYN_RECV and
    /// TIME_WAIT are kept apart (see module docs).
    counts: [[i64; 12]; 2],
    /// By tuple: a new connection on a held tuple ends its TIME_WAIT. Expiry sweeps the
    /// table once per `expire` call (every second) instead of keeping it in time order:
    /// a linked order cost three more cache misses per connection under churn.
    time_wait: TimeWaitTable,
    /// No entry expires before this (a lower bound), so most sweeps are skipped.
    time_wait_next_expiry: u64,
    /// TIME_WAIT entries not held because `max_time_wait` was reached.
    pub time_wait_unheld: u64,
    /// sockstat minus what the list holds: TIME_WAIT tcpmon did not see enter.
    time_wait_adjust: i64,
    /// Entries of `time_wait` that are FIN_WAIT2 mini-sockets, per address family.
    fin_wait2_minis: [u64; 2],
    time_wait_by_dest: FxHashMap<(IpAddr, u16), u64>,
    /// Live connections per remote IP (see [`active`]).
    per_ip: IpTable,
    /// TIME_WAIT entries per remote IP.
    per_ip_time_wait: IpTable,
    established_by_port: FxHashMap<(Direction, u16), u64>,
    listeners: FxHashMap<(IpAddr, u16), u64>,
    close_wait: FxHashMap<Tuple, CloseWaitEntry>,
    /// skaddr -> (state, entered at): for "time in old state".
    entered: FxHashMap<u64, (TcpState, u64)>,
    half_open: HashMap<(IpAddr, u16), HalfOpen>,
    inconsistencies: u64,
    pub timing_resets: u64,
    /// A snapshot has been applied: sockets found from now on are not "at start".
    baselined: bool,
    /// Rows the last snapshot listed twice (the table changed during the walk).
    pub duplicates: u64,
}

/// 0 for IPv4 (v4-mapped IPv6 included, as everywhere tcpmon groups by address), 1 for
/// IPv6: the index of per-family counts.
fn family_of(ip: IpAddr) -> usize {
    usize::from(!canonical_ip(ip).is_ipv4())
}

fn live(state: TcpState) -> bool {
    !matches!(state, TcpState::Close)
}

impl Tally {
    /// An empty tally (everything zero), e.g. before the first snapshot.
    pub fn new(cfg: TallyConfig) -> Self {
        let cap = cfg.max_ips;
        Self {
            cfg,
            counts: [[0; 12]; 2],
            time_wait: TimeWaitTable::default(),
            time_wait_next_expiry: u64::MAX,
            time_wait_unheld: 0,
            time_wait_adjust: 0,
            fin_wait2_minis: [0; 2],
            time_wait_by_dest: FxHashMap::default(),
            per_ip: IpTable {
                cap,
                ..Default::default()
            },
            per_ip_time_wait: IpTable {
                cap,
                ..Default::default()
            },
            established_by_port: FxHashMap::default(),
            listeners: FxHashMap::default(),
            close_wait: FxHashMap::default(),
            entered: FxHashMap::default(),
            half_open: HashMap::new(),
            inconsistencies: 0,
            timing_resets: 0,
            baselined: false,
            duplicates: 0,
        }
    }

    /// Replaces every count with what a snapshot taken at `at_ns` says; returns how far
    /// the previous live counts were from it. CLOSE_WAIT ages and state entry times that
    /// tcpmon already knew are kept for sockets that still exist.
    pub fn reconcile<'a>(
        &mut self,
        sockets: impl IntoIterator<Item = &'a Socket>,
        at_ns: u64,
    ) -> ReconcileReport {
        let before = self.state_counts();
        let mut counts = [[0i64; 12]; 2];
        let mut time_wait = Vec::new();
        let mut per_ip: HashMap<IpAddr, u64> = HashMap::new();
        let mut per_ip_time_wait: HashMap<IpAddr, u64> = HashMap::new();
        let mut established_by_port: FxHashMap<(Direction, u16), u64> = FxHashMap::default();
        let mut listeners: FxHashMap<(IpAddr, u16), u64> = FxHashMap::default();
        let mut close_wait = FxHashMap::default();
        let mut half_open: HashMap<(IpAddr, u16), HalfOpenCounter> = HashMap::new();
        // /proc is walked while sockets come and go, so a row can appear twice; a socket
        // is its inode (or, for mini-sockets without one, its tuple and state).
        let mut seen_inodes: HashSet<u64> = HashSet::new();
        let mut seen_minis: HashSet<(Tuple, TcpState)> = HashSet::new();
        self.duplicates = 0;
        for s in sockets {
            let tuple = tuple_of_socket(s);
            let first = if s.inode != 0 {
                seen_inodes.insert(s.inode)
            } else {
                seen_minis.insert((tuple, s.state))
            };
            if !first {
                self.duplicates += 1;
                continue;
            }
            // Request sockets (SYN_RECV with no inode) never produce events: polled apart.
            let request_sock = s.state == TcpState::SynRecv && s.inode == 0;
            match s.state {
                TcpState::TimeWait | TcpState::FinWait2
                    if s.inode == 0 || s.state == TcpState::TimeWait =>
                {
                    let remaining = s.timer_remaining_ns();
                    time_wait.push((
                        tuple,
                        TimeWaitEntry {
                            expires_ns: at_ns + remaining.min(TIME_WAIT_NS),
                            client_side: self.cfg.port_range.contains(s.local_port),
                            fin_wait2: s.state == TcpState::FinWait2,
                        },
                    ));
                }
                TcpState::SynRecv if request_sock => {
                    half_open
                        .entry((tuple.local_ip, tuple.local_port))
                        .or_default()
                        .add(tuple.remote_ip);
                }
                state => counts[family_of(tuple.local_ip)][state.index()] += 1,
            }
            match s.state {
                TcpState::Listen => {
                    *listeners
                        .entry((tuple.local_ip, tuple.local_port))
                        .or_default() += 1
                }
                TcpState::Established => {
                    let key = Direction::of(s.local_port, s.remote_port, self.cfg.port_range);
                    *established_by_port.entry(key).or_default() += 1;
                }
                TcpState::CloseWait => {
                    let kept = self.close_wait.get(&tuple).copied();
                    close_wait.insert(
                        tuple,
                        kept.unwrap_or(CloseWaitEntry {
                            since_ns: at_ns,
                            since: if self.baselined {
                                Since::Found
                            } else {
                                Since::AtStart
                            },
                        }),
                    );
                }
                _ => {}
            }
            if !tuple.remote_ip.is_unspecified() {
                if s.state.is_live_connection() && !request_sock {
                    *per_ip.entry(tuple.remote_ip).or_default() += 1;
                } else if s.state == TcpState::TimeWait {
                    // The kernel's FIN_WAIT2 mini-sockets are counted as FIN_WAIT2 in
                    // the states, so not here: per IP as in the totals and in `per-ip`.
                    *per_ip_time_wait.entry(tuple.remote_ip).or_default() += 1;
                }
            }
        }
        self.counts = counts;
        self.time_wait_by_dest.clear();
        self.fin_wait2_minis = [0; 2];
        self.time_wait.clear();
        self.time_wait_next_expiry = u64::MAX;
        for (tuple, entry) in time_wait {
            self.hold_time_wait(tuple, entry);
        }
        self.time_wait_adjust = 0;
        self.baselined = true;
        self.per_ip.rebuild(per_ip);
        // Holding the entries above counted them one by one; the snapshot's counts keep
        // the addresses with the most exact when there are more than the table holds.
        self.per_ip_time_wait.rebuild(per_ip_time_wait);
        self.established_by_port = established_by_port;
        self.listeners = listeners;
        self.close_wait = close_wait;
        self.half_open = half_open
            .into_iter()
            .map(|(k, requests)| (k, requests.finish()))
            .collect();
        self.inconsistencies = 0;
        let after = self.state_counts();
        let mut report = ReconcileReport {
            at_ns,
            ..Default::default()
        };
        for state in TcpState::ALL {
            let diff = before[state.index()] as i64 - after[state.index()] as i64;
            if diff != 0 {
                report.error.insert(state.name(), diff);
                report.total_abs_error += diff.unsigned_abs();
            }
        }
        report
    }

    /// [`Tally::reconcile`] for a snapshot read while transitions kept happening: `window`
    /// holds the transitions that arrived while /proc was being read (in order). The read
    /// walks the socket table over milliseconds, so some of them are already in the
    /// snapshot and some are not; for each socket the snapshot's state says where its
    /// story stood when the walk passed it, and only the transitions after that point
    /// are applied. Without this, every reconciliation under load would count part of the
    /// window twice.
    pub fn reconcile_window(
        &mut self,
        sockets: &[Socket],
        at_ns: u64,
        window: &[Transition],
    ) -> ReconcileReport {
        let report = self.reconcile(sockets, at_ns);
        // Full sockets by tuple, and timewait mini-sockets (what a FIN_WAIT2/CLOSING ->
        // CLOSE event leaves) apart: with TIME_WAIT reuse one tuple can be both at once.
        // Request sockets are not in the tally's counts, so they say nothing here.
        let mut full: HashMap<Tuple, TcpState> = HashMap::with_capacity(sockets.len());
        let mut minis: HashSet<Tuple> = HashSet::new();
        for s in sockets {
            match (s.inode, s.state) {
                (0, TcpState::TimeWait | TcpState::FinWait2) => {
                    minis.insert(tuple_of_socket(s));
                }
                (0, TcpState::SynRecv) => {}
                (_, state) => {
                    full.insert(tuple_of_socket(s), state);
                }
            }
        }
        // One socket's life per group: kernel socket addresses are reused as soon as a
        // socket is freed, so a new life starts after every transition into CLOSE.
        let mut lives: Vec<Vec<&Transition>> = Vec::new();
        let mut open: HashMap<u64, usize> = HashMap::new();
        for t in window {
            let index = *open.entry(t.at.skaddr).or_insert_with(|| {
                lives.push(Vec::new());
                lives.len() - 1
            });
            lives[index].push(t);
            if t.new == TcpState::Close {
                open.remove(&t.at.skaddr);
            }
        }
        for group in &lives {
            // The tuple of each transition's socket: CLOSE -> SYN_SENT has no local port
            // yet, so it borrows the tuple of the next transition that has one.
            let mut tuples: Vec<Option<Tuple>> = vec![None; group.len()];
            let mut next: Option<Tuple> = None;
            for (i, t) in group.iter().enumerate().rev() {
                if t.at.local_port != 0 {
                    next = Some(t.at.tuple());
                }
                tuples[i] = next;
            }
            let mut seen: Option<usize> = None;
            if tuples[0].and_then(|tuple| full.get(&tuple)) == Some(&group[0].old) {
                seen = Some(0);
            }
            for (i, t) in group.iter().enumerate() {
                let Some(tuple) = tuples[i] else { continue };
                let into_time_wait = t.new == TcpState::Close
                    && matches!(t.old, TcpState::FinWait2 | TcpState::Closing);
                if full.get(&tuple) == Some(&t.new) || (into_time_wait && minis.contains(&tuple)) {
                    seen = Some(i + 1);
                }
            }
            let skip = seen.unwrap_or_else(|| {
                // Not in the snapshot: gone before the walk reached it (a plain close), or
                // born after it (a socket ending in TIME_WAIT would otherwise show).
                let last = group.last().expect("non-empty");
                let into_time_wait = matches!(last.old, TcpState::FinWait2 | TcpState::Closing);
                if last.new == TcpState::Close && !into_time_wait {
                    group.len()
                } else {
                    0
                }
            });
            for t in &group[skip..] {
                self.apply(t);
            }
        }
        report
    }

    fn add(&mut self, family: usize, state: TcpState, n: i64) {
        let slot = &mut self.counts[family][state.index()];
        *slot += n;
        if *slot < 0 {
            *slot = 0;
            self.inconsistencies += 1;
        }
    }

    /// Applies one transition (from the kernel, in order).
    pub fn apply(&mut self, t: &Transition) -> Applied {
        use TcpState::*;
        let mut applied = Applied::default();
        let tuple = t.at.tuple();
        // LISTEN -> SYN_RECV is a new child socket cloned from the listener, not the
        // listener changing state.
        let child_born = t.old == Listen && t.new == SynRecv;
        let born = child_born || t.old == Close;
        let gone = t.new == Close;
        let into_time_wait = gone && matches!(t.old, FinWait2 | Closing);

        // Time in the old state, and what the socket's next transition will measure from.
        let key = t.at.skaddr;
        if self.cfg.max_tracked_sockets > 0 {
            if self.entered.len() >= self.cfg.max_tracked_sockets
                && !gone
                && !self.entered.contains_key(&key)
            {
                // Lost close events would otherwise grow this without bound.
                self.entered.clear();
                self.timing_resets += 1;
            }
            // One lookup for both the time in the old state and the next entry time.
            let since_entry = |(state, at): (TcpState, u64)| {
                (state == t.old && !born).then(|| whole_micros(t.at.ts_ns.saturating_sub(at)))
            };
            applied.micros_in_old = match self.entered.entry(key) {
                Entry::Occupied(slot) if gone => since_entry(slot.remove()),
                Entry::Occupied(mut slot) => {
                    since_entry(std::mem::replace(slot.get_mut(), (t.new, t.at.ts_ns)))
                }
                Entry::Vacant(_) if gone => None,
                Entry::Vacant(slot) => {
                    slot.insert((t.new, t.at.ts_ns));
                    None
                }
            };
        }

        // Per-state counts (SYN_RECV full sockets are brief but counted like the rest).
        let family = family_of(tuple.local_ip);
        if !born && live(t.old) {
            self.add(family, t.old, -1);
        }
        if live(t.new) {
            self.add(family, t.new, 1);
        }

        // Per remote IP: live connections, from the first handshake state until they
        // leave ESTABLISHED (TIME_WAIT is counted apart, while it is held).
        let was_active = !child_born && t.old.is_live_connection();
        if was_active != t.new.is_live_connection() && !tuple.remote_ip.is_unspecified() {
            if was_active {
                if !self.per_ip.remove(tuple.remote_ip) {
                    self.inconsistencies += 1;
                }
            } else {
                self.per_ip.add(tuple.remote_ip);
            }
        }

        // Listeners.
        if t.new == Listen {
            let n = self
                .listeners
                .entry((tuple.local_ip, tuple.local_port))
                .or_default();
            applied.new_listener = *n == 0;
            *n += 1;
        } else if t.old == Listen && !child_born {
            match self.listeners.get_mut(&(tuple.local_ip, tuple.local_port)) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    self.listeners.remove(&(tuple.local_ip, tuple.local_port));
                }
                None => self.inconsistencies += 1,
            }
        }

        // ESTABLISHED per local port.
        if t.new == Established || t.old == Established {
            let key = Direction::of(tuple.local_port, tuple.remote_port, self.cfg.port_range);
            if t.new == Established {
                *self.established_by_port.entry(key).or_default() += 1;
            } else {
                match self.established_by_port.get_mut(&key) {
                    Some(n) if *n > 1 => *n -= 1,
                    Some(_) => {
                        self.established_by_port.remove(&key);
                    }
                    None => self.inconsistencies += 1,
                }
            }
        }

        // CLOSE_WAIT ages.
        if t.new == CloseWait {
            self.close_wait.insert(
                tuple,
                CloseWaitEntry {
                    since_ns: t.at.ts_ns,
                    since: Since::Seen,
                },
            );
        } else if t.old == CloseWait {
            self.close_wait.remove(&tuple);
        }

        // A connection opening on a tuple held in TIME_WAIT: the kernel killed that
        // TIME_WAIT socket to let it in (a SYN to the listener, or connect() reusing the
        // port), and no event says so.
        if matches!((t.old, t.new), (Listen, SynRecv) | (SynSent, Established)) {
            if let Some(ended) = self.time_wait.remove(&tuple) {
                self.end_time_wait(tuple, ended);
            }
        }

        if into_time_wait {
            applied.time_wait_inferred = true;
            // An orphan leaving FIN_WAIT2 this way may still await the peer's FIN (a
            // FIN_WAIT2 mini-socket); the event cannot tell, so it counts as TIME_WAIT
            // until a reconciliation says otherwise.
            let entry = TimeWaitEntry {
                expires_ns: t.at.ts_ns + TIME_WAIT_NS,
                client_side: self.cfg.port_range.contains(tuple.local_port),
                fin_wait2: false,
            };
            if self.time_wait.len() >= self.cfg.max_time_wait && !self.time_wait.contains(&tuple) {
                // The kernel would not have created it either; sockstat corrects the
                // total.
                self.time_wait_unheld += 1;
            } else {
                self.hold_time_wait(tuple, entry);
            }
        }
        applied
    }

    /// Holds a TIME_WAIT entry; one already held under the tuple ended unseen (or is a
    /// row a changing table listed twice) and gives way.
    fn hold_time_wait(&mut self, tuple: Tuple, entry: TimeWaitEntry) {
        if let Some(ended) = self.time_wait.insert(tuple, entry) {
            self.end_time_wait(tuple, ended);
        }
        self.count_time_wait(tuple, entry, 1);
        self.time_wait_next_expiry = self.time_wait_next_expiry.min(entry.expires_ns);
    }

    /// Adds (`sign` 1) or takes away (-1) a TIME_WAIT entry's share of the per-state,
    /// per-destination and per-IP counts.
    fn count_time_wait(&mut self, tuple: Tuple, entry: TimeWaitEntry, sign: i64) {
        if !tuple.remote_ip.is_unspecified() && !entry.fin_wait2 {
            if sign > 0 {
                self.per_ip_time_wait.add(tuple.remote_ip);
            } else if !self.per_ip_time_wait.remove(tuple.remote_ip) {
                self.inconsistencies += 1;
            }
        }
        if entry.fin_wait2 {
            let minis = &mut self.fin_wait2_minis[family_of(tuple.local_ip)];
            *minis = minis.saturating_add_signed(sign);
        }
        if entry.client_side {
            let dest = (tuple.remote_ip, tuple.remote_port);
            let n = self.time_wait_by_dest.entry(dest).or_default();
            *n = n.saturating_add_signed(sign);
            if *n == 0 {
                self.time_wait_by_dest.remove(&dest);
            }
        }
    }

    /// Accounts for a TIME_WAIT entry taken out of the list: expired, killed by a new
    /// connection on its tuple, or evicted.
    fn end_time_wait(&mut self, tuple: Tuple, entry: TimeWaitEntry) {
        self.count_time_wait(tuple, entry, -1);
    }

    /// Notes a transition that a baseline snapshot already contains (it happened before
    /// the snapshot was read): only the socket's state entry time is recorded.
    pub fn observe(&mut self, t: &Transition) -> Applied {
        let micros_in_old = self
            .entered
            .get(&t.at.skaddr)
            .filter(|(s, _)| *s == t.old)
            .map(|(_, at)| whole_micros(t.at.ts_ns.saturating_sub(*at)));
        if t.new == TcpState::Close {
            self.entered.remove(&t.at.skaddr);
        } else if self.entered.len() < self.cfg.max_tracked_sockets {
            self.entered.insert(t.at.skaddr, (t.new, t.at.ts_ns));
        }
        Applied {
            micros_in_old,
            time_wait_inferred: t.new == TcpState::Close
                && matches!(t.old, TcpState::FinWait2 | TcpState::Closing),
            ..Default::default()
        }
    }

    /// Drops TIME_WAIT entries whose 60 s are over.
    pub fn expire(&mut self, now_ns: u64) {
        if now_ns < self.time_wait_next_expiry {
            return;
        }
        let (ended, next) = self.time_wait.take_expired(now_ns);
        self.time_wait_next_expiry = next;
        for (tuple, entry) in ended {
            self.end_time_wait(tuple, entry);
        }
    }

    /// The TIME_WAIT count tcpmon believes in.
    pub fn time_wait(&self) -> u64 {
        let minis: u64 = self.fin_wait2_minis.iter().sum();
        (self.time_wait.len() as i64 - minis as i64 + self.time_wait_adjust).max(0) as u64
    }

    /// Corrects the TIME_WAIT total from /proc/net/sockstat's `tw` (which also counts
    /// FIN_WAIT2 mini-sockets); returns live minus sockstat before the correction.
    pub fn reconcile_time_wait(&mut self, sockstat_tw: u64) -> i64 {
        let live_tw_socks = self.time_wait.len() as i64 + self.time_wait_adjust;
        let error = live_tw_socks - sockstat_tw as i64;
        self.time_wait_adjust = sockstat_tw as i64 - self.time_wait.len() as i64;
        error
    }

    /// Records the latest poll of half-open request sockets, per listener.
    pub fn set_half_open(&mut self, by_listener: HashMap<(IpAddr, u16), HalfOpen>) {
        self.half_open = by_listener;
    }

    pub fn half_open_total(&self) -> u64 {
        self.half_open.values().map(|h| h.count).sum()
    }

    /// Counts per state as shown: event-driven, with TIME_WAIT and SYN_RECV from their
    /// own sources.
    pub fn state_counts(&self) -> [u64; 12] {
        let mut out = [0u64; 12];
        for family in self.family_counts() {
            for (state, n) in family.iter() {
                out[state.index()] += n;
            }
        }
        out
    }

    /// Counts per state for IPv4, IPv6 and, for what sockstat's TIME_WAIT correction
    /// adds (it has no family), unknown. A correction that takes away is taken from the
    /// families, largest first.
    pub fn family_counts(&self) -> [StateCounts; 3] {
        let mut out = [StateCounts::default(); 3];
        let table = self.time_wait.len_by_family();
        for family in 0..2 {
            let counts = &mut out[family];
            for state in TcpState::ALL {
                counts.0[state.index()] = self.counts[family][state.index()].max(0) as u64;
            }
            counts.0[TcpState::TimeWait.index()] =
                (table[family] as u64).saturating_sub(self.fin_wait2_minis[family]);
            counts.0[TcpState::FinWait2.index()] += self.fin_wait2_minis[family];
        }
        for ((ip, _), h) in &self.half_open {
            out[family_of(*ip)].0[TcpState::SynRecv.index()] += h.count;
        }
        let tw = TcpState::TimeWait.index();
        if self.time_wait_adjust >= 0 {
            out[2].0[tw] = self.time_wait_adjust as u64;
        } else {
            let mut excess = self.time_wait_adjust.unsigned_abs();
            let order = if out[0].0[tw] >= out[1].0[tw] {
                [0, 1]
            } else {
                [1, 0]
            };
            for family in order {
                let cut = excess.min(out[family].0[tw]);
                out[family].0[tw] -= cut;
                excess -= cut;
            }
        }
        out
    }

    pub fn close_wait(&self) -> &FxHashMap<Tuple, CloseWaitEntry> {
        &self.close_wait
    }

    /// TIME_WAIT sockets held toward `ip`.
    pub fn per_ip_time_wait(&self, ip: IpAddr) -> u64 {
        self.per_ip_time_wait
            .exact
            .get(&canonical_ip(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Live connections (ESTABLISHED and the handshakes) with `ip`.
    pub fn per_ip(&self, ip: IpAddr) -> u64 {
        self.per_ip
            .exact
            .get(&canonical_ip(ip))
            .copied()
            .unwrap_or(0)
    }

    pub fn view(&self, top: usize) -> TallyView {
        let counts = self.state_counts();
        let per_ip_top = self.per_ip.top(top);
        let per_ip_time_wait_top = self.per_ip_time_wait.top(top);
        let peer_ips: BTreeSet<IpAddr> = per_ip_top
            .iter()
            .chain(&per_ip_time_wait_top)
            .map(|&(ip, _)| ip)
            .collect();
        let mut peers: Vec<(IpAddr, u64, u64)> = peer_ips
            .into_iter()
            .map(|ip| (ip, self.per_ip(ip), self.per_ip_time_wait(ip)))
            .collect();
        peers.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(&b.0)));
        let listening: HashSet<u16> = self.listeners.keys().map(|&(_, port)| port).collect();
        let mut groups: HashMap<CloseWaitSide, CloseWaitView> = HashMap::new();
        for (tuple, entry) in &self.close_wait {
            let side = CloseWaitSide::of(
                tuple.local_port,
                (tuple.remote_ip, tuple.remote_port),
                listening.contains(&tuple.local_port),
                self.cfg.port_range,
            );
            let group = groups.entry(side).or_insert(CloseWaitView {
                side,
                count: 0,
                oldest_ns: u64::MAX,
                since: Since::Seen,
            });
            group.count += 1;
            // The oldest: one there at start (its age unknown) before any other, else
            // the earliest.
            let at_start = |since| since == Since::AtStart;
            if (!at_start(entry.since), entry.since_ns) < (!at_start(group.since), group.oldest_ns)
            {
                group.oldest_ns = entry.since_ns;
                group.since = entry.since;
            }
        }
        let mut close_wait: Vec<CloseWaitView> = groups.into_values().collect();
        close_wait.sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.side.cmp(&b.side)));
        let mut time_wait_by_dest: Vec<_> = self
            .time_wait_by_dest
            .iter()
            .map(|(d, n)| (d.0, d.1, *n))
            .collect();
        time_wait_by_dest.sort_unstable_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        time_wait_by_dest.truncate(top);
        let mut listeners: Vec<_> = self.listeners.iter().map(|(k, n)| (k.0, k.1, *n)).collect();
        listeners.sort_unstable_by_key(|l| (l.1, l.0));
        let mut established_by_port: Vec<_> = self
            .established_by_port
            .iter()
            .map(|(&(direction, port), n)| (direction, port, *n))
            .collect();
        established_by_port
            .sort_unstable_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        established_by_port.truncate(top);
        let mut half_open: Vec<_> = self
            .half_open
            .iter()
            .map(|(k, h)| (k.0, k.1, h.clone()))
            .collect();
        half_open.sort_unstable_by_key(|h| std::cmp::Reverse(h.2.count));
        TallyView {
            states: StateCounts(counts),
            time_wait: self.time_wait(),
            listeners,
            established_by_port,
            per_ip_top,
            per_ip_tracked: self.per_ip.exact.len(),
            per_ip_aggregated: self.per_ip.aggregated,
            per_ip_total: self.per_ip.total(),
            per_ip_time_wait_top,
            per_ip_time_wait_total: self.per_ip_time_wait.total(),
            peers,
            close_wait,
            time_wait_by_dest,
            half_open,
            inconsistencies: self.inconsistencies,
        }
    }

    /// Memory held, roughly: entries in every table (for the bounded-memory promise).
    pub fn entries(&self) -> usize {
        self.time_wait.len()
            + self.time_wait_by_dest.len()
            + self.per_ip.exact.len()
            + self.per_ip_time_wait.exact.len()
            + self.established_by_port.len()
            + self.listeners.len()
            + self.close_wait.len()
            + self.entered.len()
            + self.half_open.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        model::{Endpoints, Transition},
        model::{Family, TcpState::*},
    };

    const SEC: u64 = 1_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn tr(
        sk: u64,
        ts: u64,
        local: (u8, u16),
        remote: (u8, u16),
        old: TcpState,
        new: TcpState,
    ) -> Transition {
        Transition {
            at: Endpoints {
                ts_ns: ts,
                skaddr: sk,
                netns: 1,
                family: Family::Ipv4,
                local_ip: ip(local.0),
                local_port: local.1,
                remote_ip: ip(remote.0),
                remote_port: remote.1,
            },
            old,
            new,
            task: None,
        }
    }

    fn socket(state: TcpState, local: (u8, u16), remote: (u8, u16), inode: u64) -> Socket {
        let remote_ip = if state == Listen {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            ip(remote.0)
        };
        let mut s = Socket::new(state, (ip(local.0), local.1), (remote_ip, remote.1), inode);
        if state == TimeWait {
            (s.timer, s.timer_jiffies) = (3, 6000);
        }
        s
    }

    fn count(t: &Tally, state: TcpState) -> u64 {
        t.state_counts()[state.index()]
    }

    /// Both ends of one loopback connection, client closing first, as the kernel reports.
    fn graceful(t: &mut Tally, client_port: u16, start: u64) {
        let (c, s) = (1000 + u64::from(client_port), 2000 + u64::from(client_port));
        let cl = (1, client_port);
        let sv = (2, 80);
        t.apply(&tr(c, start, (1, 0), sv, Close, SynSent));
        t.apply(&tr(c, start + 1, cl, sv, SynSent, Established));
        t.apply(&tr(s, start + 2, sv, cl, Listen, SynRecv));
        t.apply(&tr(s, start + 3, sv, cl, SynRecv, Established));
        t.apply(&tr(c, start + 4, cl, sv, Established, FinWait1));
        t.apply(&tr(s, start + 5, sv, cl, Established, CloseWait));
        t.apply(&tr(s, start + 6, sv, cl, CloseWait, LastAck));
        t.apply(&tr(c, start + 7, cl, sv, FinWait1, FinWait2));
        t.apply(&tr(c, start + 8, cl, sv, FinWait2, Close));
        t.apply(&tr(s, start + 9, sv, cl, LastAck, Close));
    }

    /// A tally whose ephemeral ports are 30000-40000 (so `graceful` clients are the
    /// client side), with one listener on 2:80.
    fn listening_tally(cfg: TallyConfig) -> Tally {
        let mut t = Tally::new(TallyConfig {
            port_range: PortRange {
                low: 30000,
                high: 40000,
            },
            ..cfg
        });
        t.reconcile(&[socket(Listen, (2, 80), (0, 0), 7)], 0);
        t
    }

    #[test]
    fn a_graceful_close_leaves_one_inferred_time_wait_that_expires() {
        let mut t = listening_tally(TallyConfig::default());
        graceful(&mut t, 35000, SEC);
        assert_eq!(
            count(&t, Listen),
            1,
            "LISTEN -> SYN_RECV is a child, not the listener"
        );
        assert_eq!(count(&t, Established), 0);
        assert_eq!(count(&t, TimeWait), 1);
        let view = t.view(10);
        assert_eq!(view.time_wait_by_dest, vec![(ip(2), 80, 1)]);
        // No live connection is left; the client's TIME_WAIT toward the server is counted
        // apart until it ends.
        assert_eq!((t.per_ip(ip(2)), t.per_ip(ip(1))), (0, 0));
        assert_eq!(t.per_ip_time_wait(ip(2)), 1);
        assert_eq!(t.view(10).per_ip_time_wait_top, vec![(ip(2), 1)]);
        t.expire(SEC + 8 + TIME_WAIT_NS - 1);
        assert_eq!(count(&t, TimeWait), 1);
        t.expire(SEC + 8 + TIME_WAIT_NS);
        assert_eq!(count(&t, TimeWait), 0);
        assert_eq!(t.per_ip_time_wait(ip(2)), 0);
        assert!(t.view(10).time_wait_by_dest.is_empty());
        assert_eq!(t.view(10).inconsistencies, 0);
    }

    #[test]
    fn a_new_connection_on_a_time_wait_tuple_ends_that_time_wait() {
        let mut t = listening_tally(TallyConfig::default());
        // Client side: connect() reusing port 35000 (tcp_tw_reuse) while it is in
        // TIME_WAIT toward the same server.
        graceful(&mut t, 35000, SEC);
        graceful(&mut t, 35000, 2 * SEC);
        assert_eq!(count(&t, TimeWait), 1);
        assert_eq!(t.view(10).time_wait_by_dest, vec![(ip(2), 80, 1)]);
        assert_eq!((t.per_ip(ip(2)), t.per_ip_time_wait(ip(2))), (0, 1));
        // Server side: the server closed first; a SYN from the same client port finds
        // the server's TIME_WAIT socket, which the kernel kills for the new child.
        let (sv, cl) = ((2, 80), (1, 36000));
        for (at, old, new) in [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (old, new))| (3 * SEC + i as u64, old, new))
        {
            t.apply(&tr(7, at, sv, cl, old, new));
        }
        assert_eq!(count(&t, TimeWait), 2);
        assert_eq!((t.per_ip(ip(1)), t.per_ip_time_wait(ip(1))), (0, 1));
        t.apply(&tr(8, 4 * SEC, sv, cl, Listen, SynRecv));
        assert_eq!(count(&t, TimeWait), 1);
        assert_eq!(count(&t, SynRecv), 1);
        assert_eq!(
            (t.per_ip(ip(1)), t.per_ip_time_wait(ip(1))),
            (1, 0),
            "the child took the TIME_WAIT's place"
        );
        t.expire(10 * TIME_WAIT_NS);
        assert_eq!(count(&t, TimeWait), 0);
        assert_eq!((t.per_ip(ip(1)), t.per_ip(ip(2))), (1, 0));
        assert_eq!(t.per_ip_time_wait(ip(2)), 0);
        assert_eq!(t.view(10).inconsistencies, 0);
    }

    #[test]
    fn time_wait_held_is_capped_like_the_kernel() {
        let mut t = listening_tally(TallyConfig {
            max_time_wait: 2,
            ..Default::default()
        });
        for (i, port) in [35000, 35001, 35002].into_iter().enumerate() {
            graceful(&mut t, port, (i as u64 + 1) * SEC);
        }
        assert_eq!(count(&t, TimeWait), 2);
        assert_eq!(t.time_wait_unheld, 1);
        assert_eq!(t.view(10).time_wait_by_dest, vec![(ip(2), 80, 2)]);
        assert_eq!((t.per_ip(ip(2)), t.per_ip_time_wait(ip(2))), (0, 2));
        assert_eq!(t.view(10).inconsistencies, 0);
    }

    #[test]
    fn rows_listed_twice_by_a_changing_table_count_once() {
        let mut t = Tally::new(TallyConfig::default());
        let row = socket(Established, (2, 80), (1, 5000), 8);
        let tw = socket(TimeWait, (1, 5001), (2, 80), 0);
        t.reconcile(&[row, row, tw, tw], 0);
        assert_eq!(
            (count(&t, Established), count(&t, TimeWait), t.duplicates),
            (1, 1, 2)
        );
    }

    #[test]
    fn untimed_tally_counts_alike_and_keeps_no_entry_times() {
        let mut timed = Tally::new(TallyConfig::default());
        let mut untimed = Tally::new(TallyConfig {
            max_tracked_sockets: 0,
            ..TallyConfig::default()
        });
        let stream = [
            tr(1, SEC, (1, 0), (2, 80), Close, SynSent),
            tr(1, SEC + 1_000_000, (1, 5), (2, 80), SynSent, Established),
            tr(2, SEC + 2_000_000, (1, 0), (3, 80), Close, SynSent),
            tr(2, SEC + 3_000_000, (1, 6), (3, 80), SynSent, Established),
            tr(1, 2 * SEC, (1, 5), (2, 80), Established, FinWait1),
            tr(1, 2 * SEC + 1_000, (1, 5), (2, 80), FinWait1, FinWait2),
            tr(1, 2 * SEC + 2_000, (1, 5), (2, 80), FinWait2, Close),
        ];
        let mut timed_durations = 0;
        for t in &stream {
            timed_durations += usize::from(timed.apply(t).micros_in_old.is_some());
            assert_eq!(untimed.apply(t).micros_in_old, None);
        }
        assert_eq!(timed_durations, 5);
        assert_eq!(untimed.state_counts(), timed.state_counts());
        assert_eq!(untimed.view(10).per_ip_top, timed.view(10).per_ip_top);
        // The timed tally remembers when socket 2 entered ESTABLISHED; the other, nothing.
        assert_eq!(timed.entries() - untimed.entries(), 1);
        assert_eq!(untimed.timing_resets, 0);
    }

    #[test]
    fn time_in_old_state_is_measured_from_the_seen_entry() {
        let mut t = Tally::new(TallyConfig::default());
        assert_eq!(
            t.apply(&tr(1, 5 * SEC, (1, 0), (2, 80), Close, SynSent))
                .micros_in_old,
            None
        );
        let a = t.apply(&tr(
            1,
            5 * SEC + 1_500_000,
            (1, 5),
            (2, 80),
            SynSent,
            Established,
        ));
        assert_eq!(a.micros_in_old, Some(1500));
        // A socket tcpmon never saw enter its state has no duration.
        assert_eq!(
            t.apply(&tr(9, 6 * SEC, (1, 6), (2, 80), Established, FinWait1))
                .micros_in_old,
            None
        );
    }

    #[test]
    fn per_ip_time_wait_counts_what_the_states_call_time_wait() {
        let mut t = Tally::new(TallyConfig::default());
        // An orphaned FIN_WAIT2 socket the kernel already turned into a mini-socket
        // (no inode) and a TIME_WAIT one, toward the same IP.
        t.reconcile(
            &[
                socket(FinWait2, (2, 40000), (1, 80), 0),
                socket(TimeWait, (2, 40001), (1, 80), 0),
            ],
            0,
        );
        assert_eq!((count(&t, FinWait2), count(&t, TimeWait)), (1, 1));
        assert_eq!(t.per_ip_time_wait(ip(1)), 1);
        assert_eq!(t.view(5).per_ip_time_wait_top, vec![(ip(1), 1)]);
        t.expire(TIME_WAIT_NS + 1);
        assert_eq!(t.per_ip_time_wait(ip(1)), 0);
        assert_eq!(t.view(5).inconsistencies, 0);
    }

    #[test]
    fn baseline_sockets_move_with_their_events() {
        let mut t = Tally::new(TallyConfig::default());
        let report = t.reconcile(
            &[
                socket(Listen, (2, 80), (0, 0), 7),
                socket(Established, (2, 80), (1, 5000), 8),
                socket(Established, (2, 80), (1, 5001), 9),
            ],
            0,
        );
        assert_eq!(
            report.total_abs_error, 3,
            "an empty tally was 3 sockets off"
        );
        t.apply(&tr(50, SEC, (2, 80), (1, 5000), Established, CloseWait));
        assert_eq!(count(&t, Established), 1);
        assert_eq!(count(&t, CloseWait), 1);
        assert_eq!(
            t.view(5).close_wait,
            vec![CloseWaitView {
                side: CloseWaitSide::Server { local_port: 80 },
                count: 1,
                oldest_ns: SEC,
                since: Since::Seen
            }]
        );
        assert_eq!(
            t.per_ip(ip(1)),
            1,
            "a CLOSE_WAIT socket is no live connection"
        );
        t.apply(&tr(50, 2 * SEC, (2, 80), (1, 5000), CloseWait, LastAck));
        t.apply(&tr(50, 2 * SEC + 1, (2, 80), (1, 5000), LastAck, Close));
        assert_eq!(t.per_ip(ip(1)), 1);
        assert!(t.close_wait().is_empty());
        assert_eq!(t.view(5).established_by_port, vec![(Direction::In, 80, 1)]);
    }

    #[test]
    fn new_listeners_are_flagged_once_per_address() {
        let mut t = Tally::new(TallyConfig::default());
        t.reconcile(&[socket(Listen, (2, 22), (0, 0), 7)], 0);
        let unspecified = (0, 0);
        let listen = |sk, port| {
            let mut tr = tr(sk, SEC, (2, port), unspecified, Close, Listen);
            tr.at.remote_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            tr
        };
        assert!(
            !t.apply(&listen(1, 22)).new_listener,
            "22 already had a listener (SO_REUSEPORT)"
        );
        assert!(t.apply(&listen(2, 8080)).new_listener);
        assert_eq!(count(&t, Listen), 3);
        assert_eq!(t.per_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
    }

    #[test]
    fn reconciliation_keeps_known_close_wait_ages_and_reports_drift() {
        let mut t = Tally::new(TallyConfig::default());
        t.reconcile(&[], 0);
        t.apply(&tr(1, 10 * SEC, (2, 80), (1, 5000), Established, CloseWait));
        // Lost events: the tally never heard of this second CLOSE_WAIT nor the ESTABLISHED.
        let snapshot = [
            socket(CloseWait, (2, 80), (1, 5000), 11),
            socket(CloseWait, (2, 80), (1, 5001), 12),
            socket(Established, (2, 80), (1, 5002), 13),
        ];
        let report = t.reconcile(&snapshot, 20 * SEC);
        assert_eq!(report.error.get("CLOSE_WAIT"), Some(&-1));
        assert_eq!(report.error.get("ESTABLISHED"), Some(&-1));
        assert_eq!(report.total_abs_error, 2);
        let cw = t.close_wait();
        let known = cw
            .values()
            .filter(|e| e.since == Since::Seen)
            .collect::<Vec<_>>();
        assert_eq!(
            known,
            vec![&CloseWaitEntry {
                since_ns: 10 * SEC,
                since: Since::Seen
            }]
        );
        // The one seen entering is the oldest known.
        assert_eq!(
            t.view(5).close_wait,
            vec![CloseWaitView {
                side: CloseWaitSide::Server { local_port: 80 },
                count: 2,
                oldest_ns: 10 * SEC,
                since: Since::Seen
            }]
        );
    }

    #[test]
    fn counts_split_by_family_and_the_correction_is_said_apart() {
        let mut t = Tally::new(TallyConfig::default());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let mut sockets = vec![
            socket(Established, (2, 80), (1, 5000), 7),
            Socket::new(Established, (v6, 80), (v6, 5001), 8),
            Socket::new(Established, (mapped, 80), (mapped, 5002), 9),
            Socket::new(TimeWait, (v6, 40000), (v6, 443), 0),
        ];
        sockets[3].timer_jiffies = 6000;
        t.reconcile(&sockets, 0);
        let [v4, six, unknown] = t.family_counts();
        assert_eq!(v4.get(Established), 2, "v4-mapped counts as IPv4");
        assert_eq!(six.get(Established), 1);
        assert_eq!(six.get(TimeWait), 1);
        assert_eq!(unknown.total(), 0);
        // sockstat knows of 3 more TIME_WAIT sockets: family unknown.
        t.reconcile_time_wait(4);
        assert_eq!(t.family_counts()[2].get(TimeWait), 3);
        // ... and of none: the family's entry is taken away.
        t.reconcile_time_wait(0);
        let [v4, six, unknown] = t.family_counts();
        assert_eq!(
            (v4.get(TimeWait), six.get(TimeWait), unknown.get(TimeWait)),
            (0, 0, 0)
        );
        let total: [u64; 12] = t.state_counts();
        assert_eq!(total[Established.index()], 3);
        assert_eq!(total[TimeWait.index()], 0);
    }

    #[test]
    fn sockstat_corrects_the_time_wait_total() {
        let mut t = Tally::new(TallyConfig::default());
        graceful(&mut t, 35000, SEC);
        assert_eq!(t.reconcile_time_wait(4), -3);
        assert_eq!(t.time_wait(), 4);
        assert_eq!(t.reconcile_time_wait(4), 0);
    }

    #[test]
    fn fin_wait2_mini_sockets_are_not_time_wait() {
        let mut t = Tally::new(TallyConfig::default());
        // An orphan waiting for the peer's FIN: a timewait mini-socket shown as FIN_WAIT2.
        let mut orphan = socket(FinWait2, (1, 40000), (2, 80), 0);
        orphan.timer_jiffies = 3000;
        t.reconcile(
            &[
                orphan,
                socket(TimeWait, (1, 40001), (2, 80), 0),
                socket(FinWait2, (1, 40002), (2, 80), 9),
            ],
            0,
        );
        assert_eq!((count(&t, FinWait2), count(&t, TimeWait)), (2, 1));
        // sockstat's tw counts both mini-sockets: no error.
        assert_eq!(t.reconcile_time_wait(2), 0);
        assert_eq!((count(&t, FinWait2), count(&t, TimeWait)), (2, 1));
        t.expire(30 * SEC);
        assert_eq!((count(&t, FinWait2), count(&t, TimeWait)), (1, 1));
    }

    #[test]
    fn per_ip_memory_is_bounded_and_top_talkers_exact_after_reconcile() {
        let mut t = Tally::new(TallyConfig {
            max_ips: 1000,
            ..Default::default()
        });
        for i in 0..100_000u64 {
            let mut e = tr(i, SEC, (2, 80), (1, 1), Close, SynSent);
            e.at.remote_ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i as u32));
            t.apply(&e);
        }
        let view = t.view(3);
        assert_eq!(view.per_ip_tracked, 1000);
        assert_eq!(view.per_ip_aggregated, 99_000);
        assert!(
            t.entries() <= 1000 + 100_000 + 64,
            "only the timing map grows with sockets"
        );
        // A talker that showed up after the table filled is exact again after a snapshot.
        let mut snapshot: Vec<Socket> = (0..500)
            .map(|p| socket(Established, (2, 80), (99, p), 100 + u64::from(p)))
            .collect();
        snapshot.extend(
            (0..2000u16).map(|p| socket(Established, (2, 81), (3, p), 5000 + u64::from(p))),
        );
        t.reconcile(&snapshot, 2 * SEC);
        assert_eq!(t.view(2).per_ip_top, vec![(ip(3), 2000), (ip(99), 500)]);
    }

    /// A socket's path through the states, as the kernel reports it.
    fn paths() -> Vec<(bool, Vec<TcpState>)> {
        // (is_server, states from the first transition's old state)
        vec![
            (
                false,
                vec![Close, SynSent, Established, FinWait1, FinWait2, Close],
            ),
            (
                false,
                vec![Close, SynSent, Established, CloseWait, LastAck, Close],
            ),
            (
                true,
                vec![Listen, SynRecv, Established, FinWait1, FinWait2, Close],
            ),
            (
                true,
                vec![Listen, SynRecv, Established, CloseWait, LastAck, Close],
            ),
            (
                false,
                vec![Close, SynSent, Established, FinWait1, Closing, Close],
            ),
            (true, vec![Listen, SynRecv, Established, Close]),
            (false, vec![Close, SynSent, Close]),
        ]
    }

    proptest! {
        /// Whatever the interleaving and wherever each socket's story stops, the live
        /// tally equals a snapshot of the resulting sockets: reconciliation finds no error.
        #[test]
        fn tallies_match_the_resulting_sockets(
            plan in proptest::collection::vec((0usize..7, 1usize..6), 1..60),
            order_seed in any::<u64>(),
        ) {
            let paths = paths();
            let mut t = Tally::new(TallyConfig::default());
            t.reconcile(&[socket(Listen, (2, 80), (0, 0), 1)], 0);
            let mut truth = vec![socket(Listen, (2, 80), (0, 0), 1)];
            // One queue of pending transitions per socket; pop them in a seeded order.
            let mut queues: Vec<std::collections::VecDeque<Transition>> = Vec::new();
            let mut finals = Vec::new();
            for (i, (path, stop)) in plan.iter().enumerate() {
                let (server, states) = &paths[*path];
                let stop = (*stop).min(states.len() - 1);
                let port = 20000 + i as u16;
                let (local, remote) = if *server { ((2, 80), (1, port)) } else { ((1, port), (2, 80)) };
                let q: std::collections::VecDeque<Transition> = states.windows(2).take(stop).map(|w| {
                    // The kernel reports connect()'s CLOSE -> SYN_SENT before the port is bound.
                    let local = if w[0] == Close && w[1] == SynSent { (local.0, 0) } else { local };
                    tr(100 + i as u64, 0, local, remote, w[0], w[1])
                }).collect();
                let last = states[stop];
                let prev = states[stop - 1];
                finals.push((last, prev, local, remote, i));
                queues.push(q);
            }
            let mut rng = order_seed;
            let mut ts = 1;
            while queues.iter().any(|q| !q.is_empty()) {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
                let pick = live[(rng >> 33) as usize % live.len()];
                let mut e = queues[pick].pop_front().unwrap();
                e.at.ts_ns = ts;
                ts += 1;
                t.apply(&e);
            }
            for (last, prev, local, remote, i) in finals {
                let state = match (last, prev) {
                    (Close, FinWait2 | Closing) => Some(TimeWait),
                    (Close, _) => None,
                    (s, _) => Some(s),
                };
                if let Some(state) = state {
                    let inode = if state == TimeWait { 0 } else { 1000 + i as u64 };
                    truth.push(socket(state, local, remote, inode));
                }
            }
            let view_before = t.view(100);
            prop_assert_eq!(view_before.inconsistencies, 0);
            let report = t.reconcile(&truth, ts);
            prop_assert_eq!(report.total_abs_error, 0, "{:?}", report.error);
            let view_after = t.view(100);
            prop_assert_eq!(view_before.per_ip_top, view_after.per_ip_top);
            prop_assert_eq!(view_before.established_by_port, view_after.established_by_port);
            prop_assert_eq!(view_before.close_wait.len(), view_after.close_wait.len());
            prop_assert_eq!(view_before.time_wait_by_dest, view_after.time_wait_by_dest);
        }
    }
}

#[cfg(test)]
mod window_tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        model::Endpoints,
        model::{Family, TcpState::*},
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn tr(sk: u64, local: u16, remote: u16, old: TcpState, new: TcpState) -> Transition {
        Transition {
            at: Endpoints {
                ts_ns: 0,
                skaddr: sk,
                netns: 1,
                family: Family::Ipv4,
                local_ip: ip(1),
                local_port: local,
                remote_ip: ip(if new == Listen || old == Listen && new == Close {
                    0
                } else {
                    1
                }),
                remote_port: remote,
            },
            old,
            new,
            task: None,
        }
    }

    fn sock(state: TcpState, local: u16, remote: u16) -> Socket {
        let inode = if state == TimeWait {
            0
        } else {
            u64::from(local) * 100_000 + u64::from(remote)
        };
        let mut s = Socket::new(state, (ip(1), local), (ip(1), remote), inode);
        if state == TimeWait {
            s.timer_jiffies = 6000;
        }
        s
    }

    /// A client socket's whole life (graceful, active close) and the state after each step.
    fn client_life(sk: u64, port: u16) -> Vec<Transition> {
        vec![
            tr(sk, 0, 80, Close, SynSent),
            tr(sk, port, 80, SynSent, Established),
            tr(sk, port, 80, Established, FinWait1),
            tr(sk, port, 80, FinWait1, FinWait2),
            tr(sk, port, 80, FinWait2, Close),
        ]
    }

    proptest! {
        /// However far each socket's story had got when the /proc walk passed it, the
        /// windowed reconciliation ends with the counts of the final sockets.
        #[test]
        fn no_window_transition_counts_twice(
            cuts in proptest::collection::vec(0usize..=5, 1..40),
            reuse_addresses in any::<bool>(),
        ) {
            let mut window = Vec::new();
            let mut snapshot = Vec::new();
            let mut final_sockets = Vec::new();
            for (i, cut) in cuts.iter().enumerate() {
                let port = 40000 + i as u16;
                // The kernel reuses a freed socket's address for the next one at once.
                let life = client_life(if reuse_addresses { 1 } else { i as u64 + 1 }, port);
                // The snapshot saw the socket after `cut` transitions.
                let seen = if *cut == 0 { Close } else { life[cut - 1].new };
                match (seen, *cut) {
                    (Close, 5) => snapshot.push(sock(TimeWait, port, 80)),
                    (Close, _) => {}
                    (state, _) => snapshot.push(sock(state, port, 80)),
                }
                final_sockets.push(sock(TimeWait, port, 80));
                window.extend(life);
            }
            let mut t = Tally::new(TallyConfig { port_range: PortRange { low: 30000, high: 50000 }, ..Default::default() });
            t.reconcile_window(&snapshot, 0, &window);
            let mut truth = Tally::new(TallyConfig { port_range: PortRange { low: 30000, high: 50000 }, ..Default::default() });
            truth.reconcile(&final_sockets, 0);
            prop_assert_eq!(t.state_counts(), truth.state_counts());
            prop_assert_eq!(t.view(100).per_ip_top, truth.view(100).per_ip_top);
            prop_assert_eq!(t.view(100).time_wait_by_dest.len(), truth.view(100).time_wait_by_dest.len());
        }
    }

    #[test]
    fn time_wait_reuse_of_a_tuple_is_not_counted_twice() {
        // The old connection sits in TIME_WAIT and a new one reuses its tuple; the walk saw
        // both. Neither group's transitions should be applied again.
        let mut old = client_life(1, 41000);
        old.remove(0);
        let new = vec![
            tr(2, 0, 80, Close, SynSent),
            tr(2, 41000, 80, SynSent, Established),
        ];
        let window: Vec<Transition> = old.into_iter().chain(new).collect();
        let mut t = Tally::new(TallyConfig::default());
        t.reconcile_window(
            &[sock(TimeWait, 41000, 80), sock(Established, 41000, 80)],
            0,
            &window,
        );
        assert_eq!(t.state_counts()[Established.index()], 1);
        assert_eq!(t.state_counts()[TimeWait.index()], 1);
        assert_eq!(t.state_counts()[FinWait1.index()], 0);
    }

    #[test]
    fn a_socket_opened_during_the_read_and_missed_by_it_is_counted() {
        let mut t = Tally::new(TallyConfig::default());
        let window = vec![
            tr(1, 0, 80, Close, SynSent),
            tr(1, 41000, 80, SynSent, Established),
        ];
        t.reconcile_window(&[], 0, &window);
        assert_eq!(t.state_counts()[Established.index()], 1);
        // ... and one the read already saw in ESTABLISHED is not counted twice.
        let mut t = Tally::new(TallyConfig::default());
        t.reconcile_window(&[sock(Established, 41000, 80)], 0, &window);
        assert_eq!(t.state_counts()[Established.index()], 1);
        assert_eq!(t.state_counts()[SynSent.index()], 0);
    }
}
