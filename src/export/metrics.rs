//! Metrics pass-through: a bounded queue (in bytes) of OTLP metrics requests, drained by a
//! task that sends each request, unchanged, to the backend's metrics endpoint with the trace
//! exporter's retry policy. Metrics are never held for a decision; when the queue is full,
//! receive refuses with the codes OTLP clients retry. Metrics are not spooled to disk.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::sink::Sink;
use super::{jitter, Retry};
use crate::config::ExportConfig;
use crate::model::{DropReason, MetricsRequest, MetricsSink};
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
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
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
        let (sink, stats, retry) = (sink.clone(), stats.clone(), retry.clone());
        tasks.spawn(async move {
            let len = request.body.len() as i64;
            if send_with_retry(&sink, &request, &retry, &stats).await {
                stats
                    .metric_points_exported
                    .fetch_add(request.points, Relaxed);
            } else {
                stats.drop_metric_points(DropReason::ExportFailed, request.points);
            }
            stats.metrics_queue_bytes.fetch_sub(len, Relaxed);
            stats
                .metrics_queue_points
                .fetch_sub(request.points as i64, Relaxed);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Sends one metrics request, retrying retryable failures with capped exponential backoff
/// and jitter (honouring the backend's requested delay) until `max_elapsed`; whether the
/// backend took it.
async fn send_with_retry(
    sink: &Sink,
    request: &MetricsRequest,
    retry: &Retry,
    stats: &Stats,
) -> bool {
    let start = Instant::now();
    let mut delay = retry.initial;
    loop {
        match sink.send(request.body.clone(), &request.pass_through).await {
            Ok(()) => return true,
            Err(err) if err.retryable => {
                let wait = err.retry_after.unwrap_or_else(|| jitter(delay));
                if start.elapsed() + wait > retry.max_elapsed {
                    tracing::error!(error = %err, points = request.points, "metrics export failed after retrying; points dropped");
                    return false;
                }
                stats.export_retries.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "metrics export failed; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(retry.max);
            }
            Err(err) => {
                tracing::error!(error = %err, points = request.points, "metrics export refused permanently; points dropped");
                return false;
            }
        }
    }
}
