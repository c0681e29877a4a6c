//! OTLP logs as a user of tailsift sees them: a log record with a trace id follows its trace's
//! sampling decision (kept with the trace's SampleRate and rule, or dropped and counted), a
//! record without one passes through unchanged (or 1 in `[logs] untraced_sample_rate`), and
//! the counts on `/metrics` add up to what was sent and what the backend received.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use support::cluster::{free_ports, start_nodes, static_section};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Keeps every trace of tenant `acme` under rule `acme`; drops every other trace.
const ACME_ONLY_RULES: &str = "[[rule]]\nname = \"acme\"\nif = 'tenant = \"acme\"'\nsample_rate = 1\n\n[[rule]]\nname = \"others\"\ndrop = true\n";

/// A log record with `body`, severity INFO (9), and the given trace id (empty: none).
fn log_record(trace_id: &[u8], body: &str, seq: i64) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000 + seq as u64,
        observed_time_unix_nano: 1_700_000_000_000_000_000 + seq as u64,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        attributes: vec![kv_i64("seq", seq)],
        trace_id: trace_id.to_vec(),
        span_id: if trace_id.is_empty() {
            Vec::new()
        } else {
            vec![1; 8]
        },
        flags: 1,
        ..Default::default()
    }
}

/// A logs request of tenant `tenant` holding `records`.
fn logs_request(tenant: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv_str("service.name", "log-app"),
                    kv_str("tenant.id", tenant),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "logger".into(),
                    ..Default::default()
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Sends `req` over OTLP/gRPC `LogsService/Export`.
async fn send_logs_grpc(
    addr: SocketAddr,
    req: ExportLogsServiceRequest,
) -> Result<ExportLogsServiceResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = LogsServiceClient::new(channel);
    client.export(req).await.map(|r| r.into_inner())
}

