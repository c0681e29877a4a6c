//! OTLP/HTTP: `POST /v1/traces` and `POST /v1/metrics` with protobuf or JSON bodies, optionally
//! gzip- or zstd-compressed.
//! Answers in the request's encoding; errors carry a `google.rpc.Status`-shaped body.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use prost::Message;
use tokio::sync::Semaphore;

use super::{ReceiveError, Receiver};
use crate::model::TenantId;
use crate::otlp::json::{export_response, json_to_protobuf};
use crate::otlp::wire::{put_bytes, put_key, put_varint, VARINT};
use crate::otlp::Signal;

#[derive(Clone)]
struct HttpState {
    receiver: Arc<Receiver>,
    concurrency: Arc<Semaphore>,
}

/// The OTLP/HTTP router.
pub fn router(receiver: Arc<Receiver>, max_concurrent_requests: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(export_traces))
        .route("/v1/metrics", post(export_metrics))
        .route("/v1/logs", post(export_logs))
        .with_state(HttpState {
            receiver,
            concurrency: Arc::new(Semaphore::new(max_concurrent_requests)),
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

async fn export_traces(state: State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    export(state, headers, body, Signal::Traces).await
}

async fn export_metrics(state: State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    export(state, headers, body, Signal::Metrics).await
}

async fn export_logs(state: State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    export(state, headers, body, Signal::Logs).await
}

async fn export(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
    signal: Signal,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf");
    let encoding = if content_type.starts_with("application/json") {
        Encoding::Json
    } else if content_type.starts_with("application/x-protobuf")
        || content_type.starts_with("application/protobuf")
    {
        Encoding::Protobuf
    } else {
        return error(
            Encoding::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("unsupported Content-Type {content_type:?}: use application/x-protobuf or application/json"),
        );
    };
    // Keys are checked before any of the body is read.
    let key_tenant = match state.receiver.authenticate(&headers) {
        Ok(t) => t,
        Err(err) => return error(encoding, StatusCode::UNAUTHORIZED, &err.to_string()),
    };
    let Ok(_permit) = state.concurrency.try_acquire() else {
        return error(
            encoding,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests; retry later",
        );
    };
    let receiver = &state.receiver;
    let limit = receiver.max_request_bytes;
    let raw = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                receiver,
                encoding,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body exceeds receive.max_request_bytes ({limit})"),
            )
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    let decoded = if content_encoding.eq_ignore_ascii_case("gzip") {
        gunzip(&raw, limit)
    } else if content_encoding.eq_ignore_ascii_case("zstd") {
        unzstd(&raw, limit)
    } else {
        Ok(raw)
    };
    let raw = match decoded {
        Ok(b) => b,
        Err(resp) => return refuse(receiver, encoding, resp.0, &resp.1),
    };
    let body = match (encoding, signal) {
        (Encoding::Protobuf, _) => raw,
        (Encoding::Json, Signal::Traces) => match json_to_protobuf(&raw) {
            Ok(b) => b,
            Err(e) => return refuse(receiver, encoding, StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (Encoding::Json, Signal::Metrics) => match crate::otlp::metrics::json_to_protobuf(&raw) {
            Ok(b) => b,
            Err(e) => return refuse(receiver, encoding, StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (Encoding::Json, Signal::Logs) => match crate::otlp::logs::json_to_protobuf(&raw) {
            Ok(b) => b,
            Err(e) => return refuse(receiver, encoding, StatusCode::BAD_REQUEST, &e.to_string()),
        },
    };
    let tenant = headers
        .get(receiver.tenant_header.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(TenantId::new);
    if signal == Signal::Metrics {
        let pass_through = receiver.capture_pass_through(&headers);
        return match receiver.accept_metrics_as(body, tenant, key_tenant, pass_through) {
            Ok(_) => {
                let response = crate::otlp::metrics::export_response();
                match encoding {
                    Encoding::Protobuf => (
                        [(header::CONTENT_TYPE, "application/x-protobuf")],
                        response.encode_to_vec(),
                    )
                        .into_response(),
                    Encoding::Json => {
                        ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
                    }
                }
            }
            Err(err) => error(encoding, http_status(&err), &err.to_string()),
        };
    }
    let pass_through = receiver.capture_pass_through(&headers);
    let accepted = match signal {
        Signal::Logs => {
            receiver
                .accept_logs(body, tenant, key_tenant, pass_through)
                .await
        }
        _ => {
            receiver
                .accept_as(body, tenant, key_tenant, pass_through)
                .await
        }
    };
    match accepted {
        Ok(accepted) => {
            let (encoded, json) = if signal == Signal::Logs {
                let response = crate::otlp::logs::export_response(
                    accepted.rejected,
                    accepted.error_message.as_deref(),
                );
                let json = response
                    .partial_success
                    .as_ref()
                    .map(|_| serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()));
                (response.encode_to_vec(), json)
            } else {
                let response =
                    export_response(accepted.rejected, accepted.error_message.as_deref());
                let json = response
                    .partial_success
                    .as_ref()
                    .map(|_| serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()));
                (response.encode_to_vec(), json)
            };
            match encoding {
                Encoding::Protobuf => {
                    ([(header::CONTENT_TYPE, "application/x-protobuf")], encoded).into_response()
                }
                Encoding::Json => (
                    [(header::CONTENT_TYPE, "application/json")],
                    // An absent partial success is omitted, not written as null.
                    json.unwrap_or_else(|| b"{}".to_vec()),
                )
                    .into_response(),
            }
        }
        Err(err) => error(encoding, http_status(&err), &err.to_string()),
    }
}

/// The HTTP status a refusal maps to (503 is retried by OTLP clients).
fn http_status(err: &ReceiveError) -> StatusCode {
    match err {
        ReceiveError::Invalid(_) => StatusCode::BAD_REQUEST,
        ReceiveError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ReceiveError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ReceiveError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
    }
}

/// Decompresses a gzip body, refusing output beyond `limit` bytes (a zip bomb stays small).
pub(super) fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, (StatusCode, String)> {
    read_limited(flate2::read::GzDecoder::new(raw), "gzip", raw.len(), limit)
}

/// Decompresses a zstd body under the same `limit` as gzip.
pub(super) fn unzstd(raw: &[u8], limit: usize) -> Result<Bytes, (StatusCode, String)> {
    let decoder = zstd::stream::read::Decoder::new(raw)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid zstd body: {e}")))?;
    read_limited(decoder, "zstd", raw.len(), limit)
}

/// Reads a decoder to its end, stopping one byte past `limit` so oversized output is refused.
fn read_limited(
    decoder: impl Read,
    name: &str,
    compressed_len: usize,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let mut out = Vec::with_capacity(compressed_len.saturating_mul(4).min(limit));
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid {name} body: {e}")))?;
    if out.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("decompressed body exceeds receive.max_request_bytes ({limit})"),
        ));
    }
    Ok(Bytes::from(out))
}

/// Counts and answers a request refused before it reached the receiver.
fn refuse(receiver: &Receiver, encoding: Encoding, status: StatusCode, message: &str) -> Response {
    receiver.count_invalid();
    error(encoding, status, message)
}

/// An error response: `google.rpc.Status` as protobuf or JSON; 503 adds Retry-After.
fn error(encoding: Encoding, status: StatusCode, message: &str) -> Response {
    let grpc_code: u64 = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
        StatusCode::UNAUTHORIZED => 16,
        _ => 2,
    };
    let mut response = match encoding {
        Encoding::Json => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "code": grpc_code, "message": message }).to_string(),
        )
            .into_response(),
        Encoding::Protobuf => {
            let mut body = Vec::new();
            put_key(&mut body, 1, VARINT);
            put_varint(&mut body, grpc_code);
            put_bytes(&mut body, 2, message.as_bytes());
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                body,
            )
                .into_response()
        }
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// Timeouts of the OTLP/HTTP listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// HTTP/1: a request's headers must arrive within this (slowloris).
    pub header_read_timeout: std::time::Duration,
    /// HTTP/2: ping interval.
    pub keepalive_interval: std::time::Duration,
    /// HTTP/2: how long a ping may go unanswered.
    pub keepalive_timeout: std::time::Duration,
}

/// Serves `app` on `incoming` (HTTP/1.1 and HTTP/2, over TLS when the connections are) until
/// `shutdown` completes, then lets open requests finish.
pub async fn serve(
    mut incoming: super::conn::Incoming,
    app: Router,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(s) => s,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "OTLP/HTTP connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}
