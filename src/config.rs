//! The proxy's configuration file (TOML), validated once at the edge into typed values.
//! Every key has a default, so an empty file (or no file) is a working configuration; unknown
//! keys are errors. `docs/configuration.md` documents each key; keep the two in step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has wrong or unknown keys (the message has line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the TOML parser said, with position.
        message: String,
    },
    /// Values that parse but cannot work together.
    #[error("{path}: {}", .problems.join("; "))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// One line per problem, naming the key and how to fix it.
        problems: Vec<String>,
    },
}

/// A duration written as `250ms`, `2s`, `1.5s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `<number><unit>` with units ns, us, ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("duration {s:?} needs a unit: ns, us, ms, s, m or h (e.g. \"2s\")")
        })?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a number (e.g. \"250ms\")"))?;
    let nanos_per_unit = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?}: use ns, us, ms, s, m or h"
            ))
        }
    };
    let nanos = value * nanos_per_unit;
    if !nanos.is_finite() || !(0.0..=1e18).contains(&nanos) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// A byte size written as `512MiB`, `1GiB`, `64KiB`, `100MB` or a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("size {s:?} must start with a whole number (e.g. \"512MiB\")"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "size {s:?} has unknown unit {other:?}: use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl ByteSize {
    /// The size as usize (saturating on 32-bit targets).
    pub fn bytes(&self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// OTLP listeners and request limits.
    pub receive: ReceiveConfig,
    /// How the tenant of a span is found.
    pub tenant: TenantConfig,
    /// Holding spans until their trace is decided.
    pub buffer: BufferConfig,
    /// Where the sampling rules live.
    pub rules: RulesConfig,
    /// Where kept traces go.
    pub export: ExportConfig,
    /// The admin HTTP API.
    pub admin: AdminConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Per-tenant statistics.
    pub stats: StatsConfig,
    /// Running as one node of a cluster; absent: a single node that owns every trace.
    pub cluster: Option<ClusterConfig>,
    /// API keys on the receive listeners; absent: no keys, anyone who reaches them may write.
    pub auth: Option<AuthConfig>,
    /// OTLP logs that carry no trace id.
    pub logs: LogsConfig,
    /// The file this configuration was read from (not a key: set by [`Config::load`]), so
    /// SIGHUP can re-read `[cluster] peers`.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The keys set from `TAILSIFT_<SECTION>__<KEY>` variables (not a key), so `tailsift
    /// check` and the start-up log can say where a value came from.
    #[serde(skip)]
    pub from_env: Vec<EnvOverride>,
}

/// The prefix of environment variables that override config keys:
/// `TAILSIFT_<SECTION>__<KEY>`, `__` between the levels of the key path.
pub const ENV_PREFIX: &str = "TAILSIFT_";

/// One config key whose value came from the environment, for `tailsift check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOverride {
    /// The variable, e.g. `TAILSIFT_BUFFER__MAX_MEMORY`.
    pub var: String,
    /// The key it set, e.g. `buffer.max_memory`.
    pub key: String,
}

/// The process's `TAILSIFT_*__*` variables, sorted: the overrides [`Config::parse`] applies.
/// Variables without `__` (`TAILSIFT_ADMIN_TOKEN`, `TAILSIFT_ADVERTISE`) are not overrides.
pub fn env_overrides() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            (k.starts_with(ENV_PREFIX) && k.contains("__"))
                .then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect();
    out.sort();
    out
}

/// An environment value as TOML when it reads as one value (`8080`, `true`, `["a", "b"]`,
/// `"quoted"`), else as the string itself (`2GiB`, `https://api.example.com`).
fn env_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| text.into()),
        _ => toml::Value::String(text.to_string()),
    }
}

/// Sets `parents.last = value` in `table`, adding missing sections; `Err(i)` when
/// `parents[i]` is a value rather than a section.
fn set_path(
    table: &mut toml::Table,
    parents: &[String],
    last: &str,
    value: toml::Value,
) -> Result<(), usize> {
    let Some((first, rest)) = parents.split_first() else {
        table.insert(last.to_string(), value);
        return Ok(());
    };
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => set_path(t, rest, last, value).map_err(|i| i + 1),
        _ => Err(0),
    }
}

/// Sets each override's key in the parsed file; one problem per variable that names no key
/// path. Unknown keys are left for `deny_unknown_fields` to refuse.
fn apply_env_overrides(
    table: &mut toml::Table,
    overrides: &[(String, String)],
    problems: &mut Vec<String>,
) -> Vec<EnvOverride> {
    let mut applied = Vec::new();
    for (var, value) in overrides {
        let segments: Vec<String> = var
            .strip_prefix(ENV_PREFIX)
            .unwrap_or(var)
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let key = segments.join(".");
        let Some((last, parents)) = segments.split_last() else {
            continue;
        };
        if parents.is_empty() || segments.iter().any(String::is_empty) {
            problems.push(format!(
                "{var}: expected {ENV_PREFIX}<SECTION>__<KEY> (e.g. TAILSIFT_EXPORT__ENDPOINT)"
            ));
            continue;
        }
        match set_path(table, parents, last, env_value(value)) {
            Ok(()) => applied.push(EnvOverride {
                var: var.clone(),
                key,
            }),
            Err(depth) => problems.push(format!(
                "{var}: {} is a value, not a section",
                segments[..=depth].join(".")
            )),
        }
    }
    applied
}

/// `[receive]`: OTLP listeners and request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiveConfig {
    /// OTLP/gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP listen address.
    pub http_listen: SocketAddr,
    /// Largest accepted request body, after decompression.
    pub max_request_bytes: ByteSize,
    /// How long a request may wait for room in the buffer before it is refused with a
    /// retryable code.
    pub queue_timeout: HumanDuration,
    /// Most requests handled at once per listener; more wait (gRPC) or are refused (HTTP 503).
    pub max_concurrent_requests: usize,
    /// Most spans accepted from one request; the rest are refused (partial success).
    pub max_spans_per_request: usize,
    /// Most attributes on one span; a span with more is refused (partial success).
    pub max_attributes_per_span: usize,
    /// Longest string attribute value kept whole; longer values are truncated and the span
    /// marked (`tailsift.truncated`), never refused. None (the default): no limit.
    pub max_attribute_bytes: Option<ByteSize>,
    /// Most client connections open at once per listener; more wait in the kernel backlog.
    pub max_connections: usize,
    /// TLS on both listeners; absent: plaintext.
    pub tls: Option<ReceiveTlsConfig>,
    /// HTTP/1: a request's headers must arrive within this, or the connection is closed
    /// (a slowloris client cannot hold a connection slot).
    pub header_read_timeout: HumanDuration,
    /// A connection on which nothing is read or written for this long is closed.
    pub idle_timeout: HumanDuration,
    /// HTTP/2 (gRPC and HTTP listeners): ping an idle client this often.
    pub http2_keepalive_interval: HumanDuration,
    /// HTTP/2: close the connection when a ping is not answered within this.
    pub http2_keepalive_timeout: HumanDuration,
}

