//! Durations as typed on the command line: parsed within bounds, or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmon::model::duration::{parse_duration, MAX, MIN};

fuzz_target!(|text: &str| {
    if let Ok(d) = parse_duration(text) {
        assert!((MIN..=MAX).contains(&d));
    }
});
