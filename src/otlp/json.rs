//! The OTLP/JSON mapping (hex ids, camelCase names), through the reference OTLP types. JSON
//! is the slow path by nature: a JSON request is converted to protobuf once at the edge and
//! then follows the same encoded path as a protobuf request.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

/// Why a body could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The body is not OTLP/JSON.
    #[error("invalid OTLP/JSON: {0}")]
    Parse(#[from] serde_json::Error),
    /// The protobuf handed to the JSON writer did not decode.
    #[error("invalid protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Converts an OTLP/JSON `ExportTraceServiceRequest` into its protobuf encoding. Span kinds and
/// status codes may be numbers or their enum names (`"SPAN_KIND_SERVER"`,
/// `"STATUS_CODE_ERROR"`), as the Collector accepts both.
pub fn json_to_protobuf(body: &[u8]) -> Result<Bytes, JsonError> {
    let request: ExportTraceServiceRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        // The slow path: only a body that did not parse as is is read again with enum names
        // replaced by their numbers.
        Err(first) => {
            let mut value: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return Err(JsonError::Parse(first)),
            };
            if !numbers_for_enum_names(&mut value) {
                return Err(JsonError::Parse(first));
            }
            serde_json::from_value(value)?
        }
    };
    Ok(Bytes::from(request.encode_to_vec()))
}

/// Replaces span `kind` and status `code` enum names with their numbers; whether any changed.
fn numbers_for_enum_names(request: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    const KINDS: [&str; 6] = [
        "SPAN_KIND_UNSPECIFIED",
        "SPAN_KIND_INTERNAL",
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
    ];
    const CODES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];
    fn replace(slot: Option<&mut Value>, names: &[&str]) -> bool {
        let Some(slot) = slot else { return false };
        let number = match slot.as_str() {
            Some(name) => names.iter().position(|n| *n == name),
            None => None,
        };
        match number {
            Some(n) => {
                *slot = Value::from(n);
                true
            }
            None => false,
        }
    }
    fn children<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
        v.get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
    }
    let mut changed = false;
    for rs in children(request, "resourceSpans") {
        for ss in children(rs, "scopeSpans") {
            for span in children(ss, "spans") {
                changed |= replace(span.get_mut("kind"), &KINDS);
                changed |= replace(
                    span.get_mut("status").and_then(|s| s.get_mut("code")),
                    &CODES,
                );
            }
        }
    }
    changed
}

/// Writes an encoded `ExportTraceServiceRequest` as one line of OTLP/JSON.
pub fn protobuf_to_json_line(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    message_to_json_line::<ExportTraceServiceRequest>(encoded, out)
}

/// Writes an encoded OTLP request of type `M` (traces, metrics, logs) as one line of OTLP/JSON.
pub fn message_to_json_line<M: Message + Default + serde::Serialize>(
    encoded: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    let request = M::decode(encoded)?;
    serde_json::to_writer(&mut *out, &request)?;
    out.push(b'\n');
    Ok(())
}

/// The OTLP response body, with partial success when spans were refused.
pub fn export_response(rejected: u64, error_message: Option<&str>) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (rejected > 0 || error_message.is_some()).then(|| {
            ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: error_message.unwrap_or_default().to_string(),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_hex_ids_converts_to_protobuf_and_back() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"tenant.id","value":{"stringValue":"acme"}}]},
          "scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
          "name":"GET /","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000","status":{"code":2}}]}]}]}"#;
        let pb = json_to_protobuf(json).unwrap();
        let req = ExportTraceServiceRequest::decode(&pb[..]).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id[0], 1);
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.end_time_unix_nano, 2000);
        let mut line = Vec::new();
        protobuf_to_json_line(&pb, &mut line).unwrap();
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains("0102030405060708090a0b0c0d0e0f10"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn enum_names_are_accepted_as_well_as_numbers() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
          "name":"GET /","kind":"SPAN_KIND_SERVER","status":{"code":"STATUS_CODE_ERROR"}},
          {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060709","kind":3,"status":{"code":1}}]}]}]}"#;
        let pb = json_to_protobuf(json).unwrap();
        let req = ExportTraceServiceRequest::decode(&pb[..]).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].kind, 2);
        assert_eq!(spans[0].status.as_ref().unwrap().code, 2);
        assert_eq!(spans[1].kind, 3);
        assert_eq!(spans[1].status.as_ref().unwrap().code, 1);
        assert!(json_to_protobuf(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SPAN_KIND_SIDEWAYS"}]}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(json_to_protobuf(b"{not json").is_err());
    }
}
