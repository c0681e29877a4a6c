//! Forwarding to peers: one bounded queue per peer (bytes, inside the memory budget) and the
//! sender task that drains it in batches over the peer protocol, retrying with backoff while
//! the peer is slow or down. Space is reserved before a client's request is acknowledged, so
//! what is acknowledged is never dropped for want of room; when the peer leaves the
//! membership, whatever is still queued is handed back to routing for the new owner.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::peer::{push_groups, DecisionRecord, ForwardError, ForwardRequest, HandOff, PeerClient};
use crate::buffer::HandedDecision;
use crate::model::SpanRecord;
use crate::stats::Stats;

/// What a peer queue holds.
#[derive(Debug)]
pub enum Item {
    /// Spans received from clients for a trace the peer owns.
    Spans(Vec<SpanRecord>),
    /// A buffered trace handed over after a membership change.
    HandOff {
        /// Every span this node held for the trace.
        spans: Vec<SpanRecord>,
        /// When this node first saw the trace.
        first_seen: Instant,
        /// The root span has arrived.
        root_seen: bool,
    },
    /// Remembered decisions handed over after a membership change.
    Decisions(Vec<HandedDecision>),
}

/// Bytes one handed-over decision counts against a forward queue (its id, rule, tenant and
/// numbers, rounded up).
pub const DECISION_BYTES: usize = 96;

impl Item {
    /// The spans of the item (none for decisions).
    pub fn spans(&self) -> &[SpanRecord] {
        match self {
            Item::Spans(s) | Item::HandOff { spans: s, .. } => s,
            Item::Decisions(_) => &[],
        }
    }

    /// Bytes the item counts against its queue and the memory budget.
    pub fn accounted_bytes(&self) -> usize {
        match self {
            Item::Decisions(d) => d.len() * DECISION_BYTES,
            _ => accounted(self.spans()),
        }
    }

    /// How much of a batch the item fills: its spans, or for decisions one per 16.
    fn weight(&self) -> usize {
        match self {
            Item::Decisions(d) => d.len().div_ceil(16),
            _ => self.spans().len(),
        }
    }
}

/// Bytes `spans` count against a forward queue.
pub fn accounted(spans: &[SpanRecord]) -> usize {
    spans.iter().map(SpanRecord::accounted_bytes).sum()
}

/// Counters of one peer, for `/metrics` and `GET /api/v1/cluster`.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Spans the peer accepted.
    pub forwarded_spans: AtomicU64,
    /// Batches the peer accepted.
    pub forwarded_batches: AtomicU64,
    /// Forward calls that failed (each is retried).
    pub failures: AtomicU64,
    /// Retries after a failure.
    pub retries: AtomicU64,
    /// Spans routed again because the peer left the membership with them queued.
    pub rerouted_spans: AtomicU64,
    /// Buffered traces handed to this peer after membership changes.
    pub handoff_traces: AtomicU64,
    /// Remembered decisions handed to this peer after membership changes.
    pub handoff_decisions: AtomicU64,
    /// Spans queued now.
    pub queued_spans: AtomicI64,
}

/// Counters of what peers sent this node.
#[derive(Debug, Default)]
pub struct PeerIntakeCounters {
    /// Spans held from peers.
    pub spans_received: AtomicU64,
    /// Batches held from peers.
    pub batches_received: AtomicU64,
    /// Traces handed over to this node.
    pub handoff_traces: AtomicU64,
    /// Remembered decisions handed over to this node.
    pub handoff_decisions: AtomicU64,
    /// Retried batches recognised and not held twice.
    pub duplicate_batches: AtomicU64,
    /// Batches refused because this node's buffer was full (the peer retries).
    pub refused_batches: AtomicU64,
}

/// The bounded queue of spans waiting to be forwarded to one peer.
pub struct PeerQueue {
    addr: String,
    items: Mutex<VecDeque<(Item, usize)>>,
    bytes: AtomicU64,
    max_bytes: u64,
    wake: Notify,
    retired: AtomicBool,
    /// Counters of this peer.
    pub counters: PeerCounters,
    stats: Arc<Stats>,
}

/// Room reserved in a peer queue; released on drop unless an item is pushed into it.
pub struct Reservation {
    queue: Arc<PeerQueue>,
    bytes: usize,
}

