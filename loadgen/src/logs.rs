//! The logs workload: one log record per span of the trace round, pre-encoded as
//! `ExportLogsServiceRequest` templates that mirror the trace requests (the same resources,
//! the same spans in the same order), so log request `q` carries one record for every span
//! of trace request `q`.
//!
//! Traced records carry their span's trace and span ids, patched in per pass like the trace
//! templates' ids, so the proxy holds each record with its trace. Untraced records
//! (`--untraced-logs`) carry no ids at all and go straight through the proxy.
//!
//! Records are ~250 bytes encoded: timestamps, severity INFO (ERROR for an error span's
//! record and for ~1% of the others), a string body of ~70 bytes and three attributes. They
//! are drawn from their own seeded generator, so adding logs leaves the trace round exactly as
//! it was (the checker rebuilds it without them).

use anyhow::{ensure, Result};
use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::wire;
use crate::workload::{
    kv_int, kv_str, resource, round3, write_patched, Patch, Round, OPERATIONS, ROUTES, TENANT_KEY,
};

/// Mixed into the seed for the records' own random choices.
const LOG_SEED_KEY: u64 = 0x10C5_10C5_10C5_10C5;
/// Fraction of records logged at ERROR besides those of error spans.
pub const ERROR_LOG_FRACTION: f64 = 0.01;
const SEVERITY_INFO: i32 = 9;
const SEVERITY_ERROR: i32 = 17;

/// One pre-encoded logs request.
pub struct LogTemplate {
    bytes: Bytes,
    patches: Vec<Patch>,
    pub records: u32,
    pub error_records: u32,
}

/// The logs round: one template per request of the trace round.
pub struct LogsRound {
    pub traced: bool,
    seed: u64,
    round_traces: u32,
    pub requests: Vec<LogTemplate>,
    /// `record_prefix[k]` = records in requests `0..k` of a round.
    record_prefix: Vec<u64>,
}

impl LogsRound {
    /// Log templates for every request of `round`; `traced`: records carry their span's ids.
    pub fn build(round: &Round, traced: bool, base_time_ns: u64) -> Result<LogsRound> {
        let mut rng = SmallRng::seed_from_u64(round.params.seed ^ LOG_SEED_KEY);
        let mut requests = Vec::with_capacity(round.requests.len());
        for t in &round.requests {
            requests.push(encode_logs_request(
                &mut rng,
                round,
                &t.members,
                &t.resources,
                traced,
                base_time_ns,
            )?);
        }
        let mut record_prefix = Vec::with_capacity(requests.len() + 1);
        let mut acc = 0u64;
        record_prefix.push(0);
        for r in &requests {
            acc += u64::from(r.records);
            record_prefix.push(acc);
        }
        Ok(LogsRound {
            traced,
            seed: round.params.seed,
            round_traces: round.params.round_traces,
            requests,
            record_prefix,
        })
    }

    pub fn round_records(&self) -> u64 {
        *self.record_prefix.last().unwrap_or(&0)
    }

    /// Records in all requests before global request `q`.
    pub fn records_before(&self, q: u64) -> u64 {
        let n = self.requests.len() as u64;
        (q / n) * self.round_records() + self.record_prefix[(q % n) as usize]
    }

    pub fn template(&self, q: u64) -> &LogTemplate {
        &self.requests[(q % self.requests.len() as u64) as usize]
    }

    pub fn request_len(&self, q: u64) -> usize {
        self.template(q).bytes.len()
    }

    /// Writes logs request `q` into `out`, with the ids of trace pass `q / R` patched in.
    pub fn write_to(&self, q: u64, out: &mut impl BufMut) {
        let n = self.requests.len() as u64;
        let t = &self.requests[(q % n) as usize];
        let g_base = (q / n) * u64::from(self.round_traces);
        write_patched(&t.bytes, &t.patches, self.seed, g_base, out);
    }

    #[cfg(test)]
    pub fn render(&self, q: u64) -> Bytes {
        let mut buf = bytes::BytesMut::with_capacity(self.request_len(q));
        self.write_to(q, &mut buf);
        buf.freeze()
    }

    pub fn describe(&self) -> Value {
        let records = self.round_records();
        let bytes: usize = self.requests.iter().map(|r| r.bytes.len()).sum();
        let errors: u64 = self
            .requests
            .iter()
            .map(|r| u64::from(r.error_records))
            .sum();
        json!({
            "traced": self.traced,
            "round_records": records,
            "round_requests": self.requests.len(),
            "round_bytes": bytes,
            "mean_records_per_request": round3(records as f64 / self.requests.len() as f64),
            "mean_bytes_per_record": round3(bytes as f64 / records as f64),
            "error_record_fraction": round3(errors as f64 / records as f64),
        })
    }
}

fn body(rng: &mut SmallRng, op: &str, route: &str, error: bool) -> String {
    let order = rng.random_range(1_000_000..9_999_999);
    let user = rng.random_range(10_000..99_999);
    let ms = rng.random_range(1..2_000) as f64 / 10.0;
    if error {
        format!("{op} failed for order {order} (user u{user}) on {route} after {ms} ms: upstream returned 503")
    } else {
        format!("{op} handled order {order} for user u{user} on {route} in {ms} ms")
    }
}

