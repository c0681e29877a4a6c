//! Deciding a whole trace: the live rule set picks an action, a dynamic sampler (`sample`)
//! may choose the rate, and 1-in-N choices are made with the consistent threshold scheme
//! (`consistent`), so every node decides a trace alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::consistent::{self, MAX};
use crate::model::{CompleteTrace, Decision, SpanRecord, StatusCode};
use crate::otlp::{find_attribute, AnyValue};
use crate::rules::{Action, RuleSet, SpanKind, SpanStatus, SpanView, TraceView, Value};
use crate::sample::{dither, ShardSamplers};
use crate::tags::{TagMap, TAG_RULE};

/// Name recorded for traces no rule matched (they are kept: nothing is lost by omission).
pub const NO_RULE: &str = "(no rule)";

/// Turns rule verdicts into decisions; owned by one buffer shard (no shared state).
pub struct Decider {
    rule_names: HashMap<String, Arc<str>>,
    recent: Vec<Arc<str>>,
    samplers: ShardSamplers,
}

/// A decider for a single shard that publishes no sampler snapshots (tests, tools).
impl Default for Decider {
    fn default() -> Self {
        Decider::new(ShardSamplers::new(1, None))
    }
}

impl Decider {
    /// Decides one trace: a runtime tenant tag (active at `now_ms`) keeps it entirely as rule
    /// `tenant-tag`; otherwise the rule-set snapshot decides.
    pub fn decide_tagged(
        &mut self,
        trace: &CompleteTrace,
        rules: &RuleSet,
        tags: &TagMap,
        now_ms: u64,
    ) -> Decision {
        if tags.keeps_all(trace.tenant.as_str(), now_ms) {
            let rule = self.intern(TAG_RULE);
            return sampled(trace, 1, rule);
        }
        self.decide(trace, rules)
    }

    /// Decides one trace with the given rule-set snapshot, counting the hit on its rule.
    /// A decider with its own, unpublished samplers, for shadow rules: the live samplers must
    /// not learn from (or be rebuilt for) a candidate rule set.
    pub fn detached(&self) -> Decider {
        Decider::new(self.samplers.detached())
    }

    /// A decider with this shard's sampler instances.
    pub fn new(samplers: ShardSamplers) -> Self {
        Decider {
            rule_names: HashMap::new(),
            recent: Vec::with_capacity(8),
            samplers,
        }
    }

    /// Decides one trace with the given rule-set snapshot, now.
    pub fn decide(&mut self, trace: &CompleteTrace, rules: &RuleSet) -> Decision {
        self.decide_at(trace, rules, Instant::now())
    }

    /// Decides one trace at `now` (the samplers' clock). A new rule set rebuilds the
    /// samplers, keeping the learned state of those whose settings did not change.
    pub fn decide_at(&mut self, trace: &CompleteTrace, rules: &RuleSet, now: Instant) -> Decision {
        self.samplers.sync(rules);
        let view = TraceRef::new(trace);
        let verdict = rules.evaluate(&view);
        rules.record_hit(&verdict);
        let rule = self.intern(verdict.rule.unwrap_or(NO_RULE));
        let rate = match verdict.action {
            Action::Drop => {
                return Decision {
                    keep: false,
                    sample_rate: 0,
                    threshold: MAX,
                    rule,
                }
            }
            Action::Sample { rate } => *rate,
            // The sampler picks a rate for what arrives; upstream head sampling composes
            // with it below, so the exported SampleRate is the total rate. Its integer rate
            // for this trace is dithered by the trace id (see `Rate::pick`).
            Action::Sampler(name) => self
                .samplers
                .rate(name, &view, now)
                .map_or(1, |r| r.pick(dither(&trace.trace_id.0))),
        };
        sampled(trace, rate, rule)
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        // Most decisions repeat the last few rules: a short scan beats hashing the name.
        if let Some(n) = self.recent.iter().find(|n| ***n == *name) {
            return n.clone();
        }
        let n = match self.rule_names.get(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(name);
                self.rule_names.insert(name.to_string(), n.clone());
                n
            }
        };
        if self.recent.len() == 8 {
            self.recent.remove(0);
        }
        self.recent.push(n.clone());
        n
    }
}

/// Keeps 1 trace in `rate`, consistently with upstream head sampling and other nodes.
fn sampled(trace: &CompleteTrace, rate: u64, rule: Arc<str>) -> Decision {
    let ot = upstream_state(&trace.spans);
    let randomness = ot.randomness.unwrap_or_else(|| trace.trace_id.randomness());
    let threshold = consistent::compose(ot.threshold.unwrap_or(0), rate);
    Decision {
        keep: consistent::keeps(randomness, threshold),
        sample_rate: consistent::rate_for_threshold(threshold),
        threshold,
        rule,
    }
}

