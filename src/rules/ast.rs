//! The syntax tree of an `if` expression and its canonical printer.
//!
//! The tree carries no source positions, so two expressions that mean the same thing compare
//! equal however they were spelled; `parse(print(e)) == e` holds for every valid tree.

use std::fmt;

use super::{SpanKind, SpanStatus};

/// A parsed, type-checked `if` expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `a or b`: true when either side is.
    Or(Box<Expr>, Box<Expr>),
    /// `a and b`: true when both sides are.
    And(Box<Expr>, Box<Expr>),
    /// `not a`: true when `a` is false.
    Not(Box<Expr>),
    /// `field <op> literal`, e.g. `trace.duration > 2s`.
    Compare {
        /// The value compared.
        field: Field,
        /// The comparison.
        op: CmpOp,
        /// What it is compared with.
        value: Literal,
    },
    /// `field in [..]` or `field not in [..]`.
    In {
        /// The value looked up.
        field: Field,
        /// True for `not in`.
        negated: bool,
        /// The candidates.
        values: Vec<Literal>,
    },
    /// `field contains|starts_with|ends_with "text"`.
    Text {
        /// The string examined.
        field: Field,
        /// Which substring test.
        op: TextOp,
        /// The substring.
        value: String,
    },
    /// `field matches "regex"`, compiled at load.
    Matches {
        /// The string examined.
        field: Field,
        /// The compiled pattern.
        pattern: Pattern,
    },
    /// `field exists` or `field missing` (attributes only).
    Exists {
        /// The attribute tested.
        field: Field,
        /// True for `missing`.
        negated: bool,
    },
}

/// Something an expression can read from a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// `tenant`: the trace's tenant id.
    Tenant,
    /// `trace.duration`: latest end minus earliest start.
    TraceDuration,
    /// `trace.span_count`: spans buffered for the trace.
    TraceSpanCount,
    /// `trace.error_count`: spans with status ERROR.
    TraceErrorCount,
    /// `trace.service_count`: distinct `service.name` values.
    TraceServiceCount,
    /// `trace.has_root`: whether the root span arrived.
    TraceHasRoot,
    /// `trace.log_count`: log records held with the trace.
    TraceLogCount,
    /// `trace.error_log_count`: log records with severity_number ≥ 17 (ERROR and above).
    TraceErrorLogCount,
    /// `root.…` or `span.…`: a property of the root span or of each span.
    Span(Scope, SpanField),
    /// `log.…`: a property of each log record held with the trace.
    Log(LogField),
}

/// A property of one log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogField {
    /// `severity`: the OTLP severity_number (1–24), or a level name standing for its range.
    Severity,
    /// `body`: the record's body when it is a string.
    Body,
    /// Any other key: an attribute of the record, else of its resource.
    Attribute(String),
}

/// Which span a span field reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `root.`: the trace's root span (conditions on it are false when it is absent).
    Root,
    /// `span.`: each span in turn; the rule matches when one span satisfies it all.
    Span,
}

/// A property of one span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanField {
    /// `name`: the span name.
    Name,
    /// `status`: the status code.
    Status,
    /// `kind`: the span kind.
    Kind,
    /// `duration`: end minus start.
    Duration,
    /// Any other key: an attribute of the span, else of its resource.
    Attribute(String),
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// Substring tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextOp {
    /// `contains`
    Contains,
    /// `starts_with`
    StartsWith,
    /// `ends_with`
    EndsWith,
}

/// A constant written in an expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `"text"` or `'text'`.
    Str(String),
    /// `42`, `-1`.
    Int(i64),
    /// `0.5`, `1e9`.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `250ms`, `2s`, …, held in nanoseconds.
    Duration(u64),
}

/// A regular expression that compares by its source text (so trees can be compared).
#[derive(Clone, Debug)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// The static type of a field, used to check literals at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldType {
    Str,
    Duration,
    Count,
    Bool,
    Status,
    Kind,
    /// A log severity: a number, or a level name (`"error"`) standing for its range.
    Severity,
    /// Attributes: the type is known only at run time.
    Dynamic,
}

