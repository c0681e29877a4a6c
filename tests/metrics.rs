//! OTLP metrics pass through tailsift unchanged, as an SDK with one
//! `OTEL_EXPORTER_OTLP_ENDPOINT` sees it: metrics sent over gRPC or HTTP to the real binary
//! arrive at the backend's metrics endpoint byte for byte, or in the metrics file; a full
//! metrics queue refuses with retryable codes; traces are unaffected.

mod support;

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use prost::Message;
use support::*;
use tonic::codec::CompressionEncoding;

const WAIT: Duration = Duration::from_secs(20);

/// A metrics request of `service` with 6 data points: a gauge (3), a sum (2), a histogram (1).
fn metrics_request(service: &str) -> ExportMetricsServiceRequest {
    let point = |i: u64| NumberDataPoint {
        attributes: vec![kv_str("host", &format!("h{i}"))],
        start_time_unix_nano: 1_700_000_000_000_000_000,
        time_unix_nano: 1_700_000_000_000_000_000 + i,
        value: Some(number_data_point::Value::AsInt(i as i64 * 7)),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "meter".into(),
                    ..Default::default()
                }),
                metrics: vec![
                    Metric {
                        name: "queue.depth".into(),
                        unit: "1".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: (0..3).map(point).collect(),
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "requests".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: (0..2).map(point).collect(),
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                count: 3,
                                sum: Some(12.5),
                                bucket_counts: vec![1, 2],
                                explicit_bounds: vec![5.0],
                                time_unix_nano: 1_700_000_000_000_000_001,
                                ..Default::default()
                            }],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Sends `req` to the proxy's gRPC `MetricsService/Export` (gzip-compressed, as SDKs do).
async fn send_metrics_grpc(
    addr: std::net::SocketAddr,
    req: ExportMetricsServiceRequest,
) -> Result<(), tonic::Status> {
    send_metrics_grpc_with(addr, req, &[]).await
}

/// Like [`send_metrics_grpc`], with request metadata (e.g. an API key).
async fn send_metrics_grpc_with(
    addr: std::net::SocketAddr,
    req: ExportMetricsServiceRequest,
    metadata: &[(&'static str, &'static str)],
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = MetricsServiceClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let mut request = tonic::Request::new(req);
    for (k, v) in metadata {
        request
            .metadata_mut()
            .insert(*k, tonic::metadata::MetadataValue::from_static(v));
    }
    client.export(request).await.map(|_| ())
}

/// POSTs `body` to the proxy's `/v1/metrics` with `content_type`.
async fn send_metrics_http(
    addr: std::net::SocketAddr,
    content_type: &str,
    body: Vec<u8>,
) -> HttpReply {
    send_http_raw(
        addr,
        "/v1/metrics",
        &[("content-type", content_type)],
        Bytes::from(body),
    )
    .await
}

