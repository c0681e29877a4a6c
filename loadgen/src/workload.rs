//! The workload: a reproducible "round" of traces, pre-encoded as OTLP request templates.
//!
//! A round is `round_traces` trace shapes drawn from the seed: tenant (Zipf over `tenants`
//! tenants, the largest about half the volume), 1–60 spans (mean about 10) spread over up to
//! five service tiers (one `service.name` per tier), ~10 attributes per span, 1% of traces
//! with one ERROR span. Each tier is exported like a separate SDK would: a trace's spans of
//! one tier go into that tier's current request, so a trace reaches the proxy in several
//! requests. A tier's request is closed at `request_spans` spans, and every tier flushes at
//! the end of a segment (16×`request_spans` spans): sparse tiers still flush, the lag between
//! a trace's requests is bounded, and the generator stops at a segment boundary, so no trace
//! is sent in part (a rootless remainder would sit in the proxy until `trace_timeout`).
//!
//! The generator sends the round's requests over and over; pass `r` patches the ids of global
//! trace `g = r × round_traces + i` into a copy of the template at offsets found once, so every
//! pass carries new, unique traces with the same shapes. The checker rebuilds the same round
//! from the seed to know which traces must have arrived whole.

use anyhow::{ensure, Context, Result};
use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::ids;
use crate::wire;

/// A segment is this many requests' worth of spans: at its end every tier flushes, so no
/// trace straddles two segments and the generator can stop without leaving traces in part.
const SEGMENT_REQUESTS: u64 = 16;
/// Number of service tiers (frontend → storage).
pub const TIERS: usize = 5;
pub const SERVICES: [[&str; 3]; TIERS] = [
    ["frontend", "web-bff", "mobile-gateway"],
    ["api-gateway", "auth", "graphql"],
    ["orders", "cart", "search"],
    ["inventory", "payments", "recommendations"],
    ["postgres-proxy", "redis-cache", "kafka-producer"],
];
pub const ROUTES: [&str; 8] = [
    "/api/v1/orders/{id}",
    "/api/v1/cart",
    "/api/v1/search",
    "/api/v1/users/{id}",
    "/api/v2/checkout",
    "/api/v1/inventory/{sku}",
    "/healthz",
    "/api/v1/recommendations",
];
pub const OPERATIONS: [&str; 8] = [
    "GET /api/v1/orders/{id}",
    "POST /api/v2/checkout",
    "SELECT orders",
    "cache.get",
    "publish order.created",
    "auth.verify_token",
    "render.page",
    "inventory.reserve",
];
/// Tenants whose traces the realistic rules keep at 100%.
pub const TAGGED_TENANTS: [&str; 2] = ["tenant-1", "tenant-2"];
pub const TENANT_KEY: &str = "tenant.id";
pub const MAX_SPANS: u32 = 60;

/// Everything a round depends on; recorded in the generator's report so the checker can
/// rebuild the same round.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub tenants: u32,
    pub round_traces: u32,
    pub request_spans: u32,
    pub zipf_s: f64,
    pub error_fraction: f64,
    pub mean_spans: f64,
}

impl Params {
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "tenants": self.tenants,
            "round_traces": self.round_traces,
            "request_spans": self.request_spans,
            "zipf_s": self.zipf_s,
            "error_fraction": self.error_fraction,
            "mean_spans": self.mean_spans,
        })
    }

    pub fn from_json(v: &Value) -> Result<Params> {
        let u = |k: &str| v[k].as_u64().with_context(|| format!("params.{k} missing"));
        let f = |k: &str| v[k].as_f64().with_context(|| format!("params.{k} missing"));
        Ok(Params {
            seed: u("seed")?,
            tenants: u("tenants")? as u32,
            round_traces: u("round_traces")? as u32,
            request_spans: u("request_spans")? as u32,
            zipf_s: f("zipf_s")?,
            error_fraction: f("error_fraction")?,
            mean_spans: f("mean_spans")?,
        })
    }
}

