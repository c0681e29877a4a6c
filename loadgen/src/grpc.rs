//! OTLP/gRPC plumbing without decoding: a pass-through codec (messages are `Bytes`) for the
//! generator's client and the sink's server, and the sink's `TraceService/Export` route.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, StdError};
use tonic::Status;

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

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

/// Handles one decoded-to-bytes export request; the `Ok` answer is an empty
/// `ExportTraceServiceResponse` (all spans accepted).
pub trait ExportHandler: Send + Sync + 'static {
    fn export(&self, request: Bytes) -> Result<(), Status>;
}

/// The sink's gRPC service: routes `Export` to the handler, answers UNIMPLEMENTED otherwise.
pub struct ExportService<H> {
    handler: Arc<H>,
    max_message: usize,
    /// Requests that arrived gzip-compressed (`grpc-encoding: gzip`).
    pub gzip_requests: Arc<std::sync::atomic::AtomicU64>,
}

impl<H> Clone for ExportService<H> {
    fn clone(&self) -> Self {
        ExportService {
            handler: self.handler.clone(),
            max_message: self.max_message,
            gzip_requests: self.gzip_requests.clone(),
        }
    }
}

impl<H: ExportHandler> ExportService<H> {
    pub fn new(handler: Arc<H>, max_message: usize) -> Self {
        ExportService {
            handler,
            max_message,
            gzip_requests: Default::default(),
        }
    }
}

struct Unary<H>(Arc<H>);

impl<H: ExportHandler> tonic::server::UnaryService<Bytes> for Unary<H> {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let res = self
            .0
            .export(request.into_inner())
            .map(|()| tonic::Response::new(Bytes::new()));
        std::future::ready(res)
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<H, B> tonic::codegen::Service<http::Request<B>> for ExportService<H>
where
    H: ExportHandler,
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
        if req.uri().path() == EXPORT_PATH {
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
                Ok(grpc.unary(Unary(handler), req).await)
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

impl<H> tonic::server::NamedService for ExportService<H> {
    const NAME: &'static str = SERVICE_NAME;
}
