//! Per-tenant counts over sliding windows (last 1 minute, 5 minutes, 1 hour, and since start).
//!
//! Counting is off the hot path's locks: each buffer shard counts into its own [`Tally`] (a
//! plain `HashMap`, no lock, no atomics) and merges it into the shared [`TenantTable`] about
//! once a second. Export and receive add per batch / per request. Readers merge the windows on
//! demand. Every function that depends on time takes `now` (Unix seconds) explicitly, so tests
//! drive the clock.
//!
//! Windows are rings of buckets, kept sparse (an idle tenant holds no buckets):
//! - 1m: 60 one-second buckets; 5m: 30 ten-second buckets; 1h: 60 one-minute buckets.
//! - A window of `len` buckets of `g` seconds covers the bucket holding `now` and the `len - 1`
//!   before it. A count made at second `t` on a bucket boundary therefore leaves the window
//!   exactly `len * g` seconds later; one made mid-bucket leaves up to `g - 1` seconds earlier.
//!
//! Tenant cardinality is bounded by `[stats] max_tenants`: a tenant first seen once the table
//! holds that many is counted as [`OTHER_TENANT`], and `tailsift_tenants_folded_total` says so.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{Decision, DropReason, TenantId};

/// The tenant that absorbs every tenant beyond `max_tenants`.
pub const OTHER_TENANT: &str = "_other";

/// Default for `[stats] max_tenants`.
pub const DEFAULT_MAX_TENANTS: usize = 1000;

/// Upper bounds (seconds) of the decision-latency histogram buckets (`+Inf` is implied).
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Index of a drop reason in the `*_dropped` arrays (the order of [`DropReason::ALL`]).
pub fn reason_index(reason: DropReason) -> usize {
    match reason {
        DropReason::Invalid => 0,
        DropReason::Rule => 1,
        DropReason::Sampled => 2,
        DropReason::ExportOverflow => 3,
        DropReason::ExportFailed => 4,
        DropReason::ShutdownDeadline => 5,
    }
}

/// Traces decided and kept by one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounts {
    /// Rule name.
    pub rule: Arc<str>,
    /// Traces the rule decided.
    pub traces_decided: u64,
    /// Of those, traces kept.
    pub traces_kept: u64,
}

