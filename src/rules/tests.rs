//! Behaviour specifications for the rules engine.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::ast::{CmpOp, Expr, Field, Literal, LogField, Pattern, Scope, SpanField, TextOp};
use super::*;

// ---------------------------------------------------------------------------------------------
// A small in-memory trace.

#[derive(Clone, Debug)]
enum Attr {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

#[derive(Clone, Debug)]
struct TestSpan {
    name: String,
    status: SpanStatus,
    kind: SpanKind,
    duration: u64,
    root: bool,
    attrs: Vec<(String, Attr)>,
    resource: Vec<(String, Attr)>,
    /// For log records: severity_number and string body.
    severity: u8,
    body: Option<String>,
}

impl TestSpan {
    /// A log record with the given severity_number and body.
    fn log(severity: u8, body: &str) -> Self {
        TestSpan {
            severity,
            body: Some(body.into()),
            ..TestSpan::new("")
        }
    }
    fn new(name: &str) -> Self {
        TestSpan {
            name: name.into(),
            status: SpanStatus::Unset,
            kind: SpanKind::Internal,
            duration: 1_000_000,
            root: false,
            attrs: Vec::new(),
            resource: Vec::new(),
            severity: 0,
            body: None,
        }
    }
    fn root(mut self) -> Self {
        self.root = true;
        self
    }
    fn status(mut self, s: SpanStatus) -> Self {
        self.status = s;
        self
    }
    fn kind(mut self, k: SpanKind) -> Self {
        self.kind = k;
        self
    }
    fn took(mut self, nanos: u64) -> Self {
        self.duration = nanos;
        self
    }
    fn attr(mut self, k: &str, v: Attr) -> Self {
        self.attrs.push((k.into(), v));
        self
    }
    fn s(self, k: &str, v: &str) -> Self {
        self.attr(k, Attr::S(v.into()))
    }
    fn service(mut self, name: &str) -> Self {
        self.resource
            .push(("service.name".into(), Attr::S(name.into())));
        self
    }
}

impl SpanView for TestSpan {
    fn name(&self) -> &str {
        &self.name
    }
    fn status(&self) -> SpanStatus {
        self.status
    }
    fn kind(&self) -> SpanKind {
        self.kind
    }
    fn duration_nanos(&self) -> u64 {
        self.duration
    }
    fn is_root(&self) -> bool {
        self.root
    }
    fn severity_number(&self) -> u8 {
        self.severity
    }
    fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }
    fn attribute(&self, key: &str) -> Option<Value<'_>> {
        let found = self
            .attrs
            .iter()
            .chain(&self.resource)
            .find(|(k, _)| k == key)?;
        Some(match &found.1 {
            Attr::S(s) => Value::Str(s),
            Attr::I(i) => Value::Int(*i),
            Attr::F(x) => Value::Float(*x),
            Attr::B(b) => Value::Bool(*b),
        })
    }
}

#[derive(Clone, Debug)]
struct TestTrace {
    tenant: String,
    spans: Vec<TestSpan>,
    logs: Vec<TestSpan>,
    duration: u64,
}

impl TestTrace {
    fn new(tenant: &str, spans: Vec<TestSpan>) -> Self {
        TestTrace {
            tenant: tenant.into(),
            spans,
            logs: Vec::new(),
            duration: 10_000_000,
        }
    }
    fn took(mut self, nanos: u64) -> Self {
        self.duration = nanos;
        self
    }
    fn with_logs(mut self, logs: Vec<TestSpan>) -> Self {
        self.logs = logs;
        self
    }
}

impl TraceView for TestTrace {
    type Span = TestSpan;
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn span_count(&self) -> usize {
        self.spans.len()
    }
    fn span(&self, i: usize) -> &TestSpan {
        &self.spans[i]
    }
    fn root(&self) -> Option<&TestSpan> {
        self.spans.iter().find(|s| s.root)
    }
    fn duration_nanos(&self) -> u64 {
        self.duration
    }
    fn log_count(&self) -> usize {
        self.logs.len()
    }
    fn log(&self, i: usize) -> Option<&TestSpan> {
        self.logs.get(i)
    }
}

const SEC: u64 = 1_000_000_000;

/// A typical trace: a server root for `/api/orders` and a client child, no errors.
fn ordinary() -> TestTrace {
    TestTrace::new(
        "default",
        vec![
            TestSpan::new("GET /api/orders")
                .root()
                .kind(SpanKind::Server)
                .s("http.route", "/api/orders")
                .attr("http.status_code", Attr::I(200))
                .service("frontend"),
            TestSpan::new("SELECT orders")
                .kind(SpanKind::Client)
                .s("db.system", "postgresql")
                .service("orders"),
        ],
    )
}

