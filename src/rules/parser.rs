//! Parses and type-checks an `if` expression into an [`Expr`].
//!
//! Grammar (lowest precedence first):
//! ```text
//! or    := and ("or" and)*
//! and   := not ("and" not)*
//! not   := "not" not | "(" or ")" | pred
//! pred  := field cmp literal | field ["not"] "in" "[" literals "]"
//!        | field ("contains"|"starts_with"|"ends_with"|"matches") string
//!        | field ("exists"|"missing") | bool-field
//! ```
//! A syntax error stops the parse; type errors are collected and the parse goes on, so one
//! expression can report several problems.

use super::ast::{
    kind_from_name, severity_from_name, status_from_name, CmpOp, Expr, Field, FieldType, Literal,
    LogField, Pattern, Scope, SpanField, TextOp,
};
use super::lexer::{lex, Tok, Token};

/// A problem in an expression, located by byte offsets into the expression text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset where the offending text starts.
    pub start: usize,
    /// Byte offset where it ends.
    pub end: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ExprError {
    pub(crate) fn new(start: usize, end: usize, message: String, hint: Option<String>) -> Self {
        ExprError {
            start,
            end,
            message,
            hint,
        }
    }
}

/// Deeper nesting than this is refused, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;
/// More `and`/`or`/`not` operators than this are refused, for the same reason.
const MAX_OPERATORS: usize = 512;

/// Parses and checks one expression; all errors found are returned.
pub fn parse_expr(src: &str) -> Result<Expr, Vec<ExprError>> {
    let tokens = lex(src).map_err(|e| vec![e])?;
    let mut p = Parser {
        tokens,
        pos: 0,
        errors: Vec::new(),
        depth: 0,
        operators: 0,
    };
    let result = p.or().and_then(|e| match &p.peek().tok {
        Tok::Eof => Ok(e),
        _ => Err(p.unexpected("`and`, `or` or the end of the expression")),
    });
    if let Ok(e) = &result {
        if e.mentions_span() && e.mentions_log() {
            p.errors.push(ExprError::new(
                0,
                src.len(),
                "one condition cannot read both span.* and log.* fields (which span goes with which log record?)".into(),
                Some("use trace.error_log_count or trace.log_count beside span.* fields, or write two rules".into()),
            ));
        }
    }
    match result {
        Ok(e) if p.errors.is_empty() => Ok(e),
        Ok(_) => Err(p.errors),
        Err(e) => {
            p.errors.push(e);
            Err(p.errors)
        }
    }
}

/// Parses a lone field name (`tenant`, `root.http.route`, `trace.span_count`), as sampler
/// keys name them; the error is the first problem found.
pub(crate) fn parse_field(src: &str) -> Result<Field, String> {
    let tokens = lex(src).map_err(|e| e.message)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        errors: Vec::new(),
        depth: 0,
        operators: 0,
    };
    let field = p.field().map_err(|e| e.message)?;
    match &p.peek().tok {
        Tok::Eof => Ok(field),
        _ => Err(p.unexpected("the end of the field name").message),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Type errors collected while parsing goes on.
    errors: Vec<ExprError>,
    depth: usize,
    operators: usize,
}

type PResult<T> = Result<T, ExprError>;

impl Parser {
    fn peek(&self) -> &Token {
        // `lex` always ends with Eof and `bump` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(x) if x == w)
    }

    fn unexpected(&self, expected: &str) -> ExprError {
        let t = self.peek();
        let found = match &t.tok {
            Tok::Eof => "the end of the expression".to_string(),
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Int(_) | Tok::Float(_) => "a number".to_string(),
            Tok::Duration(_) => "a duration".to_string(),
            other => format!("`{}`", tok_text(other)),
        };
        let hint = match &t.tok {
            Tok::Word(w) if matches!(w.as_str(), "AND" | "OR" | "NOT" | "&&" | "||") => {
                Some("keywords are lower case: and, or, not".to_string())
            }
            _ => None,
        };
        ExprError::new(
            t.start,
            t.end.max(t.start),
            format!("expected {expected}, found {found}"),
            hint,
        )
    }

