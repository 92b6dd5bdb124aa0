//! Durations as operators type them (`500ms`, `2s`, `1m`, `1h`, plain seconds), within
//! the bounds every timer of tcpmon accepts.
use std::time::Duration;

/// The shortest accepted: below it the timers would spin.
pub const MIN: Duration = Duration::from_millis(1);
/// The longest: ten years, far inside what a `Duration` or an `Instant` can hold.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `500ms`, `2s`, `1m`, `1h`, `1d`, `1w` or a plain number of seconds, from [`MIN`]
/// to [`MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else if let Some(h) = text.strip_suffix('h') {
        (h, 3600.0)
    } else if let Some(d) = text.strip_suffix('d') {
        (d, 86_400.0)
    } else if let Some(w) = text.strip_suffix('w') {
        (w, 7.0 * 86_400.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let seconds = value * scale;
    if !(seconds.is_finite() && seconds >= MIN.as_secs_f64() && seconds <= MAX.as_secs_f64()) {
        return Err(format!(
            "'{text}' is outside 1ms..10 years (e.g. 500ms, 2s, 1m)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A moment as typed: a time (`2026-12-07 08:00`, RFC 3339, UTC unless it says) or a
/// duration before now (`24h`: a day ago; `now`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    Ago(Duration),
    At(std::time::SystemTime),
}

impl Moment {
    pub fn resolve(self, now: std::time::SystemTime) -> std::time::SystemTime {
        match self {
            Self::Ago(d) => now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
            Self::At(t) => t,
        }
    }
}

pub fn parse_moment(text: &str) -> Result<Moment, String> {
    if text == "now" {
        return Ok(Moment::Ago(Duration::ZERO));
    }
    if let Ok(d) = parse_duration(text) {
        return Ok(Moment::Ago(d));
    }
    // "2026-12-07 08:00" and "2026-12-07": completed to seconds.
    let completed = match text.len() {
        10 => format!("{text} 00:00:00"),
        16 => format!("{text}:00"),
        _ => text.to_owned(),
    };
    humantime::parse_rfc3339_weak(&completed)
        .map(Moment::At)
        .map_err(|_| {
            format!(
                "'{text}' is neither a time (2026-12-07 08:00, UTC) nor a duration ago (24h, 7d)"
            )
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn durations_parse_within_bounds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in [
            "1e-10s",
            "0.0000000001",
            "1e-12",
            "1e300",
            "1.8e19",
            "NaN",
            "inf",
            "-1s",
            "0",
            "",
            "ms",
            "abc",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn moments_are_times_or_durations_ago() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_moment("1h").unwrap().resolve(now),
            now - Duration::from_secs(3600)
        );
        assert_eq!(parse_moment("now").unwrap().resolve(now), now);
        let at = |t: &str| {
            parse_moment(t)
                .unwrap()
                .resolve(now)
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at("1970-01-02"), 86_400);
        assert_eq!(at("1970-01-02 01:00"), 90_000);
        assert_eq!(at("1970-01-02T01:00:05Z"), 90_005);
        assert!(parse_moment("yesterday").is_err());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in ".{0,24}") {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!((MIN..=MAX).contains(&d));
            }
        }
    }
}
