//! Typed `[sampler.<name>]` declarations, validated with the rest of the file, and the key
//! fields a sampler groups traces by (compiled once, read from a trace without allocating).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::ast::{Field, Scope, SpanField};
use super::eval::{self, Fetch, Operand, Val};
use super::parser::parse_field;
use super::{SpanKind, SpanStatus, TraceView};

/// Separates key field values in a rendered key (ASCII unit separator: never in real values).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// A validated sampler declaration.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerSpec {
    /// `type = "ema_dynamic"`: keep about 1 in `goal_sample_rate`, rarer keys kept more.
    EmaDynamic {
        /// Overall goal: keep about 1 trace in this many.
        goal_sample_rate: f64,
        /// Key fields, interval, weight, key limit.
        ema: EmaSpec,
    },
    /// `type = "ema_throughput"`: keep about `goal_traces_per_sec`, rarer keys kept more.
    EmaThroughput {
        /// Overall goal: kept traces per second (for the whole node).
        goal_traces_per_sec: f64,
        /// Key fields, interval, weight, key limit.
        ema: EmaSpec,
    },
    /// `type = "tenant_fair"`: a traces/s budget split between tenants.
    TenantFair {
        /// Kept traces per second shared by every tenant (for the whole node).
        goal_traces_per_sec: f64,
        /// Every active tenant may keep at least this many traces per second.
        min_per_tenant: f64,
        /// Tenant shares; tenants not listed weigh 1.
        weights: BTreeMap<String, f64>,
        /// The `ema_dynamic` / `ema_throughput` sampler whose key, weight and key limit spend
        /// each tenant's share; `None`: one uniform rate per tenant.
        within_tenant: Option<String>,
        /// Interval and weight of the split; `max_keys` is `max_tenants`.
        ema: EmaSpec,
    },
}

/// The learning settings every EMA-based sampler has.
#[derive(Clone, Debug, PartialEq)]
pub struct EmaSpec {
    /// What traces are grouped by (`key`).
    pub key: KeyFields,
    /// `adjustment_interval`.
    pub adjustment_interval: Duration,
    /// `weight`: the newest interval's weight in the moving average.
    pub weight: f64,
    /// `max_keys` (`max_tenants` for `tenant_fair`).
    pub max_keys: usize,
}

impl SamplerSpec {
    /// The learning settings.
    pub fn ema(&self) -> &EmaSpec {
        match self {
            SamplerSpec::EmaDynamic { ema, .. }
            | SamplerSpec::EmaThroughput { ema, .. }
            | SamplerSpec::TenantFair { ema, .. } => ema,
        }
    }

    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            SamplerSpec::EmaDynamic { .. } => "ema_dynamic",
            SamplerSpec::EmaThroughput { .. } => "ema_throughput",
            SamplerSpec::TenantFair { .. } => "tenant_fair",
        }
    }
}

/// Key fields of a sampler: `tenant`, `root.<field or attribute>` and `trace.*` counts.
#[derive(Clone, Debug)]
pub struct KeyFields {
    fields: Vec<Field>,
    operands: Vec<Operand>,
}

/// Two key lists are equal when they read the same fields in the same order.
impl PartialEq for KeyFields {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}

/// The default `key`.
pub const DEFAULT_KEY: [&str; 3] = ["tenant", "root.service.name", "root.name"];

impl KeyFields {
    /// Compiles field names as written in `key = [...]`; the error says which one is wrong.
    pub fn compile<S: AsRef<str>>(names: &[S]) -> Result<KeyFields, String> {
        let mut fields = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            let field = parse_field(name).map_err(|e| format!("key field `{name}`: {e}"))?;
            match &field {
                Field::Span(Scope::Span, _) => {
                    return Err(format!(
                        "key field `{name}`: span.* fields differ between spans; use root.*"
                    ))
                }
                Field::Log(_) => {
                    return Err(format!(
                        "key field `{name}`: log.* fields differ between log records; use trace.error_log_count or root.*"
                    ))
                }
                Field::TraceDuration | Field::Span(_, SpanField::Duration) => {
                    return Err(format!(
                        "key field `{name}`: a duration is not a key (every trace would be its own key)"
                    ))
                }
                _ => {}
            }
            fields.push(field);
        }
        let operands = fields.iter().map(eval::operand).collect();
        Ok(KeyFields { fields, operands })
    }

    /// The default key, `tenant`, `root.service.name`, `root.name`.
    pub fn default_key() -> KeyFields {
        match Self::compile(&DEFAULT_KEY) {
            Ok(k) => k,
            // The default names are valid fields (a unit test checks); never reached.
            Err(_) => KeyFields {
                fields: Vec::new(),
                operands: Vec::new(),
            },
        }
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Appends the trace's key to `out`: each field's value (empty when absent), separated by
    /// [`KEY_SEPARATOR`]. Reuse `out` across traces and nothing is allocated.
    pub fn write_key<T: TraceView>(&self, trace: &T, out: &mut String) {
        let ctx = eval::Ctx::new(trace);
        for (i, op) in self.operands.iter().enumerate() {
            if i > 0 {
                out.push(KEY_SEPARATOR);
            }
            if let Fetch::Present(v) = ctx.fetch(op, None) {
                let _ = match v {
                    Val::Str(s) => {
                        out.push_str(s);
                        Ok(())
                    }
                    Val::Int(i) => write!(out, "{i}"),
                    Val::Float(x) => write!(out, "{x}"),
                    Val::Bool(b) => write!(out, "{b}"),
                    Val::Dur(n) => write!(out, "{n}"),
                    Val::Status(s) => {
                        out.push_str(match s {
                            SpanStatus::Unset => "unset",
                            SpanStatus::Ok => "ok",
                            SpanStatus::Error => "error",
                        });
                        Ok(())
                    }
                    Val::Kind(k) => {
                        out.push_str(match k {
                            SpanKind::Unspecified => "unspecified",
                            SpanKind::Internal => "internal",
                            SpanKind::Server => "server",
                            SpanKind::Client => "client",
                            SpanKind::Producer => "producer",
                            SpanKind::Consumer => "consumer",
                        });
                        Ok(())
                    }
                };
            }
        }
    }
}

/// Parses `adjustment_interval` values: an integer and a unit (`ms`, `s`, `m`, `h`).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}
