//! A real recording OTLP backend: OTLP/gRPC (opentelemetry-proto's generated `TraceServiceServer`)
//! and OTLP/HTTP `POST /v1/traces` (axum) on two ephemeral loopback ports.
//!
//! It records every accepted `ExportTraceServiceRequest` fully decoded, plus the raw protobuf
//! bytes of its message (metrics too: gRPC `MetricsService/Export` and `POST /v1/metrics` are
//! recorded apart, see [`RecordingBackend::metrics_requests`]), and can be scripted: fail the next N requests (gRPC code / HTTP status,
//! optionally with RetryInfo / Retry-After), delay responses, or go down (listeners closed and
//! open connections cut, so new connections are refused) and come back on the same ports.
//!
//! With [`RecordingBackend::start_tls`] both endpoints speak TLS (rustls) with the given server
//! configuration — e.g. a run-time CA's certificate from [`super::tls`], optionally requiring a
//! client certificate — and count failed handshakes.
//!
//! Connections are served by our own accept loops (hyper-util's auto builder, one task per
//! connection) rather than `tonic::transport::Server`/`axum::serve`, so "down" is a hard cut:
//! graceful shutdown would wait for clients to hang up.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;

use super::traces::{attr_i64, attr_str, hex};

/// Largest request either endpoint accepts (the proxy may batch generously).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How a request reached the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body.
    HttpJson,
}

/// One accepted metrics export request (metrics are not scripted to fail).
#[derive(Clone, Debug)]
pub struct ReceivedMetrics {
    /// Which endpoint and encoding it came in on.
    pub transport: Transport,
    /// HTTP headers (gRPC: the request metadata as headers).
    pub headers: HeaderMap,
    /// The decoded request.
    pub request: ExportMetricsServiceRequest,
    /// Protobuf bytes of the message, as for [`ReceivedRequest::raw`].
    pub raw: Bytes,
}

/// One accepted logs export request (logs are not scripted to fail).
#[derive(Clone, Debug)]
pub struct ReceivedLogs {
    /// Which endpoint and encoding it came in on.
    pub transport: Transport,
    /// HTTP headers (gRPC: the request metadata as headers).
    pub headers: HeaderMap,
    /// The decoded request.
    pub request: ExportLogsServiceRequest,
    /// Protobuf bytes of the message, as for [`ReceivedRequest::raw`].
    pub raw: Bytes,
}

/// One received log record with the resource and scope it came under.
#[derive(Clone, Debug)]
pub struct RecordedLog {
    /// The record as the backend received it.
    pub record: LogRecord,
    /// Its resource (default when absent).
    pub resource: Resource,
    /// Its instrumentation scope (default when absent).
    pub scope: InstrumentationScope,
}

impl RecordedLog {
    /// The trace id as lowercase hex (empty when the record has none).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.record.trace_id)
    }

    /// A string attribute of the record.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        attr_str(&self.record.attributes, key)
    }

    /// An integer attribute of the record.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        attr_i64(&self.record.attributes, key)
    }

    /// The body when it is a string.
    pub fn body_str(&self) -> Option<&str> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        match self.record.body.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// A string attribute of the resource.
    pub fn resource_attr_str(&self, key: &str) -> Option<&str> {
        attr_str(&self.resource.attributes, key)
    }
}

/// One accepted export request.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// Which endpoint and encoding it came in on.
    pub transport: Transport,
    /// HTTP headers (gRPC: the request metadata as headers).
    pub headers: HeaderMap,
    /// The decoded request.
    pub request: ExportTraceServiceRequest,
    /// Protobuf bytes of the message: exactly as received (after gzip decoding) for gRPC and
    /// HTTP protobuf; re-encoded from the decoded message for HTTP JSON.
    pub raw: Bytes,
}

