//! What `GET /api/v1/cluster`, `tailsift cluster` and `/metrics` show about the cluster:
//! members, this node's identity, provider health, the share of the hash space each member
//! owns, forward queues per peer, and each member's own view (rules hash, members).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::forward::{PeerIntakeCounters, PeerQueue};
use super::membership::{score, Members, MembershipHandle, ProviderReport};
use super::peer::{InfoResponse, PeerClient};
use crate::config::MembershipKind;
use crate::model::TraceId;

/// One per-peer Prometheus series: name, type, help, and how to read it off a queue.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerQueue) -> i64,
);

/// The handles the cluster report reads.
pub struct ClusterStatus {
    /// static | dns | redis.
    pub kind: MembershipKind,
    /// The live members.
    pub membership: Arc<MembershipHandle>,
    /// The forward queues that exist now.
    pub queues: Arc<dyn Fn() -> Vec<Arc<PeerQueue>> + Send + Sync>,
    /// What peers sent this node.
    pub intake: Arc<PeerIntakeCounters>,
    /// How this node answers `Peer/Info`.
    pub info: Arc<dyn Fn() -> InfoResponse + Send + Sync>,
    /// Whether the members run the same rules (compared by the admin fanout every second).
    pub drift: Arc<RulesDrift>,
}

/// One member in the report.
#[derive(Debug, Serialize)]
pub struct MemberReport {
    /// Its advertise address.
    pub address: String,
    /// Share of the trace-id space it owns (0..1).
    pub share: f64,
    /// This node.
    pub is_self: bool,
    /// Its rules hash, as it answered (None: it did not answer).
    pub rules_hash: Option<String>,
    /// The members it sees (None: it did not answer).
    pub sees: Option<Vec<String>>,
    /// Its version, as it answered.
    pub version: Option<String>,
    /// Its admin API address, as it answered (None: it did not answer, or runs an older version).
    pub admin: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// One peer's forward queue in the report.
#[derive(Debug, Serialize)]
pub struct QueueReport {
    /// The peer.
    pub peer: String,
    /// Bytes reserved or queued.
    pub queue_bytes: u64,
    /// Spans queued.
    pub queued_spans: i64,
    /// Spans the peer accepted.
    pub forwarded_spans: u64,
    /// Failed forward calls.
    pub failures: u64,
    /// Retries.
    pub retries: u64,
    /// Spans routed again after the peer left.
    pub rerouted_spans: u64,
    /// Buffered traces handed to the peer.
    pub handoff_traces: u64,
    /// Remembered decisions handed to the peer.
    pub handoff_decisions: u64,
}

/// The whole report (`GET /api/v1/cluster`).
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// This node's advertise address.
    #[serde(rename = "self")]
    pub self_address: String,
    /// The live members' advertise addresses, sorted.
    pub members: Vec<String>,
    /// static | dns | redis.
    pub membership: &'static str,
    /// Health of the membership source.
    pub provider: ProviderReport,
    /// The members in detail.
    pub member_details: Vec<MemberReport>,
    /// Forward queues per peer.
    pub forward_queues: Vec<QueueReport>,
    /// Spans held from peers.
    pub received_from_peers_spans: u64,
    /// Traces handed over to this node.
    pub handoff_traces_received: u64,
    /// Remembered decisions handed over to this node.
    pub handoff_decisions_received: u64,
    /// Members that announced their leave and are left out until they are back.
    pub departed: Vec<String>,
    /// This node is leaving (SIGTERM): it owns nothing any more.
    pub leaving: bool,
    /// Members left out because their calls failed for `peer_down_after` (probed each second).
    pub suspected: Vec<String>,
    /// Retried batches recognised and held once.
    pub duplicate_batches: u64,
    /// Batches refused (buffer full; the sender retries).
    pub refused_batches: u64,
    /// True when every member that answered sees the same members and runs the same rules.
    pub consistent: bool,
}

/// The share of the trace-id space each member owns, by sampling `n` ids.
pub fn shares(members: &Members, n: u64) -> Vec<f64> {
    let mut counts = vec![0u64; members.addrs().len()];
    for i in 0..n {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&score(i, 0x5151).to_le_bytes());
        b[8..].copy_from_slice(&score(i, 0xa3a3).to_le_bytes());
        if let Some(o) = members.owner(&TraceId(b)) {
            counts[o] += 1;
        }
    }
    counts.into_iter().map(|c| c as f64 / n as f64).collect()
}

