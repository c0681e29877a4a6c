//! Oversized attribute values (`receive.max_attribute_bytes`): a cheap scan of the encoded span
//! decides whether anything must be cut; only then is that one span decoded, its long string
//! values truncated at a UTF-8 boundary, marked with [`TRUNCATED_ATTRIBUTE`] and re-encoded.
//! Every other span stays on the raw-bytes path, byte-identical.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::wire::{Reader, LEN};

/// Attribute added to a span whose values were truncated: an array of the truncated keys.
pub const TRUNCATED_ATTRIBUTE: &str = "tailsift.truncated";

/// Whether `span` (encoded) has a span or event attribute whose string value is longer than
/// `limit` bytes. Malformed input answers `false` (indexing refuses it with the reason).
pub fn needs_truncation(span: &[u8], limit: usize) -> bool {
    // A value longer than the limit needs a message at least that long around it.
    if span.len() <= limit {
        return false;
    }
    let mut reader = Reader::new(span);
    while let Ok(Some((field, wire_type))) = reader.key() {
        match (field, wire_type) {
            (9, LEN) => match reader.len_delimited() {
                Ok(kv) => {
                    if kv.len() > limit && string_len(&span[kv]) > limit {
                        return true;
                    }
                }
                Err(_) => return false,
            },
            (11, LEN) => match reader.len_delimited() {
                Ok(event) => {
                    if event.len() > limit && event_needs(&span[event], limit) {
                        return true;
                    }
                }
                Err(_) => return false,
            },
            (_, wt) => {
                if reader.skip(wt).is_err() {
                    return false;
                }
            }
        }
    }
    false
}

/// Whether an encoded `Span.Event` has an attribute (field 3) with a string over `limit`.
fn event_needs(event: &[u8], limit: usize) -> bool {
    let mut reader = Reader::new(event);
    while let Ok(Some((field, wire_type))) = reader.key() {
        if (field, wire_type) == (3, LEN) {
            match reader.len_delimited() {
                Ok(kv) => {
                    if kv.len() > limit && string_len(&event[kv]) > limit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        } else if reader.skip(wire_type).is_err() {
            return false;
        }
    }
    false
}

/// Length of the `string_value` of an encoded `KeyValue` (0 when it holds another type).
fn string_len(kv: &[u8]) -> usize {
    let value = field_bytes(kv, 2).unwrap_or(&[]);
    field_bytes(value, 1).map_or(0, <[u8]>::len)
}

/// The last occurrence of length-delimited field `number` in `message`.
fn field_bytes(message: &[u8], number: u32) -> Option<&[u8]> {
    let mut reader = Reader::new(message);
    let mut found = None;
    while let Ok(Some((field, wire_type))) = reader.key() {
        if field == number && wire_type == LEN {
            found = Some(&message[reader.len_delimited().ok()?]);
        } else {
            reader.skip(wire_type).ok()?;
        }
    }
    found
}

/// Decodes `span`, truncates every span and event string attribute value longer than `limit`
/// bytes, sets [`TRUNCATED_ATTRIBUTE`] to the truncated keys, and re-encodes it. Returns the new
/// encoding and how many values were cut. (Fields unknown to this OTLP version are not kept:
/// the slow path is only taken by spans that would otherwise be cut by the backend or lost.)
pub fn truncate_span(span: &[u8], limit: usize) -> Result<(Bytes, u64), prost::DecodeError> {
    let mut decoded = Span::decode(span)?;
    let mut keys: Vec<String> = Vec::new();
    let mut cut = 0u64;
    let mut visit = |attributes: &mut Vec<KeyValue>| {
        for kv in attributes.iter_mut() {
            if let Some(any_value::Value::StringValue(s)) =
                kv.value.as_mut().and_then(|v| v.value.as_mut())
            {
                if s.len() > limit {
                    truncate_at_char_boundary(s, limit);
                    cut += 1;
                    if !keys.contains(&kv.key) {
                        keys.push(kv.key.clone());
                    }
                }
            }
        }
    };
    visit(&mut decoded.attributes);
    for event in &mut decoded.events {
        visit(&mut event.attributes);
    }
    if cut > 0 {
        decoded
            .attributes
            .retain(|kv| kv.key != TRUNCATED_ATTRIBUTE);
        decoded.attributes.push(KeyValue {
            key: TRUNCATED_ATTRIBUTE.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: keys
                        .into_iter()
                        .map(|k| AnyValue {
                            value: Some(any_value::Value::StringValue(k)),
                        })
                        .collect(),
                })),
            }),
            ..Default::default()
        });
    }
    Ok((Bytes::from(decoded.encode_to_vec()), cut))
}

/// Shortens `s` to at most `limit` bytes without splitting a character.
fn truncate_at_char_boundary(s: &mut String, limit: usize) {
    let mut end = limit.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_string_value_over_the_limit_needs_the_slow_path() {
        let small = Span {
            attributes: vec![kv("a", &"x".repeat(100))],
            ..Default::default()
        };
        assert!(!needs_truncation(&small.encode_to_vec(), 100));
        assert!(needs_truncation(&small.encode_to_vec(), 99));
        let event = Span {
            events: vec![opentelemetry_proto::tonic::trace::v1::span::Event {
                name: "exception".into(),
                attributes: vec![kv("exception.stacktrace", &"y".repeat(500))],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(needs_truncation(&event.encode_to_vec(), 200));
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary_and_the_keys_listed() {
        // "é" is two bytes: a limit of 5 bytes keeps two of them, never half of one.
        let span = Span {
            name: "GET /".into(),
            attributes: vec![kv("msg", "éééé"), kv("short", "ok")],
            ..Default::default()
        };
        let (bytes, cut) = truncate_span(&span.encode_to_vec(), 5).unwrap();
        assert_eq!(cut, 1);
        let out = Span::decode(&bytes[..]).unwrap();
        assert_eq!(out.name, "GET /");
        let value = |k: &str| {
            out.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            value("msg"),
            Some(any_value::Value::StringValue("éé".into()))
        );
        assert_eq!(
            value("short"),
            Some(any_value::Value::StringValue("ok".into()))
        );
        match value(TRUNCATED_ATTRIBUTE) {
            Some(any_value::Value::ArrayValue(a)) => assert_eq!(a.values.len(), 1),
            other => panic!("marker missing: {other:?}"),
        }
    }
}
