//! tcpmon: a Linux TCP connection monitor.
//!
//! Two engines share one model ([`model`]):
//! - snapshots of the socket tables ([`snapshot::read`]: read, aggregated, audited), which
//!   need no privileges;
//! - a live engine ([`live`]) fed by kernel programs ([`ebpf`]) or, where they cannot
//!   load, by polling snapshots, emitting typed records to sinks ([`output`] has the
//!   terminal and NDJSON ones).
//!
//! All access to the operating system is in [`host`].
//!
//! ```no_run
//! use tcpmon::{
//!     model::{TcpState, Thresholds},
//!     snapshot::{self, ReadOptions, Want},
//! };
//! // The mirror of `live::start`: netlink (else /proc), tcpmon's own namespace.
//! let read = snapshot::read(&ReadOptions {
//!     want: Want::audit(),
//!     ..ReadOptions::default()
//! })?;
//! println!("{} sockets, {} established from {:?}", read.summary.total,
//!          read.summary.states.get(TcpState::Established), read.source);
//! for finding in read.audit(&Thresholds::default()) {
//!     println!("[{}] {}", finding.severity, finding.message);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod ebpf;
pub mod history;
pub mod host;
pub mod live;
pub mod model;
pub mod output;
pub mod snapshot;
pub mod top;
