//! Recording while the engine runs: a sink that passes every record on and hands a
//! sample every interval (and each alert change) to a writer thread that owns the file.
//! The engine never waits for the disk: a full queue skips a sample and counts it; a
//! write that fails for a while (full disk, read-only file) pauses history, said once,
//! and it resumes by itself.
use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, SystemTime},
};

use super::{
    sample::{AlertChange, Sampler},
    History, Sample,
};
use crate::live::{
    record::{AlertRecord, ModeRecord, SummaryRecord, TallyRecord, TransitionEvent},
    Sink,
};

/// Samples waiting for the writer at most; beyond, they are skipped (and counted).
const QUEUE: usize = 8;

enum Message {
    Sample(Box<Sample>),
    Alert(AlertChange),
    /// Tests act on the file between writes (give a full file room again).
    #[cfg(test)]
    Run(Box<dyn FnOnce(&History) + Send>),
}

/// What the writer did, for the exit line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub samples: u64,
    pub alerts: u64,
    /// Samples or alerts not written: the writer was behind, or the file refused them.
    pub skipped: u64,
}

/// Says a line to the person running tcpmon (stderr in the binary).
pub type Say = Box<dyn Fn(&str) + Send>;

/// The writer thread.
pub struct Recorder {
    tx: SyncSender<Message>,
    writer: JoinHandle<Recorded>,
    skipped: Arc<AtomicU64>,
}

impl Recorder {
    pub fn start(history: History, say: Say) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let skipped = Arc::new(AtomicU64::new(0));
        let writer = thread::Builder::new()
            .name("tcpmon-history".into())
            .spawn(move || write_all(history, &rx, &say))?;
        Ok(Self {
            tx,
            writer,
            skipped,
        })
    }

    /// A sink that records through this writer, every `every`, around `inner`.
    pub fn sink<K: Sink>(&self, inner: K, every: Duration, sampler: Sampler) -> HistorySink<K> {
        HistorySink {
            inner,
            to_writer: Some((self.tx.clone(), Arc::clone(&self.skipped))),
            sampler,
            every,
            last: None,
        }
    }

    /// Waits for what is queued to be written.
    pub fn finish(self) -> Recorded {
        drop(self.tx);
        let mut recorded = self.writer.join().unwrap_or_default();
        recorded.skipped += self.skipped.load(Ordering::Relaxed);
        recorded
    }
}

/// Writes in a row after which a paused history is said to have resumed: a nearly full
/// disk makes writes fail and succeed in turn, which would otherwise fill stderr.
const RESUMED_AFTER: u64 = 3;

fn write_all(mut history: History, rx: &Receiver<Message>, say: &Say) -> Recorded {
    let mut recorded = Recorded::default();
    let mut paused = false;
    let mut in_a_row = 0u64;
    for message in rx {
        let written = match message {
            Message::Sample(ref s) => history.record(s),
            Message::Alert(ref a) => history.record_alert(a),
            #[cfg(test)]
            Message::Run(f) => {
                f(&history);
                continue;
            }
        };
        match written {
            Ok(()) => {
                match message {
                    Message::Alert(_) => recorded.alerts += 1,
                    _ => recorded.samples += 1,
                }
                in_a_row += 1;
                if paused && in_a_row >= RESUMED_AFTER {
                    paused = false;
                    say(&format!(
                        "tcpmon: history resumed in {}",
                        history.path().display()
                    ));
                }
            }
            Err(e) => {
                recorded.skipped += 1;
                in_a_row = 0;
                if !paused {
                    paused = true;
                    say(&format!(
                        "tcpmon: history paused ({e}); metrics and output go on, and recording resumes when the file can be written"
                    ));
                }
            }
        }
    }
    if let Err(e) = history.close() {
        recorded.skipped += 1;
        say(&format!(
            "tcpmon: history: the listeners' last sighting was not written ({e})"
        ));
    }
    recorded
}

/// Passes every record to `inner`; samples tallies every interval for the history.
pub struct HistorySink<K> {
    inner: K,
    to_writer: Option<(SyncSender<Message>, Arc<AtomicU64>)>,
    sampler: Sampler,
    every: Duration,
    last: Option<SystemTime>,
}

