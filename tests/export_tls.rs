//! Talking to hosted backends: the real binary exports over `https://` (gRPC and HTTP) to a
//! recording backend whose certificate comes from a CA made at run time, sends the static
//! `[export.headers]` (from the environment) and compresses what it sends; mTLS works with a
//! client certificate and fails visibly without one. Everything on 127.0.0.1.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::tls::TestCa;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// The variable the tests' `[export.headers]` reference, set only for the child process.
const KEY_VAR: &str = "TAILSIFT_TEST_EXPORT_KEY";
const KEY_VALUE: &str = "s3cret-team-key";

/// The standard test config exporting with `kind` to `backend` (its https URL when it speaks
/// TLS), with `extra` lines in `[export]` and an `[export.headers]` table carrying the key.
fn export_config(backend: &RecordingBackend, kind: &str, rules: &Path, extra: &str) -> String {
    let endpoint = match kind {
        "otlp_grpc" => backend.grpc_url(),
        _ => backend.http_url(),
    };
    let config = test_config(backend.grpc_addr(), rules)
        .replace("kind = \"otlp_grpc\"", &format!("kind = \"{kind}\""))
        .replace(
            &format!("endpoint = \"http://{}\"", backend.grpc_addr()),
            &format!("endpoint = \"{endpoint}\"\n{extra}"),
        );
    format!("{config}[export.headers]\n\"x-api-key\" = \"${{{KEY_VAR}}}\"\n")
}

async fn start_proxy(config: &str) -> TailsiftProcess {
    TailsiftProcess::start_with(&tailsift_bin(), config, &[(KEY_VAR, KEY_VALUE)]).await
}

