//! The generator: sends the round's requests over and over (fresh ids each pass) with
//! `concurrency` requests in flight, paced to `spans_per_sec` (0 = as fast as it can), for
//! `duration`, then writes a JSON summary.
//!
//! `--signal logs` adds, after each trace request, a logs request with one record per span of
//! that request carrying the span's trace and span ids (sent on the same connection once the
//! trace request is acknowledged, so the proxy holds the records with their trace); with
//! `--untraced-logs` it sends only log records without trace ids, paced in records per second.
//! `--signal metrics` sends metrics requests paced in data points per second.
//!
//! Requests are numbered globally (`q`); workers take the next number from a shared counter,
//! wait for its scheduled time (the spans before it divided by the rate) and send it. A number
//! whose scheduled time falls after the end is not sent ("skipped"); the report lists the
//! skipped and failed numbers, so the checker knows exactly which traces were acknowledged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::{RawDecoder, Signal};
use crate::logs::LogsRound;
use crate::metrics::{MetricParams, MetricsRound};
use crate::util::percentile;
use crate::workload::{round3, Params, Round};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};

pub struct GenArgs {
    pub target: String,
    /// Offered load in the plan's unit: spans (traces, logs with traces), log records
    /// (untraced logs) or data points (metrics) per second.
    pub spans_per_sec: u64,
    pub duration: Duration,
    pub concurrency: usize,
    pub http: bool,
    pub timeout: Duration,
    pub report_file: Option<PathBuf>,
    pub params: Params,
    pub signal: Signal,
    pub untraced_logs: bool,
    pub metric_params: MetricParams,
}

/// What the generator sends for each request number `q`.
enum Plan {
    /// Trace request `q`, then (with logs) the logs request with a record per span of it.
    Traces {
        round: Round,
        logs: Option<LogsRound>,
    },
    /// Logs request `q` without trace ids.
    Untraced { round: Round, logs: LogsRound },
    /// Metrics request `q`.
    Metrics(MetricsRound),
}

impl Plan {
    fn primary(&self) -> Signal {
        match self {
            Plan::Traces { .. } => Signal::Traces,
            Plan::Untraced { .. } => Signal::Logs,
            Plan::Metrics(_) => Signal::Metrics,
        }
    }

    /// Paced units (spans, records or points) in all requests before `q`.
    fn paced_before(&self, q: u64) -> u64 {
        match self {
            Plan::Traces { round, .. } => round.spans_before(q),
            Plan::Untraced { logs, .. } => logs.records_before(q),
            Plan::Metrics(m) => m.points_before(q),
        }
    }

    /// Only traces have segments (stopping inside one would leave traces in part).
    fn segment_start(&self, q: u64) -> u64 {
        match self {
            Plan::Traces { round, .. } => round.segment_start(q),
            _ => q,
        }
    }

    fn segment_boundary(&self, q: u64) -> u64 {
        match self {
            Plan::Traces { round, .. } => round.segment_boundary(q),
            _ => q,
        }
    }

    fn logs(&self) -> Option<&LogsRound> {
        match self {
            Plan::Traces { logs, .. } => logs.as_ref(),
            Plan::Untraced { logs, .. } => Some(logs),
            Plan::Metrics(_) => None,
        }
    }

    /// The requests sent for `q`, in order, with the items each carries.
    fn steps(&self, q: u64) -> ([Option<(Signal, u64)>; 2], usize) {
        match self {
            Plan::Traces { round, logs } => (
                [
                    Some((Signal::Traces, u64::from(round.template(q).spans))),
                    logs.as_ref()
                        .map(|l| (Signal::Logs, u64::from(l.template(q).records))),
                ],
                1 + usize::from(logs.is_some()),
            ),
            Plan::Untraced { logs, .. } => (
                [
                    Some((Signal::Logs, u64::from(logs.template(q).records))),
                    None,
                ],
                1,
            ),
            Plan::Metrics(m) => ([Some((Signal::Metrics, u64::from(m.points(q)))), None], 1),
        }
    }