    /// Counts one `and`/`or`/`not`, refusing absurdly long expressions.
    fn operator(&mut self) -> PResult<()> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            let t = self.peek();
            return Err(ExprError::new(
                t.start,
                t.end,
                format!("expression has more than {MAX_OPERATORS} and/or/not operators"),
                Some("split the condition into several rules".into()),
            ));
        }
        Ok(())
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let t = self.peek();
            return Err(ExprError::new(
                t.start,
                t.end,
                format!("expression nested more than {MAX_DEPTH} levels deep"),
                Some("split the condition into several rules".into()),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> PResult<Expr> {
        self.enter()?;
        let mut left = self.and()?;
        while self.is_word("or") {
            self.operator()?;
            self.bump();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut left = self.not()?;
        while self.is_word("and") {
            self.operator()?;
            self.bump();
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> PResult<Expr> {
        if self.is_word("not") {
            self.operator()?;
            self.bump();
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek().tok == Tok::LParen {
            self.bump();
            let inner = self.or()?;
            if self.peek().tok != Tok::RParen {
                return Err(self.unexpected("`)`"));
            }
            self.bump();
            return Ok(inner);
        }
        self.predicate()
    }

    fn predicate(&mut self) -> PResult<Expr> {
        let field = self.field()?;
        let op_tok = self.peek().clone();
        let op_span = (op_tok.start, op_tok.end);
        let cmp = match &op_tok.tok {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = cmp {
            self.bump();
            let (value, vs, ve) = self.literal()?;
            self.check_compare(&field, op, &value, op_span, (vs, ve));
            return Ok(Expr::Compare { field, op, value });
        }
        let word = match &op_tok.tok {
            Tok::Word(w) => w.clone(),
            _ => String::new(),
        };
        match word.as_str() {
            "in" | "not" => {
                self.bump();
                let negated = word == "not";
                if negated {
                    if !self.is_word("in") {
                        return Err(self.unexpected("`in` after `not`"));
                    }
                    self.bump();
                }
                let values = self.list(&field)?;
                Ok(Expr::In {
                    field,
                    negated,
                    values,
                })
            }
            "contains" | "starts_with" | "ends_with" | "matches" => {
                self.bump();
                let t = self.peek().clone();
                let Tok::Str(value) = t.tok else {
                    return Err(self.unexpected(&format!("a quoted string after `{word}`")));
                };
                self.bump();
                self.check_text(&field, &word, op_span);
                if word == "matches" {
                    return match regex::Regex::new(&value) {
                        Ok(re) => Ok(Expr::Matches {
                            field,
                            pattern: Pattern(re),
                        }),
                        Err(e) => {
                            self.errors.push(ExprError::new(
                                t.start,
                                t.end,
                                format!("invalid regular expression: {}", one_line(&e.to_string())),
                                Some("the syntax is Rust's `regex` crate; escape special characters with a backslash".into()),
                            ));
                            // Keep parsing: a placeholder that the caller never sees.
                            Ok(Expr::Exists {
                                field,
                                negated: false,
                            })
                        }
                    };
                }
                let op = match word.as_str() {
                    "contains" => TextOp::Contains,
                    "starts_with" => TextOp::StartsWith,
                    _ => TextOp::EndsWith,
                };
                Ok(Expr::Text { field, op, value })
            }
            "exists" | "missing" => {
                self.bump();
                if field.ty() != FieldType::Dynamic {
                    self.errors.push(ExprError::new(
                        op_span.0,
                        op_span.1,
                        format!("`{word}` applies to attributes, not to `{field}`"),
                        Some("use trace.has_root to test whether the root span arrived".into()),
                    ));
                }
                Ok(Expr::Exists {
                    field,
                    negated: word == "missing",
                })
            }
            _ if field.ty() == FieldType::Bool => Ok(Expr::Compare {
                field,
                op: CmpOp::Eq,
                value: Literal::Bool(true),
            }),
            _ => {
                let mut e = self.unexpected(
                    "an operator (= != < <= > >= in, not in, contains, starts_with, ends_with, matches, exists, missing)",
                );
                if e.hint.is_none() {
                    e.hint = Some(format!("e.g. `{field} = \"value\"`"));
                }
                Err(e)
            }
        }
    }

    /// Parses `tenant`, `trace.x`, `root.x`, `span.x`, `span."key"`.
    fn field(&mut self) -> PResult<Field> {
        let first = self.peek().clone();
        let Tok::Word(prefix) = &first.tok else {
            return Err(self.unexpected("a field such as `span.status` or `tenant`"));
        };
        let prefix_hint = "fields are tenant, trace.*, root.*, span.* and log.*";
        match prefix.as_str() {
            "tenant" => {
                self.bump();
                if self.peek().tok == Tok::Dot {
                    return Err(ExprError::new(
                        first.start,
                        self.peek().end,
                        "`tenant` has no sub-fields".into(),
                        Some("compare it directly: tenant = \"acme\"".into()),
                    ));
                }
                return Ok(Field::Tenant);
            }
            "trace" | "root" | "span" | "log" => {}
            _ => {
                let mut end = first.end;
                // Swallow the rest of the path so the message shows it whole.
                let mut j = self.pos + 1;
                while let Some(t) = self.tokens.get(j) {
                    if matches!(t.tok, Tok::Dot | Tok::Word(_)) && t.start == end {
                        end = t.end;
                        j += 1;
                    } else {
                        break;
                    }
                }
                let hint = if matches!(prefix.as_str(), "true" | "false") {
                    "a rule with no `if` matches every trace".to_string()
                } else {
                    prefix_hint.to_string()
                };
                return Err(ExprError::new(
                    first.start,
                    end,
                    format!("unknown field `{}`", self.text_between(first.start, end)),
                    Some(hint),
                ));
            }
        }
        let prefix = prefix.clone();
        self.bump();
        let dot = self.peek().clone();
        if dot.tok != Tok::Dot || dot.start != first.end {
            return Err(ExprError::new(
                first.start,
                first.end,
                format!(
                    "`{prefix}` needs a field name, e.g. `{prefix}.{}`",
                    match prefix.as_str() {
                        "trace" => "duration",
                        "log" => "severity",
                        _ => "name",
                    }
                ),
                Some(prefix_hint.into()),
            ));
        }
        self.bump();
        let seg = self.peek().clone();
        if seg.start != dot.end {
            return Err(ExprError::new(
                dot.start,
                seg.end,
                "no space allowed inside a field name".into(),
                None,
            ));
        }
        if prefix == "trace" {
            let Tok::Word(name) = &seg.tok else {
                return Err(self.unexpected("a trace field name"));
            };
            let field = match name.as_str() {
                "duration" => Field::TraceDuration,
                "span_count" => Field::TraceSpanCount,
                "error_count" => Field::TraceErrorCount,
                "service_count" => Field::TraceServiceCount,
                "has_root" => Field::TraceHasRoot,
                "log_count" => Field::TraceLogCount,
                "error_log_count" => Field::TraceErrorLogCount,
                _ => {
                    return Err(ExprError::new(
                        first.start,
                        seg.end,
                        format!("unknown field `trace.{name}`"),
                        Some("trace fields are duration, span_count, error_count, service_count, has_root, log_count, error_log_count".into()),
                    ))
                }
            };
            self.bump();
            if self.peek().tok == Tok::Dot && self.peek().start == seg.end {
                return Err(ExprError::new(
                    first.start,
                    self.peek().end,
                    format!("`trace.{name}` has no sub-fields"),
                    Some("attributes are read with root.<key> or span.<key>".into()),
                ));
            }
            return Ok(field);
        }
        let scope = if prefix == "root" {
            Scope::Root
        } else {
            Scope::Span
        };
        let (key, quoted) = self.attribute_path(&seg)?;
        if prefix == "log" {
            return Ok(Field::Log(match (quoted, key.as_str()) {
                (false, "severity") => LogField::Severity,
                (false, "body") => LogField::Body,
                _ => LogField::Attribute(key),
            }));
        }
        Ok(Field::Span(
            scope,
            match (quoted, key.as_str()) {
                (false, "name") => SpanField::Name,
                (false, "status") => SpanField::Status,
                (false, "kind") => SpanField::Kind,
                (false, "duration") => SpanField::Duration,
                _ => SpanField::Attribute(key),
            },
        ))
    }

    /// Reads what follows `root.` / `span.` / `log.`: a quoted key, or dotted words. Returns
    /// the key and whether it was quoted (a quoted key is always an attribute).
    fn attribute_path(&mut self, seg: &Token) -> PResult<(String, bool)> {
        match &seg.tok {
            Tok::Str(key) => {
                if key.is_empty() {
                    return Err(ExprError::new(
                        seg.start,
                        seg.end,
                        "empty attribute name".into(),
                        None,
                    ));
                }
                self.bump();
                Ok((key.clone(), true))
            }
            Tok::Word(w) => {
                let mut key = w.clone();
                let mut end = seg.end;
                self.bump();
                loop {
                    let d = self.peek().clone();
                    if d.tok != Tok::Dot || d.start != end {
                        break;
                    }
                    self.bump();
                    let s = self.peek().clone();
                    match &s.tok {
                        Tok::Word(w) if s.start == d.end => {
                            key.push('.');
                            key.push_str(w);
                            end = s.end;
                            self.bump();
                        }
                        _ => return Err(self.unexpected("an attribute name segment after `.`")),
                    }
                }
                Ok((key, false))
            }
            _ => Err(self.unexpected("a field name or a quoted attribute key")),
        }
    }

    fn text_between(&self, start: usize, end: usize) -> String {
        let mut s = String::new();
        for t in &self.tokens {
            if t.start >= start && t.end <= end {
                s.push_str(&tok_text(&t.tok));
            }
        }
        s
    }

    fn literal(&mut self) -> PResult<(Literal, usize, usize)> {
        let t = self.peek().clone();
        let lit = match &t.tok {
            Tok::Str(s) => Literal::Str(s.clone()),
            Tok::Int(i) => Literal::Int(*i),
            Tok::Float(x) => Literal::Float(*x),
            Tok::Duration(n) => Literal::Duration(*n),
            Tok::Word(w) if w == "true" => Literal::Bool(true),
            Tok::Word(w) if w == "false" => Literal::Bool(false),
            Tok::Word(w) => {
                return Err(ExprError::new(
                    t.start,
                    t.end,
                    format!("expected a value, found `{w}`"),
                    Some(format!("quote strings: \"{w}\"")),
                ))
            }
            _ => return Err(self.unexpected("a value (string, number, duration or boolean)")),
        };
        self.bump();
        Ok((lit, t.start, t.end))
    }

    fn list(&mut self, field: &Field) -> PResult<Vec<Literal>> {
        if self.peek().tok != Tok::LBracket {
            return Err(self.unexpected("`[` to start a list"));
        }
        let open = self.bump();
        let mut values = Vec::new();
        loop {
            if self.peek().tok == Tok::RBracket {
                self.bump();
                return Ok(values);
            }
            let (v, s, e) = self.literal()?;
            self.check_compare(field, CmpOp::Eq, &v, (open.start, open.end), (s, e));
            values.push(v);
            match self.peek().tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBracket => {}
                _ => return Err(self.unexpected("`,` or `]`")),
            }
        }
    }

    fn type_error(&mut self, at: (usize, usize), message: String, hint: &str) {
        self.errors
            .push(ExprError::new(at.0, at.1, message, Some(hint.to_string())));
    }

    /// Checks that `field op value` makes sense for the field's static type.
    fn check_compare(
        &mut self,
        field: &Field,
        op: CmpOp,
        value: &Literal,
        op_at: (usize, usize),
        at: (usize, usize),
    ) {
        let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
        match (field.ty(), value) {
            (FieldType::Str, Literal::Str(_)) => {}
            (FieldType::Str, _) => self.type_error(
                at,
                format!("`{field}` is a string; compare it with a quoted string"),
                "e.g. \"checkout\"",
            ),
            (FieldType::Duration, Literal::Duration(_)) => {}
            (FieldType::Duration, _) => self.type_error(
                at,
                format!("`{field}` is a duration; compare it with a duration"),
                "write a unit: 250ms, 2s, 1.5s, 2m, 1h, 500us, 10ns",
            ),
            (FieldType::Count, Literal::Int(_) | Literal::Float(_)) => {}
            (FieldType::Count, _) => self.type_error(
                at,
                format!("`{field}` is a count; compare it with a number"),
                "e.g. 100",
            ),
            (FieldType::Bool, Literal::Bool(_)) if !ordering => {}
            (FieldType::Bool, Literal::Bool(_)) => self.type_error(
                op_at,
                format!("`{field}` is a boolean; it can only be tested with = or !="),
                "e.g. trace.has_root = false",
            ),
            (FieldType::Bool, _) => self.type_error(
                at,
                format!("`{field}` is a boolean; compare it with true or false"),
                "e.g. trace.has_root = false",
            ),
            (FieldType::Status, Literal::Str(s)) if status_from_name(s).is_some() => {
                if ordering {
                    self.type_error(
                        op_at,
                        format!("`{field}` can only be tested with =, != or in"),
                        "e.g. span.status = \"error\"",
                    );
                }
            }
            (FieldType::Status, _) => self.type_error(
                at,
                format!("`{field}` is a span status; compare it with \"ok\", \"error\" or \"unset\""),
                "e.g. span.status = \"error\"",
            ),
            (FieldType::Kind, Literal::Str(s)) if kind_from_name(s).is_some() => {
                if ordering {
                    self.type_error(
                        op_at,
                        format!("`{field}` can only be tested with =, != or in"),
                        "e.g. root.kind = \"server\"",
                    );
                }
            }
            (FieldType::Kind, _) => self.type_error(
                at,
                format!("`{field}` is a span kind; compare it with \"server\", \"client\", \"internal\", \"producer\", \"consumer\" or \"unspecified\""),
                "e.g. root.kind = \"server\"",
            ),
            (FieldType::Severity, Literal::Int(n)) if (0..=24).contains(n) => {}
            (FieldType::Severity, Literal::Str(s)) if severity_from_name(s).is_some() => {}
            (FieldType::Severity, _) => self.type_error(
                at,
                format!("`{field}` is a log severity; compare it with a severity_number 0–24 or a level name"),
                "e.g. log.severity >= \"error\" (levels: trace, debug, info, warn, error, fatal)",
            ),
            (FieldType::Dynamic, Literal::Duration(_)) => self.type_error(
                at,
                format!("attribute `{field}` cannot be compared with a duration"),
                "durations compare with trace.duration, root.duration and span.duration; write a number for numeric attributes",
            ),
            (FieldType::Dynamic, Literal::Bool(_)) if ordering => self.type_error(
                op_at,
                "booleans can only be tested with = or !=".into(),
                "e.g. span.cache.hit = true",
            ),
            (FieldType::Dynamic, _) => {}
        }
    }

    fn check_text(&mut self, field: &Field, op: &str, op_at: (usize, usize)) {
        if !matches!(field.ty(), FieldType::Str | FieldType::Dynamic) {
            self.type_error(
                op_at,
                format!("`{op}` applies to strings, and `{field}` is not one"),
                "use it with tenant, names and attributes",
            );
        }
    }
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Word(w) => w.clone(),
        Tok::Str(s) => format!("{s:?}"),
        Tok::Int(i) => i.to_string(),
        Tok::Float(x) => x.to_string(),
        Tok::Duration(n) => format!("{n}ns"),
        Tok::Dot => ".".into(),
        Tok::LParen => "(".into(),
        Tok::RParen => ")".into(),
        Tok::LBracket => "[".into(),
        Tok::RBracket => "]".into(),
        Tok::Comma => ",".into(),
        Tok::Eq => "=".into(),
        Tok::Ne => "!=".into(),
        Tok::Lt => "<".into(),
        Tok::Le => "<=".into(),
        Tok::Gt => ">".into(),
        Tok::Ge => ">=".into(),
        Tok::Eof => String::new(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
