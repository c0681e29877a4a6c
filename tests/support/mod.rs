//! Shared support for tailsift's integration tests.
//!
//! - [`backend`]: a real recording OTLP backend (gRPC + HTTP) that can be scripted to fail,
//!   to slow down, or to go down and come back on the same ports.
//! - [`process`]: runs the real `tailsift` binary on ephemeral loopback ports and parses the
//!   addresses it bound from its stderr.
//! - [`client`]: sends OTLP to the proxy over gRPC and HTTP (protobuf or JSON, optional gzip).
//! - [`dns`], [`redis`]: a loopback DNS server whose answers the test sets, and a real
//!   redis-server on a free port, for the membership providers.
//! - [`traces`]: deterministic trace builders and helpers to split traces over requests.
//! - [`interop`]: runs the Python SDK driver and checks SDK spans arrived intact; the Rust SDK
//!   driver is `rust_sdk.rs`, included only by the tests that need it.
//!
//! Each integration test binary uses only part of this module, hence the `dead_code` allow.
#![allow(dead_code, unused_imports)]
// Process and subprocess helpers poll from plain threads, never from async code.
#![allow(clippy::disallowed_methods)]

pub mod backend;
pub mod client;
pub mod cluster;
pub mod dns;
pub mod interop;
pub mod process;
pub mod redis;
pub mod tls;
pub mod traces;

pub use backend::{
    retry_info_delay, Failure, ReceivedLogs, ReceivedRequest, RecordedLog, RecordedSpan,
    RecordingBackend, Transport,
};
pub use client::{
    gzip, http_get, send_grpc, send_grpc_with, send_http, send_http_raw, send_http_with,
    to_otlp_json, HttpEncoding, HttpReply,
};
pub use process::{
    run_tailsift, run_tailsift_with_env, tailsift_bin, test_config, write_file, TailsiftProcess,
    KEEP_ALL_RULES,
};
pub use traces::{
    attr, attr_i64, attr_str, hex, kv_i64, kv_str, make_request, make_trace, span_count,
    span_id_for, split_root, split_spans, trace_id_from_seed,
};

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, InstrumentationScope, KeyValue,
};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use std::time::Duration;

/// Polls `check` every 10 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
