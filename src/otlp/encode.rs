//! Writes kept spans back out as an `ExportTraceServiceRequest` without re-encoding them: span
//! bytes are copied as they arrived, and the annotations (tracestate `ot=th:`, the sample-rate
//! attribute, `tailsift.rule`) are appended as extra fields. A span that already carries a
//! tracestate or one of our attribute keys is copied field by field with those fields left out,
//! so the output never holds a key twice.

use std::collections::HashMap;
use std::sync::Arc;

use super::wire::{len_field_len, put_bytes, put_key, put_varint, varint_len, Reader, LEN};
use crate::consistent::{encode_threshold, write_tracestate};
use crate::model::{Decision, KeptSpans, Origin, RecordKind, SpanRecord, UNTRACED_RULE};

/// Attribute keys written on every exported span.
#[derive(Clone, Debug)]
pub struct AnnotationKeys {
    /// The integer sample-rate attribute (default `SampleRate`).
    pub sample_rate: String,
    /// The deciding rule's name.
    pub rule: String,
}

impl AnnotationKeys {
    /// The keys ingest must flag when a span already carries them.
    pub fn reserved(&self) -> Vec<String> {
        vec![self.sample_rate.clone(), self.rule.clone()]
    }
}

/// Encodes batches of kept spans; reuses its scratch space between batches.
pub struct BatchEncoder {
    keys: AnnotationKeys,
    groups: Vec<Group>,
    by_hash: HashMap<u64, Vec<usize>>,
    by_ptr: HashMap<usize, usize>,
    merged_tracestates: Vec<u8>,
}

struct Group {
    origin: Arc<Origin>,
    /// (batch entry, span index within it, encoded span length, merged tracestate range)
    spans: Vec<(u32, u32, u32, (u32, u32))>,
}

impl BatchEncoder {
    /// A new encoder writing the given attribute keys.
    pub fn new(keys: AnnotationKeys) -> Self {
        BatchEncoder {
            keys,
            groups: Vec::new(),
            by_hash: HashMap::new(),
            by_ptr: HashMap::new(),
            merged_tracestates: Vec::new(),
        }
    }

    /// Appends one encoded `ExportTraceServiceRequest` holding every span of `batch` to `out`.
    pub fn encode(&mut self, batch: &[KeptSpans], out: &mut Vec<u8>) {
        self.encode_kind(batch, out, RecordKind::Span);
    }

    /// Appends one encoded `ExportLogsServiceRequest` holding every log record of `batch` to
    /// `out` (same shape as traces: `ResourceLogs` / `ScopeLogs` share the field numbers),
    /// each annotated with the sample rate and rule of the decision it followed.
    pub fn encode_logs(&mut self, batch: &[KeptSpans], out: &mut Vec<u8>) {
        self.encode_kind(batch, out, RecordKind::Log);
    }

    fn encode_kind(&mut self, batch: &[KeptSpans], out: &mut Vec<u8>, kind: RecordKind) {
        self.groups.clear();
        self.by_hash.clear();
        self.by_ptr.clear();
        self.merged_tracestates.clear();
        for (entry_idx, entry) in batch.iter().enumerate() {
            let mut last: Option<(*const Origin, usize)> = None;
            for (span_idx, span) in entry.spans.iter().enumerate() {
                if span.index.record != kind {
                    continue;
                }
                let ptr = Arc::as_ptr(&span.origin);
                let group = match last {
                    Some((p, g)) if p == ptr => g,
                    _ => {
                        let g = self.group_for(&span.origin);
                        last = Some((ptr, g));
                        g
                    }
                };
                let (ts, len) = match kind {
                    RecordKind::Span => {
                        let ts = self.merged_tracestate(span, &entry.decision);
                        let len = annotated_len(span, &entry.decision, &self.keys, ts.1 as usize);
                        (ts, len)
                    }
                    RecordKind::Log => {
                        ((0, 0), log_annotated_len(span, &entry.decision, &self.keys))
                    }
                };
                self.groups[group]
                    .spans
                    .push((entry_idx as u32, span_idx as u32, len as u32, ts));
            }
        }
        for group in &self.groups {
            let origin = &group.origin;
            let spans_len: usize = group
                .spans
                .iter()
                .map(|s| len_field_len(s.2 as usize))
                .sum();
            let scope_spans_len = opt_len_field(origin.scope.len())
                + spans_len
                + opt_len_field(origin.scope_schema_url.len());
            let resource_spans_len = opt_len_field(origin.resource.len())
                + len_field_len(scope_spans_len)
                + opt_len_field(origin.resource_schema_url.len());
            put_key(out, 1, LEN);
            put_varint(out, resource_spans_len as u64);
            if !origin.resource.is_empty() {
                put_bytes(out, 1, &origin.resource);
            }
            put_key(out, 2, LEN);
            put_varint(out, scope_spans_len as u64);
            if !origin.scope.is_empty() {
                put_bytes(out, 1, &origin.scope);
            }
            out.reserve(spans_len);
            for &(entry_idx, span_idx, len, ts) in &group.spans {
                let entry = &batch[entry_idx as usize];
                let span = &entry.spans[span_idx as usize];
                put_key(out, 2, LEN);
                put_varint(out, u64::from(len));
                let start = out.len();
                match kind {
                    RecordKind::Span => {
                        let merged =
                            &self.merged_tracestates[ts.0 as usize..(ts.0 + ts.1) as usize];
                        write_annotated(span, &entry.decision, &self.keys, merged, out);
                    }
                    RecordKind::Log => write_log_annotated(span, &entry.decision, &self.keys, out),
                }
                debug_assert_eq!(out.len() - start, len as usize);
            }
            if !origin.scope_schema_url.is_empty() {
                put_bytes(out, 3, &origin.scope_schema_url);
            }
            if !origin.resource_schema_url.is_empty() {
                put_bytes(out, 3, &origin.resource_schema_url);
            }
        }
    }

