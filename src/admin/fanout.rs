//! Operating the cluster as one: asking the other members' admin APIs.
//!
//! ```text
//! admin request ─> Fanout::ask_others ─┬─> Peer/Info on member B ─> B's admin address ─> HTTP to B
//!  (scope=cluster)                     └─> Peer/Info on member C ─> C's admin address ─> HTTP to C
//! ```
//! A member tells its admin address in `Peer/Info` (field `admin`), so only the peer addresses
//! need to be configured. Every ask is bounded as a whole (Info plus the HTTP request) by one
//! timeout and all members are asked concurrently, so a member that does not answer costs at
//! most that timeout and is reported as such, never waited for longer.
//!
//! The same module watches for rules drift: members that answer `Peer/Info` with different
//! rules hashes (a reload that reached only some of them, or different files).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::auth::AdminToken;
use super::client::{self, Answer, ClientError};
use crate::cluster::membership::MembershipHandle;
use crate::cluster::peer::{ForwardError, InfoResponse, PeerClient};
use crate::cluster::status::RulesDrift;
use crate::model::TraceId;
use crate::tags::{TagTable, TenantTag};

/// How long one member may take to answer a fanned-out request (Info and HTTP together).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a node compares the members' rules hashes.
pub const DRIFT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a member gave no answer to a fanned-out request.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// `Peer/Info` failed, so its admin address is unknown.
    #[error("peer protocol: {0}")]
    Info(#[from] ForwardError),
    /// The member answered `Peer/Info` without an admin address: its admin API listens on
    /// loopback only, or it runs a version before the field.
    #[error("the member has no admin address the others can reach (its admin.listen is a loopback address, or it runs an older version)")]
    NoAdmin,
    /// The admin request failed.
    #[error("{0}")]
    Admin(#[from] ClientError),
    /// Nothing came back in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One member's answer to a fanned-out admin request.
#[derive(Debug)]
pub struct NodeAnswer {
    /// Its advertise (peer) address.
    pub address: String,
    /// Its admin address, when `Peer/Info` told it.
    pub admin: Option<String>,
    /// The HTTP answer, or why there is none.
    pub result: Result<Answer, FanoutError>,
}

impl NodeAnswer {
    /// The answer's JSON body, when it answered with JSON.
    pub fn json(&self) -> Option<Value> {
        self.result
            .as_ref()
            .ok()
            .and_then(|a| serde_json::from_str(&a.body).ok())
    }

    /// Whether it answered with a 2xx status.
    pub fn ok(&self) -> bool {
        self.result.as_ref().is_ok_and(|a| a.status.is_success())
    }

    /// The `nodes` entry of a cluster-scoped answer: who, whether it answered, and why not.
    pub fn summary(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("address".into(), json!(self.address));
        m.insert("admin".into(), json!(self.admin));
        m.insert("self".into(), json!(false));
        match &self.result {
            Ok(a) => {
                m.insert("answered".into(), json!(true));
                m.insert("status".into(), json!(a.status.as_u16()));
                if !a.status.is_success() {
                    let why = serde_json::from_str::<Value>(&a.body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_else(|| a.body.trim().to_string());
                    m.insert("error".into(), json!(why));
                }
            }
            Err(e) => {
                m.insert("answered".into(), json!(false));
                m.insert("error".into(), json!(e.to_string()));
            }
        }
        m
    }
}

/// Asks the other members' admin APIs on behalf of this node's admin API.
pub struct Fanout {
    membership: Arc<MembershipHandle>,
    timeout: Duration,
    /// One lazily connecting peer client per member, reused across asks.
    clients: Mutex<HashMap<String, PeerClient>>,
    /// The members' rules hashes as last compared (shared with the cluster's status).
    pub drift: Arc<RulesDrift>,
    /// This node's admin token, sent to the others (a cluster shares one token).
    token: Arc<AdminToken>,
}

impl Fanout {
    /// A fanout over the members `membership` lists, `timeout` per member, sending `token`.
    pub fn new(
        membership: Arc<MembershipHandle>,
        timeout: Duration,
        token: Arc<AdminToken>,
    ) -> Arc<Fanout> {
        Arc::new(Fanout {
            membership,
            timeout,
            clients: Mutex::new(HashMap::new()),
            drift: Arc::new(RulesDrift::default()),
            token,
        })
    }

    /// This node's advertise address.
    pub fn me(&self) -> &str {
        self.membership.me()
    }

    /// The other live members' advertise addresses, sorted.
    pub fn others(&self) -> Vec<String> {
        let me = self.membership.me();
        self.membership
            .current()
            .addrs()
            .iter()
            .filter(|a| a.as_str() != me)
            .cloned()
            .collect()
    }

    /// The member that owns `trace_id`, when that is not this node.
    pub fn remote_owner(&self, trace_id: &TraceId) -> Option<String> {
        self.membership
            .current()
            .remote_owner(trace_id)
            .map(str::to_string)
    }

    fn client(&self, addr: &str) -> Result<PeerClient, ForwardError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        // Members come and go: drop clients of addresses that are no longer members.
        let live = self.membership.current();
        clients.retain(|a, _| live.addrs().contains(a));
        let c = PeerClient::new(addr, self.timeout)?;
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Asks one member's `Peer/Info`, bounded by the timeout.
    pub async fn info(&self, addr: &str) -> Result<InfoResponse, FanoutError> {
        let client = self.client(addr)?;
        match tokio::time::timeout(self.timeout, client.info()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(FanoutError::Timeout(self.timeout)),
        }
    }

    /// Sends one admin request to the member at `addr` (its peer address): Info for its admin
    /// address, then the HTTP request, both within one timeout.
    pub async fn ask(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> NodeAnswer {
        let mut admin = None;
        let call = async {
            let info = self.info(addr).await?;
            if info.admin.is_empty() {
                return Err(FanoutError::NoAdmin);
            }
            admin = Some(info.admin.clone());
            let base = format!("http://{}", info.admin);
            let authorization = self.token.bearer();
            Ok(client::request(&base, method, path, body, authorization.as_deref()).await?)
        };
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(FanoutError::Timeout(self.timeout)),
        };
        if let Err(e) = &result {
            tracing::debug!(peer = addr, path, error = %e, "a member did not answer an admin request");
        }
        NodeAnswer {
            address: addr.to_string(),
            admin,
            result,
        }
    }

    /// Sends the same admin request to every other member at once; one answer per member,
    /// in member order, within the timeout.
    pub async fn ask_others(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Vec<NodeAnswer> {
        let others = self.others();
        let asks = others
            .iter()
            .map(|addr| self.ask(addr, method.clone(), path, body));
        futures_util::future::join_all(asks).await
    }

    /// Copies the tenant tags of the first member that answers into `tags` (newer tag wins),
    /// so a node that was down while a tag changed catches up at start.
    pub async fn copy_tags(&self, tags: &TagTable) {
        let others = self.others();
        if others.is_empty() {
            return;
        }
        let answers = self
            .ask_others(Method::GET, "/api/v1/tenant-tags", None)
            .await;
        for answer in answers {
            let Some(listed) = answer.ok().then(|| answer.json()).flatten() else {
                continue;
            };
            let theirs: Vec<(String, TenantTag)> = listed["tags"]
                .as_array()
                .map(|a| a.iter().filter_map(listed_tag).collect())
                .unwrap_or_default();
            let tags_seen = theirs.len();
            match tags.merge(theirs, SystemTime::now()) {
                Ok(changed) => tracing::info!(
                    from = %answer.address,
                    tags = tags_seen,
                    changed,
                    "tenant tags copied from a peer"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist tenant tags copied from a peer")
                }
            }
            return;
        }
        tracing::info!(
            peers = ?others,
            "no peer answered with its tenant tags; starting with this node's tags file"
        );
    }

    /// Compares the rules hash of every member that answers with this node's own, every
    /// `every`, until `stop`; `own` is how this node answers `Peer/Info`.
    pub async fn watch_drift(
        self: Arc<Self>,
        own: Arc<dyn Fn() -> InfoResponse + Send + Sync>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let mut hashes = BTreeMap::new();
            hashes.insert(self.me().to_string(), own().rules_hash);
            let others = self.others();
            let answers = futures_util::future::join_all(others.iter().map(|a| self.info(a))).await;
            for (addr, answer) in others.into_iter().zip(answers) {
                if let Ok(info) = answer {
                    hashes.insert(addr, info.rules_hash);
                }
            }
            self.drift.observe(hashes);
        }
    }
}

/// One entry of `GET /api/v1/tenant-tags` read back into a tag.
fn listed_tag(v: &Value) -> Option<(String, TenantTag)> {
    let tenant = v["tenant"].as_str()?.to_string();
    let tag: TenantTag = serde_json::from_value(v.clone()).ok()?;
    Some((tenant, tag))
}

/// The admin address the other members can reach: `listen`, with an unspecified IP
/// (0.0.0.0, ::) replaced by the host part of this node's advertise address. `None` when the
/// admin API listens on loopback but the node advertises another host: the others would
/// reach their own admin API at that address, not this node's.
pub fn reachable_admin(listen: std::net::SocketAddr, advertise: &str) -> Option<String> {
    let host = match advertise.rsplit_once(':') {
        Some((host, _port)) if !host.is_empty() => host,
        _ => advertise,
    };
    if listen.ip().is_unspecified() {
        return Some(format!("{host}:{}", listen.port()));
    }
    let advertised_loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if listen.ip().is_loopback() && !advertised_loopback {
        return None;
    }
    Some(listen.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_admin_ip_becomes_the_advertised_host() {
        let at =
            |listen: &str, advertise: &str| reachable_admin(listen.parse().unwrap(), advertise);
        assert_eq!(
            at("0.0.0.0:8080", "10.1.2.3:4319").as_deref(),
            Some("10.1.2.3:8080")
        );
        assert_eq!(
            at("0.0.0.0:8080", "node-2.tailsift:4319").as_deref(),
            Some("node-2.tailsift:8080")
        );
        assert_eq!(
            at("[::]:8080", "[fd00::7]:4319").as_deref(),
            Some("[fd00::7]:8080")
        );
        assert_eq!(
            at("10.9.9.9:9000", "10.1.2.3:4319").as_deref(),
            Some("10.9.9.9:9000")
        );
        assert_eq!(
            at("127.0.0.1:9000", "127.0.0.1:4319").as_deref(),
            Some("127.0.0.1:9000")
        );
    }

    #[test]
    fn a_loopback_admin_api_of_a_node_advertising_another_host_is_not_offered() {
        // The others would reach their own admin API at 127.0.0.1, not this node's.
        let listen = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(reachable_admin(listen, "10.1.2.3:4319"), None);
        assert_eq!(reachable_admin(listen, "node-2.tailsift:4319"), None);
    }
}
