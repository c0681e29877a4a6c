//! The generator: sends the round's requests over and over (fresh ids each pass) with
//! `concurrency` requests in flight, paced to `spans_per_sec` (0 = as fast as it can), for
//! `duration`, then writes a JSON summary.
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

use crate::grpc::{RawDecoder, EXPORT_PATH};
use crate::util::percentile;
use crate::workload::{round3, Params, Round};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};

pub struct GenArgs {
    pub target: String,
    pub spans_per_sec: u64,
    pub duration: Duration,
    pub concurrency: usize,
    pub http: bool,
    pub timeout: Duration,
    pub report_file: Option<PathBuf>,
    pub params: Params,
}

/// A request to be written straight into tonic's send buffer (one copy, no allocation of
/// our own): global request `q` of the round.
struct Rendered {
    round: Arc<Round>,
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
        dst.reserve(item.round.request_len(item.q));
        item.round.write_to(item.q, dst);
        Ok(())
    }
    fn buffer_settings(&self) -> BufferSettings {
        // Room for a whole request up front, so the buffer does not grow step by step.
        BufferSettings::new(256 << 10, 1 << 20)
    }
}

enum Client {
    Grpc(tonic::client::Grpc<Channel>),
    Http(HttpClient<HttpConnector, Full<Bytes>>, String),
}

impl Client {
    /// Sends one request; `Err` carries a short reason (gRPC code or HTTP status).
    async fn send(&mut self, round: &Arc<Round>, q: u64) -> Result<(), String> {
        match self {
            Client::Grpc(grpc) => {
                grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
                let path = PathAndQuery::from_static(EXPORT_PATH);
                let item = Rendered {
                    round: round.clone(),
                    q,
                };
                grpc.unary(tonic::Request::new(item), path, GenCodec)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()))
            }
            Client::Http(client, url) => {
                let req = hyper::Request::post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(round.render(q)))
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

#[derive(Default)]
struct WorkerResult {
    sent: u64,
    ok: u64,
    offered_spans: u64,
    acked_spans: u64,
    failed: Vec<(u64, String)>,
    skipped: Vec<u64>,
    max_q: Option<u64>,
    latencies_us: Vec<u64>,
    last_done: Option<Instant>,
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
            let url = format!("http://{}/v1/traces", targets[i % targets.len()]);
            clients.push(Client::Http(client.clone(), url));
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
    let round = Arc::new(Round::build(&args.params, now_ns)?);
    let workload = round.describe();
    eprintln!(
        "gen: round of {} traces, {} spans, {} requests built in {:.2}s; target {} ({}), {} spans/s for {:.1}s, concurrency {}",
        round.traces.len(),
        round.round_spans(),
        round.requests.len(),
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
        let round = round.clone();
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
                    let due = |q: u64| {
                        Duration::from_secs_f64(round.spans_before(q) as f64 / rate as f64)
                    };
                    if due(round.segment_start(q)) >= duration {
                        res.skipped.push(q);
                        break;
                    }
                    tokio::time::sleep_until((start + due(q)).into()).await;
                } else if Instant::now() >= end {
                    // The first worker to see the end fixes the cut: the first segment
                    // boundary after every request taken so far. Later ones keep it.
                    let cut = round.segment_boundary(next.load(Ordering::SeqCst));
                    let _ =
                        stop_at.compare_exchange(u64::MAX, cut, Ordering::SeqCst, Ordering::SeqCst);
                    if q >= stop_at.load(Ordering::SeqCst) {
                        res.skipped.push(q);
                        break;
                    }
                }
                let spans = u64::from(round.template(q).spans);
                let t0 = Instant::now();
                let outcome = client.send(&round, q).await;
                let done = Instant::now();
                res.latencies_us.push((done - t0).as_micros() as u64);
                res.last_done = Some(done);
                res.sent += 1;
                res.offered_spans += spans;
                res.max_q = Some(res.max_q.map_or(q, |m| m.max(q)));
                match outcome {
                    Ok(()) => {
                        res.ok += 1;
                        res.acked_spans += spans;
                    }
                    Err(reason) => res.failed.push((q, reason)),
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
        "params": args.params.to_json(),
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
    });
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
    match &args.report_file {
        Some(path) => std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(all.ok > 0)
}
