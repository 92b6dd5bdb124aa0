//! The NDJSON `transition` record: its schema (a serde type), and a writer that produces
//! the same bytes without serde at the rate the kernel reports transitions.
use std::{
    mem::MaybeUninit,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    host::clock::Clock,
    model::{Family, Origin, TcpState, Transition},
};

/// One NDJSON `transition` record. Field names are part of the interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    #[serde(rename = "type")]
    pub record_type: String,
    pub time: String,
    pub ts_ns: u64,
    pub origin: Origin,
    pub family: Family,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub old: TcpState,
    pub new: TcpState,
    /// Milliseconds spent in `old`, when tcpmon saw the socket enter it.
    pub ms_in_old: Option<f64>,
    /// Only in process context (connect, listen, close); never guessed from softirq.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub netns: u32,
    pub skaddr: String,
}

impl TransitionRecord {
    pub fn new(t: &Transition, clock: &Clock, micros_in_old: Option<u64>, origin: Origin) -> Self {
        Self {
            record_type: "transition".into(),
            time: humantime::format_rfc3339_micros(clock.wall(t.at.ts_ns)).to_string(),
            ts_ns: t.at.ts_ns,
            origin,
            family: t.at.family,
            local_ip: t.at.local_ip,
            local_port: t.at.local_port,
            remote_ip: t.at.remote_ip,
            remote_port: t.at.remote_port,
            old: t.old,
            new: t.new,
            ms_in_old: micros_in_old.map(|us| us as f64 / 1000.0),
            pid: t.task.map(|task| task.pid),
            comm: t.task.map(|task| task.comm()),
            netns: t.at.netns,
            skaddr: format!("{:#x}", t.at.skaddr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoints, Task};

    fn transition() -> Transition {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Transition {
            at: Endpoints {
                ts_ns: 5_000_000_000,
                skaddr: 0xffff_8881_0000_1000,
                netns: 4026531840,
                family: Family::Ipv6,
                local_ip: "::1".parse().unwrap(),
                local_port: 41000,
                remote_ip: "::1".parse().unwrap(),
                remote_port: 80,
            },
            old: TcpState::SynSent,
            new: TcpState::Established,
            task: Some(Task { pid: 4242, comm }),
        }
    }

    #[test]
    fn decimals_are_written_whole_and_padded() {
        for (n, width, text) in [
            (0, 1, "0"),
            (7, 1, "7"),
            (10, 1, "10"),
            (999, 1, "999"),
            (42, 6, "000042"),
            (5, 3, "005"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut buf = Vec::with_capacity(20);
            push_decimal(&mut buf, n, width);
            assert_eq!(buf, text.as_bytes(), "{n} width {width}");
        }
    }

    #[test]
    fn records_serialize_with_stable_names_and_read_back() {
        let clock = Clock::fixed(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            5_000_000_000,
        );
        let record = TransitionRecord::new(&transition(), &clock, Some(1500), Origin::Ebpf);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["type"], "transition");
        assert_eq!(json["time"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(json["old"], "SYN_SENT");
        assert_eq!(json["new"], "ESTABLISHED");
        assert_eq!(json["family"], "ipv6");
        assert_eq!(json["pid"], 4242);
        assert_eq!(json["comm"], "curl");
        assert_eq!(json["origin"], "ebpf");
        let back: TransitionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}

/// Writes transition records without serde or per-record allocation: at hundreds of
/// thousands of transitions a second the generic path (many small writes, a String per
/// field) was the consumer's largest cost, and after it the small variable-length copies
/// (a libc memcpy call each): numbers and addresses are written digit by digit into
/// reserved space instead. The output is byte-for-byte the same schema as
/// [`TransitionRecord`]; a test checks that it deserializes to the same value.
#[derive(Debug, Default)]
pub struct FastWriter {
    /// "YYYY-MM-DDTHH:MM:SS." for `second`, reused while the second does not change.
    prefix: [u8; 20],
    second: Option<u64>,
    ip_texts: [IpText; IP_TEXT_SLOTS],
    ip_scratch: Vec<u8>,
    /// The last namespace inode's digits: every record of a watch has the same.
    netns_text: Digits,
    /// ts_ns's digits above the last eight: they change every 100 ms.
    ts_high_text: Digits,
    /// The last task name and its JSON string (empty until the first): under churn it
    /// is the same few processes.
    comm_text: ([u8; 16], Vec<u8>),
    pub buf: Vec<u8>,
}

/// The decimal digits of one number, kept for the next record that has the same.
#[derive(Clone, Copy, Debug, Default)]
struct Digits {
    of: Option<u64>,
    len: usize,
    text: [u8; 20],
}

impl Digits {
    /// Appends the digits of `n` to `buf` (20 bytes reserved by the caller), computing
    /// them only when `n` differs from the last; a fixed-size copy, no memcpy call.
    fn push(&mut self, buf: &mut Vec<u8>, n: u64) {
        if self.of != Some(n) {
            let mut text = Vec::with_capacity(20);
            push_decimal(&mut text, n, 1);
            self.text[..text.len()].copy_from_slice(&text);
            self.len = text.len();
            self.of = Some(n);
        }
        push_padded(buf, &self.text, self.len);
    }
}

/// Appends the first `len` bytes of `text` by copying all `N` (reserved by the caller):
/// a fixed-size copy, with no memcpy call, then the length actually meant. (The array
/// is iterated by value: by reference the copy was not vectorised, +35 % on the writer.)
#[inline(always)]
fn push_padded<const N: usize>(buf: &mut Vec<u8>, text: &[u8; N], len: usize) {
    assert!(len <= N);
    let start = buf.len();
    for (dst, src) in buf.spare_capacity_mut()[..N].iter_mut().zip(*text) {
        dst.write(src);
    }
    // SAFETY: N bytes after `start` were written just above, and len <= N.
    unsafe { buf.set_len(start + len) };
}

/// The longest address text ("ffff:ffff:...": 39 bytes), rounded up.
const IP_TEXT_MAX: usize = 40;
const IP_TEXT_SLOTS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct IpText {
    ip: Option<IpAddr>,
    len: usize,
    text: [u8; IP_TEXT_MAX],
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            ip: None,
            len: 0,
            text: [0; IP_TEXT_MAX],
        }
    }
}

/// More than the longest record without a task name (two full IPv6 addresses and every
/// number at its widest); the task name is written through serde, which reserves.
const RECORD_RESERVE: usize = 512;

/// The eight decimal digits of `v` (below 10^8) as ASCII, the first in the lowest byte,
/// computed in a register: split into two lanes of four digits, then four of two, then
/// eight of one, each step one multiplication for all lanes. (Two digits per division,
/// each waiting on the last, drew a fifth of the JSON writer's samples on 15-digit
/// timestamps.)
#[inline(always)]
fn eight_digits(v: u32) -> u64 {
    debug_assert!(v < 100_000_000);
    let v = u64::from(v);
    let x = (v / 10_000) | ((v % 10_000) << 32);
    // x * 10486 >> 20 is x / 100 for x below 10^4; the lanes' products do not overlap.
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let x = hundreds | ((x - hundreds * 100) << 16);
    // x * 103 >> 10 is x / 10 for x below 100.
    let tens = ((x * 103) >> 10) & 0x000f_000f_000f_000f;
    let x = tens | ((x - tens * 10) << 8);
    x + 0x3030_3030_3030_3030
}

/// Writes 8 bytes at `at` of `spare`.
#[inline(always)]
fn put8(spare: &mut [MaybeUninit<u8>], at: usize, bytes: u64) {
    for (dst, src) in spare[at..at + 8].iter_mut().zip(bytes.to_le_bytes()) {
        dst.write(src);
    }
}

const E8: u64 = 100_000_000;

/// The number of decimal digits of `n`.
#[inline(always)]
fn digit_count(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Writes the last `digits` (1 to 8) of the eight digits of `v` at the start of `spare`
/// (8 bytes written).
#[inline(always)]
fn put_leading(spare: &mut [MaybeUninit<u8>], v: u32, digits: usize) {
    put8(spare, 0, eight_digits(v) >> (8 * (8 - digits)));
}

/// Appends the decimal digits of `n`, zero-padded to `width` (at most 8); the caller has
/// reserved 20 bytes, which may all be written to.
#[inline(always)]
fn push_decimal(buf: &mut Vec<u8>, n: u64, width: usize) {
    debug_assert!(width <= 8);
    let start = buf.len();
    let spare = &mut buf.spare_capacity_mut()[..20];
    let len = if n < E8 {
        let digits = digit_count(n).max(width);
        put_leading(spare, n as u32, digits);
        digits
    } else if n < E8 * E8 {
        let (high, low) = (n / E8, n % E8);
        let lead = digit_count(high);
        put_leading(spare, high as u32, lead);
        put8(spare, lead, eight_digits(low as u32));
        lead + 8
    } else {
        let (high, rest) = (n / (E8 * E8), n % (E8 * E8));
        let lead = digit_count(high);
        put_leading(spare, high as u32, lead);
        put8(spare, lead, eight_digits((rest / E8) as u32));
        put8(spare, lead + 8, eight_digits((rest % E8) as u32));
        lead + 16
    };
    // SAFETY: the `len` bytes after `start` were all written just above.
    unsafe { buf.set_len(start + len) };
}

/// A name padded to 16 bytes, and its length: copied whole, with no memcpy call.
const fn padded(name: &str) -> ([u8; 16], usize) {
    let bytes = name.as_bytes();
    let mut out = [0; 16];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    (out, bytes.len())
}

/// Each state's name, padded, by `TcpState::index`.
const STATE_NAMES: [([u8; 16], usize); 12] = {
    let mut names = [([0; 16], 0); 12];
    let mut i = 0;
    while i < 12 {
        names[i] = padded(TcpState::ALL[i].name());
        i += 1;
    }
    names
};

/// Appends a state's name (16 bytes reserved by the caller).
#[inline]
fn push_state(buf: &mut Vec<u8>, state: TcpState) {
    let (text, len) = &STATE_NAMES[state.index()];
    push_padded(buf, text, *len);
}

/// The 8 lower-case hex digits of `x`, computed in a register: byte i of the result is
/// the digit of nibble i, so `to_be_bytes` gives them in text order. (Building the text
/// byte pair by byte pair on the stack, then copying it out, stalled on store forwarding:
/// a fifth of the JSON writer's time.)
fn hex_digits(x: u32) -> u64 {
    let x = u64::from(x);
    // Spread the nibbles one per byte, least significant first.
    let x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    let x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    let x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // '0' + nibble, plus the gap to 'a' where the nibble is above 9.
    let above_nine = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    x + 0x3030_3030_3030_3030 + above_nine * u64::from(b'a' - b'0' - 10)
}

impl FastWriter {
    /// The record's wall time: sets `prefix` and returns the microseconds.
    fn time_prefix(&mut self, wall_ns: u64) -> u64 {
        let seconds = wall_ns / 1_000_000_000;
        if self.second != Some(seconds) {
            self.second = Some(seconds);
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix[..19].copy_from_slice(&text.as_bytes()[..19]);
            self.prefix[19] = b'.';
        }
        wall_ns % 1_000_000_000 / 1000
    }

    /// Appends the text of `ip`, from a small cache: the same few addresses (loopback,
    /// a service's own address, its busiest peers) come back record after record.
    fn push_ip(&mut self, ip: IpAddr) {
        let hash = match ip {
            IpAddr::V4(v4) => u32::from(v4).wrapping_mul(0x9E37_79B1),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                ((bits as u64) ^ (bits >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u32
            }
        };
        let slot = &mut self.ip_texts[(hash >> 28) as usize % IP_TEXT_SLOTS];
        if slot.ip != Some(ip) {
            // Formatted into a reused buffer: under many distinct peers this runs often.
            let text = &mut self.ip_scratch;
            text.clear();
            text.reserve(IP_TEXT_MAX);
            match ip {
                IpAddr::V4(v4) => {
                    let [a, b, c, d] = v4.octets();
                    push_decimal(text, a.into(), 1);
                    for octet in [b, c, d] {
                        text.push(b'.');
                        push_decimal(text, octet.into(), 1);
                    }
                }
                IpAddr::V6(v6) => {
                    use std::io::Write as _;
                    let _ = write!(text, "{v6}");
                }
            }
            slot.text[..text.len()].copy_from_slice(text);
            slot.len = text.len();
            slot.ip = Some(ip);
        }
        self.buf.reserve(IP_TEXT_MAX);
        push_padded(&mut self.buf, &slot.text, slot.len);
    }

    /// Appends `n` in lower-case hex without leading zeros.
    fn push_hex(&mut self, n: u64) {
        let high = hex_digits((n >> 32) as u32).to_be_bytes();
        let low = hex_digits(n as u32).to_be_bytes();
        let digits = ((64 - n.leading_zeros()).div_ceil(4).max(1)) as usize;
        if digits > 8 {
            // Kernel addresses: all 16 digits, or nearly.
            self.buf.extend_from_slice(&high[16 - digits..]);
            self.buf.extend_from_slice(&low);
        } else {
            self.buf.extend_from_slice(&low[8 - digits..]);
        }
    }

    /// Appends the task name as a JSON string, from the one-entry cache (the name is
    /// arbitrary bytes from the task, so serde escapes it).
    fn push_comm(&mut self, task: &crate::model::Task) {
        let (comm, text) = &mut self.comm_text;
        if text.is_empty() || *comm != task.comm {
            *comm = task.comm;
            text.clear();
            let _ = serde_json::to_writer(&mut *text, &task.comm());
        }
        self.buf.extend_from_slice(text);
    }

    /// Appends one NDJSON `transition` line to `self.buf`.
    pub fn json(
        &mut self,
        t: &Transition,
        clock: &Clock,
        micros_in_old: Option<u64>,
        origin: Origin,
    ) {
        let micros = self.time_prefix(clock.wall_ns(t.at.ts_ns));
        self.buf.reserve(RECORD_RESERVE);
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"type\":\"transition\",\"time\":\"");
        b.extend_from_slice(&self.prefix);
        push_decimal(b, micros, 6);
        b.extend_from_slice(b"Z\",\"ts_ns\":");
        let (high, low) = (t.at.ts_ns / E8, t.at.ts_ns % E8);
        if high == 0 {
            push_decimal(b, low, 1);
        } else {
            self.ts_high_text.push(b, high);
            push_padded(&mut self.buf, &eight_digits(low as u32).to_le_bytes(), 8);
        }
        let b = &mut self.buf;
        // Constant pieces, so their copies have a known length.
        b.extend_from_slice(match (origin, t.at.family) {
            (Origin::Ebpf, Family::Ipv4) => {
                b",\"origin\":\"ebpf\",\"family\":\"ipv4\",\"local_ip\":\"" as &[u8]
            }
            (Origin::Ebpf, Family::Ipv6) => {
                b",\"origin\":\"ebpf\",\"family\":\"ipv6\",\"local_ip\":\""
            }
            (Origin::Inferred, Family::Ipv4) => {
                b",\"origin\":\"inferred\",\"family\":\"ipv4\",\"local_ip\":\""
            }
            (Origin::Inferred, Family::Ipv6) => {
                b",\"origin\":\"inferred\",\"family\":\"ipv6\",\"local_ip\":\""
            }
        });
        self.push_ip(t.at.local_ip);
        let b = &mut self.buf;
        b.extend_from_slice(b"\",\"local_port\":");
        push_decimal(b, t.at.local_port.into(), 1);
        b.extend_from_slice(b",\"remote_ip\":\"");
        self.push_ip(t.at.remote_ip);
        let b = &mut self.buf;
        b.extend_from_slice(b"\",\"remote_port\":");
        push_decimal(b, t.at.remote_port.into(), 1);
        b.extend_from_slice(b",\"old\":\"");
        push_state(b, t.old);
        b.extend_from_slice(b"\",\"new\":\"");
        push_state(b, t.new);
        b.extend_from_slice(b"\",\"ms_in_old\":");
        match micros_in_old {
            // Printed from integers: float formatting was a visible cost at full rate.
            Some(micros) => {
                push_decimal(b, micros / 1000, 1);
                b.push(b'.');
                push_decimal(b, micros % 1000, 3);
            }
            None => b.extend_from_slice(b"null"),
        }
        match &t.task {
            Some(task) => {
                b.extend_from_slice(b",\"pid\":");
                push_decimal(b, task.pid.into(), 1);
                b.extend_from_slice(b",\"comm\":");
                self.push_comm(task);
            }
            None => b.extend_from_slice(b",\"pid\":null,\"comm\":null"),
        }
        self.buf.reserve(64);
        self.buf.extend_from_slice(b",\"netns\":");
        self.netns_text.push(&mut self.buf, t.at.netns.into());
        self.buf.extend_from_slice(b",\"skaddr\":\"0x");
        self.push_hex(t.at.skaddr);
        self.buf.extend_from_slice(b"\"}\n");
    }
}

#[cfg(test)]
mod fast_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{Endpoints, Task};

    #[test]
    fn hex_has_no_leading_zeros_and_every_digit() {
        for n in [
            0,
            1,
            0xf,
            0x10,
            0xabc,
            0xffff_ffff,
            0x1_0000_0000,
            0xffff_8881_04bf_4a00,
            u64::MAX,
        ] {
            let mut w = FastWriter::default();
            w.push_hex(n);
            assert_eq!(String::from_utf8(w.buf).unwrap(), format!("{n:x}"));
        }
    }

    proptest! {
        #[test]
        fn fast_json_equals_the_serde_record(
            ts in 0u64..u64::MAX / 4, sk in any::<u64>(), v6 in any::<bool>(), l in any::<[u8; 16]>(),
            r in any::<[u8; 16]>(), ports in any::<(u16, u16)>(), old in 1u8..=12, new in 1u8..=12,
            micros_in_old in proptest::option::of(0u32..10_000_000), task in proptest::option::of((any::<u32>(), any::<[u8; 16]>())),
            inferred in any::<bool>(),
        ) {
            let origin = if inferred { Origin::Inferred } else { Origin::Ebpf };
            let ip = |o: [u8; 16]| if v6 { IpAddr::from(o) } else { IpAddr::from([o[0], o[1], o[2], o[3]]) };
            let t = Transition {
                at: Endpoints {
                    ts_ns: ts,
                    skaddr: sk,
                    netns: 7,
                    family: if v6 { Family::Ipv6 } else { Family::Ipv4 },
                    local_ip: ip(l),
                    local_port: ports.0,
                    remote_ip: ip(r),
                    remote_port: ports.1,
                },
                old: TcpState::try_from(old).unwrap(),
                new: TcpState::try_from(new).unwrap(),
                task: task.map(|(pid, comm)| Task { pid, comm }),
            };
            let clock = Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000), 0);
            let micros = micros_in_old.map(u64::from);
            // The same writer for several records, so that cached address texts are
            // reused (and replaced) along the way.
            let mut swapped = t;
            swapped.at.local_ip = t.at.remote_ip;
            swapped.at.remote_ip = t.at.local_ip;
            // Cached namespace and task texts are replaced too.
            swapped.at.netns = 4_026_531_840;
            swapped.task = t.task.map(|task| Task { pid: task.pid, comm: *b"other\0\0\0\0\0\0\0\0\0\0\0" });
            let mut w = FastWriter::default();
            for t in [t, swapped, t] {
                w.buf.clear();
                w.json(&t, &clock, micros, origin);
                let fast: TransitionRecord = serde_json::from_slice(&w.buf).unwrap();
                let slow = TransitionRecord::new(&t, &clock, micros, origin);
                prop_assert_eq!(fast, slow);
                prop_assert_eq!(w.buf.iter().filter(|b| **b == b'\n').count(), 1);
            }
        }

        #[test]
        fn decimals_equal_std_formatting(n in any::<u64>(), shift in 0u32..64, width in 1usize..=8) {
            // Numbers of every length, not only the 20-digit ones most u64s have.
            let n = n >> shift;
            let mut buf = b"prefix".to_vec();
            buf.reserve(20);
            push_decimal(&mut buf, n, width);
            prop_assert_eq!(String::from_utf8(buf).unwrap(), format!("prefix{n:0width$}"));
        }
    }

    #[test]
    fn eight_digits_are_right_around_every_lane_boundary() {
        // Every value of one four-digit lane with the other at its ends, and both lanes'
        // two-digit halves through all their values.
        let lanes =
            (0..10_000).flat_map(|v| [v, v * 10_000, v * 10_000 + 9_999, 9_999 * 10_000 + v]);
        for v in lanes.chain([99_999_999]) {
            let text = eight_digits(v).to_le_bytes();
            assert_eq!(
                std::str::from_utf8(&text).unwrap(),
                format!("{v:08}"),
                "{v}"
            );
        }
    }
}