/// A scripted failure for the next requests, applied to whichever endpoint they hit.
#[derive(Clone, Debug)]
pub struct Failure {
    /// gRPC status code answered on the gRPC endpoint.
    pub grpc_code: tonic::Code,
    /// HTTP status answered on the HTTP endpoint.
    pub http_status: u16,
    /// Delay suggested to the client: gRPC `RetryInfo` detail / HTTP `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// gRPC UNAVAILABLE / HTTP 503: what OTLP clients retry.
    pub fn unavailable() -> Self {
        Failure {
            grpc_code: tonic::Code::Unavailable,
            http_status: 503,
            retry_after: None,
        }
    }
    /// gRPC RESOURCE_EXHAUSTED / HTTP 429: throttling.
    pub fn throttled() -> Self {
        Failure {
            grpc_code: tonic::Code::ResourceExhausted,
            http_status: 429,
            retry_after: None,
        }
    }
    /// gRPC INVALID_ARGUMENT / HTTP 400: a permanent, non-retryable rejection.
    pub fn invalid() -> Self {
        Failure {
            grpc_code: tonic::Code::InvalidArgument,
            http_status: 400,
            retry_after: None,
        }
    }
    /// A failure with the given gRPC code and HTTP status.
    pub fn new(grpc_code: tonic::Code, http_status: u16) -> Self {
        Failure {
            grpc_code,
            http_status,
            retry_after: None,
        }
    }
    /// The same failure suggesting a retry delay (gRPC RetryInfo / HTTP Retry-After).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// A span as the backend received it, with the resource and scope it came under.
#[derive(Clone, Debug)]
pub struct RecordedSpan {
    /// Index of the request (in [`RecordingBackend::requests`]) that carried it.
    pub request_index: usize,
    /// Which endpoint and encoding it came in on.
    pub transport: Transport,
    /// The resource of its `ResourceSpans`, as sent (None if absent).
    pub resource: Option<Resource>,
    /// The `schema_url` of its `ResourceSpans`.
    pub resource_schema_url: String,
    /// The scope of its `ScopeSpans`, as sent (None if absent).
    pub scope: Option<InstrumentationScope>,
    /// The `schema_url` of its `ScopeSpans`.
    pub scope_schema_url: String,
    /// The span itself.
    pub span: Span,
}

impl RecordedSpan {
    /// Trace id as lower-case hex.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }
    /// Span id as lower-case hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }
    /// Parent span id as lower-case hex ("" for a root).
    pub fn parent_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// Whether it is a root span (empty parent id).
    pub fn is_root(&self) -> bool {
        self.span.parent_span_id.is_empty()
    }
    /// String span attribute `key`.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        attr_str(&self.span.attributes, key)
    }
    /// Integer span attribute `key`.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        attr_i64(&self.span.attributes, key)
    }
    /// Number of span attributes named `key` (OTLP keys must be unique: expect 0 or 1).
    pub fn attr_count(&self, key: &str) -> usize {
        self.span
            .attributes
            .iter()
            .filter(|kv| kv.key == key)
            .count()
    }
    /// String resource attribute `key`.
    pub fn resource_attr_str(&self, key: &str) -> Option<&str> {
        attr_str(self.resource_attrs(), key)
    }
    /// Resource attributes (empty if the resource is absent).
    pub fn resource_attrs(&self) -> &[KeyValue] {
        self.resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or(&[])
    }
    /// Scope name ("" if the scope is absent).
    pub fn scope_name(&self) -> &str {
        self.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("")
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<ReceivedRequest>>,
    metrics: Mutex<Vec<ReceivedMetrics>>,
    logs: Mutex<Vec<ReceivedLogs>>,
    failures: Mutex<VecDeque<Failure>>,
    delay: Mutex<Option<Duration>>,
    attempts: Mutex<usize>,
    rejected: Mutex<usize>,
    tls_failures: Mutex<usize>,
}

/// How a request is to be answered (decided before recording).
enum Verdict {
    Accept,
    Fail(Failure),
}

impl Shared {
    /// Counts the attempt, applies the scripted delay and picks the next scripted failure.
    async fn admit(&self) -> Verdict {
        *self.attempts.lock().unwrap() += 1;
        let delay = *self.delay.lock().unwrap();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match self.failures.lock().unwrap().pop_front() {
            Some(f) => {
                *self.rejected.lock().unwrap() += 1;
                Verdict::Fail(f)
            }
            None => Verdict::Accept,
        }
    }

