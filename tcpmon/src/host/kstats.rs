//! Parsers for the kernel's cheap counters: /proc/net/sockstat (TIME_WAIT total) and
//! /proc/net/netstat (TcpExt: SYN cookies, accept-queue overflows, request drops).
use std::collections::HashMap;

/// `tw` from the `TCP:` line of /proc/net/sockstat.
pub fn sockstat_time_wait(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut fields = line.split_whitespace().skip(1);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name == "tw" {
            return value.parse().ok();
        }
    }
    None
}

/// The `TcpExt:` counters of /proc/net/netstat (a header line of names, then values).
pub fn tcp_ext(text: &str) -> HashMap<String, u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return HashMap::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Connection openings the kernel counted (/proc/net/snmp `Tcp:` ActiveOpens and
/// PassiveOpens). Each matches exactly one transition (CLOSE -> SYN_SENT, LISTEN ->
/// SYN_RECV), which makes them an independent check that no event went missing silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Opens {
    pub active: u64,
    pub passive: u64,
}

pub fn snmp_opens(text: &str) -> Option<Opens> {
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let mut opens = Opens::default();
    let mut found = 0;
    for (name, value) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        match name {
            "ActiveOpens" => (opens.active, found) = (value.parse().ok()?, found + 1),
            "PassiveOpens" => (opens.passive, found) = (value.parse().ok()?, found + 1),
            _ => {}
        }
    }
    (found == 2).then_some(opens)
}

/// Openings the kernel counted between `base` and `now` that neither arrived as events
/// (`seen`) nor are covered by the losses already reported (`reported_lost`, any kind of
/// record): the silent loss, as a lower bound. Losses the counters explain are not
/// counted a second time.
pub fn unexplained_opens(base: Opens, now: Opens, seen: Opens, reported_lost: u64) -> u64 {
    let missing = |base: u64, now: u64, seen: u64| (now - base.min(now)).saturating_sub(seen);
    (missing(base.active, now.active, seen.active)
        + missing(base.passive, now.passive, seen.passive))
    .saturating_sub(reported_lost)
}

/// The TcpExt counters that tell a SYN flood or a full accept queue, as deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SynCounters {
    pub syncookies_sent: u64,
    pub reqq_full_do_cookies: u64,
    pub reqq_full_drop: u64,
    pub listen_overflows: u64,
    pub listen_drops: u64,
    /// Request sockets reset by the peer (a SYN scan, or spoofed SYNs whose real owners
    /// answer the SYN-ACK with a reset): SYN trouble that leaves no half-open request.
    pub embryonic_resets: u64,
}

impl SynCounters {
    pub fn from_tcp_ext(ext: &HashMap<String, u64>) -> Self {
        let get = |name: &str| ext.get(name).copied().unwrap_or(0);
        Self {
            syncookies_sent: get("SyncookiesSent"),
            reqq_full_do_cookies: get("TCPReqQFullDoCookies"),
            reqq_full_drop: get("TCPReqQFullDrop"),
            listen_overflows: get("ListenOverflows"),
            listen_drops: get("ListenDrops"),
            embryonic_resets: get("EmbryonicRsts"),
        }
    }

    /// Counter increase since `earlier` (counters only grow; a reset reads as zero).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            syncookies_sent: self.syncookies_sent.saturating_sub(earlier.syncookies_sent),
            reqq_full_do_cookies: self
                .reqq_full_do_cookies
                .saturating_sub(earlier.reqq_full_do_cookies),
            reqq_full_drop: self.reqq_full_drop.saturating_sub(earlier.reqq_full_drop),
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
            embryonic_resets: self
                .embryonic_resets
                .saturating_sub(earlier.embryonic_resets),
        }
    }

    /// Evidence that a SYN queue overflowed: cookies sent or requests dropped.
    pub fn queue_overflowed(&self) -> bool {
        self.syncookies_sent + self.reqq_full_do_cookies + self.reqq_full_drop > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexplained_opens_counts_only_what_no_counter_explains() {
        let opens = |active, passive| Opens { active, passive };
        let (base, now) = (opens(100, 50), opens(160, 90));
        // 60 active and 40 passive openings since the base.
        assert_eq!(unexplained_opens(base, now, opens(60, 40), 0), 0);
        assert_eq!(unexplained_opens(base, now, opens(55, 38), 0), 7);
        // Ring-buffer drops already reported cover the missing ones: not counted twice.
        assert_eq!(unexplained_opens(base, now, opens(55, 38), 5), 2);
        assert_eq!(unexplained_opens(base, now, opens(10, 0), 1000), 0);
        // Events of openings made before the base (seen > counted) hide nothing.
        assert_eq!(unexplained_opens(base, now, opens(70, 45), 0), 0);
        // A counter that went backwards (a new namespace's table) reads as no openings.
        assert_eq!(unexplained_opens(now, base, opens(0, 0), 0), 0);
    }

    #[test]
    fn parses_sockstat() {
        let text =
            "sockets: used 8\nTCP: inuse 1 orphan 0 tw 1234 alloc 1 mem 59\nUDP: inuse 0 mem 0\n";
        assert_eq!(sockstat_time_wait(text), Some(1234));
        assert_eq!(sockstat_time_wait("TCP: inuse 1"), None);
        assert_eq!(sockstat_time_wait(""), None);
    }

    #[test]
    fn parses_snmp_opens() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n\
                    Tcp: 1 200 120000 -1 1234 567 8\n";
        assert_eq!(
            snmp_opens(text),
            Some(Opens {
                active: 1234,
                passive: 567
            })
        );
        assert_eq!(snmp_opens("Tcp: ActiveOpens\nTcp: 5\n"), None);
    }

    #[test]
    fn parses_tcp_ext_pairs() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows TCPReqQFullDrop\n\
                    TcpExt: 5 0 7 2\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let ext = tcp_ext(text);
        assert_eq!(ext["SyncookiesSent"], 5);
        let now = SynCounters::from_tcp_ext(&ext);
        assert_eq!(
            now,
            SynCounters {
                syncookies_sent: 5,
                listen_overflows: 7,
                reqq_full_drop: 2,
                ..Default::default()
            }
        );
        let delta = now.since(&SynCounters {
            syncookies_sent: 2,
            ..Default::default()
        });
        assert_eq!(delta.syncookies_sent, 3);
        assert!(delta.queue_overflowed());
        assert!(!SynCounters::default().queue_overflowed());
        assert!(tcp_ext("garbage").is_empty());
    }
}
