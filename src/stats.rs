//! Counters every stage adds to and admin reads. A leaf: it knows no stage. Stages add per
//! batch, not per span, so counting stays off the per-span cost. Per-tenant counts over
//! sliding windows live in [`tenant`].

pub mod tenant;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::model::{DecideCause, DropReason};

/// Process-wide counters and gauges.
#[derive(Debug, Default)]
pub struct Stats {
    /// Export requests received (gRPC and HTTP).
    pub requests_received: AtomicU64,
    /// Requests refused with a retryable code because the proxy was full.
    pub requests_refused: AtomicU64,
    /// Requests refused as undecodable or too large.
    pub requests_invalid: AtomicU64,
    /// Valid spans accepted into the pipeline.
    pub spans_received: AtomicU64,
    /// Traces decided.
    pub traces_decided: AtomicU64,
    /// Traces kept.
    pub traces_kept: AtomicU64,
    /// Spans of kept traces handed to export (late spans included).
    pub spans_kept: AtomicU64,
    /// Spans delivered to the backend.
    pub spans_exported: AtomicU64,
    /// Spans that arrived after their trace was decided.
    pub late_spans: AtomicU64,
    /// Export requests that failed and were retried.
    pub export_retries: AtomicU64,
    /// Times a shard waited for room in a full export queue (backpressure).
    pub export_waits: AtomicU64,
    /// Spans not delivered, by reason.
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Traces decided, by what triggered the decision.
    decided_by: [AtomicU64; 5],
    /// Spans currently buffered.
    pub buffered_spans: AtomicI64,
    /// Traces currently buffered.
    pub buffered_traces: AtomicI64,
    /// Bytes currently buffered (spans plus per-span overhead).
    pub buffered_bytes: AtomicI64,
    /// Bytes of kept spans waiting for export.
    pub export_queue_bytes: AtomicI64,
    /// Kept spans waiting for export or in flight.
    pub export_queue_spans: AtomicI64,
    /// Kept spans waiting in the disk spool.
    pub spooled_spans: AtomicI64,
    /// Kept spans decided by a shard and waiting for room in the export queue.
    pub handoff_spans: AtomicI64,
    /// Bytes of spans reserved or queued for forwarding to peers (cluster), inside the budget.
    pub forward_queue_bytes: AtomicI64,
    /// Metric data points accepted (metrics pass through, never held).
    pub metric_points_received: AtomicU64,
    /// Metric data points delivered to the backend.
    pub metric_points_exported: AtomicU64,
    /// Metric data points not delivered, by reason.
    metric_points_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Bytes of metrics requests waiting for export or in flight.
    pub metrics_queue_bytes: AtomicI64,
    /// Metric data points waiting for export or in flight.
    pub metrics_queue_points: AtomicI64,
    /// Log records accepted: held with their trace, or passed through without one.
    pub log_records_received: AtomicU64,
    /// Log records without a trace id among those received.
    pub log_records_untraced: AtomicU64,
    /// Log records handed to export (of kept traces, late ones, and untraced ones sampled in).
    pub log_records_kept: AtomicU64,
    /// Log records delivered to the backend.
    pub log_records_exported: AtomicU64,
    /// Log records that arrived after their trace was decided.
    pub log_records_late: AtomicU64,
    /// Log records not delivered, by reason (`rule` / `sampled`: their trace was dropped, or
    /// an untraced record was not sampled).
    log_records_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Per-tenant counts over sliding windows, and the decision-latency histogram.
    pub tenants: tenant::TenantTable,
    /// What the receive listeners' security settings did (truncation, keys, TLS, timeouts).
    pub receive: ReceiveCounters,
}

/// Counters of the receive side's protections, so each refusal or rewrite is visible.
#[derive(Debug, Default)]
pub struct ReceiveCounters {
    /// String attribute values cut to `receive.max_attribute_bytes`.
    pub attributes_truncated: AtomicU64,
    /// Requests refused by `[auth]` because they carried no key.
    pub auth_missing: AtomicU64,
    /// Requests refused by `[auth]` because their key is not in the keys file.
    pub auth_unknown: AtomicU64,
    /// Resources whose tenant attribute named another tenant than their API key's.
    pub tenant_overridden: AtomicU64,
    /// Receive certificates (re)loaded after a change on disk.
    pub tls_reloads: AtomicU64,
    /// Changed receive certificate files that could not be used (the old ones stay).
    pub tls_reload_failures: AtomicU64,
}