    fn group_for(&mut self, origin: &Arc<Origin>) -> usize {
        // Each distinct Arc is compared by content once per batch; its spans then find their
        // group by pointer (spans of one request share one Arc per resource and scope).
        let ptr = Arc::as_ptr(origin) as usize;
        if let Some(&g) = self.by_ptr.get(&ptr) {
            return g;
        }
        let g = self.group_by_content(origin);
        self.by_ptr.insert(ptr, g);
        g
    }

    fn group_by_content(&mut self, origin: &Arc<Origin>) -> usize {
        let candidates = self.by_hash.entry(origin.content_hash).or_default();
        for &g in candidates.iter() {
            let existing = &self.groups[g].origin;
            if Arc::ptr_eq(existing, origin) || existing.same_content(origin) {
                return g;
            }
        }
        self.groups.push(Group {
            origin: origin.clone(),
            spans: Vec::new(),
        });
        candidates.push(self.groups.len() - 1);
        self.groups.len() - 1
    }

    /// For a span with its own tracestate, writes the merged value into scratch space and
    /// returns its range; (0, 0) for spans without one (the short form is written inline).
    fn merged_tracestate(&mut self, span: &SpanRecord, decision: &Decision) -> (u32, u32) {
        let original = span.index.trace_state.slice(&span.bytes);
        if original.is_empty() {
            return (0, 0);
        }
        let start = self.merged_tracestates.len();
        let text = String::from_utf8_lossy(original);
        write_tracestate(&text, decision.threshold, &mut self.merged_tracestates);
        (start as u32, (self.merged_tracestates.len() - start) as u32)
    }
}

fn opt_len_field(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len_field_len(len)
    }
}

/// Whether the span must be copied field by field (it has fields we replace).
fn needs_filter(span: &SpanRecord) -> bool {
    span.index.has_reserved_attribute || span.index.trace_state.len > 0
}

fn short_tracestate_len(decision: &Decision) -> usize {
    6 + encode_threshold(decision.threshold).as_bytes().len()
}

fn int_attribute_len(key: &str, value: i64) -> usize {
    let any_value = 1 + varint_len(value as u64);
    len_field_len(len_field_len(key.len()) + len_field_len(any_value))
}

fn str_attribute_len(key: &str, value: &str) -> usize {
    let any_value = len_field_len(value.len());
    len_field_len(len_field_len(key.len()) + len_field_len(any_value))
}

fn annotated_len(
    span: &SpanRecord,
    decision: &Decision,
    keys: &AnnotationKeys,
    merged_len: usize,
) -> usize {
    let body = if needs_filter(span) {
        filtered_len(span, keys)
    } else {
        span.bytes.len()
    };
    let ts_len = if merged_len > 0 {
        merged_len
    } else {
        short_tracestate_len(decision)
    };
    body + len_field_len(ts_len)
        + int_attribute_len(&keys.sample_rate, decision.sample_rate as i64)
        + str_attribute_len(&keys.rule, &decision.rule)
}

