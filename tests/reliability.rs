//! Losing nothing: backend outages, throttling backends, late spans and memory floods, each
//! against the real binary and a real recording backend on loopback.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(30);

async fn start_keep_all(
    edit: impl Fn(String) -> String,
) -> (RecordingBackend, TailsiftProcess, tempfile::TempDir) {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let config = edit(test_config(backend.grpc_addr(), &rules));
    let proxy = TailsiftProcess::start(&config).await;
    (backend, proxy, dir)
}

/// Reads one unlabelled sample from the proxy's /metrics.
async fn metric(proxy: &TailsiftProcess, name: &str) -> f64 {
    let text = http_get(proxy.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_for_ten_seconds_under_load_loses_and_duplicates_nothing() {
    let (backend, proxy, _dir) = start_keep_all(|c| c).await;
    let mut sent: BTreeMap<(String, String), ()> = BTreeMap::new();
    let start = Instant::now();
    let mut seed = 0u64;
    let mut went_down = false;
    let mut came_up = false;
    // ~16 s of steady load; the backend is down from 3 s to 13 s.
    while start.elapsed() < Duration::from_secs(16) {
        if !went_down && start.elapsed() > Duration::from_secs(3) {
            backend.go_down().await;
            went_down = true;
        }
        if !came_up && start.elapsed() > Duration::from_secs(13) {
            backend.come_up().await;
            came_up = true;
        }
        let batch: Vec<_> = (0..10)
            .map(|_| {
                seed += 1;
                make_trace(trace_id_from_seed(seed), "acme", 4, false, "/load")
            })
            .collect();
        for rs in &batch {
            for s in &rs.scope_spans[0].spans {
                sent.insert((hex(&s.trace_id), hex(&s.span_id)), ());
            }
        }
        send_grpc(proxy.grpc, make_request(batch))
            .await
            .expect("the proxy accepts while the backend is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(went_down && came_up);
    backend.wait_for_spans(sent.len(), WAIT).await;
    backend
        .assert_span_count_stays(sent.len(), Duration::from_millis(500))
        .await;
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in backend.spans() {
        *seen.entry((s.trace_id_hex(), s.span_id_hex())).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    assert_eq!(
        seen.len(),
        sent.len(),
        "every kept span arrives exactly once"
    );
    assert!(metric(&proxy, "tailsift_export_retries_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_waits_as_long_as_a_throttling_backend_asks() {
    for kind in ["otlp_grpc", "otlp_http"] {
        let backend = RecordingBackend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
        let mut config = test_config(backend.grpc_addr(), &rules);
        if kind == "otlp_http" {
            config = config
                .replace("kind = \"otlp_grpc\"", "kind = \"otlp_http\"")
                .replace(
                    &format!("http://{}", backend.grpc_addr()),
                    &format!("http://{}", backend.http_addr()),
                );
        }
        let proxy = TailsiftProcess::start(&config).await;
        backend.fail_next(
            1,
            Failure::throttled().with_retry_after(Duration::from_secs(2)),
        );
        let sent_at = Instant::now();
        send_grpc(
            proxy.grpc,
            make_request(vec![make_trace(
                trace_id_from_seed(9),
                "acme",
                2,
                false,
                "/t",
            )]),
        )
        .await
        .expect("accepted");
        backend.wait_for_spans(2, WAIT).await;
        let took = sent_at.elapsed();
        // root_grace (300 ms) + the 2 s the backend asked for; default backoff alone would be ~100 ms.
        assert!(
            took >= Duration::from_secs(2),
            "{kind}: retried after {took:?}, before the requested 2 s"
        );
        assert!(took < Duration::from_secs(10), "{kind}: took {took:?}");
        assert_eq!(
            backend.attempts(),
            2,
            "{kind}: one refused attempt, one success"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_follow_their_traces_decision() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(
        dir.path(),
        "rules.toml",
        "[[rule]]\nname = \"acme\"\nif = 'tenant = \"acme\"'\nsample_rate = 1\n\n[[rule]]\nname = \"others\"\ndrop = true\n",
    );
    let proxy = TailsiftProcess::start(&test_config(backend.grpc_addr(), &rules)).await;
    let kept = make_trace(trace_id_from_seed(1), "acme", 4, false, "/k");
    let dropped = make_trace(trace_id_from_seed(2), "initech", 4, false, "/d");
    // First the roots and one child; the rest arrives after the decision.
    let (kept_early, kept_late) = split_at(&kept, 2);
    let (dropped_early, dropped_late) = split_at(&dropped, 2);
    send_grpc(proxy.grpc, make_request(vec![kept_early, dropped_early]))
        .await
        .unwrap();
    backend.wait_for_spans(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send_grpc(proxy.grpc, make_request(vec![kept_late, dropped_late]))
        .await
        .unwrap();
    backend.wait_for_spans(4, WAIT).await;
    backend
        .assert_span_count_stays(4, Duration::from_millis(800))
        .await;
    for s in backend.spans() {
        assert_eq!(
            s.trace_id_hex(),
            hex(&trace_id_from_seed(1)),
            "only the kept trace's spans arrive"
        );
        assert_eq!(s.attr_i64("SampleRate"), Some(1));
        assert_eq!(s.attr_str("tailsift.rule"), Some("acme"));
        assert_eq!(s.span.trace_state, "ot=th:0");
    }
    assert_eq!(metric(&proxy, "tailsift_late_spans_total").await, 4.0);
}

/// Splits a one-scope trace after its first `n` spans.
fn split_at(rs: &ResourceSpans, n: usize) -> (ResourceSpans, ResourceSpans) {
    let mut a = rs.clone();
    let mut b = rs.clone();
    a.scope_spans[0].spans.truncate(n);
    b.scope_spans[0].spans.drain(..n);
    (a, b)
}

/// Peak resident memory of a process, from /proc (Linux).
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_flood_is_refused_with_retryable_codes_and_memory_stays_bounded() {
    // 8 MiB budget, traces that never complete (no root, long timeout), a backend that is down:
    // nothing can leave, so the proxy must refuse rather than grow.
    let (backend, proxy, _dir) = start_keep_all(|c| {
        c.replace("max_memory = \"256MiB\"", "max_memory = \"8MiB\"")
            .replace("trace_timeout = \"3s\"", "trace_timeout = \"60s\"")
    })
    .await;
    backend.go_down().await;
    let baseline = peak_rss_bytes(proxy.pid());
    let mut accepted_spans = 0usize;
    let mut refused = 0usize;
    let mut seed = 1_000_000u64;
    // 10x the budget: 80 MiB of spans (each ~1 KiB with a padded attribute).
    for _ in 0..160 {
        let batch: Vec<_> = (0..64)
            .map(|_| {
                seed += 1;
                let mut rs = make_trace(trace_id_from_seed(seed), "acme", 8, false, "/flood");
                rs.scope_spans[0].spans.remove(0); // no root: never completes by itself
                for s in &mut rs.scope_spans[0].spans {
                    s.attributes.push(kv_str("padding", &"x".repeat(1000)));
                }
                rs
            })
            .collect();
        let n: usize = batch.iter().map(span_count).sum();
        match send_grpc(proxy.grpc, make_request(batch)).await {
            Ok(_) => accepted_spans += n,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    retry_info_delay(&status).is_some(),
                    "refusal carries RetryInfo"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "a flood of 10x the budget must be refused at some point"
    );
    let ready = http_get(proxy.admin, "/readyz").await;
    assert_eq!(ready.status, 503, "not ready while at the budget");
    let peak = peak_rss_bytes(proxy.pid());
    eprintln!("flood: accepted {accepted_spans} spans, refused {refused} requests, RSS baseline {} KiB, peak {} KiB", baseline >> 10, peak >> 10);
    // Budget (8 MiB) plus a documented constant: runtime, request buffers in flight, caches.
    assert!(
        peak.saturating_sub(baseline) < 8 * 1024 * 1024 + 48 * 1024 * 1024,
        "RSS grew by {} MiB over a baseline of {} MiB",
        peak.saturating_sub(baseline) >> 20,
        baseline >> 20
    );
    // Recovery: the backend returns, the held traces drain, new data is accepted again.
    backend.come_up().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = send_grpc(
            proxy.grpc,
            make_request(vec![make_trace(
                trace_id_from_seed(seed + 1),
                "acme",
                1,
                false,
                "/after",
            )]),
        )
        .await;
        if r.is_ok() {
            accepted_spans += 1;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing after the backend came back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every accepted span is either delivered or counted as dropped with a reason.
    let mut proxy = proxy;
    proxy.sigterm();
    let status = proxy.wait_exit(WAIT).await;
    assert!(status.success());
    let log = proxy.log();
    let exported = backend.span_count();
    let counted = parse_stopped(&log, "export_overflow")
        + parse_stopped(&log, "export_failed")
        + parse_stopped(&log, "shutdown_dropped");
    assert_eq!(
        exported + counted,
        accepted_spans,
        "exported {exported} + counted {counted} != accepted\n{log}"
    );
}

/// Reads `key=N` from the proxy's final "stopped" log line.
fn parse_stopped(log: &str, key: &str) -> usize {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap_or("");
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_backend_refusal_is_not_retried_and_is_counted() {
    let (backend, proxy, _dir) = start_keep_all(|c| c).await;
    backend.fail_next(1, Failure::invalid());
    send_grpc(
        proxy.grpc,
        make_request(vec![make_trace(
            trace_id_from_seed(5),
            "acme",
            3,
            false,
            "/p",
        )]),
    )
    .await
    .expect("accepted");
    let dropped = wait_until_metric(
        &proxy,
        "tailsift_spans_dropped_total{reason=\"export_failed\"}",
        3.0,
    )
    .await;
    assert_eq!(dropped, 3.0);
    assert_eq!(
        backend.attempts(),
        1,
        "INVALID_ARGUMENT is permanent: no retry"
    );
    assert_eq!(backend.span_count(), 0);
}

/// Polls a metric until it reaches `want` (or the wait ends) and returns its last value.
async fn wait_until_metric(proxy: &TailsiftProcess, name: &str, want: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(proxy, name).await;
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_batches_survive_a_restart_and_arrive_exactly_once() {
    let backend = RecordingBackend::start().await;
    backend.go_down().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let spool_dir = dir.path().join("spool");
    let config = test_config(backend.grpc_addr(), &rules).replace(
        "sample_rate_attribute = \"SampleRate\"",
        &format!(
            "sample_rate_attribute = \"SampleRate\"\nspool_dir = \"{}\"",
            spool_dir.display()
        ),
    );
    // First run: the backend is down the whole time; SIGTERM under load.
    let mut proxy = TailsiftProcess::start(&config).await;
    let mut acknowledged = 0usize;
    for round in 0..20u64 {
        let batch: Vec<_> = (0..5)
            .map(|k| {
                make_trace(
                    trace_id_from_seed(round * 10 + k + 7_000),
                    "acme",
                    3,
                    false,
                    "/s",
                )
            })
            .collect();
        let n: usize = batch.iter().map(span_count).sum();
        if send_grpc(proxy.grpc, make_request(batch)).await.is_ok() {
            acknowledged += n;
        }
    }
    proxy.sigterm();
    assert!(proxy.wait_exit(WAIT).await.success());
    let first_log = proxy.log();
    assert_eq!(parse_stopped(&first_log, "exported"), 0);
    assert!(
        std::fs::read_dir(&spool_dir).unwrap().count() > 0,
        "batches were spooled"
    );

    // Second run: the backend is back; the spool is replayed.
    backend.come_up().await;
    let mut proxy = TailsiftProcess::start(&config).await;
    backend.wait_for_spans(acknowledged, WAIT).await;
    backend
        .assert_span_count_stays(acknowledged, Duration::from_millis(700))
        .await;
    let mut seen = std::collections::BTreeSet::new();
    for s in backend.spans() {
        assert!(
            seen.insert((s.trace_id_hex(), s.span_id_hex())),
            "duplicate span"
        );
        assert_eq!(s.attr_str("tailsift.rule"), Some("all"));
    }
    assert_eq!(
        seen.len(),
        acknowledged,
        "exported + counted dropped == acknowledged, with nothing dropped"
    );
    proxy.sigterm();
    assert!(proxy.wait_exit(WAIT).await.success());
    // The logs and metrics spools are subdirectories of their own; no request file is left.
    let files = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
        .count();
    assert_eq!(files, 0, "the spool is empty after replay");
}
