//! tcpmon's kernel side: attach points only. Each program filters, fills one record and
//! commits it: state changes into this CPU's slot ring (see tcpmon_common::Slot), the
//! rarer SYN records into this CPU's ring buffer; every loss is counted in `COUNTERS`.
//!
//! The hot path matters (it runs on every TCP state change of the machine): records are
//! written field by field straight into their slots, with no zeroing pass, no lock and
//! no helper call that the record does not need.
#![no_std]
#![no_main]

mod failures;
mod maps;
mod netns;
mod state;
mod syn;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
