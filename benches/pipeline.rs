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

criterion_group!(benches, bench, bench_logs, bench_metrics);
criterion_main!(benches);

/// 512 log records of the 52 traces of [`request`] (one per span, ~250 bytes each: severity
/// INFO with one ERROR, a string body of ~70 bytes, three attributes), or the same records
/// without trace and span ids (`traced = false`).
fn logs_request(traced: bool) -> Bytes {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let spans = ExportTraceServiceRequest::decode(&request()[..]).expect("valid");
    let records = spans.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let error = i == 73;
            LogRecord {
                time_unix_nano: span.start_time_unix_nano + 1_000,
                observed_time_unix_nano: span.start_time_unix_nano + 2_000,
                severity_number: if error { 17 } else { 9 },
                severity_text: if error { "ERROR" } else { "INFO" }.into(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!(
                        "GET /api/v1/items/{{id}} handled item {} for user u{} in {}.{} ms",
                        1_000_000 + i * 7919,
                        10_000 + i * 31,
                        i % 200,
                        i % 10
                    ))),
                }),
                attributes: vec![
                    KeyValue {
                        key: "thread.id".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue((i % 64) as i64)),
                        }),
                        ..Default::default()
                    },
                    kv(
                        "event.name",
                        if error {
                            "request.failed"
                        } else {
                            "request.handled"
                        },
                    ),
                    kv("code.function", "handle_request"),
                ],
                flags: u32::from(traced),
                trace_id: if traced {
                    span.trace_id.clone()
                } else {
                    Vec::new()
                },
                span_id: if traced {
                    span.span_id.clone()
                } else {
                    Vec::new()
                },
                ..Default::default()
            }
        })
        .collect();
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: spans.resource_spans[0].resource.clone(),
            scope_logs: vec![ScopeLogs {
                scope: spans.resource_spans[0].scope_spans[0].scope.clone(),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    Bytes::from(req.encode_to_vec())
}

fn ingest_logs(body: &Bytes) -> Vec<tailsift::model::SpanRecord> {
    use tailsift::model::PassThrough;
    use tailsift::otlp::ingest::ingest_logs_with;
    ingest_logs_with(body, None, None, &PassThrough::NONE, &options())
        .expect("valid")
        .spans
}

/// Per log record: reading a logs request (held with their trace or not), holding records
/// beside their trace's spans through the decision, and encoding kept records for export.
fn bench_logs(c: &mut Criterion) {
    use tailsift::model::{PassThrough, UNTRACED_RULE};
    use tailsift::otlp::ingest::ingest_logs_with;
    let traced = logs_request(true);
    let untraced = logs_request(false);
    let records = ingest_logs(&traced).len() as u64;
    assert_eq!(records, 512);
    eprintln!(
        "logs: {} bytes for 512 records with trace ids ({} per record), {} without",
        traced.len(),
        traced.len() / 512,
        untraced.len()
    );
    let mut g = c.benchmark_group("logs");
    g.throughput(Throughput::Elements(records));
    g.measurement_time(Duration::from_secs(3));

    for (name, body) in [
        ("ingest_logs_512_records", &traced),
        ("ingest_untraced_logs_512_records", &untraced),
    ] {
        g.bench_function(name, |b| {
            let options = options();
            b.iter(|| {
                ingest_logs_with(body, None, None, &PassThrough::NONE, &options)
                    .expect("valid")
                    .spans
                    .len()
            })
        });
    }

    // The same as `buffer_insert_and_decide_512_spans` with each span's log record held
    // beside it: compare the two for the buffer's marginal cost per record (this group's
    // throughput counts the 512 log records only).
    let spans_body = request();
    g.bench_function("buffer_insert_and_decide_512_spans_with_512_logs", |b| {
        let rules = RuleSet::builtin();
        b.iter_batched(
            || {
                let mut all = ingest_request(&spans_body, None, &options())
                    .expect("valid")
                    .spans;
                all.extend(ingest_logs(&traced));
                all
            },
            |records| {
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
                table.insert(records, now, &mut out);
                table.expire(now + Duration::from_secs(60), &mut out);
                let mut kept = 0;
                for r in out {
                    if let Ready::Trace { trace: t, .. } = r {
                        let d = decider.decide(&t, &rules);
                        kept += usize::from(d.keep);
                        let n = (t.spans.len() + t.logs.len()) as u64;
                        table.remember(t.trace_id, d, t.tenant, n);
                    }
                }
                kept
            },
            BatchSize::SmallInput,
        )
    });

    let mut encoder = BatchEncoder::new(AnnotationKeys {
        sample_rate: "SampleRate".into(),
        rule: "tailsift.rule".into(),
    });
    for (name, body, rule, sample_rate) in [
        ("export_encode_logs_512_records", &traced, "rest", 10),
        (
            "export_encode_untraced_logs_512_records",
            &untraced,
            UNTRACED_RULE,
            1,
        ),
    ] {
        // Kept records grouped by trace, as the decider hands them to export.
        let mut by_trace: std::collections::BTreeMap<_, Vec<_>> = Default::default();
        for r in ingest_logs(body) {
            by_trace.entry(r.index.trace_id).or_default().push(r);
        }
        let kept: Vec<KeptSpans> = by_trace
            .into_values()
            .map(|spans| KeptSpans {
                tenant: TenantId::new("initech"),
                decision: Decision {
                    keep: true,
                    sample_rate,
                    threshold: threshold_for_rate(sample_rate),
                    rule: Arc::from(rule),
                },
                spans,
            })
            .collect();
        let mut out = Vec::with_capacity(body.len() * 2);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encoder.encode_logs(&kept, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

/// One periodic export of five processes: 500 data points, 35% gauges, 45% sums and 20%
/// explicit-bucket histograms (15 buckets), up to 24 points per metric, 2–4 attributes each.
fn metrics_request() -> Bytes {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    let attrs = |i: usize| {
        vec![
            kv(
                "http.route",
                ["/api/v1/items/{id}", "/api/v1/cart", "/healthz"][i % 3],
            ),
            kv("http.request.method", ["GET", "POST"][(i / 3) % 2]),
            KeyValue {
                key: "http.response.status_code".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue([200, 404, 500][(i / 6) % 3])),
                }),
                ..Default::default()
            },
        ]
    };
    let number = |i: usize| NumberDataPoint {
        attributes: attrs(i),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        time_unix_nano: 1_700_000_060_000_000_000,
        value: Some(number_data_point::Value::AsInt(i as i64 * 37)),
        ..Default::default()
    };
    let metric = |name: String, data: Data| Metric {
        name,
        unit: "1".into(),
        data: Some(data),
        ..Default::default()
    };
    let mut resource_metrics = Vec::new();
    for r in 0..5 {
        let mut metrics = Vec::new();
        // 100 points per resource: 35 gauge, 45 sum, 20 histogram.
        for (kind, n) in [(0, 35), (1, 45), (2, 20)] {
            let mut left = n;
            let mut m = 0;
            while left > 0 {
                let k = left.min(24);
                left -= k;
                let data = match kind {
                    0 => Data::Gauge(Gauge {
                        data_points: (0..k).map(number).collect(),
                    }),
                    1 => Data::Sum(Sum {
                        data_points: (0..k).map(number).collect(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    }),
                    _ => Data::Histogram(Histogram {
                        data_points: (0..k)
                            .map(|i| HistogramDataPoint {
                                attributes: attrs(i),
                                start_time_unix_nano: 1_700_000_000_000_000_000,
                                time_unix_nano: 1_700_000_060_000_000_000,
                                count: 150,
                                sum: Some(12.5),
                                bucket_counts: vec![10; 15],
                                explicit_bounds: vec![
                                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                                    2.5, 5.0, 7.5, 10.0,
                                ],
                                min: Some(0.001),
                                max: Some(9.0),
                                ..Default::default()
                            })
                            .collect(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                };
                metrics.push(metric(format!("app.metric.{kind}.{m}"), data));
                m += 1;
            }
        }
        resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", ["items", "cart", "auth", "search", "db"][r]),
                    kv(
                        "tenant.id",
                        ["initech", "initech", "acme", "globex", "acme"][r],
                    ),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.runtime".into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    Bytes::from(ExportMetricsServiceRequest { resource_metrics }.encode_to_vec())
}

/// Per metric data point: what receive does with a metrics request (decode it once to
/// validate and count its points per tenant); the bytes are then forwarded unchanged.
fn bench_metrics(c: &mut Criterion) {
    use tailsift::otlp::metrics::points_by_tenant;
    let body = metrics_request();
    let points: u64 = points_by_tenant(&body, "tenant.id")
        .expect("valid")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(points, 500);
    eprintln!(
        "metrics: {} bytes for {points} points ({} per point)",
        body.len(),
        body.len() as u64 / points
    );
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(points));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("points_by_tenant_500_points", |b| {
        b.iter(|| points_by_tenant(&body, "tenant.id").expect("valid").len())
    });
    g.finish();
}