/// `[receive.tls]`: certificate and key of the receive listeners, optionally a client CA.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate one of them signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes (certificate rotation).
    #[serde(default = "default_tls_check_interval")]
    pub check_interval: HumanDuration,
    /// Longest a client may take to complete the TLS handshake.
    #[serde(default = "default_tls_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
}

fn default_tls_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_tls_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        ReceiveConfig {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 4317)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 4318)),
            max_request_bytes: ByteSize(16 << 20),
            queue_timeout: HumanDuration(Duration::from_secs(2)),
            max_concurrent_requests: 256,
            max_spans_per_request: 100_000,
            max_attributes_per_span: 1024,
            max_attribute_bytes: None,
            max_connections: 4096,
            tls: None,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            http2_keepalive_interval: HumanDuration(Duration::from_secs(30)),
            http2_keepalive_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// `[auth]`: API keys on the receive listeners, each mapped to the tenant it writes as.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// TOML file with a `[keys]` table `"<api key>" = "<tenant id>"`; re-read on SIGHUP and
    /// `POST /api/v1/rules/reload`.
    pub keys_file: Option<PathBuf>,
    /// Header (gRPC metadata key) carrying the key, as `Bearer <key>` or the bare key.
    pub header: String,
    /// Refuse requests without a known key (gRPC UNAUTHENTICATED, HTTP 401).
    pub require_key: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys_file: None,
            header: default_auth_header(),
            require_key: false,
        }
    }
}

fn default_auth_header() -> String {
    "authorization".into()
}

impl AuthConfig {
    fn problems(&self, out: &mut Vec<String>) {
        if http::HeaderName::from_bytes(self.header.to_ascii_lowercase().as_bytes()).is_err() {
            out.push(format!(
                "auth.header {:?} is not a valid header name (e.g. \"authorization\" or \"x-api-key\")",
                self.header
            ));
        }
        if self.require_key && self.keys_file.is_none() {
            out.push(
                "auth.require_key = true needs auth.keys_file (otherwise every request is refused)"
                    .into(),
            );
        }
    }
}

/// `[tenant]`: how the tenant of a span is found.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Resource attribute naming the tenant, tried first.
    pub resource_attribute: String,
    /// gRPC metadata key / HTTP header naming the tenant, tried second.
    pub header: String,
    /// Tenant of spans that name none.
    pub default: String,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            resource_attribute: "tenant.id".into(),
            header: "x-tenant-id".into(),
            default: "default".into(),
        }
    }
}

/// `[buffer]`: holding spans until their trace is decided.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Decide this long after the root span arrived.
    pub root_grace: HumanDuration,
    /// Decide at the latest this long after the first span arrived.
    pub trace_timeout: HumanDuration,
    /// Decide a trace as soon as it holds this many spans.
    pub max_spans_per_trace: usize,
    /// Budget for buffered spans; above 90% of it the oldest traces are decided early, at it
    /// new data is refused with retryable codes.
    pub max_memory: ByteSize,
    /// Number of buffer shards (0 = one per CPU core).
    pub shards: usize,
    /// Decisions remembered per proxy so late spans follow their trace's fate.
    pub decision_cache_traces: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            root_grace: HumanDuration(Duration::from_secs(2)),
            trace_timeout: HumanDuration(Duration::from_secs(30)),
            max_spans_per_trace: 10_000,
            max_memory: ByteSize(1 << 30),
            shards: 0,
            decision_cache_traces: 200_000,
        }
    }
}

/// `[rules]`: where the sampling rules live.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The rules file. When it is the default path and does not exist, built-in rules equal
    /// to the shipped `rules/default.toml` are used.
    pub file: PathBuf,
    /// Reload the rules when the file changes on disk (debounced 200 ms).
    pub watch: bool,
    /// A candidate rules file evaluated beside the live rules without deciding anything
    /// (reported by `GET /api/v1/rules/shadow`); none by default.
    pub shadow_file: Option<PathBuf>,
    /// JSON state file for runtime tenant tags, written atomically, read at start.
    pub tags_file: PathBuf,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            file: PathBuf::from(DEFAULT_RULES_FILE),
            watch: true,
            shadow_file: None,
            tags_file: PathBuf::from(DEFAULT_TAGS_FILE),
        }
    }
}

/// The default tenant-tag state file.
pub const DEFAULT_TAGS_FILE: &str = "tailsift-tags.json";

/// The default rules path.
pub const DEFAULT_RULES_FILE: &str = "rules/default.toml";

/// Where kept traces go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// OTLP/JSON lines in a local file (the embedded default backend).
    #[default]
    File,
    /// OTLP/gRPC to `endpoint`.
    OtlpGrpc,
    /// OTLP/HTTP protobuf to `endpoint` + `/v1/traces`.
    OtlpHttp,
}

/// How export request bodies are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (`content-encoding: gzip` / `grpc-encoding: gzip`): understood by every OTLP backend.
    Gzip,
    /// zstd: less CPU than gzip for the same ratio, where the backend accepts it.
    Zstd,
    /// Uncompressed.
    None,
}

impl Compression {
    /// The encoding's name as written in the config and in `content-encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

/// Header names the exporters set themselves (or that HTTP/2 forbids), so `[export.headers]`
/// may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "te",
    "user-agent",
];

/// `[export.headers]`: static headers (gRPC metadata) sent with every export request, e.g. an
/// API key. Values may hold `${VAR}`, expanded from the environment when the config is loaded.
/// Values are secrets: `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ExportHeaders(BTreeMap<String, String>);

