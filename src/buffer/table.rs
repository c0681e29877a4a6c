//! The synchronous core of one buffer shard: spans grouped by trace id, the timers that say
//! when a trace is ready, the memory budget, and the cache of recent decisions. It takes `now`
//! as a parameter and does no I/O, so tests drive it with any clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{
    CompleteTrace, DecideCause, Decision, SpanRecord, TenantId, TraceId, TraceIdMap, TraceState,
    TraceStatus,
};

/// Limits a shard enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Decide this long after the root span arrived.
    pub root_grace: Duration,
    /// Decide at the latest this long after the first span.
    pub trace_timeout: Duration,
    /// Decide when a trace holds this many spans.
    pub max_spans_per_trace: usize,
    /// Above this many accounted bytes, the oldest traces are decided early.
    pub max_bytes: usize,
    /// Decisions remembered for late spans.
    pub decision_cache: usize,
}

/// Something the shard hands to its driver.
#[derive(Debug)]
pub enum Ready {
    /// A trace to decide.
    Trace {
        /// The trace.
        trace: CompleteTrace,
        /// When its first span arrived (for the decision-latency histogram).
        first_seen: Instant,
    },
    /// Spans of a trace decided earlier: they follow that decision.
    Late {
        /// The tenant of the spans.
        tenant: TenantId,
        /// The earlier decision.
        decision: Decision,
        /// The late spans.
        spans: Vec<SpanRecord>,
    },
}

struct Entry {
    spans: Vec<SpanRecord>,
    tenant: TenantId,
    first_seen: Instant,
    deadline: Instant,
    has_root: bool,
    bytes: usize,
}

/// A remembered decision, with what the admin API reports about the trace.
struct Remembered {
    decision: Decision,
    tenant: TenantId,
    spans: u64,
}

/// A buffered trace leaving this shard for its new owner.
#[derive(Debug)]
pub struct Departing {
    /// The trace.
    pub trace_id: TraceId,
    /// Every span held for it.
    pub spans: Vec<SpanRecord>,
    /// When its first span arrived here (or at its previous owner).
    pub first_seen: Instant,
    /// The root span has arrived.
    pub root_seen: bool,
}

/// A remembered decision leaving this shard for the trace's new owner, so late spans that
/// reach the new owner follow it instead of starting a second, partial trace.
#[derive(Clone, Debug)]
pub struct HandedDecision {
    /// The decided trace.
    pub trace_id: TraceId,
    /// What was decided.
    pub decision: Decision,
    /// The trace's tenant.
    pub tenant: TenantId,
    /// Spans the decision covered.
    pub spans: u64,
}

fn first_seen_timeout(first_seen: Instant, limits: &Limits) -> Instant {
    first_seen + limits.trace_timeout
}

/// One shard's traces.
pub struct Table {
    limits: Limits,
    traces: TraceIdMap<Entry>,
    deadlines: BinaryHeap<Reverse<(Instant, TraceId)>>,
    arrivals: VecDeque<(Instant, TraceId)>,
    decisions: TraceIdMap<Remembered>,
    decision_order: VecDeque<TraceId>,
    bytes: usize,
    spans: usize,
}

/// Counts a shard reports after each step, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Traces held.
    pub traces: usize,
    /// Spans held.
    pub spans: usize,
    /// Accounted bytes held.
    pub bytes: usize,
}

impl Table {
    /// An empty shard.
    pub fn new(limits: Limits) -> Self {
        Table {
            limits,
            traces: TraceIdMap::default(),
            deadlines: BinaryHeap::new(),
            arrivals: VecDeque::new(),
            decisions: TraceIdMap::default(),
            decision_order: VecDeque::new(),
            bytes: 0,
            spans: 0,
        }
    }

