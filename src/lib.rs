//! tailsift: a tail-sampling OTLP trace proxy.
//!
//! ```text
//!  OTLP gRPC :4317 ─┐
//!  OTLP HTTP :4318 ─┴─> receive ─> route ─> buffer ─> decide ─> export ─> OTLP gRPC / HTTP / file
//!                        (tenant)   (shard    (per-trace  (rules,   (batch, annotate,
//!                                    by id)    timers)     th/rv)    retry, count)
//!  OTLP metrics (same listeners) ─> receive ─> export::metrics (bounded queue, retry) ─> backend
//!                                   (count points; bytes passed through unchanged)
//!  admin HTTP :8080 (bearer token for changes, see admin::auth): /healthz /readyz /metrics /api/v1/rules[/reload|/shadow] /api/v1/tenant-tags
//!                    /api/v1/samplers/{name}
//!                    /api/v1/tenants[/{id}] /api/v1/traces/{id} /api/v1/history / (dashboard)
//! ```
//!
//! Where each part lives:
//! - [`receive`]: OTLP/gRPC and OTLP/HTTP listeners, limits, partial success.
//! - [`otlp`]: the wire format: reading spans without decoding them, writing them back out.
//! - [`route`]: which shard owns a trace id; all-or-nothing hand-over with backpressure.
//! - [`cluster`]: membership, trace-id ownership across nodes, the peer protocol, and the
//!   fanout that lets one node's admin API answer for every member.
//! - [`buffer`]: per-shard trace tables, timers, memory budget, decision cache.
//! - [`decide`] + [`consistent`]: rule verdicts turned into consistent keep/drop decisions.
//! - [`rules`]: the rules language (a leaf: parses, validates, evaluates).
//! - [`sample`]: dynamic samplers (EMA per key, throughput, tenant-fair), one set per shard.
//! - [`export`]: batching, annotation, sinks, retries; `export::metrics` passes metrics through.
//! - [`stats`], [`admin`], [`reload`], [`config`]: counting, the admin API, live rules (and their
//!   file watch), config.
//! - [`tags`]: runtime tenant tags (keep all of a tenant's traces), persisted in a state file.
//! - [`shadow`]: a candidate rule set's outcomes counted beside the live ones.
//! - [`explain`]: `tailsift rules test`, deciding recorded OTLP/JSON traces with reasons.
//! - [`telemetry`]: the log line formats of `tailsift run` (`--log-format json`).
//! - [`app`]: the composition root; [`model`]: the types that cross stages.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod buffer;
pub mod cluster;
pub mod config;
pub mod consistent;
pub mod decide;
pub mod explain;
pub mod export;
pub mod model;
pub mod otlp;
pub mod receive;
pub mod reload;
pub mod route;
pub mod rules;
pub mod sample;
pub mod shadow;
pub mod stats;
pub mod tags;
pub mod telemetry;
