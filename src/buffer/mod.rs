//! The buffer stage: shards that each own a slice of the trace-id space (no global lock), hold
//! spans until their trace is ready, decide it with the live rules and hand kept spans to
//! export. One task per shard; the logic lives in the synchronous [`table::Table`].

pub mod table;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::decide::Decider;
use crate::model::{DropReason, KeptSpans, SpanRecord, TraceId, TraceStatus};
use crate::rules::RuleSet;
use crate::shadow::{ShadowStats, Tally};
use crate::stats::tenant::{unix_now, Tally as TenantTally};
use crate::stats::Stats;
use crate::tags::{unix_ms, TagTable};
use table::{Occupancy, Ready, Table};

pub use table::{Departing, HandedDecision};

pub use table::Limits;

/// Where a shard sends kept spans (the export stage's intake).
pub trait KeptSink: Send + Sync + 'static {
    /// Takes kept spans, waiting while the export queue is full: the wait stops the shard,
    /// its intake fills, and receive refuses new data with retryable codes — backpressure all
    /// the way to the client instead of dropping what was already decided.
    fn submit(
        &self,
        kept: KeptSpans,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// Hands the kept spans a settle step produced to the sink, in order.
async fn flush_outbox(outbox: &mut Vec<KeptSpans>, sink: &dyn KeptSink, stats: &Stats) {
    for kept in outbox.drain(..) {
        let n = kept.spans.len() as i64;
        sink.submit(kept).await;
        stats.handoff_spans.fetch_sub(n, Relaxed);
    }
}

/// A batch of spans for one shard.
pub type ShardBatch = Vec<SpanRecord>;

/// What a shard's intake carries.
pub enum ShardMsg {
    /// Spans whose trace ids this shard owns.
    Spans(ShardBatch),
    /// Where does this trace stand? (admin API); `None` when the shard does not know it.
    Lookup(TraceId, oneshot::Sender<Option<TraceStatus>>),
    /// Spans of one trace handed over by its previous owner (cluster), keeping its timers.
    Adopt {
        /// Spans of the one trace.
        spans: ShardBatch,
        /// When the previous owner first saw the trace.
        first_seen: Instant,
        /// The root span has arrived.
        root_seen: bool,
    },
    /// Several handed-over traces for this shard at once (one peer batch holds hundreds):
    /// `(spans, first_seen, root_seen)` each, as in [`ShardMsg::Adopt`].
    AdoptMany(Vec<(ShardBatch, Instant, bool)>),
    /// Membership changed: hand back every buffered trace and remembered decision
    /// `owned_elsewhere` says this node no longer owns.
    Rebalance {
        /// True for trace ids another member owns now.
        owned_elsewhere: Arc<dyn Fn(&TraceId) -> bool + Send + Sync>,
        /// Where the departing traces and decisions go.
        reply: oneshot::Sender<Rebalanced>,
    },
    /// Decisions handed over by the previous owner of their traces (cluster).
    Remember(Vec<HandedDecision>),
}

/// What one shard gives up when the membership changes.
#[derive(Debug, Default)]
pub struct Rebalanced {
    /// Buffered traces, with their timers.
    pub traces: Vec<Departing>,
    /// Remembered decisions.
    pub decisions: Vec<HandedDecision>,
}

/// How often a shard merges its local per-tenant tally into the shared table.
pub const TALLY_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Shortest time between two timer wake-ups of a shard: a timer fires at most this late, and
/// stale timers (traces decided before their deadline) cost at most this many wake-ups a
/// second instead of one each.
pub const TIMER_WAKE_EVERY: Duration = Duration::from_millis(1);

/// What every decision reads, shared by all shards; each batch loads one snapshot of each.
#[derive(Clone)]
pub struct DecideInputs {
    /// The live rules.
    pub rules: Arc<ArcSwap<RuleSet>>,
    /// Shadow rules evaluated beside the live ones (empty when none are configured).
    pub shadow: Arc<ArcSwapOption<RuleSet>>,
    /// Runtime tenant tags, above the rules in precedence.
    pub tags: Arc<TagTable>,
    /// Where shadow outcomes are counted.
    pub shadow_stats: Arc<ShadowStats>,
}

impl DecideInputs {
    /// Inputs with only live rules: no shadow rules, no tags.
    pub fn rules_only(rules: Arc<ArcSwap<RuleSet>>) -> DecideInputs {
        DecideInputs {
            rules,
            shadow: Arc::new(ArcSwapOption::empty()),
            tags: Arc::new(TagTable::in_memory()),
            shadow_stats: Arc::new(ShadowStats::default()),
        }
    }
}

/// A shard's deciding state: its decider, a separate one for shadow rules, and the kept
/// traces waiting to be handed to export.
struct Deciding {
    decider: Decider,
    shadow_decider: Decider,
    outbox: Vec<KeptSpans>,
}

/// Decides what `ready` holds, then hands the kept traces on (waiting for room if the export
/// queue is full).
async fn decide_ready(
    table: &mut Table,
    ready: &mut Vec<Ready>,
    deciding: &mut Deciding,
    inputs: &DecideInputs,
    sink: &dyn KeptSink,
    stats: &Stats,
    tally: &mut TenantTally,
) {
    settle(
        table,
        ready,
        &mut deciding.decider,
        &mut deciding.shadow_decider,
        inputs,
        &mut deciding.outbox,
        stats,
        tally,
    );
    flush_outbox(&mut deciding.outbox, sink, stats).await;
}

/// Runs one shard until its intake closes, then decides everything it still holds.
pub async fn run_shard(
    mut table: Table,
    mut intake: mpsc::Receiver<ShardMsg>,
    mut stop: watch::Receiver<bool>,
    inputs: DecideInputs,
    decider: Decider,
    sink: Arc<dyn KeptSink>,
    stats: Arc<Stats>,
) {
    let mut deciding = Deciding {
        shadow_decider: decider.detached(),
        decider,
        outbox: Vec::new(),
    };
    let mut ready = Vec::new();
    let mut last = Occupancy::default();
    let mut stopping = false;
    let mut closed = false;
    // Per-tenant counts stay local (no lock, no atomics) and are merged about once a second.
    let mut tally = TenantTally::new(stats.tenants.max_tenants());
    let mut flushed_at = Instant::now();
    let mut timer_woke_at = Instant::now();
    loop {
        let deadline = table
            .next_deadline()
            .map(|d| d.max(timer_woke_at + TIMER_WAKE_EVERY));
        let flush_due = (!tally.is_empty()).then_some(flushed_at + TALLY_FLUSH_EVERY);
        tokio::select! {
            biased;
            msg = intake.recv() => match msg {
                Some(ShardMsg::Spans(batch)) => {
                    count_received(&mut tally, &batch);
                    table.insert_with(batch, Instant::now(), &mut ready, &mut |tenant| {
                        tally.trace_received(tenant)
                    });
                }
                Some(ShardMsg::Lookup(trace_id, reply)) => {
                    let _ = reply.send(table.lookup(&trace_id));
                }
                Some(ShardMsg::Adopt { spans, first_seen, root_seen }) => {
                    // Counted per tenant where the trace was first buffered, not again here.
                    table.adopt(spans, first_seen, root_seen, Instant::now(), &mut ready, &mut |_| {});
                }
                Some(ShardMsg::AdoptMany(traces)) => {
                    for (spans, first_seen, root_seen) in traces {
                        table.adopt(spans, first_seen, root_seen, Instant::now(), &mut ready, &mut |_| {});
                    }
                }
                Some(ShardMsg::Rebalance { owned_elsewhere, reply }) => {
                    let leaving = Rebalanced {
                        traces: table.take_where(&*owned_elsewhere),
                        decisions: table.take_decisions_where(&*owned_elsewhere),
                    };
                    if let Err(back) = reply.send(leaving) {
                        // Nobody waits for them (shutdown): keep them here instead.
                        for d in back.traces {
                            table.adopt(d.spans, d.first_seen, d.root_seen, Instant::now(), &mut ready, &mut |_| {});
                        }
                        table.accept_decisions(back.decisions, &mut ready);
                    }
                }
                Some(ShardMsg::Remember(handed)) => {
                    table.accept_decisions(handed, &mut ready);
                }
                // Intake closed (shutdown): this last turn decides everything still held.
                None => {
                    table.drain(&mut ready);
                    closed = true;
                }
            },
            // Shutdown: refuse new batches, finish the queued ones, then drain.
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                intake.close();
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                timer_woke_at = Instant::now();
                table.expire(timer_woke_at, &mut ready);
            }
            _ = sleep_until(flush_due), if flush_due.is_some() => {}
        }
        decide_ready(
            &mut table,
            &mut ready,
            &mut deciding,
            &inputs,
            &*sink,
            &stats,
            &mut tally,
        )
        .await;
        last = report(&table, last, &stats);
        if closed {
            break;
        }
        // Checked every turn, not only on the timer: a busy intake would starve the timer arm.
        if flushed_at.elapsed() >= TALLY_FLUSH_EVERY {
            tally.flush(&stats.tenants, unix_now());
            flushed_at = Instant::now();
        }
    }
    tally.flush(&stats.tenants, unix_now());
}

