//! The counting sink: an OTLP/gRPC server that accepts every export and counts spans per
//! trace, per tenant and per `tailsift.rule`, scanning the protobuf bytes instead of decoding.
//! It serves `LogsService` and `MetricsService` too and counts log records (with one of the
//! generator's trace ids, without any, or foreign; per tenant and per rule) and metric data
//! points (per kind and per tenant).
//!
//! Spans of the generator's traces are counted in a flat array indexed by the global trace
//! number encoded in the trace id (see `ids`); anything else is "foreign". On SIGTERM/SIGINT
//! or after `--duration` it writes a JSON report and exits.
//!
//! Debugging aid: with `LOADGEN_DUMP_UNATTRIBUTED=FILE` set, the first request that has a span
//! without a `tenant.id` resource attribute is written to FILE (raw protobuf).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use tonic::Status;

use crate::grpc::{
    ExportHandler, ExportService, LogsServiceKind, MetricsServiceKind, Signal, TraceServiceKind,
};
use crate::ids;
use crate::util::base64_encode;
use crate::wire::{self, Reader, Value as WireValue, LEN};
use crate::workload::{round3, TENANT_KEY};

const RULE_KEY: &[u8] = b"tailsift.rule";
const SAMPLE_RATE_KEY: &[u8] = b"SampleRate";
/// Traces numbers past this are counted as foreign rather than growing the array further.
const MAX_TRACKED_TRACES: u64 = 1 << 31;
const MAX_FOREIGN_TRACE_IDS: usize = 1 << 20;

pub struct SinkArgs {
    pub listen: SocketAddr,
    pub report_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub progress: bool,
}

#[derive(Default)]
struct TenantCounts {
    spans: u64,
    traces: u64,
    sample_rate_sum: u64,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    bytes: u64,
    spans: u64,
    foreign_spans: u64,
    foreign_traces: HashSet<[u8; 16]>,
    trace_spans: Vec<u8>,
    traces: u64,
    tenants: HashMap<Vec<u8>, TenantCounts>,
    rules: HashMap<Vec<u8>, u64>,
    spans_without_rule: u64,
    spans_without_sample_rate: u64,
    decode_errors: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    logs: LogCounts,
    metrics: MetricCounts,
}

#[derive(Default)]
struct LogCounts {
    requests: u64,
    bytes: u64,
    records: u64,
    /// Records with one of the generator's trace ids.
    traced: u64,
    /// Records without a trace id (absent, empty or all zero).
    untraced: u64,
    /// Records with a trace id that is not the generator's.
    foreign: u64,
    /// Records at ERROR or above (severity number ≥ 17).
    errors: u64,
    without_rule: u64,
    without_sample_rate: u64,
    tenants: HashMap<Vec<u8>, u64>,
    rules: HashMap<Vec<u8>, u64>,
}

#[derive(Default)]
struct MetricCounts {
    requests: u64,
    bytes: u64,
    metrics: u64,
    points: u64,
    by_kind: [u64; 5],
    tenants: HashMap<Vec<u8>, u64>,
}

/// What one log record contributes.
struct LogFacts<'a> {
    tenant: &'a [u8],
    trace: LogTrace,
    error: bool,
    rule: Option<&'a [u8]>,
    sample_rate: bool,
}

#[derive(Clone, Copy)]
enum LogTrace {
    Ours,
    None,
    Foreign,
}

fn scan_logs(req: &[u8]) -> anyhow::Result<Vec<LogFacts<'_>>> {
    let mut out = Vec::with_capacity(512);
    wire::for_each_span(req, TENANT_KEY.as_bytes(), |view| {
        let mut r = Reader::new(view.bytes);
        let mut facts = LogFacts {
            tenant: view.tenant,
            trace: LogTrace::None,
            error: false,
            rule: None,
            sample_rate: false,
        };
        while let Some((field, w)) = r.key()? {
            match (field, w) {
                (2, wire::VARINT) => facts.error = r.varint()? >= 17,
                (9, LEN) => {
                    let id = r.bytes()?;
                    facts.trace = if id.is_empty() || id.iter().all(|&b| b == 0) {
                        LogTrace::None
                    } else if ids::trace_number(id).is_some() {
                        LogTrace::Ours
                    } else {
                        LogTrace::Foreign
                    };
                }
                (6, LEN) => {
                    let kv = r.bytes()?;
                    let k = wire::key_of(kv)?;
                    if k == RULE_KEY {
                        if let (_, WireValue::Str(s)) = wire::key_value(kv)? {
                            facts.rule = Some(s);
                        }
                    } else if k == SAMPLE_RATE_KEY {
                        facts.sample_rate = true;
                    }
                }
                _ => r.skip(w)?,
            }
        }
        out.push(facts);
        Ok(())
    })?;
    Ok(out)
}

