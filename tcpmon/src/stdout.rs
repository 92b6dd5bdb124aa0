//! Where the binary's output goes: snapshot commands write through a buffer that treats
//! a closed pipe as the end of the output (not an error, and not a reason to change the
//! exit status); `watch` writes through a queue that a separate thread empties, so a
//! reader that stops reading never blocks the engine past a stop signal.
use std::{
    fs::File,
    io::{self, BufWriter, Write},
    mem::ManuallyDrop,
    os::fd::FromRawFd,
    sync::{
        mpsc::{self, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::signals::Stop;

/// Standard output as a plain file (no lock, no buffer of std's own), never closed.
struct RawStdout(ManuallyDrop<File>);

fn raw_stdout() -> RawStdout {
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never closes it.
    RawStdout(ManuallyDrop::new(unsafe { File::from_raw_fd(1) }))
}

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Ignores writes once the reader has gone (EPIPE): `tcpmon audit | head -1` still
/// exits with audit's status.
struct PipeTolerant {
    file: RawStdout,
    closed: bool,
}

impl Write for PipeTolerant {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.file.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The snapshot commands' stdout.
pub struct SnapshotOut(BufWriter<PipeTolerant>);

impl SnapshotOut {
    pub fn stdout() -> Self {
        Self(BufWriter::with_capacity(
            64 << 10,
            PipeTolerant {
                file: raw_stdout(),
                closed: false,
            },
        ))
    }
}

impl Write for SnapshotOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Chunks of output handed to the writer thread; beyond this many the engine waits.
const QUEUE_CHUNKS: usize = 16;
/// A chunk is handed over when it reaches this size (or at a flush).
const CHUNK_BYTES: usize = 64 << 10;
/// After a stop signal, the longest output may still wait for the reader.
pub const STOP_GRACE: Duration = Duration::from_millis(1000);

/// `watch`'s stdout: writes collect into chunks that a writer thread writes out. When
/// the reader is slower than the engine the queue fills and the engine waits (the rings
/// then fill, which is counted as loss and reconciled). A stop signal ends that wait at
/// once while the engine runs (so it detaches without delay), and bounds it to a grace
/// period while the engine finishes.
pub struct QueuedStdout {
    chunk: Vec<u8>,
    queue: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    /// The writer thread's error (EPIPE: the reader went away; ENOSPC: a full disk).
    failed: Arc<Mutex<Option<io::Error>>>,
    stop: Stop,
}

impl QueuedStdout {
    pub fn new(stop: Stop) -> io::Result<Self> {
        Self::to(raw_stdout(), stop)
    }

    fn to(mut file: impl Write + Send + 'static, stop: Stop) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
        let failed = Arc::new(Mutex::new(None));
        let failed_w = Arc::clone(&failed);
        let writer = std::thread::Builder::new()
            .name("tcpmon-stdout".into())
            .spawn(move || {
                for chunk in rx {
                    if let Err(e) = file.write_all(&chunk) {
                        *failed_w.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                }
            })?;
        Ok(Self {
            chunk: Vec::with_capacity(CHUNK_BYTES),
            queue: Some(tx),
            writer: Some(writer),
            failed,
            stop,
        })
    }

    /// The writer's error, as it was (the OS error and its text).
    fn check_failed(&self) -> io::Result<()> {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            None => Ok(()),
        }
    }

    /// Hands the current chunk to the writer, waiting while the queue is full (but not
    /// past the grace period of a stop).
    fn hand_over(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.check_failed()?;
        let Some(queue) = &self.queue else {
            return Err(io::Error::other("output closed"));
        };
        let mut chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES));
        loop {
            match queue.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => {
                    self.check_failed()?;
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "output closed"));
                }
                Err(TrySendError::Full(back)) => {
                    if self.stop.requested() && !self.stop.finishing() {
                        return Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "stopping while standard output is not being read",
                        ));
                    }
                    if self.stop.expired(STOP_GRACE) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "standard output is not being read",
                        ));
                    }
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Waits for what is queued to be written: without limit while no stop was asked
    /// for, then for the grace period. Why not everything was written, when it was not.
    pub fn finish(mut self) -> io::Result<()> {
        let handed = self.hand_over();
        drop(self.queue.take());
        let Some(writer) = self.writer.take() else {
            return handed;
        };
        loop {
            if writer.is_finished() {
                if writer.join().is_err() {
                    return Err(io::Error::other("the output thread panicked"));
                }
                // The writer's own error says most (ENOSPC, EPIPE); then the hand-over's.
                return self.check_failed().and(handed);
            }
            if self.stop.expired(STOP_GRACE) {
                // The reader is stuck; the thread stays blocked and ends with the process.
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "standard output is not being read",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Write for QueuedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.chunk.len() >= CHUNK_BYTES {
            self.hand_over()?;
        }
        self.chunk.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A writer that blocks until told to go on.
    struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cvar.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_stops_reading_cannot_hold_a_stop() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let stop = Stop::new();
        let mut out =
            QueuedStdout::to(Gate(Arc::clone(&gate), Arc::clone(&written)), stop.clone()).unwrap();
        // Fill the queue: the writer is blocked in its first write.
        let chunk = vec![b'x'; CHUNK_BYTES];
        for _ in 0..QUEUE_CHUNKS + 1 {
            out.write_all(&chunk).unwrap();
            out.flush().unwrap();
        }
        stop.request();
        // While the engine runs, a stop ends the wait at once ...
        let started = Instant::now();
        out.write_all(&chunk).unwrap();
        let err = out.flush().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert!(started.elapsed() < Duration::from_millis(100));
        // ... and while it finishes, after the grace period from the signal.
        stop.enter_finish();
        let started = Instant::now();
        out.write_all(&chunk).unwrap();
        let err = out.flush().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited < STOP_GRACE * 2, "{waited:?}");
        assert!(out.finish().is_err(), "the queue could not be written");
    }

    #[test]
    fn everything_queued_is_written_when_the_reader_keeps_up() {
        let gate = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut out = QueuedStdout::to(Gate(gate, Arc::clone(&written)), Stop::new()).unwrap();
        for i in 0..10_000u32 {
            writeln!(out, "line {i}").unwrap();
        }
        assert!(out.finish().is_ok());
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 10_000);
        assert!(text.ends_with("line 9999\n"));
    }
}