impl fmt::Debug for ExportHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl ExportHeaders {
    /// Headers from `(name, value)` pairs, as if written in the file (values not yet expanded).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        ExportHeaders(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether no header is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every `${VAR}` in the values using `lookup`; returns one problem per value that
    /// names a variable `lookup` does not know (that value is left as written).
    pub fn expand_env(&mut self, lookup: impl Fn(&str) -> Result<String, String>) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in self.0.iter_mut() {
            match expand_vars(value, &lookup) {
                Ok(expanded) => *value = expanded,
                Err(why) => problems.push(format!("export.headers.{name:?}: {why}")),
            }
        }
        problems
    }

    /// Problems with names or (expanded) values; never quotes a value, which may be a secret.
    fn problems(&self, out: &mut Vec<String>) {
        for (name, value) in &self.0 {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => out.push(format!(
                    "export.headers.{name:?} is not a valid header name (use letters, digits and '-', e.g. \"x-api-key\")"
                )),
                Ok(parsed) => {
                    let lower = parsed.as_str();
                    if RESERVED_HEADERS.contains(&lower) || lower.starts_with("grpc-") {
                        out.push(format!(
                            "export.headers.{name:?} is set by the exporter itself and cannot be overridden"
                        ));
                    } else if lower.ends_with("-bin") {
                        out.push(format!(
                            "export.headers.{name:?}: binary (-bin) gRPC metadata is not supported; use a text header"
                        ));
                    }
                }
            }
            if http::HeaderValue::from_str(value).is_err() {
                out.push(format!(
                    "export.headers.{name:?}: the value (after ${{VAR}} expansion) is not a valid header value: no control characters or line breaks"
                ));
            }
        }
    }
}

/// `[export] pass_through_headers`: names of incoming request headers (gRPC metadata / HTTP
/// headers, matched case-insensitively) whose values travel with the request's spans and are
/// sent with them on export. Empty by default (nothing is captured).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct PassThroughHeaders(Vec<String>);

impl PassThroughHeaders {
    /// Names as if written in the file.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        PassThroughHeaders(names.into_iter().map(str::to_string).collect())
    }

    /// Whether no header is passed through.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names as header names (lower-case, duplicates removed); invalid names were refused
    /// by validation and are skipped here.
    pub fn names(&self) -> Vec<http::HeaderName> {
        let mut names: Vec<http::HeaderName> = Vec::new();
        for name in &self.0 {
            if let Ok(parsed) = http::HeaderName::from_bytes(name.as_bytes()) {
                if !names.contains(&parsed) {
                    names.push(parsed);
                }
            }
        }
        names
    }

    /// Problems with the names: invalid, or set by the transport or the exporter itself.
    fn problems(&self, out: &mut Vec<String>) {
        for name in &self.0 {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => out.push(format!(
                    "export.pass_through_headers: {name:?} is not a valid header name (use letters, digits and '-', e.g. \"x-honeycomb-team\")"
                )),
                Ok(parsed) => {
                    let lower = parsed.as_str();
                    if RESERVED_HEADERS.contains(&lower) || lower.starts_with("grpc-") {
                        out.push(format!(
                            "export.pass_through_headers: {name:?} is set by the transport or the exporter itself and cannot be passed through"
                        ));
                    } else if lower.ends_with("-bin") {
                        out.push(format!(
                            "export.pass_through_headers: {name:?}: binary (-bin) gRPC metadata is not supported; use a text header"
                        ));
                    }
                }
            }
        }
    }
}

/// Expands `${NAME}` references; any other `$` is kept literally.
fn expand_vars(
    value: &str,
    lookup: &impl Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("\"${\" without a closing \"}\"".into());
        };
        let var = &after[..end];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "${{{var}}} is not a variable reference: names are letters, digits and '_'"
            ));
        }
        out.push_str(&lookup(var)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Looks a variable up in the process environment, saying which one is missing.
fn env_lookup(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) => Ok(v),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "environment variable {var} is not set (it is referenced as ${{{var}}})"
        )),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable {var} is not valid UTF-8"))
        }
    }
}

/// `[export]`: where kept traces go and how.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// file | otlp_grpc | otlp_http.
    pub kind: ExportKind,
    /// Backend URL for otlp_grpc / otlp_http (`http://host:port`).
    pub endpoint: String,
    /// Output file for `kind = "file"`.
    pub path: PathBuf,
    /// Integer attribute carrying each kept span's sample rate.
    pub sample_rate_attribute: String,
    /// Most spans per export request.
    pub batch_max_spans: usize,
    /// Longest a kept span waits for its batch to fill.
    pub batch_timeout: HumanDuration,
    /// Kept spans waiting for export, in bytes; beyond it spans are dropped (counted as
    /// `export_overflow`). Default: a quarter of `buffer.max_memory`.
    pub queue_max_bytes: Option<ByteSize>,
    /// Export requests in flight at once.
    pub max_in_flight: usize,
    /// Timeout of one export request.
    pub request_timeout: HumanDuration,
    /// First retry delay (doubled per attempt, with jitter).
    pub retry_initial: HumanDuration,
    /// Longest retry delay.
    pub retry_max: HumanDuration,
    /// Give up on a batch after retrying this long (its spans are counted `export_failed`).
    pub retry_max_elapsed: HumanDuration,
    /// Directory of the disk spool; when set, batches the backend refuses with a retryable
    /// error are written here and replayed oldest first (also after a restart).
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool may hold; beyond it batches are retried in memory.
    pub spool_max_bytes: ByteSize,
    /// Compression of export requests; unset: gzip for `https://` endpoints, none otherwise
    /// (see [`ExportConfig::compression`]).
    #[serde(rename = "compression")]
    pub compression_setting: Option<Compression>,
    /// Static headers sent with every export request (API keys); `${VAR}` is expanded.
    pub headers: ExportHeaders,
    /// Incoming request headers sent with the request's spans on export; a static header of
    /// the same name wins.
    pub pass_through_headers: PassThroughHeaders,
    /// Extra PEM CA certificates trusted for `https://` endpoints, besides the webpki roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain presented to the backend (mTLS); needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the server certificate instead of the endpoint's host.
    pub tls_server_name: Option<String>,
    /// `[export.tls]`, the documented spelling of the four `tls_*` keys above (which stay as
    /// aliases); moved into them when the config is loaded.
    #[serde(rename = "tls")]
    pub tls_table: Option<ExportTlsConfig>,
    /// Metrics requests waiting for export, in bytes; when full, receive refuses metrics with
    /// the retryable codes (gRPC UNAVAILABLE, HTTP 503).
    pub metrics_queue_max_bytes: ByteSize,
    /// OTLP/HTTP URL metrics are sent to; unset: `endpoint` + `/v1/metrics`.
    pub metrics_endpoint: Option<String>,
    /// Output file of metrics for `kind = "file"` (OTLP/JSON lines).
    pub metrics_path: PathBuf,
    /// OTLP/HTTP URL logs are sent to; unset: `endpoint` + `/v1/logs`.
    pub logs_endpoint: Option<String>,
    /// Output file of kept logs for `kind = "file"` (OTLP/JSON lines).
    pub logs_path: PathBuf,
}

