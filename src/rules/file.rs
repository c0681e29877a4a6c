//! Reads a rules file: TOML with spans, every problem reported with its line and column.
//!
//! The document is walked as a spanned tree ([`toml::de::DeTable`]) rather than deserialized
//! with serde, so that validation goes on after the first problem and every diagnostic points
//! at the offending key or value (or, for an `if`, at the token inside the expression).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::parser::{parse_expr, ExprError};
use super::{eval, Action, Condition, Diagnostic, Rule, RulesError};

/// The validated content of a rules file.
pub(crate) struct Parsed {
    pub global: Vec<Rule>,
    pub tenants: BTreeMap<String, Vec<Rule>>,
    pub samplers: BTreeMap<String, toml::Table>,
    pub warnings: Vec<Diagnostic>,
}

/// Collects diagnostics for one file and turns byte offsets into line/column.
struct Sink<'s> {
    src: &'s str,
    origin: &'s str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Sink<'_> {
    fn diag(&self, at: usize, message: String, hint: Option<String>) -> Diagnostic {
        let (line, column) = line_col(self.src, at);
        Diagnostic {
            file: self.origin.to_string(),
            line,
            column,
            message,
            hint,
        }
    }

    fn error(&mut self, at: usize, message: impl Into<String>, hint: Option<&str>) {
        let d = self.diag(at, message.into(), hint.map(str::to_string));
        self.errors.push(d);
    }

    fn warn(&mut self, at: usize, message: impl Into<String>, hint: Option<String>) {
        let d = self.diag(at, message.into(), hint);
        self.warnings.push(d);
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(src.len());
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

type Table<'i> = DeTable<'i>;

/// Parses and validates a whole rules file.
pub(crate) fn parse(src: &str, origin: &str) -> Result<Parsed, RulesError> {
    let mut sink = Sink {
        src,
        origin,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let doc = match DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            let msg = e.message().trim().to_string();
            sink.error(
                at,
                format!("invalid TOML: {msg}"),
                Some("see https://toml.io for the syntax"),
            );
            return Err(RulesError::Invalid(sink.errors));
        }
    };

    let mut samplers: HashMap<String, bool> = HashMap::new();
    let mut global_list = None;
    let mut tenant_lists = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        let at = key.span().start;
        match key.get_ref().as_ref() {
            "rule" => global_list = Some(value),
            "tenant" => {
                let Some(tenants) = value.get_ref().as_table() else {
                    sink.error(
                        at,
                        "`tenant` must hold sections like [tenant.\"acme\"]",
                        Some("write [[tenant.\"acme\".rule]] for each rule of tenant acme"),
                    );
                    continue;
                };
                for (id, section) in tenants.iter() {
                    let Some(section) = section.get_ref().as_table() else {
                        sink.error(
                            id.span().start,
                            format!("`tenant.\"{}\"` must be a section", id.get_ref()),
                            Some("write [[tenant.\"<id>\".rule]] for each rule of that tenant"),
                        );
                        continue;
                    };
                    for (k, v) in section.iter() {
                        if k.get_ref().as_ref() == "rule" {
                            tenant_lists.push((id.get_ref().to_string(), v));
                        } else {
                            unknown_key(
                                &mut sink,
                                k,
                                &["rule"],
                                "a tenant section holds only [[tenant.\"<id>\".rule]] entries",
                            );
                        }
                    }
                }
            }
            "sampler" => {
                let Some(table) = value.get_ref().as_table() else {
                    sink.error(
                        at,
                        "`sampler` must hold sections like [sampler.name]",
                        Some("write [sampler.<name>] with a `type` key"),
                    );
                    continue;
                };
                for (name, body) in table.iter() {
                    let at = name.span().start;
                    match body.get_ref().as_table() {
                        None => sink.error(
                            at,
                            format!("sampler `{}` must be a section", name.get_ref()),
                            Some("write [sampler.<name>] with a `type` key"),
                        ),
                        Some(t) => match t.iter().find(|(k, _)| k.get_ref().as_ref() == "type") {
                            None => sink.error(
                                at,
                                format!("sampler `{}` has no `type`", name.get_ref()),
                                Some("add type = \"<sampler type>\""),
                            ),
                            Some((_, v)) if !v.get_ref().is_str() => sink.error(
                                v.span().start,
                                format!("sampler `{}`: `type` must be a string", name.get_ref()),
                                None,
                            ),
                            Some(_) => {}
                        },
                    }
                    samplers.insert(name.get_ref().to_string(), false);
                }
            }
            _ => unknown_key(
                &mut sink,
                key,
                &["rule", "tenant", "sampler"],
                "top-level entries are [[rule]], [tenant.\"<id>\"] and [sampler.<name>]",
            ),
        }
    }

    let mut names: HashMap<String, usize> = HashMap::new();
    let mut lists = Lists {
        sink: &mut sink,
        names: &mut names,
        samplers: &mut samplers,
    };
    let global = global_list
        .map(|v| lists.rule_list(v, "rule"))
        .unwrap_or_default();
    let mut tenants = BTreeMap::new();
    for (id, v) in tenant_lists {
        let rules = lists.rule_list(v, &format!("tenant.\"{id}\".rule"));
        tenants.insert(id, rules);
    }
    let mut unused: Vec<_> = doc
        .get_ref()
        .iter()
        .filter(|(k, _)| k.get_ref().as_ref() == "sampler")
        .filter_map(|(_, v)| v.get_ref().as_table())
        .flat_map(|t| t.iter())
        .filter(|(name, _)| samplers.get(name.get_ref().as_ref()) == Some(&false))
        .map(|(name, _)| (name.span().start, name.get_ref().to_string()))
        .collect();
    unused.sort();
    for (at, name) in unused {
        sink.warn(
            at,
            format!("sampler `{name}` is not used by any rule"),
            Some(format!(
                "reference it with sampler = \"{name}\" or remove it"
            )),
        );
    }

    if !sink.errors.is_empty() {
        sink.errors.sort_by_key(|d| (d.line, d.column));
        return Err(RulesError::Invalid(sink.errors));
    }
    // The tree validated; take the sampler tables as plain TOML values for their owners.
    let mut raw = BTreeMap::new();
    if !samplers.is_empty() {
        match toml::from_str::<toml::Table>(src) {
            Ok(mut table) => {
                if let Some(toml::Value::Table(all)) = table.remove("sampler") {
                    for (name, body) in all {
                        if let toml::Value::Table(body) = body {
                            raw.insert(name, body);
                        }
                    }
                }
            }
            Err(e) => {
                sink.error(
                    e.span().map_or(0, |s| s.start),
                    format!("invalid TOML: {}", e.message().trim()),
                    None,
                );
                return Err(RulesError::Invalid(sink.errors));
            }
        }
    }
    sink.warnings.sort_by_key(|d| (d.line, d.column));
    Ok(Parsed {
        global,
        tenants,
        samplers: raw,
        warnings: sink.warnings,
    })
}

