//! `tailsift rules test`: decide recorded traces (an OTLP/JSON export request) with a rules
//! file and say why: which rule decides each trace, the resulting sample rate and keep/drop
//! (with the real [`Decider`], so consistent sampling applies), and why each earlier rule did
//! not match.
//!
//! ```text
//! TRACE.json ─json_to_protobuf─> ingest_request ─> SpanRecords ─group by trace id─> CompleteTrace
//!                                                     Decider::decide + RuleSet::explain ─> report
//! ```

use std::fmt;

use bytes::Bytes;

use crate::decide::{Decider, TraceRef};
use crate::model::{CompleteTrace, DecideCause, Decision, SpanRecord};
use crate::otlp::ingest::{ingest_request, IngestOptions};
use crate::otlp::json::{json_to_protobuf, JsonError};
use crate::otlp::wire::WireError;
use crate::rules::{Explanation, RuleSet};

/// Why recorded traces could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    /// Not an OTLP/JSON `ExportTraceServiceRequest`.
    #[error("{0}")]
    Json(#[from] JsonError),
    /// The converted request did not read as OTLP.
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Reads an OTLP/JSON export request into whole traces, in order of first appearance; spans
/// the proxy would refuse (invalid ids) are counted in the second value.
pub fn traces_from_json(
    body: &[u8],
    options: &IngestOptions,
) -> Result<(Vec<CompleteTrace>, u64), TraceFileError> {
    let (spans, rejected) = records_from_json(body, options)?;
    Ok((group(spans), rejected))
}

/// Reads an OTLP/JSON trace export request into spans (ungrouped), with the count refused.
pub fn records_from_json(
    body: &[u8],
    options: &IngestOptions,
) -> Result<(Vec<SpanRecord>, u64), TraceFileError> {
    let request: Bytes = json_to_protobuf(body)?;
    let ingested = ingest_request(&request, None, options)?;
    Ok((ingested.spans, ingested.rejected))
}

/// Reads an OTLP/JSON logs export request into log records, to [`group`] with their traces'
/// spans, with the count refused.
pub fn log_records_from_json(
    body: &[u8],
    options: &IngestOptions,
) -> Result<(Vec<SpanRecord>, u64), TraceFileError> {
    let request: Bytes = crate::otlp::logs::json_to_protobuf(body)?;
    let ingested = crate::otlp::ingest::ingest_logs_with(
        &request,
        None,
        None,
        &crate::model::PassThrough::NONE,
        options,
    )?;
    Ok((ingested.spans, ingested.rejected))
}

/// Groups spans by trace id, keeping the order in which trace ids first appear.
pub fn group(spans: Vec<SpanRecord>) -> Vec<CompleteTrace> {
    let mut traces: Vec<CompleteTrace> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for span in spans {
        let id = span.index.trace_id;
        let i = *at.entry(id).or_insert_with(|| {
            traces.push(CompleteTrace {
                trace_id: id,
                tenant: span.origin.tenant.clone(),
                spans: Vec::new(),
                logs: Vec::new(),
                cause: DecideCause::RootGrace,
            });
            traces.len() - 1
        });
        if span.index.is_log() {
            traces[i].logs.push(span);
        } else {
            traces[i].spans.push(span);
        }
    }
    traces
}

/// One trace's decision and the reasoning behind it.
#[derive(Debug)]
pub struct TraceReport {
    /// The trace id, hex.
    pub trace_id: String,
    /// The trace's tenant.
    pub tenant: String,
    /// Spans in the trace.
    pub spans: usize,
    /// What the decider did (rule, sample rate, keep).
    pub decision: Decision,
    /// Which rule matched and why earlier ones did not.
    pub explanation: Explanation,
}

/// Decides and explains every trace with `rules`.
pub fn explain_traces(traces: &[CompleteTrace], rules: &RuleSet) -> Vec<TraceReport> {
    let mut decider = Decider::default();
    traces
        .iter()
        .map(|trace| TraceReport {
            trace_id: trace.trace_id.to_string(),
            tenant: trace.tenant.to_string(),
            spans: trace.spans.len(),
            decision: decider.decide(trace, rules),
            explanation: rules.explain(&TraceRef::new(trace)),
        })
        .collect()
}

/// The human-readable report `rules test` prints.
impl fmt::Display for TraceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "trace {} (tenant \"{}\", {} span{})",
            self.trace_id,
            self.tenant,
            self.spans,
            if self.spans == 1 { "" } else { "s" }
        )?;
        for line in self.explanation.to_string().lines() {
            writeln!(f, "  {line}")?;
        }
        let d = &self.decision;
        if d.keep {
            writeln!(
                f,
                "  => keep (rule \"{}\", sample_rate = {})",
                d.rule, d.sample_rate
            )
        } else if d.sample_rate == 0 {
            writeln!(f, "  => drop (rule \"{}\")", d.rule)
        } else {
            writeln!(
                f,
                "  => drop: not among the 1 in {} kept (rule \"{}\"; the trace id decides)",
                d.sample_rate, d.rule
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantId;

    fn options() -> IngestOptions {
        IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: Vec::new(),
            limits: Default::default(),
        }
    }

    const FIXTURE: &str = include_str!("../tests/fixtures/traces.json");

    #[test]
    fn recorded_traces_are_grouped_by_trace_id_with_their_tenant() {
        let (traces, rejected) = traces_from_json(FIXTURE.as_bytes(), &options()).unwrap();
        assert_eq!(rejected, 0);
        let shape: Vec<(String, &str, usize)> = traces
            .iter()
            .map(|t| (t.trace_id.to_string(), t.tenant.as_str(), t.spans.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("0af7651916cd43dd8448eb211c80319c".into(), "default", 2),
                ("4bf92f3577b34da6a3ce929d0e0e4736".into(), "default", 2),
                ("5b8efff798038103d2e9b633813fc60c".into(), "default", 1),
                ("00000000000000000000000000000001".into(), "default", 1),
                ("11111111111111111111111111111111".into(), "acme", 1),
            ]
        );
    }

    #[test]
    fn rules_test_reports_the_deciding_rule_rate_and_misses() {
        let (traces, _) = traces_from_json(FIXTURE.as_bytes(), &options()).unwrap();
        let reports = explain_traces(&traces, &RuleSet::builtin());
        let decided: Vec<(&str, u64, bool)> = reports
            .iter()
            .map(|r| (&*r.decision.rule, r.decision.sample_rate, r.decision.keep))
            .collect();
        assert_eq!(
            decided,
            vec![
                ("errors", 1, true),
                ("health-checks", 0, false),
                ("slow", 2, true),
                // Randomness 1 is below every 1-in-10 threshold: consistently dropped.
                ("rest", 10, false),
                ("tagged-tenants", 1, true),
            ]
        );
        let health = reports[1].to_string();
        assert!(
            health.contains("skipped \"errors\": no single span makes `span.status = \"error\" or trace.error_log_count > 0` true (2 spans checked)"),
            "{health}"
        );
        assert!(
            health.contains("matched \"health-checks\": drop"),
            "{health}"
        );
        assert!(
            health.contains("=> drop (rule \"health-checks\")"),
            "{health}"
        );
        let rest = reports[3].to_string();
        assert!(rest.contains("not among the 1 in 10 kept"), "{rest}");
    }

    #[test]
    fn an_error_log_in_the_logs_file_makes_its_trace_kept_by_the_builtin_errors_rule() {
        let (mut records, _) = records_from_json(FIXTURE.as_bytes(), &options()).unwrap();
        let (logs, rejected) =
            log_records_from_json(include_bytes!("../tests/fixtures/logs.json"), &options())
                .unwrap();
        assert_eq!((logs.len(), rejected), (2, 0));
        records.extend(
            logs.into_iter()
                .filter(|l| l.index.trace_id != crate::model::TraceId::default()),
        );
        let traces = group(records);
        let reports = explain_traces(&traces, &RuleSet::builtin());
        // Without its ERROR log this trace is the 1-in-10 "rest" trace that is dropped.
        assert_eq!(reports[3].trace_id, "00000000000000000000000000000001");
        assert_eq!(&*reports[3].decision.rule, "errors");
        assert!(reports[3].decision.keep);
        assert_eq!(traces[3].logs.len(), 1);
    }

    #[test]
    fn invalid_trace_file_is_an_error() {
        assert!(traces_from_json(b"{\"resourceSpans\": 3}", &options()).is_err());
    }
}
