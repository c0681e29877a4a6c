//! OTLP/gRPC: `TraceService/Export` and `MetricsService/Export` served through tonic with a
//! pass-through codec, so the request arrives as one `Bytes` buffer and is never decoded into
//! structs (metrics are decoded once only to count their points).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use prost::Message;
use tonic::body::Body as TonicBody;
use tonic::codec::CompressionEncoding;
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};

use super::{ReceiveError, Receiver};
use crate::model::{PassThrough, TenantId};
use crate::otlp::codec::RawCodec;
use crate::otlp::json::export_response;
use crate::otlp::wire::{put_bytes, put_key, put_varint, VARINT};
use crate::otlp::Signal;

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;
type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// Which OTLP signal an [`ExportService`] serves: its gRPC service name and [`Signal`].
pub trait ServedSignal: Clone + Send + Sync + 'static {
    /// The gRPC service name.
    const NAME: &'static str;
    /// The signal its export method carries.
    const SIGNAL: Signal;
}

/// Traces: `TraceService/Export`, held and sampled.
#[derive(Clone, Copy, Debug)]
pub struct Traces;

impl ServedSignal for Traces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const SIGNAL: Signal = Signal::Traces;
}

/// Metrics: `MetricsService/Export`, passed through unchanged.
#[derive(Clone, Copy, Debug)]
pub struct Metrics;

impl ServedSignal for Metrics {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const SIGNAL: Signal = Signal::Metrics;
}

/// Logs: `LogsService/Export`, held with their trace or passed through.
#[derive(Clone, Copy, Debug)]
pub struct Logs;

impl ServedSignal for Logs {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const SIGNAL: Signal = Signal::Logs;
}

/// The gRPC export service of signal `S`, backed by a [`Receiver`].
#[derive(Clone)]
pub struct ExportService<S> {
    receiver: Arc<Receiver>,
    signal: std::marker::PhantomData<S>,
}

/// The gRPC `TraceService`.
pub type TraceService = ExportService<Traces>;
/// The gRPC `MetricsService`.
pub type MetricsService = ExportService<Metrics>;
/// The gRPC `LogsService`.
pub type LogsService = ExportService<Logs>;

impl<S: ServedSignal> ExportService<S> {
    /// A service handing requests to `receiver`.
    pub fn new(receiver: Arc<Receiver>) -> Self {
        ExportService {
            receiver,
            signal: std::marker::PhantomData,
        }
    }
}

impl<S: ServedSignal> NamedService for ExportService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for ExportService<S>
where
    S: ServedSignal,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(serve_export(self.receiver.clone(), req, S::SIGNAL))
    }
}

/// Serves one unary export call of `signal`: keys first, then the body under the size limit.
async fn serve_export<B>(
    receiver: Arc<Receiver>,
    req: http::Request<B>,
    signal: Signal,
) -> Result<http::Response<TonicBody>, Infallible>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    let path = signal.grpc_path();
    if req.uri().path() != path {
        return Ok(Status::unimplemented(format!("only {path} is served")).into_http());
    }
    // Keys are checked before any of the body is read.
    let key_tenant = match receiver.authenticate(req.headers()) {
        Ok(t) => t,
        Err(err) => return Ok(status_for(&err).into_http()),
    };
    let pass_through = receiver.capture_pass_through(req.headers());
    let limit = receiver.max_request_bytes;
    let req = req.map(|body| LimitedBody::new(body, limit));
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        // The body wrapper enforces the limit first with RESOURCE_EXHAUSTED; this is
        // tonic's own backstop (and the limit for decompressed messages).
        .max_decoding_message_size(limit.saturating_add(1));
    Ok(grpc
        .unary(
            ExportMethod {
                receiver,
                key_tenant,
                pass_through,
                signal,
            },
            req,
        )
        .await)
}

struct ExportMethod {
    receiver: Arc<Receiver>,
    key_tenant: Option<TenantId>,
    pass_through: PassThrough,
    signal: Signal,
}