impl Field {
    /// The static type of the field.
    pub(crate) fn ty(&self) -> FieldType {
        match self {
            Field::Tenant => FieldType::Str,
            Field::TraceDuration => FieldType::Duration,
            Field::TraceSpanCount
            | Field::TraceErrorCount
            | Field::TraceServiceCount
            | Field::TraceLogCount
            | Field::TraceErrorLogCount => FieldType::Count,
            Field::TraceHasRoot => FieldType::Bool,
            Field::Span(_, f) => match f {
                SpanField::Name => FieldType::Str,
                SpanField::Status => FieldType::Status,
                SpanField::Kind => FieldType::Kind,
                SpanField::Duration => FieldType::Duration,
                SpanField::Attribute(_) => FieldType::Dynamic,
            },
            Field::Log(f) => match f {
                LogField::Severity => FieldType::Severity,
                LogField::Body => FieldType::Str,
                LogField::Attribute(_) => FieldType::Dynamic,
            },
        }
    }
}

impl Expr {
    /// Whether the expression reads `span.` fields (and so is evaluated span by span).
    pub fn mentions_span(&self) -> bool {
        self.any_field(&|f| matches!(f, Field::Span(Scope::Span, _)))
    }

    /// Whether the expression reads `log.` fields (and so is evaluated log record by record).
    pub fn mentions_log(&self) -> bool {
        self.any_field(&|f| matches!(f, Field::Log(_)))
    }

    /// Whether some field the expression reads satisfies `pred`.
    fn any_field(&self, pred: &dyn Fn(&Field) -> bool) -> bool {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => a.any_field(pred) || b.any_field(pred),
            Expr::Not(a) => a.any_field(pred),
            Expr::Compare { field, .. }
            | Expr::In { field, .. }
            | Expr::Text { field, .. }
            | Expr::Matches { field, .. }
            | Expr::Exists { field, .. } => pred(field),
        }
    }

    /// Binding strength for the printer: or < and < not < predicate.
    fn precedence(&self) -> u8 {
        match self {
            Expr::Or(..) => 1,
            Expr::And(..) => 2,
            Expr::Not(..) => 3,
            _ => 4,
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        let parens = self.precedence() < min;
        if parens {
            f.write_str("(")?;
        }
        match self {
            // Both operators are left-associative, so a right operand of the same
            // precedence needs parentheses to read back as the same tree.
            Expr::Or(a, b) => {
                a.write(f, 1)?;
                f.write_str(" or ")?;
                b.write(f, 2)?;
            }
            Expr::And(a, b) => {
                a.write(f, 2)?;
                f.write_str(" and ")?;
                b.write(f, 3)?;
            }
            Expr::Not(a) => {
                f.write_str("not ")?;
                a.write(f, 3)?;
            }
            Expr::Compare { field, op, value } => write!(f, "{field} {op} {value}")?,
            Expr::In {
                field,
                negated,
                values,
            } => {
                write!(f, "{field} {}[", if *negated { "not in " } else { "in " })?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")?;
            }
            Expr::Text { field, op, value } => {
                write!(f, "{field} {op} ")?;
                write_str_literal(f, value)?;
            }
            Expr::Matches { field, pattern } => {
                write!(f, "{field} matches ")?;
                write_str_literal(f, pattern.0.as_str())?;
            }
            Expr::Exists { field, negated } => {
                write!(f, "{field} {}", if *negated { "missing" } else { "exists" })?
            }
        }
        if parens {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Prints canonical source that parses back to the same tree.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 0)
    }
}