/// Calls `keep` with each field range of the span that survives filtering.
fn for_each_kept_field(span: &SpanRecord, keys: &AnnotationKeys, mut keep: impl FnMut(&[u8])) {
    let bytes = &span.bytes[..];
    let mut reader = Reader::new(bytes);
    loop {
        let start = reader.position();
        let Ok(Some((field, wire_type))) = reader.key() else {
            break;
        };
        let value = if wire_type == LEN {
            match reader.len_delimited() {
                Ok(r) => Some(r),
                Err(_) => break,
            }
        } else {
            if reader.skip(wire_type).is_err() {
                break;
            }
            None
        };
        let drop = match (span.index.record, field, value) {
            (RecordKind::Span, 3, Some(_)) => true,
            (RecordKind::Span, 9, Some(r))
            | (RecordKind::Log, super::logs::ATTRIBUTES_FIELD, Some(r)) => {
                let key = super::find_key(&bytes[r]);
                key == keys.sample_rate.as_bytes() || key == keys.rule.as_bytes()
            }
            _ => false,
        };
        if !drop {
            keep(&bytes[start..reader.position()]);
        }
    }
}

fn filtered_len(span: &SpanRecord, keys: &AnnotationKeys) -> usize {
    let mut len = 0;
    for_each_kept_field(span, keys, |f| len += f.len());
    len
}

fn write_annotated(
    span: &SpanRecord,
    decision: &Decision,
    keys: &AnnotationKeys,
    merged_tracestate: &[u8],
    out: &mut Vec<u8>,
) {
    if needs_filter(span) {
        for_each_kept_field(span, keys, |f| out.extend_from_slice(f));
    } else {
        out.extend_from_slice(&span.bytes);
    }
    // trace_state = 3
    if merged_tracestate.is_empty() {
        let th = encode_threshold(decision.threshold);
        put_key(out, 3, LEN);
        put_varint(out, (6 + th.as_bytes().len()) as u64);
        out.extend_from_slice(b"ot=th:");
        out.extend_from_slice(th.as_bytes());
    } else {
        put_bytes(out, 3, merged_tracestate);
    }
    // attributes = 9
    put_int_attribute(out, 9, &keys.sample_rate, decision.sample_rate as i64);
    put_str_attribute(out, 9, &keys.rule, &decision.rule);
}

/// The annotations a log record gets: `(sample rate, rule)`, each only when written. Log
/// records without a trace pass through unchanged unless they were sampled.
fn log_annotations(decision: &Decision) -> (Option<i64>, Option<&str>) {
    if &*decision.rule == UNTRACED_RULE {
        (
            (decision.sample_rate > 1).then_some(decision.sample_rate as i64),
            None,
        )
    } else {
        (Some(decision.sample_rate as i64), Some(&decision.rule))
    }
}

fn log_annotated_len(record: &SpanRecord, decision: &Decision, keys: &AnnotationKeys) -> usize {
    let body = if record.index.has_reserved_attribute {
        filtered_len(record, keys)
    } else {
        record.bytes.len()
    };
    let (rate, rule) = log_annotations(decision);
    body + rate.map_or(0, |r| int_attribute_len(&keys.sample_rate, r))
        + rule.map_or(0, |r| str_attribute_len(&keys.rule, r))
}

fn write_log_annotated(
    record: &SpanRecord,
    decision: &Decision,
    keys: &AnnotationKeys,
    out: &mut Vec<u8>,
) {
    if record.index.has_reserved_attribute {
        for_each_kept_field(record, keys, |f| out.extend_from_slice(f));
    } else {
        out.extend_from_slice(&record.bytes);
    }
    let (rate, rule) = log_annotations(decision);
    if let Some(rate) = rate {
        put_int_attribute(out, super::logs::ATTRIBUTES_FIELD, &keys.sample_rate, rate);
    }
    if let Some(rule) = rule {
        put_str_attribute(out, super::logs::ATTRIBUTES_FIELD, &keys.rule, rule);
    }
}

/// Writes `KeyValue { key, value: AnyValue { int_value } }` as field `field`.
fn put_int_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: i64) {
    let any_len = 1 + varint_len(value as u64);
    put_key(out, field, LEN);
    put_varint(
        out,
        (len_field_len(key.len()) + len_field_len(any_len)) as u64,
    );
    put_bytes(out, 1, key.as_bytes());
    put_key(out, 2, LEN);
    put_varint(out, any_len as u64);
    put_key(out, 3, super::wire::VARINT);
    put_varint(out, value as u64);
}

