//! Compiled expressions and their evaluation against a trace.
//!
//! The compiled tree mirrors the [`Expr`] tree node for node (so `explain` can walk both
//! together), but its leaves hold resolved field enums, status/kind values and compiled
//! regexes: evaluation allocates nothing and formats nothing.

use std::cell::Cell;
use std::cmp::Ordering;

use super::ast::{
    kind_from_name, severity_from_name, status_from_name, CmpOp, Expr, Field, FieldType, Literal,
    LogField, Scope, SpanField, TextOp,
};
use super::{SpanKind, SpanStatus, SpanView, TraceView, Value};

/// A compiled expression node.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Or(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Test(Operand, Pred),
}

/// Where a test reads its value.
#[derive(Clone, Debug)]
pub(crate) enum Operand {
    Tenant,
    TraceDuration,
    SpanCount,
    ErrorCount,
    ServiceCount,
    HasRoot,
    LogCount,
    ErrorLogCount,
    Name(Scope),
    Status(Scope),
    Kind(Scope),
    Duration(Scope),
    Attr(Scope, Box<str>),
    /// `log.severity` of the log record being evaluated.
    Severity,
    /// `log.body` of the log record being evaluated.
    Body,
    /// `log.<key>` of the log record being evaluated.
    LogAttr(Box<str>),
}

/// What a test checks about the value.
#[derive(Clone, Debug)]
pub(crate) enum Pred {
    Cmp(CmpOp, Lit),
    In { values: Box<[Lit]>, negated: bool },
    Text(TextOp, Box<str>),
    Regex(regex::Regex),
    Exists { negated: bool },
}

/// A literal resolved for its field.
#[derive(Clone, Debug)]
pub(crate) enum Lit {
    Str(Box<str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Dur(u64),
    Status(SpanStatus),
    Kind(SpanKind),
    /// A severity level name: the lowest number of its range of four.
    Severity(u8),
}

/// A value read from a trace.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Dur(u64),
    Status(SpanStatus),
    Kind(SpanKind),
}

/// The result of reading an operand.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fetch<'a> {
    Present(Val<'a>),
    /// The attribute is not set.
    Absent,
    /// A `root.` operand on a trace without root: every test is false.
    NoRoot,
    /// A `span.` operand and no span given (trace-level pre-evaluation).
    NeedSpan,
}

/// Compiles a checked expression. The parser has already rejected ill-typed literals.
pub(crate) fn compile(e: &Expr) -> Node {
    match e {
        Expr::Or(a, b) => Node::Or(Box::new(compile(a)), Box::new(compile(b))),
        Expr::And(a, b) => Node::And(Box::new(compile(a)), Box::new(compile(b))),
        Expr::Not(a) => Node::Not(Box::new(compile(a))),
        Expr::Compare { field, op, value } => {
            Node::Test(operand(field), Pred::Cmp(*op, lit(field.ty(), value)))
        }
        Expr::In {
            field,
            negated,
            values,
        } => Node::Test(
            operand(field),
            Pred::In {
                values: values.iter().map(|v| lit(field.ty(), v)).collect(),
                negated: *negated,
            },
        ),
        Expr::Text { field, op, value } => {
            Node::Test(operand(field), Pred::Text(*op, value.as_str().into()))
        }
        Expr::Matches { field, pattern } => {
            Node::Test(operand(field), Pred::Regex(pattern.0.clone()))
        }
        Expr::Exists { field, negated } => {
            Node::Test(operand(field), Pred::Exists { negated: *negated })
        }
    }
}

pub(crate) fn operand(f: &Field) -> Operand {
    match f {
        Field::Tenant => Operand::Tenant,
        Field::TraceDuration => Operand::TraceDuration,
        Field::TraceSpanCount => Operand::SpanCount,
        Field::TraceErrorCount => Operand::ErrorCount,
        Field::TraceServiceCount => Operand::ServiceCount,
        Field::TraceHasRoot => Operand::HasRoot,
        Field::TraceLogCount => Operand::LogCount,
        Field::TraceErrorLogCount => Operand::ErrorLogCount,
        Field::Log(LogField::Severity) => Operand::Severity,
        Field::Log(LogField::Body) => Operand::Body,
        Field::Log(LogField::Attribute(k)) => Operand::LogAttr(k.as_str().into()),
        Field::Span(scope, sf) => match sf {
            SpanField::Name => Operand::Name(*scope),
            SpanField::Status => Operand::Status(*scope),
            SpanField::Kind => Operand::Kind(*scope),
            SpanField::Duration => Operand::Duration(*scope),
            SpanField::Attribute(k) => Operand::Attr(*scope, k.as_str().into()),
        },
    }
}

