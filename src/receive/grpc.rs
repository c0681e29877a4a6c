//! OTLP/gRPC: `TraceService/Export`, `MetricsService/Export` and `LogsService/Export`. The
//! unary call is read here rather than through tonic's streaming decoder, so a request that
//! arrives in one HTTP/2 DATA frame is used in place (no copy) and is never decoded into
//! structs (metrics are decoded once only to count their points).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use prost::Message;
use tonic::body::Body as TonicBody;
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::{ReceiveError, Receiver};
use crate::model::{PassThrough, TenantId};
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
    let (parts, body) = req.into_parts();
    let message = match read_unary(LimitedBody::new(body, limit), &parts.headers, limit).await {
        Ok(m) => m,
        Err(status) => return Ok(status.into_http()),
    };
    let tenant = parts
        .headers
        .get(receiver.tenant_header.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(TenantId::new);
    Ok(
        match export(&receiver, signal, message, tenant, key_tenant, pass_through).await {
            Ok(response) => unary_response(response),
            Err(err) => status_for(&err).into_http(),
        },
    )
}

/// Hands one export request of `signal` to the receiver; the encoded response on success.
async fn export(
    receiver: &Receiver,
    signal: Signal,
    body: Bytes,
    tenant: Option<TenantId>,
    key_tenant: Option<TenantId>,
    pass_through: PassThrough,
) -> Result<Bytes, ReceiveError> {
    let response = match signal {
        Signal::Metrics => {
            receiver.accept_metrics_as(body, tenant, key_tenant, pass_through)?;
            crate::otlp::metrics::export_response().encode_to_vec()
        }
        Signal::Logs => {
            let accepted = receiver
                .accept_logs(body, tenant, key_tenant, pass_through)
                .await?;
            crate::otlp::logs::export_response(accepted.rejected, accepted.error_message.as_deref())
                .encode_to_vec()
        }
        Signal::Traces => {
            let accepted = receiver
                .accept_as(body, tenant, key_tenant, pass_through)
                .await?;
            export_response(accepted.rejected, accepted.error_message.as_deref()).encode_to_vec()
        }
    };
    Ok(Bytes::from(response))
}

/// Reads the one message of a unary gRPC request. A request that arrives in one DATA frame
/// (the usual case: the frame limit is 1 MiB) is used in place, without a copy; one split over
/// several frames is copied once into a buffer of its announced size. A compressed message is
/// inflated under the same limit.
async fn read_unary<B>(
    body: LimitedBody<B>,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, Status>
where
    B: Body,
    B::Error: Into<StdError>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(e) => Status::cancelled(format!("request body: {e}")),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        match (first.take(), joined.as_mut()) {
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let announced = announced_len(&head).unwrap_or(0).min(limit);
                let mut buf =
                    bytes::BytesMut::with_capacity((5 + announced).max(head.len() + data.len()));
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    let whole = match (first, joined) {
        (_, Some(buf)) => buf.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    };
    let Some(len) = announced_len(&whole) else {
        return Err(Status::internal("missing request message"));
    };
    if whole.len() - 5 != len {
        return Err(Status::internal(format!(
            "the request holds {} bytes after the gRPC message header, which announced {len} (a unary call carries exactly one message)",
            whole.len() - 5
        )));
    }
    let message = whole.slice(5..);
    match whole[0] {
        0 => Ok(message),
        1 => {
            let encoding = headers
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity");
            let inflated = match encoding {
                "gzip" => super::http::gunzip(&message, limit),
                "zstd" => super::http::unzstd(&message, limit),
                "identity" => return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                )),
                other => {
                    return Err(Status::unimplemented(format!(
                        "content is compressed with `{other}`, which is not supported (gzip, zstd)"
                    )))
                }
            };
            inflated.map_err(|(code, why)| {
                if code == http::StatusCode::PAYLOAD_TOO_LARGE {
                    Status::resource_exhausted(why)
                } else {
                    Status::internal(why)
                }
            })
        }
        flag => Err(Status::internal(format!(
            "protocol error: invalid compression flag {flag} (valid flags are 0 and 1)"
        ))),
    }
}

/// The message length a gRPC message header announces, once its 5 bytes are there.
fn announced_len(head: &[u8]) -> Option<usize> {
    let h = head.get(..5)?;
    Some(u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
}

/// A successful unary response: the message in one frame, then `grpc-status: 0`.
fn unary_response(message: Bytes) -> http::Response<TonicBody> {
    let mut framed = bytes::BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([
        Ok::<_, Infallible>(Frame::data(framed.freeze())),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut response = http::Response::new(TonicBody::new(http_body_util::StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-accept-encoding",
        http::HeaderValue::from_static("gzip,zstd"),
    );
    response
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A request body arriving as these DATA frames.
    fn body(frames: Vec<Vec<u8>>) -> LimitedBody<impl Body<Data = Bytes, Error = Infallible>> {
        let frames = frames
            .into_iter()
            .map(|f| Ok::<_, Infallible>(Frame::data(Bytes::from(f))));
        LimitedBody::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            1024,
        )
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn headers(encoding: Option<&'static str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(e) = encoding {
            h.insert("grpc-encoding", http::HeaderValue::from_static(e));
        }
        h
    }

    async fn read(frames: Vec<Vec<u8>>, encoding: Option<&'static str>) -> Result<Bytes, Status> {
        read_unary(body(frames), &headers(encoding), 1024).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_is_used_in_place_and_one_split_over_frames_is_joined() {
        let whole = framed(0, b"spans!");
        assert_eq!(
            read(vec![whole.clone()], None).await.unwrap(),
            &b"spans!"[..]
        );
        let parts = vec![
            whole[..2].to_vec(),
            whole[2..7].to_vec(),
            whole[7..].to_vec(),
        ];
        assert_eq!(read(parts, None).await.unwrap(), &b"spans!"[..]);
    }

    #[tokio::test]
    async fn a_gzip_message_is_inflated_and_an_unknown_encoding_is_unimplemented() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"compressed spans").unwrap();
        let message = framed(1, &gz.finish().unwrap());
        assert_eq!(
            read(vec![message.clone()], Some("gzip")).await.unwrap(),
            &b"compressed spans"[..]
        );
        let err = read(vec![message.clone()], Some("snappy"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
        let err = read(vec![message], None).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
    }

    #[tokio::test]
    async fn truncated_extra_oversized_and_missing_messages_are_refused() {
        let whole = framed(0, b"spans!");
        let err = read(vec![whole[..8].to_vec()], None).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        let mut two = whole.clone();
        two.extend_from_slice(&whole);
        assert_eq!(
            read(vec![two], None).await.unwrap_err().code(),
            Code::Internal
        );
        let big = framed(0, &[7; 2000]);
        assert_eq!(
            read(vec![big], None).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
        assert_eq!(read(vec![], None).await.unwrap_err().code(), Code::Internal);
        assert_eq!(
            read(vec![framed(2, b"x")], None).await.unwrap_err().code(),
            Code::Internal
        );
    }

    #[tokio::test]
    async fn a_gzip_bomb_stops_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&[0; 100_000]).unwrap();
        let message = framed(1, &gz.finish().unwrap());
        let err = read(vec![message], Some("gzip")).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    }
}