pub fn tenant_name(t: u16) -> String {
    format!("tenant-{}", t + 1)
}

pub struct SpanShape {
    pub tier: u8,
    pub parent: Option<u8>,
    pub error: bool,
}

/// One trace of the round.
pub struct TraceShape {
    pub tenant: u16,
    pub spans: u32,
    pub error: bool,
    /// Indices (within the round) of the requests that carry its spans.
    pub requests: Vec<u32>,
    pub service: [u8; TIERS],
    pub shape: Vec<SpanShape>,
}

/// Where an id goes in a template.
#[derive(Clone, Copy)]
pub struct Patch {
    pub offset: u32,
    pub trace: u32,
    /// Span index whose span id to write; `u8::MAX` for the trace id.
    pub span: u8,
}

/// Writes `src` into `out` with the ids of pass `g_base` (the global number of the round's
/// first trace in this pass) written at `patches`, in one pass: bytes up to each id, the id.
pub fn write_patched(src: &[u8], patches: &[Patch], seed: u64, g_base: u64, out: &mut impl BufMut) {
    let mut pos = 0usize;
    for p in patches {
        let g = g_base + u64::from(p.trace);
        let at = p.offset as usize;
        out.put_slice(&src[pos..at]);
        if p.span == u8::MAX {
            out.put_slice(&ids::trace_id(seed, g));
            pos = at + 16;
        } else {
            out.put_slice(&ids::span_id(seed, g, u32::from(p.span)));
            pos = at + 8;
        }
    }
    out.put_slice(&src[pos..]);
}

/// One pre-encoded request.
pub struct Template {
    bytes: Bytes,
    patches: Vec<Patch>,
    pub spans: u32,
    /// Spans per tenant in this request.
    pub tenant_spans: Vec<(u16, u32)>,
    /// Index (within the round) of the first request of this request's segment.
    segment_first: u32,
    /// The spans in wire order, (trace within the round, span index), grouped by resource.
    pub members: Vec<(u32, u8)>,
    /// The resources in wire order, (tenant, tier, service) and how many spans each holds.
    pub resources: Vec<((u16, u8, u8), u32)>,
}

pub struct Round {
    pub params: Params,
    pub traces: Vec<TraceShape>,
    pub requests: Vec<Template>,
    /// `span_prefix[k]` = spans in requests `0..k` of a round.
    span_prefix: Vec<u64>,
}

impl Round {
    pub fn build(params: &Params, base_time_ns: u64) -> Result<Round> {
        ensure!(
            params.tenants >= 1 && params.tenants <= 1000,
            "tenants must be 1..=1000"
        );
        ensure!(params.round_traces >= 1, "round_traces must be at least 1");
        ensure!(
            params.request_spans >= 1,
            "request_spans must be at least 1"
        );
        let mut rng = SmallRng::seed_from_u64(params.seed);
        let zipf = zipf_cdf(params.tenants, params.zipf_s);
        let p_geo = 1.0 / params.mean_spans.max(1.0);
        let mut traces = Vec::with_capacity(params.round_traces as usize);
        let mut open: [Vec<(u32, u8)>; TIERS] = Default::default();
        let mut closed: Vec<Vec<(u32, u8)>> = Vec::new();
        // For each closed request, the index of the first request of its segment.
        let mut segment_first: Vec<u32> = Vec::new();
        let segment_spans = SEGMENT_REQUESTS * u64::from(params.request_spans);
        let mut segment_pos = 0u64;
        let mut segment_start = 0u32;
        for i in 0..params.round_traces {
            let trace = draw_trace(&mut rng, &zipf, p_geo, params.error_fraction);
            for (j, s) in trace.shape.iter().enumerate() {
                open[s.tier as usize].push((i, j as u8));
            }
            segment_pos += u64::from(trace.spans);
            traces.push(trace);
            for tier in open.iter_mut() {
                if tier.len() as u32 >= params.request_spans {
                    closed.push(std::mem::take(tier));
                    segment_first.push(segment_start);
                }
            }
            // End of a segment (or of the round): every tier flushes, deepest first (child
            // spans end, and are exported, before their parents).
            if segment_pos >= segment_spans || i + 1 == params.round_traces {
                for t in (0..TIERS).rev() {
                    if !open[t].is_empty() {
                        closed.push(std::mem::take(&mut open[t]));
                        segment_first.push(segment_start);
                    }
                }
                segment_pos = 0;
                segment_start = closed.len() as u32;
            }
        }

        let mut requests = Vec::with_capacity(closed.len());
        for (k, members) in closed.iter().enumerate() {
            let template = encode_request(&mut rng, &traces, members, base_time_ns)?;
            let mut last = u32::MAX;
            let mut seen: Vec<u32> = members.iter().map(|m| m.0).collect();
            seen.sort_unstable();
            for tr in seen {
                if tr != last {
                    traces[tr as usize].requests.push(k as u32);
                    last = tr;
                }
            }
            requests.push(template);
        }
        for (t, first) in requests.iter_mut().zip(segment_first) {
            t.segment_first = first;
        }
        let mut span_prefix = Vec::with_capacity(requests.len() + 1);
        let mut acc = 0u64;
        span_prefix.push(0);
        for r in &requests {
            acc += u64::from(r.spans);
            span_prefix.push(acc);
        }
        Ok(Round {
            params: params.clone(),
            traces,
            requests,
            span_prefix,
        })
    }

