//! Sampling rules: a TOML file of ordered rules, compiled once, evaluated per trace.
//!
//! ```text
//! rules file ──parse/validate──> RuleSet (Arc, swapped on reload)
//!                                   │ evaluate(trace)  first match wins:
//!                                   │   tenant rules of the trace's tenant, then global rules
//!                                   └─> Verdict { rule, action }
//! ```
//! The module is a leaf: the proxy implements [`TraceView`] / [`SpanView`] over its buffered,
//! still-encoded spans, and consumes [`Verdict`]s. `docs/rules.md` is the user guide.
//!
//! Parts: `lexer` and `parser` turn an `if` string into an [`Expr`] (type-checked, with byte
//! positions for errors), `eval` compiles it into a tree with resolved fields and regexes and
//! evaluates it, `file` reads the TOML document and validates rules with line/column
//! diagnostics.

mod ast;
mod eval;
mod file;
mod lexer;
mod parser;
mod sampler;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use ast::{CmpOp, Expr, Field, Literal, Pattern, Scope, SpanField, TextOp};
pub use parser::{parse_expr, ExprError};
pub use sampler::{EmaSpec, KeyFields, SamplerSpec, DEFAULT_KEY, KEY_SEPARATOR};

/// An attribute value as the proxy found it in OTLP `AnyValue` (other kinds: `None`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Float(f64),
    /// `bool_value`.
    Bool(bool),
}

/// OTLP span status code, as `span.status` / `root.status` see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    /// `STATUS_CODE_UNSET`.
    Unset,
    /// `STATUS_CODE_OK`.
    Ok,
    /// `STATUS_CODE_ERROR`.
    Error,
}

/// OTLP span kind, as `span.kind` / `root.kind` see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// `SPAN_KIND_UNSPECIFIED`.
    Unspecified,
    /// `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

/// What the rule engine may ask of one span (implemented by the proxy over encoded spans, so
/// the engine keeps calls few).
pub trait SpanView {
    /// The span name.
    fn name(&self) -> &str;
    /// The status code.
    fn status(&self) -> SpanStatus;
    /// The span kind.
    fn kind(&self) -> SpanKind;
    /// End minus start, in nanoseconds.
    fn duration_nanos(&self) -> u64;
    /// Whether the span has an empty parent id.
    fn is_root(&self) -> bool;
    /// Attribute looked up on the span, then on its resource (so `service.name` works).
    fn attribute(&self, key: &str) -> Option<Value<'_>>;
    /// OTLP `severity_number` of a log record (1–24; 17 and above is ERROR); 0 for spans.
    fn severity_number(&self) -> u8 {
        0
    }
    /// The body of a log record when it is a string.
    fn body(&self) -> Option<&str> {
        None
    }
}

/// What the rule engine may ask of a whole buffered trace.
pub trait TraceView {
    /// The span type the trace hands out.
    type Span: SpanView;
    /// The tenant the trace belongs to.
    fn tenant(&self) -> &str;
    /// Number of spans buffered for the trace.
    fn span_count(&self) -> usize;
    /// The `i`-th span, `i < span_count()`.
    fn span(&self, i: usize) -> &Self::Span;
    /// The root span (empty parent id), if it arrived.
    fn root(&self) -> Option<&Self::Span>;
    /// Latest end minus earliest start over all spans, in nanoseconds.
    fn duration_nanos(&self) -> u64;
    /// Log records held with the trace (they carry its trace id).
    fn log_count(&self) -> usize {
        0
    }
    /// The `i`-th log record, `i < log_count()`; log records answer [`SpanView`] with their
    /// own attributes, `severity_number` and `body`.
    fn log(&self, _i: usize) -> Option<&Self::Span> {
        None
    }
}

/// What a matching rule does with the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep 1 trace in `rate` (1 keeps all), chosen consistently from the trace id.
    Sample {
        /// N in "keep 1 in N"; always ≥ 1.
        rate: u64,
    },
    /// Drop the trace.
    Drop,
    /// Hand the trace to the named `[sampler.<name>]`.
    Sampler(String),
}

/// The action taken when no rule matches: keep everything, so omissions lose nothing.
static KEEP_ALL: Action = Action::Sample { rate: 1 };

/// Shows the action as in the admin API and `rules test`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Sample { rate: 1 } => f.write_str("keep all (sample_rate = 1)"),
            Action::Sample { rate } => write!(f, "keep 1 in {rate} (sample_rate = {rate})"),
            Action::Drop => f.write_str("drop"),
            Action::Sampler(name) => write!(f, "sampler \"{name}\""),
        }
    }
}

