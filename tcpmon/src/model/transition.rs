//! A TCP state change as the live engine applies it, whichever source reported it.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Family, TcpState, Tuple};

/// The 4-tuple and identity shared by every live record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's bpf_ktime_get_ns()).
    pub ts_ns: u64,
    /// Identifies the socket while it lives: its kernel address from eBPF, an id derived
    /// from the inode or tuple when polling.
    pub skaddr: u64,
    /// Network namespace inode (0: unknown).
    pub netns: u32,
    pub family: Family,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

impl Endpoints {
    /// The canonical tuple (v4-mapped addresses as IPv4).
    pub fn tuple(&self) -> Tuple {
        Tuple::new(
            (self.local_ip, self.local_port),
            (self.remote_ip, self.remote_port),
        )
    }
}

/// One TCP state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub at: Endpoints,
    pub old: TcpState,
    pub new: TcpState,
    /// The task in whose context the transition ran: `None` in softirq, where the kernel
    /// processes packets on behalf of nobody in particular.
    pub task: Option<Task>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    /// The task's name as the kernel holds it: up to 16 bytes, NUL-padded, any bytes.
    pub comm: [u8; 16],
}

impl Task {
    pub fn is_softirq_thread(&self) -> bool {
        self.comm.starts_with(b"ksoftirqd/")
    }

    /// Whether this task really made the transition `old -> new`: only a system call
    /// does (see [`made_by_syscall`]), and never the idle task (pid 0, which is what a
    /// record without a task carries) or a softirq thread.
    pub fn attributable(&self, old: TcpState, new: TcpState) -> bool {
        made_by_syscall(old, new) && self.pid != 0 && !self.is_softirq_thread()
    }

    /// The name up to its first NUL, invalid UTF-8 replaced.
    pub fn comm(&self) -> String {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

/// Transitions the kernel only makes inside a system call of the socket's owner:
/// listen(), connect() and close()/shutdown(). Everything else may run in softirq, where the
/// current task is whoever was interrupted, and the tracepoint does not say which context
/// it ran in (its context flags are not filled in for BPF, and BPF's private stack hides the
/// IRQ stack), so those transitions get no pid rather than a wrong one.
pub fn made_by_syscall(old: TcpState, new: TcpState) -> bool {
    tcpmon_common::made_by_syscall(old as u8, new as u8)
}

/// How a transition was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Reported by the kernel as it happened.
    Ebpf,
    /// Deduced from the difference between two snapshots (poll mode): the exact moment
    /// and any intermediate states are unknown.
    Inferred,
}
