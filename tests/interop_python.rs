//! The OpenTelemetry Python SDK, exporting with both its OTLP/gRPC and OTLP/HTTP exporters
//! through tailsift, gets every span to the backend intact and annotated.
//!
//! Needs `python3`; the pinned SDK (`tests/interop/requirements.txt`) is pip-installed on first
//! use if it does not import.

mod support;

use std::time::Duration;

use support::interop::{assert_spans_arrived, run_python_sender, PythonArgs};
use support::{RecordedSpan, RecordingBackend, TailsiftProcess, KEEP_ALL_RULES};

/// Every span must carry the keep-all rule's annotations, exactly once each.
fn assert_annotated(s: &RecordedSpan) {
    assert_eq!(
        s.attr_i64("SampleRate"),
        Some(1),
        "SampleRate of span {} ({})",
        s.span_id_hex(),
        s.span.name
    );
    assert_eq!(
        s.attr_count("SampleRate"),
        1,
        "SampleRate appears once on span {}",
        s.span_id_hex()
    );
    assert_eq!(
        s.attr_str("tailsift.rule"),
        Some("all"),
        "tailsift.rule of span {} ({})",
        s.span_id_hex(),
        s.span.name
    );
}

async fn python_sdk_through_proxy(compression: &'static str) {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;

    let run = run_python_sender(PythonArgs {
        grpc: proxy.grpc,
        http_url: format!("http://{}/v1/traces", proxy.http),
        tenant: "py-tenant".to_string(),
        traces: 6,
        error: true,
        compression,
    })
    .await;
    assert_eq!(run.trace_count, 6, "the Python driver made 6 traces");
    assert_eq!(run.spans.len(), 24, "4 spans per trace");

    assert_spans_arrived(&backend, &run, Duration::from_secs(20), assert_annotated).await;
    assert_eq!(
        backend.span_count(),
        run.spans.len(),
        "no extra spans reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_spans_pass_through_intact() {
    python_sdk_through_proxy("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_gzip_spans_pass_through_intact() {
    python_sdk_through_proxy("gzip").await;
}