/// The decision for one trace: which rule matched and what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// The matching rule's name; `None` when no rule matched.
    pub rule: Option<&'a str>,
    /// What to do; `Sample { rate: 1 }` when no rule matched.
    pub action: &'a Action,
    /// The matching rule's position in [`RuleSet::rules`] order (for hit counts).
    pub index: Option<usize>,
}

/// A located problem in a rules file (an error, or a warning in [`RuleSet::warnings`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given to [`RuleSet::parse`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// `file:line:col: message (hint: ...)`, the form editors and humans both read.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Why a rules file could not be loaded; the old rule set stays live.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rules file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file was read but is invalid; every problem found is listed.
    #[error("{}", DiagnosticList(.0))]
    Invalid(Vec<Diagnostic>),
}

/// Displays diagnostics one per line.
struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses a single expression, for tools and the admin API (`<expr>` names it in errors).
impl std::str::FromStr for Expr {
    type Err = RulesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_expr(s).map_err(|errs| {
            RulesError::Invalid(
                errs.into_iter()
                    .map(|e| Diagnostic {
                        file: "<expr>".into(),
                        line: 1,
                        column: s.get(..e.start).map_or(1, |p| p.chars().count() + 1),
                        message: e.message,
                        hint: e.hint,
                    })
                    .collect(),
            )
        })
    }
}

/// One rule: a name, an optional condition and an action.
#[derive(Clone, Debug)]
pub struct Rule {
    name: String,
    condition: Option<Condition>,
    action: Action,
    line: usize,
}

/// A rule's `if`, kept both as source tree (for printing) and compiled (for evaluation).
#[derive(Clone, Debug)]
struct Condition {
    expr: Expr,
    node: eval::Node,
    each: Each,
}

/// What a condition is evaluated against, one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Each {
    /// Trace-level fields only: evaluated once.
    Trace,
    /// `span.` fields: true when one span satisfies it all.
    Span,
    /// `log.` fields: true when one log record held with the trace satisfies it all.
    Log,
}

impl Each {
    fn of(expr: &Expr) -> Each {
        if expr.mentions_log() {
            Each::Log
        } else if expr.mentions_span() {
            Each::Span
        } else {
            Each::Trace
        }
    }
}

/// How many spans or log records a per-span / per-log condition looks at, and the `i`-th.
fn subjects<'t, T: TraceView>(
    trace: &'t T,
    each: Each,
) -> (usize, impl Fn(usize) -> Option<&'t T::Span>) {
    let n = match each {
        Each::Trace => 0,
        Each::Span => trace.span_count(),
        Each::Log => trace.log_count(),
    };
    (n, move |i| match each {
        Each::Log => trace.log(i),
        _ => Some(trace.span(i)),
    })
}

impl Rule {
    /// The rule's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The `if` expression; `None` for a catch-all.
    pub fn condition(&self) -> Option<&Expr> {
        self.condition.as_ref().map(|c| &c.expr)
    }
    /// What the rule does when it matches.
    pub fn action(&self) -> &Action {
        &self.action
    }
    /// The line of the rule's `[[rule]]` header in its file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Whether the rule matches the trace.
    fn matches<'t, T: TraceView>(&'t self, ctx: &eval::Ctx<'t, T>) -> bool {
        let Some(cond) = &self.condition else {
            return true;
        };
        if cond.each == Each::Trace {
            return eval::eval(&cond.node, ctx, None).unwrap_or(false);
        }
        // The trace-level parts may settle it without looking at any span or log record.
        let (n, nth) = subjects(ctx.trace, cond.each);
        if n == 0 {
            return false;
        }
        match eval::eval(&cond.node, ctx, None) {
            Some(settled) => settled,
            None => (0..n).any(|i| {
                nth(i).is_some_and(|s| eval::eval(&cond.node, ctx, Some(s)) == Some(true))
            }),
        }
    }

    /// Why the rule does not match the trace (call only when it does not).
    fn why_not<'t, T: TraceView>(&'t self, ctx: &eval::Ctx<'t, T>) -> Vec<String> {
        let mut out = Vec::new();
        let Some(cond) = &self.condition else {
            return out;
        };
        let (n, nth) = subjects(ctx.trace, cond.each);
        let (one, many) = match cond.each {
            Each::Log => ("log record", "log records"),
            _ => ("span", "spans"),
        };
        if cond.each != Each::Trace && n == 0 {
            out.push(format!("the trace has no {many}"));
        } else if cond.each != Each::Trace && eval::eval(&cond.node, ctx, None).is_none() {
            out.push(format!(
                "no single {one} makes `{}` true ({n} {} checked)",
                cond.expr,
                if n == 1 { one } else { many }
            ));
            if n == 1 {
                eval::why_false(&cond.expr, &cond.node, ctx, nth(0), &mut out);
            }
        } else {
            eval::why_false(&cond.expr, &cond.node, ctx, None, &mut out);
        }
        out
    }
}