    fn record(&self, r: ReceivedRequest) {
        self.requests.lock().unwrap().push(r);
    }
}

/// The recording OTLP backend. Dropping it stops its listeners.
pub struct RecordingBackend {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl RecordingBackend {
    /// Starts both endpoints on `127.0.0.1:0`.
    pub async fn start() -> RecordingBackend {
        Self::start_with(None).await
    }

    /// Starts both endpoints on `127.0.0.1:0`, speaking TLS with `config` (ALPN h2 and http/1.1
    /// are added).
    pub async fn start_tls(mut config: rustls::ServerConfig) -> RecordingBackend {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> RecordingBackend {
        let grpc = bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind backend gRPC listener");
        let http = bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind backend HTTP listener");
        let backend = RecordingBackend {
            shared: Arc::new(Shared::default()),
            grpc_addr: grpc.local_addr().expect("gRPC local addr"),
            http_addr: http.local_addr().expect("HTTP local addr"),
            tasks: Mutex::new(Vec::new()),
            tls,
        };
        backend.spawn(grpc, http);
        backend
    }

    fn spawn(&self, grpc: TcpListener, http: TcpListener) {
        let grpc_svc = TraceServiceServer::new(GrpcRecorder {
            shared: self.shared.clone(),
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_BODY);
        let metrics_svc = MetricsServiceServer::new(GrpcRecorder {
            shared: self.shared.clone(),
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_BODY);
        let logs_svc = LogsServiceServer::new(GrpcRecorder {
            shared: self.shared.clone(),
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_BODY);
        let router = Router::new()
            .route("/v1/traces", post(http_export))
            .route("/v1/metrics", post(http_metrics))
            .route("/v1/logs", post(http_logs))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.shared.clone());
        let mut tasks = self.tasks.lock().unwrap();
        let (tls, shared) = (self.tls.clone(), self.shared.clone());
        tasks.push(tokio::spawn(accept_loop(
            grpc,
            tls.clone(),
            shared.clone(),
            move |req: axum::http::Request<hyper::body::Incoming>| {
                let is_metrics = req
                    .uri()
                    .path()
                    .starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/");
                let is_logs = req
                    .uri()
                    .path()
                    .starts_with("/opentelemetry.proto.collector.logs.v1.LogsService/");
                let (svc, metrics_svc, logs_svc) =
                    (grpc_svc.clone(), metrics_svc.clone(), logs_svc.clone());
                async move {
                    if is_logs {
                        grpc_with_raw_body(logs_svc, req).await
                    } else if is_metrics {
                        grpc_with_raw_body(metrics_svc, req).await
                    } else {
                        grpc_with_raw_body(svc, req).await
                    }
                }
            },
        )));
        tasks.push(tokio::spawn(accept_loop(
            http,
            tls,
            shared,
            move |req: axum::http::Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                async move { router.call(req).await }
            },
        )));
    }

    /// Address of the OTLP/gRPC endpoint.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Address of the OTLP/HTTP endpoint (`POST http://<addr>/v1/traces`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Full URL of the OTLP/HTTP traces endpoint.
    pub fn http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_url())
    }

