//! The operator's view: per-tenant keep rates over sliding windows, the fate of one recent
//! trace, and the dashboard page. A separate router merged into the admin app, so it reads
//! only the handles it is given (the counters and a way to ask the owning shard).
//!
//! Routes (documented with examples in `docs/admin-api.md`):
//! - `GET /api/v1/tenants?window=5m&sort=volume[&scope=cluster]` (cluster: every node's counts added)
//! - `GET /api/v1/tenants/{id}?window=1h`
//! - `GET /api/v1/history` (per-minute counts over the last hour, for the dashboard)
//! - `GET /api/v1/traces/{trace_id}[?scope=local]` (in a cluster, answered by the trace's owner)
//! - `GET /` (the dashboard)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::fanout::Fanout;
use super::{scope_param, Scope};
use crate::model::{DropReason, TraceId, TraceState, TraceStatus};
use crate::stats::tenant::{drop_reason, reason_index, unix_now, Counts, Window};
use crate::stats::Stats;

/// How many rules the tenant list shows per tenant.
const TOP_RULES: usize = 3;

/// The dashboard: one self-contained page (HTML, JS and SVG inline; nothing from a CDN).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Why a trace lookup got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The owning shard did not answer in time.
    #[error("the owning shard is busy; retry")]
    Busy,
    /// The pipeline is shutting down.
    #[error("the proxy is shutting down")]
    Closed,
}

/// Asks the shard that owns a trace id where the trace stands.
pub trait TraceLookup: Send + Sync + 'static {
    /// `Ok(None)` when the shard neither holds the trace nor remembers its decision.
    fn lookup(
        &self,
        trace_id: TraceId,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TraceStatus>, LookupError>> + Send + '_>>;
}

/// What these routes read.
#[derive(Clone)]
pub struct TenantApi {
    /// Counters (per-tenant table included).
    pub stats: Arc<Stats>,
    /// The shards, for trace lookups.
    pub traces: Arc<dyn TraceLookup>,
    /// The other members' admin APIs (`None`: a single node).
    pub fanout: Option<Arc<Fanout>>,
}

/// Numeric fields of a tenant row that add up across nodes.
const SUMMED: [&str; 17] = [
    "traces_received",
    "traces_decided",
    "traces_kept",
    "traces_dropped",
    "spans_received",
    "spans_decided",
    "spans_kept",
    "spans_dropped",
    "spans_exported",
    "late_spans",
    "logs_received",
    "logs_kept",
    "logs_exported",
    "logs_dropped",
    "metric_points_received",
    "metric_points_exported",
    "metric_points_dropped",
];

