//! Dynamic samplers on real traffic: the proxy learns per-key rates, keeps rare keys, and
//! reports what it learned on the admin API.

mod support;

use std::time::{Duration, Instant};

use support::*;

const RULES: &str = r#"
[[rule]]
name = "dynamic"
sampler = "per-key"

[sampler.per-key]
type = "ema_dynamic"
goal_sample_rate = 10
key = ["tenant", "root.http.route"]
adjustment_interval = "1s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ema_dynamic_sampler_learns_rates_keeps_rare_keys_and_reports_them() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", RULES);
    let proxy = TailsiftProcess::start(&test_config(backend.grpc_addr(), &rules)).await;
    let start = Instant::now();
    let mut seed = 0u64;
    let mut rare_sent = 0;
    // ~4 s of traffic: a loud route (200 traces per round) and a rare one (1 per round).
    while start.elapsed() < Duration::from_secs(4) {
        let mut batch = Vec::new();
        for _ in 0..200 {
            seed += 1;
            batch.push(make_trace(
                trace_id_from_seed(seed),
                "acme",
                1,
                false,
                "/loud",
            ));
        }
        seed += 1;
        batch.push(make_trace(
            trace_id_from_seed(seed),
            "acme",
            1,
            false,
            "/rare",
        ));
        rare_sent += 1;
        send_grpc(proxy.grpc, make_request(batch))
            .await
            .expect("accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reply = http_get(proxy.admin, "/api/v1/samplers/per-key").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(body["shards_reporting"].as_u64().unwrap_or(0) > 0, "{body}");
    let keys = body["keys"].as_array().expect("keys");
    let rate_of = |route: &str| {
        keys.iter()
            .find(|k| k["key"][1] == route)
            .and_then(|k| k["sample_rate"].as_f64())
            .unwrap_or_else(|| panic!("no key for {route} in {body}"))
    };
    assert!(
        rate_of("/loud") > rate_of("/rare"),
        "the loud key is sampled harder: {body}"
    );
    assert_eq!(
        http_get(proxy.admin, "/api/v1/samplers/nope").await.status,
        404
    );

    let mut proxy = proxy;
    proxy.sigterm();
    assert!(proxy.wait_exit(Duration::from_secs(20)).await.success());
    let spans = backend.spans();
    let rare_kept = spans
        .iter()
        .filter(|s| s.attr_str("http.route") == Some("/rare"))
        .count();
    let loud_kept = spans
        .iter()
        .filter(|s| s.attr_str("http.route") == Some("/loud"))
        .count();
    assert!(
        loud_kept > 0 && loud_kept < 200 * rare_sent / 2,
        "loud kept {loud_kept}"
    );
    assert!(
        rare_kept * 2 >= rare_sent,
        "rare key mostly kept: {rare_kept} of {rare_sent}"
    );
    for s in &spans {
        assert_eq!(s.attr_str("tailsift.rule"), Some("dynamic"));
        assert!(s.attr_i64("SampleRate").unwrap_or(0) >= 1);
    }
}
