//! The admin HTTP API: health, readiness, Prometheus metrics, the live and shadow rules, and
//! runtime tenant tags. It reads the handles it is given and never reaches into a stage.
//! `docs/admin-api.md` documents every endpoint; [`client`] is the CLI's side of it, and
//! [`auth`] the bearer token that guards changes (and, when asked, reads).

pub mod auth;
pub mod client;
pub mod fanout;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

pub mod tenants;

use crate::reload::{LiveRules, ReloadFailure, Trigger};
use crate::sample::SamplerBoard;
use crate::shadow::ShadowStats;
use crate::stats::Stats;
use crate::tags::{unix_ms, TagTable, TagsError, TenantTag};

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// Counters and gauges.
    pub stats: Arc<Stats>,
    /// The live rules.
    pub rules: Arc<LiveRules>,
    /// Runtime tenant tags.
    pub tags: Arc<TagTable>,
    /// Shadow rules outcomes.
    pub shadow: Arc<ShadowStats>,
    /// What each shard's samplers have learned.
    pub samplers: Arc<SamplerBoard>,
    /// True while listeners are up and the proxy accepts data.
    pub ready: Arc<AtomicBool>,
    /// The buffer budget, for readiness.
    pub max_memory: i64,
    /// The cluster this node is part of (`None`: a single node).
    pub cluster: Option<Arc<crate::cluster::status::ClusterStatus>>,
    /// The other members' admin APIs, for cluster-scoped requests (`None`: a single node).
    pub fanout: Option<Arc<fanout::Fanout>>,
    /// Also run on the rules reload API (re-reads static cluster peers).
    pub on_reload: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/rules/reload", post(reload))
        .route("/api/v1/rules/shadow", get(shadow))
        .route("/api/v1/tenants/{id}/tag", put(tag).delete(untag))
        .route("/api/v1/tenant-tags", get(list_tags))
        .route("/api/v1/samplers/{name}", get(sampler))
        .route("/api/v1/cluster", get(cluster))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let ready = s.ready.load(Relaxed) && s.stats.held_bytes() < s.max_memory;
    if ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut out = String::new();
    s.stats.render_prometheus(&mut out);
    let status = s.rules.status();
    out.push_str(&format!(
        "# HELP tailsift_rules_reloads_total Rules reloads, by outcome\n# TYPE tailsift_rules_reloads_total counter\ntailsift_rules_reloads_total{{outcome=\"ok\"}} {}\ntailsift_rules_reloads_total{{outcome=\"error\"}} {}\n",
        status.reloads, status.failures
    ));
    out.push_str(&format!(
        "# HELP tailsift_rules_reload_errors_total Rules reloads that failed (the old rules stayed live)\n# TYPE tailsift_rules_reload_errors_total counter\ntailsift_rules_reload_errors_total {}\n# HELP tailsift_rules_reload_failing 1 while the last reload attempt failed\n# TYPE tailsift_rules_reload_failing gauge\ntailsift_rules_reload_failing {}\n",
        status.failures,
        u8::from(status.failing)
    ));
    let snapshot = s.rules.snapshot();
    out.push_str("# HELP tailsift_rule_hits_total Traces decided by each rule since the rules were loaded\n# TYPE tailsift_rule_hits_total counter\n");
    for r in snapshot.rules() {
        out.push_str(&format!(
            "tailsift_rule_hits_total{{rule=\"{}\",tenant=\"{}\"}} {}\n",
            escape_label(r.rule.name()),
            escape_label(r.tenant.unwrap_or("")),
            r.hits
        ));
    }
    let now_ms = unix_ms(SystemTime::now());
    out.push_str(&format!(
        "# HELP tailsift_tenant_tags Tenants currently tagged for 100% retention\n# TYPE tailsift_tenant_tags gauge\ntailsift_tenant_tags {}\n",
        s.tags.snapshot().active(now_ms).count()
    ));
    if let Some(cluster) = &s.cluster {
        cluster.render_prometheus(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `GET /api/v1/cluster`: members, this node, provider health, shares, forward queues.
async fn cluster(State(s): State<AdminState>) -> Response {
    match &s.cluster {
        Some(c) => Json(c.report(std::time::Duration::from_millis(800)).await).into_response(),
        None => Json(serde_json::json!({
            "self": null,
            "members": [],
            "membership": "single",
            "note": "no [cluster] section: this node owns every trace",
        }))
        .into_response(),
    }
}

/// Escapes a Prometheus label value.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_seconds(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

async fn rules(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = s.rules.snapshot();
    let status = s.rules.status();
    Json(serde_json::json!({
        "source": status.source,
        "source_hash": format!("{:016x}", snapshot.source_hash()),
        "loaded_at_unix": unix_seconds(status.loaded_at),
        "last_trigger": status.last_trigger.map(|t| t.as_str()),
        "reloads": status.reloads,
        "failures": status.failures,
        "failing": status.failing,
        "rules": snapshot.rules().map(|r| serde_json::json!({
            "name": r.rule.name(),
            "tenant": r.tenant,
            "action": r.rule.action().to_string(),
            "line": r.rule.line(),
            "hits": r.hits,
        })).collect::<Vec<_>>(),
        "unmatched_hits": snapshot.unmatched_hits(),
        "warnings": snapshot.warnings().iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        "last_error": status.last_error.as_ref().map(failure_json),
        "shadow": status.shadow_source.as_ref().map(|source| serde_json::json!({
            "source": source,
            "loaded_at_unix": unix_seconds(status.shadow_loaded_at),
            "last_error": status.shadow_last_error.as_ref().map(failure_json),
        })),
    }))
}

fn failure_json(f: &ReloadFailure) -> serde_json::Value {
    serde_json::json!({
        "at_unix": unix_seconds(Some(f.at)),
        "trigger": f.trigger.as_str(),
        "file": f.file,
        "line": f.line,
        "message": f.message,
        "diagnostics": f.diagnostics.iter().map(|d| serde_json::json!({
            "file": d.file,
            "line": d.line,
            "column": d.column,
            "message": d.message,
            "hint": d.hint,
        })).collect::<Vec<_>>(),
    })
}

/// `POST /api/v1/rules/reload[?scope=cluster]`: this node, and with `scope=cluster` every other
/// member from its own file, each node's result in `nodes`.
async fn reload(State(s): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let scope = match scope_param(&q, Scope::Local) {
        Ok(scope) => scope,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let (status, body) = reload_here(&s).await;
    let Some(fanout) = cluster_fanout(&s, scope) else {
        return (status, Json(body)).into_response();
    };
    let answers = fanout
        .ask_others(http::Method::POST, "/api/v1/rules/reload?scope=local", None)
        .await;
    let mut me = self_node(&s, status);
    me.insert("reloaded".into(), body["reloaded"].clone());
    if let Some(e) = body.get("error") {
        me.insert("error".into(), e.clone());
    }
    let mut nodes = vec![serde_json::Value::Object(me)];
    let (mut refused, mut silent) = (!status.is_success(), false);
    for a in &answers {
        let mut summary = a.summary();
        let reloaded = a.json().and_then(|v| v["reloaded"].as_bool());
        summary.insert(
            "reloaded".into(),
            serde_json::json!(reloaded.unwrap_or(false)),
        );
        match reloaded {
            Some(true) => {}
            Some(false) => refused = true,
            None => silent = true,
        }
        nodes.push(serde_json::Value::Object(summary));
    }
    let status = if refused {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if silent {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(serde_json::json!({
            "scope": "cluster",
            "reloaded": status == StatusCode::OK,
            "nodes": nodes,
        })),
    )
        .into_response()
}

/// Reloads this node's rules: the status and body of a local reload answer.
async fn reload_here(s: &AdminState) -> (StatusCode, serde_json::Value) {
    // Reading and compiling the file is blocking work.
    let rules = s.rules.clone();
    if let Some(f) = s.on_reload.clone() {
        let _ = tokio::task::spawn_blocking(move || f()).await;
    }
    let result = tokio::task::spawn_blocking(move || rules.reload(Trigger::Api)).await;
    match result {
        Ok(Ok(())) => (StatusCode::OK, serde_json::json!({"reloaded": true})),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"reloaded": false, "error": e.to_string()}),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"reloaded": false, "error": format!("reload task failed: {e}")}),
        ),
    }
}

