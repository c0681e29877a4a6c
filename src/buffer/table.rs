//! The synchronous core of one buffer shard: spans grouped by trace id, the timers that say
//! when a trace is ready, the memory budget, and the cache of recent decisions. It takes `now`
//! as a parameter and does no I/O, so tests drive it with any clock.
//!
//! Layout (issue 14): trace entries live in a slab (`Vec` + free list) addressed by `u32`
//! slot, and the trace-id map holds only the slot, so the map stays small and a rehash moves
//! 20-byte pairs. Timers are coarse buckets walked in time order (a timer wheel with
//! growable span); an entry's timer is valid while the slot's generation and deadline match,
//! so a deadline that moves earlier (the root arrived) just leaves a stale timer behind to be
//! skipped. The arrival order for memory-pressure eviction is a queue of (slot, generation).
//! The decision cache is a ring of remembered decisions with a map from trace id to ring slot.
//! Spans of one trace that arrive next to each other in a batch are added as one run: one
//! map lookup and one exact reservation per run instead of per span, and no doubling slack.

use std::collections::VecDeque;
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
    trace_id: TraceId,
    spans: Vec<SpanRecord>,
    tenant: TenantId,
    first_seen: Instant,
    deadline: Instant,
    bytes: usize,
    has_root: bool,
}

/// A slab slot: the entry while the trace is buffered, and a generation bumped every time the
/// slot is freed, so timers and arrival records of an earlier occupant are recognised.
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// A timer: slot `slot` is due at `deadline` if it still holds generation `generation` with
/// that deadline.
#[derive(Clone, Copy)]
struct Timer {
    deadline: Instant,
    slot: u32,
    generation: u32,
}