/// Everything counted for one tenant over some span of time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Traces first seen by the buffer.
    pub traces_received: u64,
    /// Valid spans accepted.
    pub spans_received: u64,
    /// Traces decided.
    pub traces_decided: u64,
    /// Traces kept.
    pub traces_kept: u64,
    /// Spans that followed a decision (spans of decided traces, plus late spans).
    pub spans_decided: u64,
    /// Spans handed to export (kept traces' spans, late spans included).
    pub spans_kept: u64,
    /// Spans delivered to the backend.
    pub spans_exported: u64,
    /// Spans that arrived after their trace was decided.
    pub late_spans: u64,
    /// Traces not kept, by reason (only `rule` and `sampled` apply to traces).
    pub traces_dropped: [u64; 6],
    /// Spans not delivered, by reason (indexed by [`reason_index`]).
    pub spans_dropped: [u64; 6],
    /// Log records accepted (with or without a trace id).
    pub logs_received: u64,
    /// Log records handed to export.
    pub logs_kept: u64,
    /// Log records delivered to the backend.
    pub logs_exported: u64,
    /// Log records not delivered (their trace dropped, not sampled, export failed).
    pub logs_dropped: u64,
    /// Metric data points accepted (passed through).
    pub metric_points_received: u64,
    /// Metric data points delivered to the backend.
    pub metric_points_exported: u64,
    /// Metric data points not delivered.
    pub metric_points_dropped: u64,
    /// Per deciding rule.
    pub rules: Vec<RuleCounts>,
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        self.traces_received += other.traces_received;
        self.spans_received += other.spans_received;
        self.traces_decided += other.traces_decided;
        self.traces_kept += other.traces_kept;
        self.spans_decided += other.spans_decided;
        self.spans_kept += other.spans_kept;
        self.spans_exported += other.spans_exported;
        self.late_spans += other.late_spans;
        for i in 0..6 {
            self.traces_dropped[i] += other.traces_dropped[i];
            self.spans_dropped[i] += other.spans_dropped[i];
        }
        self.logs_received += other.logs_received;
        self.logs_kept += other.logs_kept;
        self.logs_exported += other.logs_exported;
        self.logs_dropped += other.logs_dropped;
        self.metric_points_received += other.metric_points_received;
        self.metric_points_exported += other.metric_points_exported;
        self.metric_points_dropped += other.metric_points_dropped;
        for r in &other.rules {
            let mine = self.rule_mut(&r.rule);
            mine.traces_decided += r.traces_decided;
            mine.traces_kept += r.traces_kept;
        }
    }

    /// The counts of `rule`, created at zero if absent. Rule names are shared `Arc`s, so the
    /// pointer comparison almost always answers before the string comparison.
    fn rule_mut(&mut self, rule: &Arc<str>) -> &mut RuleCounts {
        let i = match self
            .rules
            .iter()
            .position(|r| Arc::ptr_eq(&r.rule, rule) || r.rule == *rule)
        {
            Some(i) => i,
            None => {
                self.rules.push(RuleCounts {
                    rule: rule.clone(),
                    traces_decided: 0,
                    traces_kept: 0,
                });
                self.rules.len() - 1
            }
        };
        &mut self.rules[i]
    }

    /// Traces dropped, all reasons.
    pub fn traces_dropped_total(&self) -> u64 {
        self.traces_dropped.iter().sum()
    }

    /// Spans not delivered, all reasons (a kept span that then failed export counts here too).
    pub fn spans_dropped_total(&self) -> u64 {
        self.spans_dropped.iter().sum()
    }

    /// Spans dropped for `reason`.
    pub fn spans_dropped_by(&self, reason: DropReason) -> u64 {
        self.spans_dropped[reason_index(reason)]
    }

    /// kept / decided for traces; `None` before the first decision.
    pub fn trace_keep_rate(&self) -> Option<f64> {
        ratio(self.traces_kept, self.traces_decided)
    }

    /// kept / decided for spans; `None` before the first decision.
    pub fn span_keep_rate(&self) -> Option<f64> {
        ratio(self.spans_kept, self.spans_decided)
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// Counts spans dropped for `reason`.
    pub fn drop_spans(&mut self, reason: DropReason, spans: u64) {
        self.spans_dropped[reason_index(reason)] += spans;
    }

    /// Counts one decided trace of `spans` spans.
    pub fn decided(&mut self, decision: &Decision, spans: u64) {
        self.traces_decided += 1;
        self.spans_decided += spans;
        let rule = self.rule_mut(&decision.rule);
        rule.traces_decided += 1;
        if decision.keep {
            rule.traces_kept += 1;
            self.traces_kept += 1;
            self.spans_kept += spans;
        } else {
            let i = reason_index(drop_reason(decision));
            self.traces_dropped[i] += 1;
            self.spans_dropped[i] += spans;
        }
    }

    /// Counts log records that followed `decision` (held with their trace, or late).
    pub fn logs_followed(&mut self, decision: &Decision, logs: u64) {
        if decision.keep {
            self.logs_kept += logs;
        } else {
            self.logs_dropped += logs;
        }
    }

    /// Counts late spans that followed `decision`.
    pub fn late(&mut self, decision: &Decision, spans: u64) {
        self.late_spans += spans;
        self.spans_decided += spans;
        if decision.keep {
            self.spans_kept += spans;
        } else {
            self.spans_dropped[reason_index(drop_reason(decision))] += spans;
        }
    }
}

/// Why a trace that is not kept was dropped (the same split the buffer's counters use).
pub fn drop_reason(decision: &Decision) -> DropReason {
    if decision.sample_rate == 0 {
        DropReason::Rule
    } else {
        DropReason::Sampled
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// A sliding window the tables can be read over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last minute.
    Minute,
    /// The last 5 minutes.
    FiveMinutes,
    /// The last hour.
    Hour,
    /// Since the process started.
    SinceStart,
}

impl Window {
    /// Parses `1m`, `5m`, `1h` or `all`.
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "1m" => Some(Window::Minute),
            "5m" => Some(Window::FiveMinutes),
            "1h" | "60m" => Some(Window::Hour),
            "all" | "start" => Some(Window::SinceStart),
            _ => None,
        }
    }

    /// The name [`Window::parse`] reads.
    pub fn as_str(&self) -> &'static str {
        match self {
            Window::Minute => "1m",
            Window::FiveMinutes => "5m",
            Window::Hour => "1h",
            Window::SinceStart => "all",
        }
    }
}

