//! Micro-benchmarks of the per-span hot path, stage by stage: indexing spans from wire bytes,
//! buffer insert + decide, rule evaluation per trace, export encoding, counting, and export
//! compression (gzip / zstd).
//! `cargo bench --bench pipeline`; numbers and how to read them are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tailsift::buffer::table::{Limits, Ready, Table};
use tailsift::config::Compression;
use tailsift::consistent::threshold_for_rate;
use tailsift::decide::Decider;
use tailsift::export::sink::compress_blocking;
use tailsift::model::{CompleteTrace, DecideCause, Decision, KeptSpans, TenantId};
use tailsift::otlp::encode::{AnnotationKeys, BatchEncoder};
use tailsift::otlp::ingest::{ingest_request, IngestOptions};
use tailsift::rules::RuleSet;
use tailsift::stats::Stats;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// 512 spans in 52 traces of ~10 spans, ~10 attributes each (~350 bytes per span encoded).
fn request() -> Bytes {
    let mut spans = Vec::new();
    for t in 0..52u64 {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_le_bytes());
        trace_id[8..].copy_from_slice(&(t.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1).to_le_bytes());
        for s in 0..10u64 {
            if spans.len() == 512 {
                break;
            }
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: (s + 1 + t * 100).to_le_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    (t * 100 + 1).to_le_bytes().to_vec()
                },
                name: format!("GET /api/v1/items/{s}"),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + s * 1000,
                end_time_unix_nano: 1_700_000_000_000_500_000 + s * 1000,
                attributes: vec![
                    kv("http.route", "/api/v1/items/{id}"),
                    kv("http.request.method", "GET"),
                    kv("url.scheme", "https"),
                    kv("server.address", "items.internal.example.com"),
                    kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
                    kv("network.peer.address", "10.1.2.3"),
                    kv("db.system", "postgresql"),
                    kv("db.statement", "SELECT * FROM items WHERE id = $1"),
                    kv("thread.name", "worker-7"),
                    kv("code.function", "handle_request"),
                ],
                status: Some(Status {
                    message: String::new(),
                    code: if t == 7 && s == 3 { 2 } else { 0 },
                }),
                ..Default::default()
            });
        }
    }
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "items"), kv("tenant.id", "initech")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    Bytes::from(req.encode_to_vec())
}

fn options() -> IngestOptions {
    IngestOptions {
        tenant_attribute: "tenant.id".into(),
        default_tenant: TenantId::new("default"),
        reserved_attributes: vec!["SampleRate".into(), "tailsift.rule".into()],
        limits: Default::default(),
    }
}

fn traces(body: &Bytes) -> Vec<CompleteTrace> {
    let spans = ingest_request(body, None, &options()).expect("valid").spans;
    let mut by_trace: std::collections::BTreeMap<_, Vec<_>> = Default::default();
    for s in spans {
        by_trace.entry(s.index.trace_id).or_default().push(s);
    }
    by_trace
        .into_iter()
        .map(|(trace_id, spans)| CompleteTrace {
            trace_id,
            tenant: TenantId::new("initech"),
            spans,
            logs: Vec::new(),
            cause: DecideCause::RootGrace,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let body = request();
    let mut g = c.benchmark_group("per_span");
    g.throughput(Throughput::Elements(512));
    g.measurement_time(Duration::from_secs(3));

    g.bench_function("ingest_index_512_spans", |b| {
        let options = options();
        b.iter(|| {
            ingest_request(&body, None, &options)
                .expect("valid")
                .spans
                .len()
        })
    });

    g.bench_function("buffer_insert_and_decide_512_spans", |b| {
        let rules = RuleSet::builtin();
        b.iter_batched(
            || {
                ingest_request(&body, None, &options())
                    .expect("valid")
                    .spans
            },
            |spans| {
                let mut table = Table::new(Limits {
                    root_grace: Duration::from_secs(2),
                    trace_timeout: Duration::from_secs(30),
                    max_spans_per_trace: 10_000,
                    max_bytes: 1 << 30,
                    decision_cache: 100_000,
                });
                let mut decider = Decider::default();
                let mut out = Vec::new();
                let now = tokio::time::Instant::now();
                table.insert(spans, now, &mut out);
                table.expire(now + Duration::from_secs(60), &mut out);
                let mut kept = 0;
                for r in out {
                    if let Ready::Trace { trace: t, .. } = r {
                        let d = decider.decide(&t, &rules);
                        kept += usize::from(d.keep);
                        let n = t.spans.len() as u64;
                        table.remember(t.trace_id, d, t.tenant, n);
                    }
                }
                kept
            },
            BatchSize::SmallInput,
        )
    });

    g.bench_function("export_encode_512_spans", |b| {
        let kept: Vec<KeptSpans> = traces(&body)
            .into_iter()
            .map(|t| KeptSpans {
                tenant: t.tenant,
                decision: Decision {
                    keep: true,
                    sample_rate: 10,
                    threshold: threshold_for_rate(10),
                    rule: Arc::from("rest"),
                },
                spans: t.spans,
            })
            .collect();
        let mut encoder = BatchEncoder::new(AnnotationKeys {
            sample_rate: "SampleRate".into(),
            rule: "tailsift.rule".into(),
        });
        let mut out = Vec::with_capacity(body.len() * 2);
        b.iter(|| {
            out.clear();
            encoder.encode(&kept, &mut out);
            out.len()
        })
    });

    g.bench_function("stats_count_512_spans", |b| {
        let stats = Stats::default();
        b.iter(|| {
            // What the pipeline does per request and per decided trace (52 traces).
            stats
                .spans_received
                .fetch_add(512, std::sync::atomic::Ordering::Relaxed);
            for _ in 0..52 {
                stats
                    .traces_decided
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stats.drop_spans(tailsift::model::DropReason::Sampled, 10);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("per_trace");
    let all = traces(&body);
    g.throughput(Throughput::Elements(all.len() as u64));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("rules_evaluate_default_rules", |b| {
        let rules = RuleSet::builtin();
        let mut decider = Decider::default();
        b.iter(|| {
            all.iter()
                .filter(|t| decider.decide(t, &rules).keep)
                .count()
        })
    });
    g.finish();

    // What `[export] compression` costs per exported span, and what it saves on the wire.
    let mut g = c.benchmark_group("export_compression");
    g.throughput(Throughput::Elements(512));
    g.measurement_time(Duration::from_secs(3));
    for compression in [Compression::Gzip, Compression::Zstd] {
        let size = compress_blocking(compression, &body).map_or(0, |b| b.len());
        eprintln!(
            "export_compression/{}: {} bytes -> {size} bytes",
            compression.name(),
            body.len()
        );
        g.bench_function(format!("{}_512_spans", compression.name()), |b| {
            b.iter(|| compress_blocking(compression, &body).map_or(0, |b| b.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
