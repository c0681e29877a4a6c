//! OTLP metrics, which tailsift passes through unchanged: requests are decoded once only to
//! validate them and count their data points, and the received bytes are what is forwarded.
//! The OTLP/JSON mapping goes through the reference OTLP types, as for traces.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

use super::json::JsonError;

/// The data points of an encoded `ExportMetricsServiceRequest` (every gauge, sum, histogram,
/// exponential histogram and summary point); an error if it does not decode.
pub fn count_points(encoded: &[u8]) -> Result<u64, prost::DecodeError> {
    Ok(points_by_tenant(encoded, "")?.iter().map(|(_, n)| n).sum())
}

/// The data points of an encoded `ExportMetricsServiceRequest` per resource, with the value
/// of the resource's `tenant_attribute` (string or integer) when it has one.
pub fn points_by_tenant(
    encoded: &[u8],
    tenant_attribute: &str,
) -> Result<Vec<(Option<String>, u64)>, prost::DecodeError> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let request = ExportMetricsServiceRequest::decode(encoded)?;
    let mut out = Vec::with_capacity(request.resource_metrics.len());
    for rm in &request.resource_metrics {
        let tenant = rm.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .filter(|kv| !tenant_attribute.is_empty() && kv.key == tenant_attribute)
                .find_map(
                    |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                        Some(Value::IntValue(i)) => Some(i.to_string()),
                        _ => None,
                    },
                )
        });
        let mut points = 0u64;
        for sm in &rm.scope_metrics {
            for metric in &sm.metrics {
                let n = match &metric.data {
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    None => 0,
                };
                points += n as u64;
            }
        }
        out.push((tenant, points));
    }
    Ok(out)
}

/// Converts an OTLP/JSON `ExportMetricsServiceRequest` into its protobuf encoding (the only
/// case where the forwarded bytes are not the received ones: JSON is re-encoded once).
pub fn json_to_protobuf(body: &[u8]) -> Result<Bytes, JsonError> {
    let request: ExportMetricsServiceRequest = serde_json::from_slice(body)?;
    Ok(Bytes::from(request.encode_to_vec()))
}

/// Writes an encoded `ExportMetricsServiceRequest` as one line of OTLP/JSON.
pub fn protobuf_to_json_line(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    super::json::message_to_json_line::<ExportMetricsServiceRequest>(encoded, out)
}

/// The OTLP metrics response: a full success (points are never refused one by one).
pub fn export_response() -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: None,
    }
}
