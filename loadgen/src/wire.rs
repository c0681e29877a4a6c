//! Just enough protobuf to walk OTLP requests without decoding them: a bounds-checked reader,
//! and a visitor that yields each span's bytes with its resource's tenant.
//!
//! The three OTLP export requests share one container shape (field 1 of the request: the
//! resource container; in it field 1 the resource, field 2 the scope containers; in those
//! field 1 the scope, field 2 the items), so the same visitor yields a traces request's spans,
//! a logs request's log records and a metrics request's `Metric`s.
//!
//! Used twice: to find where the ids sit in the pre-encoded request templates (so the
//! generator can patch fresh ids into copies), and by the sink to count spans per trace, log
//! records and metric data points and read the two attributes the proxy adds, at a fraction of
//! a full decode's cost.

use anyhow::{bail, Result};

pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const FIXED32: u8 = 5;

/// A cursor over one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64> {
        // Fast path: most keys and lengths here fit in one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                bail!("truncated varint");
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        bail!("varint too long")
    }

    /// Next field key, `None` at the end.
    #[inline]
    pub fn key(&mut self) -> Result<Option<(u32, u8)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some(((k >> 3) as u32, (k & 7) as u8)))
    }

    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()? as usize;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!("truncated length-delimited field");
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn fixed64(&mut self) -> Result<u64> {
        let Some(b) = self.buf.get(self.pos..self.pos + 8) else {
            bail!("truncated fixed64");
        };
        self.pos += 8;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn skip(&mut self, wire: u8) -> Result<()> {
        match wire {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.fixed64()?;
            }
            LEN => {
                self.bytes()?;
            }
            FIXED32 => {
                if self.pos + 4 > self.buf.len() {
                    bail!("truncated fixed32");
                }
                self.pos += 4;
            }
            w => bail!("unsupported wire type {w}"),
        }
        Ok(())
    }
}

/// Offset of `inner` inside `outer` (both slices of the same buffer).
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Reads an `AnyValue` as a string (field 1) or an int (field 3).
pub enum Value<'a> {
    Str(&'a [u8]),
    Int(i64),
    Other,
}

fn any_value(buf: &[u8]) -> Result<Value<'_>> {
    let mut r = Reader::new(buf);
    let mut out = Value::Other;
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => out = Value::Str(r.bytes()?),
            (3, VARINT) => out = Value::Int(r.varint()? as i64),
            _ => r.skip(wire)?,
        }
    }
    Ok(out)
}

/// The key of a `KeyValue`, read cheaply when it is the first field (as every encoder writes
/// it); else a full parse.
#[inline]
pub fn key_of(buf: &[u8]) -> Result<&[u8]> {
    if let [0x0a, len, rest @ ..] = buf {
        if (*len as usize) < 0x80 && rest.len() >= *len as usize {
            return Ok(&rest[..*len as usize]);
        }
    }
    Ok(key_value(buf)?.0)
}

/// Splits a `KeyValue` into key and value bytes.
pub fn key_value(buf: &[u8]) -> Result<(&[u8], Value<'_>)> {
    let mut r = Reader::new(buf);
    let mut key: &[u8] = &[];
    let mut value = Value::Other;
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => key = r.bytes()?,
            (2, LEN) => value = any_value(r.bytes()?)?,
            _ => r.skip(wire)?,
        }
    }
    Ok((key, value))
}

/// What the visitor learns about one span.
pub struct SpanView<'a> {
    /// The resource's `tenant.id` (empty when absent).
    pub tenant: &'a [u8],
    /// Offset of the span's message bytes in the request.
    pub offset: usize,
    /// The span's message bytes.
    pub bytes: &'a [u8],
}

