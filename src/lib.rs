//! tailsift: a tail-sampling OTLP trace proxy.
//!
//! ```text
//!  OTLP gRPC :4317 ─┐
//!  OTLP HTTP :4318 ─┴─> receive ─> route ─> buffer ─> decide ─> export ─> OTLP gRPC / HTTP / file
//!                        (tenant)   (shard    (per-trace  (rules,   (batch, annotate,
//!                                    by id)    timers)     th/rv)    retry, count)
//!  admin HTTP :8080: /healthz /readyz /metrics /api/v1/rules /api/v1/tenants /api/v1/traces/{id} /
//! ```
//!
//! Where each part lives:
//! - [`receive`]: OTLP/gRPC and OTLP/HTTP listeners, limits, partial success.
//! - [`otlp`]: the wire format: reading spans without decoding them, writing them back out.
//! - [`route`]: which shard owns a trace id; all-or-nothing hand-over with backpressure.
//! - [`buffer`]: per-shard trace tables, timers, memory budget, decision cache.
//! - [`decide`] + [`consistent`]: rule verdicts turned into consistent keep/drop decisions.
//! - [`rules`]: the rules language (a leaf: parses, validates, evaluates).
//! - [`export`]: batching, annotation, sinks, retries.
//! - [`stats`], [`admin`], [`reload`], [`config`]: counting, the admin API, live rules, config.
//! - [`app`]: the composition root; [`model`]: the types that cross stages.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod buffer;
pub mod config;
pub mod consistent;
pub mod decide;
pub mod export;
pub mod model;
pub mod otlp;
pub mod receive;
pub mod reload;
pub mod route;
pub mod rules;
pub mod stats;
