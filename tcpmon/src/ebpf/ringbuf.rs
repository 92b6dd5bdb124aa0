//! A BPF ring buffer reader that reads in batches.
//!
//! aya's `RingBuf` publishes the consumer position after every record. The kernel reads
//! that position on every reservation, so under load each record moved its cache line
//! from the reading CPU back to the writing one. This reader walks every committed
//! record first and publishes the position once per pass. The memory layout is the
//! kernel's (kernel/bpf/ringbuf.c): a writable page holding the consumer position, then
//! a read-only page holding the producer position, then the data pages mapped twice in
//! a row so that a record crossing the end reads contiguously.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_BYTES: usize = 8;

/// What one pass over the ring found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Consumer position after the pass.
    pub position: u64,
    pub records: usize,
    /// A header claimed more bytes than the ring holds: reading stopped there.
    pub corrupt: bool,
}

/// Walks the records between `consumer` and `producer` in a data area of `data_len`
/// bytes (the ring mapped twice: `2 * (mask + 1)`), handing the payload of each
/// committed, non-discarded record to `each` as (offset, length) inside the data area;
/// stops at the first record still being written. `header` reads the 4-byte header at an
/// offset (atomically, in the real ring). Offsets and lengths are checked against
/// `data_len` before `each` sees them: a header claiming more marks the ring corrupt.
pub fn walk(
    data_len: usize,
    mask: u64,
    consumer: u64,
    producer: u64,
    header: impl Fn(usize) -> u32,
    mut each: impl FnMut(usize, usize),
) -> Walk {
    let mut walk = Walk {
        position: consumer,
        ..Walk::default()
    };
    while walk.position < producer {
        let offset = (walk.position & mask) as usize;
        if offset + HEADER_BYTES > data_len {
            walk.corrupt = true;
            break;
        }
        let head = header(offset);
        if head & BUSY_BIT != 0 {
            break;
        }
        let len = (head & !(BUSY_BIT | DISCARD_BIT)) as usize;
        let start = offset + HEADER_BYTES;
        if start + len > data_len {
            walk.corrupt = true;
            break;
        }
        if head & DISCARD_BIT == 0 {
            each(start, len);
            walk.records += 1;
        }
        walk.position += (HEADER_BYTES + len).next_multiple_of(8) as u64;
    }
    walk
}

/// One mapped ring buffer map. Its fd keeps the map alive.
pub struct RingReader {
    fd: OwnedFd,
    consumer: NonNull<u8>,
    producer: NonNull<u8>,
    page: usize,
    size: usize,
    /// Our position: published to the kernel at the end of each pass.
    position: u64,
}

// SAFETY: the mappings are owned by this value and only touched through &mut self (or
// atomics for the shared positions).
unsafe impl Send for RingReader {}

