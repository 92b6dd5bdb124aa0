//! tcpmon: a Linux TCP connection monitor.
//!
//! Two engines share one model ([`model`]):
//! - snapshots of the socket tables ([`snapshot`]: read, aggregated, audited), which need
//!   no privileges;
//! - a live engine ([`live`]) fed by kernel programs ([`ebpf`]) or, where they cannot
//!   load, by polling snapshots, emitting typed records to sinks ([`output`] has the
//!   terminal and NDJSON ones).
//!
//! All access to the operating system is in [`host`].
//!
//! ```no_run
//! use tcpmon::{
//!     host::ProcRoot,
//!     model::{TcpState, Thresholds},
//!     snapshot::{self, analysis::Filter, audit::audit, Snapshot},
//! };
//! let snapshot = Snapshot::read(&ProcRoot::host())?;
//! let summary = snapshot::summarize(&snapshot, Filter::default());
//! println!("{} sockets, {} established", summary.total,
//!          summary.states.get(TcpState::Established));
//! for finding in audit(&summary, &Thresholds::default()) {
//!     println!("[{}] {}", finding.severity, finding.message);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod ebpf;
pub mod host;
pub mod live;
pub mod model;
pub mod output;
pub mod snapshot;
