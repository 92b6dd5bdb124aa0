//! The snapshot tables: one function per table, rows in, a `Table` out. A table whose
//! rows may come from several namespaces gets a NETNS column first.
use tcpmon::{
    model::{endpoint, CloseWaitSide, Direction, Process, TcpState},
    output::table::{thousands, Align, Table},
    snapshot::{
        analysis::{
            CloseWaitGroup, Connection, IpCount, Listener, PortCount, Retransmits, Stuck, Summary,
        },
        namespaces::NamespaceSummary,
    },
};

use super::NamespaceCells;

/// The NAMESPACES table: one row per namespace, largest first.
pub fn namespaces_table(ns: &NamespaceCells, rows: &[NamespaceSummary]) -> Table {
    use TcpState::*;
    let mut table = Table::new(&[
        ("NETNS", Align::Left),
        ("INODE", Align::Right),
        ("OWNER", Align::Left),
        ("TOTAL", Align::Right),
        ("ESTAB", Align::Right),
        ("LISTEN", Align::Right),
        ("TIME_WAIT", Align::Right),
        ("CLOSE_WAIT", Align::Right),
        ("SYN_RECV", Align::Right),
        ("OTHER", Align::Right),
    ]);
    for p in rows {
        let states = &p.summary.states;
        let shown = [Established, Listen, TimeWait, CloseWait, SynRecv];
        let other = p.summary.total - shown.iter().map(|s| states.get(*s)).sum::<u64>();
        let mut cells = vec![
            ns.cell(Some(p.namespace.inode)),
            p.namespace.inode.to_string(),
            p.namespace.owner.to_string(),
            thousands(p.summary.total),
        ];
        cells.extend(shown.iter().map(|s| thousands(states.get(*s))));
        cells.push(thousands(other));
        table.row(cells);
    }
    table
}

/// A table of `rows`, each made into cells by `cells`; when the rows may come from
/// several namespaces, a NETNS column comes first, filled from each row's `netns`.
pub fn tagged_table<T>(
    ns: Option<&NamespaceCells>,
    columns: &[(&'static str, Align)],
    rows: &[T],
    netns: impl Fn(&T) -> Option<u64>,
    cells: impl Fn(&T) -> Vec<String>,
) -> Table {
    let mut all = Vec::with_capacity(columns.len() + 1);
    if ns.is_some() {
        all.push(("NETNS", Align::Left));
    }
    all.extend_from_slice(columns);
    let mut table = Table::new(&all);
    for r in rows {
        table.row(match ns {
            Some(ns) => std::iter::once(ns.cell(netns(r))).chain(cells(r)).collect(),
            None => cells(r),
        });
    }
    table
}

/// A process, or "-" when it is not known.
fn process_cell(process: Option<&Process>) -> String {
    process.map_or_else(|| "-".into(), ToString::to_string)
}

pub fn states_table(summary: &Summary, include_zero: bool) -> Table {
    let mut table = Table::new(&[("STATE", Align::Left), ("COUNT", Align::Right)]);
    for (state, n) in summary
        .states
        .iter()
        .filter(|(_, n)| include_zero || *n > 0)
    {
        table.row(vec![state.name().into(), thousands(n)]);
    }
    table
}

pub fn listeners_table(listeners: &[Listener], ns: Option<&NamespaceCells>) -> Table {
    tagged_table(
        ns,
        &[
            ("LOCAL", Align::Left),
            ("BACKLOG", Align::Right),
            ("ACCEPT-Q", Align::Right),
            ("HALF-OPEN", Align::Right),
            ("UID", Align::Right),
            ("PROCESS", Align::Left),
        ],
        listeners,
        |l| l.netns,
        |l| {
            vec![
                endpoint(l.ip, l.port),
                l.backlog.map_or_else(|| "?".into(), |b| b.to_string()),
                l.accept_queue.to_string(),
                l.half_open.to_string(),
                l.uid.to_string(),
                process_cell(l.process.as_ref()),
            ]
        },
    )
}

/// Remote IPs: live connections first (what the per-IP rule judges), then what closing
/// leaves behind.
pub fn per_ip_table(rows: &[IpCount], ns: Option<&NamespaceCells>) -> Table {
    tagged_table(
        ns,
        &[
            ("REMOTE", Align::Left),
            ("ACTIVE", Align::Right),
            ("ESTAB", Align::Right),
            ("HANDSHAKE", Align::Right),
            ("HALF-OPEN", Align::Right),
            ("TIME_WAIT", Align::Right),
            ("CLOSE_WAIT", Align::Right),
            ("OTHER", Align::Right),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.ip.to_string(),
                thousands(r.active),
                thousands(r.established),
                thousands(r.syn_sent + r.syn_recv),
                thousands(r.half_open),
                thousands(r.time_wait),
                thousands(r.close_wait),
                thousands(r.other),
            ]
        },
    )
}

pub fn per_port_table(rows: &[PortCount], ns: Option<&NamespaceCells>, info: bool) -> Table {
    let mut columns = vec![
        ("PORT", Align::Right),
        ("DIRECTION", Align::Left),
        ("ESTABLISHED", Align::Right),
    ];
    if info {
        columns.extend([
            ("RTT AVG", Align::Right),
            ("RTT MAX", Align::Right),
            ("RETRANS", Align::Right),
            ("SEND-Q", Align::Right),
        ]);
    }
    tagged_table(
        ns,
        &columns,
        rows,
        |r| r.netns,
        |r| {
            let mut cells = vec![
                r.port.to_string(),
                match r.direction {
                    Direction::In => "in (local)".to_owned(),
                    Direction::Out => "out (remote)".to_owned(),
                },
                thousands(r.established),
            ];
            if info {
                let i = r.info.unwrap_or_default();
                cells.extend([
                    ms(i.rtt_avg_ms),
                    ms(i.rtt_max_ms),
                    thousands(i.total_retrans),
                    thousands(i.send_queue_bytes),
                ]);
            }
            cells
        },
    )
}

/// Milliseconds as tables show them (microseconds below one).
fn ms(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0}us", value * 1000.0)
    } else {
        format!("{value:.1}ms")
    }
}

