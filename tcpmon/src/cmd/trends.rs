//! `tcpmon trends`: the history read back, per bucket, as a chart and as capacity
//! findings.
use std::io::Write;

use anyhow::{bail, Result};
use tcpmon::{
    history::{
        report::{trends, TrendsQuery, TrendsReport},
        sample::{metric_index, unix_seconds},
        store::Tier,
        trends::{sparkline, time_text, time_text_to},
        History,
    },
    output::table::{json_line, Align, Style, Table},
};

use crate::{cli::TrendsArgs, exit::Status};

pub fn run(args: &TrendsArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let now_time = std::time::SystemTime::now();
    let now = args.now.unwrap_or_else(|| unix_seconds(now_time));
    let at = |m: tcpmon::model::duration::Moment| match m {
        tcpmon::model::duration::Moment::Ago(d) => now - d.as_secs() as i64,
        m => unix_seconds(m.resolve(now_time)),
    };
    // Periods are half-open: [since, until).
    let (since, until) = (at(args.since), at(args.until));
    if since >= until {
        bail!(
            "--since ({}) is not before --until ({})",
            time_text(since),
            time_text(until)
        );
    }
    let mut metrics = Vec::new();
    for name in &args.state {
        match metric_index(name) {
            Some(i) if !metrics.contains(&i) => metrics.push(i),
            Some(_) => {}
            None => bail!(
                "--state {name}: not recorded; states (ESTABLISHED, TIME_WAIT, ...) or {}",
                tcpmon::history::METRICS[11..]
                    .iter()
                    .map(|m| m.column)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let netns = match args.netns.as_str() {
        "host" | "0" => 0,
        inode => inode.parse::<u64>().map_err(|_| {
            anyhow::anyhow!("--netns {inode}: give `host` or a namespace's inode number")
        })?,
    };
    let path = args
        .history
        .clone()
        .unwrap_or_else(super::live::default_history_path);
    let history = History::open_read(&path)?;
    let report = trends(
        &history,
        &TrendsQuery {
            now,
            since,
            until,
            every: args.every.as_secs().max(1) as i64,
            netns,
            metrics,
            compare: args.compare.map(|d| d.as_secs() as i64),
            listeners: args.listeners,
        },
    )?;
    if args.json {
        json_line(out, &report)?;
    } else {
        write_text(out, &report, style)?;
    }
    Ok(Status::Clean)
}

fn tier_text(tier: Tier) -> &'static str {
    match tier {
        Tier::Raw => "raw samples",
        Tier::Minute => "1-minute rollups",
        Tier::Hour => "1-hour rollups",
    }
}

fn number(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The report as a person reads it.
pub fn write_text(out: &mut dyn Write, r: &TrendsReport, style: Style) -> std::io::Result<()> {
    let place = match (&r.owner, r.netns) {
        (_, 0) => "the recorder's own namespace".to_owned(),
        (Some(owner), n) => format!("netns {n} ({owner})"),
        (None, n) => format!("netns {n}"),
    };
    writeln!(
        out,
        "{} {} to {} UTC, every {}, {place} (from {}; {})",
        style.heading("History"),
        time_text(r.since),
        time_text(r.until),
        humantime::format_duration(std::time::Duration::from_secs(r.every_secs.max(0) as u64)),
        tier_text(r.tier),
        r.history
    )?;
    if r.buckets.is_empty() {
        writeln!(out, "\nNo samples in this period.")?;
    } else {
        writeln!(out, "\nEach cell: min / mean / max over the bucket.")?;
        let mut columns: Vec<(&'static str, Align)> =
            vec![("BUCKET (UTC)", Align::Left), ("SAMPLES", Align::Right)];
        for name in &r.metrics {
            let label = tcpmon::history::METRICS
                .iter()
                .find(|m| m.label == name)
                .map_or("?", |m| m.label);
            columns.push((label, Align::Right));
        }
        let mut table = Table::new(&columns);
        for b in &r.buckets {
            let mut row = vec![time_text_to(b.start, r.every_secs), b.samples.to_string()];
            for name in &r.metrics {
                row.push(format!(
                    "{} / {} / {}",
                    b.min[name],
                    number(b.avg[name]),
                    b.max[name]
                ));
            }
            table.row(row);
        }
        table.write(out, "")?;
        writeln!(out)?;
        let width = r.metrics.iter().map(String::len).max().unwrap_or(0);
        for name in &r.metrics {
            let means: Vec<f64> = r.buckets.iter().map(|b| b.avg[name]).collect();
            let lo = r.buckets.iter().map(|b| b.min[name]).min().unwrap_or(0);
            let hi = r.buckets.iter().map(|b| b.max[name]).max().unwrap_or(0);
            writeln!(
                out,
                "{name:<width$}  {}  (means; lowest {lo}, highest {hi})",
                sparkline(&means)
            )?;
        }
    }
    if !r.findings.is_empty() {
        writeln!(out, "\n{}", style.heading("Findings"))?;
        for f in &r.findings {
            writeln!(out, "  {} {}", style.severity(f.severity), f.message)?;
        }
    }
    if let Some(c) = &r.compare {
        writeln!(
            out,
            "\n{} {} to {} UTC",
            style.heading("Against"),
            time_text(c.since),
            time_text(c.until)
        )?;
        let mut table = Table::new(&[
            ("", Align::Left),
            ("MEAN", Align::Right),
            ("BEFORE", Align::Right),
            ("CHANGE", Align::Right),
            ("MAX", Align::Right),
            ("BEFORE", Align::Right),
        ]);
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), number);
        for m in &c.metrics {
            table.row(vec![
                m.metric.clone(),
                opt(m.avg),
                opt(m.avg_before),
                m.change_pct
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:+.0}%")),
                m.max.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                m.max_before
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
            ]);
        }
        table.write(out, "  ")?;
    }
    if let Some(listeners) = &r.listeners {
        writeln!(
            out,
            "\n{}",
            style.heading("Listeners that appeared or went")
        )?;
        if listeners.is_empty() {
            writeln!(out, "  none: the same listeners throughout")?;
        } else {
            let mut table = Table::new(&[
                ("CHANGE", Align::Left),
                ("LISTENER", Align::Left),
                ("PROCESS", Align::Left),
                ("FIRST SEEN", Align::Left),
                ("LAST SEEN", Align::Left),
            ]);
            for l in listeners {
                table.row(vec![
                    l.change.to_owned(),
                    l.listener.listener.clone(),
                    if l.listener.process.is_empty() {
                        "-".to_owned()
                    } else {
                        tcpmon::model::printable(&l.listener.process).into_owned()
                    },
                    time_text(l.listener.first_seen),
                    time_text(l.listener.last_seen),
                ]);
            }
            table.write(out, "  ")?;
        }
    }
    let raised = r.alerts.iter().filter(|a| a.status == "raised").count();
    if raised > 0 {
        writeln!(out, "\n{} raised in the period:", style.heading("Alerts"))?;
        let mut by_rule: std::collections::BTreeMap<&str, usize> = Default::default();
        for a in r.alerts.iter().filter(|a| a.status == "raised") {
            *by_rule.entry(a.rule.as_str()).or_default() += 1;
        }
        for (rule, n) in by_rule {
            writeln!(out, "  {rule}: {n}")?;
        }
    }
    Ok(())
}
