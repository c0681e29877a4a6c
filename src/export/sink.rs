//! Where encoded export requests go: a local OTLP/JSON-lines file (the default), an OTLP/gRPC
//! backend, or an OTLP/HTTP backend. Each send says whether a failure is worth retrying, using
//! the codes the OTLP specification marks retryable. The network sinks speak TLS to
//! `https://` endpoints (see [`super::tls`]), send the static `[export.headers]` with every
//! request and compress bodies as `[export] compression` says.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::tls::{self, Alpn, TlsError};
use crate::config::{Compression, ExportConfig, ExportKind};
use crate::model::PassThrough;
use crate::otlp::codec::RawCodec;
use crate::otlp::wire::{Reader, LEN, VARINT};
use crate::otlp::{json, logs, metrics, Signal};

/// A failed send.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Whether the OTLP spec says the same request may succeed later.
    pub retryable: bool,
    /// How long the backend asked us to wait (RetryInfo / Retry-After).
    pub retry_after: Option<Duration>,
    /// What went wrong.
    pub message: String,
}

impl SendError {
    fn permanent(message: String) -> Self {
        SendError {
            retryable: false,
            retry_after: None,
            message,
        }
    }
    fn retryable(message: String, retry_after: Option<Duration>) -> Self {
        SendError {
            retryable: true,
            retry_after,
            message,
        }
    }
}

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The output file could not be opened.
    #[error("cannot open export file {path}: {source}")]
    File {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The endpoint is not a usable URL.
    #[error("invalid export endpoint {0:?}")]
    Endpoint(String),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A `[export.headers]` entry is not a valid header (config validation normally catches it).
    #[error("export.headers.{0:?} is not a valid header")]
    Header(String),
}

/// An export destination.
// One per process, cloned per batch: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Sink {
    /// OTLP/JSON lines.
    File {
        /// The open output file.
        writer: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
        /// What the requests hold (how to write them as JSON).
        signal: Signal,
    },
    /// OTLP/gRPC.
    Grpc {
        /// gRPC client (compression set on it).
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        /// The export method called (`TraceService/Export`, `MetricsService/Export`).
        path: http::uri::PathAndQuery,
        /// Static metadata sent with every request.
        headers: HeaderMap,
    },
    /// OTLP/HTTP protobuf.
    Http {
        /// HTTP client (TLS for `https://`).
        client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
        /// Full URL of the signal's endpoint.
        url: http::Uri,
        /// Timeout per request.
        timeout: Duration,
        /// Static headers sent with every request.
        headers: HeaderMap,
        /// Body compression.
        compression: Compression,
    },
}

impl Sink {
    /// Builds the trace sink the config asks for.
    pub fn build(config: &ExportConfig) -> Result<Sink, SinkError> {
        Self::build_for(config, Signal::Traces)
    }

