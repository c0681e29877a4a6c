//! Deterministic OTLP trace builders for tests.
//!
//! Ids are derived from a seed with splitmix64, so the low 56 bits of a trace id (the
//! randomness used by consistent probability sampling) look random while staying reproducible.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

/// Service name put on every resource built by [`make_trace`].
pub const TEST_SERVICE: &str = "tailsift-test";
/// Instrumentation scope name used by [`make_trace`].
pub const TEST_SCOPE: &str = "tailsift.test";

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A reproducible, random-looking, non-zero trace id derived from `seed`.
pub fn trace_id_from_seed(seed: u64) -> [u8; 16] {
    let hi = splitmix64(seed);
    let lo = splitmix64(seed ^ 0xD1B5_4A32_D192_ED03) | 1;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&hi.to_be_bytes());
    id[8..].copy_from_slice(&lo.to_be_bytes());
    id
}

/// The span id of span number `index` (0 = root) of the trace `trace_id`: deterministic, non-zero.
pub fn span_id_for(trace_id: &[u8; 16], index: usize) -> [u8; 8] {
    let hi = u64::from_be_bytes(trace_id[..8].try_into().unwrap());
    let lo = u64::from_be_bytes(trace_id[8..].try_into().unwrap());
    let v = splitmix64(hi ^ splitmix64(lo ^ index as u64)) | 1;
    v.to_be_bytes()
}

/// Lower-case hex of `bytes` (the OTLP/JSON spelling of ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string-valued attribute.
pub fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// An integer-valued attribute.
pub fn kv_i64(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The value of attribute `key` in `attrs`, if present.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// The string value of attribute `key` in `attrs`, if present and a string.
pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// The integer value of attribute `key` in `attrs`, if present and an integer.
pub fn attr_i64(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One trace as a `ResourceSpans`: resource `service.name`/`tenant.id`, one scope, a root span
/// (empty parent, kind SERVER, `http.route`) and `n_spans - 1` children in a binary tree under
/// it; with `error`, the last span (the root if `n_spans == 1`) has status ERROR.
pub fn make_trace(
    trace_id: [u8; 16],
    tenant: &str,
    n_spans: usize,
    error: bool,
    route: &str,
) -> ResourceSpans {
    assert!(
        n_spans >= 1,
        "make_trace needs at least one span (the root)"
    );
    let base = now_nanos().saturating_sub(n_spans as u64 * 2_000_000 + 10_000_000);
    let spans = (0..n_spans)
        .map(|i| {
            let is_root = i == 0;
            let mut attributes = Vec::new();
            if is_root {
                attributes.push(kv_str("http.route", route));
                attributes.push(kv_i64(
                    "http.response.status_code",
                    if error { 500 } else { 200 },
                ));
            } else {
                attributes.push(kv_i64("child.index", i as i64));
            }
            let failed = error && i == n_spans - 1;
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id_for(&trace_id, i).to_vec(),
                parent_span_id: if is_root {
                    Vec::new()
                } else {
                    span_id_for(&trace_id, (i - 1) / 2).to_vec()
                },
                flags: 0x01,
                name: if is_root {
                    format!("GET {route}")
                } else {
                    format!("child-{i}")
                },
                kind: if is_root {
                    span::SpanKind::Server as i32
                } else {
                    span::SpanKind::Internal as i32
                },
                // Root covers all children; child i starts 1 ms after its parent's start.
                start_time_unix_nano: base + i as u64 * 1_000_000,
                end_time_unix_nano: if is_root {
                    base + (n_spans as u64 + 1) * 2_000_000
                } else {
                    base + i as u64 * 1_000_000 + 1_500_000
                },
                attributes,
                status: Some(if failed {
                    Status {
                        message: "boom".to_string(),
                        code: status::StatusCode::Error as i32,
                    }
                } else {
                    Status::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv_str("service.name", TEST_SERVICE),
                kv_str("tenant.id", tenant),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: TEST_SCOPE.to_string(),
                version: "1.0.0".to_string(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// An export request holding `resource_spans`.
pub fn make_request(resource_spans: Vec<ResourceSpans>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest { resource_spans }
}

/// Splits the spans of `rs` round-robin into `parts` copies that keep its resource and scopes
/// (empty parts and scopes are left out), e.g. to send one trace over several requests.
pub fn split_spans(rs: &ResourceSpans, parts: usize) -> Vec<ResourceSpans> {
    assert!(parts >= 1, "split_spans needs parts >= 1");
    let mut out: Vec<ResourceSpans> = (0..parts)
        .map(|_| ResourceSpans {
            resource: rs.resource.clone(),
            scope_spans: Vec::new(),
            schema_url: rs.schema_url.clone(),
        })
        .collect();
    let mut n = 0usize;
    for ss in &rs.scope_spans {
        let mut per_part: Vec<Vec<Span>> = vec![Vec::new(); parts];
        for s in &ss.spans {
            per_part[n % parts].push(s.clone());
            n += 1;
        }
        for (part, spans) in out.iter_mut().zip(per_part) {
            if !spans.is_empty() {
                part.scope_spans.push(ScopeSpans {
                    scope: ss.scope.clone(),
                    spans,
                    schema_url: ss.schema_url.clone(),
                });
            }
        }
    }
    out.retain(|p| !p.scope_spans.is_empty());
    out
}

/// Splits `rs` into (root spans only, all other spans), both keeping resource and scopes;
/// either part may hold no spans.
pub fn split_root(rs: &ResourceSpans) -> (ResourceSpans, ResourceSpans) {
    let filter = |want_root: bool| ResourceSpans {
        resource: rs.resource.clone(),
        scope_spans: rs
            .scope_spans
            .iter()
            .map(|ss| ScopeSpans {
                scope: ss.scope.clone(),
                spans: ss
                    .spans
                    .iter()
                    .filter(|s| s.parent_span_id.is_empty() == want_root)
                    .cloned()
                    .collect(),
                schema_url: ss.schema_url.clone(),
            })
            .filter(|ss| !ss.spans.is_empty())
            .collect(),
        schema_url: rs.schema_url.clone(),
    };
    (filter(true), filter(false))
}

/// Number of spans in `rs`.
pub fn span_count(rs: &ResourceSpans) -> usize {
    rs.scope_spans.iter().map(|ss| ss.spans.len()).sum()
}
