//! Micro-benchmarks of one buffer shard's trace table at a realistic held population
//! (~200k spans in ~20k traces of 10 spans, ~350 bytes each): insert per span, expire per
//! span, and insert + expire + decide + remember per span.
//! `cargo bench --bench table`; numbers and how to read them are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use tailsift::buffer::table::{Limits, Ready, Table};
use tailsift::decide::Decider;
use tailsift::model::{Origin, SpanIndex, SpanRecord, TenantId, TraceId};
use tailsift::rules::RuleSet;
use tokio::time::Instant;

/// Traces per step, spans per trace: one SDK-sized batch of 520 spans.
const TRACES_PER_STEP: u64 = 52;
const SPANS_PER_TRACE: u64 = 10;
const SPANS_PER_STEP: u64 = TRACES_PER_STEP * SPANS_PER_TRACE;
/// Time between steps; with a 2 s root grace the table holds 400 steps ≈ 208k spans.
const STEP: Duration = Duration::from_millis(5);

/// Builds spans cheaply: slices of one shared body (a reference count), only the index
/// differs; for the memory measurement every batch gets its own body.
struct Workload {
    payload: Bytes,
    origin: Arc<Origin>,
    body: Bytes,
    fresh_bodies: bool,
    step: u32,
    start: Instant,
}

impl Workload {
    fn new() -> Self {
        Workload {
            payload: Bytes::from(vec![7u8; 350]),
            origin: Arc::new(Origin {
                tenant: TenantId::new("initech"),
                resource: Bytes::new(),
                resource_schema_url: Bytes::new(),
                scope: Bytes::new(),
                scope_schema_url: Bytes::new(),
                content_hash: 0,
                pass_through: Default::default(),
            }),
            body: Bytes::from(vec![7u8; 350 * SPANS_PER_STEP as usize]),
            fresh_bodies: false,
            step: 0,
            start: Instant::now(),
        }
    }

    fn span(&self, body: &Bytes, at: usize, t: u64, s: u64) -> SpanRecord {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&t.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        id[8..].copy_from_slice(&(t.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1).to_le_bytes());
        let mut index = SpanIndex {
            trace_id: TraceId(id),
            span_id: (t * 100 + s + 1).to_le_bytes(),
            ..Default::default()
        };
        if s != 0 {
            index.parent_span_id = (t * 100 + 1).to_le_bytes();
        }
        let len = self.payload.len();
        SpanRecord {
            bytes: body.slice(at * len..(at + 1) * len),
            origin: self.origin.clone(),
            index,
        }
    }

    /// The next batch and its time. A trace's 10 spans come in three requests, as three
    /// services would send them (deepest tier first, root last): 4 spans of the traces of this
    /// step, 3 of the previous step's, 3 (with the root) of the step before.
    fn batch(&mut self) -> (Vec<SpanRecord>, Instant) {
        let k = u64::from(self.step);
        // One request body the spans are slices of, as at ingest.
        let body = if self.fresh_bodies {
            Bytes::from(vec![7u8; self.payload.len() * SPANS_PER_STEP as usize])
        } else {
            self.body.clone()
        };
        let mut spans = Vec::with_capacity(SPANS_PER_STEP as usize);
        for (back, range) in [(0u64, 6..10u64), (1, 3..6), (2, 0..3)] {
            let Some(group) = k.checked_sub(back) else {
                continue;
            };
            for i in 0..TRACES_PER_STEP {
                let t = group * TRACES_PER_STEP + i + 1;
                for s in range.clone().rev() {
                    let at = spans.len();
                    spans.push(self.span(&body, at, t, s));
                }
            }
        }
        let now = self.start + STEP * self.step;
        self.step += 1;
        (spans, now)
    }
}

fn limits() -> Limits {
    Limits {
        root_grace: Duration::from_secs(2),
        trace_timeout: Duration::from_secs(30),
        max_spans_per_trace: 10_000,
        max_bytes: 1 << 34,
        decision_cache: 200_000,
    }
}