impl Reservation {
    /// Queues `item` in the reserved room.
    pub fn commit(self, item: Item) {
        let bytes = self.bytes;
        let queue = self.queue.clone();
        std::mem::forget(self);
        queue.enqueue(item, bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.queue.release(self.bytes);
    }
}

impl PeerQueue {
    /// An empty queue for the peer at `addr`, holding at most `max_bytes`.
    pub fn new(addr: &str, max_bytes: u64, stats: Arc<Stats>) -> Arc<PeerQueue> {
        Arc::new(PeerQueue {
            addr: addr.to_string(),
            items: Mutex::new(VecDeque::new()),
            bytes: AtomicU64::new(0),
            max_bytes,
            wake: Notify::new(),
            retired: AtomicBool::new(false),
            counters: PeerCounters::default(),
            stats,
        })
    }

    /// The peer's advertise address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Bytes reserved or queued.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Reserves room for `bytes`, or `None` when the queue is full (the request is refused
    /// with a retryable code).
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let add = bytes as u64;
        let mut current = self.bytes.load(Relaxed);
        loop {
            // An item larger than the whole queue still goes into an empty one.
            if current > 0 && current + add > self.max_bytes {
                return None;
            }
            match self
                .bytes
                .compare_exchange_weak(current, current + add, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        self.stats
            .forward_queue_bytes
            .fetch_add(bytes as i64, Relaxed);
        Some(Reservation {
            queue: self.clone(),
            bytes,
        })
    }

    /// Queues an item beyond the bound: for spans this node already acknowledged (re-routing
    /// after a peer left, hand-off), which must not be dropped for want of room.
    pub fn push_forced(&self, item: Item) {
        let bytes = item.accounted_bytes();
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.stats
            .forward_queue_bytes
            .fetch_add(bytes as i64, Relaxed);
        self.enqueue(item, bytes);
    }

    fn enqueue(&self, item: Item, bytes: usize) {
        let n = item.spans().len() as i64;
        if let Ok(mut items) = self.items.lock() {
            items.push_back((item, bytes));
        }
        self.counters.queued_spans.fetch_add(n, Relaxed);
        self.wake.notify_one();
    }

    fn release(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes as u64, Relaxed);
        self.stats
            .forward_queue_bytes
            .fetch_sub(bytes as i64, Relaxed);
    }

    /// Spans queued now.
    pub fn queued_spans(&self) -> i64 {
        self.counters.queued_spans.load(Relaxed)
    }

    /// Wakes the sender (membership changed, shutdown).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Marks the queue as no longer routed to; its sender hands what is left back to routing.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
        self.wake.notify_one();
    }

    fn take(&self, max_spans: usize) -> Vec<(Item, usize)> {
        let mut out = Vec::new();
        let mut spans = 0;
        let mut real = 0;
        if let Ok(mut items) = self.items.lock() {
            while let Some((item, _)) = items.front() {
                let n = item.weight();
                if !out.is_empty() && spans + n > max_spans {
                    break;
                }
                spans += n;
                if let Some(entry) = items.pop_front() {
                    real += entry.0.spans().len();
                    out.push(entry);
                }
            }
        }
        self.counters.queued_spans.fetch_sub(real as i64, Relaxed);
        out
    }

    fn queued_span_count_at_least(&self, n: usize) -> bool {
        self.counters.queued_spans.load(Relaxed) >= n as i64
    }

    fn is_empty(&self) -> bool {
        self.items.lock().map(|i| i.is_empty()).unwrap_or(true)
    }
}

/// How a sender batches and retries.
#[derive(Clone, Debug)]
pub struct SenderSettings {
    /// This node's advertise address (the `sender` of every request).
    pub me: String,
    /// Most spans per forwarded batch.
    pub batch_max_spans: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// A peer whose calls have all failed this long (and at least 3 times) is treated as gone
    /// until it answers again; zero: never.
    pub peer_down_after: Duration,
}

