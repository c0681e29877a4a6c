//! The route stage: picks the owner of each trace id and hands spans over with bounded sends.
//! On a single node every trace is local and goes to the buffer shard that owns it; in a
//! cluster, spans of traces another member owns (rendezvous hashing, `cluster::membership`)
//! go into that peer's bounded forward queue. A request is handed over whole or not at all
//! (every local shard's permit and every peer's queue room is reserved first), so a refused
//! request can be retried by the client without duplicating spans, and what was
//! acknowledged is never dropped for want of room.
//!
//! On the way, each part's spans are copied out of the request buffer into one contiguous
//! buffer per (request, owner): a held span then pins only its neighbours in the same part,
//! not the whole request (DESIGN.md: "a slice pins its whole request buffer").

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::buffer::{Departing, HandedDecision, ShardMsg};
use crate::cluster::forward::{
    self, accounted, Item, Owners, PeerQueue, Reservation, SenderSettings,
};
use crate::cluster::membership::{Members, MembershipHandle};
use crate::cluster::peer::PeerClient;
use crate::model::{SpanRecord, TraceId, TraceStatus};
use crate::stats::Stats;

/// Why spans could not be handed over.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// The shards stayed full for the whole queue timeout.
    #[error("the trace buffer is full; retry later")]
    Full,
    /// A peer's forward queue is full (the peer is slow or down).
    #[error("the forward queue to peer {0} is full; retry later")]
    PeerFull(String),
    /// The pipeline is shutting down.
    #[error("the proxy is shutting down")]
    Closed,
}

/// What routing needs to forward to peers.
pub struct ClusterRoute {
    /// The live members.
    pub membership: Arc<MembershipHandle>,
    /// Per-peer queue bound in bytes.
    pub queue_max_bytes: u64,
    /// Batching and retry settings of the senders.
    pub sender: SenderSettings,
    /// Timeout of one forward call.
    pub forward_timeout: Duration,
    /// Counters (the forward queue gauge).
    pub stats: Arc<Stats>,
    /// Stops the senders once their queues are empty.
    pub stop: watch::Receiver<bool>,
}

struct Cluster {
    config: ClusterRoute,
    queues: RwLock<HashMap<String, Arc<PeerQueue>>>,
    senders: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Spans arrived from a peer that this node does not own (views disagreed).
    strays: AtomicBool,
}

/// Hands spans to the shard or peer that owns their trace id.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<mpsc::Sender<ShardMsg>>,
    queue_timeout: Duration,
    cluster: Option<Cluster>,
}

impl Router {
    /// A single-node router over the given shard intakes.
    pub fn new(shards: Vec<mpsc::Sender<ShardMsg>>, queue_timeout: Duration) -> Self {
        Router {
            inner: Arc::new(Inner {
                shards,
                queue_timeout,
                cluster: None,
            }),
        }
    }

    /// A router of one cluster node: foreign spans go to their owner's forward queue.
    pub fn clustered(
        shards: Vec<mpsc::Sender<ShardMsg>>,
        queue_timeout: Duration,
        cluster: ClusterRoute,
    ) -> Self {
        Router {
            inner: Arc::new(Inner {
                shards,
                queue_timeout,
                cluster: Some(Cluster {
                    config: cluster,
                    queues: RwLock::new(HashMap::new()),
                    senders: std::sync::Mutex::new(Vec::new()),
                    strays: AtomicBool::new(false),
                }),
            }),
        }
    }

    /// The membership this router follows (cluster only).
    pub fn membership(&self) -> Option<&Arc<MembershipHandle>> {
        self.inner.cluster.as_ref().map(|c| &c.config.membership)
    }

