//! Reads an encoded `ExportTraceServiceRequest` once: splits it into spans that stay encoded
//! (zero-copy `Bytes` slices), resolves each resource's tenant, extracts the small index the
//! buffer and decider need, and rejects spans with invalid ids one by one.

use std::hash::Hasher;
use std::sync::Arc;

use bytes::Bytes;

use super::wire::{Reader, WireError, FIXED64, LEN, VARINT};
use super::AnyValue;
use crate::model::{
    Origin, PassThrough, RecordKind, Span32, SpanIndex, SpanRecord, StatusCode, TenantId, TraceId,
};

/// What ingest needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Resource attribute holding the tenant id.
    pub tenant_attribute: String,
    /// Tenant used when neither the resource nor the request names one.
    pub default_tenant: TenantId,
    /// Attribute keys the proxy sets on export; a span already carrying one is marked so
    /// export replaces it instead of adding a duplicate key.
    pub reserved_attributes: Vec<String>,
    /// Per-span and per-request limits.
    pub limits: SpanLimits,
}

/// Limits on what one request may carry; a span over a limit is refused on its own (partial
/// success), so one pathological span never costs the rest of its request.
#[derive(Clone, Copy, Debug)]
pub struct SpanLimits {
    /// Most attributes on one span.
    pub max_attributes_per_span: usize,
    /// Longest string attribute value (span and event attributes) kept whole; a longer one is
    /// truncated and the span marked, never refused. `None`: no limit.
    pub max_attribute_bytes: Option<usize>,
    /// Most spans in one request; spans beyond it are refused.
    pub max_spans_per_request: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        SpanLimits {
            max_attributes_per_span: 1024,
            max_attribute_bytes: None,
            max_spans_per_request: 100_000,
        }
    }
}

/// The result of reading one request.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Valid spans, in request order, as slices of the request buffer.
    pub spans: Vec<SpanRecord>,
    /// Spans refused (invalid ids or undecodable), for `partial_success.rejected_spans`.
    pub rejected: u64,
    /// A description of the first refusal, for `partial_success.error_message`.
    pub error_message: Option<String>,
    /// Refused spans per tenant (for per-tenant `invalid` counts).
    pub rejected_by_tenant: Vec<(TenantId, u64)>,
    /// String attribute values truncated to `max_attribute_bytes`.
    pub truncated_attributes: u64,
    /// Resources whose tenant attribute named another tenant than the API key's.
    pub tenant_overridden: u64,
}

impl Ingested {
    fn reject(&mut self, tenant: &TenantId, why: String) {
        self.rejected += 1;
        match self
            .rejected_by_tenant
            .iter_mut()
            .find(|(t, _)| t == tenant)
        {
            Some((_, n)) => *n += 1,
            None => self.rejected_by_tenant.push((tenant.clone(), 1)),
        }
        if self.error_message.is_none() {
            self.error_message = Some(why);
        }
    }
}

/// Reads a whole request. A request whose container structure is not valid protobuf is an
/// error (nothing is accepted); an invalid span inside a valid request is only that span's
/// problem.
pub fn ingest_request(
    request: &Bytes,
    header_tenant: Option<&TenantId>,
    options: &IngestOptions,
) -> Result<Ingested, WireError> {
    ingest_request_as(request, header_tenant, None, options)
}

/// Like [`ingest_request`] for a request authenticated with an API key: `key_tenant`, when
/// set, is every span's tenant whatever the resource or the header says, and a resource whose
/// tenant attribute names another tenant is rewritten to name the key's (and counted).
pub fn ingest_request_as(
    request: &Bytes,
    header_tenant: Option<&TenantId>,
    key_tenant: Option<&TenantId>,
    options: &IngestOptions,
) -> Result<Ingested, WireError> {
    ingest_request_with(
        request,
        header_tenant,
        key_tenant,
        &PassThrough::NONE,
        options,
    )
}

/// Like [`ingest_request_as`], with the request's pass-through headers attached to every span
/// (one shared `Arc`, so this costs a reference count per span only when headers were captured).
pub fn ingest_request_with(
    request: &Bytes,
    header_tenant: Option<&TenantId>,
    key_tenant: Option<&TenantId>,
    pass_through: &PassThrough,
    options: &IngestOptions,
) -> Result<Ingested, WireError> {
    ingest_records(
        RecordKind::Span,
        request,
        header_tenant,
        key_tenant,
        pass_through,
        options,
    )
}