    /// `http://` or, when started with TLS, `https://`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Base URL of the OTLP/gRPC endpoint (`https://127.0.0.1:<port>` with TLS).
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc_addr)
    }

    /// Base URL of the OTLP/HTTP endpoint (`https://127.0.0.1:<port>` with TLS).
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http_addr)
    }

    /// TLS handshakes that failed (e.g. a client without the required certificate).
    pub fn tls_failures(&self) -> usize {
        *self.shared.tls_failures.lock().unwrap()
    }

    /// All accepted requests, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// All accepted metrics requests, in arrival order.
    pub fn metrics_requests(&self) -> Vec<ReceivedMetrics> {
        self.shared.metrics.lock().unwrap().clone()
    }

    /// Waits until at least `n` metrics requests arrived (or `timeout` passed); returns them.
    pub async fn wait_for_metrics(&self, n: usize, timeout: Duration) -> Vec<ReceivedMetrics> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.metrics_requests();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// All accepted logs requests, in arrival order.
    pub fn logs_requests(&self) -> Vec<ReceivedLogs> {
        self.shared.logs.lock().unwrap().clone()
    }

    /// Every received log record, flattened with its resource and scope, in arrival order.
    pub fn log_records(&self) -> Vec<RecordedLog> {
        let mut out = Vec::new();
        for req in self.logs_requests() {
            for rl in req.request.resource_logs {
                let resource = rl.resource.unwrap_or_default();
                for sl in rl.scope_logs {
                    let scope = sl.scope.unwrap_or_default();
                    for record in sl.log_records {
                        out.push(RecordedLog {
                            record,
                            resource: resource.clone(),
                            scope: scope.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits until at least `n` log records arrived (or `timeout` passed); returns them all.
    pub async fn wait_for_log_records(&self, n: usize, timeout: Duration) -> Vec<RecordedLog> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.log_records();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of accepted requests.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Requests that reached a handler, accepted or failed by script.
    pub fn attempts(&self) -> usize {
        *self.shared.attempts.lock().unwrap()
    }

    /// Requests answered with a scripted failure.
    pub fn rejected(&self) -> usize {
        *self.shared.rejected.lock().unwrap()
    }

    /// Protobuf bytes of each accepted request's message (see [`ReceivedRequest::raw`]).
    pub fn raw_bodies(&self) -> Vec<Bytes> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.raw.clone())
            .collect()
    }

    /// Total spans in accepted requests.
    pub fn span_count(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.request.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    /// Every accepted span with its resource and scope, in arrival order.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        let requests = self.shared.requests.lock().unwrap();
        let mut out = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            for rs in &r.request.resource_spans {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(RecordedSpan {
                            request_index: i,
                            transport: r.transport,
                            resource: rs.resource.clone(),
                            resource_schema_url: rs.schema_url.clone(),
                            scope: ss.scope.clone(),
                            scope_schema_url: ss.schema_url.clone(),
                            span: s.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// For each tenant (resource attribute `tenant_attribute`), the distinct values of `header`
    /// of the requests that carried its spans (all values of one request joined with ",";
    /// "" for a request without the header).
    pub fn header_values_by_tenant(
        &self,
        header: &str,
        tenant_attribute: &str,
    ) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let requests = self.shared.requests.lock().unwrap();
        let mut map: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for r in requests.iter() {
            let values: Vec<&str> = r
                .headers
                .get_all(header)
                .iter()
                .map(|v| v.to_str().unwrap_or("<not text>"))
                .collect();
            let values = values.join(",");
            for rs in &r.request.resource_spans {
                let tenant = rs
                    .resource
                    .as_ref()
                    .and_then(|res| super::traces::attr_str(&res.attributes, tenant_attribute))
                    .unwrap_or("")
                    .to_string();
                map.entry(tenant).or_default().insert(values.clone());
            }
        }
        map
    }

    /// Accepted spans grouped by trace id (hex), each group in arrival order.
    pub fn spans_by_trace(&self) -> BTreeMap<String, Vec<RecordedSpan>> {
        let mut map: BTreeMap<String, Vec<RecordedSpan>> = BTreeMap::new();
        for s in self.spans() {
            map.entry(s.trace_id_hex()).or_default().push(s);
        }
        map
    }

    /// Accepted spans of one trace.
    pub fn spans_of_trace(&self, trace_id: &[u8]) -> Vec<RecordedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.span.trace_id == trace_id)
            .collect()
    }

    /// Waits (polling) until at least `n` spans were accepted; panics after `timeout` saying how many came.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<RecordedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have = self.span_count();
            if have >= n {
                return self.spans();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "backend: timed out after {timeout:?} waiting for {n} spans; got {have} in {} requests ({} attempts, {} rejected)",
                    self.request_count(),
                    self.attempts(),
                    self.rejected()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits `quiet`, then asserts exactly `n` spans were accepted (a "nothing more arrives" check).
    pub async fn assert_span_count_stays(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let have = self.span_count();
        assert_eq!(have, n, "backend: expected exactly {n} spans, got {have}");
    }

    /// Answers the next `n` requests (either endpoint) with `failure` instead of accepting them.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut q = self.shared.failures.lock().unwrap();
        for _ in 0..n {
            q.push_back(failure.clone());
        }
    }

    /// Drops any scripted failures not yet used.
    pub fn clear_failures(&self) {
        self.shared.failures.lock().unwrap().clear();
    }

    /// Delays every response by `delay` (None: answer at once), e.g. to back up the exporter.
    pub fn set_response_delay(&self, delay: Option<Duration>) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Forgets all recorded requests and counters (scripted failures stay).
    pub fn clear(&self) {
        self.shared.requests.lock().unwrap().clear();
        self.shared.logs.lock().unwrap().clear();
        *self.shared.attempts.lock().unwrap() = 0;
        *self.shared.rejected.lock().unwrap() = 0;
    }

    /// Whether the listeners are currently up.
    pub fn is_up(&self) -> bool {
        !self.tasks.lock().unwrap().is_empty()
    }

    /// Goes down: closes both listeners and cuts open connections, so connects are refused.
    pub async fn go_down(&self) {
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // Aborted accept loops drop their listener and their JoinSet, which aborts every
            // connection task; waiting here makes the port free when we return.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Comes back up on the same two ports (panics if they cannot be re-bound within 5 s).
    pub async fn come_up(&self) {
        assert!(!self.is_up(), "backend: come_up called while up");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (grpc, http) = loop {
            match (bind(self.grpc_addr).await, bind(self.http_addr).await) {
                (Ok(g), Ok(h)) => break (g, h),
                (g, h) => {
                    if tokio::time::Instant::now() >= deadline {
                        panic!(
                            "backend: cannot re-bind {} / {}: {:?} / {:?}",
                            self.grpc_addr,
                            self.http_addr,
                            g.err(),
                            h.err()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.spawn(grpc, http);
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// Binds with SO_REUSEADDR so a port can be re-bound right after going down.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until aborted; each connection is served in a task of a JoinSet that is
/// aborted with the loop.
async fn accept_loop<F, Fut, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    handler: F,
) where
    F: Fn(axum::http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<axum::http::Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Transient accept errors (e.g. EMFILE): back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let (tls, shared) = (tls.clone(), shared.clone());
        conns.spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            let _ = builder
                                .serve_connection(TokioIo::new(tls_stream), svc)
                                .await;
                        }
                        _ => *shared.tls_failures.lock().unwrap() += 1,
                    }
                }
            }
        });
        // Reap finished connection tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

/// Raw protobuf message of a gRPC request, put into the request extensions for the recorder.
#[derive(Clone)]
struct RawMessage(Bytes);

/// The HTTP/2 headers of a gRPC request as they arrived (tonic's metadata drops some, e.g.
/// `grpc-encoding`), put into the request extensions for the recorder.
#[derive(Clone)]
struct RawHeaders(HeaderMap);

/// Buffers a gRPC request body, extracts the message bytes of its (single) frame, gunzipping
/// if the frame is compressed, then hands the unchanged body to the tonic service.
async fn grpc_with_raw_body<S>(
    mut svc: S,
    req: axum::http::Request<hyper::body::Incoming>,
) -> Result<axum::http::Response<tonic::body::Body>, Infallible>
where
    S: Service<
        axum::http::Request<Full<Bytes>>,
        Response = axum::http::Response<tonic::body::Body>,
        Error = Infallible,
    >,
{
    let (mut parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Ok(tonic::Status::internal(format!("backend: reading body: {e}")).into_http());
        }
    };
    if let Some(raw) = grpc_frame_message(&body, &parts.headers) {
        parts.extensions.insert(RawMessage(raw));
    }
    let headers = RawHeaders(parts.headers.clone());
    parts.extensions.insert(headers);
    let req = axum::http::Request::from_parts(parts, Full::new(body));
    match svc.call(req).await {
        Ok(resp) => Ok(resp),
        Err(never) => match never {},
    }
}

/// The message bytes of the first gRPC frame in `body`, if well-formed.
fn grpc_frame_message(body: &Bytes, headers: &HeaderMap) -> Option<Bytes> {
    if body.len() < 5 {
        return None;
    }
    let compressed = body[0] == 1;
    let len = u32::from_be_bytes(body[1..5].try_into().ok()?) as usize;
    let msg = body.get(5..5 + len)?;
    if !compressed {
        return Some(body.slice(5..5 + len));
    }
    let enc = headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut out = Vec::new();
    match enc {
        "gzip" => {
            flate2::read::GzDecoder::new(msg)
                .read_to_end(&mut out)
                .ok()?;
        }
        "zstd" => out = zstd::stream::decode_all(msg).ok()?,
        _ => return None,
    }
    Some(Bytes::from(out))
}

struct GrpcRecorder {
    shared: Arc<Shared>,
}

/// A recorded gRPC request's headers, decoded message and bytes as they arrived (re-encoded
/// when the raw bytes were not captured).
fn unpack<M: Message>(request: tonic::Request<M>) -> (http::HeaderMap, M, Bytes) {
    let raw = request
        .extensions()
        .get::<RawMessage>()
        .map(|r| r.0.clone());
    let headers = match request.extensions().get::<RawHeaders>() {
        Some(raw) => raw.0.clone(),
        None => request.metadata().clone().into_headers(),
    };
    let request = request.into_inner();
    let raw = raw.unwrap_or_else(|| Bytes::from(request.encode_to_vec()));
    (headers, request, raw)
}

#[tonic::async_trait]
impl TraceService for GrpcRecorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Verdict::Fail(f) = self.shared.admit().await {
            return Err(grpc_failure(&f));
        }
        let (headers, request, raw) = unpack(request);
        self.shared.record(ReceivedRequest {
            transport: Transport::Grpc,
            headers,
            request,
            raw,
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcRecorder {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let (headers, request, raw) = unpack(request);
        self.shared.metrics.lock().unwrap().push(ReceivedMetrics {
            transport: Transport::Grpc,
            headers,
            request,
            raw,
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcRecorder {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let (headers, request, raw) = unpack(request);
        self.shared.logs.lock().unwrap().push(ReceivedLogs {
            transport: Transport::Grpc,
            headers,
            request,
            raw,
        });
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// `POST /v1/logs`: records the (decompressed) request; JSON is decoded and re-encoded.
async fn http_logs(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (transport, raw, request) = match decode_http::<ExportLogsServiceRequest>(&headers, body) {
        Ok(d) => d,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("backend: bad logs: {e}")).into_response()
        }
    };
    shared.logs.lock().unwrap().push(ReceivedLogs {
        transport,
        headers,
        request,
        raw,
    });
    let reply = ExportLogsServiceResponse {
        partial_success: None,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        reply.encode_to_vec(),
    )
        .into_response()
}

/// Decompresses (gzip, zstd) and decodes an OTLP/HTTP body, protobuf or JSON by content type.
fn decode_http<M>(headers: &HeaderMap, body: Bytes) -> Result<(Transport, Bytes, M), String>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = match encoding.as_str() {
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body.reader())
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip body: {e}"))?;
            Bytes::from(out)
        }
        "zstd" => Bytes::from(
            zstd::stream::decode_all(body.reader()).map_err(|e| format!("bad zstd body: {e}"))?,
        ),
        _ => body,
    };
    if is_json {
        let r: M = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok((Transport::HttpJson, Bytes::from(r.encode_to_vec()), r))
    } else {
        let r = M::decode(body.clone()).map_err(|e| e.to_string())?;
        Ok((Transport::HttpProtobuf, body, r))
    }
}

/// `POST /v1/metrics`: records the (decompressed) request; JSON is decoded and re-encoded.
async fn http_metrics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = match encoding.as_str() {
        "gzip" => {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(body.reader())
                .read_to_end(&mut out)
                .is_err()
            {
                return (StatusCode::BAD_REQUEST, "backend: bad gzip body").into_response();
            }
            Bytes::from(out)
        }
        "zstd" => match zstd::stream::decode_all(body.reader()) {
            Ok(out) => Bytes::from(out),
            Err(_) => return (StatusCode::BAD_REQUEST, "backend: bad zstd body").into_response(),
        },
        _ => body,
    };
    let decoded = if is_json {
        serde_json::from_slice::<ExportMetricsServiceRequest>(&body)
            .map(|r| (Transport::HttpJson, Bytes::from(r.encode_to_vec()), r))
            .map_err(|e| e.to_string())
    } else {
        ExportMetricsServiceRequest::decode(body.clone())
            .map(|r| (Transport::HttpProtobuf, body, r))
            .map_err(|e| e.to_string())
    };
    let (transport, raw, request) = match decoded {
        Ok(d) => d,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("backend: bad metrics: {e}"),
            )
                .into_response()
        }
    };
    shared.metrics.lock().unwrap().push(ReceivedMetrics {
        transport,
        headers,
        request,
        raw,
    });
    let reply = ExportMetricsServiceResponse {
        partial_success: None,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        reply.encode_to_vec(),
    )
        .into_response()
}

// google.rpc.Status / google.protobuf.Any / google.rpc.RetryInfo / google.protobuf.Duration,
// declared by hand (same field numbers) so no extra crate is needed to send RetryInfo.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn rpc_status(code: i32, message: &str, retry_after: Option<Duration>) -> RpcStatus {
    let details = retry_after
        .map(|d| ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_string(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                }),
            }
            .encode_to_vec(),
        })
        .into_iter()
        .collect();
    RpcStatus {
        code,
        message: message.to_string(),
        details,
    }
}

