//! End-to-end behaviour of the pipeline, as a user sees it: the real binary on loopback ports,
//! OTLP over gRPC and HTTP, and a real recording OTLP backend behind it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn default_rules() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.toml"))
}

/// Starts backend + proxy with the given rules file and optional config edits.
async fn start(
    rules: &std::path::Path,
    edit: impl Fn(String) -> String,
) -> (RecordingBackend, TailsiftProcess) {
    let backend = RecordingBackend::start().await;
    let config = edit(test_config(backend.grpc_addr(), rules));
    let proxy = TailsiftProcess::start(&config).await;
    (backend, proxy)
}

/// Stops the proxy with SIGTERM (which flushes everything) and checks it exited cleanly.
async fn stop(mut proxy: TailsiftProcess) -> String {
    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "tailsift exited with {status:?}\n{}",
        proxy.log()
    );
    proxy.log()
}

/// The span as sent, for comparison with what arrived minus our annotations.
fn strip_annotations(mut span: Span) -> Span {
    span.attributes
        .retain(|a| a.key != "SampleRate" && a.key != "tailsift.rule");
    span.trace_state.clear();
    span
}

fn seeded_ids(seed: u64, n: usize) -> Vec<[u8; 16]> {
    (0..n as u64)
        .map(|i| trace_id_from_seed(seed * 1_000_003 + i))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_rules_keep_errors_and_tagged_tenants_whole_and_drop_health_checks() {
    let (backend, proxy) = start(&default_rules(), |c| c).await;
    let ids = seeded_ids(1, 40);
    let mut sent: BTreeMap<String, (&str, Vec<Span>)> = BTreeMap::new();
    let mut grpc_batch = Vec::new();
    let mut http_batch = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // 0..10 error traces of an untagged tenant, 10..20 acme, 20..30 globex, 30..40 health checks
        let (kind, tenant, error, route) = match i / 10 {
            0 => ("error", "initech", true, "/checkout"),
            1 => ("tagged", "acme", false, "/api/items"),
            2 => ("tagged", "globex", false, "/api/items"),
            _ => ("health", "initech", false, "/healthz"),
        };
        let rs = make_trace(*id, tenant, 1 + i % 7, error, route);
        sent.insert(hex(id), (kind, rs.scope_spans[0].spans.clone()));
        if i % 2 == 0 {
            grpc_batch.push(rs);
        } else {
            http_batch.push(rs);
        }
    }
    send_grpc(proxy.grpc, make_request(grpc_batch))
        .await
        .expect("gRPC export accepted");
    let reply = send_http(
        proxy.http,
        &make_request(http_batch),
        HttpEncoding::Json,
        false,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let expected_spans: usize = sent
        .values()
        .filter(|(k, _)| *k != "health")
        .map(|(_, s)| s.len())
        .sum();
    backend.wait_for_spans(expected_spans, WAIT).await;
    stop(proxy).await;

    let got = backend.spans_by_trace();
    for (trace, (kind, spans)) in &sent {
        let arrived = got.get(trace).cloned().unwrap_or_default();
        if *kind == "health" {
            assert!(
                arrived.is_empty(),
                "health-check trace {trace} must be dropped"
            );
            continue;
        }
        assert_eq!(
            arrived.len(),
            spans.len(),
            "{kind} trace {trace} must arrive whole"
        );
        let rule = if *kind == "error" {
            "errors"
        } else {
            "tagged-tenants"
        };
        for original in spans {
            let got = arrived
                .iter()
                .find(|s| s.span.span_id == original.span_id)
                .unwrap_or_else(|| panic!("span {} of {trace} missing", hex(&original.span_id)));
            assert_eq!(got.attr_i64("SampleRate"), Some(1));
            assert_eq!(got.attr_str("tailsift.rule"), Some(rule));
            assert_eq!(got.attr_count("SampleRate"), 1);
            assert_eq!(got.span.trace_state, "ot=th:0");
            assert_eq!(
                strip_annotations(got.span.clone()),
                *original,
                "span bytes must be preserved"
            );
            assert_eq!(
                got.resource_attr_str("tenant.id"),
                Some(got.resource_attr_str("tenant.id").unwrap_or_default())
            );
            assert_eq!(
                got.scope.as_ref().map(|s| s.name.as_str()),
                Some("tailsift.test")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_rule_keeps_one_in_ten_consistently_over_ten_thousand_traces() {
    let (backend, proxy) = start(&default_rules(), |c| c).await;
    let ids = seeded_ids(7, 10_000);
    for chunk in ids.chunks(500) {
        let batch = chunk
            .iter()
            .map(|id| make_trace(*id, "initech", 1, false, "/api/items"))
            .collect();
        send_grpc(proxy.grpc, make_request(batch))
            .await
            .expect("accepted");
    }
    // The decision is a pure function of the trace id: keep when the low 56 bits are at least
    // the threshold for 1 in 10.
    let max = 1u64 << 56;
    let threshold = max - max / 10;
    let expected: BTreeSet<String> = ids
        .iter()
        .filter(|id| {
            let mut low = [0u8; 8];
            low.copy_from_slice(&id[8..]);
            u64::from_be_bytes(low) & (max - 1) >= threshold
        })
        .map(|id| hex(id))
        .collect();
    backend.wait_for_spans(expected.len(), WAIT).await;
    stop(proxy).await;
    let got: BTreeSet<String> = backend.spans_by_trace().keys().cloned().collect();
    assert_eq!(
        got, expected,
        "exactly the traces the consistent threshold selects are kept"
    );
    let kept = got.len() as f64;
    // Binomial(10000, 0.1): sd = 30; allow 5 sd.
    assert!(
        (kept - 1000.0).abs() <= 150.0,
        "kept {kept} of 10000, expected about 1000"
    );
    for span in backend.spans() {
        assert_eq!(span.attr_i64("SampleRate"), Some(10));
        assert_eq!(span.attr_str("tailsift.rule"), Some("rest"));
        assert!(
            span.span.trace_state.starts_with("ot=th:e666666666666"),
            "{}",
            span.span.trace_state
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_trace_split_across_requests_and_protocols_are_decided_together() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = write_file(
        rules_dir.path(),
        "rules.toml",
        "[[rule]]\nname = \"tagged\"\nif = 'tenant = \"acme\"'\nsample_rate = 1\n\n[[rule]]\nname = \"rest\"\nsample_rate = 2\n",
    );
    let (backend, proxy) = start(&rules, |c| {
        c.replace("root_grace = \"300ms\"", "root_grace = \"1s\"")
    })
    .await;
    let mut total_kept_expected = 0;
    let mut traces = Vec::new();
    for (i, id) in seeded_ids(3, 20).into_iter().enumerate() {
        let tenant = if i < 5 { "acme" } else { "initech" };
        let rs = make_trace(id, tenant, 9, false, "/api");
        traces.push((id, tenant, span_count(&rs)));
        let parts = split_spans(&rs, 3);
        // part 0 over gRPC, part 1 over HTTP protobuf, part 2 over HTTP JSON gzipped
        send_grpc(proxy.grpc, make_request(vec![parts[0].clone()]))
            .await
            .expect("grpc");
        let r = send_http(
            proxy.http,
            &make_request(vec![parts[1].clone()]),
            HttpEncoding::Protobuf,
            false,
        )
        .await;
        assert_eq!(r.status, 200);
        let r = send_http(
            proxy.http,
            &make_request(vec![parts[2].clone()]),
            HttpEncoding::Json,
            true,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        if tenant == "acme" {
            total_kept_expected += 9;
        }
    }
    backend.wait_for_spans(total_kept_expected, WAIT).await;
    stop(proxy).await;
    let got = backend.spans_by_trace();
    for (id, tenant, n) in traces {
        let arrived = got.get(&hex(&id)).map(|v| v.len()).unwrap_or(0);
        if tenant == "acme" {
            assert_eq!(arrived, n, "tagged trace arrives whole");
        } else {
            assert!(
                arrived == 0 || arrived == n,
                "a sampled trace is kept whole or not at all, got {arrived} of {n}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_error_and_valid_spans_still_arrive() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = write_file(rules_dir.path(), "rules.toml", KEEP_ALL_RULES);
    let (backend, proxy) = start(&rules, |c| {
        c.replace(
            "max_request_bytes = \"4MiB\"",
            "max_request_bytes = \"64KiB\"",
        )
    })
    .await;

    // A wrong-length trace id is refused on its own; the rest of the request is accepted.
    let good = make_trace(trace_id_from_seed(1), "acme", 3, false, "/a");
    let mut bad = make_trace(trace_id_from_seed(2), "acme", 2, false, "/b");
    for s in &mut bad.scope_spans[0].spans {
        s.trace_id.truncate(15);
    }
    let resp = send_grpc(proxy.grpc, make_request(vec![good.clone(), bad.clone()]))
        .await
        .expect("accepted");
    let partial = resp.partial_success.expect("partial success reported");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("16 bytes"),
        "{}",
        partial.error_message
    );
    let reply = send_http(
        proxy.http,
        &make_request(vec![bad.clone()]),
        HttpEncoding::Json,
        false,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply
            .export_response()
            .partial_success
            .map(|p| p.rejected_spans),
        Some(2)
    );

    // Truncated protobuf.
    let mut body = prost::Message::encode_to_vec(&make_request(vec![good.clone()]));
    body.truncate(body.len() - 3);
    let reply = send_http_raw(
        proxy.http,
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        body.into(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    // Invalid JSON.
    let reply = send_http_raw(
        proxy.http,
        "/v1/traces",
        &[("content-type", "application/json")],
        "{\"resourceSpans\": [".into(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains("invalid OTLP/JSON"),
        "{}",
        reply.text()
    );
    // Oversized, both protocols.
    let big = make_trace(trace_id_from_seed(3), "acme", 3000, false, "/big");
    let reply = send_http(
        proxy.http,
        &make_request(vec![big.clone()]),
        HttpEncoding::Protobuf,
        false,
    )
    .await;
    assert_eq!(reply.status, 413);
    let status = send_grpc(proxy.grpc, make_request(vec![big]))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Garbage over gRPC.
    let status = send_grpc_raw_garbage(proxy.grpc).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Still up, and the valid spans arrived.
    let health = http_get(proxy.admin, "/healthz").await;
    assert_eq!(health.status, 200);
    backend.wait_for_spans(3, WAIT).await;
    let log = stop(proxy).await;
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(backend.span_count(), 3);
}

/// Sends bytes that are not protobuf to the gRPC export method.
async fn send_grpc_raw_garbage(addr: std::net::SocketAddr) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary::<_, bytes::Bytes, _>(
        tonic::Request::new(bytes::Bytes::from_static(&[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1,
        ])),
        path,
        tailsift::otlp::codec::RawCodec,
    )
    .await
    .expect_err("garbage must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_reported_by_check_and_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let unknown_field = write_file(
        dir.path(),
        "unknown.toml",
        "[[rule]]\nname = \"a\"\nsample_rat = 3\n",
    );
    let bad_if = write_file(
        dir.path(),
        "badif.toml",
        "[[rule]]\nname = \"a\"\nif = 'span.status = = \"error\"'\nsample_rate = 1\n",
    );
    for (rules, needle) in [(&unknown_field, "sample_rat"), (&bad_if, "badif.toml:3")] {
        let config = write_file(
            dir.path(),
            "c.toml",
            &format!("[rules]\nfile = \"{}\"\n", rules.display()),
        );
        let out = run_tailsift(&["check", "--config", config.to_str().unwrap()], WAIT).await;
        assert!(!out.status.success());
        assert!(
            out.stdout.contains(needle),
            "check output must name the problem: {}",
            out.stdout
        );
        let out = run_tailsift(&["run", "--config", config.to_str().unwrap()], WAIT).await;
        assert!(!out.status.success(), "start-up must refuse invalid rules");
        assert!(out.stderr.contains(needle), "{}", out.stderr);
    }
    let good = write_file(
        dir.path(),
        "good.toml",
        &format!("[rules]\nfile = \"{}\"\n", default_rules().display()),
    );
    let out = run_tailsift(&["check", "--config", good.to_str().unwrap()], WAIT).await;
    assert!(out.status.success(), "{}", out.stdout);
    assert!(out.stdout.starts_with("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exports_every_accepted_span() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = write_file(rules_dir.path(), "rules.toml", KEEP_ALL_RULES);
    // Long grace: at the signal most traces are still buffered and must be decided by shutdown.
    let (backend, proxy) = start(&rules, |c| {
        c.replace("root_grace = \"300ms\"", "root_grace = \"2s\"")
            .replace("trace_timeout = \"3s\"", "trace_timeout = \"20s\"")
    })
    .await;
    let grpc = proxy.grpc;
    let senders: Vec<_> = (0..4u64)
        .map(|worker| {
            tokio::spawn(async move {
                let mut acknowledged = 0usize;
                for round in 0..200u64 {
                    let batch: Vec<_> = (0..10)
                        .map(|k| {
                            make_trace(
                                trace_id_from_seed(worker << 32 | round << 8 | k),
                                "acme",
                                5,
                                false,
                                "/x",
                            )
                        })
                        .collect();
                    let n: usize = batch.iter().map(span_count).sum();
                    match send_grpc(grpc, make_request(batch)).await {
                        Ok(_) => acknowledged += n,
                        Err(_) => break, // refused or connection closed by shutdown: not acknowledged
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = stop(proxy).await;
    let mut acknowledged = 0;
    for s in senders {
        acknowledged += s.await.unwrap();
    }
    assert!(
        acknowledged > 0,
        "some requests were accepted before the signal"
    );
    let arrived = backend.span_count();
    // Nothing may be lost silently: with keep-all rules and a live backend, every accepted span
    // is exported, and nothing is counted as dropped.
    assert_eq!(
        arrived, acknowledged,
        "exported spans must equal acknowledged spans\n{log}"
    );
    assert!(log.contains("shutdown_dropped=0"), "{log}");
}
