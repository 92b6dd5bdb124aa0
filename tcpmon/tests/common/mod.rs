//! What the golden tests of the live side share: the clock's unit, tcpmon's own
//! namespace, the pod namespace beside it, and IPv4 transitions in tcpmon's namespace.
use std::net::IpAddr;

use tcpmon::{
    host::netns::{Access, Namespace},
    model::{owner::Owner, Endpoints, Family, TcpState, Transition},
};

pub const SEC: u64 = 1_000_000_000;
pub const NETNS: u32 = 4_026_531_840;
pub const POD_NETNS: u64 = 4_026_532_571;

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Socket `sk` going from `old` to `new` at `ts`, IPv4, in tcpmon's namespace.
pub fn transition(
    sk: u64,
    ts: u64,
    local: (&str, u16),
    remote: (&str, u16),
    old: TcpState,
    new: TcpState,
) -> Transition {
    Transition {
        at: Endpoints {
            ts_ns: ts,
            skaddr: sk,
            netns: NETNS,
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

/// A Kubernetes pod's namespace, found through its process 900.
pub fn pod() -> Namespace {
    Namespace {
        inode: POD_NETNS,
        name: None,
        owner: Owner::Pod {
            uid: "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b".into(),
            container: None,
            name: Some("web-7d9".into()),
        },
        access: Access::Pids(vec![900]),
    }
}
