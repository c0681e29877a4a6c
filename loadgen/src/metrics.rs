//! The metrics workload: a round of pre-encoded `ExportMetricsServiceRequest`s, each the
//! periodic export of a few processes (resources of Zipf-drawn tenants and the trace
//! workload's services) with a realistic mix of data points: about 35% gauges (memory, CPU,
//! queue depth per state or CPU), 45% sums (request, message and connection counters per
//! route, method and status; monotonic and not) and 20% explicit-bucket histograms (request
//! and query durations, 15 buckets, with sum, min and max). A metric holds at most 24 points.
//!
//! The proxy passes metrics through unchanged, so the requests need no fresh ids: the round
//! is sent over and over as it is.

use anyhow::{ensure, Result};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::workload::{kv_int, kv_str, resource, round3, zipf_cdf, ROUTES, SERVICES, TIERS};

const METRIC_SEED_KEY: u64 = 0x3E7_1C5_3E7_1C5;
/// Most data points in one metric (attribute combinations of one instrument).
const POINTS_PER_METRIC: u32 = 24;
/// Bucket bounds of the duration histograms (the OpenTelemetry HTTP semantic conventions').
const BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const GAUGES: [(&str, &str); 4] = [
    ("process.memory.usage", "By"),
    ("system.cpu.utilization", "1"),
    ("messaging.queue.depth", "{message}"),
    ("jvm.thread.count", "{thread}"),
];
const SUMS: [(&str, &str, bool); 4] = [
    ("http.server.request.count", "{request}", true),
    ("messaging.client.sent.messages", "{message}", true),
    ("db.client.connection.count", "{connection}", false),
    ("http.server.active_requests", "{request}", false),
];
const HISTOGRAMS: [(&str, &str); 2] = [
    ("http.server.request.duration", "s"),
    ("db.client.operation.duration", "s"),
];
const METHODS: [&str; 2] = ["GET", "POST"];
const STATUSES: [i64; 3] = [200, 404, 500];
const STATES: [&str; 6] = ["user", "system", "idle", "iowait", "used", "free"];

/// What the metrics round depends on.
#[derive(Clone, Debug)]
pub struct MetricParams {
    pub seed: u64,
    pub tenants: u32,
    pub zipf_s: f64,
    /// Distinct requests in a round.
    pub requests: u32,
    pub points_per_request: u32,
    pub resources_per_request: u32,
}

impl MetricParams {
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "tenants": self.tenants,
            "zipf_s": self.zipf_s,
            "requests": self.requests,
            "points_per_request": self.points_per_request,
            "resources_per_request": self.resources_per_request,
        })
    }
}

pub struct MetricsRound {
    pub params: MetricParams,
    pub requests: Vec<Bytes>,
    /// Points per kind (gauge, sum, histogram) over the round.
    kinds: [u64; 3],
}