/// Remote IPs by how much their connections retransmit (tcp_info).
pub fn retransmits_table(rows: &[Retransmits], ns: Option<&NamespaceCells>) -> Table {
    tagged_table(
        ns,
        &[
            ("REMOTE", Align::Left),
            ("CONNECTIONS", Align::Right),
            ("SEGS OUT", Align::Right),
            ("RETRANSMITTED", Align::Right),
            ("%", Align::Right),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.ip.to_string(),
                thousands(r.connections),
                thousands(r.segs_out),
                thousands(r.total_retrans),
                format!("{:.2}", r.retrans_pct),
            ]
        },
    )
}

/// Remote IPs whose connections cannot send (zero window, data queued).
pub fn stuck_table(rows: &[Stuck], ns: Option<&NamespaceCells>) -> Table {
    tagged_table(
        ns,
        &[
            ("REMOTE", Align::Left),
            ("CONNECTIONS", Align::Right),
            ("QUEUED BYTES", Align::Right),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                r.ip.to_string(),
                thousands(r.connections),
                thousands(r.queued_bytes),
            ]
        },
    )
}

/// CLOSE_WAIT by what leaks it: a server's port, or a client's remote server.
pub fn close_wait_table(rows: &[CloseWaitGroup], ns: Option<&NamespaceCells>) -> Table {
    tagged_table(
        ns,
        &[
            ("SIDE", Align::Left),
            ("PORT OR REMOTE", Align::Left),
            ("COUNT", Align::Right),
            ("UNREAD BYTES", Align::Right),
            ("PROCESS", Align::Left),
        ],
        rows,
        |r| r.netns,
        |r| {
            vec![
                match r.side {
                    CloseWaitSide::Server { .. } => "server".into(),
                    CloseWaitSide::Client { .. } => "client".into(),
                },
                r.side.subject(),
                thousands(r.count),
                thousands(r.unread_bytes),
                process_cell(r.process.as_ref()),
            ]
        },
    )
}

/// Connections, with their tcp_info when `info` and their process when `processes`.
pub fn connections_table(
    rows: &[Connection],
    timer_title: &'static str,
    ns: Option<&NamespaceCells>,
    info: bool,
    processes: bool,
) -> Table {
    let mut columns = vec![
        ("LOCAL", Align::Left),
        ("REMOTE", Align::Left),
        ("SEND-Q", Align::Right),
        ("RECV-Q", Align::Right),
        ("UID", Align::Right),
        (timer_title, Align::Right),
    ];
    if info {
        columns.extend([
            ("RTT", Align::Right),
            ("RETRANS", Align::Right),
            ("CWND", Align::Right),
            ("SENT", Align::Right),
            ("RECEIVED", Align::Right),
            ("DELIVERY", Align::Right),
        ]);
    }
    if processes {
        columns.push(("PROCESS", Align::Left));
    }
    tagged_table(
        ns,
        &columns,
        rows,
        |c| c.netns,
        |c| {
            let mut cells = vec![
                endpoint(c.local_ip, c.local_port),
                endpoint(c.remote_ip, c.remote_port),
                c.send_queue.to_string(),
                c.recv_queue.to_string(),
                c.uid.to_string(),
                c.timer_secs
                    .map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
            ];
            if info {
                match c.info {
                    Some(i) => cells.extend([
                        format!("{}/{}", ms(i.rtt_ms), ms(i.rttvar_ms)),
                        format!("{}/{}", i.retransmits, i.total_retrans),
                        i.snd_cwnd.to_string(),
                        thousands(i.bytes_acked),
                        thousands(i.bytes_received),
                        rate(i.delivery_rate),
                    ]),
                    None => cells.extend(std::iter::repeat_n("-".to_owned(), 6)),
                }
            }
            if processes {
                cells.push(process_cell(c.process.as_ref()));
            }
            cells
        },
    )
}

/// Bytes a second as bits a second, the way links are rated.
fn rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    match bits {
        b if b >= 1e9 => format!("{:.1}Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.1}Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1}kbit/s", b / 1e3),
        b => format!("{b:.0}bit/s"),
    }
}