fn lit(ty: FieldType, l: &Literal) -> Lit {
    match l {
        Literal::Str(s) => match ty {
            FieldType::Status => {
                status_from_name(s).map_or(Lit::Str(s.as_str().into()), Lit::Status)
            }
            FieldType::Kind => kind_from_name(s).map_or(Lit::Str(s.as_str().into()), Lit::Kind),
            FieldType::Severity => {
                severity_from_name(s).map_or(Lit::Str(s.as_str().into()), Lit::Severity)
            }
            _ => Lit::Str(s.as_str().into()),
        },
        Literal::Int(i) => Lit::Int(*i),
        Literal::Float(x) => Lit::Float(*x),
        Literal::Bool(b) => Lit::Bool(*b),
        Literal::Duration(n) => Lit::Dur(*n),
    }
}

/// OTLP severity_number of ERROR, the lowest counted by `trace.error_log_count`.
const ERROR_SEVERITY: u8 = 17;

/// Per-trace context shared by all rules of one decision: trace-wide aggregates are
/// computed at most once, on first use.
pub(crate) struct Ctx<'t, T: TraceView> {
    pub trace: &'t T,
    root: Option<&'t T::Span>,
    duration: Cell<Option<u64>>,
    errors: Cell<Option<u64>>,
    services: Cell<Option<u64>>,
    error_logs: Cell<Option<u64>>,
}

impl<'t, T: TraceView> Ctx<'t, T> {
    pub(crate) fn new(trace: &'t T) -> Self {
        Ctx {
            trace,
            root: trace.root(),
            duration: Cell::new(None),
            errors: Cell::new(None),
            services: Cell::new(None),
            error_logs: Cell::new(None),
        }
    }

    fn cached(cell: &Cell<Option<u64>>, f: impl FnOnce() -> u64) -> u64 {
        if let Some(v) = cell.get() {
            return v;
        }
        let v = f();
        cell.set(Some(v));
        v
    }

    fn error_count(&self) -> u64 {
        Self::cached(&self.errors, || {
            let t = self.trace;
            (0..t.span_count())
                .filter(|&i| t.span(i).status() == SpanStatus::Error)
                .count() as u64
        })
    }

    fn error_log_count(&self) -> u64 {
        Self::cached(&self.error_logs, || {
            let t = self.trace;
            (0..t.log_count())
                .filter_map(|i| t.log(i))
                .filter(|l| l.severity_number() >= ERROR_SEVERITY)
                .count() as u64
        })
    }

    fn service_count(&self) -> u64 {
        Self::cached(&self.services, || {
            // Few services per trace: a linear scan over a small stack buffer, spilling to a
            // Vec only for unusually wide traces.
            const INLINE: usize = 32;
            let t = self.trace;
            let mut inline: [&str; INLINE] = [""; INLINE];
            let mut n = 0;
            let mut spill: Vec<&str> = Vec::new();
            for i in 0..t.span_count() {
                let Some(Value::Str(name)) = t.span(i).attribute("service.name") else {
                    continue;
                };
                if inline[..n].contains(&name) || spill.contains(&name) {
                    continue;
                }
                if n < INLINE {
                    inline[n] = name;
                    n += 1;
                } else {
                    spill.push(name);
                }
            }
            (n + spill.len()) as u64
        })
    }

    fn duration(&self) -> u64 {
        Self::cached(&self.duration, || self.trace.duration_nanos())
    }