impl<K> HistorySink<K> {
    /// No history: every record goes to `inner` only.
    pub fn without(inner: K) -> Self {
        Self {
            inner,
            to_writer: None,
            sampler: Sampler::default(),
            every: Duration::MAX,
            last: None,
        }
    }

    pub fn into_inner(self) -> K {
        self.inner
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    fn send(&self, message: Message) {
        if let Some((tx, skipped)) = &self.to_writer {
            match tx.try_send(message) {
                Ok(()) => {}
                // Behind, or gone (its thread ended): skipped, never waited for.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl<K: Sink> Sink for HistorySink<K> {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()> {
        self.inner.mode(record)
    }

    #[inline]
    fn transition(&mut self, event: &TransitionEvent<'_>) -> io::Result<()> {
        self.inner.transition(event)
    }

    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()> {
        let written = self.inner.alert(record);
        if self.to_writer.is_some() {
            let a = record.alert;
            self.send(Message::Alert(AlertChange {
                time: super::sample::unix_seconds(record.time.0),
                status: format!("{:?}", a.status).to_lowercase(),
                severity: a.severity.name().to_owned(),
                rule: a.rule.to_owned(),
                subject: a.subject.clone(),
                message: a.message.clone(),
                netns: a.netns.unwrap_or(0),
            }));
        }
        written
    }

    fn tally(&mut self, record: &TallyRecord) -> io::Result<()> {
        let written = self.inner.tally(record);
        if self.to_writer.is_some() {
            let now = record.time.0;
            let due = self.last.is_none_or(|last| {
                now.duration_since(last)
                    .is_ok_and(|d| d + Duration::from_millis(50) >= self.every)
                    // The clock went back: start afresh.
                    || now < last
            });
            if due {
                self.last = Some(now);
                let sample = self.sampler.sample(record);
                self.send(Message::Sample(Box::new(sample)));
            }
        }
        written
    }

    fn summary(&mut self, record: &SummaryRecord) -> io::Result<()> {
        self.inner.summary(record)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::history::{sample::NamespaceSample, METRICS};

    fn sample(time: i64) -> Sample {
        Sample {
            time,
            port_range: 0,
            namespaces: vec![NamespaceSample {
                netns: 0,
                owner: String::new(),
                values: [time % 100; METRICS.len()],
            }],
            tops: vec![],
            listeners: vec![],
        }
    }

    /// A file that cannot grow (SQLite's own "disk full", from a page limit) pauses the
    /// history, said once; when it can grow again, recording resumes, said too.
    #[test]
    fn a_full_file_pauses_history_and_it_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let history = History::open(&path, u64::MAX).unwrap();
        let pages = history.page_count().unwrap();
        history.set_max_pages(pages).unwrap();
        let said = Arc::new(Mutex::new(Vec::<String>::new()));
        let lines = Arc::clone(&said);
        let say: Say = Box::new(move |line| lines.lock().unwrap().push(line.to_owned()));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = thread::spawn(move || write_all(history, &rx, &say));
        // Hours of samples cannot fit in the pages the empty file has.
        for k in 0..400 {
            tx.send(Message::Sample(Box::new(sample(1_700_000_000 + 10 * k))))
                .unwrap();
        }
        // Room again: the next samples are written, and it says so.
        tx.send(Message::Run(Box::new(|h| {
            h.set_max_pages(1 << 30).unwrap()
        })))
        .unwrap();
        for k in 0..5 {
            tx.send(Message::Sample(Box::new(sample(1_800_000_000 + 10 * k))))
                .unwrap();
        }
        drop(tx);
        let recorded = writer.join().unwrap();
        assert!(recorded.skipped > 0, "{recorded:?}");
        let said = said.lock().unwrap().clone();
        let paused: Vec<&String> = said.iter().filter(|l| l.contains("paused")).collect();
        assert_eq!(paused.len(), 1, "said once: {said:?}");
        assert!(paused[0].contains("database or disk is full"), "{said:?}");
        assert!(
            said.last()
                .unwrap()
                .starts_with("tcpmon: history resumed in"),
            "{said:?}"
        );
        let h = History::open_read(&path).unwrap();
        let (_, last) = h.span(crate::history::Tier::Raw, 0).unwrap().unwrap();
        assert_eq!(last, 1_800_000_040);
    }
}
