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
use super::sampler::{parse_duration, EmaSpec, KeyFields, SamplerSpec};
use super::{eval, Action, Condition, Diagnostic, Each, Rule, RulesError};

/// The validated content of a rules file.
pub(crate) struct Parsed {
    pub global: Vec<Rule>,
    pub tenants: BTreeMap<String, Vec<Rule>>,
    pub samplers: BTreeMap<String, toml::Table>,
    pub specs: BTreeMap<String, SamplerSpec>,
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
    let mut specs: BTreeMap<String, (SamplerSpec, usize)> = BTreeMap::new();
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
                            Some(_) => {
                                if let Some(spec) = sampler_spec(&mut sink, name.get_ref(), t, at) {
                                    specs.insert(name.get_ref().to_string(), (spec, at));
                                }
                            }
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

    // `within_tenant` must name an EMA sampler of the same file.
    for (name, (spec, at)) in &specs {
        let SamplerSpec::TenantFair {
            within_tenant: Some(within),
            ..
        } = spec
        else {
            continue;
        };
        match specs.get(within) {
            Some((SamplerSpec::EmaDynamic { .. } | SamplerSpec::EmaThroughput { .. }, _)) => {}
            Some(_) => sink.error(
                *at,
                format!("sampler `{name}`: within_tenant = \"{within}\" is a tenant_fair sampler"),
                Some("within_tenant names an ema_dynamic or ema_throughput sampler"),
            ),
            None if samplers.contains_key(within) => {}
            None => sink.error(
                *at,
                format!("sampler `{name}`: within_tenant names no sampler `{within}`"),
                Some(
                    "define [sampler.<name>] with type = \"ema_dynamic\", or remove within_tenant",
                ),
            ),
        }
        // Used through the tenant_fair sampler: not an unused-sampler warning.
        if let Some(used) = samplers.get_mut(within) {
            *used = true;
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
        specs: specs.into_iter().map(|(k, (spec, _))| (k, spec)).collect(),
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
                let each = Each::of(&expr);
                Some(Condition { expr, node, each })
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

const EMA_KEYS: [&str; 6] = [
    "type",
    "goal_sample_rate",
    "key",
    "adjustment_interval",
    "weight",
    "max_keys",
];
const THROUGHPUT_KEYS: [&str; 6] = [
    "type",
    "goal_traces_per_sec",
    "key",
    "adjustment_interval",
    "weight",
    "max_keys",
];
const FAIR_KEYS: [&str; 8] = [
    "type",
    "goal_traces_per_sec",
    "min_per_tenant",
    "weights",
    "within_tenant",
    "adjustment_interval",
    "weight",
    "max_tenants",
];
/// Sampler types, as written in `type`.
const SAMPLER_TYPES: [&str; 3] = ["ema_dynamic", "ema_throughput", "tenant_fair"];

/// A TOML integer or float as f64.
fn number(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|i| i as f64),
        DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
        _ => None,
    }
}

/// Reads and checks one `[sampler.<name>]` table (its `type` is a string); `None` when it has
/// errors (reported, each naming the sampler).
fn sampler_spec(
    sink: &mut Sink<'_>,
    name: &str,
    table: &Table<'_>,
    header: usize,
) -> Option<SamplerSpec> {
    let errors_before = sink.errors.len();
    let get = |k: &str| table.iter().find(|(key, _)| key.get_ref().as_ref() == k);
    let (_, type_value) = get("type")?;
    let ty = type_value.get_ref().as_str()?.to_string();
    let valid: &[&str] = match ty.as_str() {
        "ema_dynamic" => &EMA_KEYS,
        "ema_throughput" => &THROUGHPUT_KEYS,
        "tenant_fair" => &FAIR_KEYS,
        _ => {
            let close = SAMPLER_TYPES
                .iter()
                .map(|t| (edit_distance(&ty, t), t))
                .filter(|(d, _)| *d <= 3)
                .min();
            let hint = match close {
                Some((_, t)) => format!(
                    "did you mean \"{t}\"? types are {}",
                    SAMPLER_TYPES.join(", ")
                ),
                None => format!("types are {}", SAMPLER_TYPES.join(", ")),
            };
            sink.error(
                type_value.span().start,
                format!("sampler `{name}`: unknown type \"{ty}\""),
                Some(&hint),
            );
            return None;
        }
    };
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, _) in &entries {
        if !valid.contains(&key.get_ref().as_ref()) {
            let k = key.get_ref().as_ref();
            let close = valid
                .iter()
                .map(|v| (edit_distance(k, v), v))
                .filter(|(d, _)| *d <= 2)
                .min();
            let hint = match close {
                Some((_, v)) => format!(
                    "did you mean `{v}`? a {ty} sampler has {}",
                    valid.join(", ")
                ),
                None => format!("a {ty} sampler has {}", valid.join(", ")),
            };
            sink.error(
                key.span().start,
                format!("sampler `{name}`: unknown setting `{k}`"),
                Some(&hint),
            );
        }
    }

    // A number setting, checked by `ok` (`what` says what is allowed).
    let number_setting = |sink: &mut Sink<'_>,
                          key: &str,
                          ok: fn(f64) -> bool,
                          what: &str,
                          default: Option<f64>,
                          hint: &str| match get(key) {
        None => {
            if default.is_none() {
                sink.error(
                    header,
                    format!("sampler `{name}`: `{key}` is required for type \"{ty}\""),
                    Some(hint),
                );
            }
            default
        }
        Some((_, v)) => match number(v.get_ref()) {
            Some(x) if x.is_finite() && ok(x) => Some(x),
            _ => {
                sink.error(
                    v.span().start,
                    format!("sampler `{name}`: `{key}` must be {what}"),
                    Some(hint),
                );
                None
            }
        },
    };

