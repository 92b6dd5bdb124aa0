//! Stand-ins for the machine and the kernel, for tests and benchmarks of the engine:
//! a [`FakeHost`] whose clock, socket table and counters the caller sets, and a
//! [`FakeSource`] that hands out the records pushed into it.
use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use tcpmon_common::SockEvent;
use tokio::sync::Notify;

use super::{host::Host, source::EventSource};
use crate::{
    ebpf::{decode::DecodeError, KernelCounters, LoadError, SynCounterError},
    host::{
        diag::ListenerQueues,
        kstats::{Opens, SynCounters},
        netns::Namespace,
        proc_net::Socket,
    },
    model::{HalfOpen, PortRange, Process},
    snapshot::{namespaces::Failure, SnapshotError},
};

/// A machine whose every answer is a public field.
#[derive(Clone, Debug)]
pub struct FakeHost {
    pub now_ns: u64,
    pub wall_at_start: SystemTime,
    /// What a read of the socket table returns.
    pub sockets: Vec<Socket>,
    /// Socket table reads so far.
    pub socket_reads: usize,
    /// The next this many reads of the socket table fail (out of file descriptors).
    pub failing_reads: usize,
    pub sockstat_time_wait: Option<u64>,
    pub syn_counters: Option<SynCounters>,
    pub opens: Option<Opens>,
    /// Listener queues by address.
    pub queues: HashMap<(IpAddr, u16), ListenerQueues>,
    pub somaxconn: Option<u32>,
    pub half_open: HashMap<(IpAddr, u16), HalfOpen>,
    /// Owners by socket inode.
    pub owners: HashMap<u64, Process>,
    pub port_range: PortRange,
    /// The engine's own namespace.
    pub own_netns: Option<u64>,
    /// Other namespaces: what discovery finds, and what each holds (a namespace
    /// missing from `other_sockets` reads as gone).
    pub namespaces: Vec<Namespace>,
    pub other_sockets: HashMap<u64, Vec<Socket>>,
    pub other_time_wait: HashMap<u64, u64>,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self {
            now_ns: 1_000_000_000,
            wall_at_start: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            sockets: Vec::new(),
            socket_reads: 0,
            failing_reads: 0,
            sockstat_time_wait: None,
            syn_counters: None,
            opens: None,
            queues: HashMap::new(),
            somaxconn: Some(4096),
            half_open: HashMap::new(),
            owners: HashMap::new(),
            port_range: PortRange::LINUX_DEFAULT,
            own_netns: None,
            namespaces: Vec::new(),
            other_sockets: HashMap::new(),
            other_time_wait: HashMap::new(),
        }
    }
}

impl Host for FakeHost {
    fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn wall_now(&self) -> SystemTime {
        self.wall_at_start
    }

    fn sockets(&mut self) -> Result<Vec<Socket>, SnapshotError> {
        self.socket_reads += 1;
        if self.failing_reads > 0 {
            self.failing_reads -= 1;
            return Err(SnapshotError::Read {
                path: "/proc/net/tcp".into(),
                source: io::Error::from_raw_os_error(libc::EMFILE),
            });
        }
        Ok(self.sockets.clone())
    }

    fn sockstat_time_wait(&mut self) -> Option<u64> {
        self.sockstat_time_wait
    }

    fn syn_counters(&mut self) -> Option<SynCounters> {
        self.syn_counters
    }

    fn snmp_opens(&mut self) -> Option<Opens> {
        self.opens
    }

    fn listener_queues(&mut self) -> Option<HashMap<(IpAddr, u16), ListenerQueues>> {
        Some(self.queues.clone())
    }

    fn somaxconn(&mut self) -> Option<u32> {
        self.somaxconn
    }

    fn half_open(&mut self) -> Option<HashMap<(IpAddr, u16), HalfOpen>> {
        Some(self.half_open.clone())
    }

    fn owners(&mut self, inodes: &HashSet<u64>) -> HashMap<u64, Process> {
        self.owners
            .iter()
            .filter(|(inode, _)| inodes.contains(inode))
            .map(|(inode, p)| (*inode, p.clone()))
            .collect()
    }

    fn port_range(&mut self) -> PortRange {
        self.port_range
    }

    fn max_time_wait(&mut self) -> Option<usize> {
        None
    }

    fn own_namespace(&mut self) -> Option<u64> {
        self.own_netns
    }

    fn namespaces(&mut self) -> Vec<Namespace> {
        self.namespaces.clone()
    }