/// Reads one sample (name with labels, as printed) from the proxy's /metrics; 0 if absent.
async fn metric(proxy: &TailsiftProcess, name: &str) -> f64 {
    let text = http_get(proxy.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn header<'a>(r: &'a ReceivedRequest, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Sends a 3-span trace through the proxy and waits until the backend has it.
async fn one_trace_arrives(proxy: &TailsiftProcess, backend: &RecordingBackend, seed: u64) {
    let trace = make_trace(trace_id_from_seed(seed), "acme", 3, false, "/checkout");
    send_grpc(proxy.grpc, make_request(vec![trace]))
        .await
        .expect("proxy accepts the trace");
    backend.wait_for_spans(3, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_export_sends_the_key_header_gzipped_by_default_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server = ca.server_cert(&[]);
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for (kind, encoding_header) in [
        ("otlp_grpc", "grpc-encoding"),
        ("otlp_http", "content-encoding"),
    ] {
        let backend = RecordingBackend::start_tls(ca.server_config(&server, false)).await;
        let extra = format!("tls_ca_file = \"{}\"", ca.ca_file.display());
        let proxy = start_proxy(&export_config(&backend, kind, &rules, &extra)).await;
        one_trace_arrives(&proxy, &backend, 1).await;
        for r in backend.requests() {
            assert_eq!(
                header(&r, "x-api-key"),
                KEY_VALUE,
                "{kind}: the static header"
            );
            assert_eq!(
                header(&r, encoding_header),
                "gzip",
                "{kind}: gzip by default"
            );
        }
        assert!(
            !proxy.log().contains(KEY_VALUE),
            "{kind}: header values are never logged:\n{}",
            proxy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compression_is_used_when_configured_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server = ca.server_cert(&[]);
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for (kind, encoding_header) in [
        ("otlp_grpc", "grpc-encoding"),
        ("otlp_http", "content-encoding"),
    ] {
        let backend = RecordingBackend::start_tls(ca.server_config(&server, false)).await;
        let extra = format!(
            "tls_ca_file = \"{}\"\ncompression = \"zstd\"",
            ca.ca_file.display()
        );
        let proxy = start_proxy(&export_config(&backend, kind, &rules, &extra)).await;
        one_trace_arrives(&proxy, &backend, 2).await;
        for r in backend.requests() {
            assert_eq!(header(&r, encoding_header), "zstd", "{kind}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_endpoints_stay_uncompressed_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let backend = RecordingBackend::start().await;
    let proxy = start_proxy(&export_config(&backend, "otlp_http", &rules, "")).await;
    one_trace_arrives(&proxy, &backend, 3).await;
    for r in backend.requests() {
        assert_eq!(header(&r, "content-encoding"), "");
        assert_eq!(header(&r, "x-api-key"), KEY_VALUE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_verifies_a_certificate_issued_for_another_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server = ca.server_cert_for(&["collector.internal"]);
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for kind in ["otlp_grpc", "otlp_http"] {
        let backend = RecordingBackend::start_tls(ca.server_config(&server, false)).await;
        let extra = format!(
            "tls_ca_file = \"{}\"\ntls_server_name = \"collector.internal\"",
            ca.ca_file.display()
        );
        let proxy = start_proxy(&export_config(&backend, kind, &rules, &extra)).await;
        one_trace_arrives(&proxy, &backend, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_backend_accepts_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server = ca.server_cert(&[]);
    let client = ca.client_cert("tailsift-client");
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for kind in ["otlp_grpc", "otlp_http"] {
        let backend = RecordingBackend::start_tls(ca.server_config(&server, true)).await;
        let extra = format!(
            "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            ca.ca_file.display(),
            client.cert_file.display(),
            client.key_file.display()
        );
        let proxy = start_proxy(&export_config(&backend, kind, &rules, &extra)).await;
        one_trace_arrives(&proxy, &backend, 5).await;
        assert_eq!(backend.tls_failures(), 0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_mtls_export_fails_and_is_counted_not_lost_silently() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server = ca.server_cert(&[]);
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for kind in ["otlp_grpc", "otlp_http"] {
        let backend = RecordingBackend::start_tls(ca.server_config(&server, true)).await;
        let extra = format!(
            "tls_ca_file = \"{}\"\nretry_initial = \"100ms\"\nretry_max = \"300ms\"\nretry_max_elapsed = \"2s\"",
            ca.ca_file.display()
        );
        let proxy = start_proxy(&export_config(&backend, kind, &rules, &extra)).await;
        let trace = make_trace(trace_id_from_seed(6), "acme", 3, false, "/pay");
        send_grpc(proxy.grpc, make_request(vec![trace]))
            .await
            .expect("proxy accepts the trace");
        let failed = "tailsift_spans_dropped_total{reason=\"export_failed\"}";
        let deadline = tokio::time::Instant::now() + WAIT;
        while metric(&proxy, failed).await < 3.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind}: the 3 undeliverable spans were not counted as export_failed; log:\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            metric(&proxy, "tailsift_export_retries_total").await > 0.0,
            "{kind}: a refused handshake is retried before giving up"
        );
        assert_eq!(backend.span_count(), 0, "{kind}");
        assert!(
            backend.tls_failures() > 0,
            "{kind}: the backend refused the handshake"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_certificate_from_an_untrusted_ca_is_refused_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new(&dir.path().join("trusted"));
    let untrusted = TestCa::new(&dir.path().join("untrusted"));
    let server = untrusted.server_cert(&[]);
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for kind in ["otlp_grpc", "otlp_http"] {
        let backend = RecordingBackend::start_tls(untrusted.server_config(&server, false)).await;
        let extra = format!("tls_ca_file = \"{}\"", trusted.ca_file.display());
        let proxy = start_proxy(&export_config(&backend, kind, &rules, &extra)).await;
        let trace = make_trace(trace_id_from_seed(8), "acme", 2, false, "/mitm");
        send_grpc(proxy.grpc, make_request(vec![trace]))
            .await
            .expect("proxy accepts the trace");
        proxy.wait_for_log("invalid peer certificate", WAIT).await;
        assert_eq!(backend.span_count(), 0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_header_variable_an_unreadable_ca_file_and_a_mismatched_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "tailsift.toml",
        "[export]\nkind = \"otlp_grpc\"\nendpoint = \"https://api.honeycomb.io:443\"\n\
         [export.headers]\n\"x-honeycomb-team\" = \"${TAILSIFT_TEST_UNSET_VARIABLE}\"\n",
    );
    let out = run_tailsift(
        &["check", "--config", &config.display().to_string()],
        Duration::from_secs(20),
    )
    .await;
    assert!(!out.status.success(), "check must fail: {}", out.stdout);
    assert!(
        out.stdout.contains("TAILSIFT_TEST_UNSET_VARIABLE"),
        "the message names the variable: {}",
        out.stdout
    );
    let config = write_file(
        dir.path(),
        "tailsift.toml",
        "[export]\nkind = \"otlp_http\"\nendpoint = \"https://api.honeycomb.io:443\"\n\
         tls_ca_file = \"/nonexistent/ca.pem\"\n",
    );
    let out = run_tailsift(
        &["check", "--config", &config.display().to_string()],
        Duration::from_secs(20),
    )
    .await;
    assert!(!out.status.success(), "check must fail: {}", out.stdout);
    assert!(out.stdout.contains("export.tls.ca_file"), "{}", out.stdout);
    let ca = TestCa::new(&dir.path().join("pki"));
    let (alice, bob) = (ca.client_cert("alice"), ca.client_cert("bob"));
    let config = write_file(
        dir.path(),
        "tailsift.toml",
        &format!(
            "[export]\nkind = \"otlp_grpc\"\nendpoint = \"https://127.0.0.1:4317\"\n\
             tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            alice.cert_file.display(),
            bob.key_file.display()
        ),
    );
    let out = run_tailsift(
        &["check", "--config", &config.display().to_string()],
        Duration::from_secs(20),
    )
    .await;
    assert!(!out.status.success(), "check must fail: {}", out.stdout);
    assert!(
        out.stdout
            .contains("is not the private key of export.tls.cert_file"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_accepts_zstd_compressed_http_within_the_size_limit() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;
    let request = make_request(vec![make_trace(
        trace_id_from_seed(7),
        "acme",
        4,
        false,
        "/zstd",
    )]);
    let body = zstd::bulk::compress(&prost::Message::encode_to_vec(&request), 3).unwrap();
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "zstd"),
    ];
    let reply = send_http_raw(proxy.http, "/v1/traces", &headers, Bytes::from(body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    backend.wait_for_spans(4, WAIT).await;
    // 5 MiB of zeros compresses to a few hundred bytes; decompressed it exceeds the 4 MiB limit.
    let bomb = zstd::bulk::compress(&vec![0u8; 5 << 20], 3).unwrap();
    let reply = send_http_raw(proxy.http, "/v1/traces", &headers, Bytes::from(bomb)).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_accepts_zstd_compressed_grpc() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to the proxy");
    let mut client =
        TraceServiceClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Zstd);
    let request = make_request(vec![make_trace(
        trace_id_from_seed(9),
        "acme",
        4,
        false,
        "/zstd-grpc",
    )]);
    client.export(request).await.expect("zstd gRPC accepted");
    backend.wait_for_spans(4, WAIT).await;
}

/// Two clients' API keys for the backend, sent by the clients in `x-honeycomb-team`.
const TEAM_A: &str = "team-a-key";
const TEAM_B: &str = "team-b-key";

/// Sends `traces` traces of each of two tenants to the proxy, tenant `alpha` with `TEAM_A`
/// and `beta` with `TEAM_B` in `X-Honeycomb-Team` (upper case: names match in any case), each
/// client alternating gRPC and HTTP and both interleaved, so their kept spans meet in the
/// same export batches. Every request also carries `x-api-key: client-key`.
async fn two_teams_send(proxy: &TailsiftProcess, traces: u64) -> usize {
    let mut spans = 0;
    for i in 0..traces {
        for (tenant, team, seed) in [("alpha", TEAM_A, 100 + i), ("beta", TEAM_B, 200 + i)] {
            let request = make_request(vec![make_trace(
                trace_id_from_seed(seed),
                tenant,
                3,
                false,
                "/checkout",
            )]);
            let headers = [("X-Honeycomb-Team", team), ("x-api-key", "client-key")];
            if i % 2 == 0 {
                send_grpc_with(proxy.grpc, request, &headers, false)
                    .await
                    .expect("proxy accepts over gRPC");
            } else {
                let reply = send_http_with(
                    proxy.http,
                    &request,
                    HttpEncoding::Protobuf,
                    false,
                    &headers,
                )
                .await;
                assert_eq!(
                    reply.status,
                    200,
                    "proxy accepts over HTTP: {}",
                    reply.text()
                );
            }
            spans += 3;
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clients_pass_through_header_is_sent_only_with_its_own_spans_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    for kind in ["otlp_grpc", "otlp_http"] {
        let backend = RecordingBackend::start().await;
        let extra = "pass_through_headers = [\"x-honeycomb-team\", \"X-API-Key\"]\nbatch_timeout = \"500ms\"";
        let proxy = start_proxy(&export_config(&backend, kind, &rules, extra)).await;
        let spans = two_teams_send(&proxy, 4).await;
        backend.wait_for_spans(spans, WAIT).await;

        let seen = backend.header_values_by_tenant("x-honeycomb-team", "tenant.id");
        let only = |v: &str| std::collections::BTreeSet::from([v.to_string()]);
        assert_eq!(seen.get("alpha"), Some(&only(TEAM_A)), "{kind}: {seen:?}");
        assert_eq!(seen.get("beta"), Some(&only(TEAM_B)), "{kind}: {seen:?}");
        assert_eq!(seen.len(), 2, "{kind}: no other tenant arrived: {seen:?}");
        for r in backend.requests() {
            // On a clash the static [export.headers] value wins, alone.
            let keys: Vec<_> = r.headers.get_all("x-api-key").iter().collect();
            assert_eq!(keys, [KEY_VALUE], "{kind}: the static header wins");
        }
        assert_eq!(backend.span_count(), spans, "{kind}: each span once");
        let log = proxy.log();
        for secret in [TEAM_A, TEAM_B, "client-key"] {
            assert!(!log.contains(secret), "{kind}: values never logged:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pass_through_headers_no_client_header_reaches_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let backend = RecordingBackend::start().await;
    let proxy = start_proxy(&export_config(&backend, "otlp_grpc", &rules, "")).await;
    let spans = two_teams_send(&proxy, 2).await;
    backend.wait_for_spans(spans, WAIT).await;
    let seen = backend.header_values_by_tenant("x-honeycomb-team", "tenant.id");
    let none = std::collections::BTreeSet::from([String::new()]);
    assert_eq!(seen.get("alpha"), Some(&none), "{seen:?}");
    assert_eq!(seen.get("beta"), Some(&none), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_pass_through_headers_the_exporter_sets_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "tailsift.toml",
        "[export]\nkind = \"otlp_grpc\"\nendpoint = \"http://127.0.0.1:4317\"\n\
         pass_through_headers = [\"content-type\", \"bad header\", \"x-honeycomb-team\"]\n",
    );
    let out = run_tailsift(
        &["check", "--config", &path.display().to_string()],
        Duration::from_secs(20),
    )
    .await;
    assert!(!out.status.success(), "check must fail:\n{}", out.stdout);
    assert!(
        out.stdout
            .contains("export.pass_through_headers: \"content-type\" is set by the transport"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("export.pass_through_headers: \"bad header\" is not a valid header name"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("export.pass_through_headers:").count(),
        2,
        "a valid name is no problem: {}",
        out.stdout
    );
}
