//! Samplers built from rules: key extraction, reload carry-over, snapshots merged for admin.

use std::time::{Duration, Instant};

use super::*;
use crate::rules::{SpanKind, SpanStatus, SpanView, Value, KEY_SEPARATOR};

struct Span {
    attrs: Vec<(&'static str, String)>,
    status: SpanStatus,
}

impl SpanView for Span {
    fn name(&self) -> &str {
        "GET"
    }
    fn status(&self) -> SpanStatus {
        self.status
    }
    fn kind(&self) -> SpanKind {
        SpanKind::Server
    }
    fn duration_nanos(&self) -> u64 {
        1_000
    }
    fn is_root(&self) -> bool {
        true
    }
    fn attribute(&self, key: &str) -> Option<Value<'_>> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| Value::Str(v.as_str()))
    }
}

struct Trace {
    tenant: String,
    root: Span,
}

impl TraceView for Trace {
    type Span = Span;
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn span_count(&self) -> usize {
        1
    }
    fn span(&self, _: usize) -> &Span {
        &self.root
    }
    fn root(&self) -> Option<&Span> {
        Some(&self.root)
    }
    fn duration_nanos(&self) -> u64 {
        1_000
    }
}

fn trace(tenant: &str, route: &str) -> Trace {
    Trace {
        tenant: tenant.into(),
        root: Span {
            attrs: vec![
                ("service.name", "shop".into()),
                ("http.route", route.into()),
            ],
            status: SpanStatus::Ok,
        },
    }
}

const RULES: &str = r#"
[[rule]]
name = "fair"
if = 'tenant = "x"'
sampler = "fair"

[[rule]]
name = "rest"
sampler = "per-key"

[sampler.per-key]
type = "ema_dynamic"
goal_sample_rate = 20
key = ["tenant", "root.service.name", "root.http.route", "root.status"]
adjustment_interval = "15s"

[sampler.budget]
type = "ema_throughput"
goal_traces_per_sec = 500

[sampler.fair]
type = "tenant_fair"
goal_traces_per_sec = 1000
min_per_tenant = 5
weights = { acme = 4 }
within_tenant = "per-key"
"#;