/// Whether the expression matches the trace (panics on an invalid expression: test input).
fn holds(expr: &str, trace: &TestTrace) -> bool {
    let src = format!("[[rule]]\nname = \"r\"\nif = '''{expr}'''\nsample_rate = 1\n");
    let set = RuleSet::parse(&src, "t.toml").unwrap_or_else(|e| panic!("{expr}: {e}"));
    set.evaluate(trace).rule.is_some()
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match RuleSet::parse(src, "rules.toml") {
        Ok(_) => panic!("expected errors in:\n{src}"),
        Err(RulesError::Invalid(d)) => d,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn expr_errors(expr: &str) -> Vec<Diagnostic> {
    errors(&format!(
        "[[rule]]\nname = \"r\"\nif = '{expr}'\nsample_rate = 1\n"
    ))
}

// ---------------------------------------------------------------------------------------------
// The default file.

#[test]
fn builtin_rules_are_the_default_file() {
    let set = RuleSet::builtin();
    let file = RuleSet::parse(include_str!("../../rules/default.toml"), "default.toml")
        .expect("default rules parse");
    let names: Vec<_> = set.rules().map(|r| r.rule.name().to_string()).collect();
    assert_eq!(
        names,
        ["errors", "tagged-tenants", "health-checks", "slow", "rest"]
    );
    assert_eq!(set.source_hash(), file.source_hash());
    assert!(set.warnings().is_empty());
    assert!(set.samplers().is_empty());
}

#[test]
fn default_rules_keep_every_trace_with_an_error_span() {
    let mut t = ordinary();
    t.spans[1].status = SpanStatus::Error;
    let set = RuleSet::builtin();
    let v = set.evaluate(&t);
    assert_eq!(v.rule, Some("errors"));
    assert_eq!(v.action, &Action::Sample { rate: 1 });
}

#[test]
fn default_rules_keep_tagged_tenants() {
    let mut t = ordinary();
    t.tenant = "globex".into();
    assert_eq!(RuleSet::builtin().evaluate(&t).rule, Some("tagged-tenants"));
}

#[test]
fn default_rules_drop_health_checks_by_root_route() {
    let t = TestTrace::new(
        "default",
        vec![TestSpan::new("GET").root().s("http.route", "/healthz")],
    );
    let set = RuleSet::builtin();
    let v = set.evaluate(&t);
    assert_eq!((v.rule, v.action), (Some("health-checks"), &Action::Drop));
}

#[test]
fn health_check_rule_needs_the_root_span() {
    // The same route on a non-root span is not a health check.
    let t = TestTrace::new(
        "default",
        vec![TestSpan::new("GET").s("http.route", "/healthz")],
    );
    assert_eq!(RuleSet::builtin().evaluate(&t).rule, Some("rest"));
}

#[test]
fn errors_win_over_health_checks_because_they_come_first() {
    let t = TestTrace::new(
        "default",
        vec![TestSpan::new("GET")
            .root()
            .s("http.route", "/healthz")
            .status(SpanStatus::Error)],
    );
    assert_eq!(RuleSet::builtin().evaluate(&t).rule, Some("errors"));
}

#[test]
fn default_rules_sample_slow_traces_one_in_two() {
    let t = ordinary().took(2 * SEC + 1);
    let set = RuleSet::builtin();
    let v = set.evaluate(&t);
    assert_eq!(
        (v.rule, v.action),
        (Some("slow"), &Action::Sample { rate: 2 })
    );
    // Exactly 2s is not slower than 2s.
    assert_eq!(
        RuleSet::builtin().evaluate(&ordinary().took(2 * SEC)).rule,
        Some("rest")
    );
}

#[test]
fn default_rules_sample_everything_else_one_in_ten() {
    let set = RuleSet::builtin();
    let v = set.evaluate(&ordinary());
    assert_eq!(
        (v.rule, v.action),
        (Some("rest"), &Action::Sample { rate: 10 })
    );
}

#[test]
fn no_matching_rule_keeps_the_trace() {
    let set = RuleSet::parse(
        "[[rule]]\nname = \"x\"\nif = 'tenant = \"nobody\"'\ndrop = true\n",
        "f",
    )
    .expect("valid");
    let v = set.evaluate(&ordinary());
    assert_eq!((v.rule, v.action), (None, &Action::Sample { rate: 1 }));
    let empty = RuleSet::parse("", "f").expect("an empty file is valid");
    assert_eq!(empty.evaluate(&ordinary()).rule, None);
}

// ---------------------------------------------------------------------------------------------
// Span matching.

#[test]
fn span_rule_needs_one_span_to_match_all_conditions() {
    let t = TestTrace::new(
        "default",
        vec![
            TestSpan::new("a")
                .status(SpanStatus::Error)
                .s("db.system", "redis"),
            TestSpan::new("b").s("db.system", "postgresql"),
        ],
    );
    // Error on one span and postgresql on another: no single span has both.
    assert!(!holds(
        r#"span.status = "error" and span.db.system = "postgresql""#,
        &t
    ));
    assert!(holds(
        r#"span.status = "error" and span.db.system = "redis""#,
        &t
    ));
    assert!(holds(
        r#"span.status = "error" or span.db.system = "postgresql""#,
        &t
    ));
    assert!(
        holds(r#"not span.status = "error""#, &t),
        "span b is not an error"
    );
}

#[test]
fn non_span_conditions_combine_with_each_span() {
    let t = ordinary();
    assert!(holds(
        r#"tenant = "default" and span.name = "SELECT orders""#,
        &t
    ));
    assert!(!holds(
        r#"tenant = "acme" and span.name = "SELECT orders""#,
        &t
    ));
    assert!(holds(r#"tenant = "default" or span.name = "nope""#, &t));
    assert!(holds(
        r#"root.kind = "server" and span.kind = "client""#,
        &t
    ));
}

#[test]
fn span_rule_does_not_match_a_trace_without_spans() {
    let t = TestTrace::new("default", vec![]);
    assert!(!holds(r#"span.name != "x""#, &t));
    assert!(!holds(r#"tenant = "default" or span.name = "x""#, &t));
}

#[test]
fn root_conditions_are_false_without_a_root() {
    let mut t = ordinary();
    t.spans[0].root = false;
    for e in [
        r#"root.name = "GET /api/orders""#,
        r#"root.name != "x""#,
        r#"root.http.route exists"#,
        r#"root.http.route missing"#,
        r#"root.nope missing"#,
        r#"root.kind not in ["client"]"#,
        r#"root.duration >= 0s"#,
    ] {
        assert!(!holds(e, &t), "{e}");
    }
    assert!(holds("not root.http.route exists", &t));
    assert!(holds("trace.has_root = false", &t));
    assert!(holds("not trace.has_root", &t));
    assert!(holds(r#"root.nope missing"#, &ordinary()));
}

// ---------------------------------------------------------------------------------------------
// Fields.

#[test]
fn trace_fields_read_counts_duration_and_root() {
    let mut t = ordinary().took(1500 * 1_000_000);
    t.spans.push(
        TestSpan::new("c")
            .status(SpanStatus::Error)
            .service("orders"),
    );
    t.spans.push(
        TestSpan::new("d")
            .status(SpanStatus::Error)
            .service("billing"),
    );
    t.spans.push(TestSpan::new("e"));
    for (e, want) in [
        ("trace.span_count = 5", true),
        ("trace.span_count > 5", false),
        ("trace.error_count = 2", true),
        ("trace.error_count >= 3", false),
        ("trace.service_count = 3", true),
        ("trace.has_root", true),
        ("trace.has_root = true", true),
        ("trace.has_root != true", false),
        ("trace.duration = 1.5s", true),
        ("trace.duration = 1500ms", true),
        ("trace.duration < 1s", false),
        ("trace.span_count < 5.5", true),
    ] {
        assert_eq!(holds(e, &t), want, "{e}");
    }
}

#[test]
fn service_count_counts_distinct_names_beyond_the_inline_buffer() {
    let spans = (0..100)
        .map(|i| TestSpan::new("s").service(&format!("svc{}", i % 40)))
        .collect();
    let t = TestTrace::new("t", spans);
    assert!(holds("trace.service_count = 40", &t));
}

#[test]
fn span_and_root_fields_read_name_status_kind_duration_and_attributes() {
    let t = TestTrace::new(
        "default",
        vec![
            TestSpan::new("root-op")
                .root()
                .kind(SpanKind::Server)
                .status(SpanStatus::Ok)
                .took(3 * SEC),
            TestSpan::new("child")
                .kind(SpanKind::Producer)
                .took(250_000_000)
                .s("messaging.system", "kafka"),
        ],
    );
    for (e, want) in [
        (r#"root.name = "root-op""#, true),
        (r#"root.status = "ok""#, true),
        (r#"root.status = "OK""#, true),
        (r#"root.kind = "server""#, true),
        (r#"root.duration > 2s"#, true),
        (r#"span.name = "child""#, true),
        (r#"span.status = "unset""#, true),
        (r#"span.status = "error""#, false),
        (r#"span.kind = "producer""#, true),
        (r#"span.kind in ["consumer", "client"]"#, false),
        (r#"span.kind != "unspecified""#, true),
        (r#"span.duration = 250ms"#, true),
        (r#"span.duration <= 250000us"#, true),
        (r#"span.duration < 250000000ns"#, false),
        (r#"span.messaging.system = "kafka""#, true),
        (r#"root.messaging.system exists"#, false),
        (r#"span.duration > 2s"#, true),
        (r#"span.duration > 1m"#, false),
        (r#"span.duration > 1h"#, false),
    ] {
        assert_eq!(holds(e, &t), want, "{e}");
    }
}

#[test]
fn attributes_fall_back_to_the_resource() {
    assert!(holds(r#"span.service.name = "orders""#, &ordinary()));
    assert!(holds(r#"root.service.name = "frontend""#, &ordinary()));
}

#[test]
fn quoted_attribute_keys_allow_odd_names() {
    let t = TestTrace::new(
        "t",
        vec![TestSpan::new("x")
            .s("my key", "v")
            .s("name", "attr-name")
            .s("2xx", "y")],
    );
    assert!(holds(r#"span."my key" = "v""#, &t));
    assert!(holds(r#"span.'my key' exists"#, &t));
    // `span.name` is the span name; the quoted form reads an attribute called `name`.
    assert!(holds(r#"span."name" = "attr-name""#, &t));
    assert!(holds(r#"span.name = "x""#, &t));
    assert!(holds(r#"span.2xx = "y""#, &t));
}

// ---------------------------------------------------------------------------------------------
// Operators and literals.

fn attr_trace() -> TestTrace {
    TestTrace::new(
        "acme",
        vec![TestSpan::new("op")
            .s("s", "hello world")
            .attr("i", Attr::I(42))
            .attr("f", Attr::F(2.5))
            .attr("b", Attr::B(true))],
    )
}

#[test]
fn comparison_operators_follow_their_meaning() {
    let t = attr_trace();
    for (e, want) in [
        ("span.i = 42", true),
        ("span.i == 42", true),
        ("span.i != 42", false),
        ("span.i != 41", true),
        ("span.i < 43", true),
        ("span.i < 42", false),
        ("span.i <= 42", true),
        ("span.i > 41", true),
        ("span.i > 42", false),
        ("span.i >= 42", true),
        ("span.i >= 42.5", false),
        ("span.i = 42.0", true),
        ("span.f > 2", true),
        ("span.f = 2.5", true),
        ("span.f < 2.5e0", false),
        ("span.f >= -1", true),
        (r#"span.s = "hello world""#, true),
        (r#"span.s > "hello""#, true),
        (r#"span.s < "a""#, false),
        ("span.b = true", true),
        ("span.b != false", true),
        (r#"tenant != "other""#, true),
        (r#"tenant >= "acme""#, true),
    ] {
        assert_eq!(holds(e, &t), want, "{e}");
    }
}

#[test]
fn attribute_of_another_type_than_the_literal_never_matches() {
    let t = attr_trace();
    for e in [
        r#"span.i = "42""#,
        r#"span.i != "42""#,
        r#"span.s = 1"#,
        r#"span.s != 1"#,
        r#"span.b = 1"#,
        r#"span.i contains "4""#,
        r#"span.i matches "4""#,
        r#"span.s not in [1, 2]"#,
        r#"span.absent != "x""#,
        r#"span.absent not in ["x"]"#,
    ] {
        assert!(!holds(e, &t), "{e}");
    }
}

#[test]
fn in_and_not_in_test_list_membership() {
    let t = attr_trace();
    for (e, want) in [
        (r#"tenant in ["acme", "globex"]"#, true),
        (r#"tenant in ["globex"]"#, false),
        (r#"tenant not in ["globex"]"#, true),
        (r#"tenant not in ["acme"]"#, false),
        ("span.i in [1, 42]", true),
        ("span.i in [41.5, 42.0]", true),
        (r#"span.i in ["42", 42]"#, true),
        ("span.i in []", false),
        ("span.i not in [1, 2]", true),
        (r#"span.status in ["ok", "unset"]"#, true),
        (r#"span.status not in ["error"]"#, true),
    ] {
        assert_eq!(holds(e, &t), want, "{e}");
    }
}

#[test]
fn string_operators_test_substrings_and_regexes() {
    let t = attr_trace();
    for (e, want) in [
        (r#"span.s contains "lo wo""#, true),
        (r#"span.s contains "xyz""#, false),
        (r#"span.s starts_with "hello""#, true),
        (r#"span.s starts_with "world""#, false),
        (r#"span.s ends_with "world""#, true),
        (r#"span.s ends_with "hello""#, false),
        (r#"span.s matches "^h.*d$""#, true),
        (r#"span.s matches "^world""#, false),
        (r#"span.name matches "o""#, true),
        (r#"tenant starts_with "ac""#, true),
        (r#"root.name contains "o""#, false),
    ] {
        assert_eq!(holds(e, &t), want, "{e}");
    }
}

#[test]
fn exists_and_missing_test_attribute_presence() {
    let t = attr_trace();
    assert!(holds("span.s exists", &t));
    assert!(!holds("span.s missing", &t));
    assert!(holds("span.nope missing", &t));
    assert!(!holds("span.nope exists", &t));
}

#[test]
fn not_binds_tighter_than_and_which_binds_tighter_than_or() {
    let t = attr_trace();
    // true or (false and false) = true; (true or false) and false would be false.
    assert!(holds("span.i = 42 or span.i = 1 and span.i = 2", &t));
    assert!(!holds("(span.i = 42 or span.i = 1) and span.i = 2", &t));
    // not applies to the first comparison only.
    assert!(holds("not span.i = 1 and span.i = 42", &t));
    assert!(!holds("not (span.i = 1 or span.i = 42)", &t));
    assert!(holds("not not span.i = 42", &t));
}

#[test]
fn string_literals_take_either_quote_and_escapes() {
    let t = TestTrace::new("t", vec![TestSpan::new("x").s("q", "a\"b'c\\d\n\u{e9}")]);
    assert!(holds(r#"span.q = "a\"b'c\\d\n\u{e9}""#, &t));
    assert!(holds(r#"span.q = 'a"b\'c\\d\né'"#, &t));
}

#[test]
fn duration_literals_accept_every_unit() {
    for (lit, nanos) in [
        ("10ns", 10u64),
        ("500us", 500_000),
        ("250ms", 250_000_000),
        ("2s", 2 * SEC),
        ("1.5s", 1_500_000_000),
        ("2m", 120 * SEC),
        ("1h", 3600 * SEC),
        ("0.25ms", 250_000),
    ] {
        let t = ordinary().took(nanos);
        assert!(holds(&format!("trace.duration = {lit}"), &t), "{lit}");
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

#[test]
fn statically_typed_fields_reject_literals_of_the_wrong_type() {
    for e in [
        r#"trace.duration > "abc""#,
        "trace.duration > 5",
        "span.status = 3",
        r#"root.status = "bogus""#,
        r#"span.kind = "server-ish""#,
        r#"span.status < "error""#,
        "trace.span_count = 1s",
        r#"trace.has_root = "yes""#,
        "trace.has_root > true",
        "tenant = 1",
        "span.name = true",
        "span.attr = 1s",
        "span.attr < true",
        r#"trace.duration contains "1""#,
        "span.name exists",
        "tenant missing",
        r#"trace.span_count in [1, "2"]"#,
    ] {
        let d = expr_errors(e);
        assert_eq!(d.len(), 1, "{e}: {d:?}");
        assert!(d[0].hint.is_some(), "{e}");
    }
}

#[test]
fn syntax_errors_and_unknown_fields_are_load_errors() {
    for e in [
        "",
        "span.status",
        r#"span.status = "error" and"#,
        r#"(span.status = "error""#,
        r#"span.status = error"#,
        r#"spans.status = "error""#,
        r#"trace.foo = 1"#,
        r#"trace.duration.x > 1s"#,
        r#"tenant.id = "x""#,
        "root = 1",
        "span. name = 1",
        "span.x = 2parsecs",
        "span.x = 1.5ns",
        r#"span.x = "unterminated"#,
        r#"span.x = "\q""#,
        "span.x = 99999999999999999999",
        "span.x in [1, 2",
        "span.x not [1]",
        r#"span.x = 1 AND span.y = 2"#,
        r#"span.x matches "(""#,
        "span.x @ 1",
        "span.x = 1 span.y = 2",
        r#"span."" = 1"#,
        "true",
    ] {
        let d = expr_errors(e);
        assert!(!d.is_empty(), "{e}");
    }
}

#[test]
fn diagnostics_point_at_the_offending_token_in_a_multi_rule_file() {
    let src = r#"# rules
[[rule]]
name = "ok"
if = 'span.status = "error"'
sample_rate = 1

[[rule]]
name = "bad-field"
if = 'tenant = "a" and spans.status = "error"'
sample_rate = 1

[[rule]]
name = "bad-type"
if = 'trace.duration > "abc"'
drop = true

[[rule]]
name = "bad-regex"
if = "root.name matches '[a-'"
sample_rate = 0
"#;
    let d = errors(src);
    let got: Vec<_> = d.iter().map(|d| (d.line, d.column)).collect();
    // `spans` at line 9: `if = '` is 6 chars, then `tenant = "a" and ` is 17 more.
    // `"abc"` at line 14 col 24; the regex literal at line 19 col 25; the 0 at line 20 col 15.
    assert_eq!(got, [(9, 24), (14, 24), (19, 25), (20, 15)], "{d:#?}");
    assert!(
        d[0].message.contains("unknown field `spans.status`"),
        "{}",
        d[0]
    );
    assert!(d[1].message.contains("duration"), "{}", d[1]);
    assert!(
        d[2].message.contains("invalid regular expression"),
        "{}",
        d[2]
    );
    assert!(d[3].message.contains("at least 1"), "{}", d[3]);
    assert!(d.iter().all(|d| d.file == "rules.toml" && d.hint.is_some()));
}

#[test]
fn expression_positions_are_exact_in_multi_line_literal_strings() {
    let src =
        "[[rule]]\nname = \"m\"\nif = '''\ntenant = \"a\" or\n  span.x = 1s'''\ndrop = true\n";
    let d = errors(src);
    assert_eq!((d[0].line, d[0].column), (5, 12), "{d:?}");
}

#[test]
fn every_error_in_a_file_is_reported_not_just_the_first() {
    let src = r#"
[[rule]]
name = "a"
if = 'span.status = 3 or trace.duration > 5'
sample_rate = 1
colour = "red"

[[rule]]
name = "a"
drop = true
sample_rate = 2

[[rule]]
if = 'tenant = "x"'
drop = true

[[rule]]
name = "c"

[[rule]]
name = "d"
sampler = "nope"

[[rule]]
name = "e"
drop = false

[bogus]
x = 1
"#;
    let d = errors(src);
    let messages: Vec<_> = d.iter().map(|d| d.message.as_str()).collect();
    let expect = [
        "span status",
        "is a duration",
        "unknown key `colour`",
        "duplicate rule name `a`",
        "more than one action",
        "rule has no `name`",
        "rule `c` has no action",
        "unknown sampler `nope`",
        "drop = false",
        "unknown key `bogus`",
    ];
    assert_eq!(d.len(), expect.len(), "{messages:#?}");
    for (m, want) in messages.iter().zip(expect) {
        assert!(m.contains(want), "{m:?} should contain {want:?}");
    }
    // Sorted by position.
    let pos: Vec<_> = d.iter().map(|d| (d.line, d.column)).collect();
    let mut sorted = pos.clone();
    sorted.sort();
    assert_eq!(pos, sorted);
}

#[test]
fn unknown_keys_get_a_did_you_mean_hint() {
    let d = errors("[[rule]]\nname = \"a\"\nsample-rate = 2\n");
    let unknown = d
        .iter()
        .find(|d| d.message.contains("sample-rate"))
        .expect("reported");
    assert!(unknown
        .hint
        .as_deref()
        .unwrap_or("")
        .contains("did you mean `sample_rate`"));
    assert_eq!((unknown.line, unknown.column), (3, 1));
}

#[test]
fn a_single_bracket_rule_table_is_explained() {
    let d = errors("[rule]\nname = \"a\"\ndrop = true\n");
    assert!(
        d[0].hint.as_deref().unwrap_or("").contains("[[rule]]"),
        "{d:?}"
    );
}

#[test]
fn sample_rate_must_be_a_positive_integer() {
    for v in ["0", "-3", "1.5", "\"10\""] {
        let d = errors(&format!("[[rule]]\nname = \"a\"\nsample_rate = {v}\n"));
        assert_eq!(d.len(), 1, "{v}: {d:?}");
        assert_eq!((d[0].line, d[0].column), (3, 15));
    }
}

#[test]
fn invalid_toml_is_reported_with_its_position() {
    let d = errors("[[rule]]\nname = \"a\nsample_rate = 1\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 2, "{d:?}");
    assert!(d[0].message.starts_with("invalid TOML"));
}

#[test]
fn rule_after_a_catch_all_is_unreachable_warning_not_error() {
    let src = "[[rule]]\nname = \"all\"\nsample_rate = 5\n\n[[rule]]\nname = \"late\"\nif = 'tenant = \"x\"'\ndrop = true\n";
    let set = RuleSet::parse(src, "w.toml").expect("only a warning");
    assert_eq!(set.warnings().len(), 1);
    let w = &set.warnings()[0];
    assert_eq!((w.line, w.column), (5, 1));
    assert!(w.message.contains("`late` is unreachable"), "{w}");
    assert!(w.message.contains("`all` (line 1)"), "{w}");
}

#[test]
fn diagnostics_display_as_file_line_column_message_and_hint() {
    let d = Diagnostic {
        file: "r.toml".into(),
        line: 3,
        column: 7,
        message: "bad".into(),
        hint: Some("fix it".into()),
    };
    assert_eq!(d.to_string(), "r.toml:3:7: bad (hint: fix it)");
    let e = RulesError::Invalid(vec![d.clone(), Diagnostic { hint: None, ..d }]);
    assert_eq!(
        e.to_string(),
        "r.toml:3:7: bad (hint: fix it)\nr.toml:3:7: bad"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let err = RuleSet::load(std::path::Path::new("/nonexistent/rules.toml")).err();
    assert!(matches!(err, Some(RulesError::Io { .. })));
}

#[test]
fn source_hash_changes_with_the_text() {
    let a = RuleSet::parse("", "a").map(|s| s.source_hash()).ok();
    let b = RuleSet::parse("# x\n", "a").map(|s| s.source_hash()).ok();
    assert_ne!(a, b);
    assert_eq!(a, RuleSet::parse("", "b").map(|s| s.source_hash()).ok());
}

// ---------------------------------------------------------------------------------------------
// Samplers and tenants.

const TENANTS: &str = r#"
[[rule]]
name = "errors"
if = 'span.status = "error"'
sample_rate = 1

[[rule]]
name = "rest"
sampler = "dyn"

[tenant."acme"]
[[tenant."acme".rule]]
name = "acme-drop-batch"
if = 'root.name starts_with "batch"'
drop = true

[[tenant."acme".rule]]
name = "acme-all"
sample_rate = 3

[tenant."globex"]
[[tenant."globex".rule]]
name = "globex-checkout"
if = 'root.http.route = "/checkout"'
sample_rate = 1

[sampler.dyn]
type = "ema_dynamic"
goal_sample_rate = 10
"#;

#[test]
fn tenant_rules_are_tried_before_global_rules() {
    let set = RuleSet::parse(TENANTS, "t.toml").expect("valid");
    let mut t = ordinary();
    t.tenant = "acme".into();
    t.spans[1].status = SpanStatus::Error;
    // acme's catch-all comes before the global `errors` rule.
    assert_eq!(set.evaluate(&t).rule, Some("acme-all"));
    t.spans[0].name = "batch-job".into();
    assert_eq!(set.evaluate(&t).rule, Some("acme-drop-batch"));
    assert!(
        set.warnings().is_empty(),
        "a tenant catch-all does not shadow other lists"
    );
}

#[test]
fn tenant_rules_do_not_apply_to_other_tenants() {
    let set = RuleSet::parse(TENANTS, "t.toml").expect("valid");
    let mut t = ordinary();
    t.spans[0].name = "batch-job".into();
    let v = set.evaluate(&t);
    assert_eq!(
        (v.rule, v.action),
        (Some("rest"), &Action::Sampler("dyn".into()))
    );
    t.tenant = "globex".into();
    assert_eq!(
        set.evaluate(&t).rule,
        Some("rest"),
        "globex falls through to global rules"
    );
}

#[test]
fn samplers_are_kept_raw_and_must_exist_and_have_a_type() {
    let set = RuleSet::parse(TENANTS, "t.toml").expect("valid");
    let dyn_table = &set.samplers()["dyn"];
    assert_eq!(dyn_table["type"].as_str(), Some("ema_dynamic"));
    assert_eq!(dyn_table["goal_sample_rate"].as_integer(), Some(10));

    let d = errors("[[rule]]\nname = \"a\"\nsampler = \"s\"\n\n[sampler.s]\nrate = 1\n");
    assert!(d[0].message.contains("has no `type`"), "{d:?}");
    let unused = RuleSet::parse(
        "[sampler.s]\ntype = \"ema_dynamic\"\ngoal_sample_rate = 5\n",
        "u",
    )
    .expect("valid");
    assert!(unused.warnings()[0].message.contains("not used"));
}

/// The errors of a file whose one rule uses sampler `s`, declared by `body`.
fn sampler_errors(body: &str) -> Vec<String> {
    errors(&format!(
        "[[rule]]\nname = \"a\"\nsampler = \"s\"\n\n[sampler.s]\n{body}"
    ))
    .into_iter()
    .map(|d| d.to_string())
    .collect()
}

#[test]
fn sampler_settings_are_validated_with_the_sampler_named() {
    let cases = [
        ("type = \"ema_dynamc\"\n", "rules.toml:6:8: sampler `s`: unknown type \"ema_dynamc\" (hint: did you mean \"ema_dynamic\"?"),
        ("type = \"ema_dynamic\"\n", "sampler `s`: `goal_sample_rate` is required for type \"ema_dynamic\""),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 0\n", "rules.toml:7:20: sampler `s`: `goal_sample_rate` must be a number ≥ 1"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nkey = [\"root.nme\", \"span.name\"]\n", ""),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nkey = [\"tenant\", \"span.name\"]\n", "sampler `s`: key field `span.name`: span.* fields differ between spans; use root.*"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nkey = [\"traceid\"]\n", "sampler `s`: key field `traceid`: unknown field `traceid`"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nkey = [\"trace.duration\"]\n", "a duration is not a key"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nadjustment_interval = \"15\"\n", "sampler `s`: `adjustment_interval` must be a duration of at least 100ms"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nweight = 1.5\n", "sampler `s`: `weight` must be a number in (0, 1]"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\nmax_keys = 0\n", "sampler `s`: `max_keys` must be an integer ≥ 1"),
        ("type = \"ema_dynamic\"\ngoal_sample_rate = 5\ngoal_traces_per_sec = 5\n", "sampler `s`: unknown setting `goal_traces_per_sec`"),
        ("type = \"ema_throughput\"\ngoal_traces_per_sec = -1\n", "sampler `s`: `goal_traces_per_sec` must be a number > 0"),
        ("type = \"tenant_fair\"\ngoal_traces_per_sec = 10\nwithin_tenant = \"nope\"\n", "sampler `s`: within_tenant names no sampler `nope`"),
        ("type = \"tenant_fair\"\ngoal_traces_per_sec = 10\nweights = { acme = 0 }\n", "sampler `s`: the weight of tenant \"acme\" must be a positive number"),
        ("type = \"tenant_fair\"\ngoal_traces_per_sec = 10\nwithin_tenant = \"s\"\n", "sampler `s`: within_tenant = \"s\" is a tenant_fair sampler"),
    ];
    for (body, want) in cases {
        let got = sampler_errors(body);
        assert!(
            got.iter().any(|e| e.contains(want)) && got.iter().all(|e| e.contains("sampler `s`")),
            "{body}: expected `{want}`, got {got:?}"
        );
    }
}

#[test]
fn sampler_specs_are_typed_with_defaults() {
    let set = RuleSet::parse(
        "[[rule]]\nname = \"a\"\nsampler = \"fair\"\n\n[sampler.fair]\ntype = \"tenant_fair\"\ngoal_traces_per_sec = 1000\nwithin_tenant = \"per-key\"\nweights = { acme = 4 }\n\n[sampler.per-key]\ntype = \"ema_dynamic\"\ngoal_sample_rate = 20\nkey = [\"tenant\", \"root.http.route\", \"root.status\"]\n",
        "s.toml",
    )
    .expect("valid");
    assert!(
        set.warnings().is_empty(),
        "used through within_tenant: {:?}",
        set.warnings()
    );
    match &set.sampler_specs()["fair"] {
        SamplerSpec::TenantFair {
            goal_traces_per_sec,
            min_per_tenant,
            weights,
            within_tenant,
            ema,
        } => {
            assert_eq!(*goal_traces_per_sec, 1000.0);
            assert_eq!(*min_per_tenant, 1.0);
            assert_eq!(weights.get("acme"), Some(&4.0));
            assert_eq!(within_tenant.as_deref(), Some("per-key"));
            assert_eq!(ema.adjustment_interval, std::time::Duration::from_secs(15));
            assert_eq!((ema.weight, ema.max_keys), (0.5, 10_000));
            assert_eq!(ema.key, KeyFields::default_key());
        }
        other => panic!("{other:?}"),
    }
    let SamplerSpec::EmaDynamic { ema, .. } = &set.sampler_specs()["per-key"] else {
        panic!("ema_dynamic");
    };
    let fields: Vec<String> = ema.key.fields().iter().map(|f| f.to_string()).collect();
    assert_eq!(fields, ["tenant", "root.http.route", "root.status"]);
    assert_eq!(KeyFields::default_key().fields().len(), DEFAULT_KEY.len());
}

#[test]
fn rules_lists_global_then_tenant_rules_with_their_actions() {
    let set = RuleSet::parse(TENANTS, "t.toml").expect("valid");
    let listed: Vec<_> = set
        .rules()
        .map(|r| (r.tenant, r.rule.name(), r.rule.action().to_string()))
        .collect();
    assert_eq!(listed.len(), 5);
    assert_eq!(
        listed[0],
        (None, "errors", "keep all (sample_rate = 1)".to_string())
    );
    assert_eq!(listed[1], (None, "rest", "sampler \"dyn\"".to_string()));
    assert_eq!(listed[2].0, Some("acme"));
    assert_eq!(
        listed[3],
        (
            Some("acme"),
            "acme-all",
            "keep 1 in 3 (sample_rate = 3)".to_string()
        )
    );
    assert_eq!(listed[4].1, "globex-checkout");
    let cond = set
        .rules()
        .next()
        .and_then(|r| r.rule.condition().map(|c| c.to_string()));
    assert_eq!(cond.as_deref(), Some(r#"span.status = "error""#));
}

// ---------------------------------------------------------------------------------------------
// Explain.

#[test]
fn explain_says_why_each_earlier_rule_did_not_match() {
    let set = RuleSet::builtin();
    let t = ordinary().took(3 * SEC);
    let ex = set.explain(&t);
    assert_eq!(ex.rule.as_deref(), Some("slow"));
    assert_eq!(ex.action, Action::Sample { rate: 2 });
    let names: Vec<_> = ex.misses.iter().map(|m| m.rule.as_str()).collect();
    assert_eq!(names, ["errors", "tagged-tenants", "health-checks"]);
    assert_eq!(
        ex.misses[0].reasons[0],
        "no single span makes `span.status = \"error\" or trace.error_log_count > 0` true (2 spans checked)"
    );
    assert_eq!(
        ex.misses[1].reasons[0],
        "`tenant in [\"acme\", \"globex\"]` is false (tenant is \"default\")"
    );
    assert_eq!(
        ex.misses[2].reasons[0],
        "`root.http.route = \"/healthz\"` is false (root.http.route is \"/api/orders\")"
    );
    let text = ex.to_string();
    assert!(
        text.ends_with("matched \"slow\": keep 1 in 2 (sample_rate = 2)"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4);
}

#[test]
fn explain_agrees_with_evaluate_and_reports_no_match() {
    let set = RuleSet::parse(TENANTS, "t.toml").expect("valid");
    let mut t = ordinary();
    t.tenant = "globex".into();
    let ex = set.explain(&t);
    assert_eq!(ex.rule.as_deref(), set.evaluate(&t).rule);
    assert_eq!(ex.misses[0].tenant.as_deref(), Some("globex"));

    let none = RuleSet::parse(
        "[[rule]]\nname = \"x\"\nif = 'root.a = 1 and tenant = \"q\"'\ndrop = true\n",
        "f",
    )
    .expect("valid");
    let mut t = ordinary();
    t.spans[0].root = false;
    let ex = none.explain(&t);
    assert_eq!(ex.rule, None);
    assert_eq!(ex.action, Action::Sample { rate: 1 });
    assert!(
        ex.misses[0].reasons[0].contains("no root span"),
        "{:?}",
        ex.misses
    );
    assert!(ex
        .to_string()
        .ends_with("no rule matched: keep all (sample_rate = 1)"));
}

#[test]
fn explain_reports_trace_level_parts_of_span_rules() {
    let set = RuleSet::parse(
        "[[rule]]\nname = \"x\"\nif = 'tenant = \"acme\" and span.status = \"error\"'\ndrop = true\n",
        "f",
    )
    .expect("valid");
    let ex = set.explain(&ordinary());
    assert_eq!(
        ex.misses[0].reasons,
        ["`tenant = \"acme\"` is false (tenant is \"default\")"]
    );
}

// ---------------------------------------------------------------------------------------------
// Printing and robustness.

#[test]
fn printing_gives_canonical_source() {
    for (src, printed) in [
        ("span.status=='error'", r#"span.status = "error""#),
        (
            "(tenant = 'a' or tenant = 'b') and not (span.x exists)",
            r#"(tenant = "a" or tenant = "b") and not span.x exists"#,
        ),
        (
            "tenant = 'a' or (tenant = 'b' or tenant = 'c')",
            r#"tenant = "a" or (tenant = "b" or tenant = "c")"#,
        ),
        ("trace.duration > 1.5s", "trace.duration > 1500ms"),
        ("trace.duration > 120s", "trace.duration > 2m"),
        (
            "span.\"my key\" in [1,2.5,'x',true]",
            r#"span."my key" in [1, 2.5, "x", true]"#,
        ),
        ("span.'http.route' not in []", "span.http.route not in []"),
        ("trace.has_root", "trace.has_root = true"),
    ] {
        let e = parse_expr(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
        assert_eq!(e.to_string(), printed);
        assert_eq!(parse_expr(printed).ok(), Some(e));
    }
}

fn random_string(rng: &mut SmallRng) -> String {
    const CHARS: &[char] = &[
        'a', 'Z', '0', ' ', '.', '"', '\'', '\\', '\n', '\t', 'é', '€', '\u{1}', '/', '-', '_',
    ];
    let n = rng.random_range(0..8);
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())])
        .collect()
}

fn random_key(rng: &mut SmallRng) -> String {
    const KEYS: &[&str] = &[
        "http.route",
        "db.system",
        "name",
        "my key",
        "a",
        "x-y.z_1",
        "2xx",
        "status.code",
        "é",
    ];
    if rng.random_bool(0.2) {
        let s = random_string(rng);
        if !s.is_empty() {
            return s;
        }
    }
    KEYS[rng.random_range(0..KEYS.len())].to_string()
}

fn random_field(rng: &mut SmallRng) -> Field {
    let scope = if rng.random_bool(0.5) {
        Scope::Root
    } else {
        Scope::Span
    };
    match rng.random_range(0..17) {
        12 => Field::TraceLogCount,
        13 => Field::TraceErrorLogCount,
        14 => Field::Log(LogField::Severity),
        15 => Field::Log(LogField::Body),
        16 => Field::Log(LogField::Attribute(random_key(rng))),
        0 => Field::Tenant,
        1 => Field::TraceDuration,
        2 => Field::TraceSpanCount,
        3 => Field::TraceErrorCount,
        4 => Field::TraceServiceCount,
        5 => Field::TraceHasRoot,
        6 => Field::Span(scope, SpanField::Name),
        7 => Field::Span(scope, SpanField::Status),
        8 => Field::Span(scope, SpanField::Kind),
        9 => Field::Span(scope, SpanField::Duration),
        _ => Field::Span(scope, SpanField::Attribute(random_key(rng))),
    }
}

/// A literal valid for the field (so the tree type-checks).
fn random_literal(rng: &mut SmallRng, field: &Field, ordering: bool) -> Literal {
    use super::ast::FieldType;
    match field.ty() {
        FieldType::Str => Literal::Str(random_string(rng)),
        FieldType::Duration => Literal::Duration(match rng.random_range(0..3) {
            0 => rng.random_range(0..5_000),
            1 => rng.random_range(0..100) * 1_000_000,
            _ => rng.random(),
        }),
        FieldType::Count => {
            if rng.random_bool(0.7) {
                Literal::Int(rng.random())
            } else {
                Literal::Float(random_float(rng))
            }
        }
        FieldType::Bool => Literal::Bool(rng.random()),
        FieldType::Status => Literal::Str(["ok", "error", "unset"][rng.random_range(0..3)].into()),
        FieldType::Kind => Literal::Str(
            [
                "server",
                "client",
                "internal",
                "producer",
                "consumer",
                "unspecified",
            ][rng.random_range(0..6)]
            .into(),
        ),
        FieldType::Severity => {
            if rng.random_bool(0.5) {
                Literal::Int(rng.random_range(0..=24))
            } else {
                Literal::Str(
                    ["trace", "debug", "info", "warn", "error", "fatal"][rng.random_range(0..6)]
                        .into(),
                )
            }
        }
        FieldType::Dynamic => match rng.random_range(0..if ordering { 3 } else { 4 }) {
            0 => Literal::Str(random_string(rng)),
            1 => Literal::Int(rng.random_range(-1000..1000)),
            2 => Literal::Float(random_float(rng)),
            _ => Literal::Bool(rng.random()),
        },
    }
}

fn random_float(rng: &mut SmallRng) -> f64 {
    match rng.random_range(0..3) {
        0 => rng.random_range(-100.0..100.0),
        1 => f64::from_bits(rng.random::<u64>() >> 2), // finite, wide exponent range
        _ => rng.random_range(-5..5) as f64,
    }
}

fn random_expr(rng: &mut SmallRng, depth: u32) -> Expr {
    if depth > 0 && rng.random_bool(0.6) {
        return match rng.random_range(0..3) {
            0 => Expr::Or(
                Box::new(random_expr(rng, depth - 1)),
                Box::new(random_expr(rng, depth - 1)),
            ),
            1 => Expr::And(
                Box::new(random_expr(rng, depth - 1)),
                Box::new(random_expr(rng, depth - 1)),
            ),
            _ => Expr::Not(Box::new(random_expr(rng, depth - 1))),
        };
    }
    let field = random_field(rng);
    let ty = field.ty();
    use super::ast::FieldType as T;
    let stringy = matches!(ty, T::Str | T::Dynamic);
    match rng.random_range(0..5) {
        1 => Expr::In {
            negated: rng.random(),
            values: (0..rng.random_range(0..4))
                .map(|_| random_literal(rng, &field, false))
                .collect(),
            field,
        },
        2 if stringy => Expr::Text {
            field,
            op: [TextOp::Contains, TextOp::StartsWith, TextOp::EndsWith][rng.random_range(0..3)],
            value: random_string(rng),
        },
        3 if stringy => Expr::Matches {
            field,
            pattern: Pattern(
                regex::Regex::new(["^a.*", "x|y", r"\d+", "[\"']"][rng.random_range(0..4)])
                    .expect("valid"),
            ),
        },
        4 if ty == T::Dynamic => Expr::Exists {
            field,
            negated: rng.random(),
        },
        _ => {
            let ordered = matches!(
                ty,
                T::Str | T::Duration | T::Count | T::Dynamic | T::Severity
            );
            let op = if ordered {
                [
                    CmpOp::Eq,
                    CmpOp::Ne,
                    CmpOp::Lt,
                    CmpOp::Le,
                    CmpOp::Gt,
                    CmpOp::Ge,
                ][rng.random_range(0..6)]
            } else {
                [CmpOp::Eq, CmpOp::Ne][rng.random_range(0..2)]
            };
            let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
            let value = random_literal(rng, &field, ordering);
            Expr::Compare { field, op, value }
        }
    }
}

#[test]
fn printed_expressions_parse_back_to_the_same_tree() {
    let mut rng = SmallRng::seed_from_u64(0x07a1_15f7);
    for i in 0..4000 {
        let e = random_expr(&mut rng, 4);
        let printed = e.to_string();
        if e.mentions_span() && e.mentions_log() {
            assert!(
                parse_expr(&printed).is_err(),
                "case {i}: {printed} mixes span. and log."
            );
            continue;
        }
        match parse_expr(&printed) {
            Ok(back) => assert_eq!(back, e, "case {i}: {printed}"),
            Err(errs) => panic!("case {i}: {printed}: {errs:?}"),
        }
        assert_eq!(
            parse_expr(&printed).map(|b| b.to_string()).ok().as_deref(),
            Some(printed.as_str())
        );
    }
}

#[test]
fn parser_never_panics_on_arbitrary_input() {
    let mut rng = SmallRng::seed_from_u64(42);
    const PIECES: &[&str] = &[
        "span",
        "root",
        "trace",
        "tenant",
        ".",
        "name",
        "status",
        "\"",
        "'",
        "(",
        ")",
        "[",
        "]",
        ",",
        "=",
        "!=",
        "<",
        ">=",
        "and",
        "or",
        "not",
        "in",
        "exists",
        "missing",
        "matches",
        "contains",
        "1",
        "-",
        "1.5",
        "e9",
        "2s",
        "ms",
        "\\",
        "\\u{",
        "}",
        " ",
        "é",
        "\u{0}",
        "true",
        "duration",
        "http.route",
        "\"[\"",
    ];
    let trace = ordinary();
    let mut valid = 0;
    for i in 0..3000 {
        let src = if i % 2 == 0 {
            (0..rng.random_range(0..14))
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect::<String>()
        } else {
            // Mutate a valid printed expression: delete, duplicate or replace a char range.
            let mut s: Vec<char> = random_expr(&mut rng, 3).to_string().chars().collect();
            for _ in 0..rng.random_range(1..4) {
                if s.is_empty() {
                    break;
                }
                let a = rng.random_range(0..s.len());
                let b = rng.random_range(a..=s.len().min(a + 4));
                match rng.random_range(0..3) {
                    0 => {
                        s.drain(a..b);
                    }
                    1 => {
                        let dup: Vec<char> = s[a..b].to_vec();
                        s.splice(a..a, dup);
                    }
                    _ => s[a] = ['"', '(', ' ', '.', 'x', '\\', '9'][rng.random_range(0..7)],
                }
            }
            s.into_iter().collect()
        };
        if let Ok(e) = parse_expr(&src) {
            valid += 1;
            // Whatever parses also prints, reparses and evaluates.
            assert_eq!(parse_expr(&e.to_string()).ok().as_ref(), Some(&e), "{src}");
            let src_file = format!("[[rule]]\nname = \"r\"\nif = '''{e}'''\ndrop = true\n");
            if let Ok(set) = RuleSet::parse(&src_file, "f") {
                let _ = set.evaluate(&trace);
                let _ = set.explain(&trace).to_string();
            }
        }
        // Also through the file layer, where positions are mapped.
        let file = format!(
            "[[rule]]\nname = \"r\"\nif = '{}'\ndrop = true\n",
            src.replace(['\'', '\n'], " ")
        );
        if let Err(RulesError::Invalid(d)) = RuleSet::parse(&file, "f") {
            assert!(d.iter().all(|d| d.line >= 1 && d.column >= 1));
        }
    }
    assert!(
        valid > 100,
        "the mutations should leave some valid expressions ({valid})"
    );
}

#[test]
fn deeply_nested_or_long_expressions_are_refused_not_crashed() {
    let deep = format!("{}tenant = \"a\"{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(parse_expr(&deep).is_err());
    let nots = format!("{}tenant = \"a\"", "not ".repeat(10_000));
    assert!(parse_expr(&nots).is_err());
    let long = vec!["tenant = \"a\""; 5_000].join(" or ");
    assert!(parse_expr(&long).is_err());
    let fine = vec!["tenant = \"a\""; 100].join(" or ");
    assert!(parse_expr(&fine).is_ok());
}

#[test]
fn expressions_parse_from_str_with_column_diagnostics() {
    let e: Result<Expr, _> = "tenant = 1".parse();
    match e {
        Err(RulesError::Invalid(d)) => assert_eq!(
            (d[0].line, d[0].column, d[0].file.as_str()),
            (1, 10, "<expr>")
        ),
        other => panic!("{other:?}"),
    }
    assert!("tenant = \"a\"".parse::<Expr>().is_ok());
}

// ---------------------------------------------------------------------------------------------
// Hit counts.

#[test]
fn recorded_hits_are_counted_per_rule_including_tenant_rules() {
    let src = r#"
[[rule]]
name = "errors"
if = 'span.status = "error"'
sample_rate = 1

[[rule]]
name = "rest"
sample_rate = 10

[tenant."acme"]
[[tenant."acme".rule]]
name = "acme-all"
sample_rate = 1
"#;
    let set = RuleSet::parse(src, "hits.toml").expect("valid");
    for trace in [
        ordinary(),
        ordinary(),
        TestTrace::new("acme", ordinary().spans),
    ] {
        let v = set.evaluate(&trace);
        set.record_hit(&v);
    }
    let hits: Vec<(String, Option<String>, u64)> = set
        .rules()
        .map(|r| {
            (
                r.rule.name().to_string(),
                r.tenant.map(str::to_string),
                r.hits,
            )
        })
        .collect();
    assert_eq!(
        hits,
        vec![
            ("errors".into(), None, 0),
            ("rest".into(), None, 2),
            ("acme-all".into(), Some("acme".into()), 1),
        ]
    );
    assert_eq!(set.unmatched_hits(), 0);
    let empty = RuleSet::parse("", "f").expect("valid");
    let v = empty.evaluate(&ordinary());
    empty.record_hit(&v);
    assert_eq!(empty.unmatched_hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Log records held with their trace.

/// `ordinary()` with log records of the given severity_numbers.
fn with_logs_of(severities: &[u8]) -> TestTrace {
    ordinary().with_logs(
        severities
            .iter()
            .map(|&n| TestSpan::log(n, "request handled"))
            .collect(),
    )
}

#[test]
fn a_rule_can_keep_every_trace_with_an_error_log() {
    let expr = "trace.error_log_count > 0";
    assert!(holds(expr, &with_logs_of(&[9, 17])), "an ERROR log");
    assert!(holds(expr, &with_logs_of(&[21])), "FATAL counts too");
    assert!(
        !holds(expr, &with_logs_of(&[9, 13, 16])),
        "INFO and WARN only"
    );
    assert!(!holds(expr, &ordinary()), "no logs at all");
    assert!(holds("trace.log_count = 3", &with_logs_of(&[1, 5, 9])));
    assert!(holds("trace.log_count = 0", &ordinary()));
}

#[test]
fn a_severity_name_stands_for_its_whole_range() {
    for (n, error_or_worse) in [(16, false), (17, true), (20, true), (21, true)] {
        assert_eq!(
            holds("log.severity >= \"error\"", &with_logs_of(&[n])),
            error_or_worse,
            "severity_number {n}"
        );
    }
    assert!(holds("log.severity = \"ERROR\"", &with_logs_of(&[18])));
    assert!(!holds("log.severity = \"error\"", &with_logs_of(&[21])));
    assert!(holds("log.severity > \"error\"", &with_logs_of(&[21])));
    assert!(holds("log.severity = \"warning\"", &with_logs_of(&[13])));
    assert!(holds(
        "log.severity in [\"warn\", \"error\"]",
        &with_logs_of(&[14])
    ));
    assert!(holds("log.severity >= 17", &with_logs_of(&[17])));
    assert!(!holds("log.severity < \"info\"", &with_logs_of(&[9, 12])));
}

#[test]
fn log_fields_are_read_record_by_record() {
    let t = ordinary().with_logs(vec![
        TestSpan::log(9, "cache warm").s("db.system", "redis"),
        TestSpan::log(17, "upstream timeout").s("db.system", "postgres"),
    ]);
    assert!(holds("log.body contains \"timeout\"", &t));
    assert!(holds(
        "log.db.system = \"postgres\" and log.severity >= \"error\"",
        &t
    ));
    // No single record is both an ERROR and about redis.
    assert!(!holds(
        "log.db.system = \"redis\" and log.severity >= \"error\"",
        &t
    ));
    assert!(holds("log.\"db.system\" exists", &t));
    assert!(!holds("log.http.route exists", &t));
    // Trace-level parts combine with per-record ones.
    assert!(holds(
        "tenant = \"default\" and log.body matches \"^upstream\"",
        &t
    ));
    assert!(!holds("log.body contains \"timeout\"", &ordinary()));
}

#[test]
fn one_condition_cannot_mix_span_and_log_fields() {
    let d = expr_errors("span.status = \"error\" or log.severity >= \"error\"");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("both span.* and log.*"), "{d:?}");
    assert!(
        d[0].hint
            .as_deref()
            .is_some_and(|h| h.contains("trace.error_log_count")),
        "{d:?}"
    );
    // Trace-level log counts beside span fields are fine.
    assert!(holds(
        "span.status = \"unset\" and trace.error_log_count = 0",
        &ordinary()
    ));
}

#[test]
fn a_bad_severity_is_refused_with_the_level_names() {
    let d = expr_errors("log.severity = \"loud\"");
    assert!(d[0].message.contains("log severity"), "{d:?}");
    assert!(
        d[0].hint
            .as_deref()
            .is_some_and(|h| h.contains("warn, error, fatal")),
        "{d:?}"
    );
    assert!(!expr_errors("log.severity > 25").is_empty());
    let d = expr_errors("trace.error_logs > 0");
    assert!(
        d[0].hint
            .as_deref()
            .is_some_and(|h| h.contains("error_log_count")),
        "{d:?}"
    );
}

#[test]
fn explain_says_no_log_record_matched() {
    let set = RuleSet::parse(
        "[[rule]]\nname = \"error-logs\"\nif = 'log.severity >= \"error\"'\nsample_rate = 1\n[[rule]]\nname = \"rest\"\nsample_rate = 10\n",
        "t.toml",
    )
    .expect("valid");
    let ex = set.explain(&with_logs_of(&[9, 13]));
    assert_eq!(ex.rule.as_deref(), Some("rest"));
    assert_eq!(
        ex.misses[0].reasons[0],
        "no single log record makes `log.severity >= \"error\"` true (2 log records checked)"
    );
    let ex = set.explain(&with_logs_of(&[13]));
    assert_eq!(
        ex.misses[0].reasons[1],
        "`log.severity >= \"error\"` is false (log.severity is 13)"
    );
    let ex = set.explain(&ordinary());
    assert_eq!(ex.misses[0].reasons[0], "the trace has no log records");
    assert_eq!(
        set.explain(&with_logs_of(&[17])).rule.as_deref(),
        Some("error-logs")
    );
}

#[test]
fn a_log_field_is_not_a_sampler_key() {
    let e = super::sampler::KeyFields::compile(&["log.severity"]).expect_err("refused");
    assert!(e.contains("differ between log records"), "{e}");
    assert!(super::sampler::KeyFields::compile(&["tenant", "trace.error_log_count"]).is_ok());
}
