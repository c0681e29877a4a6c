//! The receive side's protections, against the real binary and a recording backend on
//! 127.0.0.1: oversized attributes never cost a trace, API keys decide who may write and as
//! which tenant.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Reads one sample (name with labels, as printed) from the proxy's /metrics; 0 if absent.
async fn metric(proxy: &TailsiftProcess, name: &str) -> f64 {
    let text = http_get(proxy.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An error trace of 3 spans whose error span carries a 200 KiB `exception.stacktrace`.
fn error_trace_with_huge_stacktrace(seed: u64) -> (ResourceSpans, String) {
    let mut trace = make_trace(trace_id_from_seed(seed), "acme", 3, true, "/checkout");
    // A multi-byte character at every position makes a cut inside one visible.
    let stack = "at com.example.Checkout.pay(Checkout.java:42) é\n".repeat(4200);
    assert!(stack.len() > 200 << 10);
    let spans = &mut trace.scope_spans[0].spans;
    let error_span = spans.last_mut().expect("three spans");
    error_span
        .attributes
        .push(kv_str("exception.stacktrace", &stack));
    (trace, stack)
}

fn error_span(spans: &[RecordedSpan]) -> &RecordedSpan {
    spans
        .iter()
        .find(|s| s.span.status.as_ref().is_some_and(|st| st.code == 2))
        .expect("the error span arrived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_trace_with_a_200kib_stacktrace_arrives_whole_by_default() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;
    let (trace, stack) = error_trace_with_huge_stacktrace(1);
    let response = send_grpc(proxy.grpc, make_request(vec![trace]))
        .await
        .expect("accepted");
    assert!(response.partial_success.is_none(), "nothing refused");
    let spans = backend.wait_for_spans(3, WAIT).await;
    let error = error_span(&spans);
    assert_eq!(error.attr_str("exception.stacktrace"), Some(stack.as_str()));
    assert_eq!(error.attr_count("tailsift.truncated"), 0);
    assert_eq!(
        metric(&proxy, "tailsift_attributes_truncated_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_attribute_bytes_the_stacktrace_is_truncated_marked_and_its_trace_kept() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace(
            "max_request_bytes = \"4MiB\"",
            "max_request_bytes = \"4MiB\"\nmax_attribute_bytes = \"64KiB\"",
        )
    })
    .await;
    let (trace, stack) = error_trace_with_huge_stacktrace(2);
    let untouched = trace.scope_spans[0].spans[0].clone();
    send_http(
        proxy.http,
        &make_request(vec![trace]),
        HttpEncoding::Protobuf,
        false,
    )
    .await;
    let spans = backend.wait_for_spans(3, WAIT).await;
    let error = error_span(&spans);
    let kept = error.attr_str("exception.stacktrace").expect("value kept");
    assert!(
        kept.len() <= 64 << 10 && kept.len() > (64 << 10) - 4,
        "{}",
        kept.len()
    );
    assert!(
        stack.starts_with(kept),
        "a prefix of the original, cut at a character"
    );
    match attr(&error.span.attributes, "tailsift.truncated") {
        Some(any_value::Value::ArrayValue(keys)) => assert_eq!(
            keys.values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            vec!["exception.stacktrace"]
        ),
        other => panic!("tailsift.truncated must list the keys: {other:?}"),
    }
    let root = spans.iter().find(|s| s.is_root()).expect("root arrived");
    assert_eq!(root.span.name, untouched.name);
    assert_eq!(root.attr_count("tailsift.truncated"), 0);
    assert_eq!(
        metric(&proxy, "tailsift_attributes_truncated_total").await,
        1.0
    );
}

const KEYS: &str = "[keys]\n\"key-for-a\" = \"a\"\n";

/// The test config with `[auth]` reading `KEYS` from `header`, keys required; also returns
/// the keys file (in a directory that lives as long as the returned guard).
async fn proxy_with_keys(
    backend: &RecordingBackend,
    header: &str,
) -> (TailsiftProcess, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_file(dir.path(), "keys.toml", KEYS);
    let header = header.to_string();
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        format!(
            "{c}[auth]\nkeys_file = \"{}\"\nheader = \"{header}\"\nrequire_key = true\n",
            keys.display()
        )
    })
    .await;
    (proxy, keys, dir)
}

