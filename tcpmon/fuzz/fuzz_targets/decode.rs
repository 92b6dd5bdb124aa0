//! Ring records: any bytes decode or are refused; what decodes encodes back to a record
//! that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmon::ebpf::decode::{decode, encode_endpoints, encode_transition, Record};
use tcpmon_common::kind;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode(data) {
        let raw = match record {
            Record::Transition(t) => encode_transition(&t),
            Record::SynAckRetransmit(at) => encode_endpoints(&at, kind::SYNACK_RETRANSMIT),
            Record::SynRequest(at) => encode_endpoints(&at, kind::SYN_REQUEST),
        };
        assert_eq!(decode(raw.as_bytes()), Ok(record));
    }
});
