//! `tcpmon watch`: attach the kernel program, stream transitions, print tallies, detach
//! cleanly on Ctrl-C / SIGTERM.
use std::{
    collections::HashMap,
    io::{self, Write},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;
use tcpmon::{
    analysis::parse_net,
    ebpf::{own_netns, KernelCounters, LoadOptions, NetnsFilter, Probe},
    event::{decode, Record, Transition},
    live::{Clock, Origin, TransitionRecord},
    model::{canonical_ip, TcpState},
    render::{json_line, Style},
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::cli::{parse_duration, parse_state, Mode};

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// NDJSON: one record per line, with "type" transition, alert or tally.
    #[arg(long)]
    pub json: bool,
    /// auto: eBPF, else poll /proc; ebpf: fail if eBPF cannot load; poll: never load eBPF.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Print a tally line this often.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub tally_interval: Duration,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Show events from every network namespace, not only tcpmon's own.
    #[arg(long)]
    pub all_netns: bool,
    /// Only transitions whose local or remote port is PORT.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only transitions whose local or remote address is in ADDR|CIDR.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = parse_net)]
    pub ip: Option<ipnet::IpNet>,
    /// Only transitions into or out of these states.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<TcpState>,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    #[arg(long, value_name = "BYTES", default_value_t = tcpmon_common::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
}

impl WatchArgs {
    fn shows(&self, t: &Transition) -> bool {
        let at = &t.at;
        self.port
            .is_none_or(|p| at.local_port == p || at.remote_port == p)
            && self.ip.is_none_or(|net| {
                [at.local_ip, at.remote_ip]
                    .into_iter()
                    .any(|ip| net.contains(&ip) || net.contains(&canonical_ip(ip)))
            })
            && (self.state.is_empty() || self.state.contains(&t.old) || self.state.contains(&t.new))
    }
}

/// Counts the user-space side of the pipeline keeps.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Received {
    transitions: u64,
    synack_retransmits: u64,
    syn_requests: u64,
    decode_errors: u64,
}

pub fn run(args: &WatchArgs, style: Style) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(watch(args, style))
}

async fn watch(args: &WatchArgs, style: Style) -> Result<u8> {
    let _ = style;
    let netns = if args.all_netns {
        NetnsFilter::All
    } else {
        NetnsFilter::Only(own_netns().context("reading /proc/self/ns/net")?)
    };
    let options = LoadOptions {
        netns,
        ring_bytes: args.ring_bytes,
        synack: true,
    };
    let mut probe = match Probe::load(&options) {
        Ok(probe) => probe,
        Err(e) => {
            eprintln!("tcpmon: eBPF unavailable: {e}");
            return Ok(1);
        }
    };
    for note in &probe.notes {
        eprintln!("tcpmon: note: {note}");
    }
    let mut logger = probe.take_logger();
    let ring = probe.ring.take().expect("ring taken once");
    // SAFETY: the AsyncFd owns the ring buffer, so its fd outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with the runtime")?;
    let mode_line = format!(
        "watching TCP state transitions with eBPF ({}; ring buffer {} KiB)",
        match netns {
            NetnsFilter::All => "all network namespaces".to_owned(),
            NetnsFilter::Only(inode) => format!("network namespace {inode}"),
        },
        args.ring_bytes / 1024
    );
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(256 << 10, stdout.lock());
    if args.json {
        json_line(
            &mut out,
            &serde_json::json!({"type": "mode", "mode": "ebpf", "reason": mode_line}),
        )?;
    } else {
        writeln!(out, "tcpmon: {mode_line}")?;
    }
    out.flush()?;

    let clock = Clock::now();
    let mut since: HashMap<u64, u64> = HashMap::new();
    let mut received = Received::default();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tally_tick = tokio::time::interval(args.tally_interval);
    tally_tick.tick().await;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stop = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut last = (
        received,
        KernelCounters::default(),
        tokio::time::Instant::now(),
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match decode(&item) {
                        Ok(Record::Transition(t)) => {
                            received.transitions += 1;
                            let ms_in_old = match t.new {
                                TcpState::Close => since.remove(&t.at.skaddr),
                                _ => since.insert(t.at.skaddr, t.at.ts_ns),
                            }
                            .map(|entered| t.at.ts_ns.saturating_sub(entered) as f64 / 1e6);
                            if args.shows(&t) {
                                let record = TransitionRecord::new(&t, &clock, ms_in_old, Origin::Ebpf);
                                if args.json {
                                    json_line(&mut out, &record)?;
                                } else {
                                    record.write_human(&mut out)?;
                                }
                            }
                        }
                        Ok(Record::SynAckRetransmit(_)) => received.synack_retransmits += 1,
                        Ok(Record::SynRequest(_)) => received.syn_requests += 1,
                        Err(e) => {
                            received.decode_errors += 1;
                            log::warn!("undecodable ring-buffer record: {e}");
                        }
                    }
                }
                guard.clear_ready();
                if let Some(logger) = logger.as_mut() {
                    logger.flush();
                }
                out.flush()?;
            }
            _ = tally_tick.tick() => {
                let kernel = probe.counters().unwrap_or_default();
                write_tally(&mut out, args.json, &received, &kernel, &last)?;
                last = (received, kernel, tokio::time::Instant::now());
                out.flush()?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut stop => break,
        }
    }
    // Drain what is already queued so the final tally covers it.
    let ring = ring.get_mut();
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(Record::Transition(_)) => received.transitions += 1,
            Ok(Record::SynAckRetransmit(_)) => received.synack_retransmits += 1,
            Ok(Record::SynRequest(_)) => received.syn_requests += 1,
            Err(_) => received.decode_errors += 1,
        }
    }
    let kernel = probe.counters().unwrap_or_default();
    write_tally(&mut out, args.json, &received, &kernel, &last)?;
    out.flush()?;
    drop(probe);
    Ok(0)
}

fn write_tally(
    out: &mut dyn Write,
    json: bool,
    received: &Received,
    kernel: &KernelCounters,
    last: &(Received, KernelCounters, tokio::time::Instant),
) -> Result<()> {
    let elapsed = last.2.elapsed().as_secs_f64().max(1e-3);
    let rate = (received.transitions - last.0.transitions) as f64 / elapsed;
    if json {
        json_line(
            out,
            &serde_json::json!({
                "type": "tally",
                "received": received,
                "kernel": kernel,
                "lost": kernel.lost() + received.decode_errors,
                "transitions_per_sec": rate,
            }),
        )?;
    } else {
        writeln!(
            out,
            "-- tally: {} transitions ({rate:.0}/s), {} SYN-ACK retransmits | lost: ring buffer full {}, kernel skipped {}, undecodable {}",
            received.transitions, received.synack_retransmits, kernel.ringbuf_full, kernel.recursion_misses, received.decode_errors
        )?;
    }
    Ok(())
}
