//! The export stage: batches kept spans, encodes them once into OTLP requests (span bytes
//! copied as they arrived, plus annotations) and sends them with retries. The queue is bounded
//! in bytes; every span that is not delivered is counted with its reason.

pub mod sink;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::buffer::KeptSink;
use crate::config::ExportConfig;
use crate::model::{DropReason, KeptSpans, TenantId};
use crate::otlp::encode::{AnnotationKeys, BatchEncoder};
use crate::stats::tenant::{unix_now, Counts};
use crate::stats::Stats;
use sink::Sink;

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

/// The exporter's intake: shards submit kept spans here without blocking.
pub struct Intake {
    tx: mpsc::UnboundedSender<KeptSpans>,
    max_bytes: i64,
    stats: Arc<Stats>,
}

impl KeptSink for Intake {
    fn submit(&self, kept: KeptSpans) {
        let bytes: i64 = kept.spans.iter().map(|s| s.accounted_bytes() as i64).sum();
        let n = kept.spans.len() as u64;
        // The queue is bounded in bytes: past the budget, spans are dropped and counted.
        let before = self.stats.export_queue_bytes.fetch_add(bytes, Relaxed);
        if before + bytes > self.max_bytes && before > 0 {
            self.stats.export_queue_bytes.fetch_sub(bytes, Relaxed);
            self.stats.drop_spans(DropReason::ExportOverflow, n);
            drop_for_tenant(&self.stats, &kept.tenant, DropReason::ExportOverflow, n);
            tracing::warn!(spans = n, "export queue full; kept spans dropped");
            return;
        }
        self.stats.export_queue_spans.fetch_add(n as i64, Relaxed);
        if let Err(err) = self.tx.send(kept) {
            self.stats.export_queue_bytes.fetch_sub(bytes, Relaxed);
            self.stats.export_queue_spans.fetch_sub(n as i64, Relaxed);
            let n = err.0.spans.len() as u64;
            self.stats.drop_spans(DropReason::ShutdownDeadline, n);
            drop_for_tenant(&self.stats, &err.0.tenant, DropReason::ShutdownDeadline, n);
        }
    }
}

/// Creates the intake and the receiving end for [`run`].
pub fn intake(
    config: &ExportConfig,
    stats: Arc<Stats>,
) -> (Intake, mpsc::UnboundedReceiver<KeptSpans>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Intake {
            tx,
            max_bytes: config.queue_max_bytes.0 as i64,
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

/// Runs the exporter until every intake is closed and the queue is drained.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<KeptSpans>,
    sink: Sink,
    config: ExportConfig,
    annotation_keys: AnnotationKeys,
    stats: Arc<Stats>,
) {
    let mut encoder = BatchEncoder::new(annotation_keys);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let mut tasks = JoinSet::new();
    let retry = Retry {
        initial: config.retry_initial.0,
        max: config.retry_max.0,
        max_elapsed: config.retry_max_elapsed.0,
    };
    let mut batch: Vec<KeptSpans> = Vec::new();
    let mut batch_spans = 0usize;
    let mut open = true;
    while open {
        // Wait for the first entry of a batch, then fill until full or the timeout.
        match rx.recv().await {
            Some(kept) => {
                batch_spans += kept.spans.len();
                batch.push(kept);
            }
            None => break,
        }
        let flush_at = Instant::now() + config.batch_timeout.0;
        while batch_spans < config.batch_max_spans {
            match tokio::time::timeout_at(flush_at, rx.recv()).await {
                Ok(Some(kept)) => {
                    batch_spans += kept.spans.len();
                    batch.push(kept);
                }
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let permit = match in_flight.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let spans = batch_spans as u64;
        let bytes: i64 = batch
            .iter()
            .flat_map(|k| k.spans.iter())
            .map(|s| s.accounted_bytes() as i64)
            .sum();
        let tenants = spans_per_tenant(&batch);
        let mut body = Vec::with_capacity(bytes as usize + 1024);
        encoder.encode(&batch, &mut body);
        batch.clear();
        batch_spans = 0;
        let sink = sink.clone();
        let stats = stats.clone();
        let retry = retry.clone();
        tasks.spawn(async move {
            let delivered = send_with_retry(&sink, Bytes::from(body), &retry, &stats).await;
            stats.export_queue_bytes.fetch_sub(bytes, Relaxed);
            stats.export_queue_spans.fetch_sub(spans as i64, Relaxed);
            if delivered {
                stats.spans_exported.fetch_add(spans, Relaxed);
            } else {
                stats.drop_spans(DropReason::ExportFailed, spans);
            }
            let counts: Vec<(TenantId, Counts)> = tenants
                .into_iter()
                .map(|(tenant, n)| {
                    let mut c = Counts::default();
                    if delivered {
                        c.spans_exported = n;
                    } else {
                        c.drop_spans(DropReason::ExportFailed, n);
                    }
                    (tenant, c)
                })
                .collect();
            stats
                .tenants
                .add_all(unix_now(), counts.iter().map(|(t, c)| (t, c)));
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Sends one request, retrying retryable failures with capped exponential backoff and jitter
/// (honouring the backend's requested delay) until `max_elapsed`. Returns whether it arrived.
async fn send_with_retry(sink: &Sink, body: Bytes, retry: &Retry, stats: &Stats) -> bool {
    let start = Instant::now();
    let mut delay = retry.initial;
    loop {
        match sink.send(body.clone()).await {
            Ok(()) => return true,
            Err(err) if err.retryable => {
                let jittered = {
                    let mut rng = rand::rng();
                    delay.mul_f64(rng.random_range(0.5..1.0))
                };
                let wait = err.retry_after.unwrap_or(jittered);
                if start.elapsed() + wait > retry.max_elapsed {
                    tracing::error!(error = %err, "export failed after retrying; spans dropped");
                    return false;
                }
                stats.export_retries.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "export failed; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(retry.max);
            }
            Err(err) => {
                tracing::error!(error = %err, "export refused permanently; spans dropped");
                return false;
            }
        }
    }
}