/// (tenant, metric kind, points) of every metric in a metrics request.
fn scan_metrics(req: &[u8]) -> anyhow::Result<Vec<(&[u8], usize, u64)>> {
    let mut out = Vec::with_capacity(64);
    wire::for_each_span(req, TENANT_KEY.as_bytes(), |view| {
        if let Some((kind, n)) = wire::metric_points(view.bytes)? {
            out.push((view.tenant, kind, n));
        }
        Ok(())
    })?;
    Ok(out)
}

pub struct Sink {
    counts: Mutex<Counts>,
}

/// What one span contributes, gathered before taking the lock.
struct SpanFacts<'a> {
    trace: Result<u64, [u8; 16]>,
    tenant: &'a [u8],
    rule: Option<&'a [u8]>,
    sample_rate: Option<i64>,
}

fn scan(req: &[u8]) -> anyhow::Result<Vec<SpanFacts<'_>>> {
    let mut out = Vec::with_capacity(512);
    wire::for_each_span(req, TENANT_KEY.as_bytes(), |view| {
        let mut r = Reader::new(view.bytes);
        let mut facts = SpanFacts {
            trace: Err([0; 16]),
            tenant: view.tenant,
            rule: None,
            sample_rate: None,
        };
        while let Some((field, w)) = r.key()? {
            match (field, w) {
                (1, LEN) => {
                    let id = r.bytes()?;
                    facts.trace = match ids::trace_number(id) {
                        Some(g) if g < MAX_TRACKED_TRACES => Ok(g),
                        _ => {
                            let mut raw = [0u8; 16];
                            let n = id.len().min(16);
                            raw[..n].copy_from_slice(&id[..n]);
                            Err(raw)
                        }
                    };
                }
                (9, LEN) => {
                    let kv = r.bytes()?;
                    let k = wire::key_of(kv)?;
                    if k.len() != RULE_KEY.len() && k.len() != SAMPLE_RATE_KEY.len() {
                        continue;
                    }
                    let (k, v) = wire::key_value(kv)?;
                    if k == RULE_KEY {
                        if let WireValue::Str(s) = v {
                            facts.rule = Some(s);
                        }
                    } else if k == SAMPLE_RATE_KEY {
                        if let WireValue::Int(i) = v {
                            facts.sample_rate = Some(i);
                        }
                    }
                }
                _ => r.skip(w)?,
            }
        }
        out.push(facts);
        Ok(())
    })?;
    Ok(out)
}

impl ExportHandler for Sink {
    fn export(&self, signal: Signal, request: Bytes) -> Result<(), Status> {
        match signal {
            Signal::Traces => self.export_traces(request),
            Signal::Logs => self.export_logs(request),
            Signal::Metrics => self.export_metrics(request),
        }
    }
}

fn undecodable(e: anyhow::Error) -> Status {
    Status::invalid_argument(format!("undecodable request: {e}"))
}

impl Sink {
    fn export_logs(&self, request: Bytes) -> Result<(), Status> {
        let now = Instant::now();
        let facts = scan_logs(&request);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.first.get_or_insert(now);
        c.last = Some(now);
        let facts = match facts {
            Ok(f) => f,
            Err(e) => {
                c.decode_errors += 1;
                return Err(undecodable(e));
            }
        };
        let l = &mut c.logs;
        l.requests += 1;
        l.bytes += request.len() as u64;
        l.records += facts.len() as u64;
        let mut last_tenant: Option<&[u8]> = None;
        let mut run = 0u64;
        for f in &facts {
            match f.trace {
                LogTrace::Ours => l.traced += 1,
                LogTrace::None => l.untraced += 1,
                LogTrace::Foreign => l.foreign += 1,
            }
            l.errors += u64::from(f.error);
            l.without_sample_rate += u64::from(!f.sample_rate);
            match f.rule {
                Some(rule) => match l.rules.get_mut(rule) {
                    Some(n) => *n += 1,
                    None => {
                        l.rules.insert(rule.to_vec(), 1);
                    }
                },
                None => l.without_rule += 1,
            }
            // Records of one resource are adjacent: add them to their tenant per run.
            if last_tenant != Some(f.tenant) {
                if let Some(t) = last_tenant {
                    *l.tenants.entry(t.to_vec()).or_default() += run;
                }
                last_tenant = Some(f.tenant);
                run = 0;
            }
            run += 1;
        }
        if let Some(t) = last_tenant {
            *l.tenants.entry(t.to_vec()).or_default() += run;
        }
        Ok(())
    }

