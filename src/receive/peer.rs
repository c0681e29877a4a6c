//! The peer listener: `tailsift.peer.v1.Peer/Forward` (proto/tailsift_peer.proto). Spans a
//! peer forwards are read without decoding (the index is extracted as at ingest) and held on
//! this node's shards; handed-over traces keep their first-seen time. A batch is held all or
//! nothing, and a retried batch (same sender and batch id) is held once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use prost::Message;
use tokio::time::Instant;
use tonic::body::Body as TonicBody;
use tonic::codec::CompressionEncoding;
use tonic::server::{NamedService, UnaryService};
use tonic::Status;

use crate::cluster::forward::PeerIntakeCounters;
use crate::cluster::peer::{
    read_group, AnnounceRequest, ForwardRequest, ForwardResponse, InfoResponse, ANNOUNCE_PATH,
    FORWARD_PATH, INFO_PATH,
};
use crate::model::DropReason;
use crate::otlp::codec::RawCodec;
use crate::otlp::ingest::SpanLimits;
use crate::route::Router;
use crate::stats::Stats;

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;
type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// Batch ids remembered per sender (a retry comes within seconds; this covers minutes of
/// batches at full rate).
const REMEMBERED_BATCHES: usize = 65_536;
/// Senders remembered at once.
const REMEMBERED_SENDERS: usize = 1024;

#[derive(Default)]
struct Window {
    done: HashSet<u64>,
    order: VecDeque<u64>,
    in_progress: HashSet<u64>,
}

/// Which batches were held already, per sender.
#[derive(Default)]
struct Dedup {
    senders: Mutex<HashMap<String, Window>>,
}

enum Seen {
    New,
    InProgress,
    Done,
}

impl Dedup {
    fn begin(&self, sender: &str, id: u64) -> Seen {
        let Ok(mut senders) = self.senders.lock() else {
            return Seen::New;
        };
        if senders.len() >= REMEMBERED_SENDERS && !senders.contains_key(sender) {
            senders.clear();
        }
        let w = senders.entry(sender.to_string()).or_default();
        if w.done.contains(&id) {
            Seen::Done
        } else if !w.in_progress.insert(id) {
            Seen::InProgress
        } else {
            Seen::New
        }
    }

    fn finish(&self, sender: &str, id: u64, held: bool) {
        let Ok(mut senders) = self.senders.lock() else {
            return;
        };
        let w = senders.entry(sender.to_string()).or_default();
        w.in_progress.remove(&id);
        if held && w.done.insert(id) {
            w.order.push_back(id);
            while w.order.len() > REMEMBERED_BATCHES {
                if let Some(old) = w.order.pop_front() {
                    w.done.remove(&old);
                }
            }
        }
    }
}

/// The gRPC `Peer` service of this node.
#[derive(Clone)]
pub struct PeerService {
    inner: Arc<Inner>,
}

struct Inner {
    router: Router,
    reserved_attributes: Vec<String>,
    limits: SpanLimits,
    stats: Arc<Stats>,
    counters: Arc<PeerIntakeCounters>,
    dedup: Dedup,
    accepting: AtomicBool,
    max_request_bytes: usize,
    info: Arc<dyn Fn() -> InfoResponse + Send + Sync>,
    announce: Announce,
}

/// What the node does when a peer announces it is leaving (`true`) or back (`false`).
pub type Announce = Arc<dyn Fn(&str, bool) + Send + Sync>;

impl PeerService {
    /// A service holding forwarded spans through `router`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        router: Router,
        reserved_attributes: Vec<String>,
        limits: SpanLimits,
        stats: Arc<Stats>,
        counters: Arc<PeerIntakeCounters>,
        max_request_bytes: usize,
        info: Arc<dyn Fn() -> InfoResponse + Send + Sync>,
        announce: Announce,
    ) -> Self {
        PeerService {
            inner: Arc::new(Inner {
                router,
                reserved_attributes,
                // Forwarded spans were checked by the receiving node; the per-request span
                // limit does not apply to a batch of many requests.
                limits: SpanLimits {
                    max_spans_per_request: usize::MAX,
                    ..limits
                },
                stats,
                counters,
                dedup: Dedup::default(),
                accepting: AtomicBool::new(true),
                max_request_bytes,
                info,
                announce,
            }),
        }
    }

    /// Stops holding new batches (the node is leaving): peers retry elsewhere.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Relaxed);
    }
}

impl NamedService for PeerService {
    const NAME: &'static str = crate::cluster::peer::SERVICE_NAME;
}

