//! The one run sequence of the live commands (`watch`, `serve`): start the library's
//! engine (eBPF, else polling), say how it runs, run it until a stop signal or
//! `--duration`, detach, write the final tally, and say what it saw on the way out.
use std::future::Future;

use anyhow::Result;
use tcpmon::{
    ebpf::KernelCounters,
    live::{self, loss::Received, record::Mode, EngineConfig, EngineError, Sink, StartError},
    output::human::loss_breakdown,
};

use crate::{cli::LiveArgs, signals::Stop, stderr::stderr_line};

/// When the mode (eBPF, or polling and why) is said on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SayMode {
    /// Always (the command has no other output that says it).
    Always,
    /// Only when eBPF could not load and `--mode auto` fell back to polling (the
    /// command's own output shows the mode otherwise).
    WhenFallenBack,
    /// Never: the command's output says it where the person reads stderr too (text on
    /// the terminal).
    Never,
    /// Nothing at all, notes included: the screen shows them (`top`, which owns the
    /// terminal).
    Nothing,
}

/// How a run ended.
pub struct Ended<K> {
    pub sink: K,
    /// The run's error, or the final tally's.
    pub result: Result<(), EngineError>,
    pub seen: Seen,
}

/// What a run saw and lost.
pub struct Seen {
    pub mode: Mode,
    pub received: Received,
    pub kernel: KernelCounters,
    pub lost: u64,
    pub reconciliations: u64,
}

/// An engine started, not yet running.
pub struct Started {
    engine: live::Engine<live::host::SystemHost, live::source::EbpfSource>,
    mode: live::record::ModeRecord,
}

/// Runs the engine over `sink` until `stop` (or `--duration`); `None` when eBPF was
/// required (`--mode ebpf`) and could not load, which has been said.
pub async fn run<K: Sink>(
    live: &LiveArgs,
    config: EngineConfig,
    mut sink: K,
    stop: &Stop,
    say_mode: SayMode,
) -> Result<Option<Ended<K>>> {
    let Some(started) = start(live, config, &mut sink, say_mode)? else {
        return Ok(None);
    };
    Ok(Some(run_started(started, live, sink, stop).await))
}