impl UnaryService<Bytes> for ExportMethod {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let receiver = self.receiver.clone();
        let key_tenant = self.key_tenant.clone();
        let pass_through = self.pass_through.clone();
        let signal = self.signal;
        Box::pin(async move {
            let tenant = request
                .metadata()
                .get(receiver.tenant_header.as_str())
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(TenantId::new);
            if signal == Signal::Metrics {
                return match receiver.accept_metrics_as(
                    request.into_inner(),
                    tenant,
                    key_tenant,
                    pass_through,
                ) {
                    Ok(_) => Ok(tonic::Response::new(Bytes::from(
                        crate::otlp::metrics::export_response().encode_to_vec(),
                    ))),
                    Err(err) => Err(status_for(&err)),
                };
            }
            let body = request.into_inner();
            if signal == Signal::Logs {
                return match receiver
                    .accept_logs(body, tenant, key_tenant, pass_through)
                    .await
                {
                    Ok(accepted) => {
                        let response = crate::otlp::logs::export_response(
                            accepted.rejected,
                            accepted.error_message.as_deref(),
                        );
                        Ok(tonic::Response::new(Bytes::from(response.encode_to_vec())))
                    }
                    Err(err) => Err(status_for(&err)),
                };
            }
            match receiver
                .accept_as(body, tenant, key_tenant, pass_through)
                .await
            {
                Ok(accepted) => {
                    let response =
                        export_response(accepted.rejected, accepted.error_message.as_deref());
                    Ok(tonic::Response::new(Bytes::from(response.encode_to_vec())))
                }
                Err(err) => Err(status_for(&err)),
            }
        })
    }
}

/// The gRPC status a refusal maps to (OTLP: UNAVAILABLE is retried by clients).
pub fn status_for(err: &ReceiveError) -> Status {
    match err {
        ReceiveError::Invalid(m) => Status::invalid_argument(m.clone()),
        ReceiveError::TooLarge { .. } => Status::resource_exhausted(err.to_string()),
        ReceiveError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        ReceiveError::Unavailable(m) => {
            Status::with_details(Code::Unavailable, m.clone(), retry_info(1).into())
        }
    }
}

/// Encoded `google.rpc.Status` details carrying a `RetryInfo` with the given delay.
fn retry_info(seconds: u64) -> Vec<u8> {
    let mut duration = Vec::new();
    put_key(&mut duration, 1, VARINT);
    put_varint(&mut duration, seconds);
    let mut info = Vec::new();
    put_bytes(&mut info, 1, &duration);
    let mut any = Vec::new();
    put_bytes(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
    put_bytes(&mut any, 2, &info);
    let mut status = Vec::new();
    put_key(&mut status, 1, VARINT);
    put_varint(&mut status, Code::Unavailable as u64);
    put_bytes(&mut status, 3, &any);
    status
}

/// A request body that fails with RESOURCE_EXHAUSTED as soon as the gRPC frame header
/// announces a message over the limit (or more bytes than that arrive), before anything large
/// is buffered.
struct LimitedBody<B> {
    inner: Pin<Box<B>>,
    limit: usize,
    header: [u8; 5],
    header_len: usize,
    seen: usize,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, limit: usize) -> Self {
        LimitedBody {
            inner: Box::pin(inner),
            limit,
            header: [0; 5],
            header_len: 0,
            seen: 0,
        }
    }

    fn check(&mut self, data: &[u8]) -> Result<(), Status> {
        self.seen += data.len();
        let take = (5 - self.header_len).min(data.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
        self.header_len += take;
        let announced = if self.header_len == 5 {
            u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize
        } else {
            0
        };
        let compressed = self.header_len == 5 && self.header[0] == 1;
        if (!compressed && announced > self.limit) || self.seen > self.limit.saturating_add(5) {
            let size = announced.max(self.seen.saturating_sub(5));
            return Err(Status::resource_exhausted(format!(
                "request of {size} bytes exceeds receive.max_request_bytes ({})",
                self.limit
            )));
        }
        Ok(())
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    match this.check(&bytes) {
                        Ok(()) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                        Err(status) => Poll::Ready(Some(Err(Box::new(status)))),
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Err(_) => Poll::Ready(None),
                },
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
