//! The export stage: batches kept spans, encodes them once into OTLP requests (span bytes
//! copied as they arrived, plus annotations) and sends them with retries. The queue is bounded
//! in bytes; every span that is not delivered is counted with its reason.

pub mod metrics;
pub mod sink;
pub mod spool;
pub mod tls;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::buffer::KeptSink;
use crate::config::ExportConfig;
use crate::model::{
    count_kinds, DropReason, KeptSpans, PassThrough, RecordKind, SpanRecord, TenantId, UntracedSink,
};
use crate::otlp::encode::{AnnotationKeys, BatchEncoder};
use crate::stats::tenant::{unix_now, Counts};
use crate::stats::Stats;
use sink::Sink;
use spool::Spool;

/// Counts spans of one tenant dropped for `reason` in the per-tenant table.
fn drop_for_tenant(stats: &Stats, tenant: &TenantId, reason: DropReason, spans: u64) {
    let mut counts = Counts::default();
    counts.drop_spans(reason, spans);
    stats.tenants.add(tenant, unix_now(), &counts);
}

/// Spans per tenant in a batch (a batch holds few tenants: a linear scan beats hashing).
fn spans_per_tenant(batch: &[KeptSpans]) -> Vec<(TenantId, u64)> {
    let mut out: Vec<(TenantId, u64)> = Vec::new();
    for kept in batch {
        let n = kept.spans.len() as u64;
        match out.iter_mut().find(|(t, _)| *t == kept.tenant) {
            Some((_, total)) => *total += n,
            None => out.push((kept.tenant.clone(), n)),
        }
    }
    out
}

/// Kept spans in the export queue, holding their share of the queue's byte budget until
/// their batch is delivered, spooled or counted as failed.
pub struct Queued {
    kept: KeptSpans,
    room: OwnedSemaphorePermit,
}

/// The exporter's intake: shards submit kept spans here and wait while the queue is full.
pub struct Intake {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    max_bytes: u64,
    stats: Arc<Stats>,
}

impl Intake {
    /// The queue's byte budget; receive refuses new data before it is reached.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

impl KeptSink for Intake {
    fn submit(
        &self,
        kept: KeptSpans,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let bytes: u64 = kept.spans.iter().map(|s| s.accounted_bytes() as u64).sum();
            let n = kept.spans.len() as i64;
            // One trace larger than the whole queue still goes through, alone.
            let permits = bytes
                .clamp(1, self.max_bytes.max(1))
                .min(u64::from(u32::MAX)) as u32;
            let room = match self.room.clone().try_acquire_many_owned(permits) {
                Ok(room) => room,
                Err(_) => {
                    self.stats.export_waits.fetch_add(1, Relaxed);
                    match self.room.clone().acquire_many_owned(permits).await {
                        Ok(room) => room,
                        Err(_) => {
                            // Closed only if the exporter is gone: nothing can send these.
                            self.stats
                                .drop_spans(DropReason::ShutdownDeadline, n as u64);
                            drop_for_tenant(
                                &self.stats,
                                &kept.tenant,
                                DropReason::ShutdownDeadline,
                                n as u64,
                            );
                            return;
                        }
                    }
                }
            };
            self.stats
                .export_queue_bytes
                .fetch_add(bytes as i64, Relaxed);
            self.stats.export_queue_spans.fetch_add(n, Relaxed);
            if let Err(err) = self.tx.send(Queued { kept, room }) {
                self.stats
                    .export_queue_bytes
                    .fetch_sub(bytes as i64, Relaxed);
                self.stats.export_queue_spans.fetch_sub(n, Relaxed);
                let kept = err.0.kept;
                let n = kept.spans.len() as u64;
                self.stats.drop_spans(DropReason::ShutdownDeadline, n);
                drop_for_tenant(&self.stats, &kept.tenant, DropReason::ShutdownDeadline, n);
            }
        })
    }
}