impl<B> tower::Service<http::Request<B>> for PeerService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let path = req.uri().path();
            if path == INFO_PATH {
                let mut grpc = tonic::server::Grpc::new(RawCodec);
                return Ok(grpc.unary(InfoMethod { inner }, req).await);
            }
            if path == ANNOUNCE_PATH {
                let mut grpc = tonic::server::Grpc::new(RawCodec);
                return Ok(grpc.unary(AnnounceMethod { inner }, req).await);
            }
            if path != FORWARD_PATH {
                return Ok(Status::unimplemented("unknown Peer method").into_http());
            }
            // A batch holds up to forward_batch_max_spans spans of any size: allow a generous
            // multiple of the client request limit.
            let limit = inner.max_request_bytes.saturating_mul(8);
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(ForwardMethod { inner }, req).await)
        })
    }
}

struct ForwardMethod {
    inner: Arc<Inner>,
}

impl UnaryService<Bytes> for ForwardMethod {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.forward(request.into_inner()).await })
    }
}

struct InfoMethod {
    inner: Arc<Inner>,
}

impl UnaryService<Bytes> for InfoMethod {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, _request: tonic::Request<Bytes>) -> Self::Future {
        let info = (self.inner.info)();
        Box::pin(async move { Ok(tonic::Response::new(Bytes::from(info.encode_to_vec()))) })
    }
}

struct AnnounceMethod {
    inner: Arc<Inner>,
}

impl UnaryService<Bytes> for AnnounceMethod {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let a = AnnounceRequest::decode(request.into_inner()).map_err(|e| {
                Status::invalid_argument(format!("cannot decode AnnounceRequest: {e}"))
            })?;
            (inner.announce)(&a.sender, a.leaving);
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

impl Inner {
    async fn forward(&self, body: Bytes) -> Result<tonic::Response<Bytes>, Status> {
        if !self.accepting.load(Relaxed) {
            return Err(Status::unavailable("this node is shutting down"));
        }
        let request = ForwardRequest::decode(body)
            .map_err(|e| Status::invalid_argument(format!("cannot decode ForwardRequest: {e}")))?;
        let sender = request.sender.clone();
        let id = request.batch_id;
        match self.dedup.begin(&sender, id) {
            Seen::Done => {
                self.counters.duplicate_batches.fetch_add(1, Relaxed);
                return Ok(response(0));
            }
            Seen::InProgress => {
                return Err(Status::unavailable(
                    "this batch is still being held from an earlier attempt; retry",
                ))
            }
            Seen::New => {}
        }
        let now = Instant::now();
        let mut plain = Vec::new();
        let mut handoffs = Vec::new();
        let mut invalid = 0;
        for group in request.groups {
            let read = read_group(group, &self.reserved_attributes, &self.limits);
            invalid += read.invalid;
            if read.invalid_headers > 0 {
                // Names and values are not logged: values are credentials.
                tracing::warn!(
                    sender = %request.sender,
                    headers = read.invalid_headers,
                    "forwarded pass-through headers that are not valid headers were dropped"
                );
            }
            match read.handoff {
                None => plain.extend(read.spans),
                Some(h) => {
                    let first_seen = now
                        .checked_sub(Duration::from_millis(h.age_ms))
                        .unwrap_or(now);
                    handoffs.push((read.spans, first_seen, h.root_seen));
                }
            }
        }
        let n = plain.len() + handoffs.iter().map(|(s, _, _)| s.len()).sum::<usize>();
        let traces = handoffs.len() as u64;
        let decisions: Vec<_> = request
            .decisions
            .into_iter()
            .filter_map(|d| d.into_handed())
            .collect();
        let handed_decisions = decisions.len() as u64;
        let held = async {
            // Decisions first: late spans in the same batch then follow them.
            self.router.remember(decisions).await?;
            self.router.hold(plain, handoffs).await
        };
        match held.await {
            Ok(()) => {
                self.dedup.finish(&sender, id, true);
                self.counters.spans_received.fetch_add(n as u64, Relaxed);
                self.counters.batches_received.fetch_add(1, Relaxed);
                self.counters.handoff_traces.fetch_add(traces, Relaxed);
                self.counters
                    .handoff_decisions
                    .fetch_add(handed_decisions, Relaxed);
                if invalid > 0 {
                    tracing::warn!(peer = %sender, invalid, "spans from a peer could not be indexed");
                    self.stats.drop_spans(DropReason::Invalid, invalid);
                }
                Ok(response(n as u64))
            }
            Err(e) => {
                self.dedup.finish(&sender, id, false);
                self.counters.refused_batches.fetch_add(1, Relaxed);
                Err(Status::unavailable(e.to_string()))
            }
        }
    }
}

fn response(accepted_spans: u64) -> tonic::Response<Bytes> {
    tonic::Response::new(Bytes::from(
        ForwardResponse { accepted_spans }.encode_to_vec(),
    ))
}