/// `[export.tls]`: how the exporters verify the backend and identify themselves to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTlsConfig {
    /// Extra PEM CA certificates trusted besides the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mTLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// SNI and verification name instead of the endpoint's host.
    pub server_name: Option<String>,
}

impl ExportConfig {
    /// Whether the endpoint is `https://` (TLS, and gzip by default).
    pub fn is_https(&self) -> bool {
        self.endpoint
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    /// The compression in force: the configured one, else gzip for `https://`, else none.
    pub fn compression(&self) -> Compression {
        match self.compression_setting {
            Some(c) => c,
            None if self.is_https() => Compression::Gzip,
            None => Compression::None,
        }
    }

    /// Which TLS keys are set, named as in the `[export.tls]` table (for messages about keys
    /// that do not apply).
    fn tls_keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.tls_ca_file.is_some() {
            keys.push("tls.ca_file");
        }
        if self.tls_cert_file.is_some() {
            keys.push("tls.cert_file");
        }
        if self.tls_key_file.is_some() {
            keys.push("tls.key_file");
        }
        if self.tls_server_name.is_some() {
            keys.push("tls.server_name");
        }
        keys
    }

    /// Problems with the `[export]` keys, each naming the key and the fix.
    fn problems(&self, problems: &mut Vec<String>) {
        if self.kind != ExportKind::File {
            match self.endpoint.parse::<http::Uri>() {
                Ok(uri)
                    if (uri.scheme_str() == Some("http") || uri.scheme_str() == Some("https"))
                        && uri.host().is_some() => {}
                _ => problems.push(format!(
                    "export.endpoint {:?} must be a URL like \"http://127.0.0.1:4317\" or \"https://api.example.com:443\"",
                    self.endpoint
                )),
            }
            let tls_keys = self.tls_keys_set();
            if !self.is_https() && !tls_keys.is_empty() {
                problems.push(format!(
                    "export.{} set, but export.endpoint {:?} is not https://: TLS settings would be ignored; use an https:// endpoint or remove them",
                    tls_keys.join(", export."),
                    self.endpoint
                ));
            }
            match (&self.tls_cert_file, &self.tls_key_file) {
                (Some(_), None) => problems.push(
                    "export.tls.cert_file needs export.tls.key_file (the client certificate's private key)".into(),
                ),
                (None, Some(_)) => problems.push(
                    "export.tls.key_file needs export.tls.cert_file (the client certificate it belongs to)".into(),
                ),
                _ => {}
            }
            if let Some(name) = &self.tls_server_name {
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    problems.push(format!(
                        "export.tls.server_name {name:?} must be a DNS name or an IP address"
                    ));
                }
            }
            self.headers.problems(problems);
        }
        for (key, url, example) in [
            ("metrics_endpoint", &self.metrics_endpoint, "/v1/metrics"),
            ("logs_endpoint", &self.logs_endpoint, "/v1/logs"),
        ] {
            let Some(url) = url else { continue };
            match url.parse::<http::Uri>() {
                Ok(uri)
                    if (uri.scheme_str() == Some("http") || uri.scheme_str() == Some("https"))
                        && uri.host().is_some() => {}
                _ => problems.push(format!(
                    "export.{key} {url:?} must be a URL like \"http://127.0.0.1:4318{example}\""
                )),
            }
        }
        if self.metrics_queue_max_bytes.0 == 0 {
            problems
                .push("export.metrics_queue_max_bytes must be more than 0 (e.g. \"16MiB\")".into());
        }
        self.pass_through_headers.problems(problems);
    }
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            kind: ExportKind::File,
            endpoint: "http://127.0.0.1:14317".into(),
            path: PathBuf::from("tailsift-kept.jsonl"),
            sample_rate_attribute: "SampleRate".into(),
            batch_max_spans: 8192,
            batch_timeout: HumanDuration(Duration::from_millis(200)),
            queue_max_bytes: None,
            max_in_flight: 4,
            request_timeout: HumanDuration(Duration::from_secs(10)),
            retry_initial: HumanDuration(Duration::from_millis(100)),
            retry_max: HumanDuration(Duration::from_secs(5)),
            retry_max_elapsed: HumanDuration(Duration::from_secs(60)),
            spool_dir: None,
            spool_max_bytes: ByteSize(1 << 30),
            compression_setting: None,
            headers: ExportHeaders::default(),
            pass_through_headers: PassThroughHeaders::default(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            tls_table: None,
            metrics_queue_max_bytes: ByteSize(16 << 20),
            metrics_endpoint: None,
            metrics_path: PathBuf::from("tailsift-metrics.jsonl"),
            logs_endpoint: None,
            logs_path: PathBuf::from("tailsift-kept-logs.jsonl"),
        }
    }
}

impl ExportConfig {
    /// Moves `[export.tls]` into the flat `tls_*` fields the exporters read; setting a key in
    /// both spellings is a problem.
    fn merge_tls_table(&mut self, problems: &mut Vec<String>) {
        let Some(table) = self.tls_table.take() else {
            return;
        };
        // Before the merge only the flat spellings can be set: name them as written.
        let flat: Vec<String> = self
            .tls_keys_set()
            .iter()
            .map(|k| k.replace("tls.", "tls_"))
            .collect();
        if !flat.is_empty() {
            problems.push(format!(
                "[export.tls] and export.{} are both set: use only the [export.tls] table (ca_file, cert_file, key_file, server_name)",
                flat.join(", export.")
            ));
            return;
        }
        self.tls_ca_file = table.ca_file;
        self.tls_cert_file = table.cert_file;
        self.tls_key_file = table.key_file;
        self.tls_server_name = table.server_name;
    }
}

/// `[admin]`: the admin HTTP API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address of the admin API (keep it on loopback or a private network).
    pub listen: SocketAddr,
    /// A file holding the bearer token that mutating admin calls must send (re-read on
    /// SIGHUP and rules reload); absent: `TAILSIFT_ADMIN_TOKEN`, else no token.
    pub token_file: Option<PathBuf>,
    /// Also require the token for reads (everything but `/healthz`, `/readyz`, `/metrics`
    /// and the dashboard page).
    pub require_token_for_reads: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
            require_token_for_reads: false,
        }
    }
}