impl Intake {
    /// Queues `kept` if the queue has room now; gives it back otherwise (never waits).
    pub fn try_submit(&self, kept: KeptSpans) -> Result<(), KeptSpans> {
        let bytes: u64 = kept.spans.iter().map(|s| s.accounted_bytes() as u64).sum();
        let n = kept.spans.len() as i64;
        let permits = bytes
            .clamp(1, self.max_bytes.max(1))
            .min(u64::from(u32::MAX)) as u32;
        let Ok(room) = self.room.clone().try_acquire_many_owned(permits) else {
            return Err(kept);
        };
        self.stats
            .export_queue_bytes
            .fetch_add(bytes as i64, Relaxed);
        self.stats.export_queue_spans.fetch_add(n, Relaxed);
        self.tx.send(Queued { kept, room }).map_err(|err| {
            self.stats
                .export_queue_bytes
                .fetch_sub(bytes as i64, Relaxed);
            self.stats.export_queue_spans.fetch_sub(n, Relaxed);
            err.0.kept
        })
    }
}

/// Receive's way into the export queue for log records without a trace: a weak handle, so
/// the queue closes (and export finishes) once the shards, its owners, have drained.
pub struct UntracedIntake(std::sync::Weak<Intake>);

impl UntracedIntake {
    /// A handle on `intake`.
    pub fn new(intake: &Arc<Intake>) -> Self {
        UntracedIntake(Arc::downgrade(intake))
    }
}

impl UntracedSink for UntracedIntake {
    fn try_submit(&self, kept: KeptSpans) -> Result<(), KeptSpans> {
        match self.0.upgrade() {
            Some(intake) => intake.try_submit(kept),
            None => Err(kept),
        }
    }
}

/// Where export requests go, per signal.
pub struct Sinks {
    /// Spans of kept traces.
    pub traces: Sink,
    /// Log records of kept traces, late ones and those without a trace.
    pub logs: Sink,
    /// The disk spool of log requests (`spool_dir/logs`), when spooling is on.
    pub logs_spool: Option<Arc<Spool>>,
}

/// What a spool holds requests of, so replay counts them as the right records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spooling {
    /// Trace requests (counted in spans).
    Traces,
    /// Logs requests (counted in log records).
    Logs,
    /// Metrics requests (counted in data points).
    Metrics,
}

impl Spooling {
    /// Counts `n` records of a replayed request as delivered.
    fn delivered(self, stats: &Stats, n: u64) {
        match self {
            Spooling::Traces => {
                stats.spooled_spans.fetch_sub(n as i64, Relaxed);
                stats.spans_exported.fetch_add(n, Relaxed);
            }
            Spooling::Logs => {
                stats.log_records_exported.fetch_add(n, Relaxed);
            }
            Spooling::Metrics => {
                stats.metric_points_exported.fetch_add(n, Relaxed);
            }
        }
    }

    /// Counts `n` records of a spooled request as lost.
    fn failed(self, stats: &Stats, n: u64) {
        match self {
            Spooling::Traces => {
                stats.spooled_spans.fetch_sub(n as i64, Relaxed);
                stats.drop_spans(DropReason::ExportFailed, n);
            }
            Spooling::Logs => stats.drop_log_records(DropReason::ExportFailed, n),
            Spooling::Metrics => stats.drop_metric_points(DropReason::ExportFailed, n),
        }
    }

    /// Counts `n` records as written to the spool.
    pub fn spooled(self, stats: &Stats, n: u64) {
        if self == Spooling::Traces {
            stats.spooled_spans.fetch_add(n as i64, Relaxed);
        }
    }
}

/// Starts replaying `spool` through `sink` (oldest first) until `stop` turns true.
pub fn spawn_replay(
    spool: Arc<Spool>,
    sink: Sink,
    config: &ExportConfig,
    stats: Arc<Stats>,
    stop: tokio::sync::watch::Receiver<bool>,
    what: Spooling,
) -> tokio::task::JoinHandle<()> {
    let retry = Retry {
        initial: config.retry_initial.0,
        max: config.retry_max.0,
        max_elapsed: config.retry_max_elapsed.0,
    };
    tokio::spawn(replay(spool, sink, retry, stats, stop, what))
}

