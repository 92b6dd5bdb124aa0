//! The history file: an SQLite database (WAL, so `trends` reads while `serve` writes) in
//! three tiers, raw samples for 48 hours, 1-minute rollups (min/avg/max) for 30 days and
//! 1-hour rollups for 2 years, rolled up and pruned as samples arrive, and held under a
//! size bound. Tables are documented in docs/HISTORY.md.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::sample::{AlertChange, Sample, METRICS};

/// `PRAGMA application_id` of a tcpmon history ("tcpm"): a file without it is not
/// tcpmon's and is never written.
pub const APPLICATION_ID: i32 = 0x7463_706d;

/// Raw samples are kept this long (seconds) ...
pub const RAW_KEEP: i64 = 48 * 3600;
/// ... 1-minute rollups this long ...
pub const MINUTE_KEEP: i64 = 30 * 86_400;
/// ... and 1-hour rollups this long.
pub const HOUR_KEEP: i64 = 2 * 365 * 86_400;
/// Raw lists (top peers, CLOSE_WAIT leaks of every sample) are kept this long; older
/// periods read the hourly lists.
pub const RAW_LISTS_KEEP: i64 = 6 * 3600;
/// Keys of each list kept per hour (the largest).
pub const HOURLY_LIST_KEYS: i64 = 10;
/// A listener's last sighting is written at least this often (and whenever it changes).
pub const LISTENER_REFRESH: i64 = 30;
/// Alerts raised and cleared are kept this long.
pub const ALERT_KEEP: i64 = 90 * 86_400;

/// The file's tiers, finest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Raw,
    Minute,
    Hour,
}

impl Tier {
    fn table(self) -> &'static str {
        match self {
            Self::Raw => "samples",
            Self::Minute => "rollup_1m",
            Self::Hour => "rollup_1h",
        }
    }

    /// Seconds one row stands for (a raw sample: its interval, at least 1).
    pub fn resolution(self) -> i64 {
        match self {
            Self::Raw => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
        }
    }

    pub fn keep(self) -> i64 {
        match self {
            Self::Raw => RAW_KEEP,
            Self::Minute => MINUTE_KEEP,
            Self::Hour => HOUR_KEEP,
        }
    }

    /// The finest tier that still holds `since` (relative to `now`) and whose rows are
    /// no coarser than `every`.
    pub fn for_query(since: i64, now: i64, every: i64) -> Self {
        let held: Vec<Self> = [Self::Raw, Self::Minute, Self::Hour]
            .into_iter()
            .filter(|t| since >= now - t.keep())
            .collect();
        held.iter()
            .copied()
            .find(|t| t.resolution() <= every.max(1))
            .or(held.first().copied())
            .unwrap_or(Self::Hour)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: not a tcpmon history ({what}); it is left as it is: choose another --history file, or --history-reset to move it aside")]
    Foreign { path: PathBuf, what: String },
    #[error("{path}: the history is damaged ({what}); it is left as it is: --history-reset moves it aside and starts a new one")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: written by a newer tcpmon (history schema {found}, this one knows up to {known}); it is left as it is")]
    Newer {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path}: written by an older tcpmon (history schema {found}; this one reads {known}): serve or watch of this version migrates it when it opens it")]
    Older {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HistoryError {
    /// Whether writing may work again later by itself (a full disk, a read-only mount,
    /// a lock held for long): history pauses instead of stopping.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::ReadOnly
                        | rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::PermissionDenied
                )
            ),
            Self::Io { .. } => true,
            _ => false,
        }
    }
}