    pub fn round_spans(&self) -> u64 {
        *self.span_prefix.last().unwrap_or(&0)
    }

    /// Spans in all requests before global request `q`.
    pub fn spans_before(&self, q: u64) -> u64 {
        let n = self.requests.len() as u64;
        (q / n) * self.round_spans() + self.span_prefix[(q % n) as usize]
    }

    /// The first global request at or after `q` that starts a segment: stopping there leaves
    /// no trace in part.
    pub fn segment_boundary(&self, q: u64) -> u64 {
        let n = self.requests.len() as u64;
        let (pass, k) = (q / n, (q % n) as usize);
        let first = u64::from(self.requests[k].segment_first);
        if first == k as u64 {
            return q;
        }
        // The next segment starts at the first later request whose segment differs.
        match self.requests[k..]
            .iter()
            .position(|r| u64::from(r.segment_first) != first)
        {
            Some(d) => q + d as u64,
            None => (pass + 1) * n,
        }
    }

    /// The first request of `q`'s segment.
    pub fn segment_start(&self, q: u64) -> u64 {
        let n = self.requests.len() as u64;
        (q / n) * n + u64::from(self.template(q).segment_first)
    }

    pub fn template(&self, q: u64) -> &Template {
        &self.requests[(q % self.requests.len() as u64) as usize]
    }

    /// The bytes of global request `q`: its template with the ids of pass `q / R` patched in.
    #[cfg(test)]
    pub fn render(&self, q: u64) -> Bytes {
        let mut buf = bytes::BytesMut::with_capacity(self.template(q).bytes.len());
        self.write_to(q, &mut buf);
        buf.freeze()
    }

    /// Writes request `q` into `out` in one pass: template bytes up to each id, then the id.
    pub fn write_to(&self, q: u64, out: &mut impl BufMut) {
        let n = self.requests.len() as u64;
        let pass = q / n;
        let t = &self.requests[(q % n) as usize];
        let g_base = pass * u64::from(self.params.round_traces);
        write_patched(&t.bytes, &t.patches, self.params.seed, g_base, out);
    }

    pub fn request_len(&self, q: u64) -> usize {
        self.template(q).bytes.len()
    }

    pub fn is_tagged(&self, tenant: u16) -> bool {
        TAGGED_TENANTS.contains(&tenant_name(tenant).as_str())
    }

