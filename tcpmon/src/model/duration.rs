//! Durations as operators type them (`500ms`, `2s`, `1m`, `1h`, plain seconds), within
//! the bounds every timer of tcpmon accepts.
use std::time::Duration;

/// The shortest accepted: below it the timers would spin.
pub const MIN: Duration = Duration::from_millis(1);
/// The longest: ten years, far inside what a `Duration` or an `Instant` can hold.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `500ms`, `2s`, `1m`, `1h` or a plain number of seconds, from [`MIN`] to [`MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else if let Some(h) = text.strip_suffix('h') {
        (h, 3600.0)
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

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in ".{0,24}") {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!((MIN..=MAX).contains(&d));
            }
        }
    }
}