/// One node's totals over every tenant of its list (the summed fields), for the dashboard's
/// per-node view of a cluster.
fn list_totals(list: &Value) -> Value {
    let mut totals = serde_json::Map::new();
    for f in SUMMED {
        let sum: u64 = list["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t[f].as_u64())
            .sum();
        totals.insert(f.into(), json!(sum));
    }
    Value::Object(totals)
}

/// One tenant's cluster row while lists are added: the summed fields, and per rule
/// (traces decided, traces kept).
type MergedRow = (serde_json::Map<String, Value>, HashMap<String, (u64, u64)>);

/// Adds several nodes' tenant lists (`GET /api/v1/tenants` answers) into cluster totals:
/// counts summed, keep rates recomputed from the sums, the nodes' top rules merged.
fn merge_lists(lists: &[Value]) -> Vec<serde_json::Map<String, Value>> {
    let mut tenants: std::collections::BTreeMap<String, MergedRow> = Default::default();
    for list in lists {
        for t in list["tenants"].as_array().into_iter().flatten() {
            let Some(name) = t["tenant"].as_str() else {
                continue;
            };
            let (row, rules) = tenants.entry(name.to_string()).or_insert_with(|| {
                let mut m = serde_json::Map::new();
                m.insert("tenant".into(), json!(name));
                for f in SUMMED {
                    m.insert(f.into(), json!(0u64));
                }
                (m, HashMap::new())
            });
            for f in SUMMED {
                let sum =
                    row.get(f).and_then(Value::as_u64).unwrap_or(0) + t[f].as_u64().unwrap_or(0);
                row.insert(f.into(), json!(sum));
            }
            for r in t["top_rules"].as_array().into_iter().flatten() {
                let Some(rule) = r["rule"].as_str() else {
                    continue;
                };
                let e = rules.entry(rule.to_string()).or_default();
                e.0 += r["traces_decided"].as_u64().unwrap_or(0);
                e.1 += r["traces_kept"].as_u64().unwrap_or(0);
            }
        }
    }
    tenants
        .into_values()
        .map(|(mut row, rules)| {
            let n = |k: &str| row.get(k).and_then(Value::as_u64).unwrap_or(0);
            let ratio = |a: u64, b: u64| rate((b > 0).then(|| a as f64 / b as f64));
            let trace_rate = ratio(n("traces_kept"), n("traces_decided"));
            let span_rate = ratio(n("spans_kept"), n("spans_decided"));
            row.insert("trace_keep_rate".into(), trace_rate);
            row.insert("span_keep_rate".into(), span_rate);
            let mut rules: Vec<(String, (u64, u64))> = rules.into_iter().collect();
            rules.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
            let top: Vec<Value> = rules
                .into_iter()
                .take(TOP_RULES)
                .map(|(rule, (decided, kept))| {
                    json!({
                        "rule": rule,
                        "traces_decided": decided,
                        "traces_kept": kept,
                        "keep_rate": ratio(kept, decided),
                    })
                })
                .collect();
            row.insert("top_rules".into(), json!(top));
            row
        })
        .collect()
}

/// Sorts merged rows as `sort` says (validated before).
fn sort_rows(rows: &mut [serde_json::Map<String, Value>], sort: &str) {
    fn n(r: &serde_json::Map<String, Value>, k: &str) -> u64 {
        r.get(k).and_then(Value::as_u64).unwrap_or(0)
    }
    fn name(r: &serde_json::Map<String, Value>) -> &str {
        r.get("tenant").and_then(Value::as_str).unwrap_or("")
    }
    fn keep(r: &serde_json::Map<String, Value>) -> f64 {
        r.get("trace_keep_rate")
            .and_then(Value::as_f64)
            .unwrap_or(f64::INFINITY)
    }
    rows.sort_by(|a, b| {
        let primary = match sort {
            "name" => std::cmp::Ordering::Equal,
            "keep_rate" => keep(a).total_cmp(&keep(b)),
            "dropped" => n(b, "spans_dropped").cmp(&n(a, "spans_dropped")),
            _ => n(b, "spans_received").cmp(&n(a, "spans_received")),
        };
        primary.then_with(|| name(a).cmp(name(b)))
    });
}

/// The routes of this module.
pub fn router(api: TenantApi) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/tenants", get(list))
        .route("/api/v1/tenants/{id}", get(one))
        .route("/api/v1/history", get(history))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .with_state(api)
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

fn window_param(q: &HashMap<String, String>) -> Result<Window, String> {
    match q.get("window") {
        None => Ok(Window::FiveMinutes),
        Some(w) => Window::parse(w)
            .ok_or_else(|| format!("unknown window {w:?}: use 1m, 5m, 1h or all (since start)")),
    }
}

fn rate(r: Option<f64>) -> Value {
    match r {
        Some(r) => json!((r * 1e6).round() / 1e6),
        None => Value::Null,
    }
}

fn rules_json(c: &Counts, limit: usize) -> Vec<Value> {
    let mut rules = c.rules.clone();
    rules.sort_by(|a, b| {
        b.traces_decided
            .cmp(&a.traces_decided)
            .then_with(|| a.rule.cmp(&b.rule))
    });
    rules
        .iter()
        .take(limit)
        .map(|r| {
            json!({
                "rule": &*r.rule,
                "traces_decided": r.traces_decided,
                "traces_kept": r.traces_kept,
                "keep_rate": rate((r.traces_decided > 0)
                    .then(|| r.traces_kept as f64 / r.traces_decided as f64)),
            })
        })
        .collect()
}

/// One tenant's row of the list.
fn row(tenant: &str, c: &Counts) -> serde_json::Map<String, Value> {
    let v = json!({
        "tenant": tenant,
        "traces_received": c.traces_received,
        "traces_decided": c.traces_decided,
        "traces_kept": c.traces_kept,
        "traces_dropped": c.traces_dropped_total(),
        "spans_received": c.spans_received,
        "spans_decided": c.spans_decided,
        "spans_kept": c.spans_kept,
        "spans_dropped": c.spans_dropped_total(),
        "spans_exported": c.spans_exported,
        "late_spans": c.late_spans,
        "logs_received": c.logs_received,
        "logs_kept": c.logs_kept,
        "logs_exported": c.logs_exported,
        "logs_dropped": c.logs_dropped,
        "metric_points_received": c.metric_points_received,
        "metric_points_exported": c.metric_points_exported,
        "metric_points_dropped": c.metric_points_dropped,
        "trace_keep_rate": rate(c.trace_keep_rate()),
        "span_keep_rate": rate(c.span_keep_rate()),
        "top_rules": rules_json(c, TOP_RULES),
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn by_reason(counts: &[u64; 6]) -> Value {
    let mut m = serde_json::Map::new();
    for reason in DropReason::ALL {
        m.insert(
            reason.as_str().to_string(),
            json!(counts[reason_index(reason)]),
        );
    }
    Value::Object(m)
}

async fn list(State(api): State<TenantApi>, Query(q): Query<HashMap<String, String>>) -> Response {
    let window = match window_param(&q) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let scope = match scope_param(&q, Scope::Local) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let local = local_list(&api, window, &q);
    let (Scope::Cluster, Some(fanout), Ok(local)) = (scope, &api.fanout, &local) else {
        // A single node's cluster is itself: scope=cluster answers as local.
        return match local {
            Ok(v) => Json(v).into_response(),
            Err(e) => bad_request(e),
        };
    };
    let path = format!("/api/v1/tenants?window={}&scope=local", window.as_str());
    let answers = fanout
        .ask_others(axum::http::Method::GET, &path, None)
        .await;
    let mut lists = vec![local.clone()];
    let mut me = serde_json::Map::new();
    me.insert("address".into(), json!(fanout.me()));
    me.insert("self".into(), json!(true));
    me.insert("answered".into(), json!(true));
    me.insert("totals".into(), list_totals(local));
    let mut nodes = vec![Value::Object(me)];
    for a in &answers {
        let mut summary = a.summary();
        match a.json().filter(|_| a.ok()) {
            Some(v) => {
                summary.insert("totals".into(), list_totals(&v));
                lists.push(v)
            }
            None => {
                // It answered, but not with a tenant list: its counts are missing.
                summary.insert("answered".into(), json!(false));
            }
        }
        nodes.push(Value::Object(summary));
    }
    let mut rows = merge_lists(&lists);
    let sort = q.get("sort").map(String::as_str).unwrap_or("volume");
    sort_rows(&mut rows, sort);
    let answered = nodes.iter().filter(|n| n["answered"] == true).count();
    Json(json!({
        "scope": "cluster",
        "window": window.as_str(),
        "now_unix": local["now_unix"],
        "nodes_answered": answered,
        "nodes": nodes,
        "tenants": rows,
    }))
    .into_response()
}

/// This node's tenant list (`scope=local`).
fn local_list(
    api: &TenantApi,
    window: Window,
    q: &HashMap<String, String>,
) -> Result<Value, String> {
    let now = unix_now();
    let mut tenants = api.stats.tenants.snapshot(window, now);
    // A tenant with nothing in a short window is still listed (with zeros): it exists.
    match q.get("sort").map(String::as_str).unwrap_or("volume") {
        "volume" => tenants.sort_by(|a, b| {
            b.1.spans_received
                .cmp(&a.1.spans_received)
                .then_with(|| a.0.cmp(&b.0))
        }),
        "name" => tenants.sort_by(|a, b| a.0.cmp(&b.0)),
        "keep_rate" => tenants.sort_by(|a, b| {
            let ra = a.1.trace_keep_rate().unwrap_or(f64::INFINITY);
            let rb = b.1.trace_keep_rate().unwrap_or(f64::INFINITY);
            ra.total_cmp(&rb).then_with(|| a.0.cmp(&b.0))
        }),
        "dropped" => tenants.sort_by(|a, b| {
            b.1.spans_dropped_total()
                .cmp(&a.1.spans_dropped_total())
                .then_with(|| a.0.cmp(&b.0))
        }),
        other => {
            return Err(format!(
                "unknown sort {other:?}: use volume, name, keep_rate or dropped"
            ))
        }
    }
    let rows: Vec<Value> = tenants
        .iter()
        .map(|(t, c)| Value::Object(row(t.as_str(), c)))
        .collect();
    Ok(json!({
        "window": window.as_str(),
        "now_unix": now,
        "max_tenants": api.stats.tenants.max_tenants(),
        "tenants": rows,
    }))
}

async fn one(
    State(api): State<TenantApi>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let window = match window_param(&q) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let now = unix_now();
    let Some(c) = api.stats.tenants.tenant(&id, window, now) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no counts for tenant {id:?}") })),
        )
            .into_response();
    };
    let mut m = row(&id, &c);
    m.remove("top_rules");
    m.insert("window".into(), json!(window.as_str()));
    m.insert("now_unix".into(), json!(now));
    m.insert("rules".into(), json!(rules_json(&c, usize::MAX)));
    m.insert(
        "traces_dropped_by_reason".into(),
        by_reason(&c.traces_dropped),
    );
    m.insert(
        "spans_dropped_by_reason".into(),
        by_reason(&c.spans_dropped),
    );
    Json(Value::Object(m)).into_response()
}

async fn history(State(api): State<TenantApi>) -> Response {
    let now = unix_now();
    let mut tenants = api.stats.tenants.history(now);
    tenants.sort_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<Value> = tenants
        .iter()
        .map(|(t, minutes)| {
            json!({
                "tenant": t.as_str(),
                "minutes": minutes.iter().map(|(start, c)| json!({
                    "start_unix": start,
                    "traces_decided": c.traces_decided,
                    "traces_kept": c.traces_kept,
                    "spans_received": c.spans_received,
                    "trace_keep_rate": rate(c.trace_keep_rate()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let s = &api.stats;
    Json(json!({
        "now_unix": now,
        "buffer": {
            "traces": s.buffered_traces.load(Relaxed),
            "spans": s.buffered_spans.load(Relaxed),
            "bytes": s.buffered_bytes.load(Relaxed),
        },
        "export_queue": {
            "spans": s.export_queue_spans.load(Relaxed),
            "bytes": s.export_queue_bytes.load(Relaxed),
        },
        "tenants": rows,
    }))
    .into_response()
}

async fn trace(
    State(api): State<TenantApi>,
    Path(trace_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = TraceId::from_hex(&trace_id) else {
        return bad_request(format!(
            "{trace_id:?} is not a trace id: 32 hex digits, not all zero"
        ));
    };
    let scope = match scope_param(&q, Scope::Cluster) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let owner = match (scope, &api.fanout) {
        (Scope::Cluster, Some(f)) => f.remote_owner(&id).map(|o| (f, o)),
        _ => None,
    };
    if let Some((fanout, owner)) = owner {
        // Only the owner holds the trace or remembers its decision: answer with its view.
        let path = format!("/api/v1/traces/{id}?scope=local");
        let answer = fanout
            .ask(&owner, axum::http::Method::GET, &path, None)
            .await;
        return match (&answer.result, answer.json()) {
            (Ok(a), Some(Value::Object(mut body))) => {
                body.insert("owner".into(), json!(owner));
                (a.status, Json(Value::Object(body))).into_response()
            }
            (Ok(a), _) => (
                StatusCode::BAD_GATEWAY,
                Json(json!({
                    "trace_id": id.to_string(),
                    "owner": owner,
                    "error": format!("the owner answered {} without JSON", a.status),
                })),
            )
                .into_response(),
            (Err(e), _) => (
                StatusCode::BAD_GATEWAY,
                Json(json!({
                    "trace_id": id.to_string(),
                    "owner": owner,
                    "error": format!("the owner did not answer: {e}"),
                })),
            )
                .into_response(),
        };
    }
    match api.traces.lookup(id).await {
        Ok(Some(status)) => Json(trace_json(id, &status)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "trace_id": id.to_string(),
                "state": "unknown",
                "error": "not buffered and not in the decision cache (never seen, or decided too long ago)",
            })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "trace_id": id.to_string(), "error": e.to_string() })),
        )
            .into_response(),
    }
}

fn trace_json(id: TraceId, status: &TraceStatus) -> Value {
    let (state, rule, sample_rate, reason) = match &status.state {
        TraceState::Pending => ("pending", None, None, None),
        TraceState::Decided(d) => (
            if d.keep { "kept" } else { "dropped" },
            Some(d.rule.to_string()),
            Some(d.sample_rate),
            (!d.keep).then(|| drop_reason(d).as_str()),
        ),
    };
    json!({
        "trace_id": id.to_string(),
        "state": state,
        "tenant": status.tenant.as_str(),
        "span_count": status.spans,
        "rule": rule,
        "sample_rate": sample_rate,
        "drop_reason": reason,
    })
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_totals_add_every_nodes_counts_and_recompute_the_rates() {
        let a = json!({"tenants": [
            {"tenant": "acme", "traces_received": 3, "traces_decided": 2, "traces_kept": 1,
             "spans_received": 9, "spans_decided": 6, "spans_kept": 3, "spans_exported": 3,
             "top_rules": [{"rule": "rest", "traces_decided": 2, "traces_kept": 1}]},
        ]});
        let b = json!({"tenants": [
            {"tenant": "acme", "traces_received": 1, "traces_decided": 2, "traces_kept": 2,
             "spans_received": 4, "spans_decided": 4, "spans_kept": 4, "spans_exported": 4,
             "top_rules": [{"rule": "rest", "traces_decided": 1, "traces_kept": 1},
                           {"rule": "errors", "traces_decided": 1, "traces_kept": 1}]},
            {"tenant": "globex", "spans_received": 20},
        ]});
        let mut rows = merge_lists(&[a, b]);
        sort_rows(&mut rows, "volume");
        assert_eq!(rows[0]["tenant"], "globex");
        let acme = &rows[1];
        assert_eq!(acme["traces_received"], 4);
        assert_eq!(acme["traces_decided"], 4);
        assert_eq!(acme["spans_exported"], 7);
        assert_eq!(acme["trace_keep_rate"], 0.75);
        assert_eq!(acme["span_keep_rate"], 0.7);
        assert_eq!(acme["top_rules"][0]["rule"], "rest");
        assert_eq!(acme["top_rules"][0]["traces_decided"], 3);
        assert_eq!(rows[0]["trace_keep_rate"], Value::Null);
    }
}