/// A table filled to its steady state (traces leave as fast as they arrive).
fn steady() -> (Table, Workload, Decider, RuleSet) {
    let mut table = Table::new(limits());
    let mut work = Workload::new();
    let mut decider = Decider::default();
    let rules = RuleSet::builtin();
    let mut out = Vec::new();
    // 2 s of root grace + the decision cache warm: 1,000 steps.
    for _ in 0..1_000 {
        step(&mut table, &mut work, &mut decider, &rules, &mut out);
    }
    (table, work, decider, rules)
}

/// One step: due traces out and decided (remembered), then the next batch in.
fn step(
    table: &mut Table,
    work: &mut Workload,
    decider: &mut Decider,
    rules: &RuleSet,
    out: &mut Vec<Ready>,
) {
    let (batch, now) = work.batch();
    table.expire(now, out);
    decide_all(table, decider, rules, out);
    table.insert(batch, now, out);
    decide_all(table, decider, rules, out);
}

fn decide_all(table: &mut Table, decider: &mut Decider, rules: &RuleSet, out: &mut Vec<Ready>) {
    for r in out.drain(..) {
        if let Ready::Trace { trace: t, .. } = r {
            let d = decider.decide(&t, rules);
            let n = t.spans.len() as u64;
            table.remember(t.trace_id, d, t.tenant, n);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_per_span");
    g.throughput(Throughput::Elements(SPANS_PER_STEP));

    g.bench_function("insert_520_spans_200k_held", |b| {
        let (mut table, mut work, mut decider, rules) = steady();
        let mut out = Vec::new();
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let (batch, now) = work.batch();
                table.expire(now, &mut out);
                decide_all(&mut table, &mut decider, &rules, &mut out);
                let began = std::time::Instant::now();
                table.insert(batch, now, &mut out);
                spent += began.elapsed();
                decide_all(&mut table, &mut decider, &rules, &mut out);
            }
            spent
        })
    });

    g.bench_function("expire_520_spans_200k_held", |b| {
        let (mut table, mut work, mut decider, rules) = steady();
        let mut out = Vec::new();
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let (batch, now) = work.batch();
                let began = std::time::Instant::now();
                table.expire(now, &mut out);
                spent += began.elapsed();
                decide_all(&mut table, &mut decider, &rules, &mut out);
                table.insert(batch, now, &mut out);
                decide_all(&mut table, &mut decider, &rules, &mut out);
            }
            spent
        })
    });

    g.bench_function("insert_expire_decide_520_spans_200k_held", |b| {
        let (mut table, mut work, mut decider, rules) = steady();
        let mut out = Vec::new();
        b.iter_custom(|iters| {
            let began = std::time::Instant::now();
            for _ in 0..iters {
                step(&mut table, &mut work, &mut decider, &rules, &mut out);
            }
            began.elapsed()
        })
    });
    g.finish();
}

/// Resident bytes per buffered span (`TABLE_RSS=1 cargo bench --bench table`): fills a table
/// with ~1M spans of 404 bytes (each batch its own body, as requests are) and divides the RSS
/// growth by the spans held.
fn resident_bytes_per_span() {
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }
    let mut table = Table::new(Limits {
        root_grace: Duration::from_secs(3600),
        trace_timeout: Duration::from_secs(3600),
        ..limits()
    });
    let mut work = Workload::new();
    work.payload = Bytes::from(vec![7u8; 404]);
    work.fresh_bodies = true;
    let mut out = Vec::new();
    let before = rss();
    for _ in 0..2_000 {
        let (batch, now) = work.batch();
        table.insert(batch, now, &mut out);
    }
    let after = rss();
    let held = table.occupancy();
    let per_span = (after - before) as f64 / held.spans as f64;
    println!(
        "held {} spans in {} traces; RSS {} -> {} MB; {per_span:.0} B per span ({:.0} B beyond the 404 B payload); size_of SpanRecord {} SpanIndex {}",
        held.spans,
        held.traces,
        before >> 20,
        after >> 20,
        per_span - 404.0,
        std::mem::size_of::<SpanRecord>(),
        std::mem::size_of::<SpanIndex>(),
    );
    assert!(out.is_empty());
}

criterion_group!(benches, bench);

fn main() {
    if std::env::var_os("TABLE_RSS").is_some() {
        resident_bytes_per_span();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