    fn request_len(&self, signal: Signal, q: u64) -> usize {
        match (self, signal) {
            (Plan::Traces { round, .. }, Signal::Traces) => round.request_len(q),
            (_, Signal::Logs) => self.logs().map_or(0, |l| l.request_len(q)),
            (Plan::Metrics(m), Signal::Metrics) => m.request(q).len(),
            _ => 0,
        }
    }

    fn write_to(&self, signal: Signal, q: u64, out: &mut impl bytes::BufMut) {
        match (self, signal) {
            (Plan::Traces { round, .. }, Signal::Traces) => round.write_to(q, out),
            (_, Signal::Logs) => {
                if let Some(l) = self.logs() {
                    l.write_to(q, out)
                }
            }
            (Plan::Metrics(m), Signal::Metrics) => out.put_slice(m.request(q)),
            _ => {}
        }
    }

    fn render(&self, signal: Signal, q: u64) -> Bytes {
        let mut buf = bytes::BytesMut::with_capacity(self.request_len(signal, q));
        self.write_to(signal, q, &mut buf);
        buf.freeze()
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Plan::Traces { round, logs } => {
                let mut w = round.describe();
                if let Some(l) = logs {
                    w["logs"] = l.describe();
                }
                w
            }
            Plan::Untraced { round, logs } => {
                let mut w = round.describe();
                w["logs"] = logs.describe();
                w
            }
            Plan::Metrics(m) => json!({ "metrics": m.describe() }),
        }
    }
}

/// A request to be written straight into tonic's send buffer (one copy, no allocation of
/// our own): global request `q` of `signal`.
struct Rendered {
    plan: Arc<Plan>,
    signal: Signal,
    q: u64,
}

#[derive(Clone, Copy, Default)]
struct GenCodec;
struct GenEncoder;

impl Codec for GenCodec {
    type Encode = Rendered;
    type Decode = Bytes;
    type Encoder = GenEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> GenEncoder {
        GenEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for GenEncoder {
    type Item = Rendered;
    type Error = tonic::Status;
    fn encode(&mut self, item: Rendered, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.plan.request_len(item.signal, item.q));
        item.plan.write_to(item.signal, item.q, dst);
        Ok(())
    }
    fn buffer_settings(&self) -> BufferSettings {
        // Room for a whole request up front, so the buffer does not grow step by step.
        BufferSettings::new(256 << 10, 1 << 20)
    }
}

enum Client {
    Grpc(tonic::client::Grpc<Channel>),
    /// The client and `http://host:port` (the signal's path is appended).
    Http(HttpClient<HttpConnector, Full<Bytes>>, String),
}

impl Client {
    /// Sends one request; `Err` carries a short reason (gRPC code or HTTP status).
    async fn send(&mut self, plan: &Arc<Plan>, signal: Signal, q: u64) -> Result<(), String> {
        match self {
            Client::Grpc(grpc) => {
                grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
                let path = PathAndQuery::from_static(signal.grpc_path());
                let item = Rendered {
                    plan: plan.clone(),
                    signal,
                    q,
                };
                grpc.unary(tonic::Request::new(item), path, GenCodec)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()))
            }
            Client::Http(client, base) => {
                let url = format!("{base}{}", signal.http_path());
                let req = hyper::Request::post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(plan.render(signal, q)))
                    .map_err(|e| format!("request: {e}"))?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| format!("http error: {e}"))?;
                let status = resp.status();
                // Read the body so the connection can be reused.
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("http {}", status.as_u16()))
                }
            }
        }
    }
}

/// Requests and items of one signal.
#[derive(Default)]
struct SignalResult {
    sent: u64,
    ok: u64,
    offered: u64,
    acked: u64,
    by_reason: BTreeMap<String, u64>,
    /// Not sent because the request before it for the same `q` (its traces) failed.
    not_sent_after_failure: u64,
    latencies_us: Vec<u64>,
}

