//! Rust OpenTelemetry SDK driver for interop tests: exports traces with `opentelemetry-otlp`'s
//! tonic (gRPC) exporter and reports what it produced.
//!
//! Not declared in `support/mod.rs` (it pulls in the SDK crates); include it with
//! `#[path = "support/rust_sdk.rs"] mod rust_sdk;` next to `mod support;`.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::{json, Map, Value};

use crate::support::interop::{ExpectedRun, ExpectedSpan};

/// Scope name of the spans made by [`export_with_rust_sdk`].
pub const RUST_SCOPE: &str = "tailsift.interop.rust";

/// Creates `traces` traces (root with `http.route`, two children, a grandchild; with `error` the
/// grandchild ends with status ERROR) under resource `service.name`=`interop-rust`, `tenant.id`=`tenant`,
/// exports them over OTLP/gRPC to `endpoint`, flushes, and returns what was produced.
/// Needs a multi-thread Tokio runtime (the exporter's channel runs on it while we block on flush).
pub async fn export_with_rust_sdk(
    endpoint: SocketAddr,
    tenant: &str,
    traces: usize,
    error: bool,
) -> ExpectedRun {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{endpoint}"))
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("build the OTLP gRPC span exporter");
    let resource = Resource::builder()
        .with_service_name("interop-rust")
        .with_attributes([
            KeyValue::new("tenant.id", tenant.to_string()),
            KeyValue::new("deployment.environment", "test"),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder(RUST_SCOPE)
            .with_version("1.0.0")
            .build(),
    );

    let mut spans = Vec::new();
    for i in 0..traces {
        let route = "/interop";
        let root = tracer
            .span_builder(format!("GET {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.route", route),
                KeyValue::new("trace.index", i as i64),
            ])
            .start(&tracer);
        let root_sc = root.span_context().clone();
        let root_cx = Context::new().with_span(root);

        let db = tracer
            .span_builder("db.query")
            .with_attributes([KeyValue::new("db.system", "sqlite")])
            .start_with_context(&tracer, &root_cx);
        let db_sc = db.span_context().clone();
        drop(db); // dropping ends the span

        let call = tracer
            .span_builder("call.downstream")
            .with_kind(SpanKind::Client)
            .start_with_context(&tracer, &root_cx);
        let call_sc = call.span_context().clone();
        let call_cx = root_cx.with_span(call);
        let mut inner = tracer.start_with_context("downstream.work", &call_cx);
        let inner_sc = inner.span_context().clone();
        if error {
            inner.set_status(Status::error("downstream failed"));
        }
        inner.end();
        call_cx.span().end();
        root_cx.span().end();

        let trace_id = root_sc.trace_id().to_string();
        let mk = |sc: &opentelemetry::trace::SpanContext,
                  parent: &str,
                  name: &str,
                  err: bool,
                  attrs: Map<String, Value>| ExpectedSpan {
            trace_id: trace_id.clone(),
            span_id: sc.span_id().to_string(),
            parent_span_id: parent.to_string(),
            name: name.to_string(),
            scope: RUST_SCOPE.to_string(),
            error: err,
            attributes: attrs,
        };
        let root_id = root_sc.span_id().to_string();
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        spans.push(mk(
            &root_sc,
            "",
            &format!("GET {route}"),
            false,
            obj(json!({"http.route": route, "trace.index": i})),
        ));
        spans.push(mk(
            &db_sc,
            &root_id,
            "db.query",
            false,
            obj(json!({"db.system": "sqlite"})),
        ));
        spans.push(mk(&call_sc, &root_id, "call.downstream", false, Map::new()));
        spans.push(mk(
            &inner_sc,
            &call_sc.span_id().to_string(),
            "downstream.work",
            error,
            Map::new(),
        ));
    }

    // force_flush/shutdown block until the batch thread has exported; keep them off the runtime's workers.
    let flushed = tokio::task::spawn_blocking(move || {
        let flush = provider.force_flush();
        let shutdown = provider.shutdown();
        (flush, shutdown)
    })
    .await
    .expect("flush task");
    if let Err(e) = flushed.0 {
        panic!("Rust SDK force_flush failed: {e:?}");
    }
    if let Err(e) = flushed.1 {
        panic!("Rust SDK shutdown failed: {e:?}");
    }

    let resource = json!({"service.name": "interop-rust", "tenant.id": tenant, "deployment.environment": "test"});
    ExpectedRun {
        spans,
        resource: resource.as_object().cloned().unwrap_or_default(),
        trace_count: traces,
    }
}
