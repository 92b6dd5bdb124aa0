//! The kernel counter files (/proc/net/sockstat, netstat, snmp) as any text: parsed or
//! refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmon::host::kstats::{snmp_opens, sockstat_time_wait, tcp_ext, SynCounters};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sockstat_time_wait(&text);
    let _ = snmp_opens(&text);
    let ext = tcp_ext(&text);
    let counters = SynCounters::from_tcp_ext(&ext);
    // Counters only grow: a delta against itself is zero.
    assert_eq!(counters.since(&counters), SynCounters::default());
});
