//! The export stage: batches kept spans, encodes them once into OTLP requests (span bytes
//! copied as they arrived, plus annotations) and sends them with retries. The queue is bounded
//! in bytes; every span that is not delivered is counted with its reason.

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
use crate::model::{DropReason, KeptSpans, TenantId};
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
    sink: Sink,
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
    let replay = spool.clone().map(|spool| {
        tokio::spawn(replay(
            spool,
            sink.clone(),
            retry.clone(),
            stats.clone(),
            replay_stopped,
        ))
    });
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
        let tenants = spans_per_tenant(&batch);
        let batch = std::mem::take(&mut batch);
        let rooms = std::mem::take(&mut rooms);
        let spans = std::mem::take(&mut batch_spans) as u64;
        let (sink, stats, retry, keys, spool) = (
            sink.clone(),
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
            let mut body = Vec::with_capacity(bytes as usize + 1024);
            BatchEncoder::new(keys).encode(&batch, &mut body);
            drop(batch);
            let outcome = send_with_retry(
                &sink,
                Bytes::from(body),
                spans,
                &retry,
                spool.as_deref(),
                &stats,
            )
            .await;
            stats.export_queue_bytes.fetch_sub(bytes, Relaxed);
            stats.export_queue_spans.fetch_sub(spans as i64, Relaxed);
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
            // The batch's room in the queue frees only now: delivered, spooled or counted.
            drop(rooms);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let _ = stop_replay.send(true);
    if let Some(replay) = replay {
        let _ = replay.await;
    }
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
    spans: u64,
    retry: &Retry,
    spool: Option<&Spool>,
    stats: &Stats,
) -> Outcome {
    let start = Instant::now();
    let mut delay = retry.initial;
    loop {
        match sink.send(body.clone()).await {
            Ok(()) => return Outcome::Delivered,
            Err(err) if err.retryable => {
                if let Some(spool) = spool {
                    match spool.push(&body, spans) {
                        Ok(()) => {
                            stats.spooled_spans.fetch_add(spans as i64, Relaxed);
                            tracing::warn!(error = %err, spans, "export failed; batch spooled to disk for replay");
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
) {
    let mut delay = retry.initial;
    loop {
        let wait = match spool.oldest() {
            None => Duration::from_millis(200),
            Some(item) => match spool.read(&item) {
                Err(e) => {
                    tracing::error!(error = %e, "unreadable spool file dropped");
                    spool.remove(&item);
                    stats.spooled_spans.fetch_sub(item.spans as i64, Relaxed);
                    stats.drop_spans(DropReason::ExportFailed, item.spans);
                    Duration::ZERO
                }
                Ok(body) => match sink.send(Bytes::from(body)).await {
                    Ok(()) => {
                        spool.remove(&item);
                        stats.spooled_spans.fetch_sub(item.spans as i64, Relaxed);
                        stats.spans_exported.fetch_add(item.spans, Relaxed);
                        delay = retry.initial;
                        Duration::ZERO
                    }
                    Err(err) if err.retryable => {
                        let wait = err.retry_after.unwrap_or_else(|| jitter(delay));
                        delay = (delay * 2).min(retry.max);
                        wait
                    }
                    Err(err) => {
                        tracing::error!(error = %err, spans = item.spans, "spooled batch refused permanently; dropped");
                        spool.remove(&item);
                        stats.spooled_spans.fetch_sub(item.spans as i64, Relaxed);
                        stats.drop_spans(DropReason::ExportFailed, item.spans);
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
