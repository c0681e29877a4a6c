//! The peer protocol (`proto/tailsift_peer.proto`): the messages as prost derives with the
//! .proto's field numbers, how held spans become a request and a request becomes spans again
//! (span bytes copied once into the request, sliced back out without decoding), the client a
//! sender uses and the server side's gRPC plumbing.

use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::buffer::HandedDecision;
use crate::model::{Decision, Origin, PassThrough, SpanRecord, TenantId, TraceId};
use crate::otlp::codec::RawCodec;
use crate::otlp::ingest::{index_span, Fnv64, SpanLimits};

/// gRPC path of `Peer/Forward`.
pub const FORWARD_PATH: &str = "/tailsift.peer.v1.Peer/Forward";
/// gRPC path of `Peer/Info`.
pub const INFO_PATH: &str = "/tailsift.peer.v1.Peer/Info";
/// gRPC path of `Peer/Announce`.
pub const ANNOUNCE_PATH: &str = "/tailsift.peer.v1.Peer/Announce";
/// gRPC service name of the peer protocol.
pub const SERVICE_NAME: &str = "tailsift.peer.v1.Peer";

/// `tailsift.peer.v1.ForwardRequest`: spans for their owner.
#[derive(Clone, PartialEq, Message)]
pub struct ForwardRequest {
    /// Advertise address of the sending node.
    #[prost(string, tag = "1")]
    pub sender: String,
    /// Unique per sender and batch, so a retried batch is held once.
    #[prost(uint64, tag = "2")]
    pub batch_id: u64,
    /// Spans grouped by origin.
    #[prost(message, repeated, tag = "3")]
    pub groups: Vec<SpanGroup>,
    /// Remembered decisions handed to the traces' new owner.
    #[prost(message, repeated, tag = "4")]
    pub decisions: Vec<DecisionRecord>,
}

/// `tailsift.peer.v1.DecisionRecord`: a decision the previous owner of a trace remembers, so
/// late spans follow it at the new owner.
#[derive(Clone, PartialEq, Message)]
pub struct DecisionRecord {
    /// The 16-byte trace id.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// Kept or dropped.
    #[prost(bool, tag = "2")]
    pub keep: bool,
    /// The sample rate kept spans carry.
    #[prost(uint64, tag = "3")]
    pub sample_rate: u64,
    /// The 56-bit rejection threshold written as `ot=th:`.
    #[prost(uint64, tag = "4")]
    pub threshold: u64,
    /// The deciding rule.
    #[prost(string, tag = "5")]
    pub rule: String,
    /// The trace's tenant.
    #[prost(string, tag = "6")]
    pub tenant: String,
    /// Spans the decision covered.
    #[prost(uint64, tag = "7")]
    pub spans: u64,
}

impl DecisionRecord {
    /// The wire form of a handed-over decision.
    pub fn from_handed(h: &HandedDecision) -> DecisionRecord {
        DecisionRecord {
            trace_id: h.trace_id.0.to_vec(),
            keep: h.decision.keep,
            sample_rate: h.decision.sample_rate,
            threshold: h.decision.threshold,
            rule: h.decision.rule.to_string(),
            tenant: h.tenant.as_str().to_string(),
            spans: h.spans,
        }
    }

    /// The decision again; `None` for a malformed trace id.
    pub fn into_handed(self) -> Option<HandedDecision> {
        let id: [u8; 16] = self.trace_id.as_slice().try_into().ok()?;
        Some(HandedDecision {
            trace_id: TraceId(id),
            decision: Decision {
                keep: self.keep,
                sample_rate: self.sample_rate.max(1),
                threshold: self.threshold,
                rule: Arc::from(self.rule.as_str()),
            },
            tenant: TenantId::new(&self.tenant),
            spans: self.spans,
        })
    }
}

/// `tailsift.peer.v1.AnnounceRequest`: a node leaving (SIGTERM) or coming back, told to the
/// others over the peer protocol so they route around it at once, before DNS or a config
/// file catches up.
#[derive(Clone, PartialEq, Message)]
pub struct AnnounceRequest {
    /// Advertise address of the announcing node.
    #[prost(string, tag = "1")]
    pub sender: String,
    /// True: it is leaving; false: it is (back) in service.
    #[prost(bool, tag = "2")]
    pub leaving: bool,
}

