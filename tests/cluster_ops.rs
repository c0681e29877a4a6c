//! Operating a cluster of real nodes as one: a tenant tag set on one node applies on every
//! node, cluster-wide tenant counts are the sum of the nodes' own, a trace is looked up from
//! its owner wherever the question is asked, a rules reload reaches every node, and a node that
//! was down while a tag was set gets it when it starts.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::client::try_http;
use support::cluster::*;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// Rules under which every trace of every tenant is dropped (only a tag keeps one).
const DROP_ALL_RULES: &str = "[[rule]]\nname = \"nothing\"\ndrop = true\n";

async fn json_of(reply: HttpReply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

async fn admin_get(node: &TailsiftProcess, path: &str) -> Value {
    let reply = http_get(node.admin, path).await;
    assert!(reply.status.is_success(), "GET {path}: {}", reply.text());
    json_of(reply).await
}

async fn admin_send(node: &TailsiftProcess, method: &str, path: &str, body: &str) -> HttpReply {
    try_http(
        method,
        node.admin,
        path,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Starts a static cluster of `n` nodes with `rules`; returns the nodes and their peer ports.
async fn cluster_of(
    n: usize,
    backend: &RecordingBackend,
    rules: &Path,
) -> (Vec<TailsiftProcess>, Vec<u16>) {
    let ports = free_ports(n);
    let sections: Vec<String> = ports.iter().map(|p| static_section(*p, &ports)).collect();
    (
        start_nodes(backend.grpc_addr(), rules, &sections).await,
        ports,
    )
}

/// Sends `n` whole traces of 4 spans of `tenant`, each to one of `targets` in turn; returns
/// the trace ids (hex).
async fn send_traces(targets: &[SocketAddr], tenant: &str, seed: u64, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = trace_id_from_seed(seed * 10_000 + i as u64);
        let trace = make_trace(id, tenant, 4, false, "/api/items");
        let target = targets[i % targets.len()];
        send_grpc(target, make_request(vec![trace]))
            .await
            .unwrap_or_else(|e| panic!("{target} refused a request: {e}"));
        ids.push(hex(&id));
    }
    ids
}

fn tenant_row<'a>(list: &'a Value, tenant: &str) -> Option<&'a Value> {
    list["tenants"]
        .as_array()?
        .iter()
        .find(|t| t["tenant"] == tenant)
}

