//! Stop requests: SIGINT, SIGTERM and SIGHUP ask the engine to stop (final tally,
//! detach, exit 0); a second signal exits at once, and a stop that has not finished
//! within `DEADLINE` exits anyway (the kernel detaches whatever a dead process attached).
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::Notify;

use crate::stderr::stderr_line;

/// The longest a stop may take.
const DEADLINE: Duration = Duration::from_millis(1900);

#[derive(Debug, Default)]
struct Inner {
    requested: AtomicBool,
    at: Mutex<Option<Instant>>,
    /// The run is over: what remains is the final drain and tally.
    finishing: AtomicBool,
    notify: Notify,
}

/// A stop request, shared by the signal thread, the engine loop and the output queue.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<Inner>);

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self) {
        if !self.0.requested.swap(true, Ordering::AcqRel) {
            *self.0.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        self.0.notify.notify_one();
    }

    pub fn requested(&self) -> bool {
        self.0.requested.load(Ordering::Acquire)
    }

    /// From now on the engine is finishing (detached, writing its last records).
    pub fn enter_finish(&self) {
        self.0.finishing.store(true, Ordering::Release);
    }

    pub fn finishing(&self) -> bool {
        self.0.finishing.load(Ordering::Acquire)
    }

    /// Whether a stop was requested more than `grace` ago.
    pub fn expired(&self, grace: Duration) -> bool {
        self.requested()
            && self
                .0
                .at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|at| at.elapsed() >= grace)
    }

    /// Completes when a stop is requested (at once if it already was).
    pub async fn wait(&self) {
        if self.requested() {
            return;
        }
        self.0.notify.notified().await;
    }
}

/// What runs before a forced exit (`top` puts the terminal back).
static BEFORE_FORCED_EXIT: OnceLock<fn()> = OnceLock::new();

/// Sets what runs before a forced exit (a second signal, a stop past its deadline).
pub fn before_forced_exit(f: fn()) {
    let _ = BEFORE_FORCED_EXIT.set(f);
}

/// Ends the process now, after saying why.
fn forced_exit(why: &str, code: i32) -> ! {
    if let Some(f) = BEFORE_FORCED_EXIT.get() {
        f();
    }
    stderr_line(why);
    // SAFETY: _exit ends the process without running anything else, which is the point.
    unsafe { libc::_exit(code) }
}

/// Turns SIGINT, SIGTERM and SIGHUP into stop requests, from now on.
pub fn install(stop: &Stop) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let stop = stop.clone();
    thread::Builder::new()
        .name("tcpmon-signals".into())
        .spawn(move || {
            let mut first = true;
            for signal in signals.forever() {
                if !first {
                    forced_exit("tcpmon: second signal: exiting now", 128 + signal);
                }
                first = false;
                stop.request();
                thread::spawn(|| {
                    thread::sleep(DEADLINE);
                    forced_exit(
                        "tcpmon: could not stop cleanly in time; exiting (the kernel detaches the programs)",
                        1,
                    );
                });
            }
        })?;
    Ok(())
}