/// Creates the intake and the receiving end for [`run`].
pub fn intake(
    config: &ExportConfig,
    max_memory: u64,
    stats: Arc<Stats>,
) -> (Intake, mpsc::UnboundedReceiver<Queued>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let max_bytes = config
        .queue_max_bytes
        .map_or(max_memory / 4, |b| b.0)
        .clamp(1, Semaphore::MAX_PERMITS as u64);
    (
        Intake {
            tx,
            room: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
            stats,
        },
        rx,
    )
}

/// Retry policy for one batch.
#[derive(Clone, Debug)]
struct Retry {
    initial: Duration,
    max: Duration,
    max_elapsed: Duration,
}

/// Runs the exporter until every intake is closed and the queue is drained. With a spool,
/// a batch the backend refuses with a retryable error goes to disk at once (memory stays
/// bounded through long outages) and a replay task sends spooled batches oldest first.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    sinks: Sinks,
    config: ExportConfig,
    annotation_keys: AnnotationKeys,
    spool: Option<Arc<Spool>>,
    stats: Arc<Stats>,
) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let mut tasks = JoinSet::new();
    let retry = Retry {
        initial: config.retry_initial.0,
        max: config.retry_max.0,
        max_elapsed: config.retry_max_elapsed.0,
    };
    let (stop_replay, replay_stopped) = tokio::sync::watch::channel(false);
    let sinks = Arc::new(sinks);
    let mut replays = Vec::new();
    for (spool, sink, what) in [
        (spool.clone(), &sinks.traces, Spooling::Traces),
        (sinks.logs_spool.clone(), &sinks.logs, Spooling::Logs),
    ] {
        if let Some(spool) = spool {
            replays.push(tokio::spawn(replay(
                spool,
                sink.clone(),
                retry.clone(),
                stats.clone(),
                replay_stopped.clone(),
                what,
            )));
        }
    }
    let split_by_headers = !config.pass_through_headers.is_empty();
    let mut batch: Vec<KeptSpans> = Vec::new();
    let mut rooms: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut batch_spans = 0usize;
    let mut open = true;
    while open {
        // Wait for the first entry of a batch, then fill until full or the timeout.
        match rx.recv().await {
            Some(queued) => {
                batch_spans += queued.kept.spans.len();
                batch.push(queued.kept);
                rooms.push(queued.room);
            }
            None => break,
        }
        let flush_at = Instant::now() + config.batch_timeout.0;
        while batch_spans < config.batch_max_spans {
            match tokio::time::timeout_at(flush_at, rx.recv()).await {
                Ok(Some(queued)) => {
                    batch_spans += queued.kept.spans.len();
                    batch.push(queued.kept);
                    rooms.push(queued.room);
                }
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let batch = std::mem::take(&mut batch);
        let rooms = std::mem::take(&mut rooms);
        let records = std::mem::take(&mut batch_spans) as i64;
        let (sinks, stats, retry, keys, spool) = (
            sinks.clone(),
            stats.clone(),
            retry.clone(),
            annotation_keys.clone(),
            spool.clone(),
        );
        // Encoding happens in the send task, so batches are encoded in parallel.
        tasks.spawn(async move {
            let bytes: i64 = batch
                .iter()
                .flat_map(|k| k.spans.iter())
                .map(|s| s.accounted_bytes() as i64)
                .sum();
            let (span_batch, log_batch) = split_by_kind(batch);
            for (kind, batch) in [(RecordKind::Span, span_batch), (RecordKind::Log, log_batch)] {
                if batch.is_empty() {
                    continue;
                }
                // One request per distinct set of pass-through headers; without the option
                // there is exactly one part, the batch as it is.
                let parts = if split_by_headers {
                    split_by_pass_through(batch)
                } else {
                    vec![(PassThrough::NONE, batch)]
                };
                for (pass_through, part) in parts {
                    let all = || part.iter().flat_map(|k| k.spans.iter());
                    let part_records = all().count() as u64;
                    let part_bytes: usize = all().map(SpanRecord::accounted_bytes).sum();
                    let part_tenants = spans_per_tenant(&part);
                    let mut body = Vec::with_capacity(part_bytes + 1024);
                    let mut encoder = BatchEncoder::new(keys.clone());
                    let (sink, spool, what) = match kind {
                        RecordKind::Span => {
                            encoder.encode(&part, &mut body);
                            (&sinks.traces, spool.as_deref(), Spooling::Traces)
                        }
                        RecordKind::Log => {
                            encoder.encode_logs(&part, &mut body);
                            (&sinks.logs, sinks.logs_spool.as_deref(), Spooling::Logs)
                        }
                    };
                    drop(part);
                    let outcome = send_with_retry(
                        sink,
                        Bytes::from(body),
                        &pass_through,
                        part_records,
                        &retry,
                        spool.map(|s| (s, what)),
                        &stats,
                    )
                    .await;
                    count_outcome(&stats, kind, &outcome, part_records, part_tenants);
                }
            }
            stats.export_queue_bytes.fetch_sub(bytes, Relaxed);
            stats.export_queue_spans.fetch_sub(records, Relaxed);
            // The batch's room in the queue frees only now: delivered, spooled or counted.
            drop(rooms);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let _ = stop_replay.send(true);
    for replay in replays {
        let _ = replay.await;
    }
}

/// Splits a batch into its spans and its log records (a batch without logs moves as it is).
fn split_by_kind(batch: Vec<KeptSpans>) -> (Vec<KeptSpans>, Vec<KeptSpans>) {
    if !batch
        .iter()
        .any(|k| k.spans.iter().any(|r| r.index.is_log()))
    {
        return (batch, Vec::new());
    }
    let mut spans = Vec::with_capacity(batch.len());
    let mut logs = Vec::new();
    for kept in batch {
        let (n, l) = count_kinds(&kept.spans);
        if l == 0 {
            spans.push(kept);
        } else if n == 0 {
            logs.push(kept);
        } else {
            let KeptSpans {
                tenant,
                decision,
                spans: records,
            } = kept;
            let (log_records, span_records): (Vec<_>, Vec<_>) =
                records.into_iter().partition(|r| r.index.is_log());
            spans.push(KeptSpans {
                tenant: tenant.clone(),
                decision: decision.clone(),
                spans: span_records,
            });
            logs.push(KeptSpans {
                tenant,
                decision,
                spans: log_records,
            });
        }
    }
    (spans, logs)
}

/// Counts what became of one export request's records (spans or log records), in total and
/// per tenant.
fn count_outcome(
    stats: &Stats,
    kind: RecordKind,
    outcome: &Outcome,
    spans: u64,
    tenants: Vec<(TenantId, u64)>,
) {
    if kind == RecordKind::Log {
        match outcome {
            Outcome::Delivered => {
                stats.log_records_exported.fetch_add(spans, Relaxed);
            }
            Outcome::Spooled => {}
            Outcome::Failed => stats.drop_log_records(DropReason::ExportFailed, spans),
        }
        let counts: Vec<(TenantId, Counts)> = tenants
            .into_iter()
            .map(|(tenant, n)| {
                let mut c = Counts::default();
                match outcome {
                    Outcome::Failed => c.logs_dropped = n,
                    _ => c.logs_exported = n,
                }
                (tenant, c)
            })
            .collect();
        stats
            .tenants
            .add_all(unix_now(), counts.iter().map(|(t, c)| (t, c)));
        return;
    }
    match outcome {
        Outcome::Delivered => {
            stats.spans_exported.fetch_add(spans, Relaxed);
        }
        Outcome::Spooled => {}
        Outcome::Failed => stats.drop_spans(DropReason::ExportFailed, spans),
    }
    // A spooled batch is attributed to no tenant when it is replayed later (the spool
    // keeps encoded requests only), so per-tenant counts cover direct deliveries.
    let counts: Vec<(TenantId, Counts)> = tenants
        .into_iter()
        .filter_map(|(tenant, n)| {
            let mut c = Counts::default();
            match outcome {
                Outcome::Delivered => c.spans_exported = n,
                Outcome::Spooled => return None,
                Outcome::Failed => c.drop_spans(DropReason::ExportFailed, n),
            }
            Some((tenant, c))
        })
        .collect();
    stats
        .tenants
        .add_all(unix_now(), counts.iter().map(|(t, c)| (t, c)));
}

/// Splits a batch into one part per distinct set of pass-through headers, so no export
/// request mixes spans of different clients' credentials. A trace whose spans all share one
/// set (the common case) moves whole; only a trace whose spans came with different sets is
/// split span by span.
fn split_by_pass_through(batch: Vec<KeptSpans>) -> Vec<(PassThrough, Vec<KeptSpans>)> {
    fn part_for<'a>(
        parts: &'a mut Vec<(PassThrough, Vec<KeptSpans>)>,
        key: &PassThrough,
    ) -> &'a mut Vec<KeptSpans> {
        let i = match parts.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                parts.push((key.clone(), Vec::new()));
                parts.len() - 1
            }
        };
        &mut parts[i].1
    }
    let mut parts: Vec<(PassThrough, Vec<KeptSpans>)> = Vec::new();
    for kept in batch {
        let Some(first) = kept.spans.first().map(|s| s.origin.pass_through.clone()) else {
            continue;
        };
        if kept.spans.iter().all(|s| s.origin.pass_through == first) {
            part_for(&mut parts, &first).push(kept);
            continue;
        }
        let KeptSpans {
            tenant,
            decision,
            spans,
        } = kept;
        let mut by_set: Vec<(PassThrough, Vec<SpanRecord>)> = Vec::new();
        for span in spans {
            match by_set
                .iter_mut()
                .find(|(k, _)| *k == span.origin.pass_through)
            {
                Some((_, v)) => v.push(span),
                None => by_set.push((span.origin.pass_through.clone(), vec![span])),
            }
        }
        for (key, spans) in by_set {
            part_for(&mut parts, &key).push(KeptSpans {
                tenant: tenant.clone(),
                decision: decision.clone(),
                spans,
            });
        }
    }
    parts
}