/// A rule as listed by [`RuleSet::rules`].
#[derive(Clone, Copy, Debug)]
pub struct RuleInfo<'a> {
    /// `Some(tenant)` for a rule in a `[tenant."<id>"]` section.
    pub tenant: Option<&'a str>,
    /// The rule.
    pub rule: &'a Rule,
    /// Traces this rule decided since the rule set was loaded (see [`RuleSet::record_hit`]).
    pub hits: u64,
}

/// A rule tried before the winner, and why it did not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miss {
    /// The rule's name.
    pub rule: String,
    /// The tenant section it is in, if any.
    pub tenant: Option<String>,
    /// The conditions that were false, with the values seen.
    pub reasons: Vec<String>,
}

/// The decision for a trace with the reasoning behind it (for `tailsift rules test`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The matching rule; `None` when no rule matched.
    pub rule: Option<String>,
    /// The action taken.
    pub action: Action,
    /// Every rule tried before the winner, in order.
    pub misses: Vec<Miss>,
}

/// A human-readable account, one rule per line.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.misses {
            match &m.tenant {
                Some(t) => write!(f, "skipped \"{}\" (tenant \"{t}\"): ", m.rule)?,
                None => write!(f, "skipped \"{}\": ", m.rule)?,
            }
            f.write_str(&m.reasons.join("; "))?;
            f.write_str("\n")?;
        }
        match &self.rule {
            Some(r) => write!(f, "matched \"{r}\": {}", self.action),
            None => write!(f, "no rule matched: {}", self.action),
        }
    }
}

/// A compiled, validated rule set; cheap to share behind an Arc and swap atomically.
#[derive(Clone, Debug)]
pub struct RuleSet {
    global: Vec<Rule>,
    tenants: BTreeMap<String, TenantRules>,
    samplers: BTreeMap<String, toml::Table>,
    specs: BTreeMap<String, SamplerSpec>,
    warnings: Vec<Diagnostic>,
    source_hash: u64,
    hits: Hits,
}

/// One tenant's rules and where they start in [`RuleSet::rules`] order.
#[derive(Clone, Debug)]
struct TenantRules {
    base: usize,
    rules: Vec<Rule>,
}

/// Per-rule hit counters owned by one rule-set snapshot: one relaxed atomic add per decision,
/// no lock. Slot `len` counts traces no rule matched. A clone starts from the same counts but
/// counts on its own.
#[derive(Debug)]
struct Hits(Box<[AtomicU64]>);

impl Hits {
    fn new(rules: usize) -> Hits {
        Hits((0..=rules).map(|_| AtomicU64::new(0)).collect())
    }
    fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Relaxed))
    }
}

impl Clone for Hits {
    fn clone(&self) -> Hits {
        Hits(
            self.0
                .iter()
                .map(|c| AtomicU64::new(c.load(Relaxed)))
                .collect(),
        )
    }
}

/// The shipped default rules, also the built-in rule set.
const DEFAULT_RULES: &str = include_str!("../../rules/default.toml");

impl RuleSet {
    /// Parse and validate a rules file's text; `origin` names the file in diagnostics.
    pub fn parse(src: &str, origin: &str) -> Result<RuleSet, RulesError> {
        let parsed = file::parse(src, origin)?;
        Ok(Self::assemble(
            parsed.global,
            parsed.tenants,
            parsed.samplers,
            parsed.specs,
            parsed.warnings,
            fnv1a(src.as_bytes()),
        ))
    }

    /// Numbers the rules in [`rules`](Self::rules) order and sizes the hit counters.
    fn assemble(
        global: Vec<Rule>,
        tenants: BTreeMap<String, Vec<Rule>>,
        samplers: BTreeMap<String, toml::Table>,
        specs: BTreeMap<String, SamplerSpec>,
        warnings: Vec<Diagnostic>,
        source_hash: u64,
    ) -> RuleSet {
        let mut next = global.len();
        let tenants: BTreeMap<String, TenantRules> = tenants
            .into_iter()
            .map(|(t, rules)| {
                let base = next;
                next += rules.len();
                (t, TenantRules { base, rules })
            })
            .collect();
        RuleSet {
            global,
            tenants,
            samplers,
            specs,
            warnings,
            source_hash,
            hits: Hits::new(next),
        }
    }

