//! Arbitrary bytes as an OTLP/protobuf request: indexing, rule evaluation over the encoded
//! spans and re-encoding for export must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use support::exercise_request;

fuzz_target!(|data: &[u8]| {
    exercise_request(bytes::Bytes::copy_from_slice(data));
});

mod support {
    include!("support.rs");
}