/// `tailsift.peer.v1.SpanGroup`: encoded spans sharing one resource, scope and tenant.
#[derive(Clone, PartialEq, Message)]
pub struct SpanGroup {
    /// Tenant as resolved by the receiving node.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// Encoded `Resource`.
    #[prost(bytes = "bytes", tag = "2")]
    pub resource: Bytes,
    /// `ResourceSpans.schema_url` (a string on the wire; kept as bytes).
    #[prost(bytes = "bytes", tag = "3")]
    pub resource_schema_url: Bytes,
    /// Encoded `InstrumentationScope`.
    #[prost(bytes = "bytes", tag = "4")]
    pub scope: Bytes,
    /// `ScopeSpans.schema_url`.
    #[prost(bytes = "bytes", tag = "5")]
    pub scope_schema_url: Bytes,
    /// Encoded `Span` messages, untouched.
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub spans: Vec<Bytes>,
    /// Set when the group is part of a buffered trace handed to its new owner.
    #[prost(message, optional, tag = "7")]
    pub handoff: Option<HandOff>,
    /// The pass-through headers every span of the group came with (empty: none).
    #[prost(message, repeated, tag = "8")]
    pub pass_through: Vec<Header>,
    /// Encoded `LogRecord`s of the group's traces (held with their trace at the owner).
    #[prost(bytes = "bytes", repeated, tag = "9")]
    pub logs: Vec<Bytes>,
}

/// `tailsift.peer.v1.Header`: one pass-through header (the value is a secret: never logged).
#[derive(Clone, PartialEq, Message)]
pub struct Header {
    /// Lower-case header name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The value as the client sent it.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `tailsift.peer.v1.HandOff`: what the new owner of a buffered trace needs to keep its timers.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct HandOff {
    /// How long ago the sender first saw the trace.
    #[prost(uint64, tag = "1")]
    pub age_ms: u64,
    /// The root span has arrived.
    #[prost(bool, tag = "2")]
    pub root_seen: bool,
}

/// `tailsift.peer.v1.ForwardResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ForwardResponse {
    /// Spans the owner now holds.
    #[prost(uint64, tag = "1")]
    pub accepted_spans: u64,
}

/// `tailsift.peer.v1.InfoRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct InfoRequest {}

/// `tailsift.peer.v1.InfoResponse`: how a member sees itself and the cluster.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct InfoResponse {
    /// Its advertise address.
    #[prost(string, tag = "1")]
    pub advertise: String,
    /// Hash of its live rules source (equal on members running the same rules).
    #[prost(string, tag = "2")]
    pub rules_hash: String,
    /// The members it sees.
    #[prost(string, repeated, tag = "3")]
    pub members: Vec<String>,
    /// Its tailsift version.
    #[prost(string, tag = "4")]
    pub version: String,
    /// Its admin API as the other members can reach it (`host:port`; empty from older nodes).
    #[prost(string, tag = "5")]
    pub admin: String,
}

/// Appends groups for `spans` to `groups`: one group per run of spans sharing an origin and
/// pass-through headers.
pub fn push_groups(groups: &mut Vec<SpanGroup>, spans: &[SpanRecord], handoff: Option<HandOff>) {
    let mut i = 0;
    while i < spans.len() {
        let origin = &spans[i].origin;
        let pass_through = &origin.pass_through;
        let mut j = i + 1;
        while j < spans.len()
            && (Arc::ptr_eq(&spans[j].origin, origin) || spans[j].origin.same_content(origin))
        {
            j += 1;
        }
        groups.push(SpanGroup {
            tenant: origin.tenant.as_str().to_string(),
            resource: origin.resource.clone(),
            resource_schema_url: origin.resource_schema_url.clone(),
            scope: origin.scope.clone(),
            scope_schema_url: origin.scope_schema_url.clone(),
            spans: spans[i..j]
                .iter()
                .filter(|s| !s.index.is_log())
                .map(|s| s.bytes.clone())
                .collect(),
            logs: spans[i..j]
                .iter()
                .filter(|s| s.index.is_log())
                .map(|s| s.bytes.clone())
                .collect(),
            handoff,
            pass_through: pass_through
                .headers()
                .iter()
                .map(|(name, value)| Header {
                    name: name.as_str().to_string(),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                })
                .collect(),
        });
        i = j;
    }
}