    /// Read and parse a file (I/O errors are `RulesError::Io`).
    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        let src = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let set = Self::parse(&src, &path.display().to_string())?;
        tracing::debug!(
            path = %path.display(),
            rules = set.hits.0.len() - 1,
            warnings = set.warnings.len(),
            "rules loaded"
        );
        Ok(set)
    }

    /// The built-in rule set, equal to `rules/default.toml`.
    pub fn builtin() -> RuleSet {
        match Self::parse(DEFAULT_RULES, "rules/default.toml") {
            Ok(set) => set,
            // A unit test parses the shipped file, so this cannot happen in a released build;
            // if it somehow did, keeping everything is the safe fallback.
            Err(e) => {
                tracing::error!(error = %e, "built-in rules are invalid; keeping every trace");
                Self::assemble(
                    Vec::new(),
                    BTreeMap::new(),
                    BTreeMap::new(),
                    BTreeMap::new(),
                    Vec::new(),
                    fnv1a(DEFAULT_RULES.as_bytes()),
                )
            }
        }
    }

    /// The rules tried for a tenant, in order: its own, then the global ones; each with its
    /// position in [`rules`](Self::rules) order.
    fn candidates<'s>(
        &'s self,
        tenant: &str,
    ) -> impl Iterator<Item = (usize, Option<&'s str>, &'s Rule)> {
        let own = self.tenants.get_key_value(tenant);
        own.into_iter()
            .flat_map(|(t, own)| {
                own.rules
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (own.base + i, Some(t.as_str()), r))
            })
            .chain(self.global.iter().enumerate().map(|(i, r)| (i, None, r)))
    }

    /// First matching rule wins: tenant-specific rules of the trace's tenant first, then
    /// global ones; no match keeps the trace (`Sample { rate: 1 }`, rule `None`).
    pub fn evaluate<T: TraceView>(&self, trace: &T) -> Verdict<'_> {
        let ctx = eval::Ctx::new(trace);
        for (index, _, rule) in self.candidates(trace.tenant()) {
            if rule.matches(&ctx) {
                return Verdict {
                    rule: Some(&rule.name),
                    action: &rule.action,
                    index: Some(index),
                };
            }
        }
        Verdict {
            rule: None,
            action: &KEEP_ALL,
            index: None,
        }
    }

    /// Counts a verdict of this rule set against its rule (or against "no rule matched");
    /// the decider calls it once per decided trace.
    pub fn record_hit(&self, verdict: &Verdict<'_>) {
        let slot = verdict.index.unwrap_or(self.hits.0.len() - 1);
        if let Some(c) = self.hits.0.get(slot) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Traces no rule matched since the rule set was loaded.
    pub fn unmatched_hits(&self) -> u64 {
        self.hits.get(self.hits.0.len() - 1)
    }

    /// Same decision as [`evaluate`](Self::evaluate), plus why each earlier rule did not match.
    pub fn explain<T: TraceView>(&self, trace: &T) -> Explanation {
        let ctx = eval::Ctx::new(trace);
        let mut misses = Vec::new();
        for (_, tenant, rule) in self.candidates(trace.tenant()) {
            if rule.matches(&ctx) {
                return Explanation {
                    rule: Some(rule.name.clone()),
                    action: rule.action.clone(),
                    misses,
                };
            }
            misses.push(Miss {
                rule: rule.name.clone(),
                tenant: tenant.map(str::to_string),
                reasons: rule.why_not(&ctx),
            });
        }
        Explanation {
            rule: None,
            action: KEEP_ALL.clone(),
            misses,
        }
    }

    /// Every rule, for the admin API: global rules in order, then each tenant's (by tenant id).
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> + '_ {
        self.global
            .iter()
            .enumerate()
            .map(|(i, rule)| RuleInfo {
                tenant: None,
                rule,
                hits: self.hits.get(i),
            })
            .chain(self.tenants.iter().flat_map(move |(t, own)| {
                own.rules.iter().enumerate().map(move |(i, rule)| RuleInfo {
                    tenant: Some(t.as_str()),
                    rule,
                    hits: self.hits.get(own.base + i),
                })
            }))
    }

    /// The raw `[sampler.<name>]` tables (each has a string `type`).
    pub fn samplers(&self) -> &BTreeMap<String, toml::Table> {
        &self.samplers
    }

    /// The validated sampler declarations, by name.
    pub fn sampler_specs(&self) -> &BTreeMap<String, SamplerSpec> {
        &self.specs
    }

    /// Non-fatal findings, such as rules that can never match.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// FNV-1a hash of the source text, to tell whether a reload changed anything.
    pub fn source_hash(&self) -> u64 {
        self.source_hash
    }
}

/// 64-bit FNV-1a: tiny, stable across versions and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
