//! The OpenTelemetry Rust SDK's OTLP/gRPC exporter, pointed at tailsift, gets every span to the
//! backend intact and annotated.

#[path = "support/rust_sdk.rs"]
mod rust_sdk;
mod support;

use std::time::Duration;

use support::interop::{assert_keep_all_annotations, assert_spans_arrived};
use support::{RecordingBackend, TailsiftProcess, KEEP_ALL_RULES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_spans_pass_through_intact() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;

    let run = rust_sdk::export_with_rust_sdk(proxy.grpc, "rust-tenant", 5, true).await;
    assert_eq!(run.spans.len(), 20, "4 spans per trace");

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
