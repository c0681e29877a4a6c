//! Types that cross pipeline stages. Stages import these, never each other, so data flows
//! one way: receive → route → buffer → decide → export.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A 16-byte OTLP trace id; the unit of every decision and of shard ownership.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// Trace ids are random already: hashing folds the two halves into one word instead of
/// running SipHash over 16 bytes for every buffer and decision-cache lookup.
impl std::hash::Hash for TraceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&self.0[..8]);
        lo.copy_from_slice(&self.0[8..]);
        state.write_u64(u64::from_le_bytes(hi) ^ u64::from_le_bytes(lo));
    }
}

/// A hasher for [`TraceId`] keys: takes the folded id and spreads it with one multiply (the
/// map uses both the low bits and the top 7 bits of the hash).
#[derive(Clone, Copy, Default)]
pub struct TraceIdHasher(u64);

impl std::hash::Hasher for TraceIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than TraceId; still correct, just slower.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by trace id with the cheap hasher.
pub type TraceIdMap<V> =
    std::collections::HashMap<TraceId, V, std::hash::BuildHasherDefault<TraceIdHasher>>;

impl TraceId {
    /// Parses a trace id from wire bytes; `None` when not 16 bytes or all zero (invalid per OTLP).
    pub fn from_slice(bytes: &[u8]) -> Option<TraceId> {
        let id: [u8; 16] = bytes.try_into().ok()?;
        if id == [0; 16] {
            return None;
        }
        Some(TraceId(id))
    }

    /// Parses the 32-hex-digit form used by OTLP/JSON and the admin API.
    pub fn from_hex(s: &str) -> Option<TraceId> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            id[i] = (hi * 16 + lo) as u8;
        }
        TraceId::from_slice(&id)
    }

    /// The low 56 bits: the randomness the consistent-probability scheme uses without `rv`.
    pub fn randomness(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..16]);
        u64::from_be_bytes(low) & ((1u64 << 56) - 1)
    }

    /// A well-mixed 64-bit hash for shard and node selection (trace ids are random already,
    /// but some SDKs leave the high half predictable, so mix both halves).
    pub fn hash64(&self) -> u64 {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&self.0[..8]);
        b.copy_from_slice(&self.0[8..]);
        let x = u64::from_le_bytes(a) ^ u64::from_le_bytes(b).rotate_left(29);
        // splitmix64 finaliser
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// The customer a span belongs to; cheap to clone because every span of a request shares it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Arc<str>);

impl TenantId {
    /// Wraps a tenant name.
    pub fn new(name: &str) -> TenantId {
        TenantId(Arc::from(name))
    }

    /// The tenant name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", &*self.0)
    }
}

/// Where a group of spans came from: the encoded resource and scope, shared by every span of
/// one `ScopeSpans` so export can regroup spans without copying or re-encoding them.
#[derive(Debug)]
pub struct Origin {
    /// The tenant resolved for this resource.
    pub tenant: TenantId,
    /// Encoded `Resource` message (may be empty).
    pub resource: Bytes,
    /// `ResourceSpans.schema_url`.
    pub resource_schema_url: Bytes,
    /// Encoded `InstrumentationScope` message (may be empty).
    pub scope: Bytes,
    /// `ScopeSpans.schema_url`.
    pub scope_schema_url: Bytes,
    /// Hash of the four byte strings, so export can merge equal origins from different requests.
    pub content_hash: u64,
    /// Headers of the request the spans came in, sent with them on export
    /// (`[export] pass_through_headers`); here rather than per span, since a request's spans
    /// all share them.
    pub pass_through: PassThrough,
}

impl Origin {
    /// True when both origins encode the same resource and scope.
    pub fn same_content(&self, other: &Origin) -> bool {
        self.content_hash == other.content_hash
            && self.resource == other.resource
            && self.scope == other.scope
            && self.resource_schema_url == other.resource_schema_url
            && self.scope_schema_url == other.scope_schema_url
            && self.pass_through == other.pass_through
    }
}

/// The `[export] pass_through_headers` an incoming request carried: travels with its spans
/// (buffer, peer forwarding) and is sent with them on export. Empty (`None`, no allocation)
/// when no header is configured or the request had none; one `Arc` shared by every span of a
/// request otherwise. Values are secrets: `Debug` prints names only.
#[derive(Clone, Default)]
pub struct PassThrough(Option<Arc<[(http::HeaderName, http::HeaderValue)]>>);

