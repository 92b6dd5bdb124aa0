//! The scheduling priority of the eBPF reader. It has to keep up with the traffic it
//! watches, and under a churn that keeps every CPU busy, at the default priority, the
//! threads making that traffic preempt it mid-batch (80-450 times a second on the 2-CPU
//! test machine; 30-60 at nice -19). Its CPU time is the same either way, but the churn
//! it watches ran 2-4 points of connection rate slower with it at nice 0 than at -19
//! (-10 was in between), and a reader that falls behind lets the rings fill. So it raises its
//! own priority, as audit daemons do, but stays an ordinary time-shared thread: unlike a
//! real-time one it cannot starve the machine, even during a long /proc reconciliation.
use std::io;

/// The nice value the reader takes unless told otherwise.
pub const DEFAULT_READER_NICE: i32 = -19;

/// The nice value to set, given the current one and the one asked for (`None`: the
/// default). An explicit request is applied as given; the default only ever raises the
/// priority, so a reader started at -20 stays there.
pub fn reader_nice(current: i32, requested: Option<i32>) -> Option<i32> {
    match requested {
        Some(nice) => (nice != current).then_some(nice),
        None => (current > DEFAULT_READER_NICE).then_some(DEFAULT_READER_NICE),
    }
}

/// The calling thread's nice value.
fn current_nice() -> io::Result<i32> {
    // getpriority() may legitimately return -1: only errno tells an error apart.
    // SAFETY: errno is thread-local; getpriority has no memory preconditions.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(0) => Ok(nice),
            e => Err(e),
        }
    }
}

/// Sets the calling thread's nice value (on Linux PRIO_PROCESS with id 0 is the calling
/// thread only, which is the reader: the runtime is single-threaded).
fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: no memory preconditions.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies the reader's priority; returns the nice value it runs at.
pub fn apply(requested: Option<i32>) -> io::Result<i32> {
    let current = current_nice()?;
    match reader_nice(current, requested) {
        Some(nice) => set_nice(nice).map(|()| nice),
        None => Ok(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_only_raises_the_priority() {
        assert_eq!(reader_nice(0, None), Some(DEFAULT_READER_NICE));
        assert_eq!(reader_nice(5, None), Some(DEFAULT_READER_NICE));
        assert_eq!(reader_nice(DEFAULT_READER_NICE, None), None);
        assert_eq!(reader_nice(-20, None), None);
    }

    #[test]
    fn an_explicit_value_is_applied_as_given() {
        assert_eq!(reader_nice(0, Some(0)), None);
        assert_eq!(reader_nice(-10, Some(0)), Some(0));
        assert_eq!(reader_nice(-15, Some(-5)), Some(-5));
        assert_eq!(reader_nice(0, Some(-20)), Some(-20));
    }

    #[test]
    fn reads_the_threads_own_nice_value() {
        // Lowering the priority needs no privilege, so this runs anywhere, on a thread
        // of its own so that the test runner's threads keep theirs.
        std::thread::spawn(|| {
            let before = current_nice().unwrap();
            let lower = (before + 1).min(19);
            set_nice(lower).unwrap();
            assert_eq!(current_nice().unwrap(), lower);
            assert_eq!(apply(Some(lower)).unwrap(), lower, "nothing to change");
        })
        .join()
        .unwrap();
    }
}
