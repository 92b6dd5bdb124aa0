//! Which capabilities tcpmon holds (the effective set of /proc/self/status), to say up
//! front which features a missing one turns off.
use super::read;

/// Capability numbers (linux/capability.h) of the ones tcpmon's features need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Capability {
    DacReadSearch = 2,
    NetAdmin = 12,
    SysPtrace = 19,
    SysAdmin = 21,
    SysNice = 23,
    Perfmon = 38,
    Bpf = 39,
}

/// The effective set, from `CapEff:` of a /proc/PID/status text.
pub fn parse_effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether this process holds `cap` (false when it cannot tell).
pub fn has(cap: Capability) -> bool {
    read::small_text(std::path::Path::new("/proc/self/status"))
        .ok()
        .and_then(|s| parse_effective(&s))
        .is_some_and(|set| set & (1 << cap as u8) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\ttcpmon\nCapInh:\t0000000000000000\nCapEff:\t000000c000081000\n";
        let set = parse_effective(status).unwrap();
        for (cap, held) in [
            (Capability::NetAdmin, true),
            (Capability::SysPtrace, true),
            (Capability::SysAdmin, false),
            (Capability::Perfmon, true),
            (Capability::Bpf, true),
        ] {
            assert_eq!(set & (1 << cap as u8) != 0, held, "{cap:?}");
        }
        assert_eq!(parse_effective("Name:\tx\n"), None);
    }
}