    fn export_metrics(&self, request: Bytes) -> Result<(), Status> {
        let now = Instant::now();
        let facts = scan_metrics(&request);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.first.get_or_insert(now);
        c.last = Some(now);
        let facts = match facts {
            Ok(f) => f,
            Err(e) => {
                c.decode_errors += 1;
                return Err(undecodable(e));
            }
        };
        let m = &mut c.metrics;
        m.requests += 1;
        m.bytes += request.len() as u64;
        m.metrics += facts.len() as u64;
        for &(tenant, kind, n) in &facts {
            m.points += n;
            m.by_kind[kind] += n;
            match m.tenants.get_mut(tenant) {
                Some(t) => *t += n,
                None => {
                    m.tenants.insert(tenant.to_vec(), n);
                }
            }
        }
        Ok(())
    }

    fn export_traces(&self, request: Bytes) -> Result<(), Status> {
        let now = Instant::now();
        let facts = scan(&request);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.first.get_or_insert(now);
        c.last = Some(now);
        c.requests += 1;
        c.bytes += request.len() as u64;
        let facts = match facts {
            Ok(f) => f,
            Err(e) => {
                c.decode_errors += 1;
                return Err(Status::invalid_argument(format!(
                    "undecodable request: {e}"
                )));
            }
        };
        c.spans += facts.len() as u64;
        if let Some(path) = std::env::var_os("LOADGEN_DUMP_UNATTRIBUTED") {
            if facts.iter().any(|f| f.tenant.is_empty()) && !std::path::Path::new(&path).exists() {
                let _ = std::fs::write(&path, &request);
            }
        }
        let mut last_tenant: &[u8] = b"\xff";
        let mut tenant_key: Vec<u8> = Vec::new();
        for f in &facts {
            // Spans of one resource are adjacent: look the tenant up once per run.
            if f.tenant != last_tenant {
                last_tenant = f.tenant;
                tenant_key = f.tenant.to_vec();
                c.tenants.entry(tenant_key.clone()).or_default();
            }
            let new_trace = match f.trace {
                Ok(g) => {
                    let g = g as usize;
                    if c.trace_spans.len() <= g {
                        let want = (g + 1).next_power_of_two().max(1 << 16);
                        c.trace_spans.resize(want, 0);
                    }
                    let slot = &mut c.trace_spans[g];
                    let new = *slot == 0;
                    *slot = slot.saturating_add(1);
                    new
                }
                Err(raw) => {
                    c.foreign_spans += 1;
                    c.foreign_traces.len() < MAX_FOREIGN_TRACE_IDS && c.foreign_traces.insert(raw)
                }
            };
            if new_trace {
                c.traces += 1;
            }
            let t = c.tenants.get_mut(&tenant_key).expect("inserted above");
            t.spans += 1;
            t.traces += u64::from(new_trace);
            match f.sample_rate {
                Some(sr) => t.sample_rate_sum += sr.max(0) as u64,
                None => {
                    t.sample_rate_sum += 1;
                    c.spans_without_sample_rate += 1;
                }
            }
            match f.rule {
                Some(rule) => match c.rules.get_mut(rule) {
                    Some(n) => *n += 1,
                    None => {
                        c.rules.insert(rule.to_vec(), 1);
                    }
                },
                None => c.spans_without_rule += 1,
            }
        }
        Ok(())
    }
}

fn names(map: &HashMap<Vec<u8>, u64>) -> serde_json::Map<String, Value> {
    map.iter()
        .map(|(k, n)| (String::from_utf8_lossy(k).into_owned(), json!(n)))
        .collect()
}