/// Prints the field as written in an expression.
impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scope, field) = match self {
            Field::Tenant => return f.write_str("tenant"),
            Field::TraceDuration => return f.write_str("trace.duration"),
            Field::TraceSpanCount => return f.write_str("trace.span_count"),
            Field::TraceErrorCount => return f.write_str("trace.error_count"),
            Field::TraceServiceCount => return f.write_str("trace.service_count"),
            Field::TraceHasRoot => return f.write_str("trace.has_root"),
            Field::TraceLogCount => return f.write_str("trace.log_count"),
            Field::TraceErrorLogCount => return f.write_str("trace.error_log_count"),
            Field::Log(LogField::Severity) => return f.write_str("log.severity"),
            Field::Log(LogField::Body) => return f.write_str("log.body"),
            Field::Log(LogField::Attribute(key)) => {
                f.write_str("log.")?;
                return if is_bare_log_key(key) {
                    f.write_str(key)
                } else {
                    write_str_literal(f, key)
                };
            }
            Field::Span(scope, field) => (scope, field),
        };
        f.write_str(match scope {
            Scope::Root => "root.",
            Scope::Span => "span.",
        })?;
        match field {
            SpanField::Name => f.write_str("name"),
            SpanField::Status => f.write_str("status"),
            SpanField::Kind => f.write_str("kind"),
            SpanField::Duration => f.write_str("duration"),
            SpanField::Attribute(key) if is_bare_key(key) => f.write_str(key),
            SpanField::Attribute(key) => write_str_literal(f, key),
        }
    }
}

/// Whether an attribute key can be written without quotes after `span.` / `root.`.
fn is_bare_key(key: &str) -> bool {
    !matches!(key, "name" | "status" | "kind" | "duration") && is_dotted_words(key)
}

/// Whether an attribute key can be written without quotes after `log.`.
fn is_bare_log_key(key: &str) -> bool {
    !matches!(key, "severity" | "body") && is_dotted_words(key)
}

/// `a.b_c.d-e`: segments of letters, digits, `_` and `-`.
fn is_dotted_words(key: &str) -> bool {
    key.split('.').all(|seg| {
        !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        })
    }
}

impl fmt::Display for TextOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextOp::Contains => "contains",
            TextOp::StartsWith => "starts_with",
            TextOp::EndsWith => "ends_with",
        })
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write_str_literal(f, s),
            Literal::Int(i) => write!(f, "{i}"),
            // Debug keeps a `.0` or an exponent, so the text reads back as a float.
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Duration(n) => write_duration(f, *n),
        }
    }
}

/// Writes nanoseconds with the largest unit that divides them exactly.
pub(crate) fn write_duration(f: &mut impl fmt::Write, nanos: u64) -> fmt::Result {
    const UNITS: [(u64, &str); 5] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    if nanos == 0 {
        return f.write_str("0s");
    }
    for (size, unit) in UNITS {
        if (nanos / size) * size == nanos {
            return write!(f, "{}{unit}", nanos / size);
        }
    }
    write!(f, "{nanos}ns")
}

/// Writes a double-quoted string literal with the escapes the lexer understands.
pub(crate) fn write_str_literal(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// Names accepted for span status literals.
pub(crate) fn status_from_name(s: &str) -> Option<SpanStatus> {
    match s.to_ascii_lowercase().as_str() {
        "unset" => Some(SpanStatus::Unset),
        "ok" => Some(SpanStatus::Ok),
        "error" => Some(SpanStatus::Error),
        _ => None,
    }
}

/// Names accepted for span kind literals.
pub(crate) fn kind_from_name(s: &str) -> Option<SpanKind> {
    match s.to_ascii_lowercase().as_str() {
        "unspecified" => Some(SpanKind::Unspecified),
        "internal" => Some(SpanKind::Internal),
        "server" => Some(SpanKind::Server),
        "client" => Some(SpanKind::Client),
        "producer" => Some(SpanKind::Producer),
        "consumer" => Some(SpanKind::Consumer),
        _ => None,
    }
}

/// The lowest severity_number of each OTLP level; a name stands for its range of four
/// (`"error"` is 17–20).
pub(crate) const SEVERITY_LEVELS: [(&str, u8); 6] = [
    ("trace", 1),
    ("debug", 5),
    ("info", 9),
    ("warn", 13),
    ("error", 17),
    ("fatal", 21),
];

/// The lowest severity_number of a level name (`"error"` → 17), any case.
pub(crate) fn severity_from_name(s: &str) -> Option<u8> {
    let lower = s.to_ascii_lowercase();
    let name = if lower == "warning" { "warn" } else { &lower };
    SEVERITY_LEVELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, lo)| *lo)
}
