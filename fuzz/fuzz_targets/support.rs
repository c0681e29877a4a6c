// Shared by the fuzz targets (included, not a module of its own crate).
#[allow(unused_imports)]
use std::sync::Arc;

/// Ingests, decides (with rules that look at attributes) and re-encodes a request.
#[allow(dead_code)]
pub fn exercise_request(body: bytes::Bytes) {
    use tailsift::model::{CompleteTrace, DecideCause, KeptSpans, TenantId};
    let options = tailsift::otlp::ingest::IngestOptions {
        tenant_attribute: "tenant.id".into(),
        default_tenant: TenantId::new("default"),
        reserved_attributes: vec!["SampleRate".into(), "tailsift.rule".into()],
        limits: Default::default(),
    };
    let Ok(ingested) = tailsift::otlp::ingest::ingest_request(&body, None, &options) else {
        return;
    };
    if ingested.spans.is_empty() {
        return;
    }
    let trace = CompleteTrace {
        trace_id: ingested.spans[0].index.trace_id,
        tenant: ingested.spans[0].origin.tenant.clone(),
        spans: ingested.spans,
        logs: Vec::new(),
        cause: DecideCause::Timeout,
    };
    let rules = tailsift::rules::RuleSet::parse(
        "[[rule]]\nname = \"a\"\nif = 'span.http.route starts_with \"/x\" or root.name = \"y\" or span.db.system exists'\nsample_rate = 3\n[[rule]]\nname = \"b\"\nsample_rate = 1\n",
        "fuzz",
    )
    .expect("fixed rules parse");
    let decision = tailsift::decide::Decider::default().decide(&trace, &rules);
    let kept = KeptSpans {
        tenant: trace.tenant.clone(),
        decision,
        spans: trace.spans,
    };
    let mut out = Vec::new();
    tailsift::otlp::encode::BatchEncoder::new(tailsift::otlp::encode::AnnotationKeys {
        sample_rate: "SampleRate".into(),
        rule: "tailsift.rule".into(),
    })
    .encode(std::slice::from_ref(&kept), &mut out);
    // What we write must itself be a request we can read back, span for span. Export adds up
    // to two attributes (SampleRate, tailsift.rule), so a span at the attribute limit is
    // read back with that much more room.
    let mut reread = options.clone();
    reread.limits.max_attributes_per_span += 2;
    let again = tailsift::otlp::ingest::ingest_request(&bytes::Bytes::from(out), None, &reread)
        .expect("re-encoded request is valid protobuf");
    assert_eq!(again.spans.len(), kept.spans.len());
}

/// Evaluates a rule set against a small fixed trace.
#[allow(dead_code)]
pub fn exercise_rules(rules: &tailsift::rules::RuleSet) {
    use tailsift::model::{CompleteTrace, DecideCause, TenantId};
    // One root span of trace 0x01.. with an http.route attribute, encoded by hand.
    let span: &[u8] = &[
        0x0a, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, // trace_id
        0x12, 8, 2, 2, 2, 2, 2, 2, 2, 2, // span_id
        0x2a, 3, b'G', b'E', b'T', // name
        0x4a, 20, 0x0a, 10, b'h', b't', b't', b'p', b'.', b'r', b'o', b'u', b't', b'e', 0x12, 6,
        0x0a, 4, b'/', b'a', b'p', b'i', // attribute http.route = "/api"
    ];
    let options = tailsift::otlp::ingest::IngestOptions {
        tenant_attribute: "tenant.id".into(),
        default_tenant: TenantId::new("acme"),
        reserved_attributes: Vec::new(),
        limits: Default::default(),
    };
    let mut request = vec![0x0a, 0];
    let mut scope_spans = vec![0x12, span.len() as u8];
    scope_spans.extend_from_slice(span);
    let mut resource_spans = vec![0x12, scope_spans.len() as u8];
    resource_spans.extend_from_slice(&scope_spans);
    request[1] = resource_spans.len() as u8;
    request.extend_from_slice(&resource_spans);
    let ingested =
        tailsift::otlp::ingest::ingest_request(&bytes::Bytes::from(request), None, &options)
            .expect("fixed request parses");
    let trace = CompleteTrace {
        trace_id: ingested.spans[0].index.trace_id,
        tenant: TenantId::new("acme"),
        spans: ingested.spans,
        logs: Vec::new(),
        cause: DecideCause::Timeout,
    };
    let _ = tailsift::decide::Decider::default().decide(&trace, rules);
    let _ = rules.explain(&tailsift::decide::TraceRef::new(&trace));
}