/// POSTs `body` to the proxy's `/v1/logs` with the given headers.
async fn send_logs_http(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> HttpReply {
    send_http_raw(addr, "/v1/logs", headers, Bytes::from(body)).await
}

/// The value of the sample `series` (name with its labels, exactly as printed) in `/metrics`.
async fn counter(proxy: &TailsiftProcess, series: &str) -> u64 {
    let text = http_get(proxy.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

/// Waits until `series` reads `want` in `/metrics`; panics with the last value otherwise.
async fn wait_counter(proxy: &TailsiftProcess, series: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = counter(proxy, series).await;
        if got == want {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{series} = {got}, want {want}\n{}", proxy.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(mut proxy: TailsiftProcess) {
    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).await;
    assert!(status.success(), "exit {status:?}\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_kept_traces_arrive_with_the_traces_sample_rate_and_rule_and_logs_of_dropped_traces_never_do(
) {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), ACME_ONLY_RULES).await;

    let kept: Vec<[u8; 16]> = (0..4).map(|i| trace_id_from_seed(100 + i)).collect();
    let dropped: Vec<[u8; 16]> = (0..3).map(|i| trace_id_from_seed(200 + i)).collect();
    // Logs first, then their traces: the records wait in the buffer beside the spans.
    let mut seq = 0;
    let mut records = |tenant: &str, ids: &[[u8; 16]]| {
        let mut out = Vec::new();
        for id in ids {
            for _ in 0..2 {
                out.push(log_record(id, &format!("{tenant} log {seq}"), seq));
                seq += 1;
            }
        }
        out
    };
    let acme_logs = records("acme", &kept);
    let other_logs = records("globex", &dropped);
    send_logs_grpc(proxy.grpc, logs_request("acme", acme_logs.clone()))
        .await
        .expect("acme logs accepted");
    let reply = send_logs_http(
        proxy.http,
        &[("content-type", "application/x-protobuf")],
        logs_request("globex", other_logs.clone()).encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let traces = kept
        .iter()
        .map(|id| make_trace(*id, "acme", 2, false, "/kept"))
        .chain(
            dropped
                .iter()
                .map(|id| make_trace(*id, "globex", 2, false, "/dropped")),
        )
        .collect();
    send_grpc(proxy.grpc, make_request(traces))
        .await
        .expect("traces accepted");

    let got = backend.wait_for_log_records(acme_logs.len(), WAIT).await;
    backend.wait_for_spans(kept.len() * 2, WAIT).await;
    wait_counter(&proxy, "tailsift_log_records_exported_total", 8).await;
    assert_eq!(
        got.len(),
        acme_logs.len(),
        "only acme's logs arrive: {got:#?}"
    );
    let kept_hex: Vec<String> = kept.iter().map(|id| hex(id)).collect();
    for log in &got {
        assert!(
            kept_hex.contains(&log.trace_id_hex()),
            "a log of a dropped trace arrived: {log:?}"
        );
        assert_eq!(log.attr_i64("SampleRate"), Some(1), "{log:?}");
        assert_eq!(log.attr_str("tailsift.rule"), Some("acme"), "{log:?}");
        assert_eq!(log.resource_attr_str("tenant.id"), Some("acme"));
        let sent = acme_logs
            .iter()
            .find(|r| r.attributes[0] == log.record.attributes[0])
            .expect("a record that was sent");
        assert_eq!(
            log.body_str(),
            sent.body.as_ref().and_then(|b| match &b.value {
                Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
        );
    }

    let received = counter(&proxy, "tailsift_log_records_received_total").await;
    let kept_n = counter(&proxy, "tailsift_log_records_kept_total").await;
    let exported = counter(&proxy, "tailsift_log_records_exported_total").await;
    let dropped_n = counter(
        &proxy,
        "tailsift_log_records_dropped_total{reason=\"rule\"}",
    )
    .await;
    assert_eq!(received, 14, "every record sent is counted as received");
    assert_eq!(kept_n, 8);
    assert_eq!(dropped_n, 6, "the logs of globex's dropped traces");
    assert_eq!(received, kept_n + dropped_n);
    assert_eq!(exported, backend.log_records().len() as u64);
    // Per tenant: acme's logs were kept and exported, globex's dropped.
    for (series, want) in [
        (
            "tailsift_tenant_log_records_received_total{tenant=\"acme\"}",
            8,
        ),
        ("tailsift_tenant_log_records_kept_total{tenant=\"acme\"}", 8),
        (
            "tailsift_tenant_log_records_exported_total{tenant=\"acme\"}",
            8,
        ),
        (
            "tailsift_tenant_log_records_received_total{tenant=\"globex\"}",
            6,
        ),
        (
            "tailsift_tenant_log_records_dropped_total{tenant=\"globex\"}",
            6,
        ),
    ] {
        wait_counter(&proxy, series, want).await;
    }
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_logs_follow_the_decision_already_made_for_their_trace() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), ACME_ONLY_RULES).await;
    let kept = trace_id_from_seed(301);
    let dropped = trace_id_from_seed(302);
    send_grpc(
        proxy.grpc,
        make_request(vec![
            make_trace(kept, "acme", 2, false, "/kept"),
            make_trace(dropped, "globex", 2, false, "/dropped"),
        ]),
    )
    .await
    .expect("traces accepted");
    backend.wait_for_spans(2, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&proxy, "tailsift_traces_decided_total").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    send_logs_grpc(
        proxy.grpc,
        logs_request(
            "acme",
            vec![
                log_record(&kept, "late and kept", 1),
                log_record(&dropped, "late and dropped", 2),
            ],
        ),
    )
    .await
    .expect("late logs accepted");

    let got = backend.wait_for_log_records(1, WAIT).await;
    wait_counter(&proxy, "tailsift_log_records_late_total", 2).await;
    wait_counter(
        &proxy,
        "tailsift_log_records_dropped_total{reason=\"rule\"}",
        1,
    )
    .await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].trace_id_hex(), hex(&kept));
    assert_eq!(got[0].body_str(), Some("late and kept"));
    assert_eq!(got[0].attr_i64("SampleRate"), Some(1));
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_without_a_trace_id_pass_through_unchanged() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;
    let records = vec![
        log_record(&[], "no trace id", 1),
        log_record(&[0; 16], "all-zero trace id", 2),
    ];
    send_logs_grpc(proxy.grpc, logs_request("acme", records.clone()))
        .await
        .expect("accepted");
    let got = backend.wait_for_log_records(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", proxy.log());
    for sent in &records {
        let arrived = got
            .iter()
            .find(|l| l.record.attributes == sent.attributes)
            .expect("each record arrives");
        assert_eq!(
            arrived.record.encode_to_vec(),
            sent.encode_to_vec(),
            "byte-identical, no attributes added"
        );
    }
    wait_counter(&proxy, "tailsift_log_records_untraced_total", 2).await;
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_untraced_sample_rate_4_one_untraced_log_in_4_arrives_carrying_sample_rate_4() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        format!("{c}[logs]\nuntraced_sample_rate = 4\n")
    })
    .await;
    let records: Vec<LogRecord> = (0..40).map(|i| log_record(&[], "untraced", i)).collect();
    send_logs_grpc(proxy.grpc, logs_request("acme", records))
        .await
        .expect("accepted");
    wait_counter(&proxy, "tailsift_log_records_exported_total", 10).await;
    wait_counter(
        &proxy,
        "tailsift_log_records_dropped_total{reason=\"sampled\"}",
        30,
    )
    .await;
    let got = backend.wait_for_log_records(10, WAIT).await;
    assert_eq!(got.len(), 10, "exactly 1 in 4 of 40");
    assert!(
        got.iter().all(|l| l.attr_i64("SampleRate") == Some(4)),
        "{got:#?}"
    );
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_gzip_logs_are_accepted_and_a_malformed_trace_id_refuses_only_that_record() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;

    let json =
        serde_json::to_vec(&logs_request("acme", vec![log_record(&[], "json", 1)])).expect("json");
    let reply = send_logs_http(proxy.http, &[("content-type", "application/json")], json).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let gz = gzip(&logs_request("acme", vec![log_record(&[], "gzip", 2)]).encode_to_vec());
    let reply = send_logs_http(
        proxy.http,
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        gz,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A 5-byte trace id is malformed: that record is refused, its neighbour goes through.
    let mixed = |n: i64| {
        logs_request(
            "acme",
            vec![
                log_record(&[7; 5], "bad trace id", n),
                log_record(&[], "fine", n + 1),
            ],
        )
    };
    let reply = send_logs_http(
        proxy.http,
        &[("content-type", "application/x-protobuf")],
        mixed(10).encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let partial = ExportLogsServiceResponse::decode(reply.body.clone())
        .expect("an ExportLogsServiceResponse");
    assert_eq!(
        partial.partial_success.map(|p| p.rejected_log_records),
        Some(1)
    );
    let response = send_logs_grpc(proxy.grpc, mixed(20))
        .await
        .expect("gRPC accepted with partial success");
    assert_eq!(
        response.partial_success.map(|p| p.rejected_log_records),
        Some(1)
    );

    let got = backend.wait_for_log_records(4, WAIT).await;
    let mut bodies: Vec<&str> = got.iter().filter_map(|l| l.body_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["fine", "fine", "gzip", "json"], "{}", proxy.log());
    stop(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_exporter_writes_kept_logs_as_otlp_json_lines_to_the_default_logs_path() {
    let backend_addr = "127.0.0.1:9".parse().expect("addr");
    let mut proxy = TailsiftProcess::start_with_rules_and(backend_addr, ACME_ONLY_RULES, |c| {
        c.replace("kind = \"otlp_grpc\"", "kind = \"file\"")
    })
    .await;
    let kept = trace_id_from_seed(501);
    let dropped = trace_id_from_seed(502);
    send_logs_grpc(
        proxy.grpc,
        logs_request(
            "acme",
            vec![
                log_record(&kept, "kept to file", 1),
                log_record(&[], "untraced to file", 2),
            ],
        ),
    )
    .await
    .expect("logs accepted");
    send_logs_grpc(
        proxy.grpc,
        logs_request("globex", vec![log_record(&dropped, "never written", 3)]),
    )
    .await
    .expect("logs accepted");
    send_grpc(
        proxy.grpc,
        make_request(vec![
            make_trace(kept, "acme", 2, false, "/kept"),
            make_trace(dropped, "globex", 2, false, "/dropped"),
        ]),
    )
    .await
    .expect("traces accepted");
    wait_counter(&proxy, "tailsift_log_records_exported_total", 2).await;
    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).await;
    assert!(status.success(), "exit {status:?}\n{}", proxy.log());

    let path = proxy.dir().join("tailsift-kept-logs.jsonl");
    let text = std::fs::read_to_string(&path).expect("logs file written");
    let mut records = Vec::new();
    for line in text.lines() {
        let req: ExportLogsServiceRequest =
            serde_json::from_str(line).expect("each line is an OTLP/JSON logs request");
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                records.extend(sl.log_records);
            }
        }
    }
    let body = |r: &LogRecord| match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    };
    let mut bodies: Vec<String> = records.iter().map(body).collect();
    bodies.sort();
    assert_eq!(bodies, ["kept to file", "untraced to file"], "{text}");
    let traced = records
        .iter()
        .find(|r| r.trace_id == kept.to_vec())
        .expect("the kept trace's log");
    assert_eq!(attr_i64(&traced.attributes, "SampleRate"), Some(1));
    assert_eq!(attr_str(&traced.attributes, "tailsift.rule"), Some("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_static_cluster_logs_sent_to_any_node_follow_their_trace_to_its_owner() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The decision depends on the spans: a log record decided without its trace's spans
    // (on a node that is not the owner) would be dropped with the `rest` rule.
    let rules = write_file(
        dir.path(),
        "rules.toml",
        "[[rule]]\nname = \"errors\"\nif = 'span.status = \"error\"'\nsample_rate = 1\n\n[[rule]]\nname = \"rest\"\ndrop = true\n",
    );
    let ports = free_ports(3);
    let sections: Vec<String> = ports.iter().map(|p| static_section(*p, &ports)).collect();
    let nodes = start_nodes(backend.grpc_addr(), &rules, &sections).await;

    let ids: Vec<[u8; 16]> = (0..30).map(|i| trace_id_from_seed(9_000 + i)).collect();
    let error = |i: usize| i % 2 == 0;
    // Each trace's logs go to nodes 1 and 2, its spans to node 0: for most traces at least
    // one of them is not the owner.
    let mut expected = std::collections::BTreeSet::new();
    for (n, node) in nodes[1..].iter().enumerate() {
        let records: Vec<LogRecord> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let seq = (n * 100 + i) as i64;
                if error(i) {
                    expected.insert(seq);
                }
                log_record(id, "in a trace", seq)
            })
            .collect();
        send_logs_grpc(node.grpc, logs_request("acme", records))
            .await
            .expect("logs accepted");
    }
    let traces = ids
        .iter()
        .enumerate()
        .map(|(i, id)| make_trace(*id, "acme", 3, error(i), "/clustered"))
        .collect();
    send_grpc(nodes[0].grpc, make_request(traces))
        .await
        .expect("traces accepted");

    backend.wait_for_spans(15 * 3, WAIT).await;
    let got = backend.wait_for_log_records(expected.len(), WAIT).await;
    let mut exported = 0;
    for node in &nodes {
        exported += counter(node, "tailsift_log_records_exported_total").await;
    }
    let seqs: Vec<i64> = got.iter().filter_map(|l| l.attr_i64("seq")).collect();
    let unique: std::collections::BTreeSet<i64> = seqs.iter().copied().collect();
    assert_eq!(
        seqs.len(),
        unique.len(),
        "each record arrives once: {seqs:?}"
    );
    assert_eq!(unique, expected, "exactly the logs of the error traces");
    assert_eq!(exported, got.len() as u64);
    for log in &got {
        assert_eq!(log.attr_str("tailsift.rule"), Some("errors"), "{log:?}");
        assert_eq!(log.attr_i64("SampleRate"), Some(1));
    }
    for mut node in nodes {
        node.sigterm();
        let status = node.wait_exit(WAIT).await;
        assert!(status.success(), "exit {status:?}\n{}", node.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_log_keeps_its_trace_under_a_rule_that_asks_for_one() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(
        backend.grpc_addr(),
        "[[rule]]\nname = \"error-logs\"\nif = 'trace.error_log_count > 0'\nsample_rate = 1\n\n[[rule]]\nname = \"rest\"\ndrop = true\n",
    )
    .await;
    let noisy = trace_id_from_seed(401);
    let quiet = trace_id_from_seed(402);
    let mut error = log_record(&noisy, "it broke", 1);
    error.severity_number = 17;
    error.severity_text = "ERROR".into();
    send_logs_grpc(
        proxy.grpc,
        logs_request("acme", vec![error, log_record(&quiet, "all fine", 2)]),
    )
    .await
    .expect("logs accepted");
    send_grpc(
        proxy.grpc,
        make_request(vec![
            make_trace(noisy, "acme", 2, false, "/noisy"),
            make_trace(quiet, "acme", 2, false, "/quiet"),
        ]),
    )
    .await
    .expect("traces accepted");
    let spans = backend.wait_for_spans(2, WAIT).await;
    let logs = backend.wait_for_log_records(1, WAIT).await;
    wait_counter(
        &proxy,
        "tailsift_log_records_dropped_total{reason=\"rule\"}",
        1,
    )
    .await;
    assert!(spans.iter().all(|s| s.trace_id_hex() == hex(&noisy)));
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].attr_str("tailsift.rule"), Some("error-logs"));
    stop(proxy).await;
}