impl SignalResult {
    fn merge(&mut self, o: SignalResult) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.offered += o.offered;
        self.acked += o.acked;
        for (k, v) in o.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
        self.not_sent_after_failure += o.not_sent_after_failure;
        self.latencies_us.extend(o.latencies_us);
    }

    fn report(&mut self, unit: &str) -> serde_json::Value {
        self.latencies_us.sort_unstable();
        let ms = |us: u64| round3(us as f64 / 1000.0);
        let l = &self.latencies_us;
        json!({
            "requests_sent": self.sent,
            "requests_ok": self.ok,
            "requests_failed": self.sent - self.ok,
            "failures_by_reason": self.by_reason,
            "requests_not_sent_after_trace_failure": self.not_sent_after_failure,
            format!("offered_{unit}"): self.offered,
            format!("acked_{unit}"): self.acked,
            "latency_ms": {
                "p50": ms(percentile(l, 50.0)),
                "p99": ms(percentile(l, 99.0)),
                "max": ms(l.last().copied().unwrap_or(0)),
            },
        })
    }
}

#[derive(Default)]
struct WorkerResult {
    /// The plan's first request of each `q` (traces, or the only signal sent).
    sent: u64,
    ok: u64,
    offered_spans: u64,
    acked_spans: u64,
    failed: Vec<(u64, String)>,
    skipped: Vec<u64>,
    max_q: Option<u64>,
    latencies_us: Vec<u64>,
    last_done: Option<Instant>,
    logs: SignalResult,
    metrics: SignalResult,
}

async fn connect(args: &GenArgs) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(args.concurrency);
    let targets: Vec<&str> = args
        .target
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("--target names no address");
    }
    if args.http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(args.concurrency)
            .build(connector);
        for i in 0..args.concurrency {
            let base = format!("http://{}", targets[i % targets.len()]);
            clients.push(Client::Http(client.clone(), base));
        }
        return Ok(clients);
    }
    for i in 0..args.concurrency {
        // One connection per worker, like independent SDKs; with several targets (a cluster
        // behind an L4 balancer) worker i talks to target i mod n.
        let uri = format!("http://{}", targets[i % targets.len()]);
        let channel = Endpoint::from_shared(uri.clone())?
            .tcp_nodelay(true)
            .timeout(args.timeout)
            .connect_timeout(Duration::from_secs(5))
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {uri}"))?;
        clients.push(Client::Grpc(
            tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20),
        ));
    }
    Ok(clients)
}