fn one_trace(seed: u64, resource_tenant: &str) -> ExportTraceServiceRequest {
    make_request(vec![make_trace(
        trace_id_from_seed(seed),
        resource_tenant,
        2,
        false,
        "/pay",
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unknown_keys_are_refused_counted_and_nothing_is_exported() {
    let backend = RecordingBackend::start().await;
    let (proxy, _keys, _dir) = proxy_with_keys(&backend, "x-api-key").await;
    let missing = send_grpc(proxy.grpc, one_trace(1, "a")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let unknown = send_grpc_with(
        proxy.grpc,
        one_trace(2, "a"),
        &[("x-api-key", "guess")],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
    let req = one_trace(3, "a");
    let http_missing = send_http(proxy.http, &req, HttpEncoding::Protobuf, false).await;
    assert_eq!(http_missing.status.as_u16(), 401);
    let http_unknown = send_http_with(
        proxy.http,
        &req,
        HttpEncoding::Json,
        false,
        &[("x-api-key", "Bearer guess")],
    )
    .await;
    assert_eq!(http_unknown.status.as_u16(), 401);
    assert_eq!(
        metric(&proxy, "tailsift_auth_refused_total{reason=\"missing\"}").await,
        2.0
    );
    assert_eq!(
        metric(&proxy, "tailsift_auth_refused_total{reason=\"unknown\"}").await,
        2.0
    );
    backend
        .assert_span_count_stays(0, Duration::from_secs(1))
        .await;
    assert!(!proxy.log().contains("guess"), "keys are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_tenant_a_writing_as_b_is_counted_and_exported_as_a_on_both_protocols() {
    let backend = RecordingBackend::start().await;
    let (proxy, _keys, _dir) = proxy_with_keys(&backend, "authorization").await;
    send_grpc_with(
        proxy.grpc,
        one_trace(10, "b"),
        &[("authorization", "Bearer key-for-a"), ("x-tenant-id", "b")],
        false,
    )
    .await
    .expect("a known key is accepted");
    let reply = send_http_with(
        proxy.http,
        &one_trace(11, "b"),
        HttpEncoding::Protobuf,
        false,
        &[("authorization", "key-for-a")],
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200);
    let spans = backend.wait_for_spans(4, WAIT).await;
    for s in &spans {
        assert_eq!(s.resource_attr_str("tenant.id"), Some("a"), "exported as a");
    }
    assert_eq!(
        metric(&proxy, "tailsift_auth_tenant_overridden_total").await,
        2.0
    );
    let start = tokio::time::Instant::now();
    while metric(&proxy, "tailsift_tenant_spans_exported_total{tenant=\"a\"}").await < 4.0 {
        assert!(
            start.elapsed() < WAIT,
            "the spans were not counted as tenant a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = http_get(proxy.admin, "/metrics").await.text();
    assert!(
        !text.contains("tenant=\"b\""),
        "tenant b is never counted:\n{text}"
    );
    assert!(!proxy.log().contains("key-for-a"), "keys are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_file_is_reread_on_reload_and_a_bad_file_keeps_the_old_keys() {
    let backend = RecordingBackend::start().await;
    let (proxy, keys, _dir) = proxy_with_keys(&backend, "authorization").await;
    std::fs::write(&keys, "[keys]\n\"key-for-a\" = 7\n").unwrap();
    let reload = send_http_raw(
        proxy.admin,
        "/api/v1/rules/reload",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert!(reload.status.is_success(), "{}", reload.text());
    proxy.wait_for_log("API keys reload failed", WAIT).await;
    send_grpc_with(
        proxy.grpc,
        one_trace(20, "a"),
        &[("authorization", "key-for-a")],
        false,
    )
    .await
    .expect("the old keys stay after a bad file");
    std::fs::write(&keys, "[keys]\n\"key-two\" = \"a\"\n").unwrap();
    proxy.sighup();
    proxy.wait_for_log("API keys reloaded", WAIT).await;
    let old = send_grpc_with(
        proxy.grpc,
        one_trace(21, "a"),
        &[("authorization", "key-for-a")],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(old.code(), tonic::Code::Unauthenticated);
    send_grpc_with(
        proxy.grpc,
        one_trace(22, "a"),
        &[("authorization", "key-two")],
        false,
    )
    .await
    .expect("the new key is accepted");
}