    /// Reads an operand, for the given span when it is `span.`-scoped.
    pub(crate) fn fetch(&self, op: &'t Operand, span: Option<&'t T::Span>) -> Fetch<'t> {
        let subject = |scope: Scope| match scope {
            Scope::Root => self.root.ok_or(Fetch::NoRoot),
            Scope::Span => span.ok_or(Fetch::NeedSpan),
        };
        let present = |v| Fetch::Present(v);
        match op {
            Operand::Tenant => present(Val::Str(self.trace.tenant())),
            Operand::TraceDuration => present(Val::Dur(self.duration())),
            Operand::SpanCount => present(Val::Int(self.trace.span_count() as i64)),
            Operand::ErrorCount => present(Val::Int(self.error_count() as i64)),
            Operand::ServiceCount => present(Val::Int(self.service_count() as i64)),
            Operand::HasRoot => present(Val::Bool(self.root.is_some())),
            Operand::LogCount => present(Val::Int(self.trace.log_count() as i64)),
            Operand::ErrorLogCount => present(Val::Int(self.error_log_count() as i64)),
            // `log.` operands read the record being evaluated, passed where a span would be.
            Operand::Severity => span.map_or(Fetch::NeedSpan, |l| {
                present(Val::Int(i64::from(l.severity_number())))
            }),
            Operand::Body => span.map_or(Fetch::NeedSpan, |l| match l.body() {
                Some(b) => present(Val::Str(b)),
                None => Fetch::Absent,
            }),
            Operand::LogAttr(key) => span.map_or(Fetch::NeedSpan, |l| attr(l.attribute(key))),
            Operand::Name(s) => subject(*s).map_or_else(|f| f, |sp| present(Val::Str(sp.name()))),
            Operand::Status(s) => {
                subject(*s).map_or_else(|f| f, |sp| present(Val::Status(sp.status())))
            }
            Operand::Kind(s) => subject(*s).map_or_else(|f| f, |sp| present(Val::Kind(sp.kind()))),
            Operand::Duration(s) => {
                subject(*s).map_or_else(|f| f, |sp| present(Val::Dur(sp.duration_nanos())))
            }
            Operand::Attr(s, key) => subject(*s).map_or_else(|f| f, |sp| attr(sp.attribute(key))),
        }
    }
}

/// An attribute as a fetched value.
fn attr(v: Option<Value<'_>>) -> Fetch<'_> {
    match v {
        Some(Value::Str(v)) => Fetch::Present(Val::Str(v)),
        Some(Value::Int(v)) => Fetch::Present(Val::Int(v)),
        Some(Value::Float(v)) => Fetch::Present(Val::Float(v)),
        Some(Value::Bool(v)) => Fetch::Present(Val::Bool(v)),
        None => Fetch::Absent,
    }
}

/// Evaluates with Kleene logic: `None` means "depends on the span" (only when `span` is None).
pub(crate) fn eval<'t, T: TraceView>(
    node: &'t Node,
    ctx: &Ctx<'t, T>,
    span: Option<&'t T::Span>,
) -> Option<bool> {
    match node {
        Node::And(a, b) => match eval(a, ctx, span) {
            Some(false) => Some(false),
            left => match (left, eval(b, ctx, span)) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
        },
        Node::Or(a, b) => match eval(a, ctx, span) {
            Some(true) => Some(true),
            left => match (left, eval(b, ctx, span)) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        },
        Node::Not(a) => eval(a, ctx, span).map(|v| !v),
        Node::Test(op, pred) => test(ctx.fetch(op, span), pred),
    }
}

/// Applies a predicate to a fetched value.
pub(crate) fn test(f: Fetch<'_>, pred: &Pred) -> Option<bool> {
    let v = match f {
        Fetch::NeedSpan => return None,
        Fetch::NoRoot => return Some(false),
        Fetch::Absent => return Some(matches!(pred, Pred::Exists { negated: true })),
        Fetch::Present(v) => v,
    };
    Some(match pred {
        Pred::Exists { negated } => !negated,
        Pred::Cmp(op, lit) => match op {
            CmpOp::Eq => equals(v, lit) == Some(true),
            CmpOp::Ne => equals(v, lit) == Some(false),
            CmpOp::Lt => order(v, lit) == Some(Ordering::Less),
            CmpOp::Le => matches!(order(v, lit), Some(Ordering::Less | Ordering::Equal)),
            CmpOp::Gt => order(v, lit) == Some(Ordering::Greater),
            CmpOp::Ge => matches!(order(v, lit), Some(Ordering::Greater | Ordering::Equal)),
        },
        Pred::In { values, negated } => {
            let mut comparable = false;
            for l in values.iter() {
                match equals(v, l) {
                    Some(true) => return Some(!negated),
                    Some(false) => comparable = true,
                    None => {}
                }
            }
            // `not in` holds only for a value of a comparable type that is in no entry.
            *negated && comparable
        }
        Pred::Text(op, s) => match v {
            Val::Str(v) => match op {
                TextOp::Contains => v.contains(&**s),
                TextOp::StartsWith => v.starts_with(&**s),
                TextOp::EndsWith => v.ends_with(&**s),
            },
            _ => false,
        },
        Pred::Regex(re) => matches!(v, Val::Str(v) if re.is_match(v)),
    })
}