impl Sink {
    fn report(&self, addr: SocketAddr) -> Value {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = match (c.first, c.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let len = c
            .trace_spans
            .iter()
            .rposition(|&n| n != 0)
            .map_or(0, |i| i + 1);
        let tenants: serde_json::Map<String, Value> = c
            .tenants
            .iter()
            .map(|(k, t)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    json!({"spans": t.spans, "traces": t.traces, "sample_rate_sum": t.sample_rate_sum}),
                )
            })
            .collect();
        let rules: serde_json::Map<String, Value> = c
            .rules
            .iter()
            .map(|(k, n)| (String::from_utf8_lossy(k).into_owned(), json!(n)))
            .collect();
        json!({
            "listen": addr.to_string(),
            "requests": c.requests,
            "bytes": c.bytes,
            "spans": c.spans,
            "traces": c.traces,
            "foreign_spans": c.foreign_spans,
            "foreign_traces": c.foreign_traces.len(),
            "decode_errors": c.decode_errors,
            "spans_without_rule": c.spans_without_rule,
            "spans_without_sample_rate": c.spans_without_sample_rate,
            "first_to_last_request_s": round3(elapsed),
            "spans_per_sec": if elapsed > 0.0 { (c.spans as f64 / elapsed).round() } else { 0.0 },
            "tenants": tenants,
            "rules": rules,
            "trace_spans_len": len,
            "trace_spans_b64": base64_encode(&c.trace_spans[..len]),
            "log_records": c.logs.records,
            "metric_points": c.metrics.points,
            "logs": {
                "requests": c.logs.requests,
                "bytes": c.logs.bytes,
                "records": c.logs.records,
                "traced": c.logs.traced,
                "untraced": c.logs.untraced,
                "foreign": c.logs.foreign,
                "error_records": c.logs.errors,
                "records_without_rule": c.logs.without_rule,
                "records_without_sample_rate": c.logs.without_sample_rate,
                "tenants": names(&c.logs.tenants),
                "rules": names(&c.logs.rules),
            },
            "metrics": {
                "requests": c.metrics.requests,
                "bytes": c.metrics.bytes,
                "metrics": c.metrics.metrics,
                "points": c.metrics.points,
                "points_by_kind": wire::POINT_KINDS.iter().zip(c.metrics.by_kind)
                    .map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "tenants": names(&c.metrics.tenants),
            },
        })
    }
}

pub async fn run(args: SinkArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let sink = Arc::new(Sink {
        counts: Mutex::new(Counts::default()),
    });
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gzip_requests: Arc<std::sync::atomic::AtomicU64> = Default::default();
    let max = 256 << 20;
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .max_frame_size(1 << 20)
        .add_service(ExportService::<_, TraceServiceKind>::new(
            sink.clone(),
            max,
            gzip_requests.clone(),
        ))
        .add_service(ExportService::<_, LogsServiceKind>::new(
            sink.clone(),
            max,
            gzip_requests.clone(),
        ))
        .add_service(ExportService::<_, MetricsServiceKind>::new(
            sink.clone(),
            max,
            gzip_requests.clone(),
        ))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);
    println!("sink listening {addr}");
    use std::io::Write;
    std::io::stdout().flush()?;

    if args.progress {
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let c = sink.counts.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!(
                    "sink progress requests={} spans={} log_records={} metric_points={}",
                    c.requests + c.logs.requests + c.metrics.requests,
                    c.spans,
                    c.logs.records,
                    c.metrics.points
                );
            }
        });
    }

    wait_for_stop(args.duration).await;
    let _ = stop_tx.send(());
    // Graceful stop waits for open connections; a client that keeps its connection must not
    // keep the sink (and the benchmark) alive.
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    let mut report = sink.report(addr);
    report["gzip_requests"] = json!(gzip_requests.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!(
        "sink done: requests={} spans={} traces={} foreign_spans={} log_records={} metric_points={}",
        report["requests"],
        report["spans"],
        report["traces"],
        report["foreign_spans"],
        report["log_records"],
        report["metric_points"]
    );
    if let Some(path) = args.report_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&report)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

async fn wait_for_stop(duration: Option<Duration>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = timer => {}
    }
}
