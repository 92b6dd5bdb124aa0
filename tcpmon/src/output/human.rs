//! The live records as lines a person reads on a terminal. Everything that came from
//! someone else (process names) is escaped (see model::printable).
use std::io::{self, Write};

use super::table::Style;
use crate::{
    ebpf::KernelCounters,
    live::{
        loss::Received,
        record::{AlertRecord, Mode, TallyRecord, TransitionEvent},
        rules::Status,
    },
    model::{endpoint, printable_bytes, Origin},
};

/// `HH:MM:SS.mmm` of an RFC 3339 stamp, or all of it if it is not one.
fn time_of_day(rfc3339: &str, digits: usize) -> &str {
    rfc3339.get(11..20 + digits).unwrap_or(rfc3339)
}

/// `21:40:12.123456  10.0.0.1:22  10.0.0.9:50112  ESTABLISHED -> CLOSE_WAIT  1532.4ms  sshd[812]`
pub fn transition_line(w: &mut dyn Write, event: &TransitionEvent<'_>) -> io::Result<()> {
    let t = event.transition;
    let time = humantime::format_rfc3339_micros(event.clock.wall(t.at.ts_ns)).to_string();
    let elapsed = event
        .micros_in_old
        .map_or_else(|| "-".to_owned(), |us| format_ms(us as f64 / 1000.0));
    let who = t.task.map_or_else(String::new, |task| {
        let end = task.comm.iter().position(|&b| b == 0).unwrap_or(16);
        format!("  {}[{}]", printable_bytes(&task.comm[..end]), task.pid)
    });
    let marker = if event.origin == Origin::Inferred {
        " (inferred)"
    } else {
        ""
    };
    writeln!(
        w,
        "{}  {:<22} {:<22} {:>11} -> {:<11} {:>9}{who}{marker}",
        time_of_day(&time, 6),
        endpoint(t.at.local_ip, t.at.local_port),
        endpoint(t.at.remote_ip, t.at.remote_port),
        t.old.name(),
        t.new.name(),
        elapsed,
    )
}

pub fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{ms:.1}ms")
    }
}

/// `21:40:12.123 ALERT WARNING [close_wait] 3 CLOSE_WAIT sockets on local port 8080 ...`
pub fn alert_line(w: &mut dyn Write, record: &AlertRecord<'_>, style: Style) -> io::Result<()> {
    let alert = record.alert;
    let label = match alert.status {
        Status::Cleared => "CLEARED".to_owned(),
        _ => style.severity(alert.severity),
    };
    let time = humantime::format_rfc3339_millis(record.time.0).to_string();
    writeln!(
        w,
        "{} ALERT {label} [{}] {}",
        time_of_day(&time, 3),
        alert.rule,
        alert.message
    )
}

/// "(ring buffer full N, ...)": every way an event can go missing, each counted.
pub fn loss_breakdown(kernel: &KernelCounters, received: &Received) -> String {
    let unreadable = if kernel.sock_unreadable > 0 {
        format!(", socket unreadable {}", kernel.sock_unreadable)
    } else {
        String::new()
    };
    format!(
        "(ring buffer full {}, kernel skipped {} (any netns){unreadable}, undecodable {}, unaccounted vs SNMP {})",
        kernel.ringbuf_full, kernel.recursion_misses, received.decode_errors, received.unaccounted
    )
}

/// The one-line tally.
pub fn tally_line(w: &mut dyn Write, r: &TallyRecord) -> io::Result<()> {
    use crate::model::TcpState::*;
    let s = |state| r.states.get(state);
    let tw_check = r
        .time_wait
        .sockstat_error
        .map_or_else(String::new, |e| format!(" (sockstat {e:+})"));
    let top = r.per_ip.top.first().map_or_else(String::new, |t| {
        format!(" | top IP {} {} live", t.ip, t.count)
    });
    let aggregated = if r.per_ip.aggregated > 0 {
        format!(
            " ({} connections from untracked IPs aggregated)",
            r.per_ip.aggregated
        )
    } else {
        String::new()
    };
    let recon = r.reconcile.as_ref().map_or_else(String::new, |c| {
        format!(
            " | last reconcile ({}) off by {}",
            c.reason, c.total_abs_error
        )
    });
    let loss = match (r.mode, r.poll_interval) {
        (Mode::Poll, Some(interval)) => {
            format!("polled every {interval:?}: transitions between polls are not seen")
        }
        _ => format!("lost {} {}", r.lost, loss_breakdown(&r.kernel, &r.received)),
    };
    // Polling sees no retransmit or reset: nothing is said rather than zeros.
    let failures = match r.mode {
        Mode::Ebpf => {
            let f = &r.failures.totals;
            let share = f.retransmit_pct().map_or_else(String::new, |pct| {
                format!(" ({pct:.1}% of those connections' segments)")
            });
            format!(
                " | retransmits {}{share} resets sent {} received {} drops {}",
                f.retransmits, f.resets_sent, f.resets_received, r.failures.drops
            )
        }
        Mode::Poll => String::new(),
    };
    let time = humantime::format_rfc3339_millis(r.time.0).to_string();
    writeln!(
        w,
        "{} tally [{}] ESTAB {} SYN_SENT {} SYN_RECV {} FIN_WAIT1 {} FIN_WAIT2 {} TIME_WAIT {}{tw_check} CLOSE_WAIT {} LAST_ACK {} CLOSING {} LISTEN {} | {:.0} transitions/s{failures} | {loss}{recon}{top}{aggregated}",
        time_of_day(&time, 3),
        r.mode.name(),
        s(Established),
        s(SynSent),
        s(SynRecv),
        s(FinWait1),
        s(FinWait2),
        r.time_wait.count,
        s(CloseWait),
        s(LastAck),
        s(Closing),
        s(Listen),
        r.transitions_per_sec,
    )
}