/// A fresh shared mapping of a BPF map fd (a ring buffer, or an mmapable array).
pub(crate) fn mmap_shared(
    fd: i32,
    len: usize,
    prot: i32,
    offset: usize,
) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh shared mapping of a map fd; the kernel checks the offset, length
    // and protection against the map.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl RingReader {
    /// Maps the ring buffer map behind `fd`, of `size` data bytes (its max_entries).
    pub fn new(fd: OwnedFd, size: usize, page: usize) -> io::Result<Self> {
        if !size.is_power_of_two() || size < page {
            return Err(io::Error::other(format!("ring of {size} bytes")));
        }
        let raw = fd.as_raw_fd();
        let consumer = mmap_shared(raw, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap_shared(raw, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the consumer page was mapped just above with this length.
                unsafe { libc::munmap(consumer.as_ptr().cast(), page) };
                return Err(e);
            }
        };
        // SAFETY: the consumer page starts with the kernel's consumer position, a u64.
        let position = unsafe { (*consumer.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire) };
        Ok(Self {
            fd,
            consumer,
            producer,
            page,
            size,
            position,
        })
    }

    /// The map's fd (it polls readable when the kernel wakes the reader).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Hands every committed record to `each`, then tells the kernel they are consumed.
    pub fn read(&mut self, mut each: impl FnMut(&[u8])) -> Walk {
        let base = self.producer.as_ptr();
        // SAFETY: the producer page starts with the kernel's producer position, a u64.
        let producer = unsafe { (*base.cast::<AtomicU64>()).load(Ordering::Acquire) };
        // The data area is written by the kernel while we read it, so no slice spans it:
        // only a record whose header said "committed" (an Acquire load) becomes a slice,
        // and the kernel leaves that record alone until the consumer position passes it.
        // SAFETY: the data pages follow the producer page, `2 * size` bytes mapped for as
        // long as self lives.
        let data = unsafe { base.add(self.page) };
        let walk = walk(
            2 * self.size,
            self.size as u64 - 1,
            self.position,
            producer,
            // SAFETY: `walk` checked the offset is inside the data area; record headers
            // are 8-aligned u32s, committed by the kernel with a release store.
            |offset| unsafe { (*data.add(offset).cast::<AtomicU32>()).load(Ordering::Acquire) },
            // SAFETY: `walk` checked the payload lies inside the data area, and its
            // header (loaded with Acquire) said it is committed and not to be rewritten
            // before we publish a consumer position past it.
            |start, len| each(unsafe { std::slice::from_raw_parts(data.add(start), len) }),
        );
        if walk.position != self.position {
            self.position = walk.position;
            // SAFETY: the consumer position, a u64 at the start of the consumer page.
            unsafe {
                (*self.consumer.as_ptr().cast::<AtomicU64>())
                    .store(walk.position, Ordering::Release)
            };
        }
        walk
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: both mappings were made in new() with these lengths.
        unsafe {
            libc::munmap(self.consumer.as_ptr().cast(), self.page);
            libc::munmap(self.producer.as_ptr().cast(), self.page + 2 * self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake data area of `size` bytes (mapped twice), written as the kernel would.
    struct Fake {
        data: Vec<u8>,
        size: usize,
        producer: u64,
    }

    impl Fake {
        fn new(size: usize) -> Self {
            Self {
                data: vec![0; 2 * size],
                size,
                producer: 0,
            }
        }

        fn put(&mut self, payload: &[u8], flags: u32) {
            let mut record = Vec::new();
            record.extend_from_slice(&(payload.len() as u32 | flags).to_le_bytes());
            record.extend_from_slice(&[0; 4]);
            record.extend_from_slice(payload);
            record.resize(record.len().next_multiple_of(8), 0);
            for (i, b) in record.iter().enumerate() {
                let at = (self.producer as usize + i) % self.size;
                // Both copies of the double mapping.
                self.data[at] = *b;
                self.data[at + self.size] = *b;
            }
            self.producer += record.len() as u64;
        }

        fn walk(&self, from: u64) -> (Walk, Vec<Vec<u8>>) {
            let mut seen = Vec::new();
            let data = &self.data;
            let walk = walk(
                data.len(),
                self.size as u64 - 1,
                from,
                self.producer,
                |at| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()),
                |start, len| seen.push(data[start..start + len].to_vec()),
            );
            (walk, seen)
        }
    }

    #[test]
    fn reads_committed_skips_discarded_and_stops_at_busy() {
        let mut ring = Fake::new(128);
        ring.put(b"one", 0);
        ring.put(b"gone", DISCARD_BIT);
        ring.put(b"three", 0);
        ring.put(b"busy", BUSY_BIT);
        ring.put(b"after", 0);
        let (walk, seen) = ring.walk(0);
        assert_eq!(seen, [b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(walk.records, 2);
        // Three records of 8 + 8 bytes each: the busy one is where the next pass starts.
        assert_eq!(walk.position, 48);
        assert!(!walk.corrupt);
    }

    #[test]
    fn a_record_across_the_end_reads_whole() {
        let mut ring = Fake::new(32);
        ring.put(&[1; 16], 0); // 24 bytes
        let (first, _) = ring.walk(0);
        ring.put(&[7; 12], 0); // starts at 24, wraps
        let (walk, seen) = ring.walk(first.position);
        assert_eq!(seen, [vec![7; 12]]);
        assert_eq!(walk.position, 24 + 24);
    }

    #[test]
    fn a_header_claiming_too_much_stops_the_walk() {
        let mut ring = Fake::new(32);
        ring.put(b"ok", 0);
        ring.data[16..20].copy_from_slice(&1000u32.to_le_bytes());
        ring.producer += 8;
        let (walk, seen) = ring.walk(0);
        assert_eq!(seen.len(), 1);
        assert!(walk.corrupt);
        assert_eq!(walk.position, 16);
    }
}