/// Writes `KeyValue { key, value: AnyValue { string_value } }` as field `field`.
fn put_str_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let value = value.as_bytes();
    put_key(out, field, LEN);
    put_varint(
        out,
        (len_field_len(key.len()) + len_field_len(len_field_len(value.len()))) as u64,
    );
    put_bytes(out, 1, key.as_bytes());
    put_key(out, 2, LEN);
    put_varint(out, len_field_len(value.len()) as u64);
    put_bytes(out, 1, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistent::threshold_for_rate;
    use crate::model::TenantId;
    use crate::otlp::ingest::{ingest_request, IngestOptions};
    use crate::otlp::testdata::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;

    fn keys() -> AnnotationKeys {
        AnnotationKeys {
            sample_rate: "SampleRate".into(),
            rule: "tailsift.rule".into(),
        }
    }

    fn kept(req: &ExportTraceServiceRequest, rate: u64) -> KeptSpans {
        let options = IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: keys().reserved(),
            limits: Default::default(),
        };
        let spans = ingest_request(&encoded(req), None, &options).unwrap().spans;
        KeptSpans {
            tenant: TenantId::new("acme"),
            decision: Decision {
                keep: true,
                sample_rate: rate,
                threshold: threshold_for_rate(rate),
                rule: "rest".into(),
            },
            spans,
        }
    }

    #[test]
    fn exported_spans_equal_the_input_plus_annotations() {
        let req = request("acme", vec![span(1, 1, 0, false), span(1, 2, 1, true)]);
        let mut out = Vec::new();
        BatchEncoder::new(keys()).encode(&[kept(&req, 10)], &mut out);
        let decoded = ExportTraceServiceRequest::decode(&out[..]).unwrap();
        let mut expected = req.clone();
        for s in &mut expected.resource_spans[0].scope_spans[0].spans {
            s.trace_state = "ot=th:e6666666666667".into();
            s.attributes.push(kv("x", "x"));
            s.attributes.last_mut().unwrap().key = "SampleRate".into();
            s.attributes.last_mut().unwrap().value =
                Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(Value::IntValue(10)),
                });
            s.attributes.push(kv("tailsift.rule", "rest"));
        }
        // The threshold for 1 in 10 is floor-based; compare everything else exactly.
        let got_ts = decoded.resource_spans[0].scope_spans[0].spans[0]
            .trace_state
            .clone();
        assert!(got_ts.starts_with("ot=th:e666666666666"), "{got_ts}");
        let mut decoded = decoded;
        for s in &mut decoded.resource_spans[0].scope_spans[0].spans {
            s.trace_state = "ot=th:e6666666666667".into();
        }
        assert_eq!(decoded, expected);
    }

    #[test]
    fn existing_sample_rate_and_tracestate_are_replaced_not_duplicated() {
        let mut s = span(1, 1, 0, false);
        s.attributes.push(kv("SampleRate", "7"));
        s.trace_state = "vendor=a,ot=rv:0123456789abcd".into();
        let req = request("acme", vec![s]);
        let mut out = Vec::new();
        BatchEncoder::new(keys()).encode(&[kept(&req, 1)], &mut out);
        let decoded = ExportTraceServiceRequest::decode(&out[..]).unwrap();
        let got = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(got.trace_state, "ot=th:0;rv:0123456789abcd,vendor=a");
        let rates: Vec<_> = got
            .attributes
            .iter()
            .filter(|a| a.key == "SampleRate")
            .collect();
        assert_eq!(rates.len(), 1);
        assert_eq!(
            rates[0].value.as_ref().unwrap().value,
            Some(Value::IntValue(1))
        );
    }

    #[test]
    fn spans_from_equal_resources_share_one_resource_spans() {
        let a = kept(&request("acme", vec![span(1, 1, 0, false)]), 1);
        let b = kept(&request("acme", vec![span(2, 1, 0, false)]), 1);
        let c = kept(&request("globex", vec![span(3, 1, 0, false)]), 1);
        let mut out = Vec::new();
        BatchEncoder::new(keys()).encode(&[a, b, c], &mut out);
        let decoded = ExportTraceServiceRequest::decode(&out[..]).unwrap();
        assert_eq!(decoded.resource_spans.len(), 2);
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 2);
        assert_eq!(
            decoded.resource_spans[0].schema_url,
            "https://opentelemetry.io/schemas/1.30.0"
        );
    }
}