impl ClusterStatus {
    /// Builds the report, asking every other member for its view (each at most `timeout`).
    pub async fn report(&self, timeout: Duration) -> ClusterReport {
        let members = self.membership.current();
        let me = self.membership.me().to_string();
        let shares = shares(&members, 1 << 15);
        let own = (self.info)();
        let asks = members.addrs().iter().map(|addr| {
            let addr = addr.clone();
            let own = own.clone();
            let me = me.clone();
            async move {
                if addr == me {
                    return (addr, Ok(own));
                }
                let answer = match PeerClient::new(&addr, timeout) {
                    Ok(c) => c.info().await,
                    Err(e) => Err(e),
                };
                (addr, answer)
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut consistent = true;
        let mut member_details = Vec::new();
        for ((addr, answer), share) in answers.into_iter().zip(shares) {
            let is_self = addr == me;
            match answer {
                Ok(info) => {
                    if info.rules_hash != own.rules_hash || info.members != own.members {
                        consistent = false;
                    }
                    member_details.push(MemberReport {
                        address: addr,
                        share,
                        is_self,
                        rules_hash: Some(info.rules_hash),
                        sees: Some(info.members),
                        version: Some(info.version),
                        admin: (!info.admin.is_empty()).then_some(info.admin),
                        error: None,
                    });
                }
                Err(e) => member_details.push(MemberReport {
                    address: addr,
                    share,
                    is_self,
                    rules_hash: None,
                    sees: None,
                    version: None,
                    admin: None,
                    error: Some(e.to_string()),
                }),
            }
        }
        let mut forward_queues: Vec<QueueReport> = (self.queues)()
            .iter()
            .map(|q| QueueReport {
                peer: q.addr().to_string(),
                queue_bytes: q.bytes(),
                queued_spans: q.queued_spans(),
                forwarded_spans: q.counters.forwarded_spans.load(Relaxed),
                failures: q.counters.failures.load(Relaxed),
                retries: q.counters.retries.load(Relaxed),
                rerouted_spans: q.counters.rerouted_spans.load(Relaxed),
                handoff_traces: q.counters.handoff_traces.load(Relaxed),
                handoff_decisions: q.counters.handoff_decisions.load(Relaxed),
            })
            .collect();
        forward_queues.sort_by(|a, b| a.peer.cmp(&b.peer));
        ClusterReport {
            self_address: me,
            members: members.addrs().to_vec(),
            membership: kind_name(self.kind),
            provider: self.membership.report(),
            member_details,
            forward_queues,
            received_from_peers_spans: self.intake.spans_received.load(Relaxed),
            handoff_traces_received: self.intake.handoff_traces.load(Relaxed),
            handoff_decisions_received: self.intake.handoff_decisions.load(Relaxed),
            departed: self.membership.departed(),
            leaving: self.membership.is_leaving(),
            suspected: self.membership.suspected(),
            duplicate_batches: self.intake.duplicate_batches.load(Relaxed),
            refused_batches: self.intake.refused_batches.load(Relaxed),
            consistent,
        }
    }

    /// Appends the cluster's Prometheus series.
    pub fn render_prometheus(&self, out: &mut String) {
        let members = self.membership.current();
        let provider = self.membership.report();
        let _ = write!(
            out,
            "# HELP tailsift_cluster_members Live members this node routes to\n# TYPE tailsift_cluster_members gauge\ntailsift_cluster_members {}\n\
             # HELP tailsift_cluster_membership_changes_total Changes of the member set\n# TYPE tailsift_cluster_membership_changes_total counter\ntailsift_cluster_membership_changes_total {}\n\
             # HELP tailsift_cluster_membership_healthy 1 while the membership source answers\n# TYPE tailsift_cluster_membership_healthy gauge\ntailsift_cluster_membership_healthy {}\n\
             # HELP tailsift_cluster_membership_errors_total Failed reads of the membership source\n# TYPE tailsift_cluster_membership_errors_total counter\ntailsift_cluster_membership_errors_total {}\n",
            members.addrs().len(),
            provider.changes,
            u8::from(provider.healthy),
            provider.errors,
        );
        let _ = write!(
            out,
            "# HELP tailsift_cluster_rules_drift 1 while the members that answer run rules with different hashes\n# TYPE tailsift_cluster_rules_drift gauge\ntailsift_cluster_rules_drift {}\n",
            u8::from(self.drift.drifted()),
        );
        let queues = (self.queues)();
        let series: [Series; 8] = [
            (
                "tailsift_peer_forwarded_spans_total",
                "counter",
                "Spans forwarded to and accepted by each peer",
                |q| q.counters.forwarded_spans.load(Relaxed) as i64,
            ),
            (
                "tailsift_peer_forward_failures_total",
                "counter",
                "Failed forward calls per peer (each retried)",
                |q| q.counters.failures.load(Relaxed) as i64,
            ),
            (
                "tailsift_peer_forward_retries_total",
                "counter",
                "Forward retries per peer",
                |q| q.counters.retries.load(Relaxed) as i64,
            ),
            (
                "tailsift_peer_rerouted_spans_total",
                "counter",
                "Queued spans routed to a new owner after the peer left",
                |q| q.counters.rerouted_spans.load(Relaxed) as i64,
            ),
            (
                "tailsift_peer_handoff_traces_total",
                "counter",
                "Buffered traces handed to each peer after membership changes",
                |q| q.counters.handoff_traces.load(Relaxed) as i64,
            ),
            (
                "tailsift_peer_handoff_decisions_total",
                "counter",
                "Remembered decisions handed to each peer after membership changes",
                |q| q.counters.handoff_decisions.load(Relaxed) as i64,
            ),
            (
                "tailsift_peer_queue_bytes",
                "gauge",
                "Bytes reserved or queued for each peer",
                |q| q.bytes() as i64,
            ),
            (
                "tailsift_peer_queue_spans",
                "gauge",
                "Spans queued for each peer",
                |q| q.queued_spans(),
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for q in &queues {
                let _ = writeln!(
                    out,
                    "{name}{{peer=\"{}\"}} {}",
                    q.addr().replace('"', ""),
                    get(q)
                );
            }
        }
        let i = &self.intake;
        let _ = write!(
            out,
            "# HELP tailsift_peer_received_spans_total Spans held from peers\n# TYPE tailsift_peer_received_spans_total counter\ntailsift_peer_received_spans_total {}\n\
             # HELP tailsift_peer_received_handoff_traces_total Traces handed over to this node\n# TYPE tailsift_peer_received_handoff_traces_total counter\ntailsift_peer_received_handoff_traces_total {}\n\
             # HELP tailsift_peer_received_handoff_decisions_total Remembered decisions handed over to this node\n# TYPE tailsift_peer_received_handoff_decisions_total counter\ntailsift_peer_received_handoff_decisions_total {}\n\
             # HELP tailsift_peer_duplicate_batches_total Retried batches recognised and held once\n# TYPE tailsift_peer_duplicate_batches_total counter\ntailsift_peer_duplicate_batches_total {}\n\
             # HELP tailsift_peer_refused_batches_total Batches from peers refused while the buffer was full (retried by the peer)\n# TYPE tailsift_peer_refused_batches_total counter\ntailsift_peer_refused_batches_total {}\n",
            i.spans_received.load(Relaxed),
            i.handoff_traces.load(Relaxed),
            i.handoff_decisions.load(Relaxed),
            i.duplicate_batches.load(Relaxed),
            i.refused_batches.load(Relaxed),
        );
    }
}

/// The config name of a membership kind.
pub fn kind_name(kind: MembershipKind) -> &'static str {
    match kind {
        MembershipKind::Static => "static",
        MembershipKind::Dns => "dns",
        MembershipKind::Redis => "redis",
    }
}

/// Whether the members run the same rules, as last compared.
#[derive(Debug, Default)]
pub struct RulesDrift {
    drifted: AtomicBool,
    last: Mutex<BTreeMap<String, String>>,
}

impl RulesDrift {
    /// Records the rules hash each answering member reported (by advertise address); logs a
    /// warning when the hashes differ and differ otherwise than last time. Returns whether
    /// the members drift.
    pub fn observe(&self, hashes: BTreeMap<String, String>) -> bool {
        let mut distinct: Vec<&String> = hashes.values().collect();
        distinct.sort();
        distinct.dedup();
        let drifted = distinct.len() > 1;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last != hashes {
            if drifted {
                tracing::warn!(
                    hashes = ?hashes,
                    "cluster members run different rules; reload them with POST /api/v1/rules/reload?scope=cluster"
                );
            } else if self.drifted.load(Relaxed) {
                tracing::info!(hash = ?distinct.first(), "cluster members run the same rules again");
            }
            *last = hashes;
        }
        self.drifted.store(drifted, Relaxed);
        drifted
    }

    /// True while the members that answered report different rules hashes.
    pub fn drifted(&self) -> bool {
        self.drifted.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, h)| (a.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn members_with_different_rules_hashes_drift_until_they_agree_again() {
        let drift = RulesDrift::default();
        assert!(!drift.observe(hashes(&[("a:1", "x"), ("b:1", "x")])));
        assert!(drift.observe(hashes(&[("a:1", "x"), ("b:1", "y")])));
        assert!(drift.drifted());
        assert!(!drift.observe(hashes(&[("a:1", "y"), ("b:1", "y")])));
        assert!(!drift.drifted());
    }
}