const COUNTS: [&str; 10] = [
    "traces_received",
    "traces_decided",
    "traces_kept",
    "traces_dropped",
    "spans_received",
    "spans_decided",
    "spans_kept",
    "spans_dropped",
    "spans_exported",
    "late_spans",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_set_on_one_node_keeps_the_tenants_traces_received_on_every_other_node() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", DROP_ALL_RULES);
    let (nodes, _) = cluster_of(3, &backend, &rules).await;

    let reply = admin_send(&nodes[0], "PUT", "/api/v1/tenants/acme/tag", "{}").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = json_of(reply).await;
    let reached: Vec<&Value> = answer["nodes"].as_array().expect("nodes").iter().collect();
    assert_eq!(reached.len(), 3, "{answer}");
    assert!(reached.iter().all(|n| n["answered"] == true), "{answer}");

    // Within a second every node lists the tag.
    let started = tokio::time::Instant::now();
    for node in &nodes[1..] {
        loop {
            let tags = admin_get(node, "/api/v1/tenant-tags").await;
            if tags["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["tenant"] == "acme"))
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "no tag after 1 s: {tags}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Traces received on B and C (whatever node owns them) are kept for acme, dropped otherwise.
    let targets = [nodes[1].grpc, nodes[2].grpc];
    let acme: BTreeSet<String> = send_traces(&targets, "acme", 1, 30)
        .await
        .into_iter()
        .collect();
    send_traces(&targets, "initech", 2, 30).await;
    backend.wait_for_spans(acme.len() * 4, WAIT).await;
    backend
        .assert_span_count_stays(acme.len() * 4, Duration::from_millis(1_500))
        .await;
    let by_trace = backend.spans_by_trace();
    let kept: BTreeSet<String> = by_trace.keys().cloned().collect();
    assert_eq!(kept, acme, "exactly the tagged tenant's traces");
    for spans in by_trace.values() {
        assert_eq!(spans[0].attr_str("tailsift.rule"), Some("tenant-tag"));
    }

    // `tailsift tenants untag` on C removes the tag everywhere.
    let admin = format!("http://{}", nodes[2].admin);
    let out = run_tailsift(
        &["tenants", "--admin", &admin, "untag", "acme"],
        Duration::from_secs(10),
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("untagged acme"), "{}", out.stdout);
    assert!(
        !out.stderr.contains("warning"),
        "every member applied it: {}",
        out.stderr
    );
    for node in &nodes {
        let tags = admin_get(node, "/api/v1/tenant-tags").await;
        assert_eq!(tags["tags"], serde_json::json!([]), "{tags}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tenant_counts_are_the_sum_of_every_nodes_own_and_match_the_backend() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let (nodes, _) = cluster_of(3, &backend, &rules).await;
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    let acme = send_traces(&targets, "acme", 3, 40).await;
    let globex = send_traces(&targets, "globex", 4, 20).await;
    let total_spans = (acme.len() + globex.len()) * 4;
    backend.wait_for_spans(total_spans, WAIT).await;

    let mut per_tenant_backend: BTreeMap<String, u64> = BTreeMap::new();
    for s in backend.spans() {
        let t = s.resource_attr_str("tenant.id").unwrap_or("?").to_string();
        *per_tenant_backend.entry(t).or_default() += 1;
    }

    // Counters settle once exports are confirmed: compare until they agree (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let (cluster, locals) = loop {
        let cluster = admin_get(&nodes[0], "/api/v1/tenants?window=all&scope=cluster").await;
        let mut locals = Vec::new();
        for n in &nodes {
            locals.push(admin_get(n, "/api/v1/tenants?window=all").await);
        }
        let exported = |t: &str| {
            tenant_row(&cluster, t)
                .and_then(|r| r["spans_exported"].as_u64())
                .unwrap_or(0)
        };
        let decided = |t: &str| {
            tenant_row(&cluster, t)
                .and_then(|r| r["traces_decided"].as_u64())
                .unwrap_or(0)
        };
        // Shards merge their tallies into the shared table every so often: wait for it.
        let settled = exported("acme") == per_tenant_backend["acme"]
            && exported("globex") == per_tenant_backend["globex"]
            && decided("acme") == acme.len() as u64
            && decided("globex") == globex.len() as u64;
        let sums_agree = ["acme", "globex"].iter().all(|t| {
            COUNTS.iter().all(|f| {
                let sum: u64 = locals
                    .iter()
                    .filter_map(|l| tenant_row(l, t).and_then(|r| r[*f].as_u64()))
                    .sum();
                tenant_row(&cluster, t).and_then(|r| r[*f].as_u64()) == Some(sum)
            })
        });
        if settled && sums_agree {
            break (cluster, locals);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster counts {cluster} never matched the nodes' {locals:?} and the backend's {per_tenant_backend:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cluster["scope"], "cluster");
    let answered: Vec<&Value> = cluster["nodes"].as_array().expect("nodes").iter().collect();
    assert_eq!(answered.len(), 3, "{cluster}");
    assert!(answered.iter().all(|n| n["answered"] == true), "{cluster}");
    // Each node's own totals (what the dashboard's per-node rows show) add up to the cluster's.
    for f in COUNTS {
        let per_node: u64 = answered
            .iter()
            .filter_map(|n| n["totals"][f].as_u64())
            .sum();
        let cluster_total: u64 = cluster["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .filter_map(|t| t[f].as_u64())
            .sum();
        assert_eq!(per_node, cluster_total, "{f}: {cluster}");
    }
    let acme_row = tenant_row(&cluster, "acme").expect("acme row");
    assert_eq!(acme_row["spans_received"], 40 * 4, "{acme_row}");
    assert_eq!(acme_row["trace_keep_rate"], 1.0, "{acme_row}");
    // Each node saw only part of the traffic.
    for l in &locals {
        let own = tenant_row(l, "acme").and_then(|r| r["spans_received"].as_u64());
        assert!(own.unwrap_or(0) < 40 * 4, "{l}");
    }

    let admin = format!("http://{}", nodes[1].admin);
    let out = run_tailsift(
        &["stats", "--admin", &admin, "--window", "all", "--cluster"],
        Duration::from_secs(10),
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("3 of 3 node(s) answered"),
        "{}",
        out.stdout
    );
    let acme_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("acme"))
        .unwrap_or_else(|| panic!("no acme line:\n{}", out.stdout));
    assert!(
        acme_line.contains("160"),
        "cluster-wide span count: {acme_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_looked_up_on_a_node_that_does_not_own_it_shows_the_owners_view() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let (nodes, _) = cluster_of(3, &backend, &rules).await;
    let ids = send_traces(&[nodes[0].grpc], "acme", 5, 6).await;
    backend.wait_for_spans(ids.len() * 4, WAIT).await;

    let mut non_owner_answers = 0;
    for id in &ids {
        let path = format!("/api/v1/traces/{id}");
        let local = format!("{path}?scope=local");
        let mut owners = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if http_get(n.admin, &local).await.status == 200 {
                owners.push(i);
            }
        }
        assert_eq!(
            owners.len(),
            1,
            "trace {id}: exactly one node knows it locally"
        );
        let owner_view = admin_get(&nodes[owners[0]], &path).await;
        assert_eq!(owner_view["state"], "kept", "{owner_view}");
        for (i, n) in nodes.iter().enumerate() {
            let view = admin_get(n, &path).await;
            for field in ["trace_id", "state", "tenant", "span_count", "rule"] {
                assert_eq!(view[field], owner_view[field], "node {i}, {field}: {view}");
            }
            if i != owners[0] {
                non_owner_answers += 1;
                assert!(
                    view["owner"].is_string(),
                    "a forwarded answer names the owner: {view}"
                );
            }
        }
    }
    assert_eq!(non_owner_answers, ids.len() * 2);

    // Each member's admin address, as it tells it over the peer protocol, is shown.
    let admin = format!("http://{}", nodes[0].admin);
    let table = run_tailsift(&["cluster", "--admin", &admin], Duration::from_secs(10)).await;
    for n in &nodes {
        assert!(
            table.stdout.contains(&n.admin.to_string()),
            "`tailsift cluster` shows {}:\n{}",
            n.admin,
            table.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scoped_reload_reports_every_node_and_ends_a_rules_drift() {
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    // Every node has its own rules file, as on separate machines.
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (dir, port) in dirs.iter().zip(&ports) {
        let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
        let config = node_config(backend.grpc_addr(), &rules, &static_section(*port, &ports));
        nodes.push(TailsiftProcess::start(&config).await);
    }
    let drift = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tailsift_cluster_rules_drift "))
            .map(|l| l.trim_end().ends_with(" 1"))
    };
    let wait_drift = |want: bool| {
        let nodes = &nodes;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let text = http_get(nodes[0].admin, "/metrics").await.text();
                if drift(&text) == Some(want) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "tailsift_cluster_rules_drift never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_drift(false).await;

    // One node's file changes and only it reloads: the cluster drifts.
    let changed = "[[rule]]\nname = \"half\"\nsample_rate = 2\n";
    std::fs::write(dirs[2].path().join("rules.toml"), changed).unwrap();
    let reply = admin_send(&nodes[2], "POST", "/api/v1/rules/reload", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_drift(true).await;
    nodes[0]
        .wait_for_log("cluster members run different rules", WAIT)
        .await;

    // The others get the same file; one cluster-scoped reload brings every node to it.
    for dir in &dirs[..2] {
        std::fs::write(dir.path().join("rules.toml"), changed).unwrap();
    }
    let reply = admin_send(&nodes[1], "POST", "/api/v1/rules/reload?scope=cluster", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = json_of(reply).await;
    let reported: BTreeSet<String> = answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["reloaded"] == true)
        .filter_map(|n| n["address"].as_str().map(str::to_string))
        .collect();
    let all: BTreeSet<String> = ports.iter().map(|p| peer_addr(*p)).collect();
    assert_eq!(reported, all, "{answer}");
    let hashes: BTreeSet<String> = {
        let mut h = BTreeSet::new();
        for n in &nodes {
            h.insert(admin_get(n, "/api/v1/rules").await["source_hash"].to_string());
        }
        h
    };
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    wait_drift(false).await;

    // A bad file on one node: the cluster-scoped reload says which node refused it.
    std::fs::write(dirs[0].path().join("rules.toml"), "[[rule]\n").unwrap();
    let reply = admin_send(&nodes[1], "POST", "/api/v1/rules/reload?scope=cluster", "").await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let answer = json_of(reply).await;
    let refused: Vec<&str> = answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["reloaded"] == false)
        .filter_map(|n| n["address"].as_str())
        .collect();
    assert_eq!(refused, vec![peer_addr(ports[0]).as_str()], "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_a_tag_change_gets_the_tag_from_its_peers() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", DROP_ALL_RULES);
    let (mut nodes, ports) = cluster_of(3, &backend, &rules).await;

    // Node C is down while acme is tagged on A: A reports that C did not answer.
    nodes[2].kill();
    let reply = admin_send(
        &nodes[0],
        "PUT",
        "/api/v1/tenants/acme/tag",
        r#"{"for": "2h"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = json_of(reply).await;
    let missed: Vec<&str> = answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["answered"] == false)
        .filter_map(|n| n["address"].as_str())
        .collect();
    assert_eq!(missed, vec![peer_addr(ports[2]).as_str()], "{answer}");

    // C comes back (with an empty tags file) and copies the tag from a peer within a second.
    let section = static_section(ports[2], &ports);
    let restarted =
        TailsiftProcess::start(&node_config(backend.grpc_addr(), &rules, &section)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let tag = loop {
        let tags = admin_get(&restarted, "/api/v1/tenant-tags").await;
        if let Some(t) = tags["tags"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["tenant"] == "acme").cloned())
        {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tag after 1 s: {tags}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let original = admin_get(&nodes[0], "/api/v1/tenant-tags").await["tags"][0].clone();
    assert_eq!(
        tag["set_at_unix_ms"], original["set_at_unix_ms"],
        "the same tag, not a new one"
    );
    assert_eq!(tag["expires_at_unix_ms"], original["expires_at_unix_ms"]);

    // And it applies: acme's traces sent to the restarted node are kept.
    let ids = send_traces(&[restarted.grpc], "acme", 9, 10).await;
    backend.wait_for_spans(ids.len() * 4, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_is_reported_as_silent_without_holding_up_the_answer() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let (nodes, ports) = cluster_of(3, &backend, &rules).await;
    send_traces(&[nodes[0].grpc], "acme", 7, 5).await;
    nodes[2].signal("STOP");

    let started = tokio::time::Instant::now();
    let cluster = admin_get(&nodes[0], "/api/v1/tenants?window=all&scope=cluster").await;
    let took = started.elapsed();
    let tag = admin_send(&nodes[1], "PUT", "/api/v1/tenants/acme/tag", "{}").await;
    let tag_took = started.elapsed() - took;
    nodes[2].signal("CONT");

    // Each member gets 2 s; the frozen one is named, the others' counts are there.
    assert!(
        took < Duration::from_secs(3),
        "the cluster answer took {took:?}"
    );
    assert!(
        tag_took < Duration::from_secs(3),
        "the tag answer took {tag_took:?}"
    );
    let silent: Vec<&str> = cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["answered"] == false)
        .filter_map(|n| n["address"].as_str())
        .collect();
    assert_eq!(silent, vec![peer_addr(ports[2]).as_str()], "{cluster}");
    assert_eq!(cluster["nodes_answered"], 2, "{cluster}");
    assert_eq!(tag.status, 200, "{}", tag.text());
    let tag = json_of(tag).await;
    let missed = tag["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["answered"] == false)
        .count();
    assert_eq!(missed, 1, "{tag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_single_node_the_cluster_scope_answers_as_the_local_one() {
    let backend = RecordingBackend::start().await;
    let node = TailsiftProcess::start_with_rules(backend.grpc_addr(), KEEP_ALL_RULES).await;
    send_traces(&[node.grpc], "acme", 8, 5).await;
    backend.wait_for_spans(20, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut local = admin_get(&node, "/api/v1/tenants?window=all").await;
        let mut cluster = admin_get(&node, "/api/v1/tenants?window=all&scope=cluster").await;
        local["now_unix"] = Value::Null;
        cluster["now_unix"] = Value::Null;
        if local == cluster {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{cluster} != {local}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = admin_send(&node, "POST", "/api/v1/rules/reload?scope=cluster", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(json_of(reply).await, serde_json::json!({"reloaded": true}));
    let reply = http_get(node.admin, "/api/v1/tenants?scope=everywhere").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
}