/// The columns of a raw sample's metrics.
fn raw_columns() -> String {
    METRICS
        .iter()
        .map(|m| format!("{} INTEGER NOT NULL", m.column))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of a rollup's metrics: min, avg and max of each.
fn rollup_columns() -> String {
    METRICS
        .iter()
        .map(|m| {
            format!(
                "{0}_min INTEGER NOT NULL, {0}_avg REAL NOT NULL, {0}_max INTEGER NOT NULL",
                m.column
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The schema, one step per version; a file at version N runs the steps after N.
fn migrations() -> Vec<String> {
    vec![
        // 1: samples, rollups, lists, listeners, alerts.
        format!(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE samples (ts INTEGER NOT NULL, netns INTEGER NOT NULL, {raw},
                 PRIMARY KEY (ts, netns)) WITHOUT ROWID;
             CREATE TABLE rollup_1m (ts INTEGER NOT NULL, netns INTEGER NOT NULL, n INTEGER NOT NULL, {rollup},
                 PRIMARY KEY (ts, netns)) WITHOUT ROWID;
             CREATE TABLE rollup_1h (ts INTEGER NOT NULL, netns INTEGER NOT NULL, n INTEGER NOT NULL, {rollup},
                 PRIMARY KEY (ts, netns)) WITHOUT ROWID;
             CREATE TABLE namespaces (netns INTEGER PRIMARY KEY, owner TEXT NOT NULL,
                 first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL);
             CREATE TABLE tops (ts INTEGER NOT NULL, kind TEXT NOT NULL, netns INTEGER NOT NULL,
                 key TEXT NOT NULL, value INTEGER NOT NULL, value2 INTEGER NOT NULL, owners TEXT NOT NULL,
                 PRIMARY KEY (kind, netns, key, ts)) WITHOUT ROWID;
             CREATE INDEX tops_ts ON tops (ts);
             CREATE TABLE tops_1h (ts INTEGER NOT NULL, kind TEXT NOT NULL, netns INTEGER NOT NULL,
                 key TEXT NOT NULL, value INTEGER NOT NULL, value2 INTEGER NOT NULL, owners TEXT NOT NULL,
                 PRIMARY KEY (kind, netns, key, ts)) WITHOUT ROWID;
             CREATE INDEX tops_1h_ts ON tops_1h (ts);
             CREATE TABLE listeners (netns INTEGER NOT NULL, listener TEXT NOT NULL, process TEXT NOT NULL,
                 first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, backlog INTEGER,
                 max_accept_queue INTEGER, PRIMARY KEY (netns, listener, process)) WITHOUT ROWID;
             CREATE TABLE alerts (ts INTEGER NOT NULL, status TEXT NOT NULL, severity TEXT NOT NULL,
                 rule TEXT NOT NULL, subject TEXT NOT NULL, message TEXT NOT NULL, netns INTEGER NOT NULL);
             CREATE INDEX alerts_ts ON alerts (ts);",
            raw = raw_columns(),
            rollup = rollup_columns()
        ),
        // 2: the ephemeral port range's size per sample (TIME_WAIT headroom); rows
        // written before it have none (NULL: unknown).
        "CREATE TABLE port_ranges (ts INTEGER PRIMARY KEY, size INTEGER NOT NULL);".to_owned(),
    ]
}

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    migrations().len() as i64
}

/// A listener's row: namespace, address, owners.
type ListenerKey = (u64, String, String);
/// What was last written of a listener: when, its backlog and its largest queue.
type ListenerWritten = (i64, Option<u32>, u32);

/// An open history file.
pub struct History {
    conn: Connection,
    path: PathBuf,
    max_bytes: u64,
    rolled_minute: Option<i64>,
    rolled_hour: Option<i64>,
    /// What was last written of each listener.
    listeners_written: std::collections::HashMap<ListenerKey, ListenerWritten>,
    /// The listeners of the last sample, and its time (written exactly on close).
    last_listeners: (i64, Vec<ListenerKey>),
}

/// One bucket of a query: per metric asked, the min, mean and max over its rows.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// Unix seconds at the bucket's start.
    pub start: i64,
    /// Raw samples it summarises.
    pub samples: i64,
    pub min: Vec<i64>,
    pub avg: Vec<f64>,
    pub max: Vec<i64>,
}

/// A listener as the history knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ListenerHistory {
    pub netns: u64,
    pub listener: String,
    pub process: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub backlog: Option<i64>,
    pub max_accept_queue: Option<i64>,
}

/// A list entry's peak over a period.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TopPeak {
    pub key: String,
    /// The highest value, and when (a time it was reached).
    pub max: i64,
    pub at: i64,
    /// The second value (a peer's TIME_WAIT, a leak's age) and the owners then.
    pub max2: i64,
    pub owners: String,
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> HistoryError + '_ {
    move |source| HistoryError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Whether the file at `path` starts as every SQLite database does.
fn looks_like_sqlite(path: &Path) -> Result<bool, HistoryError> {
    use std::io::Read as _;
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    let n = file.read(&mut head).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(n == 0 || (n == 16 && &head == b"SQLite format 3\0"))
}

impl History {
    /// Opens (or creates) the history at `path` for writing, migrating an older schema.
    /// A file that is not tcpmon's, is damaged or is newer is refused, never written.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, HistoryError> {
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                return Err(HistoryError::Foreign {
                    path: path.to_owned(),
                    what: "not a regular file".into(),
                });
            }
            if !looks_like_sqlite(path)? {
                return Err(HistoryError::Foreign {
                    path: path.to_owned(),
                    what: "not an SQLite database".into(),
                });
            }
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite(path))?;
        let mut history = Self {
            conn,
            path: path.to_owned(),
            max_bytes,
            rolled_minute: None,
            rolled_hour: None,
            listeners_written: Default::default(),
            last_listeners: (0, Vec::new()),
        };
        history.check()?;
        history.migrate()?;
        history.rolled_minute = history.meta_i64("rolled_1m")?;
        history.rolled_hour = history.meta_i64("rolled_1h")?;
        Ok(history)
    }

    /// Opens an existing history to read (`trends`), while a writer may be running.
    pub fn open_read(path: &Path) -> Result<Self, HistoryError> {
        if !path.exists() {
            return Err(HistoryError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no history here yet (serve records by default; watch with --history PATH)",
                ),
            });
        }
        if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) || !looks_like_sqlite(path)? {
            return Err(HistoryError::Foreign {
                path: path.to_owned(),
                what: "not an SQLite database".into(),
            });
        }
        // Read-write without create, so that SQLite may use the WAL index as any reader
        // does; nothing is written. Read-only where that is all the file allows.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .or_else(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        })
        .map_err(sqlite(path))?;
        let history = Self {
            conn,
            path: path.to_owned(),
            max_bytes: u64::MAX,
            rolled_minute: None,
            rolled_hour: None,
            listeners_written: Default::default(),
            last_listeners: (0, Vec::new()),
        };
        history.check()?;
        let version = history.version()?;
        if version < schema_version() {
            return Err(HistoryError::Older {
                path: path.to_owned(),
                found: version,
                known: schema_version(),
            });
        }
        Ok(history)
    }

    /// Moves the file at `path` (and its WAL) aside; the name it now has.
    pub fn reset(path: &Path, now: i64) -> Result<Option<PathBuf>, HistoryError> {
        if !path.exists() {
            return Ok(None);
        }
        let aside = PathBuf::from(format!("{}.{now}.old", path.display()));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", path.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                std::fs::rename(&from, &to).map_err(|source| HistoryError::Io {
                    path: from.clone(),
                    source,
                })?;
            }
        }
        Ok(Some(aside))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn version(&self) -> Result<i64, HistoryError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sqlite(&self.path))
    }

    /// Refuses what is not a healthy tcpmon history.
    fn check(&self) -> Result<(), HistoryError> {
        let err = sqlite(&self.path);
        let corrupt = |what: String| HistoryError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let app: i32 = match self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
        {
            Ok(app) => app,
            Err(rusqlite::Error::SqliteFailure(e, m))
                if e.code == rusqlite::ErrorCode::NotADatabase =>
            {
                return Err(corrupt(m.unwrap_or_else(|| e.to_string())))
            }
            Err(e) => return Err(err(e)),
        };
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, m)
                    if f.code == rusqlite::ErrorCode::DatabaseCorrupt
                        || f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    corrupt(m.unwrap_or_else(|| f.to_string()))
                }
                e => err(e),
            })?;
        if app != APPLICATION_ID && !(app == 0 && tables == 0) {
            return Err(HistoryError::Foreign {
                path: self.path.clone(),
                what: if app == 0 {
                    format!("an SQLite database with {tables} tables of its own")
                } else {
                    format!("application id {app:#x}")
                },
            });
        }
        if tables > 0 {
            let verdict: String = self
                .conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| corrupt(e.to_string()))?;
            if verdict != "ok" {
                return Err(corrupt(verdict));
            }
        }
        let version = self.version()?;
        if version > schema_version() {
            return Err(HistoryError::Newer {
                path: self.path.clone(),
                found: version,
                known: schema_version(),
            });
        }
        Ok(())
    }

    /// Brings the schema to this build's version, one transaction per step.
    fn migrate(&mut self) -> Result<(), HistoryError> {
        self.migrate_to(schema_version())
    }

    /// Brings the schema to `target` (tests build older files with it).
    pub fn migrate_to(&mut self, target: i64) -> Result<(), HistoryError> {
        let err = sqlite(&self.path);
        let version = self.version()?;
        if version == 0 {
            // Set before any table exists: they cannot be changed afterwards.
            self.conn
                .execute_batch(&format!(
                    "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA application_id = {APPLICATION_ID};"
                ))
                .map_err(&err)?;
        }
        self.conn
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 2000;")
            .map_err(&err)?;
        for (step, sql) in migrations().iter().enumerate() {
            let to = step as i64 + 1;
            if to <= version || to > target {
                continue;
            }
            let tx = self.conn.transaction().map_err(&err)?;
            tx.execute_batch(sql).map_err(&err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {to}"))
                .map_err(&err)?;
            tx.commit().map_err(&err)?;
        }
        Ok(())
    }

    fn meta_i64(&self, key: &str) -> Result<Option<i64>, HistoryError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|v| v.and_then(|v| v.parse().ok()))
            .map_err(sqlite(&self.path))
    }

    /// Writes one sample in one transaction, then rolls up and prunes what its time
    /// completed. A kill at any moment loses at most this sample.
    pub fn record(&mut self, s: &Sample) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let err = sqlite(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let placeholders = vec!["?"; METRICS.len() + 2].join(", ");
            let columns: Vec<&str> = METRICS.iter().map(|m| m.column).collect();
            let mut insert = tx
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO samples (ts, netns, {}) VALUES ({placeholders})",
                    columns.join(", ")
                ))
                .map_err(&err)?;
            let mut seen = tx
                .prepare_cached(
                    "INSERT INTO namespaces (netns, owner, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (netns) DO UPDATE SET owner = excluded.owner, last_seen = excluded.last_seen",
                )
                .map_err(&err)?;
            for n in &s.namespaces {
                let netns = n.netns as i64;
                let mut values: Vec<i64> = vec![s.time, netns];
                values.extend_from_slice(&n.values);
                insert
                    .execute(rusqlite::params_from_iter(values))
                    .map_err(&err)?;
                seen.execute(params![netns, n.owner, s.time])
                    .map_err(&err)?;
            }
            let mut top = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO tops (ts, kind, netns, key, value, value2, owners)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(&err)?;
            for t in &s.tops {
                top.execute(params![
                    s.time,
                    t.kind,
                    t.netns as i64,
                    t.key,
                    t.value,
                    t.value2,
                    t.owners
                ])
                .map_err(&err)?;
            }
            let mut listener = tx
                .prepare_cached(
                    "INSERT INTO listeners (netns, listener, process, first_seen, last_seen, backlog, max_accept_queue)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)
                     ON CONFLICT (netns, listener, process) DO UPDATE SET
                         last_seen = excluded.last_seen,
                         backlog = coalesce(excluded.backlog, backlog),
                         max_accept_queue = max(coalesce(max_accept_queue, 0), coalesce(excluded.max_accept_queue, 0))",
                )
                .map_err(&err)?;
            self.last_listeners = (
                s.time,
                s.listeners
                    .iter()
                    .map(|l| (l.netns, l.listener.clone(), l.process.clone()))
                    .collect(),
            );
            for l in &s.listeners {
                // Written when new or changed, else every LISTENER_REFRESH seconds: a
                // hundred listeners need not be rewritten every sample.
                let key = (l.netns, l.listener.clone(), l.process.clone());
                let queue = l.accept_queue.unwrap_or(0);
                let due = self
                    .listeners_written
                    .get(&key)
                    .is_none_or(|&(at, backlog, max)| {
                        s.time - at >= LISTENER_REFRESH
                            || s.time < at
                            || backlog != l.backlog
                            || queue > max
                    });
                if !due {
                    continue;
                }
                listener
                    .execute(params![
                        l.netns as i64,
                        l.listener,
                        l.process,
                        s.time,
                        l.backlog,
                        l.accept_queue
                    ])
                    .map_err(&err)?;
                let max = self
                    .listeners_written
                    .get(&key)
                    .map_or(0, |w| w.2)
                    .max(queue);
                self.listeners_written.insert(key, (s.time, l.backlog, max));
            }
            if s.port_range > 0 {
                tx.prepare_cached("INSERT OR REPLACE INTO port_ranges (ts, size) VALUES (?1, ?2)")
                    .map_err(&err)?
                    .execute(params![s.time, s.port_range])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        self.roll_up(s.time)
    }

    /// Writes the last sample's listeners' last sighting exactly (between refreshes it
    /// may be up to LISTENER_REFRESH behind). For a writer that stops.
    pub fn close(&mut self) -> Result<(), HistoryError> {
        let (time, keys) = std::mem::take(&mut self.last_listeners);
        let path = self.path.clone();
        let err = sqlite(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE listeners SET last_seen = max(last_seen, ?4)
                     WHERE netns = ?1 AND listener = ?2 AND process = ?3",
                )
                .map_err(&err)?;
            for (netns, listener, process) in &keys {
                update
                    .execute(params![*netns as i64, listener, process, time])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// An alert raised or cleared.
    pub fn record_alert(&mut self, a: &AlertChange) -> Result<(), HistoryError> {
        self.conn
            .prepare_cached(
                "INSERT INTO alerts (ts, status, severity, rule, subject, message, netns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    a.time,
                    a.status,
                    a.severity,
                    a.rule,
                    a.subject,
                    a.message,
                    a.netns as i64
                ])
            })
            .map(|_| ())
            .map_err(sqlite(&self.path))
    }

    /// Rolls complete minutes and hours up to `now`, prunes each tier past its keep, and
    /// holds the file under its bound. Runs once a minute at most.
    fn roll_up(&mut self, now: i64) -> Result<(), HistoryError> {
        let minute = now.div_euclid(60) * 60;
        let hour = now.div_euclid(3600) * 3600;
        let from_minute = *self.rolled_minute.get_or_insert(minute);
        if minute <= from_minute {
            return Ok(());
        }
        let path = self.path.clone();
        let err = sqlite(&path);
        let avg_of = |f: &dyn Fn(&str) -> String| -> String {
            METRICS
                .iter()
                .map(|m| f(m.column))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rollup_names = avg_of(&|c| format!("{c}_min, {c}_avg, {c}_max"));
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO rollup_1m (ts, netns, n, {rollup_names})
                 SELECT (ts / 60) * 60, netns, count(*), {}
                 FROM samples WHERE ts >= ?1 AND ts < ?2 GROUP BY 1, 2",
                avg_of(&|c| format!("min({c}), avg({c}), max({c})"))
            ),
            params![from_minute, minute],
        )
        .map_err(&err)?;
        let from_hour = self
            .rolled_hour
            .unwrap_or(from_minute.div_euclid(3600) * 3600);
        if hour > from_hour {
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO rollup_1h (ts, netns, n, {rollup_names})
                     SELECT (ts / 3600) * 3600, netns, sum(n), {}
                     FROM rollup_1m WHERE ts >= ?1 AND ts < ?2 GROUP BY 1, 2",
                    avg_of(&|c| format!("min({c}_min), sum({c}_avg * n) / sum(n), max({c}_max)"))
                ),
                params![from_hour, hour],
            )
            .map_err(&err)?;
            tx.execute(
                "INSERT OR REPLACE INTO tops_1h (ts, kind, netns, key, value, value2, owners)
                 SELECT hour, kind, netns, key, value, value2, owners FROM (
                     SELECT (ts / 3600) * 3600 AS hour, kind, netns, key, max(value) AS value,
                         max(value2) AS value2, max(owners) AS owners,
                         row_number() OVER (PARTITION BY (ts / 3600) * 3600, kind, netns
                             ORDER BY max(value) DESC, key) AS rank
                     FROM tops WHERE ts >= ?1 AND ts < ?2 GROUP BY 1, 2, 3, 4)
                 WHERE rank <= ?3",
                params![from_hour, hour, HOURLY_LIST_KEYS],
            )
            .map_err(&err)?;
        }
        for (sql, keep) in [
            ("DELETE FROM samples WHERE ts < ?1", RAW_KEEP),
            ("DELETE FROM tops WHERE ts < ?1", RAW_LISTS_KEEP),
            ("DELETE FROM port_ranges WHERE ts < ?1", RAW_KEEP),
            ("DELETE FROM rollup_1m WHERE ts < ?1", MINUTE_KEEP),
            ("DELETE FROM rollup_1h WHERE ts < ?1", HOUR_KEEP),
            ("DELETE FROM tops_1h WHERE ts < ?1", HOUR_KEEP),
            ("DELETE FROM listeners WHERE last_seen < ?1", HOUR_KEEP),
            ("DELETE FROM namespaces WHERE last_seen < ?1", HOUR_KEEP),
            ("DELETE FROM alerts WHERE ts < ?1", ALERT_KEEP),
        ] {
            tx.execute(sql, [now - keep]).map_err(&err)?;
        }
        let hour_mark = if hour > from_hour { hour } else { from_hour };
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('rolled_1m', ?1), ('rolled_1h', ?2)",
            params![minute.to_string(), hour_mark.to_string()],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.rolled_minute = Some(minute);
        self.rolled_hour = Some(hour_mark);
        self.hold_bound()
    }

    /// Pages the file has.
    pub fn page_count(&self) -> Result<i64, HistoryError> {
        self.conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(sqlite(&self.path))
    }

    /// Caps the file at `pages` (SQLite then answers "database or disk is full", as a
    /// full file system does): for tests of what a full disk does.
    pub fn set_max_pages(&self, pages: i64) -> Result<(), HistoryError> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(sqlite(&self.path))
    }

    /// Bytes the file's live pages take.
    pub fn used_bytes(&self) -> Result<u64, HistoryError> {
        let err = sqlite(&self.path);
        let get = |pragma: &str| -> Result<i64, HistoryError> {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .map_err(&err)
        };
        let pages = get("page_count")? - get("freelist_count")?;
        Ok((pages.max(0) * get("page_size")?) as u64)
    }

    /// Over the bound, the oldest eighth of the finest tier with rows goes, until the file
    /// fits; freed pages are returned to the file system.
    fn hold_bound(&mut self) -> Result<(), HistoryError> {
        let err = sqlite(&self.path);
        let mut trimmed = false;
        for _ in 0..64 {
            if self.used_bytes()? <= self.max_bytes {
                break;
            }
            let mut any = false;
            for table in ["samples", "tops", "rollup_1m", "tops_1h", "rollup_1h"] {
                let span: Option<(i64, i64)> = self
                    .conn
                    .query_row(&format!("SELECT min(ts), max(ts) FROM {table}"), [], |r| {
                        Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
                    })
                    .map_err(&err)?;
                if let Some((low, high)) = span {
                    let cut = low + (high - low) / 8 + 1;
                    self.conn
                        .execute(&format!("DELETE FROM {table} WHERE ts < ?1"), [cut])
                        .map_err(&err)?;
                    any = true;
                    break;
                }
            }
            trimmed = true;
            if !any {
                break;
            }
        }
        if trimmed {
            self.conn
                .execute_batch("PRAGMA incremental_vacuum;")
                .map_err(&err)?;
        }
        Ok(())
    }

    /// The namespaces known (inode 0: the writer's own), with owners.
    pub fn namespaces(&self) -> Result<Vec<(u64, String)>, HistoryError> {
        let err = sqlite(&self.path);
        let mut stmt = self
            .conn
            .prepare("SELECT netns, owner FROM namespaces ORDER BY netns")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// The earliest and latest times held in `tier` for `netns`.
    pub fn span(&self, tier: Tier, netns: u64) -> Result<Option<(i64, i64)>, HistoryError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT min(ts), max(ts) FROM {} WHERE netns = ?1",
                    tier.table()
                ),
                [netns as i64],
                |r| Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?)),
            )
            .map_err(sqlite(&self.path))
    }

    /// `metrics` (indexes into [`METRICS`]) of `netns` over `[since, until)` in buckets
    /// of `every` seconds, read from `tier`.
    pub fn buckets(
        &self,
        tier: Tier,
        netns: u64,
        metrics: &[usize],
        (since, until): (i64, i64),
        every: i64,
    ) -> Result<Vec<Bucket>, HistoryError> {
        let err = sqlite(&self.path);
        let every = every.max(1);
        let mut select = String::new();
        for &i in metrics {
            let c = METRICS[i].column;
            match tier {
                Tier::Raw => write!(select, ", min({c}), avg({c}), max({c})"),
                _ => write!(
                    select,
                    ", min({c}_min), sum({c}_avg * n) / sum(n), max({c}_max)"
                ),
            }
            .expect("writing to a String");
        }
        let n = if tier == Tier::Raw {
            "count(*)"
        } else {
            "sum(n)"
        };
        let sql = format!(
            "SELECT (ts / ?1) * ?1 AS bucket, {n}{select} FROM {} WHERE netns = ?2 AND ts >= ?3 AND ts < ?4
             GROUP BY bucket ORDER BY bucket",
            tier.table()
        );
        let mut stmt = self.conn.prepare(&sql).map_err(&err)?;
        let rows = stmt
            .query_map(params![every, netns as i64, since, until], |r| {
                let mut b = Bucket {
                    start: r.get(0)?,
                    samples: r.get(1)?,
                    min: Vec::with_capacity(metrics.len()),
                    avg: Vec::with_capacity(metrics.len()),
                    max: Vec::with_capacity(metrics.len()),
                };
                for k in 0..metrics.len() {
                    b.min.push(r.get(2 + 3 * k)?);
                    b.avg.push(r.get(3 + 3 * k)?);
                    b.max.push(r.get(4 + 3 * k)?);
                }
                Ok(b)
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Each key's peak of `kind` (`peer`, `close_wait`) over the period, highest first,
    /// from the raw lists and their hourly rollups.
    pub fn top_peaks(
        &self,
        kind: &str,
        netns: u64,
        (since, until): (i64, i64),
        limit: usize,
    ) -> Result<Vec<TopPeak>, HistoryError> {
        let err = sqlite(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "WITH rows AS (
                     SELECT ts, key, value, value2, owners FROM tops
                         WHERE kind = ?1 AND netns = ?2 AND ts >= ?3 AND ts < ?4
                     UNION ALL
                     SELECT ts, key, value, value2, owners FROM tops_1h
                         WHERE kind = ?1 AND netns = ?2 AND ts >= ?3 AND ts < ?4
                           AND ts < coalesce((SELECT min(ts) FROM tops WHERE kind = ?1), ?4))
                 -- With one max() per group, SQLite takes the other columns from the
                 -- row that holds it: the peak's time, its second value and owners.
                 SELECT key, max(value), value2, ts, owners
                 FROM rows GROUP BY key ORDER BY max(value) DESC, key LIMIT ?5",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(
                params![kind, netns as i64, since, until, limit as i64],
                |r| {
                    Ok(TopPeak {
                        key: r.get(0)?,
                        max: r.get(1)?,
                        max2: r.get(2)?,
                        at: r.get(3)?,
                        owners: r.get(4)?,
                    })
                },
            )
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Every listener seen in `[since, until)`.
    pub fn listeners(
        &self,
        (since, until): (i64, i64),
    ) -> Result<Vec<ListenerHistory>, HistoryError> {
        let err = sqlite(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT netns, listener, process, first_seen, last_seen, backlog, max_accept_queue
                 FROM listeners WHERE last_seen >= ?1 AND first_seen < ?2
                 ORDER BY first_seen, netns, listener, process",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![since, until], |r| {
                Ok(ListenerHistory {
                    netns: r.get::<_, i64>(0)? as u64,
                    listener: r.get(1)?,
                    process: r.get(2)?,
                    first_seen: r.get(3)?,
                    last_seen: r.get(4)?,
                    backlog: r.get(5)?,
                    max_accept_queue: r.get(6)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// The alerts raised in `[since, until)`, oldest first.
    pub fn alerts(&self, (since, until): (i64, i64)) -> Result<Vec<AlertChange>, HistoryError> {
        let err = sqlite(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT ts, status, severity, rule, subject, message, netns FROM alerts
                 WHERE ts >= ?1 AND ts < ?2 ORDER BY ts",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![since, until], |r| {
                Ok(AlertChange {
                    time: r.get(0)?,
                    status: r.get(1)?,
                    severity: r.get(2)?,
                    rule: r.get(3)?,
                    subject: r.get(4)?,
                    message: r.get(5)?,
                    netns: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// The ephemeral port range's size last recorded before `until` (None: not known).
    pub fn port_range(&self, until: i64) -> Result<Option<i64>, HistoryError> {
        self.conn
            .query_row(
                "SELECT size FROM port_ranges WHERE ts < ?1 ORDER BY ts DESC LIMIT 1",
                [until],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite(&self.path))
    }

    /// Rows per table (docs and tests).
    pub fn rows(&self, table: &str) -> Result<i64, HistoryError> {
        self.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(sqlite(&self.path))
    }

    /// `PRAGMA integrity_check`'s verdict.
    pub fn integrity(&self) -> Result<String, HistoryError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(sqlite(&self.path))
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