/// State shared while reading every rule list of a file.
struct Lists<'a, 's> {
    sink: &'a mut Sink<'s>,
    /// Rule names seen so far, with the line of their first definition.
    names: &'a mut HashMap<String, usize>,
    /// Sampler names, and whether a rule uses them.
    samplers: &'a mut HashMap<String, bool>,
}

const RULE_KEYS: [&str; 5] = ["name", "if", "sample_rate", "drop", "sampler"];

impl Lists<'_, '_> {
    /// Reads a `[[rule]]` array; `path` is how the user writes its header.
    fn rule_list(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> Vec<Rule> {
        let at = value.span().start;
        let hint = format!("write [[{path}]] (double brackets) for each rule");
        let items = match value.get_ref() {
            DeValue::Array(items) => items,
            other => {
                self.sink.error(
                    at,
                    format!(
                        "`{path}` must be an array of tables, found a {}",
                        other.type_str()
                    ),
                    Some(&hint),
                );
                return Vec::new();
            }
        };
        let mut rules = Vec::new();
        let mut catch_all: Option<(String, usize)> = None;
        for item in items.iter() {
            let Some(table) = item.get_ref().as_table() else {
                self.sink.error(
                    item.span().start,
                    format!("each `{path}` entry must be a table"),
                    Some(&hint),
                );
                continue;
            };
            let header = item.span().start;
            let Some(rule) = self.rule(table, header) else {
                continue;
            };
            if let Some((above, line)) = &catch_all {
                self.sink.warn(
                    header,
                    format!("rule `{}` is unreachable: rule `{above}` (line {line}) above it matches every trace", rule.name),
                    Some(format!("move it above `{above}`, or give `{above}` an `if`")),
                );
            } else if rule.condition.is_none() {
                catch_all = Some((rule.name.clone(), rule.line));
            }
            rules.push(rule);
        }
        rules
    }

    /// Reads one rule table; `None` when it has errors (already reported).
    fn rule(&mut self, table: &Table<'_>, header: usize) -> Option<Rule> {
        let errors_before = self.sink.errors.len();
        let mut name = None;
        let mut condition = None;
        let mut actions: Vec<(usize, &str, Option<Action>)> = Vec::new();
        // The map iterates keys sorted by name; report in file order instead.
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            let vat = value.span().start;
            match key.get_ref().as_ref() {
                "name" => match value.get_ref().as_str() {
                    Some(n) if !n.trim().is_empty() => name = Some((n.to_string(), vat)),
                    Some(_) => self.sink.error(vat, "rule name is empty", Some("name = \"errors\"")),
                    None => self.sink.error(vat, "rule `name` must be a string", Some("name = \"errors\"")),
                },
                "if" => match value.get_ref().as_str() {
                    Some(text) => condition = self.condition(text, value.span()),
                    None => self.sink.error(vat, "`if` must be a string holding an expression", Some("if = 'span.status = \"error\"' (single quotes keep the inner double quotes literal)")),
                },
                "sample_rate" => {
                    let rate = match value.get_ref() {
                        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
                        _ => None,
                    };
                    let action = match rate {
                        Some(r) if r >= 1 => Some(Action::Sample { rate: r.unsigned_abs() }),
                        Some(_) => {
                            self.sink.error(vat, "sample_rate must be at least 1", Some("sample_rate = N keeps 1 trace in N; to keep none, write drop = true"));
                            None
                        }
                        None => {
                            self.sink.error(vat, "sample_rate must be an integer", Some("sample_rate = 10 keeps 1 trace in 10"));
                            None
                        }
                    };
                    actions.push((key.span().start, "sample_rate", action));
                }
                "drop" => {
                    let action = match value.get_ref().as_bool() {
                        Some(true) => Some(Action::Drop),
                        Some(false) => {
                            self.sink.error(vat, "drop = false is not an action", Some("remove it and write sample_rate = N, or drop = true"));
                            None
                        }
                        None => {
                            self.sink.error(vat, "drop must be true", Some("drop = true"));
                            None
                        }
                    };
                    actions.push((key.span().start, "drop", action));
                }
                "sampler" => {
                    let action = match value.get_ref().as_str() {
                        Some(s) => match self.samplers.get_mut(s) {
                            Some(used) => {
                                *used = true;
                                Some(Action::Sampler(s.to_string()))
                            }
                            None => {
                                let mut known: Vec<_> = self.samplers.keys().map(String::as_str).collect();
                                known.sort_unstable();
                                let hint = if known.is_empty() {
                                    format!("define it with [sampler.{s}] and a `type`")
                                } else {
                                    format!("defined samplers: {}; or add [sampler.{s}]", known.join(", "))
                                };
                                self.sink.error(vat, format!("unknown sampler `{s}`"), Some(&hint));
                                None
                            }
                        },
                        None => {
                            self.sink.error(vat, "sampler must be a string naming a [sampler.<name>] section", None);
                            None
                        }
                    };
                    actions.push((key.span().start, "sampler", action));
                }
                _ => unknown_key(self.sink, key, &RULE_KEYS, "a rule has name, if, and one of sample_rate, drop, sampler"),
            }
        }
        let Some((name, name_at)) = name else {
            self.sink.error(
                header,
                "rule has no `name`",
                Some("add name = \"...\"; names appear in metrics and the admin API"),
            );
            return None;
        };
        let line = line_col(self.sink.src, header).0;
        if let Some(first) = self.names.get(&name) {
            let first = *first;
            self.sink.error(
                name_at,
                format!("duplicate rule name `{name}`"),
                Some(&format!(
                    "first used at line {first}; rule names are unique in a file"
                )),
            );
        } else {
            self.names.insert(name.clone(), line);
        }
        match actions.as_slice() {
            [] => self.sink.error(
                header,
                format!("rule `{name}` has no action"),
                Some("add one of sample_rate = N, drop = true, sampler = \"<name>\""),
            ),
            [_] => {}
            [(_, first, _), rest @ ..] => {
                let first = *first;
                let rest: Vec<(usize, &str)> =
                    rest.iter().map(|(at, key, _)| (*at, *key)).collect();
                for (at, key) in rest {
                    self.sink.error(
                        at,
                        format!("rule `{name}` has more than one action (`{first}` and `{key}`)"),
                        Some("keep exactly one of sample_rate, drop, sampler"),
                    );
                }
            }
        }
        if self.sink.errors.len() > errors_before {
            return None;
        }
        let action = actions.into_iter().next().and_then(|(_, _, a)| a)?;
        Some(Rule {
            name,
            condition,
            action,
            line,
        })
    }

