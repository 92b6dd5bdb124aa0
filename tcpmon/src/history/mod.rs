//! Memory of yesterday: samples of the live tally kept in an embedded SQLite file, rolled
//! up into coarser tiers as they age, and read back for `tcpmon trends`.
//!
//! - [`sample`]: what one sample holds, taken from a tally record (pure).
//! - [`store`]: the file (schema, migrations, rollups, pruning, size bound, queries).
//! - [`trends`]: capacity findings over the buckets a query returns (pure).
//!
//! Times are Unix seconds taken from the records, never from a clock here: a test runs
//! two years through the store in seconds.
pub mod recorder;
pub mod report;
pub mod sample;
pub mod store;
pub mod trends;

pub use sample::{Metric, NamespaceSample, Sample, Sampler, METRICS};
pub use store::{Bucket, ListenerHistory, TopPeak};
pub use store::{History, HistoryError, Tier};
