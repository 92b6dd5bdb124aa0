//! The BPF ring buffer walker over a ring whose headers and positions are arbitrary (a
//! corrupt or hostile ring): it never reads outside the data area, never goes backwards,
//! and stops at a header claiming more than the ring holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmon::ebpf::ringbuf::walk;

fuzz_target!(|input: (u8, u32, u32, Vec<u8>)| {
    let (shift, consumer, ahead, bytes) = input;
    // A ring of 8 to 4096 bytes, mapped twice (as the kernel maps it).
    let size = 8usize << (shift % 10);
    let mut data = vec![0u8; 2 * size];
    for (i, b) in bytes.iter().take(size).enumerate() {
        data[i] = *b;
        data[i + size] = *b;
    }
    let consumer = u64::from(consumer);
    let producer = consumer + u64::from(ahead % (2 * size as u32 + 1));
    let mut last_end = 0;
    let walk = walk(
        data.len(),
        size as u64 - 1,
        consumer,
        producer,
        |at| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")),
        |start, len| {
            assert!(start + len <= data.len());
            last_end = last_end.max(start + len);
        },
    );
    assert!(walk.position >= consumer);
    assert!(walk.position <= producer + 2 * size as u64);
    assert!(last_end <= data.len());
});