/// The value of the unlabelled (or exactly labelled) sample `series` in `/metrics`.
async fn counter(proxy: &TailsiftProcess, series: &str) -> u64 {
    let text = http_get(proxy.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

async fn stop(mut proxy: TailsiftProcess) {
    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).await;
    assert!(status.success(), "exit {status:?}\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_grpc_and_http_reach_the_grpc_backend_unchanged_and_traces_still_flow() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;

    let over_grpc = metrics_request("grpc-app");
    let over_http = metrics_request("http-app");
    send_metrics_grpc(proxy.grpc, over_grpc.clone())
        .await
        .expect("gRPC MetricsService/Export accepted");
    let reply = send_metrics_http(
        proxy.http,
        "application/x-protobuf",
        over_http.encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // A trace sent alongside is still sampled and exported as before.
    let trace_id = trace_id_from_seed(4242);
    send_grpc(
        proxy.grpc,
        make_request(vec![make_trace(trace_id, "acme", 3, false, "/x")]),
    )
    .await
    .expect("trace accepted");

    let got = backend.wait_for_metrics(2, WAIT).await;
    assert_eq!(
        got.len(),
        2,
        "both metrics requests arrive:\n{}",
        proxy.log()
    );
    for sent in [&over_grpc, &over_http] {
        let arrived = got
            .iter()
            .find(|r| r.request == *sent)
            .expect("the request arrives as sent");
        assert_eq!(arrived.transport, Transport::Grpc);
        assert_eq!(
            arrived.raw,
            Bytes::from(sent.encode_to_vec()),
            "byte for byte"
        );
    }
    let spans = backend.wait_for_spans(3, WAIT).await;
    assert_eq!(spans.len(), 3);
    assert!(spans.iter().all(|s| s.trace_id_hex() == hex(&trace_id)));

    assert_eq!(
        counter(&proxy, "tailsift_metric_points_received_total").await,
        12
    );
    // Counted once the backend has answered.
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&proxy, "tailsift_metric_points_exported_total").await != 12 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "12 points counted exported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counter(
            &proxy,
            "tailsift_metric_points_dropped_total{reason=\"export_failed\"}"
        )
        .await,
        0
    );
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_metrics_are_forwarded_to_the_http_backends_v1_metrics_as_protobuf() {
    let backend = RecordingBackend::start().await;
    let http_url = backend.http_url();
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace("kind = \"otlp_grpc\"", "kind = \"otlp_http\"")
            .replace(&format!("http://{}", backend.grpc_addr()), &http_url)
    })
    .await;
    let sent = metrics_request("json-app");
    let json = serde_json::to_vec(&sent).expect("OTLP/JSON");
    let reply = send_metrics_http(proxy.http, "application/json", json).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent_pb = metrics_request("pb-app");
    let reply = send_metrics_http(
        proxy.http,
        "application/x-protobuf",
        sent_pb.encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let got = backend.wait_for_metrics(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", proxy.log());
    for want in [&sent, &sent_pb] {
        let arrived = got
            .iter()
            .find(|r| r.request == *want)
            .expect("arrives with the same content");
        assert_eq!(arrived.transport, Transport::HttpProtobuf);
        assert_eq!(arrived.raw, Bytes::from(want.encode_to_vec()));
    }
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_exporter_writes_metrics_as_otlp_json_lines_to_the_metrics_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traces_path = dir.path().join("kept.jsonl");
    let metrics_path = dir.path().join("metrics.jsonl");
    let backend_addr = "127.0.0.1:9".parse().expect("addr");
    let proxy = TailsiftProcess::start_with_rules_and(backend_addr, KEEP_ALL_RULES, |c| {
        c.replace(
            "kind = \"otlp_grpc\"",
            &format!(
                "kind = \"file\"\npath = \"{}\"\nmetrics_path = \"{}\"",
                traces_path.display(),
                metrics_path.display()
            ),
        )
    })
    .await;
    let sent = metrics_request("file-app");
    send_metrics_grpc(proxy.grpc, sent.clone())
        .await
        .expect("accepted");
    stop(proxy).await;

    let text = std::fs::read_to_string(&metrics_path).expect("metrics file written");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line per request:\n{text}");
    let written: ExportMetricsServiceRequest =
        serde_json::from_str(lines[0]).expect("a line is OTLP/JSON");
    assert_eq!(written, sent);
    let traces = std::fs::read_to_string(&traces_path).unwrap_or_default();
    assert!(
        !traces.contains("queue.depth"),
        "metrics stay out of the traces file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_metrics_queue_refuses_with_retryable_codes_and_delivers_once_the_backend_is_back() {
    let backend = RecordingBackend::start().await;
    backend.go_down().await;
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace(
            "sample_rate_attribute = \"SampleRate\"",
            "sample_rate_attribute = \"SampleRate\"\nmetrics_queue_max_bytes = \"100\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\nretry_max_elapsed = \"60s\"",
        )
    })
    .await;
    // The first request is taken even though it is larger than the queue (the queue is empty)
    // and waits, retried, while the backend is down.
    let first = metrics_request("first");
    send_metrics_grpc(proxy.grpc, first.clone())
        .await
        .expect("first request queued");
    let refused = send_metrics_grpc(proxy.grpc, metrics_request("second"))
        .await
        .expect_err("the full queue refuses");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let reply = send_metrics_http(
        proxy.http,
        "application/x-protobuf",
        metrics_request("third").encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains_key("retry-after"));

    backend.come_up().await;
    let got = backend.wait_for_metrics(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", proxy.log());
    assert_eq!(got[0].request, first);
    assert_eq!(
        counter(&proxy, "tailsift_metric_points_received_total").await,
        6
    );
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_known_api_key_when_auth_requires_one() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = write_file(dir.path(), "keys.toml", "[keys]\n\"key-for-a\" = \"a\"\n");
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        format!(
            "{c}[auth]\nkeys_file = \"{}\"\nheader = \"x-api-key\"\nrequire_key = true\n",
            keys.display()
        )
    })
    .await;
    let missing = send_metrics_grpc(proxy.grpc, metrics_request("no-key"))
        .await
        .expect_err("no key is refused");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let reply = send_http_raw(
        proxy.http,
        "/v1/metrics",
        &[
            ("content-type", "application/x-protobuf"),
            ("x-api-key", "guess"),
        ],
        Bytes::from(metrics_request("bad-key").encode_to_vec()),
    )
    .await;
    assert_eq!(reply.status, 401);

    let keyed = metrics_request("keyed");
    send_metrics_grpc_with(proxy.grpc, keyed.clone(), &[("x-api-key", "key-for-a")])
        .await
        .expect("a known key is accepted");
    let got = backend.wait_for_metrics(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request, keyed);
    backend
        .assert_span_count_stays(0, Duration::from_millis(200))
        .await;
    assert_eq!(
        backend.metrics_requests().len(),
        1,
        "refused requests never arrive"
    );
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_refused_by_the_backend_wait_in_the_spool_and_arrive_once_it_is_back() {
    let backend = RecordingBackend::start().await;
    backend.go_down().await;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace(
            "sample_rate_attribute = \"SampleRate\"",
            &format!(
                "sample_rate_attribute = \"SampleRate\"\nspool_dir = \"{}\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"",
                spool_dir.display()
            ),
        )
    })
    .await;
    let requests: Vec<_> = (0..3).map(|i| metrics_request(&format!("m{i}"))).collect();
    for r in &requests {
        send_metrics_grpc(proxy.grpc, r.clone())
            .await
            .expect("queued");
    }
    // With the backend down, each request goes to disk instead of waiting in memory.
    let metrics_spool = spool_dir.join("metrics");
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read_dir(&metrics_spool).map_or(0, |d| d.count()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "metrics not spooled:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backend.come_up().await;
    let mut got: Vec<_> = backend
        .wait_for_metrics(3, WAIT)
        .await
        .into_iter()
        .map(|m| m.request)
        .collect();
    assert_eq!(got.len(), 3, "{}", proxy.log());
    got.sort_by_key(|r| format!("{r:?}"));
    let mut want = requests.clone();
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, want, "each spooled request arrives once, unchanged");
    let deadline = std::time::Instant::now() + WAIT;
    while counter(&proxy, "tailsift_metric_points_exported_total").await < 18 {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_points_are_counted_per_tenant_as_received_and_delivered() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;
    let mut acme = metrics_request("acme-svc");
    acme.resource_metrics[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(kv_str("tenant.id", "acme"));
    send_metrics_grpc(proxy.grpc, acme).await.expect("accepted");
    // No tenant attribute: the tenant header names it.
    let reply = send_metrics_http_with_tenant(proxy.http, "globex", metrics_request("g")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    backend.wait_for_metrics(2, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list: serde_json::Value = serde_json::from_str(
            &http_get(proxy.admin, "/api/v1/tenants?window=all")
                .await
                .text(),
        )
        .expect("json");
        let row = |tenant: &str, field: &str| {
            list["tenants"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["tenant"] == tenant)
                .and_then(|t| t[field].as_u64())
                .unwrap_or(0)
        };
        let got = [
            row("acme", "metric_points_received"),
            row("acme", "metric_points_exported"),
            row("globex", "metric_points_received"),
            row("globex", "metric_points_exported"),
        ];
        if got == [6, 6, 6, 6] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per-tenant metric points {got:?}:\n{list:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(proxy).await;
}

async fn send_metrics_http_with_tenant(
    http: std::net::SocketAddr,
    tenant: &str,
    request: ExportMetricsServiceRequest,
) -> HttpReply {
    send_http_raw(
        http,
        "/v1/metrics",
        &[
            ("content-type", "application/x-protobuf"),
            ("x-tenant-id", tenant),
        ],
        Bytes::from(request.encode_to_vec()),
    )
    .await
}