/// Calls `f` for every span of an `ExportTraceServiceRequest`, in wire order (or every log
/// record of an `ExportLogsServiceRequest`, every `Metric` of an
/// `ExportMetricsServiceRequest`: the containers have the same field numbers).
pub fn for_each_span<'a>(
    req: &'a [u8],
    tenant_key: &[u8],
    mut f: impl FnMut(SpanView<'a>) -> Result<()>,
) -> Result<()> {
    let mut r = Reader::new(req);
    while let Some((field, wire)) = r.key()? {
        if (field, wire) != (1, LEN) {
            r.skip(wire)?;
            continue;
        }
        let rs = r.bytes()?;
        // The resource may in principle come after the scope spans: find it first.
        let mut tenant: &[u8] = &[];
        let mut rr = Reader::new(rs);
        while let Some((field, wire)) = rr.key()? {
            if (field, wire) == (1, LEN) {
                let resource = rr.bytes()?;
                let mut res = Reader::new(resource);
                while let Some((f2, w2)) = res.key()? {
                    if (f2, w2) == (1, LEN) {
                        let (k, v) = key_value(res.bytes()?)?;
                        if k == tenant_key {
                            if let Value::Str(s) = v {
                                tenant = s;
                            }
                        }
                    } else {
                        res.skip(w2)?;
                    }
                }
            } else {
                rr.skip(wire)?;
            }
        }
        let mut rr = Reader::new(rs);
        while let Some((field, wire)) = rr.key()? {
            if (field, wire) != (2, LEN) {
                rr.skip(wire)?;
                continue;
            }
            let ss = rr.bytes()?;
            let mut sr = Reader::new(ss);
            while let Some((f3, w3)) = sr.key()? {
                if (f3, w3) == (2, LEN) {
                    let span = sr.bytes()?;
                    f(SpanView {
                        tenant,
                        offset: offset_in(req, span),
                        bytes: span,
                    })?;
                } else {
                    sr.skip(w3)?;
                }
            }
        }
    }
    Ok(())
}

/// Offsets (within the span bytes) of the values of fields trace_id (1), span_id (2) and
/// parent_span_id (4); `None` for an absent field.
pub fn id_offsets(span: &[u8]) -> Result<[Option<(usize, usize)>; 3]> {
    let mut out = [None; 3];
    let mut r = Reader::new(span);
    while let Some((field, wire)) = r.key()? {
        let slot = match (field, wire) {
            (1, LEN) => Some(0),
            (2, LEN) => Some(1),
            (4, LEN) => Some(2),
            _ => None,
        };
        match slot {
            Some(i) => {
                let v = r.bytes()?;
                out[i] = Some((offset_in(span, v), v.len()));
            }
            None => r.skip(wire)?,
        }
    }
    Ok(out)
}

/// Offsets (within the log record bytes) of the values of fields trace_id (9) and span_id
/// (10); `None` for an absent field.
pub fn log_id_offsets(record: &[u8]) -> Result<[Option<(usize, usize)>; 2]> {
    let mut out = [None; 2];
    let mut r = Reader::new(record);
    while let Some((field, wire)) = r.key()? {
        let slot = match (field, wire) {
            (9, LEN) => Some(0),
            (10, LEN) => Some(1),
            _ => None,
        };
        match slot {
            Some(i) => {
                let v = r.bytes()?;
                out[i] = Some((offset_in(record, v), v.len()));
            }
            None => r.skip(wire)?,
        }
    }
    Ok(out)
}

/// Kinds of metric data points, in `Metric.data`'s field order.
pub const POINT_KINDS: [&str; 5] = [
    "gauge",
    "sum",
    "histogram",
    "exponential_histogram",
    "summary",
];

/// The data points of one encoded `Metric`: its kind (an index into [`POINT_KINDS`]) and how
/// many points it holds; `None` for a metric without data.
pub fn metric_points(metric: &[u8]) -> Result<Option<(usize, u64)>> {
    let mut r = Reader::new(metric);
    let mut out = None;
    while let Some((field, wire)) = r.key()? {
        let kind = match (field, wire) {
            (5, LEN) => 0,
            (7, LEN) => 1,
            (9, LEN) => 2,
            (10, LEN) => 3,
            (11, LEN) => 4,
            _ => {
                r.skip(wire)?;
                continue;
            }
        };
        // Gauge, Sum, Histogram, ExponentialHistogram and Summary all hold their points in
        // field 1.
        let mut d = Reader::new(r.bytes()?);
        let mut n = 0u64;
        while let Some((f, w)) = d.key()? {
            if (f, w) == (1, LEN) {
                n += 1;
            }
            d.skip(w)?;
        }
        out = Some((kind, n));
    }
    Ok(out)
}
