//! OTLP on the wire: reading requests without decoding spans (`ingest`), writing kept spans
//! back out with annotations (`encode`), and the OTLP/JSON mapping (`json`).
//!
//! Field numbers follow `opentelemetry/proto/trace/v1/trace.proto` (OTLP 1.x); `proto/` in the
//! repository documents the views this module reads.

pub mod codec;
pub mod encode;
pub mod ingest;
pub mod json;
pub mod logs;
pub mod metrics;
pub mod truncate;
pub mod wire;

use wire::{Reader, WireError, FIXED64, LEN, VARINT};

/// gRPC path of the OTLP trace export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// gRPC path of the OTLP metrics export method.
pub const METRICS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// gRPC path of the OTLP logs export method.
pub const LOGS_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// An OTLP signal tailsift carries: traces (sampled), logs (following their trace) or metrics
/// (passed through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `TraceService`, `/v1/traces`.
    Traces,
    /// `MetricsService`, `/v1/metrics`.
    Metrics,
    /// `LogsService`, `/v1/logs`.
    Logs,
}

impl Signal {
    /// The gRPC path of the signal's export method.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => EXPORT_PATH,
            Signal::Metrics => METRICS_EXPORT_PATH,
            Signal::Logs => LOGS_EXPORT_PATH,
        }
    }

    /// The OTLP/HTTP path of the signal (`/v1/traces`, `/v1/metrics`).
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

/// An attribute value as rules see it: scalar OTLP `AnyValue`s borrowed from the span bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AnyValue<'a> {
    /// string_value
    Str(&'a str),
    /// bool_value
    Bool(bool),
    /// int_value
    Int(i64),
    /// double_value
    Double(f64),
    /// array, kvlist or bytes: present but not comparable
    Other,
}

/// Decodes an encoded `AnyValue`.
pub fn any_value(bytes: &[u8]) -> Result<Option<AnyValue<'_>>, WireError> {
    let mut reader = Reader::new(bytes);
    let mut value = None;
    while let Some((field, wire_type)) = reader.key()? {
        value = Some(match (field, wire_type) {
            (1, LEN) => match std::str::from_utf8(&bytes[reader.len_delimited()?]) {
                Ok(s) => AnyValue::Str(s),
                Err(_) => AnyValue::Other,
            },
            (2, VARINT) => AnyValue::Bool(reader.varint()? != 0),
            (3, VARINT) => AnyValue::Int(reader.varint()? as i64),
            (4, FIXED64) => AnyValue::Double(f64::from_bits(reader.fixed64()?)),
            (_, wt) => {
                reader.skip(wt)?;
                AnyValue::Other
            }
        });
    }
    Ok(value)
}

/// The key of an encoded `KeyValue` (empty when it has none or is malformed).
pub fn find_key(kv: &[u8]) -> &[u8] {
    // Every encoder writes the key first with a one-byte length: tag 0x0a, length, key.
    if let [0x0a, len, rest @ ..] = kv {
        if let Some(key) = rest.get(..usize::from(*len)).filter(|_| *len < 0x80) {
            return key;
        }
    }
    let mut reader = Reader::new(kv);
    while let Ok(Some((field, wire_type))) = reader.key() {
        if field == 1 && wire_type == LEN {
            return match reader.len_delimited() {
                Ok(r) => &kv[r],
                Err(_) => &[],
            };
        }
        if reader.skip(wire_type).is_err() {
            break;
        }
    }
    &[]
}