    /// Every peer queue created so far.
    pub fn peer_queues(&self) -> Vec<Arc<PeerQueue>> {
        match &self.inner.cluster {
            Some(c) => c
                .queues
                .read()
                .map(|q| q.values().cloned().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Splits client spans by owner and hands every part over, or none of them.
    pub async fn route(&self, spans: Vec<SpanRecord>) -> Result<(), RouteError> {
        if spans.is_empty() {
            return Ok(());
        }
        let Some(cluster) = &self.inner.cluster else {
            return self.route_local(spans).await;
        };
        let members = cluster.config.membership.current();
        let (local, remote) = split_by_owner(&members, spans);
        // Room in every peer queue first (no waiting: a full queue refuses the request).
        let mut reserved: Vec<(Reservation, Vec<SpanRecord>)> = Vec::with_capacity(remote.len());
        for (i, part) in remote {
            let addr = &members.addrs()[i];
            let queue = self.queue_for(cluster, addr);
            match queue.try_reserve(accounted(&part)) {
                Some(r) => reserved.push((r, part)),
                None => return Err(RouteError::PeerFull(addr.clone())),
            }
        }
        let permits = self.reserve_local(local).await?;
        for (reservation, part) in reserved {
            reservation.commit(Item::Spans(compact(part)));
        }
        permits.send();
        Ok(())
    }

    /// Hands spans to this node's own shards, whoever owns them (spans a peer forwarded are
    /// held here even while this node's view of the membership disagrees; see
    /// [`Router::rebalance`]).
    pub async fn route_local(&self, spans: Vec<SpanRecord>) -> Result<(), RouteError> {
        if spans.is_empty() {
            return Ok(());
        }
        if let Some(cluster) = &self.inner.cluster {
            let members = cluster.config.membership.current();
            if spans.iter().any(|s| !members.is_local(&s.index.trace_id)) {
                cluster.strays.store(true, Relaxed);
            }
        }
        self.reserve_local(spans).await?.send();
        Ok(())
    }

    /// Holds what a peer forwarded: plain spans and handed-over traces, on this node's own
    /// shards whoever owns them, all or nothing (one timeout for every permit).
    pub async fn hold(
        &self,
        spans: Vec<SpanRecord>,
        handoffs: Vec<(Vec<SpanRecord>, Instant, bool)>,
    ) -> Result<(), RouteError> {
        if let Some(cluster) = &self.inner.cluster {
            let members = cluster.config.membership.current();
            let foreign = spans
                .iter()
                .chain(handoffs.iter().filter_map(|(s, _, _)| s.first()))
                .any(|s| !members.is_local(&s.index.trace_id));
            if foreign {
                cluster.strays.store(true, Relaxed);
            }
        }
        // One message per shard, whatever the number of traces: a batch may hand over more
        // traces than a shard's intake has slots.
        let n_shards = self.inner.shards.len();
        let mut per_shard: Vec<Vec<(Vec<SpanRecord>, Instant, bool)>> =
            (0..n_shards).map(|_| Vec::new()).collect();
        for (spans, first_seen, root_seen) in handoffs {
            if let Some(first) = spans.first() {
                let i = self.shard_of(&first.index.trace_id);
                per_shard[i].push((compact(spans), first_seen, root_seen));
            }
        }
        let shards: Vec<usize> = (0..n_shards)
            .filter(|i| !per_shard[*i].is_empty())
            .collect();
        let reserve = async {
            let mut permits = Vec::with_capacity(shards.len());
            for i in &shards {
                permits.push(
                    self.inner.shards[*i]
                        .reserve()
                        .await
                        .map_err(|_| RouteError::Closed)?,
                );
            }
            Ok::<_, RouteError>(permits)
        };
        let timeout = self.inner.queue_timeout;
        let (plain, adopted) = tokio::time::timeout(timeout, async {
            let plain = self.reserve_local(spans).await?;
            let adopted = reserve.await?;
            Ok::<_, RouteError>((plain, adopted))
        })
        .await
        .map_err(|_| RouteError::Full)??;
        plain.send();
        for (permit, i) in adopted.into_iter().zip(shards) {
            permit.send(ShardMsg::AdoptMany(std::mem::take(&mut per_shard[i])));
        }
        Ok(())
    }

    /// Hands one handed-over trace to its shard, keeping its first-seen time.
    pub async fn adopt(
        &self,
        spans: Vec<SpanRecord>,
        first_seen: Instant,
        root_seen: bool,
    ) -> Result<(), RouteError> {
        let Some(first) = spans.first() else {
            return Ok(());
        };
        let shard = &self.inner.shards[self.shard_of(&first.index.trace_id)];
        if let Some(cluster) = &self.inner.cluster {
            if !cluster
                .config
                .membership
                .current()
                .is_local(&first.index.trace_id)
            {
                cluster.strays.store(true, Relaxed);
            }
        }
        let permit = tokio::time::timeout(self.inner.queue_timeout, shard.reserve())
            .await
            .map_err(|_| RouteError::Full)?
            .map_err(|_| RouteError::Closed)?;
        permit.send(ShardMsg::Adopt {
            spans: compact(spans),
            first_seen,
            root_seen,
        });
        Ok(())
    }

    /// Reserves a permit of every shard `spans` touch, waiting at most the queue timeout.
    async fn reserve_local(&self, spans: Vec<SpanRecord>) -> Result<LocalPermits<'_>, RouteError> {
        let n = self.inner.shards.len();
        let parts = split_compacted(spans, n, |id| self.shard_of(id));
        let reserve = async {
            let mut permits = Vec::with_capacity(n);
            for (i, part) in parts.iter().enumerate() {
                if !part.is_empty() {
                    let permit = self.inner.shards[i]
                        .reserve()
                        .await
                        .map_err(|_| RouteError::Closed)?;
                    permits.push((i, permit));
                }
            }
            Ok::<_, RouteError>(permits)
        };
        let permits = tokio::time::timeout(self.inner.queue_timeout, reserve)
            .await
            .map_err(|_| RouteError::Full)??;
        Ok(LocalPermits { permits, parts })
    }

    /// The peer queue of `addr`, created (with its sender task) on first use.
    fn queue_for(&self, cluster: &Cluster, addr: &str) -> Arc<PeerQueue> {
        if let Ok(queues) = cluster.queues.read() {
            if let Some(q) = queues.get(addr) {
                return q.clone();
            }
        }
        let Ok(mut queues) = cluster.queues.write() else {
            // A poisoned lock means a panic elsewhere; a fresh queue still forwards.
            return PeerQueue::new(
                addr,
                cluster.config.queue_max_bytes,
                cluster.config.stats.clone(),
            );
        };
        if let Some(q) = queues.get(addr) {
            return q.clone();
        }
        let queue = PeerQueue::new(
            addr,
            cluster.config.queue_max_bytes,
            cluster.config.stats.clone(),
        );
        queues.insert(addr.to_string(), queue.clone());
        match PeerClient::new(addr, cluster.config.forward_timeout) {
            Ok(client) => {
                let owners: Arc<dyn Owners> = Arc::new(self.clone());
                let task = tokio::spawn(forward::run_sender(
                    queue.clone(),
                    client,
                    cluster.config.sender.clone(),
                    owners,
                    cluster.config.stop.clone(),
                ));
                if let Ok(mut senders) = cluster.senders.lock() {
                    senders.push(task);
                }
            }
            Err(e) => tracing::error!(peer = addr, error = %e, "cannot forward to this peer"),
        }
        queue
    }

    /// Wakes every sender (membership changed: each checks whether its peer is still there).
    pub fn poke_senders(&self) {
        for q in self.peer_queues() {
            q.poke();
        }
    }

    /// Waits for every sender to finish (shutdown: they stop once their queue is empty).
    pub async fn join_senders(&self) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let tasks: Vec<_> = cluster
            .senders
            .lock()
            .map(|mut s| s.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Takes spans that arrived from peers for traces this node does not own, if any came
    /// since the last call.
    pub fn take_strays(&self) -> bool {
        self.inner
            .cluster
            .as_ref()
            .is_some_and(|c| c.strays.swap(false, Relaxed))
    }

    /// Walks every shard for buffered traces another member owns now and hands them to it
    /// (first-seen time and root flag travel along). Returns the traces handed on.
    pub async fn rebalance(&self) -> usize {
        let Some(cluster) = &self.inner.cluster else {
            return 0;
        };
        let members = cluster.config.membership.current();
        let view = members.clone();
        let owned_elsewhere: Arc<dyn Fn(&TraceId) -> bool + Send + Sync> =
            Arc::new(move |id| !view.is_local(id));
        let mut departing: Vec<Departing> = Vec::new();
        let mut decisions: Vec<HandedDecision> = Vec::new();
        for shard in &self.inner.shards {
            let (reply, answer) = oneshot::channel();
            let msg = ShardMsg::Rebalance {
                owned_elsewhere: owned_elsewhere.clone(),
                reply,
            };
            if shard.send(msg).await.is_err() {
                continue;
            }
            if let Ok(r) = answer.await {
                departing.extend(r.traces);
                decisions.extend(r.decisions);
            }
        }
        let n = departing.len();
        if n > 0 || !decisions.is_empty() {
            let bytes: usize = departing
                .iter()
                .flat_map(|d| d.spans.iter())
                .map(|s| s.bytes.len())
                .sum();
            tracing::info!(
                traces = n,
                span_bytes = bytes,
                decisions = decisions.len(),
                "handing buffered traces and remembered decisions to their new owners"
            );
            let mut items: Vec<Item> = departing
                .into_iter()
                .map(|d| Item::HandOff {
                    spans: d.spans,
                    first_seen: d.first_seen,
                    root_seen: d.root_seen,
                })
                .collect();
            if !decisions.is_empty() {
                items.push(Item::Decisions(decisions));
            }
            self.place(items, &members, true).await;
        }
        n
    }

    /// Remembers decisions a peer handed over, on the shards of their traces.
    pub async fn remember(&self, decisions: Vec<HandedDecision>) -> Result<(), RouteError> {
        for (i, part) in self.decisions_by_shard(decisions) {
            let permit =
                tokio::time::timeout(self.inner.queue_timeout, self.inner.shards[i].reserve())
                    .await
                    .map_err(|_| RouteError::Full)?
                    .map_err(|_| RouteError::Closed)?;
            permit.send(ShardMsg::Remember(part));
        }
        Ok(())
    }

    /// Puts acknowledged items where their owner is now, never refusing (local shards are
    /// waited for; peer queues may exceed their bound).
    async fn place(&self, items: Vec<Item>, members: &Members, count_handoff: bool) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        for item in items {
            match item {
                Item::Decisions(decisions) => {
                    let mut local = Vec::new();
                    let mut remote: HashMap<usize, Vec<HandedDecision>> = HashMap::new();
                    for d in decisions {
                        match members.owner(&d.trace_id) {
                            Some(i) if Some(i) != members.self_index() => {
                                remote.entry(i).or_default().push(d)
                            }
                            _ => local.push(d),
                        }
                    }
                    for (i, part) in remote {
                        let queue = self.queue_for(cluster, &members.addrs()[i]);
                        if count_handoff {
                            queue
                                .counters
                                .handoff_decisions
                                .fetch_add(part.len() as u64, Relaxed);
                        }
                        queue.push_forced(Item::Decisions(part));
                    }
                    if !local.is_empty() {
                        // Waits for room; fails only when the shards have closed (shutdown),
                        // and then the decisions have no late spans left to steer.
                        let _ = self.remember_waiting(local).await;
                    }
                }
                Item::Spans(spans) => {
                    let (local, remote) = split_by_owner(members, spans);
                    for (i, part) in remote {
                        self.queue_for(cluster, &members.addrs()[i])
                            .push_forced(Item::Spans(part));
                    }
                    self.send_local_waiting(local).await;
                }
                Item::HandOff {
                    spans,
                    first_seen,
                    root_seen,
                } => {
                    let Some(first) = spans.first() else { continue };
                    match members.remote_owner(&first.index.trace_id) {
                        Some(addr) => {
                            let queue = self.queue_for(cluster, addr);
                            if count_handoff {
                                queue.counters.handoff_traces.fetch_add(1, Relaxed);
                            }
                            queue.push_forced(Item::HandOff {
                                spans,
                                first_seen,
                                root_seen,
                            });
                        }
                        None => {
                            let shard = &self.inner.shards[self.shard_of(&first.index.trace_id)];
                            let n = spans.len() as u64;
                            let msg = ShardMsg::Adopt {
                                spans,
                                first_seen,
                                root_seen,
                            };
                            if shard.send(msg).await.is_err() {
                                // The shards have closed: only at the end of a shutdown.
                                cluster
                                    .config
                                    .stats
                                    .drop_spans(crate::model::DropReason::ShutdownDeadline, n);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Like [`Router::remember`], waiting for room however long it takes (the decisions were
    /// this node's own or are being re-routed: nobody is there to retry).
    async fn remember_waiting(&self, decisions: Vec<HandedDecision>) -> Result<(), RouteError> {
        for (i, part) in self.decisions_by_shard(decisions) {
            self.inner.shards[i]
                .send(ShardMsg::Remember(part))
                .await
                .map_err(|_| RouteError::Closed)?;
        }
        Ok(())
    }

    /// `decisions` grouped by the shard of their trace id (non-empty groups only).
    fn decisions_by_shard(
        &self,
        decisions: Vec<HandedDecision>,
    ) -> impl Iterator<Item = (usize, Vec<HandedDecision>)> {
        let mut parts: Vec<Vec<HandedDecision>> =
            (0..self.inner.shards.len()).map(|_| Vec::new()).collect();
        for d in decisions {
            parts[self.shard_of(&d.trace_id)].push(d);
        }
        parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty())
    }

    async fn send_local_waiting(&self, spans: Vec<SpanRecord>) {
        let n = self.inner.shards.len();
        let mut parts: Vec<Vec<SpanRecord>> = (0..n).map(|_| Vec::new()).collect();
        for s in spans {
            parts[self.shard_of(&s.index.trace_id)].push(s);
        }
        for (i, part) in parts.into_iter().enumerate() {
            if !part.is_empty() {
                let n = part.len() as u64;
                if self.inner.shards[i]
                    .send(ShardMsg::Spans(part))
                    .await
                    .is_err()
                {
                    // The shards have closed: only at the end of a shutdown.
                    if let Some(c) = &self.inner.cluster {
                        c.config
                            .stats
                            .drop_spans(crate::model::DropReason::ShutdownDeadline, n);
                    }
                }
            }
        }
    }

    /// The shard that owns `trace_id`.
    fn shard_of(&self, trace_id: &TraceId) -> usize {
        (trace_id.hash64() % self.inner.shards.len() as u64) as usize
    }

    /// Asks the owning shard where a trace stands (pending, decided, or unknown: `None`).
    /// Waits at most the queue timeout for room in the shard's intake and for the answer.
    pub async fn lookup(&self, trace_id: TraceId) -> Result<Option<TraceStatus>, RouteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shard = &self.inner.shards[self.shard_of(&trace_id)];
        let ask = async {
            shard
                .send(ShardMsg::Lookup(trace_id, tx))
                .await
                .map_err(|_| RouteError::Closed)?;
            rx.await.map_err(|_| RouteError::Closed)
        };
        tokio::time::timeout(self.inner.queue_timeout, ask)
            .await
            .map_err(|_| RouteError::Full)?
    }
}

impl Owners for Router {
    fn is_member(&self, addr: &str) -> bool {
        self.membership()
            .is_some_and(|m| m.current().addrs().iter().any(|a| a == addr))
    }

    fn suspect(&self, addr: &str) {
        if let Some(m) = self.membership() {
            m.suspect(addr);
        }
    }

    fn reroute(
        &self,
        items: Vec<Item>,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(members) = self.membership().map(|m| m.current()) else {
                return;
            };
            self.place(items, &members, false).await;
        })
    }
}

/// This node's spans, and every other owner's (by member index).
type Split = (Vec<SpanRecord>, HashMap<usize, Vec<SpanRecord>>);

/// Splits spans into those this node owns and those of each other member.
fn split_by_owner(members: &Members, spans: Vec<SpanRecord>) -> Split {
    let mut local = Vec::new();
    let mut remote: HashMap<usize, Vec<SpanRecord>> = HashMap::new();
    for span in spans {
        match members.owner(&span.index.trace_id) {
            Some(i) if Some(i) != members.self_index() => remote.entry(i).or_default().push(span),
            _ => local.push(span),
        }
    }
    (local, remote)
}

/// Reserved shard permits and the spans each will carry.
struct LocalPermits<'a> {
    permits: Vec<(usize, mpsc::Permit<'a, ShardMsg>)>,
    parts: Vec<Vec<SpanRecord>>,
}

impl LocalPermits<'_> {
    fn send(mut self) {
        for (i, permit) in self.permits {
            permit.send(ShardMsg::Spans(std::mem::take(&mut self.parts[i])));
        }
    }
}

/// Splits spans into `n` parts by `part_of`, each [`compact`]ed into a buffer of its own.
/// Each part's vector is allocated once at its exact size: one pass counts, one moves.
fn split_compacted(
    spans: Vec<SpanRecord>,
    n: usize,
    part_of: impl Fn(&TraceId) -> usize,
) -> Vec<Vec<SpanRecord>> {
    if n == 1 {
        return vec![compact(spans)];
    }
    let mut counts = vec![0usize; n];
    for s in &spans {
        counts[part_of(&s.index.trace_id)] += 1;
    }
    let mut parts: Vec<Vec<SpanRecord>> = counts.iter().map(|&c| Vec::with_capacity(c)).collect();
    for s in spans {
        parts[part_of(&s.index.trace_id)].push(s);
    }
    parts.into_iter().map(compact).collect()
}

/// Copies the spans' bytes into one buffer and re-points each span at its part of it.
fn compact(mut spans: Vec<SpanRecord>) -> Vec<SpanRecord> {
    let total: usize = spans.iter().map(|s| s.bytes.len()).sum();
    let mut buf = BytesMut::with_capacity(total);
    for s in &spans {
        buf.extend_from_slice(&s.bytes);
    }
    let buf = buf.freeze();
    let mut offset = 0;
    for s in &mut spans {
        let len = s.bytes.len();
        s.bytes = buf.slice(offset..offset + len);
        offset += len;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantId;
    use crate::otlp::ingest::{ingest_request, IngestOptions};
    use crate::otlp::testdata::{encoded, request, span};

    fn spans(n: u8) -> (bytes::Bytes, Vec<SpanRecord>) {
        let body = encoded(&request(
            "acme",
            (1..=n).map(|i| span(i, i, 0, false)).collect(),
        ));
        let options = IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: Vec::new(),
            limits: Default::default(),
        };
        let ingested = ingest_request(&body, None, &options).expect("valid request");
        (body, ingested.spans)
    }

    #[test]
    fn each_shard_gets_its_spans_in_request_order_in_one_buffer_of_its_own() {
        let (request_buffer, records) = spans(20);
        let wanted: Vec<(TraceId, Vec<u8>)> = records
            .iter()
            .map(|s| (s.index.trace_id, s.bytes.to_vec()))
            .collect();
        let part_of = |id: &TraceId| (id.0[0] % 3) as usize;
        let parts = split_compacted(records, 3, part_of);
        assert_eq!(parts.len(), 3);
        for (i, part) in parts.iter().enumerate() {
            let expected: Vec<&(TraceId, Vec<u8>)> =
                wanted.iter().filter(|(id, _)| part_of(id) == i).collect();
            assert_eq!(part.len(), expected.len());
            for (s, (id, bytes)) in part.iter().zip(expected) {
                assert_eq!((&s.index.trace_id, &s.bytes[..]), (id, &bytes[..]));
            }
            // One contiguous copy per part: neighbours follow each other, and no span still
            // points into the request buffer (which it would otherwise keep alive).
            for pair in part.windows(2) {
                assert_eq!(
                    pair[0].bytes.as_ptr().wrapping_add(pair[0].bytes.len()),
                    pair[1].bytes.as_ptr()
                );
            }
            let inside = request_buffer.as_ptr_range();
            assert!(part.iter().all(|s| !inside.contains(&s.bytes.as_ptr())));
        }
    }

    #[test]
    fn one_shard_keeps_every_span_in_one_copied_buffer() {
        let (_, records) = spans(5);
        let parts = split_compacted(records, 1, |_| 0);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].len(), 5);
    }
}