impl MetricsRound {
    pub fn build(params: &MetricParams, base_time_ns: u64) -> Result<MetricsRound> {
        ensure!(
            params.requests >= 1,
            "metric requests per round must be at least 1"
        );
        ensure!(
            params.resources_per_request >= 1
                && params.points_per_request >= params.resources_per_request,
            "need at least one resource and one point per resource"
        );
        ensure!(
            params.tenants >= 1 && params.tenants <= 1000,
            "tenants must be 1..=1000"
        );
        let mut rng = SmallRng::seed_from_u64(params.seed ^ METRIC_SEED_KEY);
        let zipf = zipf_cdf(params.tenants, params.zipf_s);
        let mut kinds = [0u64; 3];
        let mut requests = Vec::with_capacity(params.requests as usize);
        for _ in 0..params.requests {
            let r = params.resources_per_request;
            let mut resource_metrics = Vec::with_capacity(r as usize);
            for i in 0..r {
                // Spread the points evenly; the first resources take the remainder.
                let p =
                    params.points_per_request / r + u32::from(i < params.points_per_request % r);
                let u: f64 = rng.random();
                let tenant = zipf.iter().position(|&c| u < c).unwrap_or(zipf.len() - 1) as u16;
                let tier = rng.random_range(0..TIERS);
                let service = rng.random_range(0..3u8);
                let hist = p / 5;
                let sums = p * 9 / 20;
                let gauges = p - hist - sums;
                kinds[0] += u64::from(gauges);
                kinds[1] += u64::from(sums);
                kinds[2] += u64::from(hist);
                let mut metrics = Vec::new();
                let start = base_time_ns.saturating_sub(60_000_000_000);
                push_metrics(
                    &mut rng,
                    &mut metrics,
                    Kind::Gauge,
                    gauges,
                    start,
                    base_time_ns,
                );
                push_metrics(&mut rng, &mut metrics, Kind::Sum, sums, start, base_time_ns);
                push_metrics(
                    &mut rng,
                    &mut metrics,
                    Kind::Histogram,
                    hist,
                    start,
                    base_time_ns,
                );
                resource_metrics.push(ResourceMetrics {
                    resource: Some(resource(tenant, tier, service)),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "tailsift-loadgen".to_string(),
                            version: "0.1.0".to_string(),
                            attributes: Vec::new(),
                            dropped_attributes_count: 0,
                        }),
                        metrics,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
            requests.push(Bytes::from(
                ExportMetricsServiceRequest { resource_metrics }.encode_to_vec(),
            ));
        }
        Ok(MetricsRound {
            params: params.clone(),
            requests,
            kinds,
        })
    }

    pub fn request(&self, q: u64) -> &Bytes {
        &self.requests[(q % self.requests.len() as u64) as usize]
    }

    pub fn points(&self, _q: u64) -> u32 {
        self.params.points_per_request
    }

    /// Points in all requests before global request `q`.
    pub fn points_before(&self, q: u64) -> u64 {
        q * u64::from(self.params.points_per_request)
    }

    pub fn describe(&self) -> Value {
        let points = u64::from(self.params.points_per_request) * self.requests.len() as u64;
        let bytes: usize = self.requests.iter().map(|r| r.len()).sum();
        json!({
            "round_requests": self.requests.len(),
            "round_points": points,
            "round_bytes": bytes,
            "points_per_request": self.params.points_per_request,
            "resources_per_request": self.params.resources_per_request,
            "mean_bytes_per_point": round3(bytes as f64 / points as f64),
            "mean_bytes_per_request": round3(bytes as f64 / self.requests.len() as f64),
            "point_share": {
                "gauge": round3(self.kinds[0] as f64 / points as f64),
                "sum": round3(self.kinds[1] as f64 / points as f64),
                "histogram": round3(self.kinds[2] as f64 / points as f64),
            },
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Sum,
    Histogram,
}

/// The attributes of the `i`-th series of an instrument.
fn series_attributes(kind: Kind, i: u32) -> Vec<KeyValue> {
    match kind {
        Kind::Gauge => vec![
            kv_str("state", STATES[i as usize % STATES.len()]),
            kv_int("cpu", i64::from(i / STATES.len() as u32)),
        ],
        Kind::Sum | Kind::Histogram => {
            let i = i as usize;
            vec![
                kv_str("http.route", ROUTES[i % ROUTES.len()]),
                kv_str(
                    "http.request.method",
                    METHODS[(i / ROUTES.len()) % METHODS.len()],
                ),
                kv_int(
                    "http.response.status_code",
                    STATUSES[(i / (ROUTES.len() * METHODS.len())) % STATUSES.len()],
                ),
                kv_str("server.address", SERVICES[i % TIERS][0]),
            ]
        }
    }
}

fn push_metrics(
    rng: &mut SmallRng,
    out: &mut Vec<Metric>,
    kind: Kind,
    mut points: u32,
    start: u64,
    time: u64,
) {
    let mut m = 0usize;
    while points > 0 {
        let n = points.min(POINTS_PER_METRIC);
        points -= n;
        let number = |rng: &mut SmallRng, i: u32, int: bool| NumberDataPoint {
            attributes: series_attributes(kind, i),
            start_time_unix_nano: start,
            time_unix_nano: time,
            exemplars: Vec::new(),
            flags: 0,
            value: Some(if int {
                number_data_point::Value::AsInt(rng.random_range(0..1_000_000))
            } else {
                number_data_point::Value::AsDouble(rng.random::<f64>() * 100.0)
            }),
        };
        let (name, unit, data) = match kind {
            Kind::Gauge => {
                let (name, unit) = GAUGES[m % GAUGES.len()];
                let points = (0..n).map(|i| number(rng, i, unit == "By")).collect();
                (
                    name,
                    unit,
                    Data::Gauge(Gauge {
                        data_points: points,
                    }),
                )
            }
            Kind::Sum => {
                let (name, unit, monotonic) = SUMS[m % SUMS.len()];
                let points = (0..n).map(|i| number(rng, i, true)).collect();
                (
                    name,
                    unit,
                    Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: monotonic,
                    }),
                )
            }
            Kind::Histogram => {
                let (name, unit) = HISTOGRAMS[m % HISTOGRAMS.len()];
                let points = (0..n)
                    .map(|i| {
                        let buckets: Vec<u64> = (0..=BOUNDS.len())
                            .map(|b| rng.random_range(0..1_000) / (b as u64 + 1))
                            .collect();
                        let count = buckets.iter().sum();
                        HistogramDataPoint {
                            attributes: series_attributes(kind, i),
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            count,
                            sum: Some(count as f64 * rng.random::<f64>() * 0.3),
                            bucket_counts: buckets,
                            explicit_bounds: BOUNDS.to_vec(),
                            exemplars: Vec::new(),
                            flags: 0,
                            min: Some(0.001),
                            max: Some(rng.random::<f64>() * 10.0),
                        }
                    })
                    .collect();
                (
                    name,
                    unit,
                    Data::Histogram(Histogram {
                        data_points: points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                )
            }
        };
        // A name repeats only when one resource has more series than the list covers.
        let name = if m < 4 {
            name.to_string()
        } else {
            format!("{name}.{m}")
        };
        out.push(Metric {
            name,
            description: String::new(),
            unit: unit.to_string(),
            metadata: Vec::new(),
            data: Some(data),
        });
        m += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn requests_hold_the_asked_points_in_the_mix() {
        let params = MetricParams {
            seed: 1,
            tenants: 20,
            zipf_s: 1.6,
            requests: 8,
            points_per_request: 500,
            resources_per_request: 5,
        };
        let round = MetricsRound::build(&params, 1_700_000_000_000_000_000).unwrap();
        for q in 0..8 {
            let bytes = round.request(q);
            let decoded = ExportMetricsServiceRequest::decode(&bytes[..]).unwrap();
            assert_eq!(decoded.resource_metrics.len(), 5);
            let mut n = 0u64;
            wire::for_each_span(bytes, b"tenant.id", |view| {
                assert!(!view.tenant.is_empty());
                n += wire::metric_points(view.bytes)?.map_or(0, |p| p.1);
                Ok(())
            })
            .unwrap();
            assert_eq!(n, 500);
        }
        let d = round.describe();
        assert!((d["point_share"]["histogram"].as_f64().unwrap() - 0.2).abs() < 0.01);
    }
}
