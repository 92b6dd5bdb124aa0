//! `tcpmon top`: the live engine drawn in the terminal. The engine runs on the main
//! thread (as for watch and serve); the screen runs on a thread of its own, reading a
//! copy of the dashboard the engine's sink fills, so drawing never holds up the reader.
//! The terminal is put back on every way out: q, a signal, an error, a panic, a forced
//! exit.
use std::{
    io::{self, IsTerminal as _, Write as _},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use crossterm::{
    cursor,
    event::{self, Event},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};
use tcpmon::{
    model::{canonical_ip, EndpointFilter, TcpState},
    snapshot::{self, analysis::Filter, Info, NetnsChoice, ReadOptions, Want},
    top::{self, Action, DrillRequest, DrillState, Shared, Target, Theme, TopSink, View},
};

use super::live::{self, SayMode};
use crate::{
    cli::TopArgs,
    exit::Status,
    signals::{self, Stop},
    stderr::stderr_line,
};

/// Connections a drill-down lists at most.
const DRILL_LIMIT: usize = 1000;

pub fn run(args: &TopArgs) -> Result<Status> {
    if let Err(why) = check_terminal() {
        stderr_line(&format!(
            "tcpmon top: {why}: top draws a screen on a terminal; for a pipe or a file use `tcpmon watch --json` (or `tcpmon watch --quiet-transitions`)"
        ));
        return Ok(Status::Error);
    }
    let stop = Stop::new();
    signals::install(&stop).context("installing signal handlers")?;
    signals::before_forced_exit(restore_terminal);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let sink = TopSink::default();
    let shared = Arc::clone(&sink.shared);
    let mut start_sink = sink.clone();
    // Started before the terminal is taken, so that what it says (eBPF required and
    // unavailable, a baseline that cannot be read) reaches the person.
    let started = runtime.block_on(async {
        live::start(
            &args.live,
            args.engine_config(),
            &mut start_sink,
            SayMode::Nothing,
        )
    })?;
    let Some(started) = started else {
        return Ok(Status::Error);
    };
    let terminal = enter_terminal().context("taking over the terminal")?;
    let screen_done = Arc::new(AtomicBool::new(false));
    let screen = {
        let (stop, done) = (stop.clone(), Arc::clone(&screen_done));
        let interval = args.live.interval;
        let drill = DrillSource {
            proc_root: args.live.source_options().proc_root,
        };
        thread::Builder::new()
            .name("tcpmon-screen".into())
            .spawn(move || {
                let result = screen(terminal, &shared, &stop, &done, interval, &drill);
                // Whatever ended the screen ends the run.
                stop.request();
                result
            })
            .context("starting the screen thread")?
    };
    let ended = runtime.block_on(live::run_started(started, &args.live, sink, &stop));
    screen_done.store(true, Ordering::Release);
    let screen_result = screen.join();
    restore_terminal();
    ended.seen.say(&Ok(()));
    match screen_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context("drawing the screen")),
        Err(_) => anyhow::bail!("the screen thread panicked"),
    }
    ended.result?;
    Ok(Status::Clean)
}

/// Why the standard streams cannot hold a screen: which one is not a terminal, and what
/// it is instead.
fn check_terminal() -> Result<(), String> {
    for (name, is_terminal, fd) in [
        ("stdin", io::stdin().is_terminal(), io::stdin().as_raw_fd()),
        (
            "stdout",
            io::stdout().is_terminal(),
            io::stdout().as_raw_fd(),
        ),
    ] {
        if !is_terminal {
            return Err(format!("{name} is not a terminal ({})", what_is(fd)));
        }
    }
    match std::env::var("TERM") {
        Ok(term) if term == "dumb" => Err("TERM is dumb (no cursor movement)".into()),
        _ => Ok(()),
    }
}

/// What kind of file `fd` is, as people name it.
fn what_is(fd: i32) -> &'static str {
    // SAFETY: fstat fills the struct for any fd number (or fails).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return "closed";
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => "a pipe",
        libc::S_IFREG => "a file",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a device that is not a terminal, such as /dev/null",
        _ => "not a terminal",
    }
}

/// Whether the terminal was taken (and so must be given back).
static TAKEN: AtomicBool = AtomicBool::new(false);

fn enter_terminal() -> io::Result<Terminal<CrosstermBackend<io::Stdout>>> {
    // A panic anywhere puts the terminal back before its message is printed.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    terminal::enable_raw_mode()?;
    TAKEN.store(true, Ordering::Release);
    execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
    Terminal::new(CrosstermBackend::new(io::stdout()))
}

/// Gives the terminal back as it was (once; safe from any thread).
fn restore_terminal() {
    if TAKEN.swap(false, Ordering::AcqRel) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
        let _ = io::stdout().flush();
    }
}