/// `[shutdown]`: what happens on SIGTERM / SIGINT.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Deadline for deciding every buffered trace and flushing the export queue; what is
    /// still unsent then is counted as `shutdown_deadline`.
    pub timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[logs]`: what happens to OTLP log records that carry no trace id (records with one are
/// held with their trace and follow its decision).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Keep 1 in this many log records without a trace id, each exported with the
    /// `SampleRate` attribute; 1 (the default) passes every one through unchanged.
    pub untraced_sample_rate: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            untraced_sample_rate: 1,
        }
    }
}

/// `[stats]`: per-tenant statistics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Most tenants counted separately; later tenants are counted together as `_other`
    /// (bounds the memory and the `/metrics` size).
    pub max_tenants: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            max_tenants: crate::stats::tenant::DEFAULT_MAX_TENANTS,
        }
    }
}

/// How a cluster finds its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipKind {
    /// `peers` lists every member (re-read on SIGHUP and the rules reload API).
    Static,
    /// `dns_name` re-resolved every `dns_interval` (A/AAAA with `dns_port`, or SRV).
    Dns,
    /// Members register themselves in Redis with a TTL.
    Redis,
}

/// `[cluster]`: membership, the peer listener and forwarding between peers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// static | dns | redis.
    pub membership: MembershipKind,
    /// Listen address of the peer protocol.
    #[serde(default = "default_peer_listen")]
    pub peer_listen: SocketAddr,
    /// How the other members reach this node (`host:port`); default: this host's name and
    /// the `peer_listen` port.
    #[serde(default)]
    pub advertise: Option<String>,
    /// static: every member's advertise address, this node's included.
    #[serde(default)]
    pub peers: Vec<String>,
    /// dns: the name to resolve (A/AAAA records, or SRV records when it starts with `_`).
    #[serde(default)]
    pub dns_name: Option<String>,
    /// dns: the peer port for A/AAAA records (SRV records carry their own).
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
    /// dns: how often `dns_name` is resolved again.
    #[serde(default = "default_dns_interval")]
    pub dns_interval: HumanDuration,
    /// dns: ask this server (`ip:port`, UDP) instead of the system resolver.
    #[serde(default)]
    pub dns_server: Option<SocketAddr>,
    /// redis: where members register (`redis://host:port/db`).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// redis: prefix of every key and channel, so several clusters can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// redis: a member that has not renewed its registration for this long is gone.
    #[serde(default = "default_member_ttl")]
    pub member_ttl: HumanDuration,
    /// Spans queued for one peer, in bytes (counted in `buffer.max_memory`); when full,
    /// requests with spans for that peer are refused with retryable codes.
    #[serde(default = "default_forward_queue_max_bytes")]
    pub forward_queue_max_bytes: ByteSize,
    /// Most spans in one forwarded batch.
    #[serde(default = "default_forward_batch_max_spans")]
    pub forward_batch_max_spans: usize,
    /// Longest a span waits for its forwarded batch to fill.
    #[serde(default = "default_forward_batch_timeout")]
    pub forward_batch_timeout: HumanDuration,
    /// Timeout of one forward call to a peer.
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout: HumanDuration,
    /// First retry delay of a failed forward (doubled per attempt up to `forward_retry_max`).
    #[serde(default = "default_forward_retry_initial")]
    pub forward_retry_initial: HumanDuration,
    /// Longest retry delay of a failed forward.
    #[serde(default = "default_forward_retry_max")]
    pub forward_retry_max: HumanDuration,
    /// A peer whose forward calls have all failed for this long is treated as gone (its share
    /// goes to the others) until it answers again; "0s": never (wait for membership).
    #[serde(default = "default_peer_down_after")]
    pub peer_down_after: HumanDuration,
    /// `[cluster.tls]`: mutual TLS between peers; absent: plaintext peer protocol.
    #[serde(default)]
    pub tls: Option<PeerTlsConfig>,
}

/// `[cluster.tls]`: every node presents `cert_file` (as server and as client) and accepts only
/// peers whose certificate `ca_file` signed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// PEM certificate chain of this node, leaf first, valid for TLS server and client use.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA certificates that sign the members' certificates (only these are trusted).
    pub ca_file: PathBuf,
    /// Name to verify every peer's certificate against, instead of the host of its advertise
    /// address (e.g. one shared `tailsift-peer` name).
    #[serde(default)]
    pub server_name: Option<String>,
    /// How often the server side re-reads the files (certificate rotation).
    #[serde(default = "default_tls_check_interval")]
    pub check_interval: HumanDuration,
}

impl PeerTlsConfig {
    /// The same files as the receive listeners' TLS settings, for the peer listener.
    pub fn server_files(&self) -> ReceiveTlsConfig {
        ReceiveTlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: Some(self.ca_file.clone()),
            check_interval: self.check_interval,
            handshake_timeout: default_tls_handshake_timeout(),
        }
    }
}

fn default_peer_down_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}
fn default_peer_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4319))
}
fn default_dns_port() -> u16 {
    4319
}
fn default_dns_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_redis_prefix() -> String {
    "tailsift".into()
}
fn default_member_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_forward_queue_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_forward_batch_max_spans() -> usize {
    2048
}
fn default_forward_batch_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(20))
}
fn default_forward_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_forward_retry_initial() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}
fn default_forward_retry_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

/// The environment variable that overrides `cluster.advertise`.
pub const ADVERTISE_ENV: &str = "TAILSIFT_ADVERTISE";

