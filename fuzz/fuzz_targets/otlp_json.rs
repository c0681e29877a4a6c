//! Arbitrary bytes as an OTLP/JSON request: conversion, then the whole protobuf path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pb) = tailsift::otlp::json::json_to_protobuf(data) {
        support::exercise_request(pb);
    }
});

mod support {
    include!("support.rs");
}