/// What became of one batch.
enum Outcome {
    /// The backend took it.
    Delivered,
    /// It waits on disk for the replay task.
    Spooled,
    /// Refused for good or retried too long.
    Failed,
}

/// Sends one request, retrying retryable failures with capped exponential backoff and jitter
/// (honouring the backend's requested delay) until `max_elapsed`; with a spool, a retryable
/// failure moves the request to disk instead.
async fn send_with_retry(
    sink: &Sink,
    body: Bytes,
    pass_through: &PassThrough,
    spans: u64,
    retry: &Retry,
    spool: Option<(&Spool, Spooling)>,
    stats: &Stats,
) -> Outcome {
    let start = Instant::now();
    let mut delay = retry.initial;
    loop {
        match sink.send(body.clone(), pass_through).await {
            Ok(()) => return Outcome::Delivered,
            Err(err) if err.retryable => {
                // The spool keeps request bodies only: a request with pass-through headers
                // is retried in memory, so it is never replayed without its client's headers
                // (and no credential is written to disk).
                if let Some((spool, what)) = spool.filter(|_| pass_through.is_empty()) {
                    match spool.push(&body, spans) {
                        Ok(()) => {
                            what.spooled(stats, spans);
                            tracing::warn!(error = %err, records = spans, signal = ?what, "export failed; batch spooled to disk for replay");
                            return Outcome::Spooled;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot spool; retrying in memory"),
                    }
                }
                let wait = err.retry_after.unwrap_or_else(|| jitter(delay));
                if start.elapsed() + wait > retry.max_elapsed {
                    tracing::error!(error = %err, "export failed after retrying; spans dropped");
                    return Outcome::Failed;
                }
                stats.export_retries.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "export failed; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(retry.max);
            }
            Err(err) => {
                tracing::error!(error = %err, "export refused permanently; spans dropped");
                return Outcome::Failed;
            }
        }
    }
}

/// A delay between 50% and 100% of `delay`, so many proxies do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    let mut rng = rand::rng();
    delay.mul_f64(rng.random_range(0.5..1.0))
}

