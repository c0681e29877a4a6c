//! An application on the OpenTelemetry Python SDK with one `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at tailsift, exporting traces, metrics and logs (the `logging` bridge) over gRPC or
//! HTTP/protobuf: metrics arrive unchanged, logs follow their trace's decision, a log outside
//! any span arrives unchanged, and the SDK reports no export failure.
//!
//! Needs `python3`; the pinned SDK (`tests/interop/requirements.txt`) is pip-installed on first
//! use if it does not import.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use serde_json::Value;
use support::interop::{ensure_python_otel, interop_dir, run_bounded};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Keeps traces whose root is `keep-me` under rule `keep` and traces with an ERROR log record
/// under `error-logs`; drops the rest.
const RULES: &str = "[[rule]]\nname = \"keep\"\nif = 'root.name = \"keep-me\"'\nsample_rate = 1\n\n[[rule]]\nname = \"error-logs\"\nif = 'trace.error_log_count > 0'\nsample_rate = 1\n\n[[rule]]\nname = \"rest\"\ndrop = true\n";

/// Runs `send_all_signals.py` with `endpoint` and `protocol`; returns what it produced and its stderr.
async fn run_app(endpoint: String, protocol: &'static str) -> (Value, String) {
    let out = tokio::task::spawn_blocking(move || {
        ensure_python_otel();
        let mut cmd = Command::new("python3");
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            if name.starts_with("OTEL_") || name.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(&var);
            }
        }
        cmd.arg(interop_dir().join("send_all_signals.py"))
            .args(["--tenant", "acme", "--traces", "3"])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "10");
        run_bounded(&mut cmd, Duration::from_secs(120))
    })
    .await
    .expect("python task");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "send_all_signals.py failed ({}):\nstderr:\n{stderr}\nstdout:\n{stdout}",
        out.status
    );
    let produced = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bad driver output ({e}):\n{stdout}\n{stderr}"));
    (produced, stderr)
}

async fn all_signals_through_one_endpoint(protocol: &'static str) {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules(backend.grpc_addr(), RULES).await;
    let endpoint = if protocol == "grpc" {
        format!("http://{}", proxy.grpc)
    } else {
        format!("http://{}", proxy.http)
    };
    let (produced, stderr) = run_app(endpoint, protocol).await;
    for bad in ["Failed to export", "Transient error"] {
        assert!(!stderr.contains(bad), "the SDK reported {bad:?}:\n{stderr}");
    }

    let ids = |name: &str| -> BTreeSet<String> {
        produced["traces"][name]
            .as_array()
            .expect("trace ids")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (dropped, error_logged) = (ids("drop-me"), ids("error-log"));
    let kept: BTreeSet<String> = ids("keep-me").union(&error_logged).cloned().collect();
    assert!(!error_logged.is_empty());
    let logs = produced["logs"].as_array().expect("logs");
    let expected_logs: Vec<&Value> = logs.iter().filter(|l| l["span"] != "drop-me").collect();

    // Traces: 2 spans each of the kept ones.
    backend.wait_for_spans(kept.len() * 2, WAIT).await;
    let got = backend
        .wait_for_log_records(expected_logs.len(), WAIT)
        .await;
    let metrics = backend.wait_for_metrics(1, WAIT).await;

    let span_traces: BTreeSet<String> = backend.spans().iter().map(|s| s.trace_id_hex()).collect();
    assert_eq!(
        span_traces, kept,
        "only the keep-me and error-log traces are exported"
    );
    assert_eq!(got.len(), expected_logs.len(), "{got:#?}\n{}", proxy.log());
    for want in &expected_logs {
        let body = want["body"].as_str().expect("body");
        let log = got
            .iter()
            .find(|l| l.body_str() == Some(body))
            .unwrap_or_else(|| panic!("log {body:?} did not arrive: {got:#?}"));
        let trace_id = want["trace_id"].as_str().unwrap_or_default();
        if trace_id.is_empty() {
            assert!(log.record.trace_id.iter().all(|b| *b == 0), "{log:?}");
            assert_eq!(log.attr_i64("SampleRate"), None, "unchanged: {log:?}");
            assert_eq!(log.attr_str("tailsift.rule"), None, "unchanged: {log:?}");
        } else {
            assert_eq!(log.trace_id_hex(), trace_id);
            assert_eq!(log.attr_i64("SampleRate"), Some(1), "{log:?}");
            let rule = if want["span"] == "error-log" {
                "error-logs"
            } else {
                "keep"
            };
            assert_eq!(log.attr_str("tailsift.rule"), Some(rule), "{log:?}");
        }
        assert_eq!(log.resource_attr_str("tenant.id"), Some("acme"));
    }
    for log in &got {
        assert!(
            !dropped.contains(&log.trace_id_hex()),
            "a dropped trace's log: {log:?}"
        );
    }

    // Metrics: the counter's sum and the histogram's count and sum, as the SDK reported them.
    let mut counter_sum = None;
    let mut histogram = None;
    for req in &metrics {
        for rm in &req.request.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    match (&m.name[..], &m.data) {
                        ("jobs.done", Some(metric::Data::Sum(s))) => {
                            counter_sum = s.data_points.first().and_then(|p| match p.value {
                                Some(number_data_point::Value::AsInt(v)) => Some(v as f64),
                                Some(number_data_point::Value::AsDouble(v)) => Some(v),
                                None => None,
                            });
                        }
                        ("job.duration", Some(metric::Data::Histogram(h))) => {
                            histogram = h.data_points.first().map(|p| (p.count, p.sum));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let want = &produced["metrics"];
    assert_eq!(
        counter_sum,
        want["jobs.done"]["sum"].as_f64(),
        "{metrics:#?}"
    );
    assert_eq!(
        histogram,
        Some((
            want["job.duration"]["count"].as_u64().expect("count"),
            want["job.duration"]["sum"].as_f64()
        )),
        "{metrics:#?}"
    );

    let mut proxy = proxy;
    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).await;
    assert!(status.success(), "exit {status:?}\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_grpc_sends_traces_metrics_and_logs_through_one_endpoint() {
    all_signals_through_one_endpoint("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_http_protobuf_sends_traces_metrics_and_logs_through_one_endpoint() {
    all_signals_through_one_endpoint("http/protobuf").await;
}
