//! A cluster of real nodes on loopback decides each trace once, with all of its spans, however
//! the spans of a trace are spread over the nodes; forwarding survives a stopped peer and a
//! peer that leaves for good.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use support::cluster::*;
use support::dns::TestDns;
use support::redis::TestRedis;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn default_rules() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.toml"))
}

/// What the test sent: every span id per trace, and the trace's kind.
#[derive(Default)]
struct Sent {
    spans: BTreeMap<String, BTreeSet<String>>,
    must_keep: BTreeSet<String>,
    rest: BTreeSet<[u8; 16]>,
    /// Traces a part of which was sent again after a failed attempt.
    resent: BTreeSet<String>,
}

/// Builds `n` traces of 6 spans (every 7th has an error, every 5th is tenant acme), splits
/// each into 3 parts, and sends every part to a node picked at random, the parts holding a
/// root only once every other part is acknowledged (so no trace is decided on its root before
/// its error span was even sent). Returns what was sent; every request must be acknowledged.
async fn send_spread(nodes: &[SocketAddr], seed: u64, n: usize, rng: &mut Lcg) -> Sent {
    let (sent, phases) = build_spread(seed, n);
    // Two phases (children, then roots), each a list of parts per node.
    let mut per_node: Vec<Vec<Vec<ResourceSpans>>> = vec![vec![Vec::new(); nodes.len()]; 2];
    for (phase, parts) in phases.into_iter().enumerate() {
        for (_, part) in parts {
            per_node[phase][rng.below(nodes.len())].push(part);
        }
    }
    for phase in per_node {
        let mut tasks = Vec::new();
        for (node, parts) in nodes.iter().zip(phase) {
            let node = *node;
            tasks.push(tokio::spawn(async move {
                for chunk in parts.chunks(25) {
                    send_grpc(node, make_request(chunk.to_vec()))
                        .await
                        .unwrap_or_else(|e| panic!("node {node} refused a request: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender task");
        }
    }
    sent
}

/// Builds `n` traces of 6 spans (every 7th has an error, every 5th is tenant acme), each split
/// into 3 parts: what is sent, and the parts in two phases (children first, then the parts
/// holding a root, as a service ends its root span last), each part with its trace id.
fn build_spread(seed: u64, n: usize) -> (Sent, [Vec<(String, ResourceSpans)>; 2]) {
    let mut sent = Sent::default();
    let mut phases: [Vec<(String, ResourceSpans)>; 2] = [Vec::new(), Vec::new()];
    for i in 0..n {
        let id = trace_id_from_seed(seed * 1_000_003 + i as u64);
        let error = i % 7 == 0;
        let tenant = if i % 5 == 0 { "acme" } else { "initech" };
        let trace = make_trace(id, tenant, 6, error, "/api/items");
        let ids: BTreeSet<String> = trace.scope_spans[0]
            .spans
            .iter()
            .map(|s| hex(&s.span_id))
            .collect();
        sent.spans.insert(hex(&id), ids);
        if error || tenant == "acme" {
            sent.must_keep.insert(hex(&id));
        } else {
            sent.rest.insert(id);
        }
        // Part 0 holds the root.
        for (p, part) in split_spans(&trace, 3).into_iter().enumerate() {
            phases[usize::from(p == 0)].push((hex(&id), part));
        }
    }
    (sent, phases)
}

/// The trace ids the `rest` rule (1 in 10, consistent threshold) keeps.
fn rest_kept(ids: &BTreeSet<[u8; 16]>) -> BTreeSet<String> {
    let max = 1u64 << 56;
    let threshold = max - max / 10;
    ids.iter()
        .filter(|id| {
            let mut low = [0u8; 8];
            low.copy_from_slice(&id[8..]);
            u64::from_be_bytes(low) & (max - 1) >= threshold
        })
        .map(|id| hex(id))
        .collect()
}

/// Every span arrived at most once, and all spans of a trace carry one decision.
fn assert_once_with_one_decision(
    backend: &RecordingBackend,
) -> BTreeMap<String, Vec<RecordedSpan>> {
    assert_once_except(backend, &BTreeSet::new())
}

/// Like [`assert_once_with_one_decision`], except that traces in `resent` (a client sent them
/// again after a node died without answering: at-least-once, as with any OTLP receiver) may
/// repeat spans; they still carry one decision. Returns the spans per trace, repeats removed.
fn assert_once_except(
    backend: &RecordingBackend,
    resent: &BTreeSet<String>,
) -> BTreeMap<String, Vec<RecordedSpan>> {
    let mut by_trace = backend.spans_by_trace();
    for (trace, spans) in by_trace.iter_mut() {
        let ids: Vec<String> = spans.iter().map(|s| s.span_id_hex()).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        if resent.contains(trace) {
            let mut seen = BTreeSet::new();
            spans.retain(|s| seen.insert(s.span_id_hex()));
        } else {
            assert_eq!(
                ids.len(),
                unique.len(),
                "trace {trace}: a span arrived twice: {ids:?}"
            );
        }
        let decisions: BTreeSet<(Option<String>, Option<i64>)> = spans
            .iter()
            .map(|s| {
                (
                    s.attr_str("tailsift.rule").map(str::to_string),
                    s.attr_i64("SampleRate"),
                )
            })
            .collect();
        assert_eq!(
            decisions.len(),
            1,
            "trace {trace} was decided more than once: {decisions:?}"
        );
    }
    by_trace
}

/// Every span of every trace in `sent` arrived.
fn assert_all_arrived_whole(
    by_trace: &BTreeMap<String, Vec<RecordedSpan>>,
    sent: &BTreeMap<String, BTreeSet<String>>,
) {
    for (trace, ids) in sent {
        let got: BTreeSet<String> = by_trace
            .get(trace)
            .map(|s| s.iter().map(|s| s.span_id_hex()).collect())
            .unwrap_or_default();
        assert_eq!(&got, ids, "trace {trace} arrived whole");
    }
}

/// Exactly the `expected` traces arrived, each whole (every span `sent` for it), each span once,
/// with one decision.
fn assert_exactly_expected_whole(
    backend: &RecordingBackend,
    expected: &BTreeSet<String>,
    sent: BTreeMap<String, BTreeSet<String>>,
) {
    let by_trace = assert_once_with_one_decision(backend);
    let got: BTreeSet<String> = by_trace.keys().cloned().collect();
    assert_eq!(
        &got, expected,
        "exactly the must-keep and consistently sampled traces"
    );
    let whole: BTreeMap<String, BTreeSet<String>> = sent
        .into_iter()
        .filter(|(t, _)| expected.contains(t))
        .collect();
    assert_all_arrived_whole(&by_trace, &whole);
}

async fn stop_all(nodes: Vec<TailsiftProcess>) {
    for n in &nodes {
        n.sigterm();
    }
    for mut n in nodes {
        let status = n.wait_exit(WAIT).await;
        assert!(status.success(), "node exited with {status:?}\n{}", n.log());
    }
}

async fn cluster_json(node: &TailsiftProcess) -> serde_json::Value {
    let reply = http_get(node.admin, "/api/v1/cluster").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_str(&reply.text()).expect("cluster JSON")
}

/// Spreads 1,500 traces over `nodes` and checks that exactly the error, tagged-tenant and
/// consistently sampled traces arrived, each whole, each span once, with one decision.
async fn assert_spread_decided_once(
    backend: &RecordingBackend,
    nodes: &[TailsiftProcess],
    seed: u64,
) {
    let grpc: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    let mut rng = Lcg(0x9E37_79B9_7F4A_7C15 ^ seed);
    let sent = send_spread(&grpc, seed, 1_500, &mut rng).await;
    let kept_rest = rest_kept(&sent.rest);
    let expected_traces: BTreeSet<String> = sent.must_keep.union(&kept_rest).cloned().collect();
    let expected_spans = expected_traces.len() * 6;
    backend.wait_for_spans(expected_spans, WAIT).await;
    // Nothing more arrives afterwards (no second, partial decision of any trace).
    backend
        .assert_span_count_stays(expected_spans, Duration::from_millis(1_500))
        .await;
    let by_trace = assert_once_with_one_decision(backend);
    let got: BTreeSet<String> = by_trace.keys().cloned().collect();
    assert_eq!(
        got, expected_traces,
        "exactly the error, tagged-tenant and consistently sampled traces"
    );
    for (trace, spans) in &by_trace {
        let ids: BTreeSet<String> = spans.iter().map(|s| s.span_id_hex()).collect();
        assert_eq!(&ids, &sent.spans[trace], "trace {trace} arrived whole");
        let rule = spans[0]
            .attr_str("tailsift.rule")
            .unwrap_or_default()
            .to_string();
        if kept_rest.contains(trace) {
            assert_eq!(rule, "rest");
            assert_eq!(spans[0].attr_i64("SampleRate"), Some(10));
        } else {
            assert!(
                rule == "errors" || rule == "tagged-tenants",
                "{trace}: {rule}"
            );
            assert_eq!(spans[0].attr_i64("SampleRate"), Some(1));
        }
    }
}

/// Waits until `node` lists exactly `members` (sorted advertise addresses).
async fn wait_for_members(node: &TailsiftProcess, members: &[String], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let view = cluster_json(node).await;
        if view["members"] == serde_json::json!(members) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node does not list {members:?} after {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sorted_peer_addrs(ports: &[u16]) -> Vec<String> {
    let mut m: Vec<String> = ports.iter().map(|p| peer_addr(*p)).collect();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_cluster_decides_each_trace_once_with_all_its_spans_wherever_they_arrive() {
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let sections: Vec<String> = ports.iter().map(|p| static_section(*p, &ports)).collect();
    let nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;

    let view = cluster_json(&nodes[0]).await;
    let expected_members = sorted_peer_addrs(&ports);
    assert_eq!(view["self"], peer_addr(ports[0]));
    assert_eq!(view["members"], serde_json::json!(expected_members));

    assert_spread_decided_once(&backend, &nodes, 11).await;

    let view = cluster_json(&nodes[1]).await;
    let forwarded: u64 = view["forward_queues"]
        .as_array()
        .expect("forward queues")
        .iter()
        .map(|q| q["forwarded_spans"].as_u64().unwrap_or(0))
        .sum();
    assert!(forwarded > 0, "node 1 forwarded nothing: {view}");
    assert_eq!(view["consistent"], true, "{view}");
    let shares: f64 = view["member_details"]
        .as_array()
        .expect("member details")
        .iter()
        .map(|m| m["share"].as_f64().unwrap_or(0.0))
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "shares add up to {shares}");
    let admin = format!("http://{}", nodes[2].admin);
    let table = run_tailsift(&["cluster", "--admin", &admin], Duration::from_secs(10)).await;
    for m in &expected_members {
        assert!(
            table.stdout.contains(m.as_str()),
            "`tailsift cluster` lists {m}:\n{}",
            table.stdout
        );
    }
    assert!(table.stdout.contains("(self)"), "{}", table.stdout);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_cluster_decides_each_trace_once_and_follows_the_records_when_they_change() {
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let dns = TestDns::start(&ports).await;
    let sections: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "[cluster]\nmembership = \"dns\"\npeer_listen = \"127.0.0.1:{p}\"\nadvertise = \"{}\"\ndns_name = \"{}\"\ndns_server = \"{}\"\ndns_interval = \"200ms\"\nforward_retry_max = \"500ms\"\n",
                peer_addr(*p),
                support::dns::SRV_NAME,
                dns.addr
            )
        })
        .collect();
    let nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports), Duration::from_secs(5)).await;
    }
    let view = cluster_json(&nodes[0]).await;
    assert_eq!(view["membership"], "dns", "{view}");
    assert_eq!(view["provider"]["healthy"], true, "{view}");

    assert_spread_decided_once(&backend, &nodes, 12).await;

    // The records drop the third node: the others follow within a few intervals.
    dns.set_ports(&ports[..2]);
    for n in &nodes[..2] {
        wait_for_members(n, &sorted_peer_addrs(&ports[..2]), Duration::from_secs(3)).await;
    }
    assert!(dns.queries() > 0);
    stop_all(nodes).await;
}

fn redis_section(port: u16, url: &str) -> String {
    format!(
        "[cluster]\nmembership = \"redis\"\npeer_listen = \"127.0.0.1:{port}\"\nadvertise = \"{}\"\nredis_url = \"{url}\"\nmember_ttl = \"2s\"\nforward_retry_max = \"500ms\"\n",
        peer_addr(port)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_decides_each_trace_once_and_sees_a_leave_at_once_and_a_crash_within_the_ttl()
{
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let sections: Vec<String> = ports
        .iter()
        .map(|p| redis_section(*p, &redis.url()))
        .collect();
    let mut nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports), Duration::from_secs(5)).await;
    }
    let view = cluster_json(&nodes[0]).await;
    assert_eq!(view["membership"], "redis", "{view}");
    assert_eq!(view["provider"]["healthy"], true, "{view}");

    assert_spread_decided_once(&backend, &nodes, 13).await;

    // A node that stops deregisters: the others drop it within a second.
    let leaver = nodes.pop().expect("node 2");
    leaver.sigterm();
    let mut leaver = leaver;
    assert!(leaver.wait_exit(WAIT).await.success(), "{}", leaver.log());
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports[..2]), Duration::from_secs(1)).await;
    }
    // A node that is killed cannot deregister: its registration expires (member_ttl 2s).
    let mut crashed = nodes.pop().expect("node 1");
    crashed.kill();
    wait_for_members(
        &nodes[0],
        &sorted_peer_addrs(&ports[..1]),
        Duration::from_secs(4),
    )
    .await;
    drop(crashed);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_of_ten_seconds_under_load_keeps_the_last_membership_and_loses_nothing() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let ports = free_ports(3);
    let sections: Vec<String> = ports
        .iter()
        .map(|p| redis_section(*p, &redis.url()))
        .collect();
    let nodes = start_nodes(backend.grpc_addr(), &rules, &sections).await;
    let all = sorted_peer_addrs(&ports);
    for n in &nodes {
        wait_for_members(n, &all, Duration::from_secs(5)).await;
    }
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    let mut rng = Lcg(99);
    let mut sent = send_rounds(&targets, 21, 3, &mut rng).await;
    redis.signal("STOP");
    let outage_started = tokio::time::Instant::now();
    let mut round = 0;
    while outage_started.elapsed() < Duration::from_secs(10) {
        sent.extend(send_rounds(&targets, 22 + round, 5, &mut rng).await);
        round += 1;
    }
    let view = cluster_json(&nodes[0]).await;
    assert_eq!(
        view["provider"]["healthy"], false,
        "the outage is reported: {view}"
    );
    assert_eq!(
        view["members"],
        serde_json::json!(all),
        "the last membership stays: {view}"
    );
    redis.signal("CONT");
    sent.extend(send_rounds(&targets, 90, 5, &mut rng).await);
    let total: usize = sent.values().map(BTreeSet::len).sum();
    backend.wait_for_spans(total, WAIT).await;
    backend
        .assert_span_count_stays(total, Duration::from_secs(1))
        .await;
    // Everyone re-registered: the membership is whole and healthy again.
    for n in &nodes {
        wait_for_members(n, &all, Duration::from_secs(5)).await;
    }
    let view = cluster_json(&nodes[1]).await;
    assert_eq!(view["provider"]["healthy"], true, "{view}");
    assert!(
        view["provider"]["errors"].as_u64().unwrap_or(0) > 0,
        "{view}"
    );
    stop_all(nodes).await;
    assert_all_arrived_whole(&assert_once_with_one_decision(&backend), &sent);
}