    fn namespace_reader(&mut self) -> super::host::NamespaceReader {
        let (now, tables) = (self.now_ns, self.other_sockets.clone());
        Box::new(move |ns| {
            let read = tables.get(&ns.inode).cloned().ok_or(Failure {
                reason: "gone".into(),
                gone: true,
            });
            (now, read)
        })
    }

    fn namespace_time_wait(&mut self, ns: &Namespace) -> Option<u64> {
        self.other_time_wait.get(&ns.inode).copied()
    }

    fn namespace_port_range(&mut self, _: &Namespace) -> Option<PortRange> {
        None
    }
}

/// The mode record of an engine that loaded its eBPF programs, saying `reason`.
pub fn ebpf_mode(reason: &str) -> super::record::ModeRecord {
    super::record::ModeRecord {
        schema_version: super::record::SCHEMA_VERSION,
        mode: super::record::Mode::Ebpf,
        reason: reason.to_owned(),
        notes: Vec::new(),
        fell_back: false,
        poll_interval: None,
    }
}

/// Records handed out in the order they were pushed.
#[derive(Debug, Default)]
pub struct FakeSource {
    pub pending: Vec<SockEvent>,
    /// Handed to the reader as undecodable.
    pub problems: Vec<DecodeError>,
    pub counters: KernelCounters,
    pub syn_counter_loaded: bool,
    pub syn_counter_attached: bool,
    /// Attaching the SYN counter fails.
    pub syn_counter_fails: bool,
    pub detached: bool,
    /// The kernel's drop and reset reasons by value.
    pub reasons: super::host::ReasonNames,
}

impl FakeSource {
    pub fn push(&mut self, record: SockEvent) {
        self.pending.push(record);
    }
}

impl EventSource for FakeSource {
    fn read<F: FnMut(&SockEvent)>(
        &mut self,
        _everything: bool,
        mut each: F,
        problems: &mut Vec<DecodeError>,
    ) {
        for record in self.pending.drain(..) {
            each(&record);
        }
        problems.append(&mut self.problems);
    }

    fn counters(&self) -> io::Result<KernelCounters> {
        Ok(self.counters)
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        None
    }

    fn syn_counter_loaded(&self) -> bool {
        self.syn_counter_loaded
    }

    fn syn_counter_attached(&self) -> bool {
        self.syn_counter_attached
    }

    fn set_syn_counter(&mut self, attached: bool) -> Result<(), SynCounterError> {
        if attached && self.syn_counter_fails {
            return Err(SynCounterError::Kernel(LoadError::Permission(
                "attaching: Operation not permitted".into(),
            )));
        }
        self.syn_counter_attached = attached;
        Ok(())
    }

    fn detach(&mut self) {
        self.detached = true;
    }

    fn reason_names(&self) -> super::host::ReasonNames {
        self.reasons.clone()
    }
}

/// Keeps every record the engine emits, owned.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub modes: Vec<super::record::ModeRecord>,
    /// Each transition with its time in the old state and origin.
    pub transitions: Vec<(crate::model::Transition, Option<u64>, crate::model::Origin)>,
    pub alerts: Vec<super::rules::Alert>,
    pub tallies: Vec<super::record::TallyRecord>,
    pub summaries: Vec<super::record::SummaryRecord>,
    pub flushes: usize,
    /// Fail every write from now on with this error kind.
    pub fail_with: Option<io::ErrorKind>,
}

impl RecordingSink {
    fn check(&self) -> io::Result<()> {
        match self.fail_with {
            Some(kind) => Err(io::Error::new(kind, "sink failure")),
            None => Ok(()),
        }
    }

    /// The last tally record.
    pub fn last_tally(&self) -> &super::record::TallyRecord {
        self.tallies.last().expect("a tally was written")
    }
}

impl super::Sink for RecordingSink {
    fn mode(&mut self, record: &super::record::ModeRecord) -> io::Result<()> {
        self.check()?;
        self.modes.push(record.clone());
        Ok(())
    }

    fn transition(&mut self, event: &super::record::TransitionEvent<'_>) -> io::Result<()> {
        self.check()?;
        self.transitions
            .push((*event.transition, event.micros_in_old, event.origin));
        Ok(())
    }

    fn alert(&mut self, record: &super::record::AlertRecord<'_>) -> io::Result<()> {
        self.check()?;
        self.alerts.push(record.alert.clone());
        Ok(())
    }

    fn tally(&mut self, record: &super::record::TallyRecord) -> io::Result<()> {
        self.check()?;
        self.tallies.push(record.clone());
        Ok(())
    }

    fn summary(&mut self, record: &super::record::SummaryRecord) -> io::Result<()> {
        self.check()?;
        self.summaries.push(record.clone());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        self.check()
    }
}