/// (bucket seconds, buckets) of the 1m, 5m and 1h rings.
const RINGS: [(u64, u64); 3] = [(1, 60), (10, 30), (60, 60)];

/// One ring of sparse buckets: `(bucket number = unix seconds / granularity, counts)`.
#[derive(Debug, Default)]
struct Ring {
    buckets: VecDeque<(u64, Counts)>,
}

impl Ring {
    fn add(&mut self, ring: usize, now: u64, counts: &Counts) {
        let b = now / RINGS[ring].0;
        match self.buckets.back_mut() {
            // A clock that stepped back adds to the newest bucket rather than reorder.
            Some((last, c)) if *last >= b => c.add(counts),
            _ => self.buckets.push_back((b, counts.clone())),
        }
        self.trim(ring, now);
    }

    fn trim(&mut self, ring: usize, now: u64) {
        let (g, len) = RINGS[ring];
        let b = now / g;
        while let Some((first, _)) = self.buckets.front() {
            if first + len <= b {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn sum(&self, ring: usize, now: u64, out: &mut Counts) {
        let (g, len) = RINGS[ring];
        let b = now / g;
        for (bucket, counts) in &self.buckets {
            if bucket + len > b {
                out.add(counts);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    total: Counts,
    rings: [Ring; 3],
}

impl Series {
    fn add(&mut self, now: u64, counts: &Counts) {
        self.total.add(counts);
        for (i, ring) in self.rings.iter_mut().enumerate() {
            ring.add(i, now, counts);
        }
    }

    fn read(&self, window: Window, now: u64) -> Counts {
        let ring = match window {
            Window::SinceStart => return self.total.clone(),
            Window::Minute => 0,
            Window::FiveMinutes => 1,
            Window::Hour => 2,
        };
        let mut out = Counts::default();
        self.rings[ring].sum(ring, now, &mut out);
        out
    }
}

/// A histogram with fixed buckets ([`LATENCY_BOUNDS`]) in atomics; shards add their local
/// histograms once per flush.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    fn add(&self, local: &LocalHistogram) {
        for (b, n) in self.buckets.iter().zip(local.buckets.iter()) {
            if *n > 0 {
                b.fetch_add(*n, Relaxed);
            }
        }
        self.sum_micros.fetch_add(local.sum_micros, Relaxed);
    }

    /// Per-bucket (not cumulative) counts, the last one for `+Inf`.
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// Prometheus histogram exposition.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        let counts = self.buckets();
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = match LATENCY_BOUNDS.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

#[derive(Debug, Default, Clone)]
struct LocalHistogram {
    buckets: [u64; LATENCY_BOUNDS.len() + 1],
    sum_micros: u64,
}

impl LocalHistogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i] += 1;
        self.sum_micros += d.as_micros() as u64;
    }

    fn is_empty(&self) -> bool {
        self.buckets.iter().all(|n| *n == 0)
    }
}

/// The shared per-tenant table: one mutex, taken about once per second per shard, once per
/// export batch, once per request with invalid spans, and by readers.
#[derive(Debug)]
pub struct TenantTable {
    inner: Mutex<HashMap<TenantId, Series>>,
    max_tenants: AtomicUsize,
    folded: AtomicU64,
    /// First span arrival → decision, seconds.
    pub decision_latency: LatencyHistogram,
}

impl Default for TenantTable {
    fn default() -> Self {
        TenantTable::new(DEFAULT_MAX_TENANTS)
    }
}

impl TenantTable {
    /// An empty table holding at most `max_tenants` tenants (plus [`OTHER_TENANT`]).
    pub fn new(max_tenants: usize) -> Self {
        TenantTable {
            inner: Mutex::new(HashMap::new()),
            max_tenants: AtomicUsize::new(max_tenants),
            folded: AtomicU64::new(0),
            decision_latency: LatencyHistogram::default(),
        }
    }

    /// Sets the tenant limit (`[stats] max_tenants`); tenants already counted stay.
    pub fn set_max_tenants(&self, n: usize) {
        self.max_tenants.store(n, Relaxed);
    }

    /// The tenant limit.
    pub fn max_tenants(&self) -> usize {
        self.max_tenants.load(Relaxed)
    }

    /// Tenant tallies folded into [`OTHER_TENANT`] so far (one per tenant per merge).
    pub fn folded(&self) -> u64 {
        self.folded.load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Series>> {
        // Counters stay usable after a panic elsewhere: the data is plain numbers.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn merge_locked(
        &self,
        map: &mut HashMap<TenantId, Series>,
        tenant: &TenantId,
        now: u64,
        counts: &Counts,
    ) {
        if let Some(series) = map.get_mut(tenant) {
            series.add(now, counts);
            return;
        }
        let key = if map.len() >= self.max_tenants() && tenant.as_str() != OTHER_TENANT {
            self.folded.fetch_add(1, Relaxed);
            TenantId::new(OTHER_TENANT)
        } else {
            tenant.clone()
        };
        map.entry(key).or_default().add(now, counts);
    }

    /// Adds counts for one tenant at `now` (export per batch, receive per request).
    pub fn add(&self, tenant: &TenantId, now: u64, counts: &Counts) {
        let mut map = self.lock();
        self.merge_locked(&mut map, tenant, now, counts);
    }

    /// Adds counts for several tenants under one lock.
    pub fn add_all<'a>(
        &self,
        now: u64,
        items: impl IntoIterator<Item = (&'a TenantId, &'a Counts)>,
    ) {
        let mut map = self.lock();
        for (tenant, counts) in items {
            self.merge_locked(&mut map, tenant, now, counts);
        }
    }

    /// Every tenant's counts over `window` as of `now`, in no particular order.
    pub fn snapshot(&self, window: Window, now: u64) -> Vec<(TenantId, Counts)> {
        let map = self.lock();
        map.iter()
            .map(|(t, s)| (t.clone(), s.read(window, now)))
            .collect()
    }

    /// One tenant's counts over `window`, or `None` if it was never counted.
    pub fn tenant(&self, tenant: &str, window: Window, now: u64) -> Option<Counts> {
        let map = self.lock();
        map.get(&TenantId::new(tenant)).map(|s| s.read(window, now))
    }

    /// Per-minute counts of every tenant over the last hour, oldest first: `(minute start in
    /// Unix seconds, counts)` for minutes with activity (for the dashboard).
    pub fn history(&self, now: u64) -> Vec<(TenantId, Vec<(u64, Counts)>)> {
        let map = self.lock();
        let (g, len) = RINGS[2];
        let b = now / g;
        map.iter()
            .map(|(t, s)| {
                let minutes = s.rings[2]
                    .buckets
                    .iter()
                    .filter(|(bucket, _)| bucket + len > b)
                    .map(|(bucket, c)| (bucket * g, c.clone()))
                    .collect();
                (t.clone(), minutes)
            })
            .collect()
    }

    /// Per-tenant counters (since start) in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let mut tenants = self.snapshot(Window::SinceStart, 0);
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        type Get = fn(&Counts) -> u64;
        let simple: [(&str, &str, Get); 14] = [
            (
                "tailsift_tenant_traces_received_total",
                "Traces first seen, per tenant",
                |c| c.traces_received,
            ),
            (
                "tailsift_tenant_traces_kept_total",
                "Traces kept, per tenant",
                |c| c.traces_kept,
            ),
            (
                "tailsift_tenant_traces_decided_total",
                "Traces decided, per tenant",
                |c| c.traces_decided,
            ),
            (
                "tailsift_tenant_spans_received_total",
                "Valid spans accepted, per tenant",
                |c| c.spans_received,
            ),
            (
                "tailsift_tenant_spans_kept_total",
                "Spans of kept traces handed to export, per tenant",
                |c| c.spans_kept,
            ),
            (
                "tailsift_tenant_spans_exported_total",
                "Spans delivered to the backend, per tenant",
                |c| c.spans_exported,
            ),
            (
                "tailsift_tenant_late_spans_total",
                "Spans that arrived after their trace was decided, per tenant",
                |c| c.late_spans,
            ),
            (
                "tailsift_tenant_log_records_received_total",
                "Log records accepted, per tenant",
                |c| c.logs_received,
            ),
            (
                "tailsift_tenant_log_records_kept_total",
                "Log records handed to export, per tenant",
                |c| c.logs_kept,
            ),
            (
                "tailsift_tenant_log_records_exported_total",
                "Log records delivered to the backend, per tenant",
                |c| c.logs_exported,
            ),
            (
                "tailsift_tenant_log_records_dropped_total",
                "Log records not delivered, per tenant",
                |c| c.logs_dropped,
            ),
            (
                "tailsift_tenant_metric_points_received_total",
                "Metric data points accepted, per tenant",
                |c| c.metric_points_received,
            ),
            (
                "tailsift_tenant_metric_points_exported_total",
                "Metric data points delivered to the backend, per tenant",
                |c| c.metric_points_exported,
            ),
            (
                "tailsift_tenant_metric_points_dropped_total",
                "Metric data points not delivered, per tenant",
                |c| c.metric_points_dropped,
            ),
        ];
        for (name, help, get) in simple {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (tenant, c) in &tenants {
                let _ = writeln!(
                    out,
                    "{name}{{tenant=\"{}\"}} {}",
                    escape_label(tenant.as_str()),
                    get(c)
                );
            }
        }
        type ByReason = fn(&Counts) -> &[u64; 6];
        let by_reason: [(&str, &str, ByReason); 2] = [
            (
                "tailsift_tenant_traces_dropped_total",
                "Traces not kept, per tenant and reason",
                |c| &c.traces_dropped,
            ),
            (
                "tailsift_tenant_spans_dropped_total",
                "Spans not delivered, per tenant and reason",
                |c| &c.spans_dropped,
            ),
        ];
        for (name, help, get) in by_reason {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (tenant, c) in &tenants {
                for reason in DropReason::ALL {
                    let _ = writeln!(
                        out,
                        "{name}{{tenant=\"{}\",reason=\"{}\"}} {}",
                        escape_label(tenant.as_str()),
                        reason.as_str(),
                        get(c)[reason_index(reason)]
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP tailsift_tenants Tenants tracked by the per-tenant counters\n# TYPE tailsift_tenants gauge\ntailsift_tenants {}",
            tenants.len()
        );
        let _ = writeln!(
            out,
            "# HELP tailsift_tenants_folded_total Tenant tallies counted as \"{OTHER_TENANT}\" because stats.max_tenants was reached\n# TYPE tailsift_tenants_folded_total counter\ntailsift_tenants_folded_total {}",
            self.folded()
        );
        self.decision_latency.render(
            "tailsift_decision_latency_seconds",
            "Time from a trace's first span to its decision",
            out,
        );
    }
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A shard's local counts: no lock, no atomics; merged into the [`TenantTable`] by
/// [`Tally::flush`] about once a second. Its own tenant count is bounded too (beyond
/// `max_tenants` distinct tenants in one interval, the rest count as [`OTHER_TENANT`]).
#[derive(Debug)]
pub struct Tally {
    tenants: HashMap<TenantId, Counts>,
    latency: LocalHistogram,
    max_tenants: usize,
    other: TenantId,
}

impl Tally {
    /// An empty tally holding at most `max_tenants` tenants between flushes.
    pub fn new(max_tenants: usize) -> Self {
        Tally {
            tenants: HashMap::new(),
            latency: LocalHistogram::default(),
            max_tenants: max_tenants.max(1),
            other: TenantId::new(OTHER_TENANT),
        }
    }

    /// The counts of `tenant` (or of [`OTHER_TENANT`] when the tally is full).
    pub fn counts(&mut self, tenant: &TenantId) -> &mut Counts {
        // Two lookups on the rare insert path keep the common path to one hash and no clone.
        if !self.tenants.contains_key(tenant) {
            let key = if self.tenants.len() >= self.max_tenants {
                self.other.clone()
            } else {
                tenant.clone()
            };
            return self.tenants.entry(key).or_default();
        }
        self.tenants.get_mut(tenant).expect("checked above")
    }

    /// Counts `spans` valid spans of `tenant` entering the buffer.
    pub fn spans_received(&mut self, tenant: &TenantId, spans: u64) {
        self.counts(tenant).spans_received += spans;
    }

    /// Counts `logs` log records of `tenant` entering the buffer with their trace.
    pub fn logs_received(&mut self, tenant: &TenantId, logs: u64) {
        self.counts(tenant).logs_received += logs;
    }

    /// Counts log records of `tenant` that followed `decision`.
    pub fn logs_followed(&mut self, tenant: &TenantId, decision: &Decision, logs: u64) {
        self.counts(tenant).logs_followed(decision, logs);
    }

    /// Counts a trace first seen.
    pub fn trace_received(&mut self, tenant: &TenantId) {
        self.counts(tenant).traces_received += 1;
    }

    /// Counts a decided trace and how long it waited since its first span.
    pub fn decided(
        &mut self,
        tenant: &TenantId,
        decision: &Decision,
        spans: u64,
        waited: Duration,
    ) {
        self.counts(tenant).decided(decision, spans);
        self.latency.observe(waited);
    }

    /// Counts late spans following `decision`.
    pub fn late(&mut self, tenant: &TenantId, decision: &Decision, spans: u64) {
        self.counts(tenant).late(decision, spans);
    }

    /// True when there is nothing to flush.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.latency.is_empty()
    }

    /// Merges everything into `table` at `now` (Unix seconds) and starts over.
    pub fn flush(&mut self, table: &TenantTable, now: u64) {
        if !self.tenants.is_empty() {
            table.add_all(now, self.tenants.iter());
            self.tenants.clear();
        }
        if !self.latency.is_empty() {
            table.decision_latency.add(&self.latency);
            self.latency = LocalHistogram::default();
        }
    }
}

/// Unix seconds now (the clock the shared table is read and written with).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(keep: bool, rule: &str) -> Decision {
        Decision {
            keep,
            sample_rate: if keep { 1 } else { 10 },
            threshold: 0,
            rule: rule.into(),
        }
    }

    fn received(n: u64) -> Counts {
        Counts {
            spans_received: n,
            ..Default::default()
        }
    }

    fn spans(table: &TenantTable, window: Window, now: u64) -> u64 {
        table
            .tenant("acme", window, now)
            .map_or(0, |c| c.spans_received)
    }

    #[test]
    fn counts_leave_each_window_after_its_length_and_stay_since_start() {
        let table = TenantTable::new(10);
        let acme = TenantId::new("acme");
        let t = 1_800_000_000; // a whole hour: bucket-aligned for every ring
        table.add(&acme, t, &received(5));
        for (window, len) in [
            (Window::Minute, 60),
            (Window::FiveMinutes, 300),
            (Window::Hour, 3600),
        ] {
            assert_eq!(spans(&table, window, t), 5, "{window:?} at once");
            assert_eq!(
                spans(&table, window, t + len - 1),
                5,
                "{window:?} {} s later",
                len - 1
            );
            assert_eq!(
                spans(&table, window, t + len),
                0,
                "{window:?} {len} s later"
            );
        }
        assert_eq!(spans(&table, Window::SinceStart, t + 100_000), 5);
    }

    #[test]
    fn windows_slide_over_many_counts() {
        let table = TenantTable::new(10);
        let acme = TenantId::new("acme");
        let t = 1_800_000_000;
        // One span per second for two hours.
        for s in 0..7200 {
            table.add(&acme, t + s, &received(1));
        }
        let now = t + 7199;
        assert_eq!(spans(&table, Window::Minute, now), 60);
        assert_eq!(spans(&table, Window::FiveMinutes, now), 300);
        // The current minute bucket is complete at second 59 of it, so a full hour.
        assert_eq!(spans(&table, Window::Hour, now), 3600);
        assert_eq!(spans(&table, Window::SinceStart, now), 7200);
        // Mid-bucket: the oldest partial bucket has already left.
        let now = t + 7199 + 35; // nothing new; 1m holds the 25 counts of t+7175..t+7199
        assert_eq!(spans(&table, Window::Minute, now), 25);
    }

    #[test]
    fn keep_rates_and_rules_follow_decisions_and_late_spans() {
        let table = TenantTable::new(10);
        let mut tally = Tally::new(10);
        let acme = TenantId::new("acme");
        tally.spans_received(&acme, 10);
        for _ in 0..4 {
            tally.trace_received(&acme);
        }
        tally.decided(
            &acme,
            &decision(true, "errors"),
            4,
            Duration::from_millis(300),
        );
        tally.decided(&acme, &decision(false, "rest"), 2, Duration::from_secs(3));
        tally.decided(&acme, &decision(false, "rest"), 2, Duration::from_secs(3));
        tally.decided(&acme, &decision(true, "rest"), 1, Duration::from_secs(3));
        tally.late(&acme, &decision(true, "errors"), 1);
        tally.flush(&table, 100);
        assert!(tally.is_empty());
        let c = table.tenant("acme", Window::Minute, 100).unwrap();
        assert_eq!(c.traces_decided, 4);
        assert_eq!(c.traces_kept, 2);
        assert_eq!(c.trace_keep_rate(), Some(0.5));
        assert_eq!(c.spans_decided, 10);
        assert_eq!(c.spans_kept, 6);
        assert_eq!(c.span_keep_rate(), Some(0.6));
        assert_eq!(c.spans_dropped_by(DropReason::Sampled), 4);
        assert_eq!(c.late_spans, 1);
        let rest = c.rules.iter().find(|r| &*r.rule == "rest").unwrap();
        assert_eq!((rest.traces_decided, rest.traces_kept), (3, 1));
        let latency = table.decision_latency.buckets();
        assert_eq!(latency.iter().sum::<u64>(), 4);
        assert_eq!(latency[4], 1, "0.3 s falls in the 0.5 s bucket");
    }

    #[test]
    fn tenants_beyond_the_limit_fold_into_other() {
        let table = TenantTable::new(2);
        for name in ["a", "b", "c", "d"] {
            table.add(&TenantId::new(name), 10, &received(1));
        }
        let mut names: Vec<String> = table
            .snapshot(Window::SinceStart, 10)
            .into_iter()
            .map(|(t, c)| format!("{t}={}", c.spans_received))
            .collect();
        names.sort();
        assert_eq!(names, ["_other=2", "a=1", "b=1"]);
        assert_eq!(table.folded(), 2);

        let mut tally = Tally::new(1);
        tally.spans_received(&TenantId::new("x"), 1);
        tally.spans_received(&TenantId::new("y"), 1);
        assert_eq!(tally.counts(&TenantId::new(OTHER_TENANT)).spans_received, 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Cost of counting on the shard's hot path; run with
    /// `cargo test --release --lib counting_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn counting_cost() {
        let tenants: Vec<TenantId> = (0..20).map(|i| TenantId::new(&format!("t{i}"))).collect();
        let d = decision(true, "rule");
        let table = TenantTable::new(1000);
        let mut tally = Tally::new(1000);
        let spans: u64 = 10_000_000;
        let start = std::time::Instant::now();
        // Batches of 50 spans of one tenant, traces of 10 spans: per batch one spans_received,
        // per trace one trace_received and one decided.
        for i in 0..spans / 50 {
            let t = &tenants[(i % 20) as usize];
            tally.spans_received(t, 50);
            for _ in 0..5 {
                tally.trace_received(t);
                tally.decided(t, &d, 10, Duration::from_millis(500));
            }
            if i % 20_000 == 0 {
                tally.flush(&table, i);
            }
        }
        tally.flush(&table, 0);
        let took = start.elapsed();
        println!(
            "counted {spans} spans / {} traces in {took:?}: {:.2} ns per span",
            spans / 10,
            took.as_nanos() as f64 / spans as f64
        );
    }
}