/// With --all-netns: the other namespaces of a tally, the largest five in a line.
pub fn namespaces_line(w: &mut dyn Write, r: &TallyRecord) -> io::Result<()> {
    use crate::model::TcpState::*;
    const SHOWN: usize = 5;
    let Some(namespaces) = &r.namespaces else {
        return Ok(());
    };
    let time = humantime::format_rfc3339_millis(r.time.0).to_string();
    let mut line = format!(
        "{} netns: {} tallied",
        time_of_day(&time, 3),
        namespaces.len()
    );
    if let Some(u) = r.namespaces_untracked.as_ref().filter(|u| u.namespaces > 0) {
        line += &format!(
            ", {} not (--max-netns; {} transitions)",
            u.namespaces, u.transitions
        );
    }
    for n in namespaces.iter().take(SHOWN) {
        line += &format!(
            " | {} ({}) {} [ESTAB {} TIME_WAIT {} CLOSE_WAIT {}]",
            crate::model::printable(&n.owner),
            n.inode,
            n.total,
            n.states.get(Established),
            n.states.get(TimeWait),
            n.states.get(CloseWait)
        );
    }
    if namespaces.len() > SHOWN {
        line += &format!(" | {} more", namespaces.len() - SHOWN);
    }
    writeln!(w, "{line}")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::live::{
        fake::{FakeHost, FakeSource, RecordingSink},
        record::{ModeRecord, Timestamp, SCHEMA_VERSION},
        rules::Alert,
        Engine, EngineConfig,
    };

    #[test]
    fn the_tally_line_says_states_loss_and_the_last_reconciliation() {
        let mut sink = RecordingSink::default();
        let mut engine = Engine::start(
            EngineConfig::default().validate().expect("a valid config"),
            FakeHost {
                sockstat_time_wait: Some(3),
                ..FakeHost::default()
            },
            Some(FakeSource::default()),
            ModeRecord {
                schema_version: SCHEMA_VERSION,
                mode: Mode::Ebpf,
                reason: String::new(),
                notes: Vec::new(),
                fell_back: false,
                poll_interval: None,
            },
            &mut sink,
        )
        .unwrap();
        fn text(engine: &mut Engine<FakeHost, FakeSource>, sink: &mut RecordingSink) -> String {
            engine.write_tally(sink).unwrap();
            let mut line = Vec::new();
            tally_line(&mut line, sink.last_tally()).unwrap();
            String::from_utf8(line).unwrap()
        }
        let first = text(&mut engine, &mut sink);
        assert!(first.contains("tally [ebpf] ESTAB 0"), "{first}");
        assert!(first.contains("lost 0 (ring buffer full 0,"), "{first}");
        assert!(
            first.contains("last reconcile (baseline) off by 0"),
            "{first}"
        );
        // sockstat knows of 3 TIME_WAIT the tally never saw enter: corrected.
        engine.tick(&mut sink).unwrap();
        let corrected = text(&mut engine, &mut sink);
        assert!(
            corrected.contains("TIME_WAIT 3 (sockstat -3)"),
            "{corrected}"
        );
        // Ring drops: counted, and a reconciliation against the table (which shows no
        // TIME_WAIT) follows.
        engine.source_mut().unwrap().counters.ringbuf_full = 4;
        engine.tick(&mut sink).unwrap();
        let text = text(&mut engine, &mut sink);
        assert!(text.contains("lost 4 (ring buffer full 4,"), "{text}");
        assert!(text.contains("last reconcile (loss) off by 3"), "{text}");
    }

    #[test]
    fn alert_lines_label_cleared_alerts() {
        let alert = Alert {
            status: Status::Cleared,
            severity: crate::model::Severity::Critical,
            rule: "time_wait",
            subject: "total".into(),
            message: "cleared: 6000 sockets in TIME_WAIT".into(),
            netns: None,
            owner: None,
        };
        let record = AlertRecord {
            time: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123)),
            alert: &alert,
        };
        let mut line = Vec::new();
        alert_line(&mut line, &record, Style::default()).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "08:00:00.123 ALERT CLEARED [time_wait] cleared: 6000 sockets in TIME_WAIT\n"
        );
    }
}