/// Starts the engine (loads eBPF or falls back, reads the baseline) and says what
/// `say_mode` asks on stderr; `None` as for [`run`].
pub fn start<K: Sink>(
    live: &LiveArgs,
    mut config: EngineConfig,
    sink: &mut K,
    say_mode: SayMode,
) -> Result<Option<Started>> {
    if let Some(path) = &live.listeners_allow {
        config.listeners_allow = Some(super::read_allowlist(path)?);
    }
    let engine = match live::start(config, &live.source_options(), sink) {
        Ok(engine) => engine,
        Err(StartError::Ebpf(e)) => {
            stderr_line(&format!("tcpmon: eBPF unavailable: {e}"));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mode = engine.mode().clone();
    if say_mode != SayMode::Nothing {
        for note in &mode.notes {
            stderr_line(&format!("tcpmon: note: {note}"));
        }
    }
    if say_mode == SayMode::Always || (say_mode == SayMode::WhenFallenBack && mode.fell_back) {
        stderr_line(&format!("tcpmon: {}", mode.reason));
    }
    Ok(Some(Started { engine, mode }))
}

/// Runs a started engine until `stop` (or `--duration`), detaches, writes the final
/// tally.
pub async fn run_started<K: Sink>(
    started: Started,
    live: &LiveArgs,
    mut sink: K,
    stop: &Stop,
) -> Ended<K> {
    let Started { mut engine, mode } = started;
    let ran = engine.run(&mut sink, until(stop, live.duration)).await;
    // Whatever ended the run, the programs are detached and the final tally attempted.
    stop.enter_finish();
    let finished = engine.finish(&mut sink).map(|_| ());
    Ended {
        sink,
        result: ran.and(finished),
        seen: Seen {
            mode: mode.mode,
            received: *engine.received(),
            kernel: *engine.kernel(),
            lost: engine.lost(),
            reconciliations: engine.reconciliations(),
        },
    }
}

/// Completes at a stop request, or after `duration` when one is given.
fn until(stop: &Stop, duration: Option<std::time::Duration>) -> impl Future<Output = ()> {
    let stop = stop.clone();
    async move {
        match duration {
            Some(d) => tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = stop.wait() => {}
            },
            None => stop.wait().await,
        }
    }
}

/// What the exit line says of output that was not all written.
fn output_loss(output: &std::io::Result<()>) -> String {
    use std::io::ErrorKind;
    match output {
        Ok(()) => String::new(),
        Err(e) => match e.kind() {
            ErrorKind::BrokenPipe => "; the output was cut short (its reader went away)".into(),
            ErrorKind::TimedOut | ErrorKind::Interrupted => {
                "; the output was not all written (its reader stopped reading)".into()
            }
            _ => format!("; the output was not all written: {e}"),
        },
    }
}

impl Seen {
    /// The last line on stderr: what the run saw, and what it lost and why; `output`:
    /// whether everything was written, or why not.
    pub fn say(&self, output: &std::io::Result<()>) {
        let reconciliations = self.reconciliations;
        stderr_line(&format!(
            "tcpmon: detached ({} mode): {} transitions{}, {} lost {}, {reconciliations} reconciliation{}{}{}",
            self.mode.name(),
            self.received.transitions,
            if self.received.foreign > 0 {
                format!(
                    " in tcpmon's namespace and {} in others",
                    self.received.foreign
                )
            } else {
                String::new()
            },
            self.lost,
            if self.mode == Mode::Ebpf {
                loss_breakdown(&self.kernel, &self.received)
            } else {
                "(polling)".to_owned()
            },
            if reconciliations == 1 { "" } else { "s" },
            if self.received.self_transitions > 0 {
                format!(
                    "; {} transitions from a state to itself not shown",
                    self.received.self_transitions
                )
            } else {
                String::new()
            },
            output_loss(output)
        ));
    }
}

/// Where `serve` records when no `--history` is given: the unit's state directory.
pub fn default_history_path() -> std::path::PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        // systemd may list several, colon-separated: the first is tcpmon's.
        .and_then(|dirs| {
            dirs.to_str()
                .and_then(|d| d.split(':').next())
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| "/var/lib/tcpmon".into())
        .join("history.db")
}

/// Opens the history the flags ask for and starts its writer. `default`: the path used
/// without `--history` (serve's), where a directory that cannot be made only turns
/// history off, with a note. A file tcpmon refuses (not its own, damaged, newer) is an
/// error: it is never written over.
pub fn open_history(
    args: &crate::cli::HistoryArgs,
    default: Option<std::path::PathBuf>,
) -> Result<Option<tcpmon::history::recorder::Recorder>> {
    use tcpmon::history::{recorder::Recorder, History, HistoryError};
    let explicit = args.history.is_some();
    let Some(path) = args.history.clone().or(default) else {
        return Ok(None);
    };
    if args.history_reset {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Some(aside) = History::reset(&path, now)? {
            stderr_line(&format!(
                "tcpmon: the old history was moved to {}",
                aside.display()
            ));
        }
    }
    let history = match History::open(&path, args.history_max_bytes) {
        Ok(history) => history,
        Err(e @ (HistoryError::Io { .. } | HistoryError::Sqlite { .. })) if !explicit => {
            stderr_line(&format!(
                "tcpmon: note: no history recorded ({e}); give --history PATH, or --no-history"
            ));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    stderr_line(&format!(
        "tcpmon: recording history in {} every {} (tcpmon trends --history {0} reads it)",
        path.display(),
        humantime::format_duration(args.history_interval)
    ));
    let recorder = Recorder::start(history, Box::new(stderr_line))?;
    Ok(Some(recorder))
}

/// The sink that records into `recorder` (when there is one) around `inner`.
pub fn history_sink<K: Sink>(
    recorder: Option<&tcpmon::history::recorder::Recorder>,
    args: &crate::cli::HistoryArgs,
    inner: K,
) -> tcpmon::history::recorder::HistorySink<K> {
    use tcpmon::history::{recorder::HistorySink, Sampler};
    match recorder {
        Some(r) => {
            let range = tcpmon::host::ProcRoot::default().port_range().size();
            r.sink(inner, args.history_interval, Sampler::new(range))
        }
        None => HistorySink::without(inner),
    }
}

/// Waits for the history's last samples to be written and says what was skipped.
pub fn finish_history(recorder: Option<tcpmon::history::recorder::Recorder>) {
    if let Some(recorder) = recorder {
        let recorded = recorder.finish();
        if recorded.skipped > 0 {
            stderr_line(&format!(
                "tcpmon: history: {} samples and {} alerts recorded, {} skipped (the file could not be written, or its writer was behind)",
                recorded.samples, recorded.alerts, recorded.skipped
            ));
        }
    }
}
