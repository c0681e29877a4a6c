//! Protobuf wire-format primitives: a bounds-checked reader over a byte slice and the few
//! writers export needs. Hand-rolled because the hot path reads only a handful of fields of
//! each span and must never allocate or panic on hostile input.

use std::ops::Range;

/// Why bytes could not be read as protobuf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended inside a field.
    #[error("truncated protobuf: {0} ends early")]
    Truncated(&'static str),
    /// A varint longer than 10 bytes.
    #[error("invalid protobuf: varint too long")]
    VarintOverflow,
    /// A wire type protobuf does not define (or a deprecated group).
    #[error("invalid protobuf: unsupported wire type {0}")]
    WireType(u8),
    /// Field number 0 is reserved.
    #[error("invalid protobuf: field number 0")]
    FieldZero,
}

/// Protobuf wire type: varint.
pub const VARINT: u8 = 0;
/// Protobuf wire type: 64-bit.
pub const FIXED64: u8 = 1;
/// Protobuf wire type: length-delimited.
pub const LEN: u8 = 2;
/// Protobuf wire type: 32-bit.
pub const FIXED32: u8 = 5;

/// A cursor over one protobuf message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// True when every byte has been consumed.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Current offset into the message.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Reads a base-128 varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        // Field keys and most lengths fit in one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated("varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow)
    }

    /// Reads a field key; `None` at the end of the message.
    #[inline]
    pub fn key(&mut self) -> Result<Option<(u32, u8)>, WireError> {
        if self.is_done() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        Ok(Some((field, (key & 7) as u8)))
    }

    /// Reads a length-delimited payload and returns its byte range in the message.
    #[inline]
    pub fn len_delimited(&mut self) -> Result<Range<usize>, WireError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated("length-delimited field"))?;
        self.pos = end;
        Ok(start..end)
    }

    /// Reads a little-endian 64-bit value.
    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or(WireError::Truncated("fixed64"))?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(a))
    }

    /// Skips a field's value of the given wire type.
    #[inline]
    pub fn skip(&mut self, wire_type: u8) -> Result<(), WireError> {
        match wire_type {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.fixed64()?;
            }
            LEN => {
                self.len_delimited()?;
            }
            FIXED32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(WireError::Truncated("fixed32"));
                }
                self.pos += 4;
            }
            other => return Err(WireError::WireType(other)),
        }
        Ok(())
    }

    /// Reads a length-delimited field, failing when the wire type is not LEN.
    #[inline]
    pub fn expect_len(&mut self, wire_type: u8) -> Result<Range<usize>, WireError> {
        if wire_type != LEN {
            return Err(WireError::WireType(wire_type));
        }
        self.len_delimited()
    }
}

/// Bytes a varint takes.
#[inline]
pub fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a field key.
#[inline]
pub fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// Appends a length-delimited field.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Bytes a length-delimited field of `len` payload bytes takes (field numbers < 16).
#[inline]
pub fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_and_length_matches() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(Reader::new(&out).varint(), Ok(v));
        }
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut r = Reader::new(&[0x0a, 0x05, 1, 2]);
        assert_eq!(r.key(), Ok(Some((1, LEN))));
        assert!(r.len_delimited().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
    }
}
