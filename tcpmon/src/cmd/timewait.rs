//! `tcpmon timewait`: how much TIME_WAIT there is, toward whom, and how close any
//! destination is to running out of ephemeral ports.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    model::{endpoint, Listed, PortRange, TcpState},
    output::table::{thousands, Align, Style},
    snapshot::{
        analysis::{Connection, Destination},
        Want,
    },
};

use crate::{
    cli::SnapshotArgs,
    exit::Status,
    render::{
        header::write_header,
        json::write_json,
        lists::{listed_section, section, write_listed},
        tables::{connections_table, tagged_table},
        NamespaceCells,
    },
};

pub fn run(args: &SnapshotArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let loaded = super::read(
        args,
        Want {
            connections: vec![TcpState::TimeWait],
            ..Want::default()
        },
    )?;
    let s = &loaded.summary;
    let time_wait = s.states.get(TcpState::TimeWait);
    let with_tw: Vec<Destination> = s
        .destinations
        .iter()
        .filter(|d| d.time_wait > 0)
        .cloned()
        .collect();
    let destinations = Listed::cut(&with_tw, args.limit());
    if args.json {
        #[derive(Serialize)]
        struct Body<'a> {
            time_wait: u64,
            port_range: PortRange,
            destinations: &'a Listed<Destination>,
            sockets: &'a Listed<Connection>,
        }
        write_json(
            out,
            &loaded,
            Body {
                time_wait,
                port_range: s.port_range,
                destinations: &destinations,
                sockets: &loaded.connections,
            },
        )?;
        return Ok(Status::Clean);
    }
    write_header(out, &loaded, style)?;
    writeln!(
        out,
        "\n{} {}",
        style.heading("TIME_WAIT:"),
        thousands(time_wait)
    )?;
    let range = s.port_range;
    section(
        out,
        style,
        &if loaded.namespaces.is_some() {
            "CLIENT-SIDE TIME_WAIT BY DESTINATION (% of each namespace's ephemeral range)".into()
        } else {
            format!(
                "CLIENT-SIDE TIME_WAIT BY DESTINATION (ephemeral range {}-{}, {} ports)",
                range.low,
                range.high,
                range.size()
            )
        },
    )?;
    let cells = NamespaceCells::of(&loaded);
    let ns = cells.as_ref();
    // Each namespace has its own ephemeral range.
    let range_of = |tag: Option<u64>| {
        loaded
            .namespaces
            .as_ref()
            .and_then(|ns| ns.parts.iter().find(|p| Some(p.namespace.inode) == tag))
            .map_or(range, |p| p.summary.port_range)
    };
    let table = tagged_table(
        ns,
        &[
            ("DESTINATION", Align::Left),
            ("TIME_WAIT", Align::Right),
            ("ALL STATES", Align::Right),
            ("% OF RANGE", Align::Right),
        ],
        &destinations.items,
        |d| d.netns,
        |d| {
            vec![
                endpoint(d.ip, d.port),
                thousands(d.time_wait),
                thousands(d.total),
                format!(
                    "{:.1}",
                    d.total as f64 * 100.0 / range_of(d.netns).size() as f64
                ),
            ]
        },
    );
    write_listed(out, table, &destinations, "destinations")?;
    listed_section(
        out,
        style,
        "TIME_WAIT SOCKETS",
        connections_table(&loaded.connections.items, "EXPIRES IN", ns, false, false),
        &loaded.connections,
        "sockets",
    )?;
    Ok(Status::Clean)
}