fn encode_logs_request(
    rng: &mut SmallRng,
    round: &Round,
    members: &[(u32, u8)],
    resources: &[((u16, u8, u8), u32)],
    traced: bool,
    base_time_ns: u64,
) -> Result<LogTemplate> {
    let mut resource_logs = Vec::with_capacity(resources.len());
    let mut at = 0usize;
    let mut error_records = 0u32;
    for &((tenant, tier, service), n) in resources {
        let mut records = Vec::with_capacity(n as usize);
        for &(tr, j) in &members[at..at + n as usize] {
            let trace = &round.traces[tr as usize];
            let error_span = trace.shape[j as usize].error;
            let error = error_span || rng.random_bool(ERROR_LOG_FRACTION);
            error_records += u32::from(error);
            let time = base_time_ns
                + u64::from(tr) * 100_000
                + u64::from(tier) * 1_000_000
                + u64::from(j) * 10_000
                + rng.random_range(0..5_000_000);
            let op = OPERATIONS[rng.random_range(0..OPERATIONS.len())];
            let route = ROUTES[rng.random_range(0..ROUTES.len())];
            records.push(LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: time + 1_000,
                severity_number: if error { SEVERITY_ERROR } else { SEVERITY_INFO },
                severity_text: if error { "ERROR" } else { "INFO" }.to_string(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(body(rng, op, route, error))),
                }),
                attributes: vec![
                    kv_int("thread.id", rng.random_range(1..64)),
                    kv_str(
                        "event.name",
                        if error {
                            "request.failed"
                        } else {
                            "request.handled"
                        },
                    ),
                    kv_int("http.response.status_code", if error { 503 } else { 200 }),
                ],
                dropped_attributes_count: 0,
                flags: if traced { 1 } else { 0 },
                trace_id: if traced { vec![0x11; 16] } else { Vec::new() },
                span_id: if traced { vec![0x11; 8] } else { Vec::new() },
                event_name: String::new(),
            });
        }
        at += n as usize;
        resource_logs.push(ResourceLogs {
            resource: Some(resource(tenant, tier as usize, service)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "tailsift-loadgen".to_string(),
                    version: "0.1.0".to_string(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    ensure!(
        at == members.len(),
        "resources do not cover the request's spans"
    );
    let bytes = ExportLogsServiceRequest { resource_logs }.encode_to_vec();

    let mut patches = Vec::new();
    if traced {
        patches.reserve(members.len() * 2);
        let mut k = 0usize;
        wire::for_each_span(&bytes, TENANT_KEY.as_bytes(), |view| {
            let (tr, j) = members[k];
            k += 1;
            let offs = wire::log_id_offsets(view.bytes)?;
            for (slot, (span, len)) in offs.iter().zip([(u8::MAX, 16), (j, 8)]) {
                let Some((off, l)) = slot else {
                    anyhow::bail!("template log record without ids");
                };
                ensure!(*l == len, "id field of unexpected length {l}");
                patches.push(Patch {
                    offset: (view.offset + off) as u32,
                    trace: tr,
                    span,
                });
            }
            Ok(())
        })?;
        ensure!(
            k == members.len(),
            "template has {k} records, expected {}",
            members.len()
        );
    }
    Ok(LogTemplate {
        bytes: Bytes::from(bytes),
        patches,
        records: members.len() as u32,
        error_records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids;
    use crate::workload::Params;

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
    fn every_span_gets_one_log_record_with_its_ids() {
        let round = Round::build(&small(), 1_000).unwrap();
        let logs = LogsRound::build(&round, true, 1_000).unwrap();
        assert_eq!(logs.round_records(), round.round_spans());
        let n = round.requests.len() as u64;
        // Second pass: fresh trace numbers, as in the trace requests of the same q.
        for q in n..2 * n {
            let decoded = ExportLogsServiceRequest::decode(&logs.render(q)[..]).unwrap();
            let traces = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                &round.render(q)[..],
            )
            .unwrap();
            let span_ids: Vec<(Vec<u8>, Vec<u8>)> = traces
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| (s.trace_id.clone(), s.span_id.clone()))
                .collect();
            let log_ids: Vec<(Vec<u8>, Vec<u8>)> = decoded
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .map(|l| (l.trace_id.clone(), l.span_id.clone()))
                .collect();
            assert_eq!(span_ids, log_ids, "request {q}");
            for (t, _) in &log_ids {
                assert!(ids::trace_number(t).unwrap() >= u64::from(round.params.round_traces));
            }
        }
        let d = logs.describe();
        let size = d["mean_bytes_per_record"].as_f64().unwrap();
        assert!((200.0..=300.0).contains(&size), "{size} bytes per record");
    }

    #[test]
    fn untraced_records_carry_no_ids() {
        let round = Round::build(&small(), 1_000).unwrap();
        let logs = LogsRound::build(&round, false, 1_000).unwrap();
        let decoded = ExportLogsServiceRequest::decode(&logs.render(0)[..]).unwrap();
        for l in decoded
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
        {
            assert!(l.trace_id.is_empty() && l.span_id.is_empty());
        }
    }
}