    let key = match get("key") {
        None => Some(KeyFields::default_key()),
        Some((_, v)) => {
            let names: Option<Vec<String>> = v.get_ref().as_array().and_then(|a| {
                a.iter()
                    .map(|f| f.get_ref().as_str().map(str::to_string))
                    .collect()
            });
            match names {
                Some(names) if !names.is_empty() => match KeyFields::compile(&names) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        sink.error(
                            v.span().start,
                            format!("sampler `{name}`: {e}"),
                            Some("key fields are tenant, root.name, root.status, root.kind, root.<attribute> and trace counts"),
                        );
                        None
                    }
                },
                _ => {
                    sink.error(
                        v.span().start,
                        format!("sampler `{name}`: `key` must be a non-empty array of field names"),
                        Some("key = [\"tenant\", \"root.service.name\", \"root.http.route\"]"),
                    );
                    None
                }
            }
        }
    };
    let adjustment_interval = match get("adjustment_interval") {
        None => Some(std::time::Duration::from_secs(15)),
        Some((_, v)) => match v.get_ref().as_str().and_then(parse_duration) {
            Some(d) if d >= std::time::Duration::from_millis(100) => Some(d),
            _ => {
                sink.error(
                    v.span().start,
                    format!("sampler `{name}`: `adjustment_interval` must be a duration of at least 100ms"),
                    Some("adjustment_interval = \"15s\" (units: ms, s, m, h)"),
                );
                None
            }
        },
    };
    let weight = match get("weight") {
        None => Some(0.5),
        Some((_, v)) => match number(v.get_ref()) {
            Some(w) if w > 0.0 && w <= 1.0 => Some(w),
            _ => {
                sink.error(
                    v.span().start,
                    format!("sampler `{name}`: `weight` must be a number in (0, 1]"),
                    Some("weight = 0.5 weighs the newest interval as much as all earlier ones"),
                );
                None
            }
        },
    };
    let limit_key = if ty == "tenant_fair" {
        "max_tenants"
    } else {
        "max_keys"
    };
    let max_keys = match get(limit_key) {
        None => Some(10_000),
        Some((_, v)) => match v
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok())
        {
            Some(n) if n >= 1 => Some(n as usize),
            _ => {
                sink.error(
                    v.span().start,
                    format!("sampler `{name}`: `{limit_key}` must be an integer ≥ 1"),
                    Some(&format!("{limit_key} = 10000")),
                );
                None
            }
        },
    };

    let spec = match ty.as_str() {
        "ema_dynamic" => number_setting(
            sink,
            "goal_sample_rate",
            |x| x >= 1.0,
            "a number ≥ 1",
            None,
            "goal_sample_rate = 20 keeps about 1 trace in 20",
        )
        .map(|g| (g, 0.0, BTreeMap::new(), None)),
        "ema_throughput" => number_setting(
            sink,
            "goal_traces_per_sec",
            |x| x > 0.0,
            "a number > 0",
            None,
            "goal_traces_per_sec = 500",
        )
        .map(|g| (g, 0.0, BTreeMap::new(), None)),
        _ => {
            let goal = number_setting(
                sink,
                "goal_traces_per_sec",
                |x| x > 0.0,
                "a number > 0",
                None,
                "goal_traces_per_sec = 1000",
            );
            let min = number_setting(
                sink,
                "min_per_tenant",
                |x| x >= 0.0,
                "a number ≥ 0",
                Some(1.0),
                "min_per_tenant = 5",
            );
            let mut weights = BTreeMap::new();
            if let Some((_, v)) = get("weights") {
                match v.get_ref().as_table() {
                    Some(t) => {
                        for (tenant, w) in t.iter() {
                            match number(w.get_ref()) {
                                Some(x) if x > 0.0 && x.is_finite() => {
                                    weights.insert(tenant.get_ref().to_string(), x);
                                }
                                _ => sink.error(
                                    w.span().start,
                                    format!("sampler `{name}`: the weight of tenant \"{}\" must be a positive number", tenant.get_ref()),
                                    Some("weights = { acme = 4 } gives acme 4 shares; others have 1"),
                                ),
                            }
                        }
                    }
                    None => sink.error(
                        v.span().start,
                        format!("sampler `{name}`: `weights` must be a table of tenant = number"),
                        Some("weights = { acme = 4 }"),
                    ),
                }
            }
            let within = match get("within_tenant") {
                None => None,
                Some((_, v)) => match v.get_ref().as_str() {
                    Some(w) => Some(w.to_string()),
                    None => {
                        sink.error(
                            v.span().start,
                            format!("sampler `{name}`: `within_tenant` must be a sampler name"),
                            Some("within_tenant = \"per-key\""),
                        );
                        None
                    }
                },
            };
            goal.zip(min).map(|(g, m)| (g, m, weights, within))
        }
    };
    if sink.errors.len() > errors_before {
        return None;
    }
    let (goal, min_per_tenant, weights, within_tenant) = spec?;
    let ema = EmaSpec {
        key: key?,
        adjustment_interval: adjustment_interval?,
        weight: weight?,
        max_keys: max_keys?,
    };
    Some(match ty.as_str() {
        "ema_dynamic" => SamplerSpec::EmaDynamic {
            goal_sample_rate: goal,
            ema,
        },
        "ema_throughput" => SamplerSpec::EmaThroughput {
            goal_traces_per_sec: goal,
            ema,
        },
        _ => SamplerSpec::TenantFair {
            goal_traces_per_sec: goal,
            min_per_tenant,
            weights,
            within_tenant,
            ema,
        },
    })
}