/// One group read back into held spans; spans that fail indexing are counted, not held.
pub struct ReadGroup {
    /// The spans, as slices of the request buffer.
    pub spans: Vec<SpanRecord>,
    /// Hand-off details of the group, when it is a handed-over trace.
    pub handoff: Option<HandOff>,
    /// Spans that could not be indexed (a sender of another version, or corruption).
    pub invalid: u64,
    /// Pass-through headers dropped because their name or value is not a valid header.
    pub invalid_headers: u64,
}

/// Reads a group's spans without decoding them (the index is extracted as at ingest).
pub fn read_group(
    group: SpanGroup,
    reserved_attributes: &[String],
    limits: &SpanLimits,
) -> ReadGroup {
    let mut hasher = Fnv64::default();
    for part in [
        &group.resource[..],
        &group.resource_schema_url,
        &group.scope,
        &group.scope_schema_url,
    ] {
        hasher.write_usize(part.len());
        hasher.write(part);
    }
    let mut invalid_headers = 0;
    let pass_through = if group.pass_through.is_empty() {
        PassThrough::NONE
    } else {
        let mut headers = Vec::with_capacity(group.pass_through.len());
        for header in group.pass_through {
            match (
                http::HeaderName::from_bytes(header.name.as_bytes()),
                http::HeaderValue::from_maybe_shared(header.value),
            ) {
                (Ok(name), Ok(value)) => headers.push((name, value)),
                _ => invalid_headers += 1,
            }
        }
        PassThrough::new(headers)
    };
    let origin = Arc::new(Origin {
        tenant: TenantId::new(&group.tenant),
        resource: group.resource,
        resource_schema_url: group.resource_schema_url,
        scope: group.scope,
        scope_schema_url: group.scope_schema_url,
        content_hash: hasher.finish(),
        pass_through,
    });
    let mut spans = Vec::with_capacity(group.spans.len() + group.logs.len());
    let mut invalid = 0;
    for bytes in group.logs {
        match crate::otlp::logs::index_log(
            &bytes,
            reserved_attributes,
            limits.max_attributes_per_span,
        ) {
            // A forwarded log record always belongs to a trace (untraced ones stay local).
            Ok(index) if index.trace_id != crate::model::TraceId::default() => {
                spans.push(SpanRecord {
                    bytes,
                    origin: origin.clone(),
                    index,
                })
            }
            _ => invalid += 1,
        }
    }
    for bytes in group.spans {
        match index_span(&bytes, reserved_attributes, limits) {
            Ok(index) => spans.push(SpanRecord {
                bytes,
                origin: origin.clone(),
                index,
            }),
            Err(_) => invalid += 1,
        }
    }
    ReadGroup {
        spans,
        handoff: group.handoff,
        invalid,
        invalid_headers,
    }
}

/// Why a forward call failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The peer could not be reached or did not answer in time.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer answered with an error status.
    #[error("peer refused: {0}")]
    Refused(Status),
}

/// A client of one peer's `Peer` service.
#[derive(Clone)]
pub struct PeerClient {
    grpc: tonic::client::Grpc<Channel>,
    timeout: Duration,
}

/// How this node speaks TLS to its peers (`[cluster.tls]`), set once at start; unset: the
/// peer protocol is plaintext. One process is one node, so a process-wide setting is enough.
static CLIENT_TLS: std::sync::OnceLock<PeerClientTls> = std::sync::OnceLock::new();

