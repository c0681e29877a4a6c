//! The OpenTelemetry Python SDK, exporting with both its OTLP/gRPC and OTLP/HTTP exporters
//! through tailsift, gets every span to the backend intact and annotated.
//!
//! Needs `python3`; the pinned SDK (`tests/interop/requirements.txt`) is pip-installed on first
//! use if it does not import.

mod support;

use std::time::Duration;

use support::interop::{
    assert_keep_all_annotations, assert_spans_arrived, run_python_sender, PythonArgs,
};
use support::{RecordingBackend, TailsiftProcess, KEEP_ALL_RULES};

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

    assert_spans_arrived(
        &backend,
        &run,
        Duration::from_secs(20),
        assert_keep_all_annotations,
    )
    .await;
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