    /// Builds the sink of `signal`: the same exporter settings, the signal's file, gRPC method
    /// or HTTP URL (`metrics_path`, `MetricsService/Export`, `metrics_endpoint` or
    /// `endpoint` + `/v1/metrics`).
    pub fn build_for(config: &ExportConfig, signal: Signal) -> Result<Sink, SinkError> {
        match config.kind {
            ExportKind::File => {
                let path: &Path = match signal {
                    Signal::Traces => &config.path,
                    Signal::Metrics => &config.metrics_path,
                    Signal::Logs => &config.logs_path,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| SinkError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SinkError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                Ok(Sink::File {
                    writer: Arc::new(Mutex::new(std::io::BufWriter::new(file))),
                    signal,
                })
            }
            ExportKind::OtlpGrpc => {
                let headers = static_headers(config)?;
                let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|_| SinkError::Endpoint(config.endpoint.clone()))?
                    .timeout(config.request_timeout.0)
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    // Export requests are MiBs: larger HTTP/2 windows avoid flow-control stalls.
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(32 << 20));
                let channel = if config.is_https() {
                    let tls = tls::client_config(config)?;
                    endpoint.connect_with_connector_lazy(tls::connector(config, tls, Alpn::Http2)?)
                } else {
                    endpoint.connect_lazy()
                };
                let mut grpc = tonic::client::Grpc::new(channel);
                match config.compression() {
                    Compression::Gzip => grpc = grpc.send_compressed(CompressionEncoding::Gzip),
                    Compression::Zstd => grpc = grpc.send_compressed(CompressionEncoding::Zstd),
                    Compression::None => {}
                }
                log_destination(config, &config.endpoint, signal, headers.len());
                Ok(Sink::Grpc {
                    grpc,
                    path: http::uri::PathAndQuery::from_static(signal.grpc_path()),
                    headers,
                })
            }
            ExportKind::OtlpHttp => {
                let base = config.endpoint.trim_end_matches('/');
                let own = match signal {
                    Signal::Traces => None,
                    Signal::Metrics => config.metrics_endpoint.as_ref(),
                    Signal::Logs => config.logs_endpoint.as_ref(),
                };
                let url = match (signal, own) {
                    (Signal::Metrics | Signal::Logs, Some(url)) => url.clone(),
                    (Signal::Metrics | Signal::Logs, None) => {
                        // An endpoint written with the traces path names the base it extends.
                        let base = base.strip_suffix("/v1/traces").unwrap_or(base);
                        format!("{base}{}", signal.http_path())
                    }
                    (Signal::Traces, _) if base.ends_with("/v1/traces") => base.to_string(),
                    (Signal::Traces, _) => format!("{base}/v1/traces"),
                };
                let parsed: http::Uri =
                    url.parse().map_err(|_| SinkError::Endpoint(url.clone()))?;
                let url = parsed;
                let headers = static_headers(config)?;
                let tls = tls::client_config(config)?;
                let client = Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(tls::connector(config, tls, Alpn::Http1)?);
                log_destination(config, &url.to_string(), signal, headers.len());
                Ok(Sink::Http {
                    client,
                    url,
                    timeout: config.request_timeout.0,
                    headers,
                    compression: config.compression(),
                })
            }
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest` with the static headers and then the
    /// pass-through headers its spans came with; on a name clash the static header wins (a
    /// client cannot replace the operator's credentials). The file sink ignores headers.
    pub async fn send(&self, body: Bytes, pass_through: &PassThrough) -> Result<(), SendError> {
        match self {
            Sink::File { writer, signal } => {
                let (file, signal) = (writer.clone(), *signal);
                tokio::task::spawn_blocking(move || write_json_line(&file, signal, &body))
                    .await
                    .map_err(|e| SendError::permanent(format!("file writer failed: {e}")))?
            }
            Sink::Grpc {
                grpc,
                path,
                headers,
            } => {
                let mut grpc = grpc.clone();
                grpc.ready().await.map_err(|e| {
                    SendError::retryable(format!("backend unreachable: {}", chain(&e)), None)
                })?;
                let path = path.clone();
                let request = tonic::Request::from_parts(
                    MetadataMap::from_headers(with_pass_through(headers, pass_through)),
                    tonic::Extensions::default(),
                    body,
                );
                match grpc.unary(request, path, RawCodec).await {
                    Ok(_) => Ok(()),
                    // A status tonic made from a local error (it carries the error as its
                    // source; one the backend sent never does) is a failed connection: TLS
                    // refused, connection reset. OTLP retries connection failures.
                    Err(status) => match std::error::Error::source(&status) {
                        Some(source) => {
                            let why = match status.message() {
                                "" => chain(source),
                                message => message.to_string(),
                            };
                            Err(SendError::retryable(
                                format!("backend unreachable: {why}"),
                                None,
                            ))
                        }
                        None => Err(classify_status(&status)),
                    },
                }
            }
            Sink::Http {
                client,
                url,
                timeout,
                headers,
                compression,
            } => {
                let body = compress(*compression, body).await?;
                let mut request = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(body))
                    .map_err(|e| SendError::permanent(format!("cannot build request: {e}")))?;
                request
                    .headers_mut()
                    .extend(with_pass_through(headers, pass_through));
                if *compression != Compression::None {
                    request.headers_mut().insert(
                        http::header::CONTENT_ENCODING,
                        HeaderValue::from_static(compression.name()),
                    );
                }
                let response = tokio::time::timeout(*timeout, client.request(request))
                    .await
                    .map_err(|_| SendError::retryable("backend timed out".into(), None))?
                    .map_err(|e| {
                        SendError::retryable(format!("backend unreachable: {}", chain(&e)), None)
                    })?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                    Err(SendError::retryable(
                        format!("backend answered {status}"),
                        retry_after,
                    ))
                } else {
                    Err(SendError::permanent(format!("backend answered {status}")))
                }
            }
        }
    }
}

/// The `[export.headers]` as a header map, values marked sensitive (never logged by hyper,
/// never HPACK-indexed by HTTP/2).
fn static_headers(config: &ExportConfig) -> Result<HeaderMap, SinkError> {
    let mut map = HeaderMap::new();
    for (name, value) in config.headers.iter() {
        let key = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SinkError::Header(name.to_string()))?;
        let mut value =
            HeaderValue::from_str(value).map_err(|_| SinkError::Header(name.to_string()))?;
        value.set_sensitive(true);
        map.insert(key, value);
    }
    Ok(map)
}

/// The static headers plus the pass-through ones whose names no static header has (values
/// stay marked sensitive). Without pass-through headers this is the clone it always was.
fn with_pass_through(static_headers: &HeaderMap, pass_through: &PassThrough) -> HeaderMap {
    let mut map = static_headers.clone();
    for (name, value) in pass_through.headers() {
        if !static_headers.contains_key(name) {
            map.append(name.clone(), value.clone());
        }
    }
    map
}

/// Says where a signal goes and how, naming header names only (values are secrets).
fn log_destination(config: &ExportConfig, endpoint: &str, signal: Signal, headers: usize) {
    let names: Vec<&str> = config.headers.iter().map(|(name, _)| name).collect();
    tracing::info!(
        endpoint = %endpoint,
        signal = ?signal,
        kind = ?config.kind,
        tls = config.is_https(),
        compression = config.compression().name(),
        headers,
        header_names = ?names,
        "exporting"
    );
}

/// Compresses an HTTP body off the async threads (a batch is MiBs).
async fn compress(compression: Compression, body: Bytes) -> Result<Bytes, SendError> {
    if compression == Compression::None {
        return Ok(body);
    }
    tokio::task::spawn_blocking(move || compress_blocking(compression, &body))
        .await
        .map_err(|e| SendError::permanent(format!("compression task failed: {e}")))?
        .map_err(|e| SendError::permanent(format!("cannot compress the request: {e}")))
}

/// Compresses one export body as the HTTP exporter does (gzip level 1, zstd level 3, zstd's
/// default); public so the benchmark measures exactly this.
pub fn compress_blocking(compression: Compression, body: &[u8]) -> std::io::Result<Bytes> {
    match compression {
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            encoder.write_all(body)?;
            encoder.finish().map(Bytes::from)
        }
        Compression::Zstd => zstd::bulk::compress(body, 3).map(Bytes::from),
        Compression::None => Ok(Bytes::copy_from_slice(body)),
    }
}

/// An error with its sources (`client error (Connect): invalid peer certificate: …`), so TLS
/// failures say why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn write_json_line(
    file: &Mutex<std::io::BufWriter<std::fs::File>>,
    signal: Signal,
    body: &[u8],
) -> Result<(), SendError> {
    let mut line = Vec::with_capacity(body.len() * 2);
    match signal {
        Signal::Traces => json::protobuf_to_json_line(body, &mut line),
        Signal::Metrics => metrics::protobuf_to_json_line(body, &mut line),
        Signal::Logs => logs::protobuf_to_json_line(body, &mut line),
    }
    .map_err(|e| SendError::permanent(format!("cannot write JSON: {e}")))?;
    let mut file = file
        .lock()
        .map_err(|_| SendError::permanent("export file lock poisoned".into()))?;
    file.write_all(&line)
        .and_then(|_| file.flush())
        .map_err(|e| SendError::retryable(format!("cannot write export file: {e}"), None))
}

/// Maps a gRPC status to retry advice (OTLP spec, "Failures" for OTLP/gRPC).
pub fn classify_status(status: &Status) -> SendError {
    let retry_after = retry_info_delay(status.details());
    let message = format!("backend answered {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::retryable(message, retry_after),
        // Retryable only when the server says recovery is possible (RetryInfo present).
        Code::ResourceExhausted if retry_after.is_some() => {
            SendError::retryable(message, retry_after)
        }
        _ => SendError::permanent(message),
    }
}

/// Reads `google.rpc.RetryInfo.retry_delay` from encoded `google.rpc.Status` details.
pub fn retry_info_delay(details: &[u8]) -> Option<Duration> {
    let mut reader = Reader::new(details);
    while let Ok(Some((field, wt))) = reader.key() {
        if field != 3 || wt != LEN {
            reader.skip(wt).ok()?;
            continue;
        }
        let any = &details[reader.len_delimited().ok()?];
        let mut any_reader = Reader::new(any);
        let (mut type_url, mut value): (&[u8], &[u8]) = (&[], &[]);
        while let Ok(Some((f, wt))) = any_reader.key() {
            match (f, wt) {
                (1, LEN) => type_url = &any[any_reader.len_delimited().ok()?],
                (2, LEN) => value = &any[any_reader.len_delimited().ok()?],
                (_, wt) => any_reader.skip(wt).ok()?,
            }
        }
        if !type_url.ends_with(b"google.rpc.RetryInfo") {
            continue;
        }
        let mut info = Reader::new(value);
        while let Ok(Some((f, wt))) = info.key() {
            if f == 1 && wt == LEN {
                let d = &value[info.len_delimited().ok()?];
                let mut dr = Reader::new(d);
                let (mut secs, mut nanos) = (0u64, 0u64);
                while let Ok(Some((f, wt))) = dr.key() {
                    match (f, wt) {
                        (1, VARINT) => secs = dr.varint().ok()?,
                        (2, VARINT) => nanos = dr.varint().ok()?,
                        (_, wt) => dr.skip(wt).ok()?,
                    }
                }
                return Some(
                    Duration::from_secs(secs) + Duration::from_nanos(nanos % 1_000_000_000),
                );
            }
            info.skip(wt).ok()?;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_delay_is_read_from_status_details() {
        // google.rpc.Status { code = 8, details = [Any { type_url, value = RetryInfo { retry_delay = { seconds: 3 } } }] }
        let mut duration = Vec::new();
        crate::otlp::wire::put_key(&mut duration, 1, VARINT);
        crate::otlp::wire::put_varint(&mut duration, 3);
        let mut info = Vec::new();
        crate::otlp::wire::put_bytes(&mut info, 1, &duration);
        let mut any = Vec::new();
        crate::otlp::wire::put_bytes(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
        crate::otlp::wire::put_bytes(&mut any, 2, &info);
        let mut status = Vec::new();
        crate::otlp::wire::put_key(&mut status, 1, VARINT);
        crate::otlp::wire::put_varint(&mut status, 8);
        crate::otlp::wire::put_bytes(&mut status, 3, &any);
        assert_eq!(retry_info_delay(&status), Some(Duration::from_secs(3)));
        let s = Status::with_details(Code::ResourceExhausted, "slow down", status.into());
        let e = classify_status(&s);
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert!(!classify_status(&Status::resource_exhausted("no info")).retryable);
        assert!(classify_status(&Status::unavailable("down")).retryable);
        assert!(!classify_status(&Status::invalid_argument("bad")).retryable);
    }
}