/// What a sender asks of routing: is its peer still a member, and where do spans go when it
/// is not.
pub trait Owners: Send + Sync + 'static {
    /// True while `addr` is a live member.
    fn is_member(&self, addr: &str) -> bool;
    /// Every call to `addr` has failed for `SenderSettings::peer_down_after`.
    fn suspect(&self, addr: &str);
    /// Routes items again with the current members (never refuses: they were acknowledged).
    fn reroute(
        &self,
        items: Vec<Item>,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// Drains one peer's queue until the node stops (and the queue is empty) or the peer leaves
/// the membership (then the rest is routed again).
pub async fn run_sender(
    queue: Arc<PeerQueue>,
    client: PeerClient,
    settings: SenderSettings,
    owners: Arc<dyn Owners>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_batch: u64 = rand::random::<u64>() >> 1;
    let mut warned_at: Option<Instant> = None;
    loop {
        let stopping = *stop.borrow();
        if queue.retired.load(Relaxed) || !owners.is_member(&queue.addr) {
            hand_back(&queue, Vec::new(), &*owners).await;
            if queue.retired.load(Relaxed) {
                return;
            }
        }
        if queue.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                _ = queue.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        if !stopping && !queue.queued_span_count_at_least(settings.batch_max_spans) {
            tokio::time::sleep(settings.batch_timeout).await;
        }
        let batch = queue.take(settings.batch_max_spans);
        if batch.is_empty() {
            continue;
        }
        next_batch = next_batch.wrapping_add(1);
        let body = encode(&settings.me, next_batch, &batch);
        let spans: u64 = batch.iter().map(|(i, _)| i.spans().len() as u64).sum();
        let mut delay = settings.retry_initial;
        let mut failing_since: Option<(Instant, u32)> = None;
        loop {
            match client.forward(body.clone()).await {
                Ok(_) => {
                    let bytes: usize = batch.iter().map(|(_, b)| *b).sum();
                    queue.release(bytes);
                    queue.counters.forwarded_spans.fetch_add(spans, Relaxed);
                    queue.counters.forwarded_batches.fetch_add(1, Relaxed);
                    break;
                }
                Err(e) => {
                    queue.counters.failures.fetch_add(1, Relaxed);
                    if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warned_at = Some(Instant::now());
                        let reason = match &e {
                            ForwardError::Unreachable(m) => m.clone(),
                            ForwardError::Refused(s) => s.message().to_string(),
                        };
                        tracing::warn!(peer = %queue.addr, spans, %reason, "forward to peer failed; retrying");
                    }
                    if matches!(e, ForwardError::Unreachable(_)) {
                        let (since, n) = failing_since.get_or_insert((Instant::now(), 0));
                        *n += 1;
                        if !settings.peer_down_after.is_zero()
                            && *n >= 3
                            && since.elapsed() >= settings.peer_down_after
                        {
                            owners.suspect(&queue.addr);
                        }
                    }
                    if queue.retired.load(Relaxed) || !owners.is_member(&queue.addr) {
                        hand_back(&queue, batch, &*owners).await;
                        break;
                    }
                    queue.counters.retries.fetch_add(1, Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = queue.wake.notified() => {}
                    }
                    delay = (delay * 2).min(settings.retry_max);
                }
            }
        }
    }
}

/// Routes `batch` and everything still queued again, for the new owners.
async fn hand_back(queue: &PeerQueue, batch: Vec<(Item, usize)>, owners: &dyn Owners) {
    let mut all = batch;
    all.extend(queue.take(usize::MAX));
    if all.is_empty() {
        return;
    }
    let bytes: usize = all.iter().map(|(_, b)| *b).sum();
    let spans: u64 = all.iter().map(|(i, _)| i.spans().len() as u64).sum();
    tracing::info!(peer = %queue.addr, spans, "peer left the membership; routing its queued spans to the new owners");
    queue.counters.rerouted_spans.fetch_add(spans, Relaxed);
    owners
        .reroute(all.into_iter().map(|(i, _)| i).collect())
        .await;
    queue.release(bytes);
}

/// Encodes a batch as one `ForwardRequest`.
pub fn encode(me: &str, batch_id: u64, batch: &[(Item, usize)]) -> Bytes {
    let mut groups = Vec::new();
    let mut decisions = Vec::new();
    let now = Instant::now();
    for (item, _) in batch {
        match item {
            Item::Decisions(d) => decisions.extend(d.iter().map(DecisionRecord::from_handed)),
            Item::Spans(spans) => push_groups(&mut groups, spans, None),
            Item::HandOff {
                spans,
                first_seen,
                root_seen,
            } => push_groups(
                &mut groups,
                spans,
                Some(HandOff {
                    age_ms: now.saturating_duration_since(*first_seen).as_millis() as u64,
                    root_seen: *root_seen,
                }),
            ),
        }
    }
    Bytes::from(
        ForwardRequest {
            sender: me.to_string(),
            batch_id,
            groups,
            decisions,
        }
        .encode_to_vec(),
    )
}