/// Reads an encoded `ExportLogsServiceRequest` like [`ingest_request_with`] reads spans: each
/// valid log record becomes a held record (`RecordKind::Log`) of its resource's tenant; a
/// record without trace id carries the all-zero trace id.
pub fn ingest_logs_with(
    request: &Bytes,
    header_tenant: Option<&TenantId>,
    key_tenant: Option<&TenantId>,
    pass_through: &PassThrough,
    options: &IngestOptions,
) -> Result<Ingested, WireError> {
    ingest_records(
        RecordKind::Log,
        request,
        header_tenant,
        key_tenant,
        pass_through,
        options,
    )
}

fn ingest_records(
    kind: RecordKind,
    request: &Bytes,
    header_tenant: Option<&TenantId>,
    key_tenant: Option<&TenantId>,
    pass_through: &PassThrough,
    options: &IngestOptions,
) -> Result<Ingested, WireError> {
    let request_meta = RequestMeta {
        header_tenant,
        key_tenant,
        pass_through,
        kind,
    };
    let mut out = Ingested::default();
    // Encoded spans run 100–1000 bytes; reserving for ~200 avoids most regrowth of the vector.
    out.spans.reserve(request.len() / 200);
    let mut reader = Reader::new(request);
    while let Some((field, wire_type)) = reader.key()? {
        if field == 1 {
            let range = reader.expect_len(wire_type)?;
            read_resource_spans(request, range, &request_meta, options, &mut out)?;
        } else {
            reader.skip(wire_type)?;
        }
    }
    Ok(out)
}

/// `ResourceSpans` and `ScopeSpans` share one shape: field 1 holds one message (resource or
/// scope), field 2 the repeated children (scope spans or spans), field 3 the schema URL.
/// Pushes the children's ranges and returns the ranges of fields 1 and 3, all within `body`.
fn read_container(
    body: &[u8],
    children: &mut Vec<std::ops::Range<usize>>,
) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), WireError> {
    let mut reader = Reader::new(body);
    let mut head = 0..0;
    let mut schema = 0..0;
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            1 => head = reader.expect_len(wire_type)?,
            2 => children.push(reader.expect_len(wire_type)?),
            3 => schema = reader.expect_len(wire_type)?,
            _ => reader.skip(wire_type)?,
        }
    }
    Ok((head, schema))
}

/// What the request's headers say about all of its spans.
struct RequestMeta<'a> {
    header_tenant: Option<&'a TenantId>,
    key_tenant: Option<&'a TenantId>,
    pass_through: &'a PassThrough,
    kind: RecordKind,
}

fn read_resource_spans(
    request: &Bytes,
    range: std::ops::Range<usize>,
    meta: &RequestMeta<'_>,
    options: &IngestOptions,
    out: &mut Ingested,
) -> Result<(), WireError> {
    let (header_tenant, key_tenant) = (meta.header_tenant, meta.key_tenant);
    let base = range.start;
    let mut scopes = Vec::new();
    let (resource, schema) = read_container(&request[range], &mut scopes)?;
    // Origins are copied out so a held span never pins the request buffer through them.
    let mut resource_bytes =
        Bytes::copy_from_slice(&request[base + resource.start..base + resource.end]);
    let named = resource_tenant(&resource_bytes, &options.tenant_attribute)?;
    let tenant = match key_tenant {
        Some(key) => {
            if named.as_deref().is_some_and(|n| n != key.as_str()) {
                out.tenant_overridden += 1;
                resource_bytes =
                    set_resource_tenant(&resource_bytes, &options.tenant_attribute, key)
                        .map_err(|_| WireError::Truncated("resource"))?;
            }
            key.clone()
        }
        None => named
            .map(|t| TenantId::new(&t))
            .or_else(|| header_tenant.cloned())
            .unwrap_or_else(|| options.default_tenant.clone()),
    };
    let schema_bytes = Bytes::copy_from_slice(&request[base + schema.start..base + schema.end]);
    for scope_range in scopes {
        let scope_base = base + scope_range.start;
        read_scope_spans(
            request,
            scope_base..base + scope_range.end,
            &tenant,
            &resource_bytes,
            &schema_bytes,
            meta,
            options,
            out,
        )?;
    }
    Ok(())
}