/// Counts a batch's spans per tenant: one tally update per run of spans of the same tenant
/// (spans of one request's resource arrive together), not one per span.
fn count_received(tally: &mut TenantTally, batch: &[SpanRecord]) {
    let mut i = 0;
    while i < batch.len() {
        let origin = &batch[i].origin;
        let mut j = i + 1;
        while j < batch.len()
            && (Arc::ptr_eq(&batch[j].origin, origin) || batch[j].origin.tenant == origin.tenant)
        {
            j += 1;
        }
        let logs = batch[i..j].iter().filter(|r| r.index.is_log()).count() as u64;
        let spans = (j - i) as u64 - logs;
        if spans > 0 {
            tally.spans_received(&origin.tenant, spans);
        }
        if logs > 0 {
            tally.logs_received(&origin.tenant, logs);
        }
        i = j;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}

/// Publishes the change in this shard's occupancy to the shared gauges.
fn report(table: &Table, last: Occupancy, stats: &Stats) -> Occupancy {
    let now = table.occupancy();
    stats
        .buffered_traces
        .fetch_add(now.traces as i64 - last.traces as i64, Relaxed);
    stats
        .buffered_spans
        .fetch_add(now.spans as i64 - last.spans as i64, Relaxed);
    stats
        .buffered_bytes
        .fetch_add(now.bytes as i64 - last.bytes as i64, Relaxed);
    now
}

/// Decides ready traces and routes late spans, with one snapshot of the rules, the shadow
/// rules, the tenant tags and the clock for the lot.
// Every argument is a separate borrow of the shard loop's own state; a struct would only
// rename them.
#[allow(clippy::too_many_arguments)]
fn settle(
    table: &mut Table,
    ready: &mut Vec<Ready>,
    decider: &mut Decider,
    shadow_decider: &mut Decider,
    inputs: &DecideInputs,
    outbox: &mut Vec<KeptSpans>,
    stats: &Stats,
    tally: &mut TenantTally,
) {
    if ready.is_empty() {
        return;
    }
    let rules = inputs.rules.load();
    let shadow = inputs.shadow.load();
    let tags = inputs.tags.snapshot();
    let now_ms = unix_ms(SystemTime::now());
    let now = Instant::now();
    let mut shadow_tally = Tally::default();
    for item in ready.drain(..) {
        match item {
            Ready::Trace { trace, first_seen } => {
                let decision = decider.decide_tagged(&trace, &rules, &tags, now_ms);
                if let Some(shadow) = &*shadow {
                    let would = shadow_decider.decide_tagged(&trace, shadow, &tags, now_ms);
                    shadow_tally.add(&trace.tenant, decision.keep, would.keep);
                }
                stats.traces_decided.fetch_add(1, Relaxed);
                stats.decided_by(trace.cause, 1);
                let n = trace.spans.len() as u64;
                let logs = trace.logs.len() as u64;
                tally.decided(&trace.tenant, &decision, n, now - first_seen);
                if logs > 0 {
                    tally.logs_followed(&trace.tenant, &decision, logs);
                }
                table.remember(
                    trace.trace_id,
                    decision.clone(),
                    trace.tenant.clone(),
                    n + logs,
                );
                if decision.keep {
                    stats.traces_kept.fetch_add(1, Relaxed);
                }
                let mut records = trace.spans;
                records.extend(trace.logs);
                hand_on(outbox, stats, trace.tenant, decision, records);
            }
            Ready::Late {
                tenant,
                decision,
                spans,
            } => {
                let logs = spans.iter().filter(|r| r.index.is_log()).count() as u64;
                let n = spans.len() as u64 - logs;
                if n > 0 {
                    stats.late_spans.fetch_add(n, Relaxed);
                    tally.late(&tenant, &decision, n);
                }
                if logs > 0 {
                    stats.log_records_late.fetch_add(logs, Relaxed);
                    tally.logs_followed(&tenant, &decision, logs);
                }
                hand_on(outbox, stats, tenant, decision, spans);
            }
        }
    }
    if let Some(shadow) = &*shadow {
        inputs
            .shadow_stats
            .merge(shadow.source_hash(), &mut shadow_tally);
    }
}

/// Sends kept spans (and log records) on to export, or counts dropped ones with their reason.
fn hand_on(
    outbox: &mut Vec<KeptSpans>,
    stats: &Stats,
    tenant: crate::model::TenantId,
    decision: crate::model::Decision,
    spans: Vec<SpanRecord>,
) {
    let total = spans.len() as u64;
    let logs = spans.iter().filter(|r| r.index.is_log()).count() as u64;
    let n = total - logs;
    if decision.keep {
        stats.spans_kept.fetch_add(n, Relaxed);
        stats.log_records_kept.fetch_add(logs, Relaxed);
        stats.handoff_spans.fetch_add(total as i64, Relaxed);
        outbox.push(KeptSpans {
            tenant,
            decision,
            spans,
        });
    } else if decision.sample_rate == 0 {
        stats.drop_records(DropReason::Rule, n, logs);
    } else {
        stats.drop_records(DropReason::Sampled, n, logs);
    }
}