    /// Numbers that describe the workload, for reports.
    pub fn describe(&self) -> Value {
        let spans = self.round_spans();
        let bytes: usize = self.requests.iter().map(|r| r.bytes.len()).sum();
        let mut per_tenant = vec![0u64; self.params.tenants as usize];
        let mut services_per_trace = 0usize;
        let mut errors = 0;
        for t in &self.traces {
            per_tenant[t.tenant as usize] += u64::from(t.spans);
            services_per_trace += t.shape.iter().map(|s| s.tier).max().unwrap_or(0) as usize + 1;
            errors += usize::from(t.error);
        }
        let shares: serde_json::Map<String, Value> = per_tenant
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                (
                    tenant_name(i as u16),
                    json!(round3(s as f64 / spans as f64)),
                )
            })
            .collect();
        let n = self.traces.len() as f64;
        json!({
            "round_traces": self.traces.len(),
            "round_spans": spans,
            "round_requests": self.requests.len(),
            "round_bytes": bytes,
            "mean_spans_per_trace": round3(spans as f64 / n),
            "max_spans_per_trace": self.traces.iter().map(|t| t.spans).max(),
            "mean_services_per_trace": round3(services_per_trace as f64 / n),
            "mean_requests_per_trace": round3(self.traces.iter().map(|t| t.requests.len()).sum::<usize>() as f64 / n),
            "mean_spans_per_request": round3(spans as f64 / self.requests.len() as f64),
            "mean_bytes_per_span": round3(bytes as f64 / spans as f64),
            "error_trace_fraction": round3(errors as f64 / n),
            "tenant_span_share": shares,
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn zipf_cdf(n: u32, s: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=n).map(|k| 1.0 / f64::from(k).powf(s)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

fn draw_trace(rng: &mut SmallRng, zipf: &[f64], p_geo: f64, error_fraction: f64) -> TraceShape {
    let u: f64 = rng.random();
    let tenant = zipf.iter().position(|&c| u < c).unwrap_or(zipf.len() - 1) as u16;
    // 1 + geometric(p): mean 1/p, capped at MAX_SPANS.
    let v: f64 = rng.random();
    let extra = ((1.0 - v).ln() / (1.0 - p_geo).ln()).floor();
    let n = (1.0 + extra).min(f64::from(MAX_SPANS)) as u32;
    let tiers = 1 + (n as usize - 1).min(rng.random_range(0..TIERS));
    // Span 0 is the root (tier 0); spans 1..tiers open one tier each; the rest land anywhere.
    let mut tier_of: Vec<u8> = (0..n as usize)
        .map(|j| {
            if j < tiers {
                j as u8
            } else {
                rng.random_range(0..tiers) as u8
            }
        })
        .collect();
    tier_of[1..].sort_unstable();
    let mut shape: Vec<SpanShape> = Vec::with_capacity(n as usize);
    for (j, &tier) in tier_of.iter().enumerate() {
        let parent = if j == 0 {
            None
        } else {
            // A span of the tier above (or the root for tier 0), always an earlier index.
            let above: Vec<u8> = (0..j)
                .filter(|&p| tier == 0 || tier_of[p] + 1 == tier)
                .map(|p| p as u8)
                .collect();
            let above = if above.is_empty() { vec![0] } else { above };
            Some(above[rng.random_range(0..above.len())])
        };
        shape.push(SpanShape {
            tier,
            parent,
            error: false,
        });
    }
    let error = rng.random::<f64>() < error_fraction;
    if error {
        let j = rng.random_range(0..n as usize);
        shape[j].error = true;
    }
    let mut service = [0u8; TIERS];
    for s in service.iter_mut() {
        *s = rng.random_range(0..3);
    }
    TraceShape {
        tenant,
        spans: n,
        error,
        requests: Vec::new(),
        service,
        shape,
    }
}

pub fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

pub fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
    }
}

pub fn resource(tenant: u16, tier: usize, service: u8) -> Resource {
    let name = SERVICES[tier][service as usize];
    Resource {
        attributes: vec![
            kv_str("service.name", name),
            kv_str(TENANT_KEY, tenant_name(tenant)),
            kv_str("service.version", "1.4.2"),
            kv_str("host.name", format!("{name}-{}-7d9f8", tenant_name(tenant))),
            kv_str("telemetry.sdk.language", "rust"),
            kv_str("telemetry.sdk.name", "opentelemetry"),
        ],
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

fn span(
    rng: &mut SmallRng,
    trace: &TraceShape,
    trace_index: u32,
    j: usize,
    base_time_ns: u64,
) -> Span {
    let s = &trace.shape[j];
    let tier = s.tier as usize;
    let service = SERVICES[tier][trace.service[tier] as usize];
    let start = base_time_ns
        + u64::from(trace_index) * 100_000
        + tier as u64 * 1_000_000
        + j as u64 * 10_000;
    let duration = 50_000_000 / (tier as u64 + 1) + rng.random_range(0..1_000_000);
    let route = ROUTES[rng.random_range(0..ROUTES.len())];
    let kind = if j == 0
        || s.parent
            .is_some_and(|p| trace.shape[p as usize].tier != s.tier)
    {
        2 // SERVER
    } else if rng.random_bool(0.5) {
        3 // CLIENT
    } else {
        1 // INTERNAL
    };
    let placeholder_span = vec![0x11u8; 8];
    Span {
        trace_id: vec![0x11u8; 16],
        span_id: placeholder_span.clone(),
        trace_state: String::new(),
        parent_span_id: if s.parent.is_some() {
            placeholder_span
        } else {
            Vec::new()
        },
        flags: 0x101,
        name: OPERATIONS[rng.random_range(0..OPERATIONS.len())].to_string(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        attributes: vec![
            kv_str(
                "http.request.method",
                if rng.random_bool(0.7) { "GET" } else { "POST" },
            ),
            kv_str("http.route", route),
            kv_int("http.response.status_code", if s.error { 500 } else { 200 }),
            kv_str("server.address", service),
            kv_str(
                "url.path",
                format!("/api/v1/orders/{}", rng.random_range(1_000_000..9_999_999)),
            ),
            kv_str(
                "enduser.id",
                format!("u{}", rng.random_range(10_000..99_999)),
            ),
            kv_str("app.request_id", format!("{:016x}", rng.random::<u64>())),
            kv_int("thread.id", rng.random_range(1..64)),
            kv_str("code.function", "handle"),
            kv_str("peer.service", SERVICES[(tier + 1) % TIERS][0]),
        ],
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(if s.error {
            Status {
                message: "internal error".to_string(),
                code: 2,
            }
        } else {
            Status {
                message: String::new(),
                code: 0,
            }
        }),
    }
}

fn encode_request(
    rng: &mut SmallRng,
    traces: &[TraceShape],
    members: &[(u32, u8)],
    base_time_ns: u64,
) -> Result<Template> {
    // Group by resource (tenant, tier, service) in order of first appearance.
    type ResourceKey = (u16, u8, u8);
    let mut groups: Vec<(ResourceKey, Vec<(u32, u8)>)> = Vec::new();
    for &(tr, j) in members {
        let t = &traces[tr as usize];
        let tier = t.shape[j as usize].tier;
        let key = (t.tenant, tier, t.service[tier as usize]);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push((tr, j)),
            None => groups.push((key, vec![(tr, j)])),
        }
    }
    let ordered: Vec<(u32, u8)> = groups.iter().flat_map(|g| g.1.iter().copied()).collect();
    let mut tenant_spans: Vec<(u16, u32)> = Vec::new();
    let mut resource_spans = Vec::with_capacity(groups.len());
    for ((tenant, tier, service), spans) in &groups {
        match tenant_spans.iter_mut().find(|x| x.0 == *tenant) {
            Some(x) => x.1 += spans.len() as u32,
            None => tenant_spans.push((*tenant, spans.len() as u32)),
        }
        resource_spans.push(ResourceSpans {
            resource: Some(resource(*tenant, *tier as usize, *service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tailsift-loadgen".to_string(),
                    version: "0.1.0".to_string(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                spans: spans
                    .iter()
                    .map(|&(tr, j)| span(rng, &traces[tr as usize], tr, j as usize, base_time_ns))
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    let bytes = ExportTraceServiceRequest { resource_spans }.encode_to_vec();

    let mut patches = Vec::with_capacity(ordered.len() * 3);
    let mut k = 0usize;
    wire::for_each_span(&bytes, TENANT_KEY.as_bytes(), |view| {
        let (tr, j) = ordered[k];
        k += 1;
        let offs = wire::id_offsets(view.bytes)?;
        let shape = &traces[tr as usize].shape[j as usize];
        let want = [(Some(u8::MAX), 16), (Some(j), 8), (shape.parent, 8)];
        for (slot, (id_of, len)) in offs.iter().zip(want) {
            match (slot, id_of) {
                (Some((off, l)), Some(span)) => {
                    ensure!(*l == len, "id field of unexpected length {l}");
                    patches.push(Patch {
                        offset: (view.offset + off) as u32,
                        trace: tr,
                        span,
                    });
                }
                (None, None) => {}
                _ => anyhow::bail!("template span ids do not match the shape"),
            }
        }
        Ok(())
    })?;
    ensure!(
        k == ordered.len(),
        "template has {k} spans, expected {}",
        ordered.len()
    );
    Ok(Template {
        bytes: Bytes::from(bytes),
        patches,
        spans: ordered.len() as u32,
        tenant_spans,
        segment_first: 0,
        members: ordered,
        resources: groups.iter().map(|g| (g.0, g.1.len() as u32)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Params {
        Params {
            seed: 3,
            tenants: 20,
            round_traces: 500,
            request_spans: 64,
            zipf_s: 1.6,
            error_fraction: 0.01,
            mean_spans: 10.0,
        }
    }

    #[test]
    fn rendered_requests_carry_every_trace_whole_with_fresh_ids() {
        let round = Round::build(&small(), 1_000).unwrap();
        let r = round.requests.len() as u64;
        let m = u64::from(round.params.round_traces);
        // Two passes: the second must carry new trace numbers with the same shapes.
        let mut counts = vec![0u32; 2 * m as usize];
        for q in 0..2 * r {
            let bytes = round.render(q);
            let decoded = <ExportTraceServiceRequest as Message>::decode(&bytes[..]).unwrap();
            for rs in &decoded.resource_spans {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        let g = ids::trace_number(&span.trace_id).unwrap();
                        assert_eq!(span.trace_id, ids::trace_id(3, g));
                        counts[g as usize] += 1;
                    }
                }
            }
        }
        for (g, &c) in counts.iter().enumerate() {
            assert_eq!(c, round.traces[g % m as usize].spans, "trace {g}");
        }
    }

    #[test]
    fn the_same_seed_rebuilds_the_same_round() {
        let a = Round::build(&small(), 1_000).unwrap();
        let b = Round::build(&small(), 0).unwrap();
        assert_eq!(a.round_spans(), b.round_spans());
        assert_eq!(a.requests.len(), b.requests.len());
        for (x, y) in a.traces.iter().zip(&b.traces) {
            assert_eq!(
                (x.tenant, x.spans, x.error, &x.requests),
                (y.tenant, y.spans, y.error, &y.requests)
            );
        }
    }

    #[test]
    fn stopping_at_a_segment_boundary_never_splits_a_trace() {
        let round = Round::build(&small(), 0).unwrap();
        let n = round.requests.len() as u64;
        let boundaries: Vec<u64> = (0..n).map(|q| round.segment_boundary(q)).collect();
        assert!(boundaries.len() > 2);
        for t in &round.traces {
            for &b in &boundaries {
                let before = t.requests.iter().filter(|&&k| u64::from(k) < b).count();
                assert!(
                    before == 0 || before == t.requests.len(),
                    "cut at {b} splits a trace"
                );
            }
        }
    }
}