fn cause_index(cause: DecideCause) -> usize {
    match cause {
        DecideCause::RootGrace => 0,
        DecideCause::Timeout => 1,
        DecideCause::SpanLimit => 2,
        DecideCause::MemoryPressure => 3,
        DecideCause::Shutdown => 4,
    }
}

/// All decide causes in index order.
pub const CAUSES: [DecideCause; 5] = [
    DecideCause::RootGrace,
    DecideCause::Timeout,
    DecideCause::SpanLimit,
    DecideCause::MemoryPressure,
    DecideCause::Shutdown,
];

impl Stats {
    /// Counts `spans` spans not delivered for `reason`.
    pub fn drop_spans(&self, reason: DropReason, spans: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].fetch_add(spans, Relaxed);
    }

    /// Counts `points` metric data points not delivered for `reason`.
    pub fn drop_metric_points(&self, reason: DropReason, points: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.metric_points_dropped[i].fetch_add(points, Relaxed);
    }

    /// Counts `records` log records not delivered for `reason`.
    pub fn drop_log_records(&self, reason: DropReason, records: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.log_records_dropped[i].fetch_add(records, Relaxed);
    }

    /// Log records dropped for `reason` so far.
    pub fn log_records_dropped(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.log_records_dropped[i].load(Relaxed)
    }

    /// Counts records not delivered for `reason`, spans and log records apart.
    pub fn drop_records(&self, reason: DropReason, spans: u64, logs: u64) {
        if spans > 0 {
            self.drop_spans(reason, spans);
        }
        if logs > 0 {
            self.drop_log_records(reason, logs);
        }
    }

    /// Metric data points dropped for `reason` so far.
    pub fn metric_points_dropped(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.metric_points_dropped[i].load(Relaxed)
    }

    /// Spans dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].load(Relaxed)
    }

    /// Counts a trace decided because of `cause`.
    pub fn decided_by(&self, cause: DecideCause, traces: u64) {
        self.decided_by[cause_index(cause)].fetch_add(traces, Relaxed);
    }

    /// Traces decided because of `cause` so far.
    pub fn decided_count(&self, cause: DecideCause) -> u64 {
        self.decided_by[cause_index(cause)].load(Relaxed)
    }

    /// Bytes held in memory for spans: buffered plus waiting for export. The memory budget
    /// (`buffer.max_memory`) applies to this sum.
    pub fn held_bytes(&self) -> i64 {
        self.buffered_bytes.load(Relaxed)
            + self.export_queue_bytes.load(Relaxed)
            + self.forward_queue_bytes.load(Relaxed)
    }

    /// Prometheus text exposition of every counter and gauge.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "tailsift_requests_received_total",
                "OTLP export requests received",
                &self.requests_received,
            ),
            (
                "tailsift_requests_refused_total",
                "Requests refused with a retryable code (overload)",
                &self.requests_refused,
            ),
            (
                "tailsift_requests_invalid_total",
                "Requests refused as undecodable or too large",
                &self.requests_invalid,
            ),
            (
                "tailsift_spans_received_total",
                "Valid spans accepted",
                &self.spans_received,
            ),
            (
                "tailsift_traces_decided_total",
                "Traces decided",
                &self.traces_decided,
            ),
            (
                "tailsift_traces_kept_total",
                "Traces kept",
                &self.traces_kept,
            ),
            (
                "tailsift_spans_kept_total",
                "Spans of kept traces handed to export",
                &self.spans_kept,
            ),
            (
                "tailsift_spans_exported_total",
                "Spans delivered to the backend",
                &self.spans_exported,
            ),
            (
                "tailsift_late_spans_total",
                "Spans that arrived after their trace was decided",
                &self.late_spans,
            ),
            (
                "tailsift_export_retries_total",
                "Export requests retried",
                &self.export_retries,
            ),
            (
                "tailsift_export_waits_total",
                "Times a shard waited for room in the full export queue (backpressure)",
                &self.export_waits,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let r = &self.receive;
        let receive: [(&str, &str, &AtomicU64); 4] = [
            (
                "tailsift_attributes_truncated_total",
                "String attribute values truncated to receive.max_attribute_bytes",
                &r.attributes_truncated,
            ),
            (
                "tailsift_auth_tenant_overridden_total",
                "Resources whose tenant attribute was replaced by their API key's tenant",
                &r.tenant_overridden,
            ),
            (
                "tailsift_tls_reloads_total",
                "Receive TLS certificates reloaded after the files changed",
                &r.tls_reloads,
            ),
            (
                "tailsift_tls_reload_failures_total",
                "Changed receive TLS files that could not be used (the previous ones stay)",
                &r.tls_reload_failures,
            ),
        ];
        for (name, help, value) in receive {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tailsift_auth_refused_total Requests refused by [auth], by reason\n# TYPE tailsift_auth_refused_total counter\ntailsift_auth_refused_total{{reason=\"missing\"}} {}\ntailsift_auth_refused_total{{reason=\"unknown\"}} {}",
            r.auth_missing.load(Relaxed),
            r.auth_unknown.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP tailsift_spans_dropped_total Spans not delivered, by reason\n# TYPE tailsift_spans_dropped_total counter");
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "tailsift_spans_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.dropped(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tailsift_metric_points_received_total Metric data points accepted (passed through unchanged)\n# TYPE tailsift_metric_points_received_total counter\ntailsift_metric_points_received_total {}",
            self.metric_points_received.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tailsift_metric_points_exported_total Metric data points delivered to the backend\n# TYPE tailsift_metric_points_exported_total counter\ntailsift_metric_points_exported_total {}",
            self.metric_points_exported.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP tailsift_metric_points_dropped_total Metric data points not delivered, by reason\n# TYPE tailsift_metric_points_dropped_total counter");
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "tailsift_metric_points_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.metric_points_dropped(reason)
            );
        }
        for (name, help, value) in [
            (
                "tailsift_log_records_received_total",
                "Log records accepted (held with their trace, or passed through without one)",
                self.log_records_received.load(Relaxed),
            ),
            (
                "tailsift_log_records_untraced_total",
                "Log records received without a trace id",
                self.log_records_untraced.load(Relaxed),
            ),
            (
                "tailsift_log_records_kept_total",
                "Log records handed to export",
                self.log_records_kept.load(Relaxed),
            ),
            (
                "tailsift_log_records_exported_total",
                "Log records delivered to the backend",
                self.log_records_exported.load(Relaxed),
            ),
            (
                "tailsift_log_records_late_total",
                "Log records that arrived after their trace was decided",
                self.log_records_late.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(out, "# HELP tailsift_log_records_dropped_total Log records not delivered, by reason\n# TYPE tailsift_log_records_dropped_total counter");
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "tailsift_log_records_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.log_records_dropped(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tailsift_metrics_queue_bytes Bytes of metrics requests waiting for export\n# TYPE tailsift_metrics_queue_bytes gauge\ntailsift_metrics_queue_bytes {}",
            self.metrics_queue_bytes.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP tailsift_traces_decided_by_total Traces decided, by trigger\n# TYPE tailsift_traces_decided_by_total counter");
        for cause in CAUSES {
            let _ = writeln!(
                out,
                "tailsift_traces_decided_by_total{{cause=\"{}\"}} {}",
                cause.as_str(),
                self.decided_count(cause)
            );
        }
        let gauges: [(&str, &str, &AtomicI64); 8] = [
            (
                "tailsift_buffered_spans",
                "Spans held in the buffer",
                &self.buffered_spans,
            ),
            (
                "tailsift_buffered_traces",
                "Traces held in the buffer",
                &self.buffered_traces,
            ),
            (
                "tailsift_buffered_bytes",
                "Bytes held in the buffer",
                &self.buffered_bytes,
            ),
            (
                "tailsift_export_queue_bytes",
                "Bytes of kept spans waiting for export",
                &self.export_queue_bytes,
            ),
            (
                "tailsift_export_queue_spans",
                "Kept spans waiting for export or in flight",
                &self.export_queue_spans,
            ),
            (
                "tailsift_handoff_spans",
                "Kept spans waiting for room in the export queue",
                &self.handoff_spans,
            ),
            (
                "tailsift_forward_queue_bytes",
                "Bytes reserved or queued for forwarding to peers (counted in buffer.max_memory)",
                &self.forward_queue_bytes,
            ),
            (
                "tailsift_spooled_spans",
                "Kept spans waiting in the disk spool",
                &self.spooled_spans,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Relaxed)
            );
        }
        self.tenants.render_prometheus(out);
    }
}
