//! Log output: `--log-format json` writes one JSON object per line, for log collectors that
//! parse structured logs (Loki, Elasticsearch, CloudWatch). A small formatter on top of
//! `tracing-subscriber`'s `fmt` layer rather than its `json` feature, which would add
//! `tracing-serde` for what serde_json already does here.
//!
//! ```text
//! {"timestamp":"2026-01-02T03:04:05.678901Z","level":"INFO","target":"tailsift::tags","message":"tenant tags loaded","path":"tailsift-tags.json","tags":0}
//! ```

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON-lines event format of `tailsift run --log-format json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

/// Collects an event's fields as JSON values (numbers and booleans stay typed).
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        // The line's own keys first, in a fixed order, then the event's fields.
        let mut line = format!(
            "{{\"timestamp\":{},\"level\":{},\"target\":{}",
            Value::String(timestamp),
            Value::from(meta.level().as_str()),
            Value::from(meta.target())
        );
        let message = fields.0.remove("message");
        if let Some(m) = message {
            line.push_str(&format!(",\"message\":{m}"));
        }
        for (k, v) in fields.0 {
            // An event field named like one of the line's own keys keeps both.
            let k = if ["timestamp", "level", "target"].contains(&k.as_str()) {
                format!("field.{k}")
            } else {
                k
            };
            line.push_str(&format!(",{}:{v}", Value::String(k)));
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}
