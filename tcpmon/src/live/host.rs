//! What the live engine asks of the machine, behind one narrow interface: the socket
//! table, the kernel's cheap counters, listener queues, owners and the clock. The real
//! [`SystemHost`] reads them under a /proc root and through netlink; tests fake them.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::SystemTime,
};

use crate::{
    host::{
        clock::monotonic_ns,
        diag::{self, ListenerQueues},
        kstats::{Opens, SynCounters},
        netns::{self, Namespace},
        proc_net::Socket,
        process, ProcRoot,
    },
    model::{HalfOpen, PortRange, Process},
    snapshot::{
        namespaces::{self, Failure},
        Snapshot, SnapshotError,
    },
};

/// Reads one namespace's sockets: when the read began (monotonic ns), and what it found.
pub type NamespaceReader = Box<dyn FnMut(&Namespace) -> (u64, Result<Vec<Socket>, Failure>) + Send>;

/// The machine as the engine sees it.
pub use crate::ebpf::btf::ReasonNames;

pub trait Host {
    /// CLOCK_MONOTONIC nanoseconds: the clock the kernel stamps events with.
    fn now_ns(&self) -> u64;
    /// Wall-clock time now (to date the monotonic stamps).
    fn wall_now(&self) -> SystemTime;
    /// Every socket of the watched namespace, read in one go.
    fn sockets(&mut self) -> Result<Vec<Socket>, SnapshotError>;
    /// `tw` of /proc/net/sockstat.
    fn sockstat_time_wait(&mut self) -> Option<u64>;
    /// The TcpExt counters that tell SYN trouble (absolute values).
    fn syn_counters(&mut self) -> Option<SynCounters>;
    /// ActiveOpens / PassiveOpens.
    fn snmp_opens(&mut self) -> Option<Opens>;
    /// Listener backlogs and accept queues by canonical (address, port).
    fn listener_queues(&mut self) -> Option<HashMap<(IpAddr, u16), ListenerQueues>>;
    fn somaxconn(&mut self) -> Option<u32>;
    /// Half-open request sockets per listener.
    fn half_open(&mut self) -> Option<HashMap<(IpAddr, u16), HalfOpen>>;
    /// The processes holding these socket inodes (those found).
    fn owners(&mut self, inodes: &HashSet<u64>) -> HashMap<u64, Process>;
    fn port_range(&mut self) -> PortRange;
    /// net.ipv4.tcp_max_tw_buckets.
    fn max_time_wait(&mut self) -> Option<usize>;
    /// Hands freed heap back to the system after a large read (a no-op for fakes).
    fn release_memory(&mut self) {}
    /// The network namespace the engine's own tables are of (its inode).
    fn own_namespace(&mut self) -> Option<u64>;
    /// Every network namespace on the machine (`--all-netns`), with its owner.
    fn namespaces(&mut self) -> Vec<Namespace>;
    /// What reads other namespaces' sockets (possibly on another thread).
    fn namespace_reader(&mut self) -> NamespaceReader;
    /// Whether the engine should read other namespaces on a thread of their own, so
    /// that it keeps draining the rings meanwhile (the real machine), or inline (fakes:
    /// deterministic tests).
    fn reads_in_background(&self) -> bool {
        false
    }
    /// `tw` of another namespace's sockstat.
    fn namespace_time_wait(&mut self, ns: &Namespace) -> Option<u64>;
    /// Another namespace's ephemeral port range, when it can be read (from inside).
    fn namespace_port_range(&mut self, ns: &Namespace) -> Option<PortRange>;
    /// Container roots whose reads did not answer (see `host::deadline`).
    fn unanswered_roots(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

/// The real machine: files under a /proc root, sock_diag in tcpmon's own namespace.
#[derive(Clone, Debug, Default)]
pub struct SystemHost {
    pub proc: ProcRoot,
}

impl SystemHost {
    pub fn new(proc: ProcRoot) -> Self {
        Self { proc }
    }
}

impl Host for SystemHost {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn wall_now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sockets(&mut self) -> Result<Vec<Socket>, SnapshotError> {
        // Netlink for tcpmon's own namespace; /proc (which says the same, slower) for
        // another /proc tree or when netlink fails.
        if self.proc.is_own() {
            match crate::snapshot::sockets_netlink() {
                Ok(sockets) => return Ok(sockets),
                Err(e) => log::debug!("sock_diag dump failed ({e}); reading /proc"),
            }
        }
        Ok(Snapshot::read(&self.proc)?.sockets().collect())
    }

    fn sockstat_time_wait(&mut self) -> Option<u64> {
        self.proc.sockstat_time_wait()
    }

    fn syn_counters(&mut self) -> Option<SynCounters> {
        self.proc.syn_counters()
    }

    fn snmp_opens(&mut self) -> Option<Opens> {
        self.proc.snmp_opens()
    }

    fn listener_queues(&mut self) -> Option<HashMap<(IpAddr, u16), ListenerQueues>> {
        diag::listener_queues_by_address().ok()
    }

    fn somaxconn(&mut self) -> Option<u32> {
        self.proc.somaxconn()
    }

    fn half_open(&mut self) -> Option<HashMap<(IpAddr, u16), HalfOpen>> {
        diag::half_open().ok()
    }

    fn owners(&mut self, inodes: &HashSet<u64>) -> HashMap<u64, Process> {
        process::find_owners(&self.proc, inodes).by_inode
    }

    fn port_range(&mut self) -> PortRange {
        self.proc.port_range()
    }

    fn max_time_wait(&mut self) -> Option<usize> {
        self.proc.max_time_wait()
    }

    fn release_memory(&mut self) {
        // SAFETY: glibc's malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }

    fn own_namespace(&mut self) -> Option<u64> {
        netns::own_inode().ok().map(u64::from)
    }

    fn unanswered_roots(&self) -> Vec<std::path::PathBuf> {
        crate::host::deadline::unanswered()
            .into_iter()
            .filter(|r| r.starts_with(self.proc.path()))
            .collect()
    }

    fn namespaces(&mut self) -> Vec<Namespace> {
        let run = if self.proc.is_own() {
            std::path::PathBuf::from("/run/netns")
        } else {
            self.proc.path().join("../run/netns")
        };
        netns::discover(&self.proc, &run).namespaces
    }

    fn namespace_reader(&mut self) -> NamespaceReader {
        let own = self.own_namespace();
        let proc = self.proc.clone();
        Box::new(move |ns| {
            let at = monotonic_ns();
            let read = namespaces::read_one(&proc, ns, own).map(|s| s.sockets().collect());
            (at, read)
        })
    }

    fn reads_in_background(&self) -> bool {
        true
    }

    fn namespace_time_wait(&mut self, ns: &Namespace) -> Option<u64> {
        let own = self.own_namespace();
        namespaces::sockstat_time_wait(&self.proc, ns, own)
    }

    fn namespace_port_range(&mut self, ns: &Namespace) -> Option<PortRange> {
        let own = self.own_namespace();
        namespaces::from_inside(&self.proc, ns, own).port_range
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TcpState;

    #[test]
    fn the_engine_reads_its_own_namespace_through_netlink_as_proc_shows_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ours = |sockets: Vec<Socket>| -> Vec<(u64, TcpState)> {
            sockets
                .into_iter()
                .filter(|s| s.local_port == port)
                .map(|s| (s.inode, s.state))
                .collect()
        };
        assert!(crate::snapshot::sockets_netlink().is_ok());
        let through_netlink = ours(SystemHost::default().sockets().unwrap());
        // Not the path "/proc", so not this namespace's own by name: read as text.
        let through_proc = ours(
            SystemHost::new(ProcRoot::new("/proc/self/.."))
                .sockets()
                .unwrap(),
        );
        assert_eq!(through_netlink.len(), 1);
        assert_eq!(through_netlink[0].1, TcpState::Listen);
        assert_eq!(through_netlink, through_proc);
        drop(listener);
    }
}