/// A remembered decision, with what the admin API reports about the trace.
struct Remembered {
    trace_id: TraceId,
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

/// Buckets the longest timer spans at most (bounds the wheel's length, not its precision:
/// timers in the current bucket are compared exactly).
const WHEEL_BUCKETS: u32 = 8192;

/// Timer buckets in time order, starting at absolute bucket `base`.
struct Wheel {
    epoch: Instant,
    granularity_nanos: u64,
    base: u64,
    buckets: VecDeque<Vec<Timer>>,
    spare: Vec<Vec<Timer>>,
}

impl Wheel {
    fn new(epoch: Instant, limits: &Limits) -> Wheel {
        let longest = limits.root_grace.max(limits.trace_timeout);
        let granularity = (longest / WHEEL_BUCKETS).max(Duration::from_millis(1));
        Wheel {
            epoch,
            granularity_nanos: granularity.as_nanos().min(u128::from(u64::MAX)) as u64,
            base: 0,
            buckets: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    fn bucket(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        (nanos / u128::from(self.granularity_nanos)).min(u128::from(u64::MAX)) as u64
    }

    fn push(&mut self, timer: Timer) {
        let mut b = self.bucket(timer.deadline);
        if self.buckets.is_empty() {
            // No timers: start the wheel at this one (the shard may have been idle a while,
            // with nothing calling `expire`).
            self.base = self.base.max(b);
        }
        // An earlier deadline joins the front bucket, which `expire` compares exactly.
        b = b.max(self.base);
        let index = (b - self.base) as usize;
        while self.buckets.len() <= index {
            let v = self.spare.pop().unwrap_or_default();
            self.buckets.push_back(v);
        }
        self.buckets[index].push(timer);
    }

    fn recycle(&mut self, mut v: Vec<Timer>) {
        v.clear();
        if self.spare.len() < 64 {
            self.spare.push(v);
        }
    }

    fn clear(&mut self) {
        while let Some(v) = self.buckets.pop_front() {
            self.recycle(v);
        }
    }
}

/// One shard's traces.
pub struct Table {
    limits: Limits,
    traces: TraceIdMap<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    wheel: Wheel,
    arrivals: VecDeque<(u32, u32)>,
    decisions: TraceIdMap<u32>,
    ring: Vec<Option<Remembered>>,
    ring_next: usize,
    bytes: usize,
    spans: usize,
    late: Vec<(TraceId, SpanRecord)>,
    due: Vec<Timer>,
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
        let wheel = Wheel::new(Instant::now(), &limits);
        Table {
            limits,
            traces: TraceIdMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            wheel,
            arrivals: VecDeque::new(),
            decisions: TraceIdMap::default(),
            ring: Vec::new(),
            ring_next: 0,
            bytes: 0,
            spans: 0,
            late: Vec::new(),
            due: Vec::new(),
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
        let mut late = std::mem::take(&mut self.late);
        let limit = self.limits.max_spans_per_trace;
        let mut spans = batch.into_iter();
        while let Some(first) = spans.next() {
            let trace_id = first.index.trace_id;
            // Spans of this trace right behind it in the batch (one service's spans of the
            // trace in one request, as SDKs send them): added as one run.
            let mut remaining = spans
                .as_slice()
                .iter()
                .take_while(|s| s.index.trace_id == trace_id)
                .count();
            let mut pending = Some(first);
            loop {
                let span = match pending.take() {
                    Some(span) => span,
                    None if remaining > 0 => {
                        remaining -= 1;
                        match spans.next() {
                            Some(span) => span,
                            None => break,
                        }
                    }
                    None => break,
                };
                let run = remaining + 1;
                let slot = match self.traces.get(&trace_id) {
                    Some(&slot) => {
                        self.add(slot, span, run, now);
                        slot
                    }
                    None if self.decisions.contains_key(&trace_id) => {
                        late.push((trace_id, span));
                        for _ in 0..remaining {
                            if let Some(span) = spans.next() {
                                late.push((trace_id, span));
                            }
                        }
                        break;
                    }
                    None => self.open(span, run, now, new_trace),
                };
                let held = self.slots[slot as usize]
                    .entry
                    .as_ref()
                    .map_or(0, |e| e.spans.len());
                let take = remaining.min(limit.saturating_sub(held));
                for _ in 0..take {
                    if let Some(span) = spans.next() {
                        self.add(slot, span, 0, now);
                    }
                }
                remaining -= take;
                if held + take >= limit {
                    // Spans of the run after the limit start a new trace, as separate
                    // requests would.
                    self.complete_slot(slot, DecideCause::SpanLimit, out);
                    continue;
                }
                break;
            }
        }
        self.emit_late(&mut late, out);
        self.late = late;
        self.relieve_memory_pressure(out);
        self.expire(now, out);
    }

    /// Starts a trace with its first span (room for `run` spans): a slab slot, its timer and
    /// its arrival record.
    fn open(
        &mut self,
        span: SpanRecord,
        run: usize,
        now: Instant,
        new_trace: &mut dyn FnMut(&TenantId),
    ) -> u32 {
        let trace_id = span.index.trace_id;
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
        let mut spans = Vec::with_capacity(run.min(self.limits.max_spans_per_trace).max(1));
        spans.push(span);
        self.alloc(Entry {
            trace_id,
            spans,
            tenant,
            first_seen: now,
            deadline,
            bytes: size,
            has_root: is_root,
        })
    }

    /// Adds a span to a held trace. When the vector is full it grows by `run` (the spans of
    /// this trace arriving together) but at least a quarter, so growth stays geometric.
    fn add(&mut self, slot: u32, span: SpanRecord, run: usize, now: Instant) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = s.generation;
        let Some(entry) = s.entry.as_mut() else {
            return;
        };
        if span.index.is_root() && !entry.has_root {
            entry.has_root = true;
            let due = now + self.limits.root_grace;
            if due < entry.deadline {
                entry.deadline = due;
                // The timer for the old deadline is stale now and skipped when it comes up.
                self.wheel.push(Timer {
                    deadline: due,
                    slot,
                    generation,
                });
            }
        }
        let len = entry.spans.len();
        if len == entry.spans.capacity() {
            entry.spans.reserve_exact(run.max(len / 4).max(1));
        }
        let size = span.accounted_bytes();
        entry.bytes += size;
        self.bytes += size;
        self.spans += 1;
        entry.spans.push(span);
    }

    /// Puts an entry in a free slot (or a new one), maps its trace id to it, and starts its
    /// timer and arrival record.
    fn alloc(&mut self, entry: Entry) -> u32 {
        let trace_id = entry.trace_id;
        let deadline = entry.deadline;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].entry = Some(entry);
                slot
            }
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                slot
            }
        };
        let generation = self.slots[slot as usize].generation;
        self.traces.insert(trace_id, slot);
        self.wheel.push(Timer {
            deadline,
            slot,
            generation,
        });
        self.arrivals.push_back((slot, generation));
        slot
    }

    /// Frees a slot, returning its entry (the trace-id mapping is removed too).
    fn release(&mut self, slot: u32) -> Option<Entry> {
        let s = self.slots.get_mut(slot as usize)?;
        let entry = s.entry.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.traces.remove(&entry.trace_id);
        self.bytes -= entry.bytes;
        self.spans -= entry.spans.len();
        Some(entry)
    }

    fn live(&self, slot: u32, generation: u32) -> Option<&Entry> {
        let s = self.slots.get(slot as usize)?;
        if s.generation != generation {
            return None;
        }
        s.entry.as_ref()
    }

    fn emit_late(&mut self, late: &mut Vec<(TraceId, SpanRecord)>, out: &mut Vec<Ready>) {
        if late.is_empty() {
            return;
        }
        late.sort_by_key(|(id, _)| *id);
        let mut current: Option<(TraceId, Vec<SpanRecord>)> = None;
        for (id, span) in late.drain(..) {
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
        let Some(&at) = self.decisions.get(&trace_id) else {
            return;
        };
        if let Some(Some(known)) = self.ring.get_mut(at as usize) {
            known.spans += spans.len() as u64;
            let Some(first) = spans.first() else {
                return;
            };
            out.push(Ready::Late {
                tenant: first.origin.tenant.clone(),
                decision: known.decision.clone(),
                spans,
            });
        }
    }

    /// Decides oldest-first while the shard is over its byte budget.
    fn relieve_memory_pressure(&mut self, out: &mut Vec<Ready>) {
        while self.bytes > self.limits.max_bytes {
            let Some((slot, generation)) = self.arrivals.pop_front() else {
                break;
            };
            if self.live(slot, generation).is_some() {
                self.complete_slot(slot, DecideCause::MemoryPressure, out);
            }
        }
    }

    /// Moves every trace whose timer is due to `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Ready>) {
        if self.traces.is_empty() {
            // Every timer left is stale.
            self.wheel.clear();
            self.arrivals.clear();
            return;
        }
        let current = self.wheel.bucket(now);
        // Whole buckets before the current one are due.
        while self.wheel.base < current {
            let Some(bucket) = self.wheel.buckets.pop_front() else {
                self.wheel.base = current;
                break;
            };
            self.wheel.base += 1;
            for timer in &bucket {
                self.fire(*timer, out);
            }
            self.wheel.recycle(bucket);
        }
        // In the current bucket, only timers at or before `now`.
        if let Some(bucket) = self.wheel.buckets.front_mut() {
            if bucket.iter().any(|t| t.deadline <= now) {
                let mut due = std::mem::take(&mut self.due);
                bucket.retain(|t| {
                    if t.deadline <= now {
                        due.push(*t);
                        false
                    } else {
                        true
                    }
                });
                for timer in due.drain(..) {
                    self.fire(timer, out);
                }
                self.due = due;
            }
        }
        // Keep the arrival queue from growing with decided traces' slots.
        while let Some(&(slot, generation)) = self.arrivals.front() {
            if self.live(slot, generation).is_some() {
                break;
            }
            self.arrivals.pop_front();
        }
    }

    fn fire(&mut self, timer: Timer, out: &mut Vec<Ready>) {
        let cause = match self.live(timer.slot, timer.generation) {
            Some(e) if e.deadline == timer.deadline => {
                if e.has_root {
                    DecideCause::RootGrace
                } else {
                    DecideCause::Timeout
                }
            }
            _ => return, // decided already, or its deadline moved earlier
        };
        self.complete_slot(timer.slot, cause, out);
    }

    /// Takes every buffered trace for which `owned_elsewhere` is true out of the table (their
    /// owner changed with the membership): spans, first-seen time and whether the root came.
    /// The caller hands them to their new owner; this shard forgets them.
    pub fn take_where(&mut self, owned_elsewhere: &dyn Fn(&TraceId) -> bool) -> Vec<Departing> {
        let slots: Vec<u32> = self
            .traces
            .iter()
            .filter(|(id, _)| owned_elsewhere(id))
            .map(|(_, slot)| *slot)
            .collect();
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            if let Some(entry) = self.release(slot) {
                out.push(Departing {
                    trace_id: entry.trace_id,
                    spans: entry.spans,
                    first_seen: entry.first_seen,
                    root_seen: entry.has_root,
                });
            }
        }
        // Timers and arrival records of the departed traces are skipped lazily (their slot's
        // generation moved on), exactly as for decided traces.
        out
    }

    /// Takes every remembered decision for which `owned_elsewhere` is true out of the cache,
    /// for the trace's new owner.
    pub fn take_decisions_where(
        &mut self,
        owned_elsewhere: &dyn Fn(&TraceId) -> bool,
    ) -> Vec<HandedDecision> {
        let at: Vec<u32> = self
            .decisions
            .iter()
            .filter(|(id, _)| owned_elsewhere(id))
            .map(|(_, at)| *at)
            .collect();
        if at.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(at.len());
        for i in at {
            if let Some(r) = self.ring.get_mut(i as usize).and_then(Option::take) {
                self.decisions.remove(&r.trace_id);
                out.push(HandedDecision {
                    trace_id: r.trace_id,
                    decision: r.decision,
                    tenant: r.tenant,
                    spans: r.spans,
                });
            }
        }
        // Close the gaps, oldest first, so the cache holds `decision_cache` decisions again.
        let mut ring = std::mem::take(&mut self.ring);
        ring.rotate_left(self.ring_next);
        self.ring = ring.into_iter().flatten().map(Some).collect();
        self.ring_next = 0;
        for (i, r) in self.ring.iter().enumerate() {
            if let Some(r) = r {
                self.decisions.insert(r.trace_id, i as u32);
            }
        }
        out
    }

    /// Remembers decisions handed over by the traces' previous owner. Spans of such a trace
    /// already buffered here (late spans that came before the decision did) follow it now.
    pub fn accept_decisions(&mut self, handed: Vec<HandedDecision>, out: &mut Vec<Ready>) {
        for h in handed {
            if let Some(&slot) = self.traces.get(&h.trace_id) {
                if let Some(entry) = self.release(slot) {
                    out.push(Ready::Late {
                        tenant: entry.tenant,
                        decision: h.decision.clone(),
                        spans: entry.spans,
                    });
                }
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
        let existing = self.traces.get(&trace_id).copied();
        if existing.is_none() && self.decisions.contains_key(&trace_id) {
            self.push_late(trace_id, spans, out);
            return;
        }
        let timeout_at = first_seen + self.limits.trace_timeout;
        let root_seen = root_seen || spans.iter().any(|s| s.index.is_root());
        let root_at = now + self.limits.root_grace;
        let bytes: usize = spans.iter().map(SpanRecord::accounted_bytes).sum();
        let count = spans.len();
        let slot = match existing {
            Some(slot) => {
                self.bytes += bytes;
                self.spans += count;
                if let Some(e) = self.slots[slot as usize].entry.as_mut() {
                    e.first_seen = e.first_seen.min(first_seen);
                    e.has_root |= root_seen;
                    e.spans.extend(spans);
                    e.bytes += bytes;
                }
                slot
            }
            None => {
                let tenant = first.origin.tenant.clone();
                new_trace(&tenant);
                self.bytes += bytes;
                self.spans += count;
                self.alloc(Entry {
                    trace_id,
                    spans,
                    tenant,
                    first_seen,
                    deadline: timeout_at,
                    bytes,
                    has_root: root_seen,
                })
            }
        };
        let generation = self.slots[slot as usize].generation;
        let limits = &self.limits;
        let Some(entry) = self.slots[slot as usize].entry.as_mut() else {
            return;
        };
        let mut due = entry.deadline.min(entry.first_seen + limits.trace_timeout);
        if entry.has_root {
            due = due.min(root_at);
        }
        let full = entry.spans.len() >= limits.max_spans_per_trace;
        if due != entry.deadline {
            // A timer for the old deadline is stale now and skipped when it comes up.
            entry.deadline = due;
            self.wheel.push(Timer {
                deadline: due,
                slot,
                generation,
            });
        }
        if full {
            self.complete_slot(slot, DecideCause::SpanLimit, out);
        }
        self.relieve_memory_pressure(out);
        self.expire(now, out);
    }

    /// When the shard should next call [`Table::expire`]: the earliest timer of the first
    /// non-empty bucket. That timer may be stale (its trace was decided, or its deadline moved
    /// earlier), which costs one wake-up that finds nothing due; checking each timer's trace
    /// here instead would be a cache miss per timer on every turn of the shard loop.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.wheel
            .buckets
            .iter()
            .find(|b| !b.is_empty())
            .and_then(|b| b.iter().map(|t| t.deadline).min())
    }

    /// Hands out every buffered trace (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Ready>) {
        for slot in 0..self.slots.len() as u32 {
            self.complete_slot(slot, DecideCause::Shutdown, out);
        }
        self.wheel.clear();
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
        let capacity = self.limits.decision_cache;
        if capacity == 0 {
            return;
        }
        let known = Remembered {
            trace_id,
            decision,
            tenant,
            spans,
        };
        if let Some(&at) = self.decisions.get(&trace_id) {
            // Known already: the newer value replaces it, in its place in the order.
            if let Some(r) = self.ring.get_mut(at as usize) {
                *r = Some(known);
            }
            return;
        }
        let at = if self.ring.len() < capacity {
            self.ring.push(Some(known));
            self.ring.len() - 1
        } else {
            let at = self.ring_next;
            if let Some(old) = self.ring[at].replace(known) {
                self.decisions.remove(&old.trace_id);
            }
            self.ring_next = (at + 1) % capacity;
            at
        };
        self.decisions.insert(trace_id, at as u32);
    }

    /// The remembered decision for a trace, if any.
    pub fn decision(&self, trace_id: &TraceId) -> Option<&Decision> {
        self.remembered(trace_id).map(|r| &r.decision)
    }

    fn remembered(&self, trace_id: &TraceId) -> Option<&Remembered> {
        let at = *self.decisions.get(trace_id)?;
        self.ring.get(at as usize)?.as_ref()
    }

    /// Where a trace stands: buffered, decided (while its decision is remembered), or unknown.
    pub fn lookup(&self, trace_id: &TraceId) -> Option<TraceStatus> {
        if let Some(&slot) = self.traces.get(trace_id) {
            if let Some(entry) = self.slots.get(slot as usize).and_then(|s| s.entry.as_ref()) {
                return Some(TraceStatus {
                    state: TraceState::Pending,
                    tenant: entry.tenant.clone(),
                    spans: entry.spans.len() as u64,
                });
            }
        }
        self.remembered(trace_id).map(|r| TraceStatus {
            state: TraceState::Decided(r.decision.clone()),
            tenant: r.tenant.clone(),
            spans: r.spans,
        })
    }

    fn complete_slot(&mut self, slot: u32, cause: DecideCause, out: &mut Vec<Ready>) {
        if let Some(entry) = self.release(slot) {
            out.push(Ready::Trace {
                trace: CompleteTrace::new(entry.trace_id, entry.tenant, entry.spans, cause),
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
                pass_through: Default::default(),
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

    #[test]
    fn stale_timer_of_a_reused_slot_does_not_decide_the_new_trace() {
        let mut t = Table::new(limits());
        let start = Instant::now();
        let mut out = Vec::new();
        // Trace 1 without root: timer at 30 s; its root at 1 s moves the deadline to 3 s.
        t.insert(vec![span(1, 2, 1)], start, &mut out);
        t.insert(
            vec![span(1, 1, 0)],
            start + Duration::from_secs(1),
            &mut out,
        );
        t.expire(start + Duration::from_secs(3), &mut out);
        assert_eq!(
            traces(&out),
            vec![(TraceId([1; 16]), 2, DecideCause::RootGrace)]
        );
        out.clear();
        // Trace 2 takes the freed slot at 20 s (deadline 50 s); trace 1's stale 30 s timer
        // must not decide it.
        t.insert(
            vec![span(2, 2, 1)],
            start + Duration::from_secs(20),
            &mut out,
        );
        assert_eq!(t.slots.len(), 1, "the slot was reused");
        t.expire(start + Duration::from_secs(31), &mut out);
        assert!(out.is_empty(), "stale timer skipped: {out:?}");
        assert_eq!(t.next_deadline(), Some(start + Duration::from_secs(50)));
        t.expire(start + Duration::from_secs(50), &mut out);
        assert_eq!(
            traces(&out),
            vec![(TraceId([2; 16]), 1, DecideCause::Timeout)]
        );
        assert_eq!(t.occupancy(), Occupancy::default());
    }

    #[test]
    fn spans_of_one_trace_in_a_batch_are_held_without_slack() {
        let mut t = Table::new(limits());
        let now = Instant::now();
        let mut out = Vec::new();
        let first: Vec<_> = (2..=5).map(|i| span(1, i, 1)).collect();
        t.insert(first, now, &mut out);
        t.insert(vec![span(1, 6, 1), span(1, 7, 1)], now, &mut out);
        let slot = t.traces[&TraceId([1; 16])] as usize;
        let entry = t.slots[slot].entry.as_ref().unwrap();
        assert_eq!(entry.spans.len(), 6);
        assert_eq!(entry.spans.capacity(), 6);
        assert_eq!(t.occupancy().spans, 6);
    }

    #[test]
    fn interleaved_traces_and_span_limit_inside_a_run() {
        let mut l = limits();
        l.max_spans_per_trace = 2;
        let mut t = Table::new(l);
        let now = Instant::now();
        let mut out = Vec::new();
        t.insert(
            vec![
                span(1, 2, 1),
                span(2, 2, 1),
                span(1, 3, 1),
                span(1, 4, 1),
                span(1, 5, 1),
            ],
            now,
            &mut out,
        );
        // Trace 1 reaches 2 spans at its 2nd span; the 4th and 5th start a new trace 1
        // that reaches the limit again.
        assert_eq!(
            traces(&out),
            vec![
                (TraceId([1; 16]), 2, DecideCause::SpanLimit),
                (TraceId([1; 16]), 2, DecideCause::SpanLimit),
            ]
        );
        assert_eq!(t.occupancy().traces, 1);
        assert_eq!(t.occupancy().spans, 1);
    }

    #[test]
    fn decision_cache_refills_after_handing_decisions_away() {
        let mut t = Table::new(limits());
        for trace in 1..=10u8 {
            t.remember(TraceId([trace; 16]), decision(), TenantId::new("t"), 1);
        }
        let handed = t.take_decisions_where(&|id| id.0[0] % 2 == 0);
        assert_eq!(handed.len(), 5);
        assert!(t.decision(&TraceId([2; 16])).is_none());
        for trace in 11..=15u8 {
            t.remember(TraceId([trace; 16]), decision(), TenantId::new("t"), 1);
        }
        // Ten remembered again, none evicted: 1, 3, 5, 7, 9, 11..=15.
        for trace in [1u8, 3, 5, 7, 9, 11, 15] {
            assert!(t.decision(&TraceId([trace; 16])).is_some(), "{trace}");
        }
        t.remember(TraceId([16; 16]), decision(), TenantId::new("t"), 1);
        assert!(t.decision(&TraceId([1; 16])).is_none(), "oldest goes first");
        assert!(t.decision(&TraceId([3; 16])).is_some());
    }

    #[test]
    fn memory_pressure_evicts_an_adopted_trace_in_arrival_order() {
        let mut l = limits();
        l.max_bytes = 2 * span(1, 1, 0).accounted_bytes();
        let mut t = Table::new(l);
        let now = Instant::now();
        let mut out = Vec::new();
        t.adopt(vec![span(1, 2, 1)], now, false, now, &mut out, &mut |_| {});
        t.insert(vec![span(2, 2, 1)], now, &mut out);
        t.insert(vec![span(3, 2, 1)], now, &mut out);
        assert_eq!(
            traces(&out),
            vec![(TraceId([1; 16]), 1, DecideCause::MemoryPressure)]
        );
    }
}