impl PassThrough {
    /// The empty set (nothing to pass through).
    pub const NONE: PassThrough = PassThrough(None);

    /// A set holding `headers` in order (values are marked sensitive); empty stays `NONE`.
    pub fn new(headers: Vec<(http::HeaderName, http::HeaderValue)>) -> PassThrough {
        if headers.is_empty() {
            return PassThrough::NONE;
        }
        let headers: Vec<_> = headers
            .into_iter()
            .map(|(name, mut value)| {
                value.set_sensitive(true);
                (name, value)
            })
            .collect();
        PassThrough(Some(Arc::from(headers)))
    }

    /// The headers, in the order they were captured.
    pub fn headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// True when there is nothing to pass through.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// Equal when both carry the same names and values: a pointer comparison for spans of one
/// request, a short byte comparison for equal headers of different requests.
impl PartialEq for PassThrough {
    fn eq(&self, other: &PassThrough) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a[..] == b[..],
            _ => false,
        }
    }
}

impl Eq for PassThrough {}

impl fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.headers().iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}

/// OTLP span status code as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum StatusCode {
    /// STATUS_CODE_UNSET
    #[default]
    Unset = 0,
    /// STATUS_CODE_OK
    Ok = 1,
    /// STATUS_CODE_ERROR
    Error = 2,
}

/// A byte range inside a span's encoded bytes (kept as u32 pairs to keep the index small).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span32 {
    /// Offset from the start of the span's bytes.
    pub start: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Span32 {
    /// The slice of `bytes` this range covers (empty when out of range).
    pub fn slice<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        let end = start + self.len as usize;
        bytes.get(start..end).unwrap_or(&[])
    }
}

/// Which OTLP record a held record is: log records that carry a trace id travel with their
/// trace's spans (same shard, same owner, same memory budget, same decision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// An encoded `Span`.
    #[default]
    Span = 0,
    /// An encoded `LogRecord`.
    Log = 1,
}

/// Lowest OTLP `severity_number` of an ERROR log record (ERROR = 17..=20, FATAL = 21..=24).
pub const SEVERITY_ERROR: u8 = 17;

/// What is extracted from a span once, at ingest: exactly what buffering and deciding need.
/// A log record uses the same index: `span_id` is the log's span id (may be zero),
/// `start_unix_nanos` and `end_unix_nanos` both its time, `name` the range of its body when
/// the body is a string, and `severity` its severity number.
#[derive(Clone, Debug, Default)]
pub struct SpanIndex {
    /// Span or log record.
    pub record: RecordKind,
    /// OTLP `severity_number` of a log record (0 for spans and unspecified severity).
    pub severity: u8,
    /// The trace the span belongs to.
    pub trace_id: TraceId,
    /// The span's own id.
    pub span_id: [u8; 8],
    /// Parent span id; all zero for a root span.
    pub parent_span_id: [u8; 8],
    /// Start time, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End time, Unix nanoseconds.
    pub end_unix_nanos: u64,
    /// Status code.
    pub status: StatusCode,
    /// OTLP `SpanKind` number (0..=5).
    pub kind: u8,
    /// Where the name sits in the span bytes.
    pub name: Span32,
    /// Where the W3C tracestate sits in the span bytes (len 0 when absent).
    pub trace_state: Span32,
    /// The span carries an attribute the proxy itself sets on export (it must be replaced).
    pub has_reserved_attribute: bool,
}

impl SpanIndex {
    /// A root span has no parent (a log record is never a root).
    pub fn is_root(&self) -> bool {
        self.record == RecordKind::Span && self.parent_span_id == [0; 8]
    }

    /// True for a log record.
    pub fn is_log(&self) -> bool {
        self.record == RecordKind::Log
    }
}

/// One span held by the proxy: its OTLP wire bytes (the `Span` message body), its origin, and
/// its index. Never decoded again after ingest.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// The encoded `Span` message (without its tag and length prefix).
    pub bytes: Bytes,
    /// Resource and scope the span came with.
    pub origin: Arc<Origin>,
    /// Fields extracted at ingest.
    pub index: SpanIndex,
}