fn rules(src: &str) -> RuleSet {
    match RuleSet::parse(src, "rules.toml") {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

/// Feeds 60 s of traffic over 8 routes (route i sends 2^i traces per second).
fn feed(s: &mut ShardSamplers, name: &str, t0: Instant) {
    let traces: Vec<Trace> = (0..8).map(|i| trace("acme", &format!("/r{i}"))).collect();
    for sec in 0..60u64 {
        for (i, t) in traces.iter().enumerate() {
            for n in 0..(1u64 << i) {
                let now = t0 + Duration::from_secs(sec) + Duration::from_millis(n % 1000);
                s.rate(name, t, now);
            }
        }
    }
}

#[test]
fn keys_are_read_from_the_configured_fields() {
    let set = rules(RULES);
    let SamplerSpec::EmaDynamic { ema, .. } = &set.sampler_specs()["per-key"] else {
        panic!("per-key is ema_dynamic");
    };
    let mut out = String::new();
    ema.key.write_key(&trace("acme", "/pay"), &mut out);
    let s = KEY_SEPARATOR;
    assert_eq!(out, format!("acme{s}shop{s}/pay{s}ok"));
    assert_eq!(KEY_SEPARATOR, cores::KEY_SEPARATOR);
}

#[test]
fn reload_keeps_unchanged_samplers_and_resets_changed_ones() {
    let before = rules(RULES);
    let mut s = ShardSamplers::new(1, None);
    s.sync(&before);
    let t0 = Instant::now();
    feed(&mut s, "per-key", t0);
    let learned = s.rates("per-key").expect("per-key exists");
    assert!(
        learned.iter().any(|(_, r)| r.get() > 2.0),
        "the sampler learned something: {learned:?}"
    );

    // A reload that touches only another sampler and a comment: per-key keeps its rates.
    let edited =
        RULES.replace("goal_traces_per_sec = 500", "goal_traces_per_sec = 50") + "\n# edited\n";
    let other = rules(&edited);
    assert_ne!(other.source_hash(), before.source_hash());
    s.sync(&other);
    assert_eq!(s.rates("per-key"), Some(learned.clone()));

    // Changing its own settings starts it over.
    let changed = rules(&edited.replace("goal_sample_rate = 20", "goal_sample_rate = 10"));
    s.sync(&changed);
    assert_eq!(s.rates("per-key"), Some(Vec::new()));
}

#[test]
fn tenant_fair_resets_when_its_within_sampler_changes() {
    let before = rules(RULES);
    let mut s = ShardSamplers::new(2, None);
    s.sync(&before);
    let t = trace("x", "/a");
    let t0 = Instant::now();
    for i in 0..1000u64 {
        s.rate("fair", &t, t0 + Duration::from_millis(i * 40));
    }
    assert!(!s.rates("fair").expect("fair").is_empty());
    s.sync(&rules(&RULES.replace("root.status\"]", "root.kind\"]")));
    assert_eq!(s.rates("fair"), Some(Vec::new()));
}

#[test]
fn shards_publish_snapshots_that_admin_reads_merged() {
    let set = rules(RULES);
    let board = SamplerBoard::new(2);
    let mut a = ShardSamplers::new(2, Some((board.clone(), 0)));
    let mut b = ShardSamplers::new(2, Some((board.clone(), 1)));
    a.sync(&set);
    b.sync(&set);
    assert!(board.merged("per-key").is_none(), "nothing adjusted yet");
    let t0 = Instant::now();
    feed(&mut a, "per-key", t0);
    feed(&mut b, "per-key", t0);
    let m = board.merged("per-key").expect("published");
    assert_eq!((m.type_name, m.shards), ("ema_dynamic", 2));
    assert_eq!(m.key_fields[2], "root.http.route");
    // The busiest route leads, with both shards' traffic summed (128/s each, as the EMA saw it).
    let top = &m.keys[0];
    assert!(
        top.key.ends_with(&format!("/r7{KEY_SEPARATOR}ok")),
        "{top:?}"
    );
    assert!((top.traces_per_sec - 256.0).abs() < 30.0, "{top:?}");
    assert!(top.rate > 1.0);
    // A reload that changes the sampler withdraws its stale snapshot.
    a.sync(&rules(
        &RULES.replace("goal_sample_rate = 20", "goal_sample_rate = 5"),
    ));
    assert_eq!(board.merged("per-key").map(|m| m.shards), Some(1));
}

#[test]
fn throughput_goals_are_split_between_shards() {
    let set = rules(RULES);
    let mut s = ShardSamplers::new(4, None);
    s.sync(&set);
    let t0 = Instant::now();
    // One key at 1000 traces/s for a node goal of 500/s: this shard's goal is 125/s → rate 8.
    let t = trace("acme", "/a");
    for i in 0..60_000u64 {
        s.rate("budget", &t, t0 + Duration::from_millis(i));
    }
    let rate = s
        .rate("budget", &t, t0 + Duration::from_secs(61))
        .expect("budget");
    assert!((rate.get() - 8.0).abs() < 0.5, "{rate:?}");
}

#[test]
fn throughput_goals_are_cluster_goals_split_between_live_members() {
    let set = rules(RULES);
    let board = SamplerBoard::new(1);
    let mut s = ShardSamplers::new(1, Some((board.clone(), 0)));
    let t = trace("acme", "/a");
    // One key at 1000 traces/s; the cluster goal is 500/s.
    let rate_after_a_minute = |s: &mut ShardSamplers, t0: Instant| {
        s.sync(&set);
        for i in 0..60_000u64 {
            s.rate("budget", &t, t0 + Duration::from_millis(i));
        }
        s.rate("budget", &t, t0 + Duration::from_secs(61))
            .expect("budget")
            .get()
    };
    let t0 = Instant::now();
    // Alone: the node spends the whole 500/s → rate 2.
    let alone = rate_after_a_minute(&mut s, t0);
    assert!((alone - 2.0).abs() < 0.2, "{alone}");
    // Three members: this node spends 500/3 ≈ 167/s → rate 6.
    board.set_members(3);
    let of_three = rate_after_a_minute(&mut s, t0 + Duration::from_secs(100));
    assert!((of_three - 6.0).abs() < 0.5, "{of_three}");
    // One left: 250/s → rate 4.
    board.set_members(2);
    let of_two = rate_after_a_minute(&mut s, t0 + Duration::from_secs(200));
    assert!((of_two - 4.0).abs() < 0.4, "{of_two}");
}
