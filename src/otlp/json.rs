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

/// Converts an OTLP/JSON `ExportTraceServiceRequest` into its protobuf encoding.
pub fn json_to_protobuf(body: &[u8]) -> Result<Bytes, JsonError> {
    let request: ExportTraceServiceRequest = serde_json::from_slice(body)?;
    Ok(Bytes::from(request.encode_to_vec()))
}

/// Writes an encoded `ExportTraceServiceRequest` as one line of OTLP/JSON.
pub fn protobuf_to_json_line(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    let request = ExportTraceServiceRequest::decode(encoded)?;
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
    fn invalid_json_is_an_error() {
        assert!(json_to_protobuf(b"{not json").is_err());
    }
}