/// The client half of `[cluster.tls]`.
#[derive(Clone)]
pub struct PeerClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// Why `[cluster.tls]` cannot be used on the client side.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    /// A file could not be read or holds nothing usable.
    #[error("cluster.tls.{key} {path}: {problem}")]
    File {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the material.
    #[error("cluster.tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// `server_name` is not a DNS name or an IP address.
    #[error("cluster.tls.server_name {0:?} must be a DNS name or an IP address")]
    ServerName(String),
}

fn pem_certs(
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PeerTlsError> {
    use rustls::pki_types::pem::PemObject;
    let file = |problem: String| PeerTlsError::File {
        key,
        path: path.to_path_buf(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| file(format!("cannot read: {e}")))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file("holds no certificate".into()));
    }
    Ok(certs)
}

impl PeerClientTls {
    /// Reads the files of `[cluster.tls]`: this node's certificate (presented to peers) and
    /// the CA that signs every member's certificate (the only one trusted).
    pub fn load(tls: &crate::config::PeerTlsConfig) -> Result<PeerClientTls, PeerTlsError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs("ca_file", &tls.ca_file)? {
            roots.add(cert).map_err(|e| PeerTlsError::File {
                key: "ca_file",
                path: tls.ca_file.clone(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let chain = pem_certs("cert_file", &tls.cert_file)?;
        let key_pem = std::fs::read(&tls.key_file).map_err(|e| PeerTlsError::File {
            key: "key_file",
            path: tls.key_file.clone(),
            problem: format!("cannot read: {e}"),
        })?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            PeerTlsError::File {
                key: "key_file",
                path: tls.key_file.clone(),
                problem: format!("no usable private key: {e}"),
            }
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // ALPN (`h2`) is set by the connector.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let server_name = match &tls.server_name {
            None => None,
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|_| PeerTlsError::ServerName(n.clone()))?,
            ),
        };
        Ok(PeerClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Makes every peer client of this process speak TLS with these settings.
    pub fn install(self) {
        let _ = CLIENT_TLS.set(self);
    }
}

impl PeerClient {
    /// A lazily connecting client of the peer at `addr` (`host:port`), over TLS when
    /// `[cluster.tls]` is set.
    pub fn new(addr: &str, timeout: Duration) -> Result<PeerClient, ForwardError> {
        let tls = CLIENT_TLS.get();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| ForwardError::Unreachable(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20));
        let channel = match tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(timeout.min(Duration::from_secs(2))));
                let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls.config).clone())
                    .https_only();
                if let Some(name) = &tls.server_name {
                    builder = builder.with_server_name_resolver(
                        hyper_rustls::FixedServerNameResolver::new(name.clone()),
                    );
                }
                endpoint.connect_with_connector_lazy(builder.enable_http2().wrap_connector(http))
            }
        };
        Ok(PeerClient {
            grpc: tonic::client::Grpc::new(channel),
            timeout,
        })
    }

    /// Sends one encoded `ForwardRequest`; returns the spans the peer accepted.
    pub async fn forward(&self, body: Bytes) -> Result<u64, ForwardError> {
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(FORWARD_PATH);
            let response = grpc
                .unary(tonic::Request::new(body), path, RawCodec)
                .await
                .map_err(|status| match status.code() {
                    tonic::Code::Unavailable
                        if status.message().contains("connect")
                            || status.message().contains("transport") =>
                    {
                        ForwardError::Unreachable(status.message().to_string())
                    }
                    _ => ForwardError::Refused(status),
                })?;
            let decoded = ForwardResponse::decode(response.into_inner())
                .map_err(|e| ForwardError::Unreachable(format!("bad response: {e}")))?;
            Ok(decoded.accepted_spans)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ForwardError::Unreachable("timed out".into()))?
    }
}

impl PeerClient {
    /// Asks the peer how it sees itself and the cluster.
    pub async fn info(&self) -> Result<InfoResponse, ForwardError> {
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(INFO_PATH);
            let body = Bytes::from(InfoRequest {}.encode_to_vec());
            let response = grpc
                .unary(tonic::Request::new(body), path, RawCodec)
                .await
                .map_err(ForwardError::Refused)?;
            InfoResponse::decode(response.into_inner())
                .map_err(|e| ForwardError::Unreachable(format!("bad response: {e}")))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ForwardError::Unreachable("timed out".into()))?
    }
}