/// Applies a tag change on every other member (`?scope=local`, so they do not forward it
/// again); one `nodes` entry per member, this node first.
async fn propagate(
    s: &AdminState,
    fanout: &fanout::Fanout,
    method: http::Method,
    tenant: &str,
    body: Option<&serde_json::Value>,
) -> Vec<serde_json::Value> {
    let path = format!(
        "/api/v1/tenants/{}/tag?scope=local",
        client::encode_path_segment(tenant)
    );
    let answers = fanout.ask_others(method, &path, body).await;
    let mut nodes = vec![serde_json::Value::Object(self_node(s, StatusCode::OK))];
    for a in &answers {
        if !a.ok() {
            tracing::warn!(tenant, peer = %a.address, error = ?a.summary().get("error"), "a tag change did not reach a member; it catches up when it restarts");
        }
        nodes.push(serde_json::Value::Object(a.summary()));
    }
    nodes
}

/// Where a request's answer comes from, or where a change applies: this node, or every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// This node only (also what a forwarded request carries, so it is not forwarded again).
    Local,
    /// Every live member.
    Cluster,
}

/// The `scope` query parameter (`local` or `cluster`), `default` when absent.
pub(crate) fn scope_param(q: &HashMap<String, String>, default: Scope) -> Result<Scope, String> {
    match q.get("scope").map(String::as_str) {
        None => Ok(default),
        Some("local") => Ok(Scope::Local),
        Some("cluster") => Ok(Scope::Cluster),
        Some(other) => Err(format!("unknown scope {other:?}: use local or cluster")),
    }
}

