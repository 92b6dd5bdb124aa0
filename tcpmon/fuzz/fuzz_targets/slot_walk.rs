//! The slot-ring walker over arbitrary slots and positions: corrupt contents are refused,
//! never a panic, and the position it returns stays between the two it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmon::ebpf::slots::walk;
use tcpmon_common::Slot;

fuzz_target!(|input: (u8, u64, u16, u16, Vec<[u64; 6]>)| {
    let (shift, consumed, ahead, limit, words) = input;
    let len = 1usize << (shift % 8);
    let mut ring = vec![Slot::default(); len];
    for (slot, w) in ring.iter_mut().zip(words) {
        *slot = Slot(w);
    }
    let consumed = consumed >> 1;
    let produced = consumed + u64::from(ahead);
    let mut records = 0u64;
    match walk(
        len as u64 - 1,
        consumed,
        produced,
        u64::from(limit),
        |i| ring[i],
        |_| records += 1,
    ) {
        Ok(at) => {
            assert!(at >= consumed && at <= produced);
            assert!(records <= at - consumed);
        }
        Err(corrupt) => assert!(corrupt.at >= consumed),
    }
});