impl PeerClient {
    /// Tells the peer this node is leaving (or back in service).
    pub async fn announce(&self, sender: &str, leaving: bool) -> Result<(), ForwardError> {
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(ANNOUNCE_PATH);
            let body = Bytes::from(
                AnnounceRequest {
                    sender: sender.to_string(),
                    leaving,
                }
                .encode_to_vec(),
            );
            grpc.unary(tonic::Request::new(body), path, RawCodec)
                .await
                .map_err(ForwardError::Refused)?;
            Ok(())
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ForwardError::Unreachable("timed out".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::ingest::{ingest_request, IngestOptions};
    use crate::otlp::testdata;

    #[test]
    fn forwarded_spans_arrive_byte_identical_with_their_origin_and_tenant() {
        let req = testdata::request(
            "acme",
            vec![
                testdata::span(1, 1, 0, false),
                testdata::span(1, 2, 1, true),
                testdata::span(2, 3, 0, false),
            ],
        );
        let options = IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: vec![],
            limits: SpanLimits::default(),
        };
        let spans = ingest_request(&testdata::encoded(&req), None, &options)
            .unwrap()
            .spans;
        let mut groups = Vec::new();
        push_groups(&mut groups, &spans, None);
        assert_eq!(groups.len(), 1);
        let body = ForwardRequest {
            sender: "a:1".into(),
            batch_id: 7,
            groups,
            decisions: Vec::new(),
        }
        .encode_to_vec();
        let back = ForwardRequest::decode(Bytes::from(body)).unwrap();
        assert_eq!(back.batch_id, 7);
        let group = back.groups.into_iter().next().unwrap();
        let read = read_group(group, &[], &SpanLimits::default());
        assert_eq!(read.invalid, 0);
        assert_eq!(read.spans.len(), 3);
        for (a, b) in spans.iter().zip(&read.spans) {
            assert_eq!(a.bytes, b.bytes);
            assert_eq!(a.index.trace_id, b.index.trace_id);
            assert_eq!(a.index.status, b.index.status);
            assert!(a.origin.same_content(&b.origin));
            assert_eq!(b.origin.tenant.as_str(), "acme");
        }
    }

    fn team(value: &str) -> PassThrough {
        PassThrough::new(vec![(
            http::HeaderName::from_static("x-honeycomb-team"),
            http::HeaderValue::from_str(value).unwrap(),
        )])
    }

    #[test]
    fn forwarded_spans_keep_their_pass_through_headers_and_are_grouped_by_them() {
        let req = testdata::request(
            "acme",
            vec![
                testdata::span(1, 1, 0, false),
                testdata::span(1, 2, 1, false),
            ],
        );
        let options = IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: vec![],
            limits: SpanLimits::default(),
        };
        let body = testdata::encoded(&req);
        let mut spans = Vec::new();
        for value in ["team-a", "team-b"] {
            spans.extend(
                crate::otlp::ingest::ingest_request_with(&body, None, None, &team(value), &options)
                    .unwrap()
                    .spans,
            );
        }
        let mut groups = Vec::new();
        push_groups(&mut groups, &spans, None);
        assert_eq!(groups.len(), 2, "one group per header set, same origin");
        let body = ForwardRequest {
            sender: "a:1".into(),
            batch_id: 1,
            groups,
            decisions: Vec::new(),
        }
        .encode_to_vec();
        let back = ForwardRequest::decode(Bytes::from(body)).unwrap();
        let read: Vec<ReadGroup> = back
            .groups
            .into_iter()
            .map(|g| read_group(g, &[], &SpanLimits::default()))
            .collect();
        for (group, value) in read.iter().zip(["team-a", "team-b"]) {
            assert_eq!(group.invalid_headers, 0);
            assert_eq!(group.spans.len(), 2);
            for span in &group.spans {
                assert_eq!(span.origin.pass_through, team(value));
            }
        }
    }
}