/// Resident bytes a buffered span costs beyond its encoded payload, as the memory budget
/// charges it: 336 B measured end to end before issue 14, less the 79 B the trace table's
/// re-layout saves and the 16 B of pass-through headers moved to `Origin`. End to end after
/// both (`scripts/bench.sh`, BENCHMARKS.md) a buffered span costs 556–617 B resident (medians),
/// i.e. 152–213 B beyond the mean 404 B payload, so this charge errs on the safe side.
pub const SPAN_OVERHEAD_BYTES: usize = 241;

impl SpanRecord {
    /// Bytes this span accounts for against the memory budget: its payload plus the overhead
    /// measured per buffered span (BENCHMARKS.md: the record itself, the trace's span vector
    /// growing by doubling, map, timer and cache entries, allocator slack), so that the budget
    /// bounds resident memory rather than just payload.
    pub fn accounted_bytes(&self) -> usize {
        self.bytes.len() + SPAN_OVERHEAD_BYTES
    }
}

/// Why a trace was decided when it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecideCause {
    /// `root_grace` passed after the root span arrived.
    RootGrace,
    /// `trace_timeout` passed since the first span.
    Timeout,
    /// The trace reached `max_spans_per_trace`.
    SpanLimit,
    /// The buffer was over its memory budget; oldest traces go first.
    MemoryPressure,
    /// The proxy is shutting down.
    Shutdown,
}

impl DecideCause {
    /// Stable lower-case name for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecideCause::RootGrace => "root_grace",
            DecideCause::Timeout => "timeout",
            DecideCause::SpanLimit => "span_limit",
            DecideCause::MemoryPressure => "memory_pressure",
            DecideCause::Shutdown => "shutdown",
        }
    }
}

/// A trace handed from the buffer to the decider: all spans held for one trace id.
#[derive(Debug)]
pub struct CompleteTrace {
    /// The trace id.
    pub trace_id: TraceId,
    /// Tenant of the first span that arrived.
    pub tenant: TenantId,
    /// Every span held for the trace.
    pub spans: Vec<SpanRecord>,
    /// Log records held with the trace (they follow its decision).
    pub logs: Vec<SpanRecord>,
    /// Why it is being decided now.
    pub cause: DecideCause,
}

impl CompleteTrace {
    /// A trace from everything held for it, spans and log records separated (a trace without
    /// logs keeps its vector as it is).
    pub fn new(
        trace_id: TraceId,
        tenant: TenantId,
        mut records: Vec<SpanRecord>,
        cause: DecideCause,
    ) -> CompleteTrace {
        let logs = if records.iter().any(|r| r.index.is_log()) {
            let (logs, spans): (Vec<_>, Vec<_>) = records.drain(..).partition(|r| r.index.is_log());
            records = spans;
            logs
        } else {
            Vec::new()
        };
        CompleteTrace {
            trace_id,
            tenant,
            spans: records,
            logs,
            cause,
        }
    }
}

/// The outcome of deciding one trace; late spans of the trace follow it.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Keep (export) or drop.
    pub keep: bool,
    /// Total sample rate of kept spans (upstream head sampling included): each stands for this many.
    pub sample_rate: u64,
    /// The effective 56-bit rejection threshold written as `ot=th:` on export.
    pub threshold: u64,
    /// Name of the deciding rule.
    pub rule: Arc<str>,
}

/// A kept trace (or late spans of one) on its way to the exporter.
#[derive(Debug)]
pub struct KeptSpans {
    /// Tenant, for per-tenant drop counting.
    pub tenant: TenantId,
    /// The decision to annotate spans with.
    pub decision: Decision,
    /// Spans to export.
    pub spans: Vec<SpanRecord>,
}

/// Every reason a span can fail to reach the backend; each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Rejected at ingest (invalid ids, undecodable span).
    Invalid,
    /// A `drop = true` rule decided the trace.
    Rule,
    /// A sampler (1-in-N or dynamic) did not pick the trace.
    Sampled,
    /// The export queue was full.
    ExportOverflow,
    /// The backend refused or was unreachable after all retries.
    ExportFailed,
    /// Still buffered or queued when the shutdown deadline passed.
    ShutdownDeadline,
}

