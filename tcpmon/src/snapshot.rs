//! One consistent read of /proc/net/tcp and /proc/net/tcp6.
use std::{
    io,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use crate::{
    model::Family,
    procfs::{self, LineError, Socket},
};

/// Where a snapshot was read from and what it held.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub family: Family,
    pub path: PathBuf,
    /// `None` when the file does not exist (tcp6 on a kernel without IPv6).
    pub data: Option<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// The raw bytes of both files, read back to back; everything a command shows is decoded
/// from these, so every section agrees with every other.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub proc_root: PathBuf,
    pub files: Vec<SourceFile>,
}

/// One row of either file.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub family: Family,
    pub path: &'a Path,
    pub line: usize,
    pub socket: Result<Socket, LineError>,
}

impl Snapshot {
    /// Reads `<proc_root>/net/tcp` (required) and `<proc_root>/net/tcp6` (optional). The
    /// two files are read on two threads: nearly all the cost is the kernel formatting
    /// lines, and that work then runs on two cores.
    pub fn read(proc_root: &Path) -> Result<Self, SnapshotError> {
        let read = |family: Family, name: &str| -> Result<SourceFile, SnapshotError> {
            let path = proc_root.join(name);
            let data = match procfs::read_file(&path) {
                Ok(data) => Some(data),
                Err(e) if e.kind() == io::ErrorKind::NotFound && family == Family::Ipv6 => None,
                Err(source) => return Err(SnapshotError::Read { path, source }),
            };
            Ok(SourceFile { family, path, data })
        };
        let (tcp, tcp6) = std::thread::scope(|scope| {
            let tcp6 = scope.spawn(|| read(Family::Ipv6, "net/tcp6"));
            let tcp = read(Family::Ipv4, "net/tcp");
            (
                tcp,
                tcp6.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        Ok(Self {
            proc_root: proc_root.to_path_buf(),
            files: vec![tcp?, tcp6?],
        })
    }

    /// A snapshot from bytes already in memory (tests, benchmarks, library callers).
    pub fn from_bytes(tcp: Bytes, tcp6: Option<Bytes>) -> Self {
        Self {
            proc_root: PathBuf::from("<memory>"),
            files: vec![
                SourceFile {
                    family: Family::Ipv4,
                    path: "<memory>/net/tcp".into(),
                    data: Some(tcp),
                },
                SourceFile {
                    family: Family::Ipv6,
                    path: "<memory>/net/tcp6".into(),
                    data: tcp6,
                },
            ],
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.files.iter().flat_map(|file| {
            let data: &[u8] = file.data.as_deref().unwrap_or_default();
            procfs::parse(data, file.family).map(move |(line, socket)| Row {
                family: file.family,
                path: &file.path,
                line,
                socket,
            })
        })
    }

    /// Families whose file was missing, to say so instead of implying zero sockets.
    pub fn missing(&self) -> impl Iterator<Item = &SourceFile> {
        self.files.iter().filter(|f| f.data.is_none())
    }

    pub fn bytes_read(&self) -> usize {
        self.files
            .iter()
            .filter_map(|f| f.data.as_ref())
            .map(Bytes::len)
            .sum()
    }
}
