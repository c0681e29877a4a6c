//! The operator's view: per-tenant keep rates over sliding windows, the fate of one recent
//! trace, and the dashboard page. A separate router merged into the admin app, so it reads
//! only the handles it is given (the counters and a way to ask the owning shard).
//!
//! Routes (documented with examples in `docs/admin-api.md`):
//! - `GET /api/v1/tenants?window=5m&sort=volume`
//! - `GET /api/v1/tenants/{id}?window=1h`
//! - `GET /api/v1/history` (per-minute counts over the last hour, for the dashboard)
//! - `GET /api/v1/traces/{trace_id}`
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
            return bad_request(format!(
                "unknown sort {other:?}: use volume, name, keep_rate or dropped"
            ))
        }
    }
    let rows: Vec<Value> = tenants
        .iter()
        .map(|(t, c)| Value::Object(row(t.as_str(), c)))
        .collect();
    Json(json!({
        "window": window.as_str(),
        "now_unix": now,
        "max_tenants": api.stats.tenants.max_tenants(),
        "tenants": rows,
    }))
    .into_response()
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

async fn trace(State(api): State<TenantApi>, Path(trace_id): Path<String>) -> Response {
    let Some(id) = TraceId::from_hex(&trace_id) else {
        return bad_request(format!(
            "{trace_id:?} is not a trace id: 32 hex digits, not all zero"
        ));
    };
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