impl DropReason {
    /// All reasons, for metrics output.
    pub const ALL: [DropReason; 6] = [
        DropReason::Invalid,
        DropReason::Rule,
        DropReason::Sampled,
        DropReason::ExportOverflow,
        DropReason::ExportFailed,
        DropReason::ShutdownDeadline,
    ];

    /// Stable lower-case name for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Invalid => "invalid",
            DropReason::Rule => "rule",
            DropReason::Sampled => "sampled",
            DropReason::ExportOverflow => "export_overflow",
            DropReason::ExportFailed => "export_failed",
            DropReason::ShutdownDeadline => "shutdown_deadline",
        }
    }
}

/// Where a recent trace stands, as its owning shard knows it (admin `GET /api/v1/traces/{id}`).
#[derive(Clone, Debug)]
pub enum TraceState {
    /// Still buffered, waiting for its decision.
    Pending,
    /// Decided (kept or dropped); late spans follow this decision.
    Decided(Decision),
}

/// A shard's answer about one trace id.
#[derive(Clone, Debug)]
pub struct TraceStatus {
    /// Pending or decided.
    pub state: TraceState,
    /// Tenant of the trace's first span.
    pub tenant: TenantId,
    /// Spans held (pending) or spans that followed the decision, late spans included.
    pub spans: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_span_costs_112_bytes_of_bookkeeping_beside_its_payload() {
        // Every buffered span holds one of these; growing it grows resident memory per span
        // (BENCHMARKS.md accounts for each byte), so a change here is deliberate.
        assert_eq!(std::mem::size_of::<SpanIndex>(), 72);
        assert_eq!(std::mem::size_of::<SpanRecord>(), 112);
    }

    #[test]
    fn trace_id_rejects_wrong_length_and_all_zero() {
        assert!(TraceId::from_slice(&[1; 15]).is_none());
        assert!(TraceId::from_slice(&[0; 16]).is_none());
        assert!(TraceId::from_slice(&[1; 16]).is_some());
    }

    #[test]
    fn trace_id_hex_round_trips() {
        let id = TraceId([0xab; 16]);
        assert_eq!(TraceId::from_hex(&id.to_string()), Some(id));
        assert!(TraceId::from_hex("xyz").is_none());
    }

    #[test]
    fn randomness_is_low_56_bits() {
        let mut b = [0u8; 16];
        b[8] = 0xff;
        b[15] = 0x01;
        assert_eq!(TraceId(b).randomness(), 1);
    }
}

/// One OTLP metrics export request on its way through the proxy: the bytes as received
/// (protobuf; JSON converted once at the edge), never decoded again.
#[derive(Clone, Debug)]
pub struct MetricsRequest {
    /// Encoded `ExportMetricsServiceRequest`.
    pub body: bytes::Bytes,
    /// Its data points, counted at receive.
    pub points: u64,
    /// The `[export] pass_through_headers` the request carried.
    pub pass_through: PassThrough,
    /// Its data points per tenant, for the per-tenant delivered and dropped counts.
    pub tenants: Vec<(TenantId, u64)>,
}

/// Where receive hands metrics requests: a bounded queue that refuses when full, so the
/// client is told to retry instead of the proxy holding more.
pub trait MetricsSink: Send + Sync {
    /// Queues `request`; gives it back when the queue has no room (or is closed).
    fn try_submit(&self, request: MetricsRequest) -> Result<(), MetricsRequest>;
}

/// Where receive hands log records that belong to no trace: straight to the export queue
/// (never held), refusing when it has no room so the client is told to retry.
pub trait UntracedSink: Send + Sync {
    /// Queues `kept`; gives it back when the export queue has no room (or is closed).
    fn try_submit(&self, kept: KeptSpans) -> Result<(), KeptSpans>;
}

/// Spans and log records in `records`, counted apart.
pub fn count_kinds(records: &[SpanRecord]) -> (u64, u64) {
    let logs = records.iter().filter(|r| r.index.is_log()).count() as u64;
    (records.len() as u64 - logs, logs)
}

/// The rule name log records without a trace id follow; on export they carry no
/// `tailsift.rule`, and `SampleRate` only when `[logs] untraced_sample_rate` is above 1.
pub const UNTRACED_RULE: &str = "logs.untraced";