/// The upstream sampling state: from the root span's tracestate, else the first span with one.
fn upstream_state(spans: &[SpanRecord]) -> consistent::OtState {
    let with_state = spans
        .iter()
        .filter(|s| s.index.trace_state.len > 0)
        .min_by_key(|s| !s.index.is_root());
    match with_state {
        Some(s) => {
            let ts = s.index.trace_state.slice(&s.bytes);
            consistent::parse_tracestate(std::str::from_utf8(ts).unwrap_or(""))
        }
        None => consistent::OtState::default(),
    }
}

/// A `TraceView` over a buffered trace's encoded spans.
pub struct TraceRef<'a> {
    trace: &'a CompleteTrace,
    root: Option<usize>,
    duration: u64,
}

impl<'a> TraceRef<'a> {
    /// A view of `trace`.
    pub fn new(trace: &'a CompleteTrace) -> Self {
        let root = trace.spans.iter().position(|s| s.index.is_root());
        let start = trace
            .spans
            .iter()
            .map(|s| s.index.start_unix_nanos)
            .min()
            .unwrap_or(0);
        let end = trace
            .spans
            .iter()
            .map(|s| s.index.end_unix_nanos)
            .max()
            .unwrap_or(0);
        TraceRef {
            trace,
            root,
            duration: end.saturating_sub(start),
        }
    }
}

impl TraceView for TraceRef<'_> {
    type Span = SpanRecord;
    fn tenant(&self) -> &str {
        self.trace.tenant.as_str()
    }
    fn span_count(&self) -> usize {
        self.trace.spans.len()
    }
    fn span(&self, i: usize) -> &SpanRecord {
        &self.trace.spans[i]
    }
    fn root(&self) -> Option<&SpanRecord> {
        self.root.map(|i| &self.trace.spans[i])
    }
    fn duration_nanos(&self) -> u64 {
        self.duration
    }
    fn log_count(&self) -> usize {
        self.trace.logs.len()
    }
    fn log(&self, i: usize) -> Option<&SpanRecord> {
        self.trace.logs.get(i)
    }
}

