//! The live engine and everything it is made of: the tally (a pure state machine over
//! transitions, with its TIME_WAIT table), the detectors ([`rules`], [`syn`]), loss
//! accounting ([`loss`]), the poll fallback's diff ([`poll`]), the sources of events
//! ([`source`]) and the host interface ([`host`]); it emits the typed records of
//! [`record`] into a [`Sink`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tcpmon::live::{self, EngineConfig, ModeChoice, SourceOptions};
//! # struct Quiet;
//! # impl live::Sink for Quiet {
//! #     fn mode(&mut self, _: &live::record::ModeRecord) -> std::io::Result<()> { Ok(()) }
//! #     fn transition(&mut self, _: &live::record::TransitionEvent<'_>) -> std::io::Result<()> { Ok(()) }
//! #     fn alert(&mut self, _: &live::record::AlertRecord<'_>) -> std::io::Result<()> { Ok(()) }
//! #     fn tally(&mut self, _: &live::record::TallyRecord) -> std::io::Result<()> { Ok(()) }
//! #     fn summary(&mut self, _: &live::record::SummaryRecord) -> std::io::Result<()> { Ok(()) }
//! # }
//! let config = EngineConfig::default();
//! let mut sink = Quiet;
//! let mut engine = live::start(config, &SourceOptions::default(), &mut sink)?;
//! engine.run(&mut sink, tokio::time::sleep(std::time::Duration::from_secs(10))).await?;
//! let summary = engine.finish(&mut sink)?;
//! println!("{} transitions, {} lost", summary.transitions, summary.lost);
//! # Ok(()) }
//! ```
mod config;
mod engine;
pub mod failures;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod host;
mod ip_table;
pub mod latency;
pub mod loss;
pub mod namespaces;
pub mod poll;
mod read_health;
pub mod record;
pub mod rules;
pub mod source;
pub mod syn;
pub mod tally;
mod time_wait_table;

use std::time::Duration;

pub use config::{ConfigError, EngineConfig, TransitionFilter, ValidConfig};
pub use engine::{Engine, EngineError, Reason, Sink};
use host::SystemHost;
use record::{Mode, ModeRecord, SCHEMA_VERSION};
use source::EbpfSource;

use crate::{
    ebpf::{LoadError, LoadOptions, NetnsFilter},
    host::{
        caps::{self, Capability},
        netns, ProcRoot,
    },
};

/// Which engine to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModeChoice {
    /// eBPF when it loads, polling otherwise (saying why).
    #[default]
    Auto,
    /// eBPF or fail.
    Ebpf,
    /// Poll snapshots; never load eBPF.
    Poll,
}

/// How to get events.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    pub mode: ModeChoice,
    /// Ring sizes, the state hook, slot rings (its `netns` is set from `all_netns`).
    pub load: LoadOptions,
    /// Events from every network namespace (each tallied on its own when the engine's
    /// `max_netns` is set).
    pub all_netns: bool,
    /// The reader's nice value (`None`: raised to the default, see host::priority).
    pub nice: Option<i32>,
    /// The /proc tree to read (the host's unless told otherwise).
    pub proc_root: ProcRoot,
}

/// The engine over the real machine: the eBPF source when it loads (or as `options.mode`
/// says), else polling, with its mode record saying which and why. Must run inside a
/// tokio runtime. Fails only when eBPF was required and could not load, or the baseline
/// could not be read.
pub fn start(
    mut config: EngineConfig,
    options: &SourceOptions,
    sink: &mut impl Sink,
) -> Result<Engine<SystemHost, EbpfSource>, StartError> {
    let own_netns = netns::own_inode().ok();
    config.own_netns = own_netns;
    let config = config.validate().map_err(EngineError::from)?;
    let mut load = options.load.clone();
    load.netns = match (options.all_netns, own_netns) {
        (false, Some(inode)) => NetnsFilter::Only(inode),
        _ => NetnsFilter::All,
    };
    let (source, mut mode) = open_source(options.mode, &load, options.nice, config.interval)?;
    // Naming another user's process takes both: listing its fd directory is a DAC
    // check, reading the links a ptrace one.
    if !(caps::has(Capability::SysPtrace) && caps::has(Capability::DacReadSearch)) {
        mode.notes.push(
            "cannot see other users' processes (needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH): alerts do not name the owners of their sockets".into(),
        );
    }
    if options.all_netns {
        mode.notes.push(
            "every network namespace is tallied on its own (up to --max-netns); SYN floods are judged in tcpmon's own namespace only".into(),
        );
        if !caps::has(Capability::SysAdmin) {
            mode.notes.push(
                "namespaces held only by a bind mount cannot be entered (needs CAP_SYS_ADMIN): they are not tallied".into(),
            );
        }
    }
    let host = SystemHost::new(options.proc_root.clone());
    Ok(Engine::start(config, host, source, mode, sink)?)
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("eBPF unavailable: {0}")]
    Ebpf(#[from] LoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The fallback ladder: eBPF, else (in auto mode) polling, with the reason said once.
fn open_source(
    choice: ModeChoice,
    load: &LoadOptions,
    nice: Option<i32>,
    interval: Duration,
) -> Result<(Option<EbpfSource>, ModeRecord), LoadError> {
    let polling = |reason: String, fell_back: bool| ModeRecord {
        schema_version: SCHEMA_VERSION,
        mode: Mode::Poll,
        reason,
        notes: Vec::new(),
        fell_back,
        poll_interval: Some(interval),
    };
    if choice == ModeChoice::Poll {
        return Ok((
            None,
            polling("polling the socket table (--mode poll)".into(), false),
        ));
    }
    match EbpfSource::load(load, nice) {
        Ok((source, loaded)) => Ok((
            Some(source),
            ModeRecord {
                schema_version: SCHEMA_VERSION,
                mode: Mode::Ebpf,
                reason: loaded.description,
                notes: loaded.notes,
                fell_back: false,
                poll_interval: None,
            },
        )),
        Err(e) if choice == ModeChoice::Ebpf => Err(e),
        Err(e) => {
            let why = match &e {
                LoadError::Permission(_) => {
                    "no privilege for eBPF (run as root, or grant CAP_BPF and CAP_PERFMON)"
                        .to_owned()
                }
                other => other.to_string(),
            };
            Ok((
                None,
                polling(
                    format!("eBPF unavailable: {why}; polling the socket table every {interval:?} instead (transitions are inferred from differences)"),
                    true,
                ),
            ))
        }
    }
}