/// Keeps sending spread traces (keep-all rules) to `targets` for `rounds`, returning the span
/// ids of every trace whose requests were all acknowledged.
async fn send_rounds(
    targets: &[SocketAddr],
    seed: u64,
    rounds: usize,
    rng: &mut Lcg,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for r in 0..rounds {
        let sent = send_spread(targets, seed * 1000 + r as u64, 100, rng).await;
        all.extend(sent.spans);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stopped_for_five_seconds_loses_and_duplicates_nothing_once_it_is_back() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let ports = free_ports(3);
    let sections: Vec<String> = ports.iter().map(|p| static_section(*p, &ports)).collect();
    let nodes = start_nodes(backend.grpc_addr(), &rules, &sections).await;
    // Clients reach nodes 0 and 1; node 2 owns a third of the traces and is frozen for 5 s.
    let targets = [nodes[0].grpc, nodes[1].grpc];
    let mut rng = Lcg(42);
    let mut sent = send_rounds(&targets, 1, 5, &mut rng).await;
    nodes[2].signal("STOP");
    let during = send_rounds(&targets, 2, 10, &mut rng).await;
    let queued: i64 = cluster_json(&nodes[0]).await["forward_queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["queued_spans"].as_i64().unwrap_or(0))
        .sum();
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(Duration::from_millis(100 * 10)))
        .await;
    nodes[2].signal("CONT");
    sent.extend(during);
    sent.extend(send_rounds(&targets, 3, 5, &mut rng).await);
    let total: usize = sent.values().map(BTreeSet::len).sum();
    backend.wait_for_spans(total, WAIT).await;
    backend
        .assert_span_count_stays(total, Duration::from_secs(1))
        .await;
    stop_all(nodes).await;
    assert_all_arrived_whole(&assert_once_with_one_decision(&backend), &sent);
    assert!(queued > 0, "the stopped peer's share was queued meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queued_share_of_a_peer_removed_from_membership_reaches_the_new_owner() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let ports = free_ports(3);
    let sections: Vec<String> = ports.iter().map(|p| static_section(*p, &ports)).collect();
    let mut nodes = start_nodes(backend.grpc_addr(), &rules, &sections).await;
    // Node 2 dies; the others keep its share queued while it is still listed.
    nodes[2].kill();
    let targets = [nodes[0].grpc, nodes[1].grpc];
    let mut rng = Lcg(7);
    let sent = send_rounds(&targets, 5, 5, &mut rng).await;
    let view = cluster_json(&nodes[0]).await;
    let queued: i64 = view["forward_queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["queued_spans"].as_i64().unwrap_or(0))
        .sum();
    assert!(queued > 0, "the dead peer's share is queued: {view}");
    // The operator removes it: SIGHUP re-reads cluster.peers.
    let two = &ports[..2];
    let dead = nodes.pop().expect("node 2");
    drop(dead);
    for (node, port) in nodes.iter().zip(two) {
        std::fs::write(
            node.config_path(),
            node_config(backend.grpc_addr(), &rules, &static_section(*port, two)),
        )
        .expect("rewrite config");
        node.sighup();
    }
    let total: usize = sent.values().map(BTreeSet::len).sum();
    backend.wait_for_spans(total, WAIT).await;
    let view = cluster_json(&nodes[0]).await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(2), "{view}");
    let rerouted: u64 = view["forward_queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["rerouted_spans"].as_u64().unwrap_or(0))
        .sum();
    assert!(rerouted > 0, "{view}");
    stop_all(nodes).await;
    assert_all_arrived_whole(&assert_once_with_one_decision(&backend), &sent);
}

/// Polls `node`'s cluster view until `check` holds, panicking with `what` after `within`.
async fn wait_for_view(
    node: &TailsiftProcess,
    within: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let view = cluster_json(node).await;
        if check(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not seen within {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_that_reach_a_node_which_became_the_owner_after_the_decision_follow_it() {
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let (a, b, c) = (ports[0], ports[1], ports[2]);
    // A and B form the cluster; C already lists all three and waits to be added.
    let sections = [
        static_section(a, &[a, b]),
        static_section(b, &[a, b]),
        static_section(c, &ports),
    ];
    let nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;
    let mut rng = Lcg(0xDEC1DE);
    let mut late = Vec::new();
    let mut sent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut per_node: Vec<Vec<ResourceSpans>> = vec![Vec::new(); 2];
    for i in 0..150u64 {
        let id = trace_id_from_seed(77_000 + i);
        // An error trace: kept by the `errors` rule. One child is held back to arrive late.
        let mut trace = make_trace(id, "initech", 6, true, "/api/items");
        let held_back = trace.scope_spans[0].spans.remove(3);
        let ids: BTreeSet<String> = trace.scope_spans[0]
            .spans
            .iter()
            .chain(std::iter::once(&held_back))
            .map(|s| hex(&s.span_id))
            .collect();
        sent.insert(hex(&id), ids);
        let mut late_part = trace.clone();
        late_part.scope_spans[0].spans = vec![held_back];
        late.push(late_part);
        per_node[rng.below(2)].push(trace);
    }
    for (node, parts) in nodes[..2].iter().zip(per_node) {
        for chunk in parts.chunks(25) {
            send_grpc(node.grpc, make_request(chunk.to_vec()))
                .await
                .expect("request acknowledged");
        }
    }
    backend.wait_for_spans(150 * 5, WAIT).await;
    let decided_at = tokio::time::Instant::now();

    // C joins: A and B re-read their peers and hand C the decisions for the traces it owns now.
    for (node, port) in nodes[..2].iter().zip([a, b]) {
        std::fs::write(
            node.config_path(),
            node_config(
                backend.grpc_addr(),
                &default_rules(),
                &static_section(port, &ports),
            ),
        )
        .expect("rewrite config");
        node.sighup();
    }
    let view = wait_for_view(
        &nodes[2],
        Duration::from_secs(5),
        "decisions handed to C",
        |v| v["handoff_decisions_received"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    let handed = view["handoff_decisions_received"].as_u64().unwrap_or(0);
    assert!(
        (20..=100).contains(&handed),
        "C owns about a third of the 150 traces: {view}"
    );
    for n in &nodes[..2] {
        wait_for_members(n, &sorted_peer_addrs(&ports), Duration::from_secs(5)).await;
    }

    // Five seconds after the decisions, the late spans arrive at A and B.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(decided_at.elapsed())).await;
    for chunk in late.chunks(25) {
        let target = nodes[rng.below(2)].grpc;
        send_grpc(target, make_request(chunk.to_vec()))
            .await
            .expect("late spans acknowledged");
    }
    backend.wait_for_spans(150 * 6, WAIT).await;
    backend
        .assert_span_count_stays(150 * 6, Duration::from_millis(1_500))
        .await;
    stop_all(nodes).await;
    let by_trace = assert_once_with_one_decision(&backend);
    assert_all_arrived_whole(&by_trace, &sent);
    for (trace, spans) in &by_trace {
        for s in spans {
            assert_eq!(
                s.attr_str("tailsift.rule"),
                Some("errors"),
                "trace {trace}: a late span followed another decision"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_with_sigterm_under_load_hands_every_trace_to_the_others() {
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let sections: Vec<String> = ports.iter().map(|p| static_section(*p, &ports)).collect();
    let mut nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    let mut rng = Lcg(0x1EAF);
    let mut sent = Sent::default();
    for r in 0..3 {
        let s = send_spread(&all, 300 + r, 200, &mut rng).await;
        sent.spans.extend(s.spans);
        sent.must_keep.extend(s.must_keep);
        sent.rest.extend(s.rest);
    }
    // Node 2 holds the traces of the last round (root grace 1 s) when it is told to stop;
    // the others keep receiving meanwhile.
    let leaver = nodes.pop().expect("node 2");
    leaver.sigterm();
    let survivors: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    for r in 0..3 {
        let s = send_spread(&survivors, 400 + r, 200, &mut rng).await;
        sent.spans.extend(s.spans);
        sent.must_keep.extend(s.must_keep);
        sent.rest.extend(s.rest);
    }
    let mut leaver = leaver;
    let status = leaver.wait_exit(WAIT).await;
    let log = leaver.log();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("everything this node held is with its new owners"),
        "the leaver handed everything over:\n{log}"
    );
    assert!(!log.contains("deciding the rest here"), "{log}");

    let kept_rest = rest_kept(&sent.rest);
    let expected: BTreeSet<String> = sent.must_keep.union(&kept_rest).cloned().collect();
    backend.wait_for_spans(expected.len() * 6, WAIT).await;
    backend
        .assert_span_count_stays(expected.len() * 6, Duration::from_millis(1_500))
        .await;
    let view = cluster_json(&nodes[0]).await;
    assert_eq!(
        view["members"],
        serde_json::json!(sorted_peer_addrs(&ports[..2])),
        "the survivors route around the leaver at once: {view}"
    );
    let received: u64 = {
        let mut total = 0;
        for n in &nodes {
            total += cluster_json(n).await["handoff_traces_received"]
                .as_u64()
                .unwrap_or(0);
        }
        total
    };
    assert!(received > 0, "the leaver handed buffered traces over");
    stop_all(nodes).await;
    assert_exactly_expected_whole(&backend, &expected, sent.spans);
}

/// The nodes clients can reach now, as a balancer sees them.
type Live = std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>;

/// How a balanced send ended.
#[derive(PartialEq)]
enum Delivery {
    /// The first node acknowledged it.
    Once,
    /// Acknowledged after a failed attempt (which may have been held before it failed).
    Resent,
    /// Nobody acknowledged it.
    Lost,
}

/// Sends `request` to a live node, and on a refusal to the next one, as an OTLP client behind
/// a balancer retries.
async fn send_balanced(live: &Live, request: ExportTraceServiceRequest, pick: usize) -> Delivery {
    for attempt in 0..6 {
        let targets = live.lock().unwrap().clone();
        if targets.is_empty() {
            return Delivery::Lost;
        }
        let target = targets[(pick + attempt) % targets.len()];
        if send_grpc(target, request.clone()).await.is_ok() {
            return if attempt == 0 {
                Delivery::Once
            } else {
                Delivery::Resent
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Delivery::Lost
}

/// Like [`send_spread`], to whatever nodes are live at each request, retrying refusals on
/// another node; returns what was sent and the traces some part of which was never
/// acknowledged.
async fn send_spread_balanced(
    live: &Live,
    seed: u64,
    n: usize,
    rng: &mut Lcg,
) -> (Sent, BTreeSet<String>) {
    let (mut sent, phases) = build_spread(seed, n);
    let mut unacked = BTreeSet::new();
    for phase in phases {
        for chunk in phase.chunks(20) {
            let request = make_request(chunk.iter().map(|(_, p)| p.clone()).collect());
            match send_balanced(live, request, rng.below(16)).await {
                Delivery::Once => {}
                Delivery::Resent => sent.resent.extend(chunk.iter().map(|(t, _)| t.clone())),
                Delivery::Lost => unacked.extend(chunk.iter().map(|(t, _)| t.clone())),
            }
        }
    }
    (sent, unacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_out_two_to_four_and_back_in_under_load_tears_no_trace() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let backend = RecordingBackend::start().await;
    let ports = free_ports(4);
    let section = |i: usize| redis_section(ports[i], &redis.url());
    let mut nodes = start_nodes(
        backend.grpc_addr(),
        &default_rules(),
        &[section(0), section(1)],
    )
    .await;
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports[..2]), Duration::from_secs(5)).await;
    }
    let live: Live = std::sync::Arc::new(std::sync::Mutex::new(
        nodes.iter().map(|n| n.grpc).collect(),
    ));
    let (stop, load) = start_load(&live, 51);
    let config = |i: usize| node_config(backend.grpc_addr(), &default_rules(), &section(i));
    // Scale out: 2 → 3 → 4, each joining under load.
    for i in 2..4 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let node = TailsiftProcess::start(&config(i)).await;
        live.lock().unwrap().push(node.grpc);
        nodes.push(node);
        for n in &nodes {
            wait_for_members(n, &sorted_peer_addrs(&ports[..=i]), Duration::from_secs(5)).await;
        }
    }
    // Scale in: 4 → 3 → 2 by SIGTERM; the balancer stops sending to a node as it goes.
    let mut leavers = Vec::new();
    for i in (2..4).rev() {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let mut node = nodes.pop().expect("node");
        live.lock().unwrap().retain(|a| *a != node.grpc);
        node.sigterm();
        let status = node.wait_exit(WAIT).await;
        assert!(status.success(), "{}", node.log());
        for n in &nodes {
            wait_for_members(n, &sorted_peer_addrs(&ports[..i]), Duration::from_secs(2)).await;
        }
        leavers.push(node);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, unacked) = load.await.expect("load");
    let sent = merge(&rounds);
    assert!(
        unacked.is_empty(),
        "every request found a live node: {} traces unacknowledged",
        unacked.len()
    );

    let kept_rest = rest_kept(&sent.rest);
    let expected: BTreeSet<String> = sent.must_keep.union(&kept_rest).cloned().collect();
    backend.wait_for_spans(expected.len() * 6, WAIT).await;
    backend
        .assert_span_count_stays(expected.len() * 6, Duration::from_millis(1_500))
        .await;
    let mut handed = 0;
    for n in &nodes {
        handed += cluster_json(n).await["handoff_traces_received"]
            .as_u64()
            .unwrap_or(0);
    }
    for l in &leavers {
        let log = l.log();
        assert!(
            log.contains("everything this node held is with its new owners"),
            "a leaver handed everything over:\n{log}"
        );
    }
    eprintln!(
        "scale test: {} traces sent, {} expected at the backend, {handed} traces handed over to the two survivors",
        sent.spans.len(),
        expected.len()
    );
    stop_all(nodes).await;
    assert_exactly_expected_whole(&backend, &expected, sent.spans);
}

/// A running balanced load: set the flag to stop it; the task returns what was sent, round
/// by round, and the traces not acknowledged.
type Load = (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<(Vec<Sent>, BTreeSet<String>)>,
);

/// Runs the balanced load until stopped.
fn start_load(live: &Live, seed: u64) -> Load {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = {
        let live = live.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = Lcg(seed);
            let mut rounds = Vec::new();
            let mut unacked = BTreeSet::new();
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, u) =
                    send_spread_balanced(&live, seed * 100_000 + round, 60, &mut rng).await;
                rounds.push(s);
                unacked.extend(u);
                round += 1;
            }
            (rounds, unacked)
        })
    };
    (stop, task)
}

fn merge(rounds: &[Sent]) -> Sent {
    let mut all = Sent::default();
    for s in rounds {
        all.spans.extend(s.spans.clone());
        all.must_keep.extend(s.must_keep.clone());
        all.rest.extend(s.rest.clone());
        all.resent.extend(s.resent.clone());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_tears_no_trace() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let all = sorted_peer_addrs(&ports);
    let config = |i: usize| {
        node_config(
            backend.grpc_addr(),
            &default_rules(),
            &redis_section(ports[i], &redis.url()),
        )
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(TailsiftProcess::start(&config(i)).await);
    }
    for n in &nodes {
        wait_for_members(n, &all, Duration::from_secs(5)).await;
    }
    let live: Live = std::sync::Arc::new(std::sync::Mutex::new(
        nodes.iter().map(|n| n.grpc).collect(),
    ));
    let (stop, load) = start_load(&live, 61);
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let old = nodes[i].grpc;
        live.lock().unwrap().retain(|a| *a != old);
        nodes[i].sigterm();
        let status = nodes[i].wait_exit(WAIT).await;
        assert!(status.success(), "{}", nodes[i].log());
        assert!(
            nodes[i]
                .log()
                .contains("everything this node held is with its new owners"),
            "{}",
            nodes[i].log()
        );
        nodes[i] = TailsiftProcess::start(&config(i)).await;
        live.lock().unwrap().push(nodes[i].grpc);
        for n in &nodes {
            wait_for_members(n, &all, Duration::from_secs(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, unacked) = load.await.expect("load");
    assert!(
        unacked.is_empty(),
        "{} traces unacknowledged",
        unacked.len()
    );
    let sent = merge(&rounds);
    let kept_rest = rest_kept(&sent.rest);
    let expected: BTreeSet<String> = sent.must_keep.union(&kept_rest).cloned().collect();
    backend.wait_for_spans(expected.len() * 6, WAIT).await;
    backend
        .assert_span_count_stays(expected.len() * 6, Duration::from_millis(1_500))
        .await;
    stop_all(nodes).await;
    assert_exactly_expected_whole(&backend, &expected, sent.spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_costs_only_what_it_held_and_the_survivors_keep_serving() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let sections: Vec<String> = ports
        .iter()
        .map(|p| redis_section(*p, &redis.url()))
        .collect();
    let mut nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports), Duration::from_secs(5)).await;
    }
    let live: Live = std::sync::Arc::new(std::sync::Mutex::new(
        nodes.iter().map(|n| n.grpc).collect(),
    ));
    let (stop, load) = start_load(&live, 71);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut victim = nodes.pop().expect("node 2");
    live.lock().unwrap().retain(|a| *a != victim.grpc);
    victim.kill();
    let killed_at = tokio::time::Instant::now();
    // member_ttl 2 s: the survivors drop it and take over its share.
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports[..2]), Duration::from_secs(5)).await;
    }
    let converged_after = killed_at.elapsed();
    // A second load starts only now, so traces sent after the take-over are told apart.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stop2, load2) = start_load(&live, 72);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop2.store(true, std::sync::atomic::Ordering::Relaxed);
    let (before, unacked_before) = load.await.expect("load");
    let (after, unacked_after) = load2.await.expect("load");
    assert!(
        unacked_before.is_empty() && unacked_after.is_empty(),
        "the survivors kept serving"
    );
    let before = merge(&before);
    let after = merge(&after);

    let expected_after: BTreeSet<String> = after
        .must_keep
        .iter()
        .chain(rest_kept(&after.rest).iter())
        .cloned()
        .collect();
    backend.wait_for_spans(expected_after.len() * 6, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_all(nodes).await;
    drop(victim);
    let resent: BTreeSet<String> = before.resent.union(&after.resent).cloned().collect();
    let by_trace = assert_once_except(&backend, &resent);
    // Traces sent once the survivors had taken over: all of them, whole.
    let whole_after: BTreeMap<String, BTreeSet<String>> = after
        .spans
        .iter()
        .filter(|(t, _)| expected_after.contains(*t))
        .map(|(t, s)| (t.clone(), s.clone()))
        .collect();
    assert_all_arrived_whole(&by_trace, &whole_after);
    // Traces in flight at the crash: some were held by the dead node. Count what is missing.
    let expected_before: BTreeSet<String> = before
        .must_keep
        .iter()
        .chain(rest_kept(&before.rest).iter())
        .cloned()
        .collect();
    let damaged = expected_before
        .iter()
        .filter(|t| by_trace.get(*t).map(|s| s.len()) != Some(6))
        .count();
    eprintln!(
        "kill test: {} traces before the crash ({} expected), {damaged} lost or torn; {} after ({} expected); membership converged {converged_after:?} after the kill",
        before.spans.len(),
        expected_before.len(),
        after.spans.len(),
        expected_after.len()
    );
    // Only traces the dead node owned (a third) can have been held by it.
    assert!(
        damaged <= expected_before.len() / 3,
        "the crash cost more than the dead node's share: {damaged} of {}",
        expected_before.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_speak_mutual_tls_and_refuse_a_plaintext_caller() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new(dir.path());
    let backend = RecordingBackend::start().await;
    let ports = free_ports(3);
    let sections: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let cert = ca.peer_cert(&format!("node{i}"));
            format!(
                "{}[cluster.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
                static_section(*p, &ports),
                cert.cert_file.display(),
                cert.key_file.display(),
                ca.ca_file.display()
            )
        })
        .collect();
    let nodes = start_nodes(backend.grpc_addr(), &default_rules(), &sections).await;
    assert!(
        nodes[0].log().contains("peer protocol speaks mutual TLS"),
        "{}",
        nodes[0].log()
    );

    assert_spread_decided_once(&backend, &nodes, 14).await;
    let view = cluster_json(&nodes[1]).await;
    let forwarded: u64 = view["forward_queues"]
        .as_array()
        .expect("forward queues")
        .iter()
        .map(|q| q["forwarded_spans"].as_u64().unwrap_or(0))
        .sum();
    assert!(forwarded > 0, "spans went between peers over TLS: {view}");
    assert_eq!(
        view["consistent"], true,
        "members answered Info over TLS: {view}"
    );

    // A caller without TLS (and without a member certificate) gets no HTTP/2 connection.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", peer_addr(ports[0])))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut grpc = tonic::client::Grpc::new(channel);
        let info: Result<tonic::Response<()>, tonic::Status> = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.unary(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static("/tailsift.peer.v1.Peer/Info"),
                tonic_prost::ProstCodec::default(),
            )
            .await
        }
        .await;
        assert!(info.is_err(), "a plaintext caller got an answer");
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_peer_that_stops_answering_is_routed_around_and_let_back_in_when_it_returns() {
    let backend = RecordingBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let ports = free_ports(3);
    let sections: Vec<String> = ports
        .iter()
        .map(|p| format!("{}peer_down_after = \"2s\"\n", static_section(*p, &ports)))
        .collect();
    let mut nodes = start_nodes(backend.grpc_addr(), &rules, &sections).await;
    nodes[2].kill();
    let targets = [nodes[0].grpc, nodes[1].grpc];
    let mut rng = Lcg(0xDEAD);
    // The dead peer's share is queued, then, 2 s of failed calls later, sent to the others.
    let sent = send_rounds(&targets, 9, 5, &mut rng).await;
    for n in &nodes[..2] {
        wait_for_view(n, Duration::from_secs(10), "the dead peer suspected", |v| {
            v["suspected"] == serde_json::json!([peer_addr(ports[2])])
        })
        .await;
    }
    let total: usize = sent.values().map(BTreeSet::len).sum();
    backend.wait_for_spans(total, WAIT).await;
    // It comes back on the same address: the others route to it again.
    let dead = nodes.pop().expect("node 2");
    drop(dead);
    nodes.push(
        TailsiftProcess::start(&node_config(backend.grpc_addr(), &rules, &sections[2])).await,
    );
    for n in &nodes {
        wait_for_members(n, &sorted_peer_addrs(&ports), Duration::from_secs(5)).await;
    }
    stop_all(nodes).await;
    assert_all_arrived_whole(&assert_once_with_one_decision(&backend), &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_forwarded_to_their_owner_are_exported_with_their_clients_pass_through_header() {
    let backend = RecordingBackend::start().await;
    let ports = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    let mut nodes = Vec::new();
    for p in &ports {
        let config = node_config(backend.grpc_addr(), &rules, &static_section(*p, &ports)).replace(
            "sample_rate_attribute = \"SampleRate\"",
            "sample_rate_attribute = \"SampleRate\"\npass_through_headers = [\"x-honeycomb-team\"]",
        );
        nodes.push(TailsiftProcess::start(&config).await);
    }
    // Every trace enters at node 0; about half of them are owned by node 1.
    let mut spans = 0;
    for i in 0..40u64 {
        let (tenant, team) = if i % 2 == 0 {
            ("alpha", "team-a-key")
        } else {
            ("beta", "team-b-key")
        };
        let trace = make_trace(trace_id_from_seed(9_000 + i), tenant, 3, false, "/items");
        send_grpc_with(
            nodes[0].grpc,
            make_request(vec![trace]),
            &[("x-honeycomb-team", team)],
            false,
        )
        .await
        .expect("node 0 accepts");
        spans += 3;
    }
    backend.wait_for_spans(spans, WAIT).await;

    let view = cluster_json(&nodes[0]).await;
    let forwarded: u64 = view["forward_queues"]
        .as_array()
        .expect("forward queues")
        .iter()
        .map(|q| q["forwarded_spans"].as_u64().unwrap_or(0))
        .sum();
    assert!(forwarded > 0, "node 0 forwarded nothing: {view}");
    let seen = backend.header_values_by_tenant("x-honeycomb-team", "tenant.id");
    let only = |v: &str| BTreeSet::from([v.to_string()]);
    assert_eq!(seen.get("alpha"), Some(&only("team-a-key")), "{seen:?}");
    assert_eq!(seen.get("beta"), Some(&only("team-b-key")), "{seen:?}");
    assert_eq!(backend.span_count(), spans, "each span once");
    stop_all(nodes).await;
}