// Each argument is one piece of what the spans of a scope share; bundling them would only
// rename them.
#[allow(clippy::too_many_arguments)]
fn read_scope_spans(
    request: &Bytes,
    range: std::ops::Range<usize>,
    tenant: &TenantId,
    resource: &Bytes,
    resource_schema_url: &Bytes,
    meta: &RequestMeta<'_>,
    options: &IngestOptions,
    out: &mut Ingested,
) -> Result<(), WireError> {
    let pass_through = meta.pass_through;
    let base = range.start;
    let body = &request[range];
    let mut span_ranges = Vec::new();
    let (scope, schema) = read_container(body, &mut span_ranges)?;
    let scope = Bytes::copy_from_slice(&request[base + scope.start..base + scope.end]);
    let scope_schema_url = Bytes::copy_from_slice(&request[base + schema.start..base + schema.end]);
    let mut hasher = Fnv64::default();
    for part in [
        &resource[..],
        resource_schema_url,
        &scope,
        &scope_schema_url,
    ] {
        hasher.write_usize(part.len());
        hasher.write(part);
    }
    let origin = Arc::new(Origin {
        tenant: tenant.clone(),
        resource: resource.clone(),
        resource_schema_url: resource_schema_url.clone(),
        scope,
        scope_schema_url,
        content_hash: hasher.finish(),
        pass_through: pass_through.clone(),
    });
    out.spans.reserve(span_ranges.len());
    for span_range in span_ranges {
        let span_bytes = &body[span_range.clone()];
        if out.spans.len() >= options.limits.max_spans_per_request {
            out.reject(
                tenant,
                format!(
                "request has more than {} spans (receive.max_spans_per_request); send smaller batches",
                options.limits.max_spans_per_request
            ),
            );
            continue;
        }
        if meta.kind == RecordKind::Log {
            let bytes = request.slice(base + span_range.start..base + span_range.end);
            match super::logs::index_log(
                &bytes,
                &options.reserved_attributes,
                options.limits.max_attributes_per_span,
            ) {
                Ok(index) => out.spans.push(SpanRecord {
                    bytes,
                    origin: origin.clone(),
                    index,
                }),
                Err(why) => out.reject(tenant, why),
            }
            continue;
        }
        let bytes = match options.limits.max_attribute_bytes {
            Some(limit) if super::truncate::needs_truncation(span_bytes, limit) => {
                match super::truncate::truncate_span(span_bytes, limit) {
                    Ok((bytes, cut)) => {
                        out.truncated_attributes += cut;
                        bytes
                    }
                    Err(e) => {
                        out.reject(tenant, format!("span is not valid protobuf: {e}"));
                        continue;
                    }
                }
            }
            _ => request.slice(base + span_range.start..base + span_range.end),
        };
        match index_span(&bytes, &options.reserved_attributes, &options.limits) {
            Ok(index) => out.spans.push(SpanRecord {
                bytes,
                origin: origin.clone(),
                index,
            }),
            Err(why) => out.reject(tenant, why),
        }
    }
    Ok(())
}