/// The fanout, when the request is cluster-scoped and this node is part of a cluster.
fn cluster_fanout(s: &AdminState, scope: Scope) -> Option<Arc<fanout::Fanout>> {
    match scope {
        Scope::Cluster => s.fanout.clone(),
        Scope::Local => None,
    }
}

/// The `nodes` entry for this node in a cluster-scoped answer.
fn self_node(s: &AdminState, status: StatusCode) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let me = s.cluster.as_ref().map(|c| c.membership.me().to_string());
    m.insert("address".into(), serde_json::json!(me));
    m.insert("self".into(), serde_json::json!(true));
    m.insert("answered".into(), serde_json::json!(true));
    m.insert("status".into(), serde_json::json!(status.as_u16()));
    m
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn shadow(State(s): State<AdminState>) -> Response {
    let status = s.rules.status();
    let Some(source) = status.shadow_source else {
        return error(
            StatusCode::NOT_FOUND,
            "no shadow rules configured (set [rules] shadow_file)",
        );
    };
    let report = s.shadow.report();
    let current = s.rules.shadow_snapshot().map(|r| r.source_hash());
    // Counts of an older shadow set are stale once a new one is loaded and nothing was decided.
    let tenants = if report.shadow_hash.is_some() && report.shadow_hash == current {
        report.tenants
    } else {
        Default::default()
    };
    Json(serde_json::json!({
        "source": source,
        "source_hash": current.map(|h| format!("{h:016x}")),
        "loaded_at_unix": unix_seconds(status.shadow_loaded_at),
        "tenants": tenants.iter().map(|(tenant, c)| serde_json::json!({
            "tenant": tenant,
            "decided": c.decided,
            "kept_live": c.kept_live,
            "kept_shadow": c.kept_shadow,
            "differ": c.differ,
            "live_keep_rate": c.live_keep_rate(),
            "shadow_keep_rate": c.shadow_keep_rate(),
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Body of `PUT /api/v1/tenants/{id}/tag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// Must be true (the only tag today); default true.
    #[serde(default = "yes")]
    pub keep_all: bool,
    /// How long the tag lasts (`"2h"`, `"30m"`); absent = until removed.
    #[serde(rename = "for", default)]
    pub duration: Option<String>,
    /// When the tag was set (Unix ms): sent by the node that forwards a tag to the others, so
    /// every node holds the same tag; an older copy than the one held is ignored.
    #[serde(default)]
    pub set_at_unix_ms: Option<u64>,
    /// When the forwarded tag expires (Unix ms; absent = never). Only with `set_at_unix_ms`.
    #[serde(default)]
    pub expires_at_unix_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

fn tag_json(tenant: &str, tag: &TenantTag, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "tenant": tenant,
        "keep_all": tag.keep_all,
        "set_at_unix_ms": tag.set_at_unix_ms,
        "expires_at_unix_ms": tag.expires_at_unix_ms,
        "expires_in_seconds": tag.expires_at_unix_ms.map(|e| e.saturating_sub(now_ms) / 1000),
    })
}

fn tags_error(e: TagsError) -> Response {
    match e {
        TagsError::BadTenant(_) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        other => {
            tracing::error!(error = %other, "cannot persist tenant tags");
            error(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string())
        }
    }
}

async fn tag(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<TagRequest>,
) -> Response {
    let scope = match scope_param(&q, Scope::Cluster) {
        Ok(scope) => scope,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if !body.keep_all {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "keep_all must be true; to remove a tag use DELETE /api/v1/tenants/{id}/tag",
        );
    }
    let duration = match body.duration.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "\"for\" must be longer than zero",
            )
        }
        Some(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, &format!("\"for\": {e}")),
    };
    let tags = s.tags.clone();
    let now = SystemTime::now();
    let name = tenant.clone();
    let copy = body.set_at_unix_ms.map(|set_at| TenantTag {
        keep_all: true,
        set_at_unix_ms: set_at,
        expires_at_unix_ms: body.expires_at_unix_ms,
    });
    // The state file is written and synced before the new tag is live.
    let apply = move || match copy {
        // A copy forwarded by another node: the same tag everywhere, the newest one wins.
        Some(copy) => tags.merge([(name.clone(), copy.clone())], now).map(|_| {
            tags.snapshot()
                .active(unix_ms(now))
                .find(|(t, _)| *t == name)
                .map_or(copy, |(_, t)| t.clone())
        }),
        None => tags.set(&name, duration, now),
    };
    match tokio::task::spawn_blocking(apply).await {
        Ok(Ok(tag)) => {
            let mut answer = tag_json(&tenant, &tag, unix_ms(now));
            if let Some(fanout) = cluster_fanout(&s, scope) {
                let forwarded = serde_json::json!({
                    "keep_all": true,
                    "set_at_unix_ms": tag.set_at_unix_ms,
                    "expires_at_unix_ms": tag.expires_at_unix_ms,
                });
                let nodes =
                    propagate(&s, &fanout, http::Method::PUT, &tenant, Some(&forwarded)).await;
                answer["nodes"] = serde_json::Value::Array(nodes);
            }
            Json(answer).into_response()
        }
        Ok(Err(e)) => tags_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("tag task failed: {e}"),
        ),
    }
}

async fn untag(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let scope = match scope_param(&q, Scope::Cluster) {
        Ok(scope) => scope,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let tags = s.tags.clone();
    let name = tenant.clone();
    match tokio::task::spawn_blocking(move || tags.remove(&name, SystemTime::now())).await {
        Ok(Ok(removed)) => {
            let mut answer = serde_json::json!({"tenant": tenant, "removed": removed});
            if let Some(fanout) = cluster_fanout(&s, scope) {
                let nodes = propagate(&s, &fanout, http::Method::DELETE, &tenant, None).await;
                answer["nodes"] = serde_json::Value::Array(nodes);
            }
            Json(answer).into_response()
        }
        Ok(Err(e)) => tags_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("untag task failed: {e}"),
        ),
    }
}

async fn list_tags(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let now_ms = unix_ms(SystemTime::now());
    let snapshot = s.tags.snapshot();
    Json(serde_json::json!({
        "tags": snapshot.active(now_ms).map(|(t, tag)| tag_json(t, tag, now_ms)).collect::<Vec<_>>(),
    }))
}

/// A sampler's learned per-key rates, merged across shards (404 for an unknown sampler).
async fn sampler(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let rules = s.rules.snapshot();
    let Some(spec) = rules.sampler_specs().get(&name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no sampler `{name}` in the live rules")})),
        )
            .into_response();
    };
    let split = |k: &str| -> Vec<String> {
        k.split(crate::rules::KEY_SEPARATOR)
            .map(str::to_string)
            .collect()
    };
    let merged = s.samplers.merged(&name);
    let body = match merged {
        // Declared, but no shard has finished an adjustment interval with it yet.
        None => serde_json::json!({
            "name": name,
            "type": spec.type_name(),
            "shards_reporting": 0,
            "keys": [],
        }),
        Some(m) => serde_json::json!({
            "name": name,
            "type": m.type_name,
            "key_fields": m.key_fields,
            "shards_reporting": m.shards,
            "key_count": m.key_count,
            "overflow_traces": m.overflow_traces,
            "keys": m.keys.iter().map(|k| serde_json::json!({
                "key": split(&k.key),
                "traces_per_sec": k.traces_per_sec,
                "sample_rate": k.rate,
                "traces": k.traces,
            })).collect::<Vec<_>>(),
            "tenants": m.tenants.iter().map(|t| serde_json::json!({
                "tenant": t.tenant,
                "weight": t.weight,
                "traces_per_sec": t.traces_per_sec,
                "share_per_sec": t.share_per_sec,
            })).collect::<Vec<_>>(),
        }),
    };
    Json(body).into_response()
}
