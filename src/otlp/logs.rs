//! OTLP logs: the index of one encoded `LogRecord` (what holding it with its trace and the
//! rules need), the OTLP/JSON mapping and the export response. A logs request has the shape of
//! a traces request (`ResourceLogs` / `ScopeLogs` use the same field numbers as
//! `ResourceSpans` / `ScopeSpans`), so [`super::ingest`] walks both.
//!
//! Field numbers follow `opentelemetry/proto/logs/v1/logs.proto` (OTLP 1.x).

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;

use super::json::JsonError;
use super::wire::{Reader, WireError, FIXED64, LEN, VARINT};
use crate::model::{RecordKind, Span32, SpanIndex, TraceId};

/// `LogRecord.attributes`.
pub const ATTRIBUTES_FIELD: u32 = 6;

/// Extracts the index of one encoded log record, or says why it is refused. A record without
/// a trace id (absent, empty or all zero, as OTLP allows) gets the all-zero [`TraceId`]: it
/// belongs to no trace and is passed through.
pub fn index_log(
    record: &[u8],
    reserved_attributes: &[String],
    max_attributes: usize,
) -> Result<SpanIndex, String> {
    let mut index = SpanIndex {
        record: RecordKind::Log,
        ..SpanIndex::default()
    };
    let malformed = |e: WireError| format!("log record is not valid protobuf: {e}");
    let mut attributes = 0usize;
    let mut trace_id: &[u8] = &[];
    let mut span_id: &[u8] = &[];
    let mut time = 0u64;
    let mut observed = 0u64;
    let mut reader = Reader::new(record);
    while let Some((field, wire_type)) = reader.key().map_err(malformed)? {
        match (field, wire_type) {
            (1, FIXED64) => time = reader.fixed64().map_err(malformed)?,
            (2, VARINT) => index.severity = reader.varint().map_err(malformed)?.min(24) as u8,
            (5, LEN) => {
                let body = reader.len_delimited().map_err(malformed)?;
                index.name = string_value(record, body).map_err(malformed)?;
            }
            (6, LEN) => {
                let kv = reader.len_delimited().map_err(malformed)?;
                attributes += 1;
                if attributes > max_attributes {
                    return Err(format!(
                        "log record has more than {max_attributes} attributes (receive.max_attributes_per_span)"
                    ));
                }
                if !reserved_attributes.is_empty() {
                    let key = super::find_key(&record[kv]);
                    if reserved_attributes.iter().any(|r| r.as_bytes() == key) {
                        index.has_reserved_attribute = true;
                    }
                }
            }
            (9, LEN) => trace_id = &record[reader.len_delimited().map_err(malformed)?],
            (10, LEN) => span_id = &record[reader.len_delimited().map_err(malformed)?],
            (11, FIXED64) => observed = reader.fixed64().map_err(malformed)?,
            (_, wt) => reader.skip(wt).map_err(malformed)?,
        }
    }
    let when = if time != 0 { time } else { observed };
    index.start_unix_nanos = when;
    index.end_unix_nanos = when;
    match trace_id.len() {
        0 => {}
        16 => index.trace_id = TraceId::from_slice(trace_id).unwrap_or_default(),
        n => return Err(format!("log record trace id must be 16 bytes, got {n}")),
    }
    match span_id.len() {
        0 => {}
        8 => index.span_id.copy_from_slice(span_id),
        n => return Err(format!("log record span id must be 8 bytes, got {n}")),
    }
    Ok(index)
}

/// The range of the `AnyValue.string_value` (field 1) inside `body`, or an empty range.
fn string_value(record: &[u8], body: std::ops::Range<usize>) -> Result<Span32, WireError> {
    let base = body.start;
    let mut reader = Reader::new(&record[body]);
    let mut found = Span32::default();
    while let Some((field, wire_type)) = reader.key()? {
        if field == 1 && wire_type == LEN {
            let r = reader.len_delimited()?;
            found = Span32 {
                start: (base + r.start) as u32,
                len: (r.end - r.start) as u32,
            };
        } else {
            reader.skip(wire_type)?;
        }
    }
    Ok(found)
}