/// Sends spooled requests oldest first until told to stop; waits with backoff while the
/// backend refuses. What is still spooled at stop waits for the next start.
async fn replay(
    spool: Arc<Spool>,
    sink: Sink,
    retry: Retry,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    what: Spooling,
) {
    let mut delay = retry.initial;
    loop {
        let wait = match spool.oldest() {
            None => Duration::from_millis(200),
            Some(item) => match spool.read(&item) {
                Err(e) => {
                    tracing::error!(error = %e, "unreadable spool file dropped");
                    spool.remove(&item);
                    what.failed(&stats, item.spans);
                    Duration::ZERO
                }
                Ok(body) => match sink.send(Bytes::from(body), &PassThrough::NONE).await {
                    Ok(()) => {
                        spool.remove(&item);
                        what.delivered(&stats, item.spans);
                        delay = retry.initial;
                        Duration::ZERO
                    }
                    Err(err) if err.retryable => {
                        let wait = err.retry_after.unwrap_or_else(|| jitter(delay));
                        delay = (delay * 2).min(retry.max);
                        wait
                    }
                    Err(err) => {
                        tracing::error!(error = %err, records = item.spans, signal = ?what, "spooled batch refused permanently; dropped");
                        spool.remove(&item);
                        what.failed(&stats, item.spans);
                        Duration::ZERO
                    }
                },
            },
        };
        if *stop.borrow() {
            return;
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Decision, Origin, SpanIndex};

    fn span(trace: u8, team: Option<&str>) -> SpanRecord {
        let pass_through = match team {
            Some(v) => PassThrough::new(vec![(
                http::HeaderName::from_static("x-honeycomb-team"),
                http::HeaderValue::from_str(v).unwrap(),
            )]),
            None => PassThrough::NONE,
        };
        SpanRecord {
            bytes: Bytes::new(),
            origin: Arc::new(Origin {
                tenant: TenantId::new("t"),
                resource: Bytes::new(),
                resource_schema_url: Bytes::new(),
                scope: Bytes::new(),
                scope_schema_url: Bytes::new(),
                content_hash: 0,
                pass_through,
            }),
            index: SpanIndex {
                trace_id: crate::model::TraceId([trace; 16]),
                ..Default::default()
            },
        }
    }

    fn kept(spans: Vec<SpanRecord>) -> KeptSpans {
        KeptSpans {
            tenant: TenantId::new("t"),
            decision: Decision {
                keep: true,
                sample_rate: 1,
                threshold: 0,
                rule: "all".into(),
            },
            spans,
        }
    }

    #[test]
    fn a_batch_is_split_into_one_part_per_pass_through_header_set() {
        let batch = vec![
            kept(vec![span(1, Some("a")), span(1, Some("a"))]),
            kept(vec![span(2, Some("b"))]),
            // One trace whose spans came from two clients is split span by span.
            kept(vec![span(3, Some("a")), span(3, None), span(3, Some("b"))]),
        ];
        let parts = split_by_pass_through(batch);
        let summary: Vec<(Vec<String>, usize)> = parts
            .iter()
            .map(|(key, part)| {
                let values = key
                    .headers()
                    .iter()
                    .map(|(_, v)| v.to_str().unwrap().to_string())
                    .collect();
                (values, part.iter().map(|k| k.spans.len()).sum())
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (vec!["a".to_string()], 3),
                (vec!["b".to_string()], 2),
                (vec![], 1),
            ]
        );
        for (key, part) in &parts {
            for s in part.iter().flat_map(|k| k.spans.iter()) {
                assert_eq!(&s.origin.pass_through, key);
            }
        }
    }
}