/// Where drill-downs read their snapshots.
struct DrillSource {
    proc_root: tcpmon::host::ProcRoot,
}

impl DrillSource {
    /// Reads the connections `request` asks for, with tcp_info and owners.
    fn read(&self, request: DrillRequest) -> DrillState {
        let mut filter = Filter::default();
        match request.target {
            Target::Peer(ip) => {
                filter.endpoints = EndpointFilter {
                    port: None,
                    net: Some(ip.into()),
                }
            }
            Target::Port(port) => {
                filter.endpoints = EndpointFilter {
                    port: Some(port),
                    net: None,
                }
            }
            Target::State(state) => filter.states = vec![state],
            Target::Namespace(_) => return DrillState::Failed("nothing to open".into()),
        }
        let options = ReadOptions {
            proc_root: self.proc_root.clone(),
            netns: if request.netns.is_some() {
                NetnsChoice::All
            } else {
                NetnsChoice::Own
            },
            filter,
            // Picked out after the read: another namespace's, a peer's as the remote end.
            limit: None,
            want: Want {
                connections: TcpState::ALL.to_vec(),
                connection_owners: true,
                info: Info::Shown,
                ..Want::default()
            },
            ..ReadOptions::default()
        };
        match snapshot::read(&options) {
            Err(e) => DrillState::Failed(format!("{:#}", anyhow::Error::from(e))),
            Ok(read) => {
                let mut connections: Vec<_> = read
                    .connections
                    .items
                    .into_iter()
                    .filter(|c| request.netns.is_none_or(|inode| c.netns == Some(inode)))
                    .filter(|c| match request.target {
                        Target::Peer(ip) => canonical_ip(c.remote_ip) == canonical_ip(ip),
                        _ => true,
                    })
                    .collect();
                let total = connections.len() as u64;
                connections.truncate(DRILL_LIMIT);
                DrillState::Loaded {
                    connections,
                    total,
                    notes: read.notes,
                }
            }
        }
    }
}

/// The screen's loop: draw every `interval` and after every key, until q, a stop, or
/// the engine's end.
fn screen(
    mut terminal: Terminal<CrosstermBackend<io::Stdout>>,
    shared: &Shared,
    stop: &Stop,
    done: &AtomicBool,
    interval: Duration,
    drill_source: &DrillSource,
) -> io::Result<()> {
    let theme = Theme::from_env();
    let mut view = View::default();
    let mut cpu = CpuMeter::new();
    let (drill_tx, drill_rx) = mpsc::channel::<(DrillRequest, DrillState)>();
    let drill_source = Arc::new(DrillSource {
        proc_root: drill_source.proc_root.clone(),
    });
    let mut next_sample = Instant::now();
    let mut drawn_generation = None;
    let mut dirty = true;
    while !done.load(Ordering::Acquire) && !stop.requested() {
        let now = Instant::now();
        if now >= next_sample {
            top::lock(shared).cpu = cpu.sample();
            next_sample = now + interval;
        }
        // What the engine said since the last frame is drawn at once.
        let generation = top::lock(shared).generation;
        if drawn_generation != Some(generation) {
            drawn_generation = Some(generation);
            dirty = true;
        }
        while let Ok((request, state)) = drill_rx.try_recv() {
            view.drill_loaded(request, state);
            dirty = true;
        }
        if dirty {
            // A copy, so the engine's sink never waits on a frame being drawn.
            let dash = top::lock(shared).clone();
            terminal.draw(|frame| top::draw(frame, &dash, &view, theme))?;
            dirty = false;
        }
        let wait = next_sample
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        if !event::poll(wait)? {
            continue;
        }
        match event::read()? {
            Event::Key(key) => {
                let dash = top::lock(shared).clone();
                match view.on_key(key, &dash) {
                    Action::Quit => return Ok(()),
                    Action::Nothing => {}
                    Action::Redraw => dirty = true,
                    Action::Drill(request) => {
                        dirty = true;
                        let (tx, source) = (drill_tx.clone(), Arc::clone(&drill_source));
                        thread::Builder::new()
                            .name("tcpmon-drill".into())
                            .spawn(move || {
                                let _ = tx.send((request, source.read(request)));
                            })?;
                    }
                }
            }
            Event::Resize(..) => {
                terminal.autoresize()?;
                dirty = true;
            }
            _ => {}
        }
    }
    Ok(())
}

/// tcpmon's own CPU use since the last sample, in cores.
struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    fn new() -> Self {
        Self { last: None }
    }

    fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let used = cpu_seconds()?;
        let rate = self.last.and_then(|(at, before)| {
            let wall = now.duration_since(at).as_secs_f64();
            (wall > 0.0).then(|| (used - before).max(0.0) / wall)
        });
        self.last = Some((now, used));
        rate
    }
}

fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage fills the struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}