fn grpc_failure(f: &Failure) -> tonic::Status {
    let message = "scripted failure from the recording backend";
    match f.retry_after {
        Some(_) => {
            let details = rpc_status(f.grpc_code as i32, message, f.retry_after).encode_to_vec();
            tonic::Status::with_details(f.grpc_code, message, Bytes::from(details))
        }
        None => tonic::Status::new(f.grpc_code, message),
    }
}

/// The RetryInfo delay carried in a gRPC status' details, if any (for tests of the proxy's own refusals).
pub fn retry_info_delay(status: &tonic::Status) -> Option<Duration> {
    let st = RpcStatus::decode(status.details()).ok()?;
    st.details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        .and_then(|a| {
            let d = RetryInfo::decode(a.value.as_slice()).ok()?.retry_delay?;
            Some(Duration::new(
                d.seconds.max(0) as u64,
                d.nanos.max(0) as u32,
            ))
        })
}

async fn http_export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.starts_with("application/json"))
        .unwrap_or(false);
    if let Verdict::Fail(f) = shared.admit().await {
        let status = StatusCode::from_u16(f.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            rpc_status(
                f.grpc_code as i32,
                "scripted failure from the recording backend",
                None,
            )
            .encode_to_vec(),
        )
            .into_response();
        if let Some(d) = f.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return resp;
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = match encoding.as_str() {
        "gzip" => {
            let mut out = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(body.reader()).read_to_end(&mut out) {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("backend: bad gzip body: {e}"),
                )
                    .into_response();
            }
            Bytes::from(out)
        }
        "zstd" => match zstd::stream::decode_all(body.reader()) {
            Ok(out) => Bytes::from(out),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("backend: bad zstd body: {e}"),
                )
                    .into_response()
            }
        },
        _ => body,
    };
    let (transport, request, raw) = if is_json {
        match serde_json::from_slice::<ExportTraceServiceRequest>(&body) {
            Ok(r) => {
                let raw = Bytes::from(r.encode_to_vec());
                (Transport::HttpJson, r, raw)
            }
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("backend: bad OTLP/JSON: {e}"),
                )
                    .into_response()
            }
        }
    } else {
        match ExportTraceServiceRequest::decode(body.clone()) {
            Ok(r) => (Transport::HttpProtobuf, r, body),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("backend: bad OTLP protobuf: {e}"),
                )
                    .into_response()
            }
        }
    };
    shared.record(ReceivedRequest {
        transport,
        headers,
        request,
        raw,
    });
    let reply = ExportTraceServiceResponse {
        partial_success: None,
    };
    if is_json {
        let json = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            reply.encode_to_vec(),
        )
            .into_response()
    }
}
