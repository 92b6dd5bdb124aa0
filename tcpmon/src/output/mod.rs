//! Everything tcpmon writes for people and programs: aligned tables and cut lists
//! ([`table`]), the live records as human lines ([`human`]) or NDJSON ([`ndjson`]), and
//! the sinks that write them to a stream ([`live`]).
pub mod human;
pub mod live;
pub mod metrics;
pub mod ndjson;
pub mod table;
