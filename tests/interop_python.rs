//! The OpenTelemetry Python SDK, exporting with both its OTLP/gRPC and OTLP/HTTP exporters
//! through tailsift, gets every span to the backend intact and annotated — also over TLS with
//! a custom CA and an API key, the SDK configured through its standard environment variables.
//!
//! Needs `python3`; the pinned SDK (`tests/interop/requirements.txt`) is pip-installed on first
//! use if it does not import.

mod support;

use std::time::Duration;

use support::interop::{
    assert_keep_all_annotations, assert_spans_arrived, run_python_sender, PythonArgs,
};
use support::tls::TestCa;
use support::{write_file, RecordingBackend, TailsiftProcess, KEEP_ALL_RULES};

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
        tls_ca_file: None,
        headers: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_tls_with_an_api_key_arrives_as_the_keys_tenant_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server = ca.server_cert(&[]);
    let keys = write_file(
        dir.path(),
        "keys.toml",
        "[keys]\n\"py-secret-key\" = \"keyed-tenant\"\n",
    );
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        let c = c.replace(
            "sample_rate_attribute = \"SampleRate\"",
            "sample_rate_attribute = \"SampleRate\"\npass_through_headers = [\"x-honeycomb-team\"]",
        );
        format!(
            "{c}[receive.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [auth]\nkeys_file = \"{}\"\nheader = \"authorization\"\nrequire_key = true\n",
            server.cert_file.display(),
            server.key_file.display(),
            keys.display()
        )
    })
    .await;

    let mut run = run_python_sender(PythonArgs {
        grpc: proxy.grpc,
        http_url: format!("https://{}/v1/traces", proxy.http),
        // The resource claims another tenant: the key's tenant wins.
        tenant: "spoofed-tenant".to_string(),
        traces: 4,
        error: true,
        compression: "gzip",
        tls_ca_file: Some(ca.ca_file.clone()),
        headers: Some("authorization=Bearer%20py-secret-key,x-honeycomb-team=py-team".to_string()),
    })
    .await;
    assert_eq!(run.spans.len(), 16, "4 spans per trace");
    run.resource
        .insert("tenant.id".to_string(), serde_json::json!("keyed-tenant"));
    assert_spans_arrived(
        &backend,
        &run,
        Duration::from_secs(20),
        assert_keep_all_annotations,
    )
    .await;
    assert_eq!(backend.span_count(), run.spans.len());
    let seen = backend.header_values_by_tenant("x-honeycomb-team", "tenant.id");
    assert_eq!(
        seen,
        std::collections::BTreeMap::from([(
            "keyed-tenant".to_string(),
            std::collections::BTreeSet::from(["py-team".to_string()])
        )]),
        "every span arrives as the key's tenant with the SDK's pass-through header"
    );
    assert!(
        !proxy.log().contains("py-secret-key"),
        "the API key is never logged:\n{}",
        proxy.log()
    );
}
