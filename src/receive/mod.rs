//! The receive stage: OTLP/gRPC and OTLP/HTTP listeners that read requests without decoding
//! spans, refuse invalid spans one by one (partial success), and hand the rest to the route
//! stage. Overload answers with the codes OTLP clients retry.

pub mod auth;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod peer;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

use crate::model::{
    Decision, DropReason, KeptSpans, MetricsRequest, MetricsSink, PassThrough, RecordKind,
    SpanRecord, TenantId, TraceId, UntracedSink,
};
use crate::otlp::ingest::{ingest_logs_with, ingest_request_with, IngestOptions};
use crate::route::{RouteError, Router};
use crate::stats::Stats;

/// The outcome of an accepted request.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Spans refused as invalid.
    pub rejected: u64,
    /// Why, for `partial_success.error_message`.
    pub error_message: Option<String>,
}

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Not decodable (INVALID_ARGUMENT / HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// Too large (RESOURCE_EXHAUSTED / HTTP 413).
    #[error("request of {size} bytes exceeds receive.max_request_bytes ({limit})")]
    TooLarge {
        /// Bytes seen (at least).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Full or shutting down (UNAVAILABLE / HTTP 503, retryable).
    #[error("{0}")]
    Unavailable(String),
    /// No known API key while `[auth] require_key` is set (UNAUTHENTICATED / HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
}

/// What both listeners share: limits, tenant resolution and the route into the buffer.
pub struct Receiver {
    options: IngestOptions,
    router: Router,
    stats: Arc<Stats>,
    /// Header / metadata key naming the tenant.
    pub tenant_header: String,
    /// Largest request body after decompression.
    pub max_request_bytes: usize,
    max_buffered_bytes: i64,
    export_high_water: i64,
    accepting: AtomicBool,
    api_keys: Option<Arc<auth::ApiKeys>>,
    pass_through_headers: Vec<::http::HeaderName>,
    metrics: Option<Arc<dyn MetricsSink>>,
    untraced: Option<Arc<dyn UntracedSink>>,
    untraced_sample_rate: u64,
    untraced_seen: std::sync::atomic::AtomicU64,
}

impl Receiver {
    /// A receiver handing spans to `router`.
    pub fn new(
        options: IngestOptions,
        router: Router,
        stats: Arc<Stats>,
        tenant_header: String,
        max_request_bytes: usize,
        max_buffered_bytes: usize,
        export_queue_max_bytes: u64,
    ) -> Self {
        Receiver {
            options,
            router,
            stats,
            tenant_header: tenant_header.to_ascii_lowercase(),
            max_request_bytes,
            max_buffered_bytes: max_buffered_bytes as i64,
            export_high_water: (export_queue_max_bytes / 4 * 3) as i64,
            accepting: AtomicBool::new(true),
            api_keys: None,
            pass_through_headers: Vec::new(),
            metrics: None,
            untraced: None,
            untraced_sample_rate: 1,
            untraced_seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Passes log records without a trace id to `sink`, keeping 1 in `sample_rate`
    /// (`[logs] untraced_sample_rate`); without a sink they are refused as unavailable.
    pub fn with_untraced_logs(mut self, sink: Arc<dyn UntracedSink>, sample_rate: u64) -> Self {
        self.untraced = Some(sink);
        self.untraced_sample_rate = sample_rate.max(1);
        self
    }

    /// Passes OTLP metrics requests to `sink` (without one, metrics requests are refused as
    /// unavailable).
    pub fn with_metrics(mut self, sink: Arc<dyn MetricsSink>) -> Self {
        self.metrics = Some(sink);
        self
    }

    /// Captures these request headers and sends them with the request's spans on export
    /// (`[export] pass_through_headers`, validated names).
    pub fn with_pass_through_headers(mut self, names: Vec<::http::HeaderName>) -> Self {
        self.pass_through_headers = names;
        self
    }

    /// The configured pass-through headers of one request (gRPC metadata or HTTP headers;
    /// names match case-insensitively). Nothing is allocated when none is configured or the
    /// request carries none of them.
    pub fn capture_pass_through(&self, headers: &::http::HeaderMap) -> PassThrough {
        if self.pass_through_headers.is_empty() {
            return PassThrough::NONE;
        }
        let mut captured = Vec::new();
        for name in &self.pass_through_headers {
            for value in headers.get_all(name) {
                captured.push((name.clone(), value.clone()));
            }
        }
        PassThrough::new(captured)
    }

    /// Checks requests' API keys against `keys` (`[auth]`).
    pub fn with_api_keys(mut self, keys: Option<Arc<auth::ApiKeys>>) -> Self {
        self.api_keys = keys;
        self
    }

    /// The tenant a request's API key writes as (`None`: no `[auth]`, or no known key while
    /// keys are optional); refused and counted per reason when `require_key` is set.
    pub fn authenticate(
        &self,
        headers: &::http::HeaderMap,
    ) -> Result<Option<TenantId>, ReceiveError> {
        let Some(keys) = &self.api_keys else {
            return Ok(None);
        };
        keys.check(headers).map_err(|refusal| {
            let counters = &self.stats.receive;
            let why = match refusal {
                auth::Refusal::Missing => {
                    counters.auth_missing.fetch_add(1, Relaxed);
                    "no API key"
                }
                auth::Refusal::Unknown => {
                    counters.auth_unknown.fetch_add(1, Relaxed);
                    "unknown API key"
                }
            };
            ReceiveError::Unauthenticated(format!(
                "{why} in the {:?} header (\"Bearer <key>\" or the bare key)",
                keys.header()
            ))
        })
    }

    /// Counts a request refused before it reached [`Receiver::accept`] (bad encoding or size).
    pub fn count_invalid(&self) {
        self.stats.requests_received.fetch_add(1, Relaxed);
        self.stats.requests_invalid.fetch_add(1, Relaxed);
    }

    /// Stops accepting data (shutdown); later requests get a retryable refusal.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Relaxed);
    }

    /// Validates one encoded `ExportMetricsServiceRequest` (decoded only to count its data
    /// points) and queues its bytes, unchanged, for export. A full queue is a retryable
    /// refusal.
    pub fn accept_metrics(
        &self,
        body: Bytes,
        pass_through: PassThrough,
    ) -> Result<u64, ReceiveError> {
        self.accept_metrics_as(body, None, None, pass_through)
    }

    /// Like [`Receiver::accept_metrics`], counting the points per tenant: the API key's
    /// tenant, else each resource's tenant attribute, else the header's, else the default.
    pub fn accept_metrics_as(
        &self,
        body: Bytes,
        header_tenant: Option<TenantId>,
        key_tenant: Option<TenantId>,
        pass_through: PassThrough,
    ) -> Result<u64, ReceiveError> {
        self.stats.requests_received.fetch_add(1, Relaxed);
        if !self.accepting.load(Relaxed) {
            self.stats.requests_refused.fetch_add(1, Relaxed);
            return Err(ReceiveError::Unavailable(
                "the proxy is shutting down".into(),
            ));
        }
        if body.len() > self.max_request_bytes {
            self.stats.requests_invalid.fetch_add(1, Relaxed);
            return Err(ReceiveError::TooLarge {
                size: body.len(),
                limit: self.max_request_bytes,
            });
        }
        let by_resource =
            crate::otlp::metrics::points_by_tenant(&body, &self.options.tenant_attribute).map_err(
                |e| {
                    self.stats.requests_invalid.fetch_add(1, Relaxed);
                    ReceiveError::Invalid(format!("cannot decode ExportMetricsServiceRequest: {e}"))
                },
            )?;
        let points: u64 = by_resource.iter().map(|(_, n)| n).sum();
        let Some(sink) = &self.metrics else {
            self.stats.requests_refused.fetch_add(1, Relaxed);
            return Err(ReceiveError::Unavailable(
                "metrics are not exported by this proxy".into(),
            ));
        };
        let mut tenants: Vec<(TenantId, u64)> = Vec::new();
        for (named, n) in by_resource {
            let tenant = match (&key_tenant, named) {
                (Some(key), _) => key.clone(),
                (None, Some(name)) => TenantId::new(&name),
                (None, None) => header_tenant
                    .clone()
                    .unwrap_or_else(|| self.options.default_tenant.clone()),
            };
            match tenants.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, total)) => *total += n,
                None => tenants.push((tenant, n)),
            }
        }
        let request = MetricsRequest {
            body,
            points,
            pass_through,
            tenants: tenants.clone(),
        };
        match sink.try_submit(request) {
            Ok(()) => {
                self.stats.metric_points_received.fetch_add(points, Relaxed);
                let counts: Vec<(TenantId, crate::stats::tenant::Counts)> = tenants
                    .into_iter()
                    .map(|(tenant, n)| {
                        let c = crate::stats::tenant::Counts {
                            metric_points_received: n,
                            ..Default::default()
                        };
                        (tenant, c)
                    })
                    .collect();
                self.stats.tenants.add_all(
                    crate::stats::tenant::unix_now(),
                    counts.iter().map(|(t, c)| (t, c)),
                );
                Ok(points)
            }
            Err(_) => {
                // Refused, not dropped: the client retries on UNAVAILABLE / 503.
                self.stats.requests_refused.fetch_add(1, Relaxed);
                Err(ReceiveError::Unavailable(
                    "the metrics export queue is full (the backend is slow or down); retry later"
                        .into(),
                ))
            }
        }
    }

    /// Reads one encoded `ExportTraceServiceRequest` and hands its valid spans on.
    pub async fn accept(
        &self,
        body: Bytes,
        header_tenant: Option<TenantId>,
    ) -> Result<Accepted, ReceiveError> {
        self.accept_as(body, header_tenant, None, PassThrough::NONE)
            .await
    }

    /// Like [`Receiver::accept`] for a request whose API key writes as `key_tenant` and whose
    /// spans carry `pass_through` to the exporter.
    pub async fn accept_as(
        &self,
        body: Bytes,
        header_tenant: Option<TenantId>,
        key_tenant: Option<TenantId>,
        pass_through: PassThrough,
    ) -> Result<Accepted, ReceiveError> {
        self.accept_records(
            RecordKind::Span,
            body,
            header_tenant,
            key_tenant,
            pass_through,
        )
        .await
    }

    /// Reads one encoded `ExportLogsServiceRequest`: records with a trace id are routed to
    /// their trace's shard (and owner) and follow its decision; records without one go
    /// straight to export (1 in `[logs] untraced_sample_rate` of them).
    pub async fn accept_logs(
        &self,
        body: Bytes,
        header_tenant: Option<TenantId>,
        key_tenant: Option<TenantId>,
        pass_through: PassThrough,
    ) -> Result<Accepted, ReceiveError> {
        self.accept_records(
            RecordKind::Log,
            body,
            header_tenant,
            key_tenant,
            pass_through,
        )
        .await
    }

    async fn accept_records(
        &self,
        kind: RecordKind,
        body: Bytes,
        header_tenant: Option<TenantId>,
        key_tenant: Option<TenantId>,
        pass_through: PassThrough,
    ) -> Result<Accepted, ReceiveError> {
        self.stats.requests_received.fetch_add(1, Relaxed);
        if !self.accepting.load(Relaxed) {
            self.stats.requests_refused.fetch_add(1, Relaxed);
            return Err(ReceiveError::Unavailable(
                "the proxy is shutting down".into(),
            ));
        }
        if self.stats.held_bytes() >= self.max_buffered_bytes {
            self.stats.requests_refused.fetch_add(1, Relaxed);
            return Err(ReceiveError::Unavailable(
                "spans held in memory reached buffer.max_memory; retry later".into(),
            ));
        }
        // Backpressure from a slow backend: refuse new data while the export queue is above
        // its high-water mark, so what the buffer still decides fits in the rest of the queue
        // instead of being dropped.
        if self.stats.export_queue_bytes.load(Relaxed) >= self.export_high_water {
            self.stats.requests_refused.fetch_add(1, Relaxed);
            return Err(ReceiveError::Unavailable(
                "the export queue is nearly full (the backend is slow or down); retry later".into(),
            ));
        }
        if body.len() > self.max_request_bytes {
            self.stats.requests_invalid.fetch_add(1, Relaxed);
            return Err(ReceiveError::TooLarge {
                size: body.len(),
                limit: self.max_request_bytes,
            });
        }
        let (ingest, what) = match kind {
            RecordKind::Span => (ingest_request_with as IngestFn, "ExportTraceServiceRequest"),
            RecordKind::Log => (ingest_logs_with as IngestFn, "ExportLogsServiceRequest"),
        };
        let mut ingested = ingest(
            &body,
            header_tenant.as_ref(),
            key_tenant.as_ref(),
            &pass_through,
            &self.options,
        )
        .map_err(|e| {
            self.stats.requests_invalid.fetch_add(1, Relaxed);
            ReceiveError::Invalid(format!("cannot decode {what}: {e}"))
        })?;
        let untraced = if kind == RecordKind::Log {
            let none = TraceId::default();
            let (untraced, traced): (Vec<_>, Vec<_>) = ingested
                .spans
                .drain(..)
                .partition(|r| r.index.trace_id == none);
            ingested.spans = traced;
            untraced
        } else {
            Vec::new()
        };
        let n = ingested.spans.len() as u64;
        let counters = &self.stats.receive;
        counters
            .attributes_truncated
            .fetch_add(ingested.truncated_attributes, Relaxed);
        counters
            .tenant_overridden
            .fetch_add(ingested.tenant_overridden, Relaxed);
        // Records without a trace go first: refused there, nothing of the request is held.
        if !untraced.is_empty() {
            self.pass_untraced(untraced)?;
        }
        let routed = if ingested.spans.is_empty() {
            Ok(())
        } else {
            self.router.route(ingested.spans).await
        };
        match routed {
            Ok(()) => {
                match kind {
                    RecordKind::Span => self.stats.spans_received.fetch_add(n, Relaxed),
                    RecordKind::Log => self.stats.log_records_received.fetch_add(n, Relaxed),
                };
                if ingested.rejected > 0 {
                    match kind {
                        RecordKind::Span => self
                            .stats
                            .drop_spans(DropReason::Invalid, ingested.rejected),
                        RecordKind::Log => self
                            .stats
                            .drop_log_records(DropReason::Invalid, ingested.rejected),
                    }
                    let now = crate::stats::tenant::unix_now();
                    let counts: Vec<_> = ingested
                        .rejected_by_tenant
                        .iter()
                        .map(|(tenant, n)| {
                            let mut c = crate::stats::tenant::Counts::default();
                            match kind {
                                RecordKind::Span => c.drop_spans(DropReason::Invalid, *n),
                                RecordKind::Log => c.logs_dropped += *n,
                            }
                            (tenant, c)
                        })
                        .collect();
                    self.stats
                        .tenants
                        .add_all(now, counts.iter().map(|(t, c)| (*t, c)));
                }
                Ok(Accepted {
                    rejected: ingested.rejected,
                    error_message: ingested.error_message,
                })
            }
            Err(e @ (RouteError::Full | RouteError::PeerFull(_) | RouteError::Closed)) => {
                self.stats.requests_refused.fetch_add(1, Relaxed);
                // The untraced records already went to export and are counted as received
                // (a retry sends them again, as OTLP's at-least-once delivery allows).
                Err(ReceiveError::Unavailable(e.to_string()))
            }
        }
    }

    /// Samples log records without a trace id (1 in `untraced_sample_rate`, by arrival
    /// order, so the kept share is exact) and queues the rest for export.
    fn pass_untraced(&self, records: Vec<SpanRecord>) -> Result<(), ReceiveError> {
        let Some(sink) = &self.untraced else {
            self.stats.requests_refused.fetch_add(1, Relaxed);
            return Err(ReceiveError::Unavailable(
                "logs without a trace id are not exported by this proxy".into(),
            ));
        };
        let rate = self.untraced_sample_rate;
        let total = records.len() as u64;
        let first = self.untraced_seen.fetch_add(total, Relaxed);
        // Per tenant: the records kept (1 in `rate` by arrival order) and how many were not.
        let mut by_tenant: Vec<(TenantId, Vec<SpanRecord>, u64)> = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            let keep = rate == 1 || (first + i as u64) % rate == 0;
            let slot = match by_tenant
                .iter()
                .position(|(t, _, _)| *t == record.origin.tenant)
            {
                Some(j) => j,
                None => {
                    by_tenant.push((record.origin.tenant.clone(), Vec::new(), 0));
                    by_tenant.len() - 1
                }
            };
            if keep {
                by_tenant[slot].1.push(record);
            } else {
                by_tenant[slot].2 += 1;
            }
        }
        let now = crate::stats::tenant::unix_now();
        let decision = untraced_decision(rate);
        // Each tenant's part is counted once it is queued (or sampled out): when a later part
        // is refused, the client retries the whole request, and the earlier parts stay
        // counted as received (OTLP delivery is at least once).
        for (tenant, records, dropped) in by_tenant {
            let n = records.len() as u64;
            if n > 0 {
                let kept = KeptSpans {
                    tenant: tenant.clone(),
                    decision: decision.clone(),
                    spans: records,
                };
                if sink.try_submit(kept).is_err() {
                    self.stats.requests_refused.fetch_add(1, Relaxed);
                    return Err(ReceiveError::Unavailable(
                        "the export queue is full (the backend is slow or down); retry later"
                            .into(),
                    ));
                }
            }
            let part = n + dropped;
            self.stats.log_records_received.fetch_add(part, Relaxed);
            self.stats.log_records_untraced.fetch_add(part, Relaxed);
            self.stats.log_records_kept.fetch_add(n, Relaxed);
            if dropped > 0 {
                self.stats.drop_log_records(DropReason::Sampled, dropped);
            }
            let c = crate::stats::tenant::Counts {
                logs_received: part,
                logs_kept: n,
                logs_dropped: dropped,
                ..Default::default()
            };
            self.stats.tenants.add(&tenant, now, &c);
        }
        Ok(())
    }
}

/// The signature of the two ingest functions (spans, log records).
type IngestFn = fn(
    &Bytes,
    Option<&TenantId>,
    Option<&TenantId>,
    &PassThrough,
    &IngestOptions,
) -> Result<crate::otlp::ingest::Ingested, crate::otlp::wire::WireError>;

/// What log records without a trace follow: kept, at the `[logs]` rate.
fn untraced_decision(rate: u64) -> Decision {
    Decision {
        keep: true,
        sample_rate: rate,
        threshold: crate::consistent::threshold_for_rate(rate),
        rule: Arc::from(crate::model::UNTRACED_RULE),
    }
}
