//! Parser and aggregation throughput on generated /proc/net/tcp{,6} content, 10k and 100k
//! sockets (roughly what `cat` reads on a busy server).
use std::net::IpAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tcpmon::{
    host::proc_net::{self as procfs, Socket},
    model::{Family, PortRange, TcpState},
    snapshot::{
        analysis::{Aggregator, Collect, Filter},
        Snapshot,
    },
};

/// A population shaped like a web server: mostly ESTABLISHED and TIME_WAIT from many
/// clients, a few listeners; a quarter of it IPv6.
fn generate(n: usize) -> (Bytes, Bytes) {
    let mut tcp = vec![procfs::header(Family::Ipv4).to_owned()];
    let mut tcp6 = vec![procfs::header(Family::Ipv6).to_owned()];
    for i in 0..n {
        let v6 = i % 4 == 0;
        let state = match i % 10 {
            0 if i < 40 => TcpState::Listen,
            0..=5 => TcpState::Established,
            6..=8 => TcpState::TimeWait,
            _ => TcpState::CloseWait,
        };
        let client = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let (local_ip, remote_ip): (IpAddr, IpAddr) = if v6 {
            (
                "2001:db8::1".parse().unwrap(),
                IpAddr::from([
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, client[0], client[1],
                    client[2], client[3],
                ]),
            )
        } else {
            ([192, 0, 2, 1].into(), client.into())
        };
        let s = Socket {
            family: if v6 { Family::Ipv6 } else { Family::Ipv4 },
            state,
            local_ip,
            local_port: 443,
            remote_ip,
            remote_port: 1024 + (i % 60000) as u16,
            tx_queue: 0,
            rx_queue: 0,
            timer: 0,
            timer_jiffies: 0,
            retransmits: 0,
            uid: 33,
            inode: 100_000 + i as u64,
        };
        let file = if v6 { &mut tcp6 } else { &mut tcp };
        let slot = file.len() - 1;
        file.push(procfs::format_line(slot, &s));
    }
    let join = |lines: Vec<String>| Bytes::from(lines.join("\n") + "\n");
    (join(tcp), join(tcp6))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    for n in [10_000usize, 100_000] {
        let (tcp, tcp6) = generate(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("parse", n),
            &(tcp.clone(), tcp6.clone()),
            |b, (tcp, tcp6)| {
                b.iter(|| {
                    let snapshot = Snapshot::from_bytes(tcp.clone(), Some(tcp6.clone()));
                    snapshot.rows().filter(|r| r.socket.is_ok()).count()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("parse_and_aggregate", n),
            &(tcp, tcp6),
            |b, (tcp, tcp6)| {
                b.iter(|| {
                    let snapshot = Snapshot::from_bytes(tcp.clone(), Some(tcp6.clone()));
                    let mut agg = Aggregator::new(
                        Filter::default(),
                        Collect::default(),
                        PortRange::LINUX_DEFAULT,
                    );
                    for row in snapshot.rows() {
                        agg.add_row(&row);
                    }
                    agg.finish(None, &Default::default()).total
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
