//! The admin HTTP API: health, readiness, Prometheus metrics and the live rules. It reads the
//! handles it is given and never reaches into a stage.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub mod tenants;

use crate::reload::LiveRules;
use crate::stats::Stats;

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// Counters and gauges.
    pub stats: Arc<Stats>,
    /// The live rules.
    pub rules: Arc<LiveRules>,
    /// True while listeners are up and the proxy accepts data.
    pub ready: Arc<AtomicBool>,
    /// The buffer budget, for readiness.
    pub max_memory: i64,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/rules/reload", post(reload))
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
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
        "rules": snapshot.rules().map(|r| serde_json::json!({
            "name": r.rule.name(),
            "tenant": r.tenant,
            "action": r.rule.action().to_string(),
        })).collect::<Vec<_>>(),
        "warnings": snapshot.warnings().iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        "last_error": status.last_error.as_ref().map(|(at, msg)| serde_json::json!({
            "at_unix": unix_seconds(Some(*at)),
            "message": msg,
        })),
    }))
}

async fn reload(State(s): State<AdminState>) -> Response {
    match s.rules.reload() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"reloaded": true}))).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({"reloaded": false, "error": e.to_string()})),
        )
            .into_response(),
    }
}