/// Extracts the index of one encoded span, or says why the span is refused.
pub fn index_span(
    span: &[u8],
    reserved_attributes: &[String],
    limits: &SpanLimits,
) -> Result<SpanIndex, String> {
    let mut attributes = 0usize;
    let mut index = SpanIndex::default();
    let mut trace_id: Option<&[u8]> = None;
    let mut span_id: Option<&[u8]> = None;
    let mut reader = Reader::new(span);
    let malformed = |e: WireError| format!("span is not valid protobuf: {e}");
    while let Some((field, wire_type)) = reader.key().map_err(malformed)? {
        match (field, wire_type) {
            (1, LEN) => trace_id = Some(&span[reader.len_delimited().map_err(malformed)?]),
            (2, LEN) => span_id = Some(&span[reader.len_delimited().map_err(malformed)?]),
            (3, LEN) => index.trace_state = span32(reader.len_delimited().map_err(malformed)?),
            (4, LEN) => {
                let parent = &span[reader.len_delimited().map_err(malformed)?];
                match parent.len() {
                    0 => {}
                    8 => index.parent_span_id.copy_from_slice(parent),
                    n => return Err(format!("parent span id must be 8 bytes, got {n}")),
                }
            }
            (5, LEN) => index.name = span32(reader.len_delimited().map_err(malformed)?),
            (6, VARINT) => index.kind = reader.varint().map_err(malformed)?.min(5) as u8,
            (7, FIXED64) => index.start_unix_nanos = reader.fixed64().map_err(malformed)?,
            (8, FIXED64) => index.end_unix_nanos = reader.fixed64().map_err(malformed)?,
            (9, LEN) => {
                let kv = reader.len_delimited().map_err(malformed)?;
                attributes += 1;
                if attributes > limits.max_attributes_per_span {
                    return Err(format!(
                        "span has more than {} attributes (receive.max_attributes_per_span)",
                        limits.max_attributes_per_span
                    ));
                }
                if !reserved_attributes.is_empty() {
                    let key = super::find_key(&span[kv]);
                    if reserved_attributes.iter().any(|r| r.as_bytes() == key) {
                        index.has_reserved_attribute = true;
                    }
                }
            }
            (15, LEN) => {
                let status = &span[reader.len_delimited().map_err(malformed)?];
                index.status = status_code(status).map_err(malformed)?;
            }
            (_, wt) => reader.skip(wt).map_err(malformed)?,
        }
    }
    let trace_id = trace_id.unwrap_or(&[]);
    index.trace_id = TraceId::from_slice(trace_id).ok_or_else(|| {
        if trace_id.len() == 16 {
            "trace id must not be all zero".to_string()
        } else {
            format!("trace id must be 16 bytes, got {}", trace_id.len())
        }
    })?;
    let span_id = span_id.unwrap_or(&[]);
    match <[u8; 8]>::try_from(span_id) {
        Ok(id) if id != [0; 8] => index.span_id = id,
        Ok(_) => return Err("span id must not be all zero".to_string()),
        Err(_) => {
            return Err(format!(
                "span id must be 8 bytes, got {} (trace {})",
                span_id.len(),
                index.trace_id
            ))
        }
    }
    Ok(index)
}

fn span32(range: std::ops::Range<usize>) -> Span32 {
    Span32 {
        start: range.start as u32,
        len: (range.end - range.start) as u32,
    }
}

fn status_code(status: &[u8]) -> Result<StatusCode, WireError> {
    let mut reader = Reader::new(status);
    let mut code = StatusCode::Unset;
    while let Some((field, wire_type)) = reader.key()? {
        if field == 3 && wire_type == VARINT {
            code = match reader.varint()? {
                1 => StatusCode::Ok,
                2 => StatusCode::Error,
                _ => StatusCode::Unset,
            };
        } else {
            reader.skip(wire_type)?;
        }
    }
    Ok(code)
}

/// The tenant named by a resource attribute, if the resource has it as a string.
fn resource_tenant(resource: &[u8], attribute: &str) -> Result<Option<String>, WireError> {
    if attribute.is_empty() {
        return Ok(None);
    }
    Ok(
        match super::find_attribute(resource, 1, attribute.as_bytes())? {
            Some(AnyValue::Str(s)) if !s.is_empty() => Some(s.to_string()),
            Some(AnyValue::Int(i)) => Some(i.to_string()),
            _ => None,
        },
    )
}

/// A copy of an encoded `Resource` whose `attribute` names `tenant` (slow path: only for a
/// request whose API key's tenant differs from what its resource says).
fn set_resource_tenant(
    resource: &[u8],
    attribute: &str,
    tenant: &TenantId,
) -> Result<Bytes, prost::DecodeError> {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue as PbValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    let mut decoded = Resource::decode(resource)?;
    decoded.attributes.retain(|kv| kv.key != attribute);
    decoded.attributes.push(KeyValue {
        key: attribute.to_string(),
        value: Some(PbValue {
            value: Some(any_value::Value::StringValue(tenant.as_str().to_string())),
        }),
        ..Default::default()
    });
    Ok(Bytes::from(decoded.encode_to_vec()))
}

/// FNV-1a, used for origin content hashes (fast on short inputs, no dependency).
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