    /// What the shard holds now.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            traces: self.traces.len(),
            spans: self.spans,
            bytes: self.bytes,
        }
    }

    /// Adds spans; traces that became ready (span limit, memory pressure, due timers) and late
    /// spans are appended to `out`.
    pub fn insert(&mut self, batch: Vec<SpanRecord>, now: Instant, out: &mut Vec<Ready>) {
        self.insert_with(batch, now, out, &mut |_| {});
    }

    /// [`Table::insert`], calling `new_trace` with the tenant of every trace first seen.
    pub fn insert_with(
        &mut self,
        batch: Vec<SpanRecord>,
        now: Instant,
        out: &mut Vec<Ready>,
        new_trace: &mut dyn FnMut(&TenantId),
    ) {
        let mut late: Vec<(TraceId, SpanRecord)> = Vec::new();
        for span in batch {
            let trace_id = span.index.trace_id;
            let vacant = match self.traces.entry(trace_id) {
                std::collections::hash_map::Entry::Occupied(entry) => {
                    let entry = entry.into_mut();
                    if span.index.is_root() && !entry.has_root {
                        entry.has_root = true;
                        let due = now + self.limits.root_grace;
                        if due < entry.deadline {
                            entry.deadline = due;
                            self.deadlines.push(Reverse((due, trace_id)));
                        }
                    }
                    let size = span.accounted_bytes();
                    entry.bytes += size;
                    self.bytes += size;
                    self.spans += 1;
                    entry.spans.push(span);
                    if entry.spans.len() >= self.limits.max_spans_per_trace {
                        self.complete(trace_id, DecideCause::SpanLimit, out);
                    }
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(vacant) => vacant,
            };
            if self.decisions.contains_key(&trace_id) {
                late.push((trace_id, span));
                continue;
            }
            let is_root = span.index.is_root();
            let deadline = now
                + if is_root {
                    self.limits.root_grace
                } else {
                    self.limits.trace_timeout
                };
            let size = span.accounted_bytes();
            self.bytes += size;
            self.spans += 1;
            let tenant = span.origin.tenant.clone();
            new_trace(&tenant);
            // Traces average ~10 spans; starting at 4 skips the 1-element allocation.
            let mut spans = Vec::with_capacity(4);
            spans.push(span);
            vacant.insert(Entry {
                spans,
                tenant,
                first_seen: now,
                deadline,
                has_root: is_root,
                bytes: size,
            });
            self.deadlines.push(Reverse((deadline, trace_id)));
            self.arrivals.push_back((now, trace_id));
            if self.limits.max_spans_per_trace <= 1 {
                self.complete(trace_id, DecideCause::SpanLimit, out);
            }
        }
        self.emit_late(late, out);
        self.relieve_memory_pressure(out);
        self.expire(now, out);
    }

    fn emit_late(&mut self, mut late: Vec<(TraceId, SpanRecord)>, out: &mut Vec<Ready>) {
        if late.is_empty() {
            return;
        }
        late.sort_by_key(|(id, _)| *id);
        let mut current: Option<(TraceId, Vec<SpanRecord>)> = None;
        for (id, span) in late {
            match &mut current {
                Some((cid, spans)) if *cid == id => spans.push(span),
                _ => {
                    if let Some((cid, spans)) = current.take() {
                        self.push_late(cid, spans, out);
                    }
                    current = Some((id, vec![span]));
                }
            }
        }
        if let Some((cid, spans)) = current {
            self.push_late(cid, spans, out);
        }
    }

    fn push_late(&mut self, trace_id: TraceId, spans: Vec<SpanRecord>, out: &mut Vec<Ready>) {
        if let Some(known) = self.decisions.get_mut(&trace_id) {
            known.spans += spans.len() as u64;
            out.push(Ready::Late {
                tenant: spans[0].origin.tenant.clone(),
                decision: known.decision.clone(),
                spans,
            });
        }
    }

    /// Decides oldest-first while the shard is over its byte budget.
    fn relieve_memory_pressure(&mut self, out: &mut Vec<Ready>) {
        while self.bytes > self.limits.max_bytes {
            let Some((seen, trace_id)) = self.arrivals.pop_front() else {
                break;
            };
            let current = self.traces.get(&trace_id).map(|e| e.first_seen);
            if current == Some(seen) {
                self.complete(trace_id, DecideCause::MemoryPressure, out);
            }
        }
    }

    /// Moves every trace whose timer is due to `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Ready>) {
        while let Some(Reverse((due, trace_id))) = self.deadlines.peek().copied() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            let cause = match self.traces.get(&trace_id) {
                Some(e) if e.deadline == due => {
                    if e.has_root {
                        DecideCause::RootGrace
                    } else {
                        DecideCause::Timeout
                    }
                }
                _ => continue, // decided already, or its deadline moved earlier
            };
            self.complete(trace_id, cause, out);
        }
        // Keep the arrival queue from growing with decided traces' ids.
        while let Some((seen, id)) = self.arrivals.front() {
            match self.traces.get(id) {
                Some(e) if e.first_seen == *seen => break,
                _ => {
                    self.arrivals.pop_front();
                }
            }
        }
    }

    /// Takes every buffered trace for which `owned_elsewhere` is true out of the table (their
    /// owner changed with the membership): spans, first-seen time and whether the root came.
    /// The caller hands them to their new owner; this shard forgets them.
    pub fn take_where(&mut self, owned_elsewhere: &dyn Fn(&TraceId) -> bool) -> Vec<Departing> {
        let ids: Vec<TraceId> = self
            .traces
            .keys()
            .filter(|id| owned_elsewhere(id))
            .copied()
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for trace_id in ids {
            if let Some(entry) = self.traces.remove(&trace_id) {
                self.bytes -= entry.bytes;
                self.spans -= entry.spans.len();
                out.push(Departing {
                    trace_id,
                    spans: entry.spans,
                    first_seen: entry.first_seen,
                    root_seen: entry.has_root,
                });
            }
        }
        // Timer and arrival entries of the departed traces are skipped lazily (their trace is
        // gone), exactly as for decided traces.
        out
    }

    /// Takes every remembered decision for which `owned_elsewhere` is true out of the cache,
    /// for the trace's new owner.
    pub fn take_decisions_where(
        &mut self,
        owned_elsewhere: &dyn Fn(&TraceId) -> bool,
    ) -> Vec<HandedDecision> {
        let ids: Vec<TraceId> = self
            .decisions
            .keys()
            .filter(|id| owned_elsewhere(id))
            .copied()
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(ids.len());
        for trace_id in ids {
            if let Some(r) = self.decisions.remove(&trace_id) {
                out.push(HandedDecision {
                    trace_id,
                    decision: r.decision,
                    tenant: r.tenant,
                    spans: r.spans,
                });
            }
        }
        let decisions = &self.decisions;
        self.decision_order.retain(|id| decisions.contains_key(id));
        out
    }

    /// Remembers decisions handed over by the traces' previous owner. Spans of such a trace
    /// already buffered here (late spans that came before the decision did) follow it now.
    pub fn accept_decisions(&mut self, handed: Vec<HandedDecision>, out: &mut Vec<Ready>) {
        for h in handed {
            if let Some(entry) = self.traces.remove(&h.trace_id) {
                self.bytes -= entry.bytes;
                self.spans -= entry.spans.len();
                out.push(Ready::Late {
                    tenant: entry.tenant,
                    decision: h.decision.clone(),
                    spans: entry.spans,
                });
            }
            if !self.decisions.contains_key(&h.trace_id) {
                self.remember(h.trace_id, h.decision, h.tenant, h.spans);
            }
        }
    }

    /// Adds spans of a trace handed over by its previous owner: the trace keeps the deadline
    /// it had there (first seen at `first_seen`, root seen or not) instead of starting again.
    /// Spans of a trace decided here already follow that decision.
    pub fn adopt(
        &mut self,
        spans: Vec<SpanRecord>,
        first_seen: Instant,
        root_seen: bool,
        now: Instant,
        out: &mut Vec<Ready>,
        new_trace: &mut dyn FnMut(&TenantId),
    ) {
        let Some(first) = spans.first() else {
            return;
        };
        let trace_id = first.index.trace_id;
        if self.decisions.contains_key(&trace_id) && !self.traces.contains_key(&trace_id) {
            self.push_late(trace_id, spans, out);
            return;
        }
        let timeout_at = first_seen + self.limits.trace_timeout;
        let root_seen = root_seen || spans.iter().any(|s| s.index.is_root());
        let root_at = now + self.limits.root_grace;
        let bytes: usize = spans.iter().map(SpanRecord::accounted_bytes).sum();
        self.bytes += bytes;
        self.spans += spans.len();
        let entry = match self.traces.entry(trace_id) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let e = e.into_mut();
                e.first_seen = e.first_seen.min(first_seen);
                e.has_root |= root_seen;
                e.spans.extend(spans);
                e.bytes += bytes;
                e
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                let tenant = first.origin.tenant.clone();
                new_trace(&tenant);
                self.arrivals.push_back((first_seen, trace_id));
                v.insert(Entry {
                    spans,
                    tenant,
                    first_seen,
                    deadline: timeout_at,
                    has_root: root_seen,
                    bytes,
                })
            }
        };
        let mut due = entry
            .deadline
            .min(first_seen_timeout(entry.first_seen, &self.limits));
        if entry.has_root {
            due = due.min(root_at);
        }
        // A stale heap entry for the old deadline is skipped when it comes up.
        entry.deadline = due;
        self.deadlines.push(Reverse((due, trace_id)));
        let full = entry.spans.len() >= self.limits.max_spans_per_trace;
        if full {
            self.complete(trace_id, DecideCause::SpanLimit, out);
        }
        self.relieve_memory_pressure(out);
        self.expire(now, out);
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((due, _))| *due)
    }

    /// Hands out every buffered trace (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Ready>) {
        let ids: Vec<TraceId> = self.traces.keys().copied().collect();
        for id in ids {
            self.complete(id, DecideCause::Shutdown, out);
        }
        self.deadlines.clear();
        self.arrivals.clear();
    }

    /// Remembers a decision so late spans of the trace follow it (and the admin API can tell
    /// the trace's tenant and span count).
    pub fn remember(
        &mut self,
        trace_id: TraceId,
        decision: Decision,
        tenant: TenantId,
        spans: u64,
    ) {
        if self.limits.decision_cache == 0 {
            return;
        }
        let known = Remembered {
            decision,
            tenant,
            spans,
        };
        if self.decisions.insert(trace_id, known).is_none() {
            self.decision_order.push_back(trace_id);
            while self.decision_order.len() > self.limits.decision_cache {
                if let Some(old) = self.decision_order.pop_front() {
                    self.decisions.remove(&old);
                }
            }
        }
    }

    /// The remembered decision for a trace, if any.
    pub fn decision(&self, trace_id: &TraceId) -> Option<&Decision> {
        self.decisions.get(trace_id).map(|r| &r.decision)
    }

    /// Where a trace stands: buffered, decided (while its decision is remembered), or unknown.
    pub fn lookup(&self, trace_id: &TraceId) -> Option<TraceStatus> {
        if let Some(entry) = self.traces.get(trace_id) {
            return Some(TraceStatus {
                state: TraceState::Pending,
                tenant: entry.tenant.clone(),
                spans: entry.spans.len() as u64,
            });
        }
        self.decisions.get(trace_id).map(|r| TraceStatus {
            state: TraceState::Decided(r.decision.clone()),
            tenant: r.tenant.clone(),
            spans: r.spans,
        })
    }

    fn complete(&mut self, trace_id: TraceId, cause: DecideCause, out: &mut Vec<Ready>) {
        if let Some(entry) = self.traces.remove(&trace_id) {
            self.bytes -= entry.bytes;
            self.spans -= entry.spans.len();
            out.push(Ready::Trace {
                trace: CompleteTrace::new(trace_id, entry.tenant, entry.spans, cause),
                first_seen: entry.first_seen,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, SpanIndex};
    use std::sync::Arc;

    fn limits() -> Limits {
        Limits {
            root_grace: Duration::from_secs(2),
            trace_timeout: Duration::from_secs(30),
            max_spans_per_trace: 100,
            max_bytes: 1 << 30,
            decision_cache: 10,
        }
    }

    fn span(trace: u8, id: u8, parent: u8) -> SpanRecord {
        let mut index = SpanIndex {
            trace_id: TraceId([trace; 16]),
            span_id: [id; 8],
            ..Default::default()
        };
        if parent != 0 {
            index.parent_span_id = [parent; 8];
        }
        SpanRecord {
            bytes: bytes::Bytes::from(vec![0u8; 100]),
            origin: Arc::new(Origin {
                tenant: TenantId::new("t"),
                resource: Default::default(),
                resource_schema_url: Default::default(),
                scope: Default::default(),
                scope_schema_url: Default::default(),
                content_hash: 0,
            }),
            index,
        }
    }

    fn traces(out: &[Ready]) -> Vec<(TraceId, usize, DecideCause)> {
        out.iter()
            .filter_map(|r| match r {
                Ready::Trace { trace: t, .. } => Some((t.trace_id, t.spans.len(), t.cause)),
                Ready::Late { .. } => None,
            })
            .collect()
    }

    fn decision() -> Decision {
        Decision {
            keep: true,
            sample_rate: 1,
            threshold: 0,
            rule: "r".into(),
        }
    }

    #[test]
    fn trace_is_decided_root_grace_after_its_root() {
        let mut t = Table::new(limits());
        let start = Instant::now();
        let mut out = Vec::new();
        t.insert(vec![span(1, 2, 1)], start, &mut out);
        t.insert(
            vec![span(1, 1, 0)],
            start + Duration::from_secs(1),
            &mut out,
        );
        t.expire(start + Duration::from_millis(2900), &mut out);
        assert!(out.is_empty());
        t.expire(start + Duration::from_secs(3), &mut out);
        assert_eq!(
            traces(&out),
            vec![(TraceId([1; 16]), 2, DecideCause::RootGrace)]
        );
        assert_eq!(t.occupancy(), Occupancy::default());
    }

    #[test]
    fn trace_without_root_is_decided_at_timeout() {
        let mut t = Table::new(limits());
        let start = Instant::now();
        let mut out = Vec::new();
        t.insert(vec![span(1, 2, 1)], start, &mut out);
        t.expire(start + Duration::from_secs(29), &mut out);
        assert!(out.is_empty());
        assert_eq!(t.next_deadline(), Some(start + Duration::from_secs(30)));
        t.expire(start + Duration::from_secs(30), &mut out);
        assert_eq!(
            traces(&out),
            vec![(TraceId([1; 16]), 1, DecideCause::Timeout)]
        );
    }

    #[test]
    fn span_limit_decides_at_once_and_later_spans_are_late() {
        let mut l = limits();
        l.max_spans_per_trace = 3;
        let mut t = Table::new(l);
        let now = Instant::now();
        let mut out = Vec::new();
        t.insert(
            vec![span(1, 1, 0), span(1, 2, 1), span(1, 3, 1)],
            now,
            &mut out,
        );
        assert_eq!(
            traces(&out),
            vec![(TraceId([1; 16]), 3, DecideCause::SpanLimit)]
        );
        t.remember(TraceId([1; 16]), decision(), TenantId::new("t"), 3);
        out.clear();
        t.insert(vec![span(1, 4, 1), span(1, 5, 1)], now, &mut out);
        match &out[..] {
            [Ready::Late {
                spans, decision, ..
            }] => {
                assert_eq!(spans.len(), 2);
                assert!(decision.keep);
            }
            other => panic!("expected late spans, got {other:?}"),
        }
    }

    #[test]
    fn memory_pressure_decides_oldest_traces_first() {
        let mut l = limits();
        l.max_bytes = 3 * span(1, 1, 0).accounted_bytes();
        let mut t = Table::new(l);
        let now = Instant::now();
        let mut out = Vec::new();
        for trace in 1..=4u8 {
            t.insert(
                vec![span(trace, 1, 9)],
                now + Duration::from_millis(trace.into()),
                &mut out,
            );
        }
        assert_eq!(
            traces(&out),
            vec![(TraceId([1; 16]), 1, DecideCause::MemoryPressure)]
        );
        assert_eq!(t.occupancy().traces, 3);
    }

    #[test]
    fn drain_hands_out_everything_and_cache_is_bounded() {
        let mut t = Table::new(limits());
        let now = Instant::now();
        let mut out = Vec::new();
        for trace in 1..=20u8 {
            t.insert(vec![span(trace, 1, 0)], now, &mut out);
        }
        t.drain(&mut out);
        assert_eq!(traces(&out).len(), 20);
        for trace in 1..=20u8 {
            t.remember(TraceId([trace; 16]), decision(), TenantId::new("t"), 1);
        }
        assert!(t.decision(&TraceId([1; 16])).is_none());
        assert!(t.decision(&TraceId([20; 16])).is_some());
    }

    #[test]
    fn lookup_tells_pending_then_decided_with_late_spans_counted() {
        let mut t = Table::new(limits());
        let now = Instant::now();
        let mut out = Vec::new();
        let id = TraceId([1; 16]);
        assert!(t.lookup(&id).is_none());
        let mut seen = Vec::new();
        t.insert_with(
            vec![span(1, 2, 1), span(1, 3, 1)],
            now,
            &mut out,
            &mut |tenant| seen.push(tenant.clone()),
        );
        assert_eq!(seen, vec![TenantId::new("t")], "one new trace");
        let status = t.lookup(&id).unwrap();
        assert!(matches!(status.state, TraceState::Pending));
        assert_eq!(status.spans, 2);
        t.drain(&mut out);
        t.remember(id, decision(), TenantId::new("t"), 2);
        t.insert(vec![span(1, 4, 1)], now, &mut out);
        let status = t.lookup(&id).unwrap();
        assert!(matches!(status.state, TraceState::Decided(ref d) if d.keep));
        assert_eq!(status.spans, 3, "the late span follows and is counted");
    }
}