/// Log records in an encoded `ExportLogsServiceRequest` (for the export counters of requests
/// that were spooled).
pub fn count_records(encoded: &[u8]) -> Result<u64, prost::DecodeError> {
    let request = ExportLogsServiceRequest::decode(encoded)?;
    Ok(request
        .resource_logs
        .iter()
        .flat_map(|r| r.scope_logs.iter())
        .map(|s| s.log_records.len() as u64)
        .sum())
}

/// Converts an OTLP/JSON `ExportLogsServiceRequest` into its protobuf encoding. Severity
/// numbers may be numbers or their enum names (`"SEVERITY_NUMBER_ERROR"`).
pub fn json_to_protobuf(body: &[u8]) -> Result<Bytes, JsonError> {
    let request: ExportLogsServiceRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(first) => {
            let mut value: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return Err(JsonError::Parse(first)),
            };
            if !numbers_for_severity_names(&mut value) {
                return Err(JsonError::Parse(first));
            }
            serde_json::from_value(value)?
        }
    };
    Ok(Bytes::from(request.encode_to_vec()))
}

/// Replaces `severityNumber` enum names with their numbers; whether any changed.
fn numbers_for_severity_names(request: &mut serde_json::Value) -> bool {
    use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
    use serde_json::Value;
    fn children<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
        v.get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
    }
    let mut changed = false;
    for rl in children(request, "resourceLogs") {
        for sl in children(rl, "scopeLogs") {
            for record in children(sl, "logRecords") {
                let Some(slot) = record.get_mut("severityNumber") else {
                    continue;
                };
                let number = slot
                    .as_str()
                    .and_then(SeverityNumber::from_str_name)
                    .map(|n| n as i32);
                if let Some(n) = number {
                    *slot = Value::from(n);
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Writes an encoded `ExportLogsServiceRequest` as one line of OTLP/JSON.
pub fn protobuf_to_json_line(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    super::json::message_to_json_line::<ExportLogsServiceRequest>(encoded, out)
}

/// The OTLP logs response, with partial success when records were refused.
pub fn export_response(rejected: u64, error_message: Option<&str>) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (rejected > 0 || error_message.is_some()).then(|| {
            ExportLogsPartialSuccess {
                rejected_log_records: rejected as i64,
                error_message: error_message.unwrap_or_default().to_string(),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;

    fn record(trace_id: Vec<u8>, severity: i32, body: &str) -> Vec<u8> {
        LogRecord {
            time_unix_nano: 7,
            severity_number: severity,
            severity_text: "ERROR".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            attributes: vec![KeyValue {
                key: "SampleRate".into(),
                value: None,
                ..Default::default()
            }],
            trace_id,
            span_id: vec![3; 8],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_log_record_is_indexed_with_its_trace_severity_and_body() {
        let bytes = record(vec![1; 16], 17, "payment failed");
        let index = index_log(&bytes, &["SampleRate".into()], 128).unwrap();
        assert!(index.is_log());
        assert!(!index.is_root());
        assert_eq!(index.trace_id, TraceId([1; 16]));
        assert_eq!(index.span_id, [3; 8]);
        assert_eq!(index.severity, 17);
        assert_eq!(index.start_unix_nanos, 7);
        assert_eq!(index.name.slice(&bytes), b"payment failed");
        assert!(index.has_reserved_attribute);
    }

    #[test]
    fn a_log_record_without_trace_id_belongs_to_no_trace() {
        for id in [vec![], vec![0; 16]] {
            let index = index_log(&record(id, 9, "hello"), &[], 128).unwrap();
            assert_eq!(index.trace_id, TraceId::default());
        }
    }

    #[test]
    fn a_malformed_trace_id_refuses_the_record() {
        let err = index_log(&record(vec![1; 5], 9, "x"), &[], 128).unwrap_err();
        assert!(err.contains("16 bytes"), "{err}");
    }

    #[test]
    fn severity_names_are_accepted_in_json() {
        let json = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"SEVERITY_NUMBER_ERROR","body":{"stringValue":"x"}}]}]}]}"#;
        let encoded = json_to_protobuf(json).unwrap();
        let request = ExportLogsServiceRequest::decode(&encoded[..]).unwrap();
        assert_eq!(
            request.resource_logs[0].scope_logs[0].log_records[0].severity_number,
            17
        );
    }
}
