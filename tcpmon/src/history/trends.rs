//! Capacity findings over a period's buckets: TIME_WAIT headroom against the port range,
//! CLOSE_WAIT growth and who holds it, the busiest hour, per-IP peaks, and a period
//! against the one before. Pure: the store's rows in, findings out.
use serde::Serialize;

use super::store::{Bucket, TopPeak};
use crate::model::Severity;

/// One finding of `trends`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// `time_wait_headroom`, `close_wait_growth`, `busiest_hour`, `per_ip_peak`.
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
}

/// Least-squares slope of `points` (x, y), per unit of x; None under two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM` UTC.
pub fn time_text(unix: i64) -> String {
    time_text_to(unix, 60)
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM`, with seconds when `resolution` (seconds)
/// is under a minute.
pub fn time_text_to(unix: i64, resolution: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-07T08:01:31Z -> 2026-12-07 08:01(:31)
    let end = if resolution < 60 { 19 } else { 16 };
    format!("{} {}", &s[..10], &s[11..end])
}

/// TIME_WAIT toward the busiest destination at its peak, against the ephemeral range:
/// how much room new connections to it had left. `column`: index of that metric in the
/// buckets.
pub fn time_wait_headroom(
    buckets: &[Bucket],
    column: usize,
    port_range: Option<i64>,
) -> Option<Finding> {
    let (peak, at) = buckets
        .iter()
        .map(|b| (b.max[column], b.start))
        .max_by_key(|(v, at)| (*v, -at))?;
    let Some(range) = port_range.filter(|r| *r > 0) else {
        return Some(Finding {
            kind: "time_wait_headroom",
            severity: Severity::Info,
            message: format!(
                "peak TIME_WAIT toward one destination: {peak} (bucket from {}); the port range was not recorded",
                time_text(at)
            ),
        });
    };
    let used = peak as f64 * 100.0 / range as f64;
    let severity = if used > 80.0 {
        Severity::Critical
    } else if used > 50.0 {
        Severity::Warning
    } else {
        Severity::Info
    };
    Some(Finding {
        kind: "time_wait_headroom",
        severity,
        message: format!(
            "peak TIME_WAIT toward one destination: {peak} of {range} ephemeral ports ({used:.1}% used, {:.1}% headroom) in the bucket from {}",
            100.0 - used,
            time_text(at)
        ),
    })
}

/// CLOSE_WAIT's trend over the period from each bucket's mean: growth per hour, and who
/// held the largest leak.
pub fn close_wait_growth(buckets: &[Bucket], column: usize, leaks: &[TopPeak]) -> Option<Finding> {
    let points: Vec<(f64, f64)> = buckets
        .iter()
        .map(|b| (b.start as f64 / 3600.0, b.avg[column]))
        .collect();
    let per_hour = slope(&points)?;
    let (first, last) = (points.first()?.1, points.last()?.1);
    let span_hours = points.last()?.0 - points.first()?.0;
    let grew = per_hour * span_hours;
    let holder = leaks.first().map_or_else(String::new, |l| {
        format!(
            "; largest leak {} ({} socket{}{})",
            l.key,
            l.max,
            if l.max == 1 { "" } else { "s" },
            if l.owners.is_empty() {
                String::new()
            } else {
                format!(", held by {}", l.owners)
            }
        )
    });
    let growing = per_hour > 0.0 && grew >= 10.0_f64.max(first * 0.5);
    Some(Finding {
        kind: "close_wait_growth",
        severity: if growing {
            Severity::Warning
        } else {
            Severity::Info
        },
        message: format!(
            "CLOSE_WAIT {} {per_hour:+.1}/hour (mean {first:.0} in the first bucket, {last:.0} in the last){holder}",
            if growing { "is growing" } else { "trend" }
        ),
    })
}

/// The hour of day (UTC) with the highest mean of a metric, from hourly buckets.
pub fn busiest_hour(hourly: &[Bucket], column: usize, label: &str) -> Option<Finding> {
    let mut sums = [(0.0f64, 0u32); 24];
    for b in hourly {
        let hour = (b.start.rem_euclid(86_400) / 3600) as usize;
        sums[hour].0 += b.avg[column];
        sums[hour].1 += 1;
    }
    let (hour, mean) = sums
        .iter()
        .enumerate()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(h, (sum, n))| (h, sum / f64::from(*n)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
    Some(Finding {
        kind: "busiest_hour",
        severity: Severity::Info,
        message: format!(
            "busiest hour: {hour:02}:00-{:02}:00 UTC, {mean:.0} {label} on average",
            (hour + 1) % 24
        ),
    })
}

/// The remote IPs with the most live connections at their peak.
pub fn per_ip_peaks(peers: &[TopPeak]) -> Vec<Finding> {
    peers
        .iter()
        .map(|p| Finding {
            kind: "per_ip_peak",
            severity: Severity::Info,
            message: format!(
                "{} peaked at {} live connections ({} TIME_WAIT then) at {}",
                p.key,
                p.max,
                p.max2,
                time_text(p.at)
            ),
        })
        .collect()
}

/// One metric over this period and the one before.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub avg: Option<f64>,
    pub avg_before: Option<f64>,
    pub max: Option<i64>,
    pub max_before: Option<i64>,
    /// The mean's change, in percent of the period before (None when either is unknown
    /// or it was zero).
    pub change_pct: Option<f64>,
}

/// Mean (weighted by samples) and max of column `k` over buckets.
pub fn overall(buckets: &[Bucket], k: usize) -> (Option<f64>, Option<i64>) {
    let samples: i64 = buckets.iter().map(|b| b.samples).sum();
    if samples == 0 {
        return (None, None);
    }
    let avg = buckets
        .iter()
        .map(|b| b.avg[k] * b.samples as f64)
        .sum::<f64>()
        / samples as f64;
    (Some(avg), buckets.iter().map(|b| b.max[k]).max())
}

pub fn compare(labels: &[&str], now: &[Bucket], before: &[Bucket]) -> Vec<Comparison> {
    labels
        .iter()
        .enumerate()
        .map(|(k, label)| {
            let (avg, max) = overall(now, k);
            let (avg_before, max_before) = overall(before, k);
            let change_pct = match (avg, avg_before) {
                (Some(a), Some(b)) if b > 0.0 => Some((a - b) * 100.0 / b),
                _ => None,
            };
            Comparison {
                metric: (*label).to_owned(),
                avg,
                avg_before,
                max,
                max_before,
                change_pct,
            }
        })
        .collect()
}

/// A sparkline of `values` scaled between their min and max, one cell each.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    values
        .iter()
        .map(|v| {
            if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                return BARS[0];
            }
            let i = ((v - lo) / (hi - lo) * 7.0).round() as usize;
            BARS[i.min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start: i64, min: i64, avg: f64, max: i64) -> Bucket {
        Bucket {
            start,
            samples: 6,
            min: vec![min],
            avg: vec![avg],
            max: vec![max],
        }
    }

    #[test]
    fn slopes_are_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn time_wait_headroom_is_judged_against_the_port_range() {
        let b = vec![bucket(0, 0, 10.0, 100), bucket(3600, 0, 10.0, 20_000)];
        let f = time_wait_headroom(&b, 0, Some(28_232)).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.message.contains("20000 of 28232 ephemeral ports (70.8% used, 29.2% headroom) in the bucket from 1970-01-01 01:00"), "{}", f.message);
        let f = time_wait_headroom(&b, 0, None).unwrap();
        assert!(f.message.contains("not recorded"), "{}", f.message);
        assert!(time_wait_headroom(&[], 0, Some(1)).is_none());
    }

    #[test]
    fn a_steady_close_wait_leak_is_growth_and_names_its_holder() {
        // +5 an hour over ten hours.
        let b: Vec<Bucket> = (0..10)
            .map(|h| bucket(h * 3600, 0, 5.0 * h as f64, 5 * h))
            .collect();
        let leak = TopPeak {
            key: "on local port 8080".into(),
            max: 45,
            at: 9 * 3600,
            max2: 30_000,
            owners: "java".into(),
        };
        let f = close_wait_growth(&b, 0, &[leak]).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        assert!(
            f.message.starts_with("CLOSE_WAIT is growing +5.0/hour"),
            "{}",
            f.message
        );
        assert!(f.message.contains("held by java"), "{}", f.message);
        // Flat with noise: a trend, not growth.
        let flat: Vec<Bucket> = (0..10)
            .map(|h| bucket(h * 3600, 0, 20.0 + (h % 2) as f64, 21))
            .collect();
        assert_eq!(
            close_wait_growth(&flat, 0, &[]).unwrap().severity,
            Severity::Info
        );
    }

    #[test]
    fn the_busiest_hour_is_the_highest_mean_hour_of_day() {
        // Two days; 14:00 is busiest on both.
        let hourly: Vec<Bucket> = (0..48)
            .map(|h| {
                let v = if h % 24 == 14 {
                    900.0
                } else {
                    100.0 + h as f64
                };
                bucket(h * 3600, 0, v, v as i64)
            })
            .collect();
        let f = busiest_hour(&hourly, 0, "ESTABLISHED").unwrap();
        assert_eq!(
            f.message,
            "busiest hour: 14:00-15:00 UTC, 900 ESTABLISHED on average"
        );
    }

    #[test]
    fn periods_compare_by_weighted_means() {
        let now = vec![bucket(0, 0, 30.0, 40)];
        let before = vec![bucket(0, 0, 20.0, 25), bucket(60, 0, 20.0, 22)];
        let c = compare(&["ESTABLISHED"], &now, &before);
        assert_eq!(c[0].change_pct, Some(50.0));
        assert_eq!((c[0].max, c[0].max_before), (Some(40), Some(25)));
        assert_eq!(compare(&["x"], &now, &[])[0].change_pct, None);
    }

    #[test]
    fn sparklines_scale_between_min_and_max() {
        assert_eq!(sparkline(&[0.0, 7.0, 3.5]), "▁█▅");
        assert_eq!(sparkline(&[2.0, 2.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }
}