/// Equality across types: `None` when the two cannot be compared (the test is then false).
fn equals(v: Val<'_>, l: &Lit) -> Option<bool> {
    match (v, l) {
        (Val::Status(a), Lit::Status(b)) => Some(a == *b),
        (Val::Kind(a), Lit::Kind(b)) => Some(a == *b),
        (Val::Bool(a), Lit::Bool(b)) => Some(a == *b),
        _ => order(v, l).map(|o| o == Ordering::Equal),
    }
}

/// Ordering across types: numbers compare with numbers, strings with strings, durations with
/// durations.
fn order(v: Val<'_>, l: &Lit) -> Option<Ordering> {
    match (v, l) {
        (Val::Str(a), Lit::Str(b)) => Some(a.cmp(b)),
        (Val::Int(a), Lit::Int(b)) => Some(a.cmp(b)),
        (Val::Int(a), Lit::Float(b)) => (a as f64).partial_cmp(b),
        (Val::Float(a), Lit::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Val::Float(a), Lit::Float(b)) => a.partial_cmp(b),
        (Val::Dur(a), Lit::Dur(b)) => Some(a.cmp(b)),
        // A level name is its whole range: `= "error"` holds for 17–20, `> "error"` from 21.
        (Val::Int(n), Lit::Severity(lo)) => {
            let lo = i64::from(*lo);
            Some(if n < lo {
                Ordering::Less
            } else if n > lo + 3 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        _ => None,
    }
}

/// Shows a fetched value in an explanation.
pub(crate) fn describe(f: Fetch<'_>) -> String {
    match f {
        Fetch::Present(v) => match v {
            Val::Str(s) => {
                let mut out = String::new();
                let _ = super::ast::write_str_literal(&mut out, s);
                out
            }
            Val::Int(i) => i.to_string(),
            Val::Float(x) => format!("{x:?}"),
            Val::Bool(b) => b.to_string(),
            Val::Dur(n) => {
                let mut out = String::new();
                let _ = super::ast::write_duration(&mut out, n);
                out
            }
            Val::Status(s) => format!("\"{}\"", status_name(s)),
            Val::Kind(k) => format!("\"{}\"", kind_name(k)),
        },
        Fetch::Absent => "not set".into(),
        Fetch::NoRoot => "unknown: the trace has no root span".into(),
        Fetch::NeedSpan => "per span".into(),
    }
}

fn status_name(s: SpanStatus) -> &'static str {
    match s {
        SpanStatus::Unset => "unset",
        SpanStatus::Ok => "ok",
        SpanStatus::Error => "error",
    }
}

fn kind_name(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

/// Why a (trace-level, or per-span with a span given) expression is false: the leaves that
/// made it so, each with the value it saw. Walks the AST and the compiled tree together.
pub(crate) fn why_false<'t, T: TraceView>(
    expr: &Expr,
    node: &'t Node,
    ctx: &Ctx<'t, T>,
    span: Option<&'t T::Span>,
    out: &mut Vec<String>,
) {
    match (expr, node) {
        (Expr::And(ea, eb), Node::And(na, nb)) => {
            if eval(na, ctx, span) == Some(false) {
                why_false(ea, na, ctx, span, out);
            } else {
                why_false(eb, nb, ctx, span, out);
            }
        }
        (Expr::Or(ea, eb), Node::Or(na, nb)) => {
            why_false(ea, na, ctx, span, out);
            why_false(eb, nb, ctx, span, out);
        }
        (Expr::Not(ea), Node::Not(_)) => out.push(format!("`{ea}` is true")),
        (_, Node::Test(op, _)) => out.push(format!(
            "`{expr}` is false ({} is {})",
            field_of(expr),
            describe(ctx.fetch(op, span))
        )),
        // Unreachable while compile() mirrors the tree; say something useful anyway.
        _ => out.push(format!("`{expr}` is false")),
    }
}

fn field_of(e: &Expr) -> String {
    match e {
        Expr::Compare { field, .. }
        | Expr::In { field, .. }
        | Expr::Text { field, .. }
        | Expr::Matches { field, .. }
        | Expr::Exists { field, .. } => field.to_string(),
        _ => String::new(),
    }
}
