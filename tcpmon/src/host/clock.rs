//! Time: the kernel's monotonic clock, and its mapping to wall-clock time.
use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC now, in nanoseconds: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Maps kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_at_start: SystemTime,
    mono_at_start: u64,
    /// `wall_at_start` as nanoseconds since the Unix epoch.
    wall_ns_at_start: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self::fixed(SystemTime::now(), monotonic_ns())
    }

    pub fn fixed(wall_at_start: SystemTime, mono_at_start: u64) -> Self {
        let wall_ns_at_start = wall_at_start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            wall_at_start,
            mono_at_start,
            wall_ns_at_start,
        }
    }

    /// Wall-clock nanoseconds since the Unix epoch at monotonic time `mono_ns` (integer
    /// arithmetic only: this runs once per record).
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        let start = self.wall_ns_at_start;
        if mono_ns >= self.mono_at_start {
            start.saturating_add(mono_ns - self.mono_at_start)
        } else {
            start.saturating_sub(self.mono_at_start - mono_ns)
        }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_at_start {
            self.wall_at_start + Duration::from_nanos(mono_ns - self.mono_at_start)
        } else {
            self.wall_at_start - Duration::from_nanos(self.mono_at_start - mono_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_monotonic_to_wall() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::fixed(start, 1_000_000_000);
        assert_eq!(clock.wall(3_000_000_000), start + Duration::from_secs(2));
        assert_eq!(clock.wall(500_000_000), start - Duration::from_millis(500));
        assert_eq!(clock.wall_ns(3_000_000_000), 1_800_000_002_000_000_000);
        assert_eq!(clock.wall_ns(500_000_000), 1_799_999_999_500_000_000);
    }
}