fn value(v: AnyValue<'_>) -> Option<Value<'_>> {
    match v {
        AnyValue::Str(s) => Some(Value::Str(s)),
        AnyValue::Int(i) => Some(Value::Int(i)),
        AnyValue::Double(f) => Some(Value::Float(f)),
        AnyValue::Bool(b) => Some(Value::Bool(b)),
        AnyValue::Other => None,
    }
}

/// Rules read spans straight from their encoded bytes.
impl SpanView for SpanRecord {
    fn name(&self) -> &str {
        if self.index.is_log() {
            return "";
        }
        std::str::from_utf8(self.index.name.slice(&self.bytes)).unwrap_or("")
    }
    fn status(&self) -> SpanStatus {
        match self.index.status {
            StatusCode::Unset => SpanStatus::Unset,
            StatusCode::Ok => SpanStatus::Ok,
            StatusCode::Error => SpanStatus::Error,
        }
    }
    fn kind(&self) -> SpanKind {
        match self.index.kind {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }
    fn duration_nanos(&self) -> u64 {
        self.index
            .end_unix_nanos
            .saturating_sub(self.index.start_unix_nanos)
    }
    fn is_root(&self) -> bool {
        self.index.is_root()
    }
    fn severity_number(&self) -> u8 {
        self.index.severity
    }
    fn body(&self) -> Option<&str> {
        if !self.index.is_log() || self.index.name.len == 0 {
            return None;
        }
        std::str::from_utf8(self.index.name.slice(&self.bytes)).ok()
    }
    fn attribute(&self, key: &str) -> Option<Value<'_>> {
        // Attributes are field 9 of a `Span` and field 6 of a `LogRecord`.
        let field = if self.index.is_log() { 6 } else { 9 };
        let on_span = find_attribute(&self.bytes, field, key.as_bytes())
            .ok()
            .flatten();
        let found = match on_span {
            Some(v) => Some(v),
            None => find_attribute(&self.origin.resource, 1, key.as_bytes())
                .ok()
                .flatten(),
        };
        found.and_then(value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::explain::traces_from_json;
    use crate::model::TenantId;
    use crate::otlp::ingest::IngestOptions;
    use crate::tags::{unix_ms, TagTable};

    fn fixture() -> Vec<CompleteTrace> {
        let options = IngestOptions {
            tenant_attribute: "tenant.id".into(),
            default_tenant: TenantId::new("default"),
            reserved_attributes: Vec::new(),
            limits: Default::default(),
        };
        let body = include_bytes!("../tests/fixtures/traces.json");
        traces_from_json(body, &options).unwrap().0
    }

    #[test]
    fn tenant_tag_keeps_the_tenants_traces_above_the_rules_until_it_expires() {
        let rules = RuleSet::parse("[[rule]]\nname = \"none\"\ndrop = true\n", "t").unwrap();
        let traces = fixture();
        let acme = traces.iter().find(|t| t.tenant.as_str() == "acme").unwrap();
        let other = traces.iter().find(|t| t.tenant.as_str() != "acme").unwrap();
        let tags = TagTable::in_memory();
        let mut decider = Decider::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let before = decider.decide_tagged(acme, &rules, &tags.snapshot(), unix_ms(t0));
        assert!(!before.keep);
        tags.set("acme", Some(Duration::from_secs(3600)), t0)
            .unwrap();
        // The very next decision sees the tag.
        let now = unix_ms(t0 + Duration::from_secs(1));
        let tagged = decider.decide_tagged(acme, &rules, &tags.snapshot(), now);
        assert_eq!(
            (tagged.keep, tagged.sample_rate, &*tagged.rule),
            (true, 1, TAG_RULE)
        );
        let untagged = decider.decide_tagged(other, &rules, &tags.snapshot(), now);
        assert_eq!((untagged.keep, &*untagged.rule), (false, "none"));
        let later = unix_ms(t0 + Duration::from_secs(3600));
        let expired = decider.decide_tagged(acme, &rules, &tags.snapshot(), later);
        assert_eq!((expired.keep, &*expired.rule), (false, "none"));
    }

    #[test]
    fn decisions_count_hits_on_the_deciding_rule() {
        let rules = RuleSet::builtin();
        let mut decider = Decider::default();
        for trace in &fixture() {
            decider.decide(trace, &rules);
        }
        let hits: Vec<(&str, u64)> = rules.rules().map(|r| (r.rule.name(), r.hits)).collect();
        assert_eq!(
            hits,
            vec![
                ("errors", 1),
                ("tagged-tenants", 1),
                ("health-checks", 1),
                ("slow", 1),
                ("rest", 1)
            ]
        );
    }

    use crate::model::{DecideCause, Origin, Span32, SpanIndex, TraceId};

    /// A one-span trace whose tracestate says an upstream head sampler kept 1 in 4 (`th:c`).
    fn head_sampled(trace_id: TraceId) -> CompleteTrace {
        let mut bytes = b"ot=th:c".to_vec();
        bytes.resize(64, 0);
        let index = SpanIndex {
            trace_id,
            span_id: [1; 8],
            trace_state: Span32 { start: 0, len: 7 },
            ..Default::default()
        };
        CompleteTrace {
            trace_id,
            tenant: TenantId::new("acme"),
            spans: vec![SpanRecord {
                bytes: bytes::Bytes::from(bytes),
                origin: Arc::new(Origin {
                    tenant: TenantId::new("acme"),
                    resource: Default::default(),
                    resource_schema_url: Default::default(),
                    scope: Default::default(),
                    scope_schema_url: Default::default(),
                    content_hash: 0,
                    pass_through: Default::default(),
                }),
                index,
            }],
            logs: Vec::new(),
            cause: DecideCause::Timeout,
        }
    }

    #[test]
    fn sampler_rates_compose_with_upstream_head_sampling() {
        let rules = RuleSet::parse(
            "[[rule]]\nname = \"all\"\nsampler = \"dyn\"\n\n[sampler.dyn]\ntype = \"ema_dynamic\"\ngoal_sample_rate = 10\nkey = [\"tenant\"]\nadjustment_interval = \"1s\"\n",
            "r.toml",
        )
        .expect("valid");
        let mut decider = Decider::default();
        let upstream = consistent::threshold_for_rate(4);
        let t0 = Instant::now();
        let mut state = 42u64;
        let (mut kept, mut weight) = (0u64, 0u64);
        let arrivals = 40_000u64;
        for i in 0..arrivals {
            // Arrivals passed the upstream test: R ≥ Tu.
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = upstream + (state >> 8) % (MAX - upstream);
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&state.rotate_left(17).to_be_bytes());
            id[8..].copy_from_slice(&r.to_be_bytes());
            let d = decider.decide_at(
                &head_sampled(TraceId(id)),
                &rules,
                t0 + Duration::from_millis(i / 4),
            );
            if i >= 4_000 {
                // After the first interval the sampler keeps 1 in 10 of what arrives, and the
                // exported rate counts the upstream 1 in 4 as well.
                assert!((36..=44).contains(&d.sample_rate), "{}", d.sample_rate);
                if d.keep {
                    kept += 1;
                    weight += d.sample_rate;
                }
            }
        }
        let n = arrivals - 4_000;
        let fraction = kept as f64 / n as f64;
        assert!((fraction * 10.0 - 1.0).abs() < 0.1, "kept {fraction}");
        // Σ SampleRate estimates the traces before head sampling: 4 per arrival.
        let err = weight as f64 / (4 * n) as f64 - 1.0;
        assert!(err.abs() < 0.05, "re-weighting error {err}");
    }
}
