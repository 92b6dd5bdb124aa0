//! /proc/net/tcp{,6} text: every row decodes or is rejected with a reason, never a
//! panic; a decoded row formats back to text that decodes to the same socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmon::{
    host::proc_net::{format_line, parse, parse_line},
    model::Family,
};

fuzz_target!(|data: &[u8]| {
    for family in [Family::Ipv4, Family::Ipv6] {
        for (_, row) in parse(data, family) {
            if let Ok(socket) = row {
                let line = format_line(0, &socket);
                assert_eq!(parse_line(line.as_bytes(), family), Ok(socket));
            }
        }
    }
});