impl ClusterConfig {
    /// This node's advertise address: the `TAILSIFT_ADVERTISE` environment variable (so a
    /// Kubernetes manifest can pass `$(POD_IP):4319`), else `advertise`, else the host name
    /// and the peer port.
    pub fn advertise_address(&self) -> String {
        let from_env = std::env::var(ADVERTISE_ENV).ok().filter(|a| !a.is_empty());
        match from_env.as_ref().or(self.advertise.as_ref()) {
            Some(a) => a.clone(),
            None => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .or_else(|| {
                        std::fs::read_to_string("/etc/hostname")
                            .ok()
                            .map(|h| h.trim().to_string())
                            .filter(|h| !h.is_empty())
                    })
                    .unwrap_or_else(|| "localhost".into());
                format!("{host}:{}", self.peer_listen.port())
            }
        }
    }

    fn problems(&self, out: &mut Vec<String>) {
        match self.membership {
            MembershipKind::Static => {
                if self.peers.is_empty() {
                    out.push("cluster.peers must list every member (this node's advertise address included) when cluster.membership = \"static\"".into());
                }
                for p in &self.peers {
                    if !valid_host_port(p) {
                        out.push(format!("cluster.peers: {p:?} is not host:port"));
                    }
                }
            }
            MembershipKind::Dns | MembershipKind::Redis => {}
        }
        match self.membership {
            MembershipKind::Static => {}
            MembershipKind::Dns => {
                if self.dns_name.as_deref().is_none_or(str::is_empty) {
                    out.push(
                        "cluster.dns_name is required when cluster.membership = \"dns\"".into(),
                    );
                }
                if self.dns_interval.0 < Duration::from_millis(100) {
                    out.push("cluster.dns_interval must be at least 100ms".into());
                }
            }
            MembershipKind::Redis => match self.redis_url.as_deref() {
                None | Some("") => out.push(
                    "cluster.redis_url is required when cluster.membership = \"redis\"".into(),
                ),
                Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => {
                    out.push(format!("cluster.redis_url {u:?} must start with redis://"))
                }
                Some(u) => {
                    if let Err(e) = redis::Client::open(u) {
                        out.push(format!("cluster.redis_url {u:?}: {e}"));
                    }
                    if self.member_ttl.0 < Duration::from_secs(1) {
                        out.push("cluster.member_ttl must be at least 1s (registrations are renewed every 500ms)".into());
                    }
                }
            },
        }
        if let Ok(a) = std::env::var(ADVERTISE_ENV) {
            if !a.is_empty() && !valid_host_port(&a) {
                out.push(format!("{ADVERTISE_ENV}: {a:?} is not host:port"));
            }
        }
        if let Some(a) = &self.advertise {
            if !valid_host_port(a) {
                out.push(format!("cluster.advertise: {a:?} is not host:port"));
            }
        }
        if self.member_ttl.0 < Duration::from_secs(1) {
            out.push("cluster.member_ttl must be at least 1s".into());
        }
        if self.forward_queue_max_bytes.0 < 1 << 20 {
            out.push("cluster.forward_queue_max_bytes must be at least 1MiB".into());
        }
        if self.forward_batch_max_spans == 0 {
            out.push("cluster.forward_batch_max_spans must be at least 1".into());
        }
        if self.forward_retry_initial.0 > self.forward_retry_max.0 {
            out.push(
                "cluster.forward_retry_initial must not exceed cluster.forward_retry_max".into(),
            );
        }
    }
}

