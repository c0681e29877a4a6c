//! The operator's dashboard, as a person sees it: a real headless Chromium loads `GET /` from a
//! proxy fed with traffic, runs the page's script, and the tenants and keep rates it shows
//! must be the ones the API reports; with an admin token that reads need, the page opened as
//! `/#token=...` still shows them.
//!
//! Needs Debian's `chromium` (scripts/test.sh installs it). Without it the test says so and
//! passes, unless TAILSIFT_REQUIRE_CHROMIUM=1 (set by scripts/test.sh), where it fails.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const RULES: &str = r#"
[[rule]]
name = "acme-all"
if = 'tenant = "acme"'
sample_rate = 1

[[rule]]
name = "rest"
sample_rate = 4
"#;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn pct(rate: &serde_json::Value) -> String {
    match rate.as_f64() {
        Some(r) => format!("{:.1}%", r * 100.0),
        None => "–".to_string(),
    }
}

/// Loads `url` in headless Chromium, runs its scripts for 6 s of virtual time, and returns the
/// DOM and Chromium's stderr.
async fn render(browser: &str, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let browser = browser.to_string();
        let profile = profile.path().to_path_buf();
        let url = url.to_string();
        move || {
            Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--virtual-time-budget=6000",
                    "--dump-dom",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(&url)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("chromium runs");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_a_token_in_the_fragment_works_when_reads_need_the_token() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("TAILSIFT_REQUIRE_CHROMIUM").is_err(),
            "chromium is required (apt-get install chromium) but missing"
        );
        eprintln!("SKIPPED: no chromium on this machine (scripts/test.sh installs it)");
        return;
    };
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", RULES);
    let token = write_file(dir.path(), "token", "dash-token-42\n");
    let config = test_config(backend.grpc_addr(), &rules).replace(
        "[admin]\n",
        &format!(
            "[admin]\ntoken_file = \"{}\"\nrequire_token_for_reads = true\n",
            token.display()
        ),
    );
    let proxy = TailsiftProcess::start(&config).await;
    let rule_row = "<td class=\"text\">acme-all</td>";

    let (dom, stderr) = render(browser, &format!("http://{}/", proxy.admin)).await;
    let refused = regex::Regex::new(r#"<span id="error">\([^<]*needs a token"#).unwrap();
    assert!(refused.is_match(&dom), "no token message:\n{dom}\n{stderr}");
    assert!(
        !dom.contains(rule_row),
        "rules shown without a token:\n{dom}"
    );
    assert!(
        !dom.contains("<form id=\"auth\" hidden"),
        "the token form is shown"
    );

    let url = format!("http://{}/#token=dash-token-42", proxy.admin);
    let (dom, stderr) = render(browser, &url).await;
    assert!(
        dom.contains(rule_row),
        "rules not shown with the token:\n{dom}\n{stderr}"
    );
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "an error is shown:\n{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser_shows_the_tenants_and_keep_rates_the_api_reports() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("TAILSIFT_REQUIRE_CHROMIUM").is_err(),
            "chromium is required (apt-get install chromium) but missing"
        );
        eprintln!("SKIPPED: no chromium on this machine (scripts/test.sh installs it)");
        return;
    };
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", RULES);
    let mut proxy = TailsiftProcess::start(&test_config(backend.grpc_addr(), &rules)).await;
    let mut batch = Vec::new();
    for i in 0..400u64 {
        let tenant = if i % 4 == 0 { "acme" } else { "initech" };
        batch.push(make_trace(
            trace_id_from_seed(i + 50_000),
            tenant,
            2,
            false,
            "/d",
        ));
    }
    send_grpc(proxy.grpc, make_request(batch))
        .await
        .expect("accepted");
    // Wait until every trace is decided (root_grace 300 ms) and the shard tallies merged.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let api = loop {
        let reply = http_get(proxy.admin, "/api/v1/tenants?window=5m&sort=volume").await;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let decided: u64 = body["tenants"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        t["traces_kept"].as_u64().unwrap_or(0)
                            + t["traces_dropped"].as_u64().unwrap_or(0)
                    })
                    .sum()
            })
            .unwrap_or(0);
        if decided == 400 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "traces not all decided: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let (dom, stderr) = render(browser, &format!("http://{}/", proxy.admin)).await;
    assert!(
        dom.contains("<table id=\"tenants\""),
        "no dashboard in the DOM:\n{dom}\n{stderr}"
    );

    // Rows as the page rendered them: tenant, traces, kept, keep rate, ...
    let row =
        regex::Regex::new(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>")
            .unwrap();
    let shown: Vec<(String, String, String, String)> = row
        .captures_iter(&dom)
        .map(|c| {
            (
                c[1].to_string(),
                c[2].to_string(),
                c[3].to_string(),
                c[4].to_string(),
            )
        })
        .collect();
    let tenants = api["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 2, "{api}");
    for t in tenants {
        let name = t["tenant"].as_str().unwrap();
        let (_, received, kept, rate) = shown
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("tenant {name} not shown; rows {shown:?}"));
        let number = |s: &str| s.replace([',', '.', ' ', '\u{a0}'], "").parse::<u64>().ok();
        assert_eq!(
            number(received),
            t["traces_received"].as_u64(),
            "{name} traces"
        );
        assert_eq!(number(kept), t["traces_kept"].as_u64(), "{name} kept");
        assert_eq!(*rate, pct(&t["trace_keep_rate"]), "{name} keep rate");
    }
    let acme = shown.iter().find(|r| r.0 == "acme").unwrap();
    assert_eq!(acme.3, "100.0%", "acme is kept entirely");
    proxy.sigterm();
    proxy.wait_exit(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_dashboard_shows_every_member_and_the_cluster_totals() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("TAILSIFT_REQUIRE_CHROMIUM").is_err(),
            "chromium is required (apt-get install chromium) but missing"
        );
        eprintln!("SKIPPED: no chromium on this machine (scripts/test.sh installs it)");
        return;
    };
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", RULES);
    let ports = support::cluster::free_ports(2);
    let sections: Vec<String> = ports
        .iter()
        .map(|p| support::cluster::static_section(*p, &ports))
        .collect();
    let nodes = support::cluster::start_nodes(backend.grpc_addr(), &rules, &sections).await;
    for (k, node) in nodes.iter().enumerate() {
        let batch: Vec<ResourceSpans> = (0..100u64)
            .map(|i| {
                make_trace(
                    trace_id_from_seed(60_000 + 1_000 * k as u64 + i),
                    "acme",
                    2,
                    false,
                    "/d",
                )
            })
            .collect();
        send_grpc(node.grpc, make_request(batch))
            .await
            .expect("accepted");
    }
    // Wait until the cluster has decided all 200 traces.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = http_get(nodes[0].admin, "/api/v1/tenants?window=5m&scope=cluster").await;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let kept: u64 = body["tenants"]
            .as_array()
            .map(|ts| ts.iter().filter_map(|t| t["traces_kept"].as_u64()).sum())
            .unwrap_or(0);
        if kept == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all decided: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (dom, _) = render(browser, &format!("http://{}/", nodes[0].admin)).await;
    assert!(
        dom.contains("<section id=\"cluster\">"),
        "cluster section hidden:\n{dom}"
    );
    for p in &ports {
        assert!(
            dom.contains(&support::cluster::peer_addr(*p)),
            "member {p} not shown:\n{dom}"
        );
    }
    assert!(dom.contains("(this node)"), "{dom}");
    let total = regex::Regex::new(
        r"<tr><td[^>]*>cluster</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>",
    )
    .unwrap();
    let c = total
        .captures(&dom)
        .unwrap_or_else(|| panic!("no cluster totals row:\n{dom}"));
    let number = |s: &str| s.replace([',', '.', ' ', '\u{a0}'], "").parse::<u64>().ok();
    assert_eq!(number(&c[1]), Some(200), "cluster traces");
    assert_eq!(number(&c[2]), Some(200), "cluster traces kept");
    for n in &nodes {
        n.sigterm();
    }
    for mut n in nodes {
        n.wait_exit(Duration::from_secs(20)).await;
    }
}
