//! OTLP clients for tests: send an `ExportTraceServiceRequest` to the proxy over gRPC or HTTP.
//!
//! Every call is bounded by a timeout; connection failures come back as errors (gRPC: an
//! `UNAVAILABLE` status), never as a hang.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, HeaderMap, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};

/// Time limit of one client call (connect + request + response).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` over OTLP/gRPC to `addr`; returns the response or the status (connect errors: UNAVAILABLE).
pub async fn send_grpc(
    addr: SocketAddr,
    req: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    send_grpc_with(addr, req, &[], false).await
}

/// Like [`send_grpc`], with extra metadata (e.g. `x-tenant-id`) and optional gzip compression.
pub async fn send_grpc_with(
    addr: SocketAddr,
    req: ExportTraceServiceRequest,
    metadata: &[(&str, &str)],
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::internal(format!("bad endpoint: {e}")))?
        .connect_timeout(CLIENT_TIMEOUT)
        .timeout(CLIENT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect to {addr}: {e}")))?;
    let mut client = TraceServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    if gzip {
        client = client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    let mut request = tonic::Request::new(req);
    for (k, v) in metadata {
        let key = MetadataKey::from_bytes(k.as_bytes()).expect("valid metadata key");
        let value = MetadataValue::try_from(*v).expect("valid metadata value");
        request.metadata_mut().insert(key, value);
    }
    request.set_timeout(CLIENT_TIMEOUT);
    match tokio::time::timeout(CLIENT_TIMEOUT, client.export(request)).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "gRPC export to {addr} timed out"
        ))),
    }
}

/// Body encoding of an OTLP/HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpEncoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP/JSON: hex ids, camelCase fields).
    Json,
}

/// Status, headers and body of an HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpReply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body (gunzipped if the server gzipped it).
    pub body: Bytes,
}

impl HttpReply {
    /// The body decoded as an OTLP response (protobuf or JSON, after its content type).
    pub fn export_response(&self) -> ExportTraceServiceResponse {
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.starts_with("application/json") {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!(
                    "reply is not OTLP/JSON ({e}): {:?}",
                    String::from_utf8_lossy(&self.body)
                )
            })
        } else {
            ExportTraceServiceResponse::decode(self.body.clone()).unwrap_or_else(|e| {
                panic!(
                    "reply is not an OTLP protobuf response ({e}): {:?}",
                    self.body
                )
            })
        }
    }

    /// The `Retry-After` header in seconds, if present and numeric.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The body as (lossy) text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `req` as OTLP/JSON (opentelemetry-proto's serde: hex trace/span ids, camelCase).
pub fn to_otlp_json(req: &ExportTraceServiceRequest) -> Vec<u8> {
    serde_json::to_vec(req).expect("OTLP request serializes to JSON")
}

/// Gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// POSTs `req` to `http://<addr>/v1/traces` as protobuf or JSON, optionally gzipped.
pub async fn send_http(
    addr: SocketAddr,
    req: &ExportTraceServiceRequest,
    encoding: HttpEncoding,
    gzipped: bool,
) -> HttpReply {
    send_http_with(addr, req, encoding, gzipped, &[]).await
}

/// Like [`send_http`], with extra request headers (e.g. `x-tenant-id`).
pub async fn send_http_with(
    addr: SocketAddr,
    req: &ExportTraceServiceRequest,
    encoding: HttpEncoding,
    gzipped: bool,
    headers: &[(&str, &str)],
) -> HttpReply {
    let (content_type, body) = match encoding {
        HttpEncoding::Protobuf => ("application/x-protobuf", req.encode_to_vec()),
        HttpEncoding::Json => ("application/json", to_otlp_json(req)),
    };
    let mut all: Vec<(&str, &str)> = vec![(header::CONTENT_TYPE.as_str(), content_type)];
    let body = if gzipped {
        all.push((header::CONTENT_ENCODING.as_str(), "gzip"));
        gzip(&body)
    } else {
        body
    };
    all.extend_from_slice(headers);
    send_http_raw(addr, "/v1/traces", &all, Bytes::from(body)).await
}

/// POSTs `body` to `path` on `addr` with exactly the given headers (for malformed-input tests);
/// panics if no answer comes within [`CLIENT_TIMEOUT`].
pub async fn send_http_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> HttpReply {
    match try_http("POST", addr, path, headers, body).await {
        Ok(r) => r,
        Err(e) => panic!("HTTP POST {path} to {addr} failed: {e}"),
    }
}

/// GETs `path` on `addr` (e.g. the admin API); panics if no answer comes within [`CLIENT_TIMEOUT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    match try_http("GET", addr, path, &[], Bytes::new()).await {
        Ok(r) => r,
        Err(e) => panic!("HTTP GET {path} on {addr} failed: {e}"),
    }
}

/// One HTTP/1.1 request on a fresh connection, bounded by [`CLIENT_TIMEOUT`]; errors as text.
pub async fn try_http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<HttpReply, String> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn_task = tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| format!("building request: {e}"))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {e}"))?
            .to_bytes();
        conn_task.abort();
        let gzipped = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("gzip"))
            .unwrap_or(false);
        let body = if gzipped {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("gunzip reply: {e}"))?;
            Bytes::from(out)
        } else {
            body
        };
        Ok(HttpReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {CLIENT_TIMEOUT:?}")),
    }
}
