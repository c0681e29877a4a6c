//! The route stage: picks the buffer shard that owns each trace id and hands spans over with
//! bounded sends. A request is handed over whole or not at all, so a refused request can be
//! retried by the client without duplicating spans.
//!
//! On the way, each shard's spans are copied out of the request buffer into one contiguous
//! buffer per (request, shard): a held span then pins only its neighbours in the same shard,
//! not the whole request (DESIGN.md: "a slice pins its whole request buffer").

use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc;

use crate::buffer::ShardMsg;
use crate::model::{SpanRecord, TraceId, TraceStatus};

/// Why spans could not be handed over.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// The shards stayed full for the whole queue timeout.
    #[error("the trace buffer is full; retry later")]
    Full,
    /// The pipeline is shutting down.
    #[error("the proxy is shutting down")]
    Closed,
}

/// Hands spans to the shard that owns their trace id.
#[derive(Clone)]
pub struct Router {
    shards: Vec<mpsc::Sender<ShardMsg>>,
    queue_timeout: Duration,
}

impl Router {
    /// A router over the given shard intakes.
    pub fn new(shards: Vec<mpsc::Sender<ShardMsg>>, queue_timeout: Duration) -> Self {
        Router {
            shards,
            queue_timeout,
        }
    }

    /// Splits spans by owner and hands every part over, or none of them.
    pub async fn route(&self, spans: Vec<SpanRecord>) -> Result<(), RouteError> {
        if spans.is_empty() {
            return Ok(());
        }
        let n = self.shards.len();
        let mut parts: Vec<Vec<SpanRecord>> = (0..n).map(|_| Vec::new()).collect();
        for span in spans {
            parts[self.shard_of(&span.index.trace_id)].push(span);
        }
        let reserve = async {
            let mut permits = Vec::with_capacity(n);
            for (i, part) in parts.iter().enumerate() {
                if !part.is_empty() {
                    let permit = self.shards[i]
                        .reserve()
                        .await
                        .map_err(|_| RouteError::Closed)?;
                    permits.push((i, permit));
                }
            }
            Ok::<_, RouteError>(permits)
        };
        let permits = tokio::time::timeout(self.queue_timeout, reserve)
            .await
            .map_err(|_| RouteError::Full)??;
        for (i, permit) in permits {
            permit.send(ShardMsg::Spans(compact(std::mem::take(&mut parts[i]))));
        }
        Ok(())
    }

    /// The shard that owns `trace_id`.
    fn shard_of(&self, trace_id: &TraceId) -> usize {
        (trace_id.hash64() % self.shards.len() as u64) as usize
    }

    /// Asks the owning shard where a trace stands (pending, decided, or unknown: `None`).
    /// Waits at most the queue timeout for room in the shard's intake and for the answer.
    pub async fn lookup(&self, trace_id: TraceId) -> Result<Option<TraceStatus>, RouteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shard = &self.shards[self.shard_of(&trace_id)];
        let ask = async {
            shard
                .send(ShardMsg::Lookup(trace_id, tx))
                .await
                .map_err(|_| RouteError::Closed)?;
            rx.await.map_err(|_| RouteError::Closed)
        };
        tokio::time::timeout(self.queue_timeout, ask)
            .await
            .map_err(|_| RouteError::Full)?
    }
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