/// Finds attribute `key` among the `KeyValue`s stored in field `attributes_field` of an
/// encoded message (9 for `Span`, 1 for `Resource`). Returns the first match.
pub fn find_attribute<'a>(
    message: &'a [u8],
    attributes_field: u32,
    key: &[u8],
) -> Result<Option<AnyValue<'a>>, WireError> {
    let mut reader = Reader::new(message);
    while let Some((field, wire_type)) = reader.key()? {
        if field != attributes_field || wire_type != LEN {
            reader.skip(wire_type)?;
            continue;
        }
        let kv = &message[reader.len_delimited()?];
        let mut kv_reader = Reader::new(kv);
        let mut matched = false;
        let mut value: &[u8] = &[];
        while let Some((f, wt)) = kv_reader.key()? {
            match (f, wt) {
                (1, LEN) => matched = &kv[kv_reader.len_delimited()?] == key,
                (2, LEN) => value = &kv[kv_reader.len_delimited()?],
                (_, wt) => kv_reader.skip(wt)?,
            }
        }
        if matched {
            return Ok(Some(any_value(value)?.unwrap_or(AnyValue::Other)));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Builders for encoded requests, shared by unit tests across modules.
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    /// A string attribute.
    pub fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    /// A span of trace `t` with span id `s` (parent `p`, 0 = root).
    pub fn span(t: u8, s: u8, p: u8, error: bool) -> Span {
        Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            parent_span_id: if p == 0 { vec![] } else { vec![p; 8] },
            name: format!("span-{s}"),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000 + u64::from(s),
            attributes: vec![kv("http.route", "/api")],
            status: Some(Status {
                message: String::new(),
                code: if error { 2 } else { 0 },
            }),
            ..Default::default()
        }
    }

    /// A request with one resource of `tenant` holding `spans`.
    pub fn request(tenant: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "svc"), kv("tenant.id", tenant)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
        }
    }

    /// The request encoded.
    pub fn encoded(req: &ExportTraceServiceRequest) -> bytes::Bytes {
        bytes::Bytes::from(req.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::ingest::{ingest_request, IngestOptions};
    use super::testdata::*;
    use super::*;
    use crate::model::{StatusCode, TenantId};
    use prost::Message;

    fn options() -> IngestOptions {
        IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: vec!["SampleRate".into()],
            limits: Default::default(),
        }
    }

    #[test]
    fn ingest_extracts_ids_times_status_and_tenant_without_decoding() {
        let req = request("acme", vec![span(1, 1, 0, false), span(1, 2, 1, true)]);
        let out = ingest_request(&encoded(&req), None, &options()).unwrap();
        assert_eq!(out.rejected, 0);
        assert_eq!(out.spans.len(), 2);
        let root = &out.spans[0];
        assert!(root.index.is_root());
        assert_eq!(root.origin.tenant.as_str(), "acme");
        assert_eq!(root.index.status, StatusCode::Unset);
        assert_eq!(out.spans[1].index.status, StatusCode::Error);
        assert_eq!(out.spans[1].index.end_unix_nanos, 2_002);
        assert_eq!(root.index.name.slice(&root.bytes), b"span-1");
        assert_eq!(
            find_attribute(&root.bytes, 9, b"http.route").unwrap(),
            Some(AnyValue::Str("/api"))
        );
        assert_eq!(
            find_attribute(&root.origin.resource, 1, b"service.name").unwrap(),
            Some(AnyValue::Str("svc"))
        );
    }

    #[test]
    fn invalid_ids_reject_only_that_span() {
        let mut bad = span(2, 1, 0, false);
        bad.trace_id = vec![2; 15];
        let mut zero = span(3, 1, 0, false);
        zero.span_id = vec![0; 8];
        let req = request("acme", vec![bad, span(1, 1, 0, false), zero]);
        let out = ingest_request(&encoded(&req), None, &options()).unwrap();
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.rejected, 2);
        assert!(out.error_message.unwrap().contains("16 bytes"));
    }

    #[test]
    fn truncated_request_is_an_error() {
        let bytes = encoded(&request("acme", vec![span(1, 1, 0, false)]));
        for cut in 1..bytes.len() {
            let short = bytes.slice(..cut);
            // Either an error or fewer spans: never a panic, never a bogus span.
            if let Ok(out) = ingest_request(&short, None, &options()) {
                assert!(out.spans.is_empty());
            }
        }
    }

    #[test]
    fn tenant_falls_back_to_header_then_default() {
        let mut req = request("x", vec![span(1, 1, 0, false)]);
        req.resource_spans[0].resource = None;
        let b = encoded(&req);
        let out = ingest_request(&b, Some(&TenantId::new("hdr")), &options()).unwrap();
        assert_eq!(out.spans[0].origin.tenant.as_str(), "hdr");
        let out = ingest_request(&b, None, &options()).unwrap();
        assert_eq!(out.spans[0].origin.tenant.as_str(), "default");
    }

    #[test]
    fn spans_over_the_limits_are_refused_one_by_one_with_the_key_to_raise() {
        let mut many = span(2, 1, 0, false);
        for i in 0..5 {
            many.attributes.push(kv(&format!("k{i}"), "v"));
        }
        let mut big = span(3, 1, 0, false);
        big.attributes.push(kv("blob", &"x".repeat(500)));
        let req = request(
            "a",
            vec![
                span(1, 1, 0, false),
                many,
                big,
                span(4, 1, 0, false),
                span(5, 1, 0, false),
            ],
        );
        let mut opts = options();
        opts.limits = super::ingest::SpanLimits {
            max_attributes_per_span: 4,
            max_attribute_bytes: Some(256),
            max_spans_per_request: 3,
        };
        let out = ingest_request(&encoded(&req), None, &opts).unwrap();
        // Span 1 is accepted, `many` is over the attribute count, `big` is kept with its long
        // value truncated, span 4 is the third accepted span and span 5 is over the
        // per-request limit of 3.
        assert_eq!(out.spans.len(), 3);
        assert_eq!(out.rejected, 2);
        assert_eq!(out.truncated_attributes, 1);
        assert!(out
            .error_message
            .unwrap()
            .contains("max_attributes_per_span"));
        opts.limits.max_spans_per_request = 1;
        let out = ingest_request(&encoded(&req), None, &opts).unwrap();
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.rejected, 4);
    }

    #[test]
    fn an_api_key_tenant_overrides_resource_and_header_and_rewrites_the_resource() {
        let req = request("b", vec![span(1, 1, 0, false)]);
        let key = TenantId::new("a");
        let out = super::ingest::ingest_request_as(
            &encoded(&req),
            Some(&TenantId::new("hdr")),
            Some(&key),
            &options(),
        )
        .unwrap();
        assert_eq!(out.spans[0].origin.tenant.as_str(), "a");
        assert_eq!(out.tenant_overridden, 1);
        assert_eq!(
            find_attribute(&out.spans[0].origin.resource, 1, b"tenant.id").unwrap(),
            Some(AnyValue::Str("a"))
        );
    }

    #[test]
    fn without_a_limit_large_attributes_pass_byte_identical() {
        let mut big = span(3, 1, 0, false);
        big.attributes
            .push(kv("exception.stacktrace", &"x".repeat(200 << 10)));
        let req = request("a", vec![big.clone()]);
        let out = ingest_request(&encoded(&req), None, &options()).unwrap();
        assert_eq!(out.spans.len(), 1);
        assert_eq!(out.truncated_attributes, 0);
        assert_eq!(&out.spans[0].bytes[..], &big.encode_to_vec()[..]);
    }

    #[test]
    fn find_key_reads_keys_however_they_are_encoded() {
        let short = kv("http.route", "/api").encode_to_vec();
        assert_eq!(find_key(&short), b"http.route");
        let long_key = "k".repeat(200);
        let long = kv(&long_key, "v").encode_to_vec();
        assert_eq!(find_key(&long), long_key.as_bytes());
        // Value first, key second: still found.
        let mut swapped = long[3 + 200..].to_vec();
        swapped.extend_from_slice(&short[..12]);
        assert_eq!(find_key(&swapped), b"http.route");
        // A length running past the end is no key.
        assert_eq!(find_key(&[0x0a, 5, b'a']), b"");
    }

    #[test]
    fn reserved_attribute_is_flagged() {
        let mut s = span(1, 1, 0, false);
        s.attributes.push(kv("SampleRate", "5"));
        let out = ingest_request(&encoded(&request("a", vec![s])), None, &options()).unwrap();
        assert!(out.spans[0].index.has_reserved_attribute);
    }
}