pub async fn run(args: GenArgs) -> Result<bool> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let build_start = Instant::now();
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let plan = match (args.signal, args.untraced_logs) {
        (Signal::Metrics, _) => Plan::Metrics(MetricsRound::build(&args.metric_params, now_ns)?),
        (Signal::Logs, true) => {
            let round = Round::build(&args.params, now_ns)?;
            let logs = LogsRound::build(&round, false, now_ns)?;
            Plan::Untraced { round, logs }
        }
        (signal, _) => {
            let round = Round::build(&args.params, now_ns)?;
            let logs = if signal == Signal::Logs {
                Some(LogsRound::build(&round, true, now_ns)?)
            } else {
                None
            };
            Plan::Traces { round, logs }
        }
    };
    let plan = Arc::new(plan);
    let workload = plan.describe();
    let unit = match plan.primary() {
        Signal::Traces => "spans",
        Signal::Logs => "log records",
        Signal::Metrics => "data points",
    };
    eprintln!(
        "gen: {} round ({} requests) built in {:.2}s; target {} ({}), {} {unit}/s for {:.1}s, concurrency {}",
        match &*plan {
            Plan::Traces { logs: Some(_), .. } => "traces + logs with their trace ids",
            Plan::Traces { logs: None, .. } => "traces",
            Plan::Untraced { .. } => "untraced logs",
            Plan::Metrics(_) => "metrics",
        },
        match &*plan {
            Plan::Traces { round, .. } | Plan::Untraced { round, .. } => round.requests.len(),
            Plan::Metrics(m) => m.requests.len(),
        },
        build_start.elapsed().as_secs_f64(),
        args.target,
        if args.http { "OTLP/HTTP protobuf" } else { "OTLP/gRPC" },
        args.spans_per_sec,
        args.duration.as_secs_f64(),
        args.concurrency,
    );
    let clients = connect(&args).await?;
    let next = Arc::new(AtomicU64::new(0));
    let stop_at = Arc::new(AtomicU64::new(u64::MAX));
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + args.duration;
    let rate = args.spans_per_sec;
    let duration = args.duration;
    let mut tasks = Vec::new();
    for mut client in clients {
        let plan = plan.clone();
        let next = next.clone();
        let stop_at = stop_at.clone();
        tasks.push(tokio::spawn(async move {
            let mut res = WorkerResult::default();
            tokio::time::sleep_until(start.into()).await;
            loop {
                let q = next.fetch_add(1, Ordering::SeqCst);
                if q >= stop_at.load(Ordering::SeqCst) {
                    res.skipped.push(q);
                    break;
                }
                if rate > 0 {
                    // Whole segments only: send q when its segment was due before the end.
                    let due =
                        |q: u64| Duration::from_secs_f64(plan.paced_before(q) as f64 / rate as f64);
                    if due(plan.segment_start(q)) >= duration {
                        res.skipped.push(q);
                        break;
                    }
                    tokio::time::sleep_until((start + due(q)).into()).await;
                } else if Instant::now() >= end {
                    // The first worker to see the end fixes the cut: the first segment
                    // boundary after every request taken so far. Later ones keep it.
                    let cut = plan.segment_boundary(next.load(Ordering::SeqCst));
                    let _ =
                        stop_at.compare_exchange(u64::MAX, cut, Ordering::SeqCst, Ordering::SeqCst);
                    if q >= stop_at.load(Ordering::SeqCst) {
                        res.skipped.push(q);
                        break;
                    }
                }
                res.max_q = Some(res.max_q.map_or(q, |m| m.max(q)));
                let (steps, n) = plan.steps(q);
                let mut previous_ok = true;
                for (i, &(signal, items)) in steps[..n].iter().flatten().enumerate() {
                    let primary = i == 0;
                    if !previous_ok {
                        if signal == Signal::Logs {
                            res.logs.not_sent_after_failure += 1;
                        }
                        continue;
                    }
                    let t0 = Instant::now();
                    let outcome = client.send(&plan, signal, q).await;
                    let done = Instant::now();
                    let us = (done - t0).as_micros() as u64;
                    res.last_done = Some(done);
                    if primary {
                        res.latencies_us.push(us);
                        res.sent += 1;
                        res.ok += u64::from(outcome.is_ok());
                        if let Err(reason) = &outcome {
                            res.failed.push((q, reason.clone()));
                        }
                    }
                    let per = match signal {
                        Signal::Traces => None,
                        Signal::Logs => Some(&mut res.logs),
                        Signal::Metrics => Some(&mut res.metrics),
                    };
                    match per {
                        None => {
                            res.offered_spans += items;
                            if outcome.is_ok() {
                                res.acked_spans += items;
                            }
                        }
                        Some(s) => {
                            s.sent += 1;
                            s.offered += items;
                            s.latencies_us.push(us);
                            match &outcome {
                                Ok(()) => {
                                    s.ok += 1;
                                    s.acked += items;
                                }
                                Err(reason) => *s.by_reason.entry(reason.clone()).or_default() += 1,
                            }
                        }
                    }
                    previous_ok = outcome.is_ok();
                }
            }
            res
        }));
    }
    let mut all = WorkerResult::default();
    for t in tasks {
        let r = t.await?;
        all.sent += r.sent;
        all.ok += r.ok;
        all.offered_spans += r.offered_spans;
        all.acked_spans += r.acked_spans;
        all.failed.extend(r.failed);
        all.skipped.extend(r.skipped);
        all.max_q = match (all.max_q, r.max_q) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        all.latencies_us.extend(r.latencies_us);
        all.logs.merge(r.logs);
        all.metrics.merge(r.metrics);
        all.last_done = match (all.last_done, r.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let requests_total = all.max_q.map_or(0, |m| m + 1);
    all.skipped.retain(|&q| q < requests_total);
    all.skipped.sort_unstable();
    all.failed.sort_unstable();
    all.latencies_us.sort_unstable();
    let elapsed = all
        .last_done
        .map_or(0.0, |d| d.saturating_duration_since(start).as_secs_f64());
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (_, reason) in &all.failed {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    let per_sec = |n: u64| {
        if elapsed > 0.0 {
            (n as f64 / elapsed).round()
        } else {
            0.0
        }
    };
    let ms = |us: u64| round3(us as f64 / 1000.0);
    let report = json!({
        "signal": args.signal.name(),
        "untraced_logs": args.untraced_logs && args.signal == Signal::Logs,
        "params": args.params.to_json(),
        "metric_params": args.metric_params.to_json(),
        "workload": workload,
        "target": args.target,
        "transport": if args.http { "http" } else { "grpc" },
        "spans_per_sec_target": rate,
        "duration_s": duration.as_secs_f64(),
        "concurrency": args.concurrency,
        "elapsed_s": round3(elapsed),
        "requests_total": requests_total,
        "requests_sent": all.sent,
        "requests_ok": all.ok,
        "requests_failed": all.failed.len(),
        "failures_by_reason": by_reason,
        "offered_spans": all.offered_spans,
        "acked_spans": all.acked_spans,
        "offered_spans_per_sec": per_sec(all.offered_spans),
        "acked_spans_per_sec": per_sec(all.acked_spans),
        "latency_ms": {
            "p50": ms(percentile(&all.latencies_us, 50.0)),
            "p90": ms(percentile(&all.latencies_us, 90.0)),
            "p99": ms(percentile(&all.latencies_us, 99.0)),
            "max": ms(all.latencies_us.last().copied().unwrap_or(0)),
        },
        "failed_requests": all.failed.iter().map(|f| f.0).collect::<Vec<_>>(),
        "skipped_requests": all.skipped,
        "offered_log_records": all.logs.offered,
        "acked_log_records": all.logs.acked,
        "offered_metric_points": all.metrics.offered,
        "acked_metric_points": all.metrics.acked,
        "logs": all.logs.report("records"),
        "metrics": all.metrics.report("points"),
    });
    if plan.primary() == Signal::Traces {
        eprintln!(
        "gen: offered {} spans ({}/s), acknowledged {} ({}/s), {} of {} requests failed {:?}, latency p50 {} ms p99 {} ms",
        all.offered_spans,
        report["offered_spans_per_sec"],
        all.acked_spans,
        report["acked_spans_per_sec"],
        all.failed.len(),
        all.sent,
        by_reason,
        report["latency_ms"]["p50"],
        report["latency_ms"]["p99"],
    );
    }
    if all.logs.sent > 0 {
        eprintln!(
            "gen: logs: offered {} records, acknowledged {}, {} of {} requests failed {:?}, {} not sent after a failed trace request",
            all.logs.offered,
            all.logs.acked,
            all.logs.sent - all.logs.ok,
            all.logs.sent,
            all.logs.by_reason,
            all.logs.not_sent_after_failure,
        );
    }
    if all.metrics.sent > 0 {
        eprintln!(
            "gen: metrics: offered {} points, acknowledged {}, {} of {} requests failed {:?}",
            all.metrics.offered,
            all.metrics.acked,
            all.metrics.sent - all.metrics.ok,
            all.metrics.sent,
            all.metrics.by_reason,
        );
    }
    match &args.report_file {
        Some(path) => std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(all.ok + all.logs.ok + all.metrics.ok > 0)
}
