//! Everything that touches the operating system: files under one /proc root, netlink,
//! process tables, scheduling priority and the clock. The rest of the library gets what
//! it needs from here (or, in the live engine, through the `live::Host` interface that
//! tests fake).
pub mod caps;
pub mod clock;
pub mod deadline;
pub mod diag;
pub mod kstats;
pub mod limits;
pub mod netns;
pub mod priority;
pub mod proc_net;
pub mod process;
pub mod read;
pub mod sock_diag;

use std::path::{Path, PathBuf};

use crate::model::{Family, PortRange};

/// The /proc tree tcpmon reads (the host's, or another one mounted elsewhere with
/// `--proc-root`): every path it opens under it is named here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcRoot {
    root: PathBuf,
}

impl Default for ProcRoot {
    fn default() -> Self {
        Self::host()
    }
}

impl ProcRoot {
    /// This machine's /proc, as seen from tcpmon's own namespaces.
    pub fn host() -> Self {
        Self::new("/proc")
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether this is tcpmon's own /proc, whose sockets netlink can also be asked about
    /// (another /proc's sockets are not ours to ask about).
    pub fn is_own(&self) -> bool {
        self.root == Path::new("/proc")
    }

    /// net/tcp or net/tcp6.
    pub fn socket_table(&self, family: Family) -> PathBuf {
        self.root.join(match family {
            Family::Ipv4 => "net/tcp",
            Family::Ipv6 => "net/tcp6",
        })
    }

    pub fn sockstat(&self) -> PathBuf {
        self.root.join("net/sockstat")
    }

    pub fn netstat(&self) -> PathBuf {
        self.root.join("net/netstat")
    }

    pub fn snmp(&self) -> PathBuf {
        self.root.join("net/snmp")
    }

    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// The sysctl `name` (dotted, as `sysctl` spells it).
    pub fn sysctl(&self, name: &str) -> PathBuf {
        self.root.join("sys").join(name.replace('.', "/"))
    }

    fn read_sysctl<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        read::small_text(&self.sysctl(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// net.ipv4.ip_local_port_range, or the kernel's default when it cannot be read.
    pub fn port_range(&self) -> PortRange {
        self.port_range_opt().unwrap_or(PortRange::LINUX_DEFAULT)
    }

    /// net.ipv4.ip_local_port_range, when it can be read.
    pub fn port_range_opt(&self) -> Option<PortRange> {
        read::small_text(&self.sysctl("net.ipv4.ip_local_port_range"))
            .ok()
            .and_then(|text| PortRange::parse(&text))
    }

    /// net.core.somaxconn: the most any listener's backlog can be.
    pub fn somaxconn(&self) -> Option<u32> {
        self.read_sysctl("net.core.somaxconn")
    }

    /// net.ipv4.tcp_max_tw_buckets: the kernel's cap on TIME_WAIT sockets.
    pub fn max_time_wait(&self) -> Option<usize> {
        self.read_sysctl("net.ipv4.tcp_max_tw_buckets")
    }

    /// `tw` of /proc/net/sockstat: TIME_WAIT (and FIN_WAIT2 mini-) sockets.
    pub fn sockstat_time_wait(&self) -> Option<u64> {
        kstats::sockstat_time_wait(&read::small_text(&self.sockstat()).ok()?)
    }

    /// The TcpExt counters that tell SYN trouble, as absolute values.
    pub fn syn_counters(&self) -> Option<kstats::SynCounters> {
        let text = read::small_text(&self.netstat()).ok()?;
        Some(kstats::SynCounters::from_tcp_ext(&kstats::tcp_ext(&text)))
    }

    /// ActiveOpens and PassiveOpens of /proc/net/snmp.
    pub fn snmp_opens(&self) -> Option<kstats::Opens> {
        kstats::snmp_opens(&read::small_text(&self.snmp()).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_root() {
        let root = ProcRoot::new("/mnt/host-proc");
        assert!(!root.is_own());
        assert!(ProcRoot::host().is_own());
        assert_eq!(
            root.socket_table(Family::Ipv6),
            Path::new("/mnt/host-proc/net/tcp6")
        );
        assert_eq!(
            root.sysctl("net.ipv4.ip_local_port_range"),
            Path::new("/mnt/host-proc/sys/net/ipv4/ip_local_port_range")
        );
        assert_eq!(root.pid_dir(42), Path::new("/mnt/host-proc/42"));
    }

    #[test]
    fn missing_sysctls_fall_back() {
        let root = ProcRoot::new("/nonexistent");
        assert_eq!(root.port_range(), PortRange::LINUX_DEFAULT);
        assert_eq!(root.somaxconn(), None);
        assert_eq!(root.sockstat_time_wait(), None);
    }
}