    /// Parses an `if` and maps expression errors to file positions.
    fn condition(&mut self, text: &str, span: Range<usize>) -> Option<Condition> {
        match parse_expr(text) {
            Ok(expr) => {
                let node = eval::compile(&expr);
                let per_span = expr.mentions_span();
                Some(Condition {
                    expr,
                    node,
                    per_span,
                })
            }
            Err(errors) => {
                let base = expr_base(self.sink.src, &span, text);
                for ExprError {
                    start,
                    message,
                    hint,
                    ..
                } in errors
                {
                    let at = base.map_or(span.start, |b| b + start);
                    let d = self.sink.diag(at, message, hint);
                    self.sink.errors.push(d);
                }
                None
            }
        }
    }
}

/// Byte offset in the file of the first character of a string value's content, when the
/// content appears there verbatim (literal strings, and basic strings without escapes), so
/// an offset inside the expression maps exactly onto the file.
fn expr_base(src: &str, span: &Range<usize>, value: &str) -> Option<usize> {
    let raw = src.get(span.clone())?;
    let delim = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
        3
    } else {
        1
    };
    let mut start = span.start + delim;
    let mut inner = raw.get(delim..raw.len().checked_sub(delim)?)?;
    if delim == 3 {
        // TOML trims a newline right after the opening delimiter.
        for nl in ["\r\n", "\n"] {
            if let Some(rest) = inner.strip_prefix(nl) {
                inner = rest;
                start += nl.len();
                break;
            }
        }
    }
    (inner == value).then_some(start)
}

/// Reports an unknown key, suggesting the closest valid one.
fn unknown_key(
    sink: &mut Sink<'_>,
    key: &Spanned<toml::de::DeString<'_>>,
    valid: &[&str],
    hint: &str,
) {
    let k = key.get_ref().as_ref();
    let suggestion = valid
        .iter()
        .map(|v| (edit_distance(k, v), v))
        .filter(|(d, _)| *d <= 2)
        .min();
    let hint = match suggestion {
        Some((_, v)) => format!("did you mean `{v}`? {hint}"),
        None => hint.to_string(),
    };
    sink.error(key.span().start, format!("unknown key `{k}`"), Some(&hint));
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
