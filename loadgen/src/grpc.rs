//! OTLP/gRPC plumbing without decoding: a pass-through codec (messages are `Bytes`) for the
//! generator's client and the sink's server, and the sink's `Export` routes of
//! `TraceService`, `LogsService` and `MetricsService`.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, StdError};
use tonic::Status;

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const LOGS_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
pub const METRICS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// An OTLP signal the generator sends and the sink counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => EXPORT_PATH,
            Signal::Logs => LOGS_EXPORT_PATH,
            Signal::Metrics => METRICS_EXPORT_PATH,
        }
    }

    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// One OTLP export service as tonic's router sees it: its name (the route prefix) and signal.
pub trait ServiceKind: Send + Sync + 'static {
    const NAME: &'static str;
    const SIGNAL: Signal;
}

pub struct TraceServiceKind;
pub struct LogsServiceKind;
pub struct MetricsServiceKind;

impl ServiceKind for TraceServiceKind {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const SIGNAL: Signal = Signal::Traces;
}

impl ServiceKind for LogsServiceKind {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const SIGNAL: Signal = Signal::Logs;
}

impl ServiceKind for MetricsServiceKind {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const SIGNAL: Signal = Signal::Metrics;
}

/// Messages are their protobuf bytes, untouched.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// Handles one decoded-to-bytes export request of `signal`; the `Ok` answer is an empty
/// export response (everything accepted; the three responses encode alike when empty).
pub trait ExportHandler: Send + Sync + 'static {
    fn export(&self, signal: Signal, request: Bytes) -> Result<(), Status>;
}

/// The sink's gRPC service for one signal: routes `Export` to the handler, answers
/// UNIMPLEMENTED otherwise.
pub struct ExportService<H, K> {
    handler: Arc<H>,
    max_message: usize,
    /// Requests that arrived gzip-compressed (`grpc-encoding: gzip`).
    pub gzip_requests: Arc<std::sync::atomic::AtomicU64>,
    kind: PhantomData<fn() -> K>,
}

impl<H, K> Clone for ExportService<H, K> {
    fn clone(&self) -> Self {
        ExportService {
            handler: self.handler.clone(),
            max_message: self.max_message,
            gzip_requests: self.gzip_requests.clone(),
            kind: PhantomData,
        }
    }
}

impl<H: ExportHandler, K: ServiceKind> ExportService<H, K> {
    /// A service for signal `K` sharing `gzip_requests` with the others.
    pub fn new(
        handler: Arc<H>,
        max_message: usize,
        gzip_requests: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        ExportService {
            handler,
            max_message,
            gzip_requests,
            kind: PhantomData,
        }
    }
}

struct Unary<H>(Arc<H>, Signal);

impl<H: ExportHandler> tonic::server::UnaryService<Bytes> for Unary<H> {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let res = self
            .0
            .export(self.1, request.into_inner())
            .map(|()| tonic::Response::new(Bytes::new()));
        std::future::ready(res)
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<H, K, B> tonic::codegen::Service<http::Request<B>> for ExportService<H, K>
where
    H: ExportHandler,
    K: ServiceKind,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == K::SIGNAL.grpc_path() {
            if req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v == "gzip")
            {
                self.gzip_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let handler = self.handler.clone();
            let max = self.max_message;
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(RawCodec)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .max_decoding_message_size(max);
                Ok(grpc.unary(Unary(handler, K::SIGNAL), req).await)
            })
        } else {
            Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            })
        }
    }
}

impl<H, K: ServiceKind> tonic::server::NamedService for ExportService<H, K> {
    const NAME: &'static str = K::NAME;
}
