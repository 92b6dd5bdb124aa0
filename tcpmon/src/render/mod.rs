//! How the snapshot commands show what they read: the header, the tables, findings, cut
//! lists and the JSON document, one concern per file. Everything writes to an
//! `io::Write`, so tests render into memory.
pub mod findings;
pub mod header;
pub mod json;
pub mod lists;
pub mod tables;

use std::collections::HashMap;

use tcpmon::snapshot::{
    namespaces::{self, Loaded},
    SnapshotRead,
};

/// How each namespace a snapshot read is named in a NETNS cell (its `ip netns` name or a
/// short owner), by inode.
pub struct NamespaceCells(HashMap<u64, String>);

impl NamespaceCells {
    pub fn new(loaded: &Loaded) -> Self {
        Self(
            loaded
                .parts
                .iter()
                .map(|p| (p.namespace.inode, namespaces::short_label(&p.namespace)))
                .collect(),
        )
    }

    /// The cells of a snapshot that read several namespaces.
    pub fn of(read: &SnapshotRead) -> Option<Self> {
        read.namespaces.as_ref().map(Self::new)
    }

    /// The cell for a row of namespace `tag`.
    pub fn cell(&self, tag: Option<u64>) -> String {
        tag.and_then(|inode| self.0.get(&inode).cloned())
            .unwrap_or_else(|| "-".into())
    }
}
