//! Metrics pass-through: a bounded queue (in bytes) of OTLP metrics requests, drained by a
//! task that sends each request, unchanged, to the backend's metrics endpoint with the trace
//! exporter's retry policy. Metrics are never held for a decision; when the queue is full,
//! receive refuses with the codes OTLP clients retry. With `[export] spool_dir`, a request the
//! backend refuses with a retryable error goes to `spool_dir/metrics` and is replayed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::sink::Sink;
use super::spool::Spool;
use super::{jitter, spawn_replay, Retry, Spooling};
use crate::config::ExportConfig;
use crate::model::{DropReason, MetricsRequest, MetricsSink};
use crate::stats::tenant::{unix_now, Counts};
use crate::stats::Stats;

/// The metrics queue's intake, handed to receive.
pub struct MetricsQueue {
    tx: mpsc::UnboundedSender<MetricsRequest>,
    max_bytes: i64,
    stats: Arc<Stats>,
}

impl MetricsSink for MetricsQueue {
    fn try_submit(&self, request: MetricsRequest) -> Result<(), MetricsRequest> {
        let len = request.body.len() as i64;
        let queued = self.stats.metrics_queue_bytes.fetch_add(len, Relaxed);
        // A request larger than the whole queue still goes through when the queue is empty.
        if queued > 0 && queued + len > self.max_bytes {
            self.stats.metrics_queue_bytes.fetch_sub(len, Relaxed);
            return Err(request);
        }
        let points = request.points as i64;
        self.stats.metrics_queue_points.fetch_add(points, Relaxed);
        self.tx.send(request).map_err(|refused| {
            self.stats.metrics_queue_bytes.fetch_sub(len, Relaxed);
            self.stats.metrics_queue_points.fetch_sub(points, Relaxed);
            refused.0
        })
    }
}

/// Creates the metrics queue (`[export] metrics_queue_max_bytes`) and its receiving end.
pub fn queue(
    config: &ExportConfig,
    stats: Arc<Stats>,
) -> (MetricsQueue, mpsc::UnboundedReceiver<MetricsRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let max_bytes = config.metrics_queue_max_bytes.0.min(i64::MAX as u64) as i64;
    (
        MetricsQueue {
            tx,
            max_bytes,
            stats,
        },
        rx,
    )
}

/// Sends queued metrics requests (at most `max_in_flight` at once) until `stop` turns true;
/// then refuses new requests, sends what is queued and returns.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<MetricsRequest>,
    sink: Sink,
    config: ExportConfig,
    spool: Option<Arc<Spool>>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let replay = spool.clone().map(|spool| {
        spawn_replay(
            spool,
            sink.clone(),
            &config,
            stats.clone(),
            stop.clone(),
            Spooling::Metrics,
        )
    });
    let retry = Retry {
        initial: config.retry_initial.0,
        max: config.retry_max.0,
        max_elapsed: config.retry_max_elapsed.0,
    };
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut stopping = false;
    loop {
        let request = if stopping {
            rx.recv().await
        } else {
            tokio::select! {
                r = rx.recv() => r,
                _ = stop.wait_for(|s| *s) => {
                    // Closing lets the queued requests drain; later submits are refused.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        let Some(request) = request else { break };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (sink, stats, retry, spool) =
            (sink.clone(), stats.clone(), retry.clone(), spool.clone());
        tasks.spawn(async move {
            let len = request.body.len() as i64;
            let outcome = send_with_retry(&sink, &request, &retry, spool.as_deref(), &stats).await;
            match outcome {
                Sent::Delivered => {
                    stats
                        .metric_points_exported
                        .fetch_add(request.points, Relaxed);
                }
                Sent::Spooled => {}
                Sent::Failed => stats.drop_metric_points(DropReason::ExportFailed, request.points),
            }
            count_per_tenant(&stats, &request, &outcome);
            stats.metrics_queue_bytes.fetch_sub(len, Relaxed);
            stats
                .metrics_queue_points
                .fetch_sub(request.points as i64, Relaxed);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    if let Some(replay) = replay {
        let _ = replay.await;
    }
}

/// Counts a request's points per tenant as delivered or dropped (a spooled request is
/// attributed to no tenant when replayed, as for traces).
fn count_per_tenant(stats: &Stats, request: &MetricsRequest, outcome: &Sent) {
    let counts: Vec<_> = request
        .tenants
        .iter()
        .filter_map(|(tenant, n)| {
            let mut c = Counts::default();
            match outcome {
                Sent::Delivered => c.metric_points_exported = *n,
                Sent::Failed => c.metric_points_dropped = *n,
                Sent::Spooled => return None,
            }
            Some((tenant, c))
        })
        .collect();
    if !counts.is_empty() {
        stats
            .tenants
            .add_all(unix_now(), counts.iter().map(|(t, c)| (*t, c)));
    }
}

/// What became of one metrics request.
enum Sent {
    Delivered,
    Spooled,
    Failed,
}

/// Sends one metrics request, retrying retryable failures with capped exponential backoff
/// and jitter (honouring the backend's requested delay) until `max_elapsed`; whether the
/// backend took it.
async fn send_with_retry(
    sink: &Sink,
    request: &MetricsRequest,
    retry: &Retry,
    spool: Option<&Spool>,
    stats: &Stats,
) -> Sent {
    let start = Instant::now();
    let mut delay = retry.initial;
    loop {
        match sink.send(request.body.clone(), &request.pass_through).await {
            Ok(()) => return Sent::Delivered,
            Err(err) if err.retryable => {
                // As for traces: a request with pass-through headers is never written to disk.
                if let Some(spool) = spool.filter(|_| request.pass_through.is_empty()) {
                    match spool.push(&request.body, request.points) {
                        Ok(()) => {
                            tracing::warn!(error = %err, points = request.points, "metrics export failed; request spooled to disk for replay");
                            return Sent::Spooled;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot spool metrics; retrying in memory")
                        }
                    }
                }
                let wait = err.retry_after.unwrap_or_else(|| jitter(delay));
                if start.elapsed() + wait > retry.max_elapsed {
                    tracing::error!(error = %err, points = request.points, "metrics export failed after retrying; points dropped");
                    return Sent::Failed;
                }
                stats.export_retries.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "metrics export failed; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(retry.max);
            }
            Err(err) => {
                tracing::error!(error = %err, points = request.points, "metrics export refused permanently; points dropped");
                return Sent::Failed;
            }
        }
    }
}