/// `host:port` with a non-empty host and a numeric port (`[v6]:port` for IPv6).
fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text, with the process's `TAILSIFT_<SECTION>__<KEY>`
    /// overrides applied; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, env_lookup, &env_overrides())
    }

    /// Like [`Config::parse`] with `lookup` standing in for the environment (`${VAR}` in
    /// `[export.headers]`), so tests need not change the process environment.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        lookup: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, lookup, &[])
    }

    /// Like [`Config::parse_with_env`], with `overrides` (variable, value) standing in for the
    /// environment's `TAILSIFT_<SECTION>__<KEY>` variables. They are set in the parsed TOML
    /// tree before it is deserialised, so values get the key's type and unknown keys are
    /// refused like unknown keys in the file.
    pub fn parse_with(
        text: &str,
        path: &Path,
        lookup: impl Fn(&str) -> Result<String, String>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut problems = Vec::new();
        let (mut config, from_env): (Config, _) = if overrides.is_empty() {
            (toml::from_str(text).map_err(parse_error)?, Vec::new())
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
            let from_env = apply_env_overrides(&mut table, overrides, &mut problems);
            match toml::Value::Table(table).try_into() {
                Ok(c) => (c, from_env),
                Err(e) => {
                    // A mistake in the file itself is reported with its line and column.
                    toml::from_str::<Config>(text).map_err(parse_error)?;
                    let vars: Vec<&str> = from_env.iter().map(|o| o.var.as_str()).collect();
                    return Err(ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: format!(
                            "{} (with keys set from the environment: {})",
                            e.to_string().trim_end(),
                            vars.join(", ")
                        ),
                    });
                }
            }
        };
        config.from_env = from_env;
        problems.extend(config.export.headers.expand_env(lookup));
        config.export.merge_tls_table(&mut problems);
        config.problems(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Checks values that parse but cannot work (each problem names its key and the fix).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.problems(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        let b = &self.buffer;
        if b.root_grace.0 > b.trace_timeout.0 {
            problems.push(format!(
                "buffer.root_grace ({}) must not exceed buffer.trace_timeout ({})",
                b.root_grace, b.trace_timeout
            ));
        }
        if b.max_spans_per_trace == 0 {
            problems.push("buffer.max_spans_per_trace must be at least 1".into());
        }
        if b.max_memory.0 < 1 << 20 {
            problems.push("buffer.max_memory must be at least 1MiB".into());
        }
        if self.receive.max_request_bytes.0 < 1024 {
            problems.push("receive.max_request_bytes must be at least 1KiB".into());
        }
        if self.stats.max_tenants == 0 {
            problems.push("stats.max_tenants must be at least 1".into());
        }
        if self.logs.untraced_sample_rate == 0 {
            problems.push(
                "logs.untraced_sample_rate must be at least 1 (1 keeps every log record without a trace id)"
                    .into(),
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster.problems(problems);
        }
        if let Some(auth) = &self.auth {
            auth.problems(problems);
        }
        let r = &self.receive;
        if r.idle_timeout.0 <= r.queue_timeout.0 {
            problems.push(format!(
                "receive.idle_timeout ({}) must be longer than receive.queue_timeout ({}): a request waiting for room would be cut off",
                r.idle_timeout, r.queue_timeout
            ));
        }
        for (key, d) in [
            ("header_read_timeout", r.header_read_timeout),
            ("http2_keepalive_interval", r.http2_keepalive_interval),
            ("http2_keepalive_timeout", r.http2_keepalive_timeout),
        ] {
            if d.0 < Duration::from_millis(100) {
                problems.push(format!("receive.{key} must be at least 100ms"));
            }
        }
        if let Some(tls) = &r.tls {
            if tls.check_interval.0 < Duration::from_millis(100) {
                problems.push("receive.tls.check_interval must be at least 100ms".into());
            }
        }
        if self.receive.max_concurrent_requests == 0 {
            problems.push("receive.max_concurrent_requests must be at least 1".into());
        }
        let e = &self.export;
        e.problems(problems);
        if e.sample_rate_attribute.is_empty() {
            problems.push("export.sample_rate_attribute must not be empty".into());
        }
        if e.batch_max_spans == 0 || e.max_in_flight == 0 {
            problems
                .push("export.batch_max_spans and export.max_in_flight must be at least 1".into());
        }
        if e.retry_initial.0 > e.retry_max.0 {
            problems.push("export.retry_initial must not exceed export.retry_max".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.receive.grpc_listen.port(), 4317);
        assert_eq!(c.receive.http_listen.port(), 4318);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.buffer.root_grace.0, Duration::from_secs(2));
        assert_eq!(c.buffer.max_memory.0, 1 << 30);
        assert_eq!(c.export.kind, ExportKind::File);
        assert_eq!(c.rules.file, PathBuf::from("rules/default.toml"));
        assert!(c.rules.watch);
        assert_eq!(c.rules.shadow_file, None);
        assert_eq!(c.rules.tags_file, PathBuf::from("tailsift-tags.json"));
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse_with(text, Path::new("t.toml"), |_| Err("unset".into()), &vars)
    }

    #[test]
    fn environment_variables_override_keys_with_the_keys_types() {
        let c = with_env(
            "[buffer]\nmax_memory = \"1GiB\"\n",
            &[
                ("TAILSIFT_BUFFER__MAX_MEMORY", "2GiB"),
                ("TAILSIFT_BUFFER__MAX_SPANS_PER_TRACE", "77"),
                ("TAILSIFT_RULES__WATCH", "false"),
                ("TAILSIFT_ADMIN__LISTEN", "127.0.0.1:9999"),
                ("TAILSIFT_EXPORT__ENDPOINT", "https://api.example.com:443"),
                ("TAILSIFT_TENANT__DEFAULT", "\"123\""),
            ],
        )
        .unwrap();
        assert_eq!(c.buffer.max_memory.0, 2 << 30);
        assert_eq!(c.buffer.max_spans_per_trace, 77);
        assert!(!c.rules.watch);
        assert_eq!(c.admin.listen.port(), 9999);
        assert_eq!(c.export.endpoint, "https://api.example.com:443");
        assert_eq!(c.tenant.default, "123");
        let keys: Vec<&str> = c.from_env.iter().map(|o| o.key.as_str()).collect();
        assert!(keys.contains(&"buffer.max_memory") && keys.contains(&"admin.listen"));
    }

    #[test]
    fn an_environment_variable_can_add_a_section_the_file_lacks() {
        let c = with_env(
            "",
            &[
                ("TAILSIFT_CLUSTER__MEMBERSHIP", "static"),
                (
                    "TAILSIFT_CLUSTER__PEERS",
                    "[\"10.0.0.1:4319\", \"10.0.0.2:4319\"]",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.cluster.unwrap().peers.len(), 2);
    }

    #[test]
    fn an_environment_variable_for_an_unknown_key_is_refused_by_name() {
        let e = with_env("", &[("TAILSIFT_BUFFER__MAX_MEMROY", "2GiB")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_memroy") && e.contains("TAILSIFT_BUFFER__MAX_MEMROY"),
            "{e}"
        );
        let e = with_env(
            "[buffer]\n",
            &[("TAILSIFT_BUFFER", "x"), ("TAILSIFT___X", "1")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("TAILSIFT___X"), "{e}");
        let e = with_env(
            "[buffer]\nmax_memory = \"1GiB\"\n",
            &[("TAILSIFT_BUFFER__MAX_MEMORY__X", "1")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("buffer.max_memory is a value"), "{e}");
    }

    #[test]
    fn a_cluster_section_parses_with_its_documented_names_and_checks_each_kind() {
        let ok = Config::parse(
            "[cluster]\nmembership = \"static\"\npeer_listen = \"127.0.0.1:4319\"\nadvertise = \"10.1.2.3:4319\"\npeers = [\"10.1.2.3:4319\", \"10.1.2.4:4319\"]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!(c.membership, MembershipKind::Static);
        assert_eq!(c.advertise_address(), "10.1.2.3:4319");
        assert_eq!(c.member_ttl.0, Duration::from_secs(5));
        let err = |text: &str| {
            Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("[cluster]\nmembership = \"static\"\n").contains("cluster.peers"));
        assert!(err("[cluster]\nmembership = \"dns\"\n").contains("cluster.dns_name"));
        assert!(err("[cluster]\nmembership = \"redis\"\n").contains("cluster.redis_url"));
        assert!(err("[cluster]\nmembership = \"gossip\"\n").contains("gossip"));
        assert!(
            err("[cluster]\nmembership = \"static\"\npeers = [\"a:1\"]\npeerz = 1\n")
                .contains("peerz")
        );
        assert!(Config::parse("", Path::new("t.toml"))
            .unwrap()
            .cluster
            .is_none());
    }

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
[receive]
grpc_listen = "0.0.0.0:4317"
http_listen = "0.0.0.0:4318"
max_request_bytes = "16MiB"
[tenant]
resource_attribute = "tenant.id"
header = "x-tenant-id"
default = "default"
[buffer]
root_grace = "2s"
trace_timeout = "30s"
max_spans_per_trace = 10000
max_memory = "1GiB"
[rules]
file = "rules/default.toml"
watch = true
tags_file = "tailsift-tags.json"
[export]
kind = "file"
endpoint = "http://127.0.0.1:14317"
path = "tailsift-kept.jsonl"
sample_rate_attribute = "SampleRate"
[admin]
listen = "127.0.0.1:8080"
"#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.receive.max_request_bytes.0, 16 << 20);
    }

    #[test]
    fn the_shipped_example_with_every_key_is_valid() {
        let text = include_str!("../config.example.toml");
        let c = Config::parse(text, Path::new("config.example.toml")).unwrap();
        assert_eq!(c.export.batch_max_spans, 8192);
        assert_eq!(c.shutdown.timeout.0, Duration::from_secs(30));
    }

    #[test]
    fn metrics_keys_have_documented_defaults_and_a_bad_metrics_endpoint_is_named() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.export.metrics_queue_max_bytes.0, 16 << 20);
        assert_eq!(c.export.metrics_endpoint, None);
        assert_eq!(
            c.export.metrics_path,
            PathBuf::from("tailsift-metrics.jsonl")
        );
        let err = Config::parse(
            "[export]\nkind = \"otlp_http\"\nendpoint = \"http://127.0.0.1:4318\"\nmetrics_endpoint = \"not a url\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("export.metrics_endpoint"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line_number() {
        let err = Config::parse(
            "[buffer]\nroot_grace = \"2s\"\nroot_grase = \"1s\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("root_grase"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_units_explain_the_fix() {
        let err = Config::parse(
            "[buffer]\nroot_grace = \"2 parsecs\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown unit"), "{err}");
        assert!(parse_duration("1.5s").unwrap() == Duration::from_millis(1500));
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
    }

    #[test]
    fn root_grace_equal_to_trace_timeout_is_accepted_and_only_longer_is_an_error() {
        let equal = "[buffer]\nroot_grace = \"30s\"\ntrace_timeout = \"30s\"\n";
        assert!(Config::parse(equal, Path::new("c.toml")).is_ok());
        let longer = "[buffer]\nroot_grace = \"31s\"\ntrace_timeout = \"30s\"\n";
        let err = Config::parse(longer, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must not exceed buffer.trace_timeout"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_values_are_reported_together() {
        let err = Config::parse(
            "[buffer]\nroot_grace = \"40s\"\nmax_spans_per_trace = 0\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("root_grace") && err.contains("max_spans_per_trace"),
            "{err}"
        );
    }

    fn env(
        vars: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Result<String, String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .ok_or_else(|| format!("environment variable {name} is not set"))
        }
    }

    const HOSTED: &str =
        "[export]\nkind = \"otlp_grpc\"\nendpoint = \"https://api.honeycomb.io:443\"\n";

    #[test]
    fn header_values_expand_environment_variables() {
        let text = format!(
            "{HOSTED}[export.headers]\n\"x-honeycomb-team\" = \"${{KEY}}\"\n\"x-env\" = \"pre-${{ENV}}-post $HOME\"\n"
        );
        let c = Config::parse_with_env(
            &text,
            Path::new("c.toml"),
            env(&[("KEY", "s3cret"), ("ENV", "prod")]),
        )
        .unwrap();
        let headers: Vec<(&str, &str)> = c.export.headers.iter().collect();
        assert_eq!(
            headers,
            vec![
                ("x-env", "pre-prod-post $HOME"),
                ("x-honeycomb-team", "s3cret")
            ]
        );
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret"),
            "header values are never shown: {debug}"
        );
    }

    #[test]
    fn a_missing_header_variable_is_an_error_naming_it() {
        let text = format!("{HOSTED}[export.headers]\n\"x-api-key\" = \"${{MISSING_VAR}}\"\n");
        let err = Config::parse_with_env(&text, Path::new("c.toml"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MISSING_VAR") && err.contains("x-api-key"),
            "{err}"
        );
    }

    #[test]
    fn invalid_header_names_and_values_are_errors_that_never_quote_the_value() {
        let text = format!(
            "{HOSTED}[export.headers]\n\"bad name\" = \"x\"\n\"x-key\" = \"line\\nbreak-s3cret\"\n\"content-type\" = \"text/plain\"\n"
        );
        let err = Config::parse_with_env(&text, Path::new("c.toml"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"bad name\" is not a valid header name"),
            "{err}"
        );
        assert!(
            err.contains("\"x-key\"") && !err.contains("s3cret"),
            "{err}"
        );
        assert!(
            err.contains("\"content-type\" is set by the exporter"),
            "{err}"
        );
    }

    #[test]
    fn pass_through_headers_default_to_none_and_match_names_in_any_case() {
        let c = Config::parse(HOSTED, Path::new("c.toml")).unwrap();
        assert!(c.export.pass_through_headers.is_empty());
        let text = format!(
            "{HOSTED}pass_through_headers = [\"X-Honeycomb-Team\", \"authorization\", \"x-honeycomb-team\"]\n"
        );
        let c = Config::parse(&text, Path::new("c.toml")).unwrap();
        let names: Vec<String> = c
            .export
            .pass_through_headers
            .names()
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        assert_eq!(names, ["x-honeycomb-team", "authorization"]);
    }

    #[test]
    fn compression_defaults_to_gzip_for_https_and_none_for_http() {
        let https = Config::parse(HOSTED, Path::new("c.toml")).unwrap();
        assert_eq!(https.export.compression(), Compression::Gzip);
        let http = Config::parse("[export]\nkind = \"otlp_http\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(http.export.compression(), Compression::None);
        let zstd = Config::parse(
            "[export]\nkind = \"otlp_http\"\ncompression = \"zstd\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(zstd.export.compression(), Compression::Zstd);
        let err = Config::parse("[export]\ncompression = \"brotli\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("brotli"), "{err}");
    }

    #[test]
    fn the_export_tls_table_is_the_flat_keys_and_setting_both_is_an_error() {
        let table = format!(
            "{HOSTED}[export.tls]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nserver_name = \"api.example.com\"\n"
        );
        let c = Config::parse(&table, Path::new("c.toml")).unwrap();
        assert_eq!(c.export.tls_ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.export.tls_cert_file, Some(PathBuf::from("c.pem")));
        assert_eq!(c.export.tls_key_file, Some(PathBuf::from("k.pem")));
        assert_eq!(c.export.tls_server_name.as_deref(), Some("api.example.com"));
        let flat = Config::parse(
            &format!("{HOSTED}tls_ca_file = \"ca.pem\"\n"),
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(flat.export.tls_ca_file, Some(PathBuf::from("ca.pem")));
        let both = format!("{HOSTED}tls_ca_file = \"ca.pem\"\n[export.tls]\nca_file = \"x.pem\"\n");
        let err = Config::parse(&both, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[export.tls] and export.tls_ca_file are both set"),
            "{err}"
        );
        let typo = format!("{HOSTED}[export.tls]\nca_fil = \"x.pem\"\n");
        assert!(Config::parse(&typo, Path::new("c.toml")).is_err());
    }

    #[test]
    fn the_receive_security_surface_parses_with_its_documented_names() {
        let text = "[receive]\nheader_read_timeout = \"5s\"\nidle_timeout = \"30s\"\n[receive.tls]\ncert_file = \"/etc/tailsift/tls.crt\"\nkey_file = \"/etc/tailsift/tls.key\"\nclient_ca_file = \"/etc/tailsift/clients-ca.crt\"\n[auth]\nkeys_file = \"/etc/tailsift/keys.toml\"\nheader = \"x-api-key\"\nrequire_key = true\n";
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        let tls = c.receive.tls.unwrap();
        assert_eq!(tls.check_interval.0, Duration::from_secs(5));
        assert!(tls.client_ca_file.is_some());
        let auth = c.auth.unwrap();
        assert!(auth.require_key);
        assert_eq!(auth.header, "x-api-key");
        assert_eq!(c.receive.max_attribute_bytes, None);
        let err = Config::parse("[auth]\nrequire_key = true\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.require_key = true needs auth.keys_file"),
            "{err}"
        );
        assert!(Config::parse("[receive.tls]\ncert_file = \"a\"\n", Path::new("c.toml")).is_err());
        let err = Config::parse("[receive]\nidle_timeout = \"1s\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("receive.idle_timeout"), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_tls_needs_https() {
        let err = Config::parse(
            &format!("{HOSTED}tls_cert_file = \"client.pem\"\n"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tls.cert_file needs export.tls.key_file"),
            "{err}"
        );
        let err = Config::parse(
            "[export]\nkind = \"otlp_grpc\"\nendpoint = \"http://127.0.0.1:4317\"\ntls_ca_file = \"ca.pem\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("export.tls.ca_file set") && err.contains("not https://"),
            "{err}"
        );
        let err = Config::parse(
            &format!("{HOSTED}tls_server_name = \"not a name\"\n"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.server_name"), "{err}");
    }
}
