//! Interop with real OpenTelemetry SDKs: run the Python SDK driver (`tests/interop/send_traces.py`)
//! and check that every span an SDK produced reached the backend intact.
//!
//! The Rust SDK driver lives in `rust_sdk.rs` (not declared here, so only tests that use it
//! compile the OpenTelemetry SDK crates): `#[path = "support/rust_sdk.rs"] mod rust_sdk;`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use serde_json::{Map, Value};

use super::backend::{RecordedSpan, RecordingBackend};
use super::traces::attr;

/// A span an SDK produced, as the SDK saw it (ids in lower-case hex).
#[derive(Clone, Debug)]
pub struct ExpectedSpan {
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, 16 hex digits, or "" for a root.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// Instrumentation scope name.
    pub scope: String,
    /// Whether the span ended with status ERROR.
    pub error: bool,
    /// Span attributes the SDK set (strings, integers, floats, bools).
    pub attributes: Map<String, Value>,
}

/// What one SDK run produced: its spans and the resource attributes they all carry.
#[derive(Clone, Debug, Default)]
pub struct ExpectedRun {
    /// Every span produced.
    pub spans: Vec<ExpectedSpan>,
    /// Resource attributes every span must arrive with.
    pub resource: Map<String, Value>,
    /// Number of distinct traces.
    pub trace_count: usize,
}

/// Options of one run of `tests/interop/send_traces.py`.
#[derive(Clone, Debug)]
pub struct PythonArgs {
    /// OTLP/gRPC receiver (`HOST:PORT`).
    pub grpc: SocketAddr,
    /// OTLP/HTTP traces URL (`http://HOST:PORT/v1/traces`).
    pub http_url: String,
    /// `tenant.id` resource attribute.
    pub tenant: String,
    /// Number of traces (even ones go over gRPC, odd ones over HTTP).
    pub traces: usize,
    /// End one span per trace with status ERROR.
    pub error: bool,
    /// Exporter compression: "none" or "gzip".
    pub compression: &'static str,
    /// Export over TLS trusting this PEM CA file (`OTEL_EXPORTER_OTLP_CERTIFICATE`); `http_url`
    /// must then be `https://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Request headers for both exporters in the SDK's `OTEL_EXPORTER_OTLP_HEADERS` form
    /// (`name=value,name=value`, values URL-encoded), e.g. an API key.
    pub headers: Option<String>,
}

/// Directory of the Python interop driver and its requirements.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop"))
}

/// Runs `cmd` to completion, killing it and panicking after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    // Drain both pipes on threads so the child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A python3 command with proxy variables removed (requests and grpcio honour them; we talk to loopback only).
fn python() -> Command {
    let mut cmd = Command::new("python3");
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "grpc_proxy",
    ] {
        cmd.env_remove(var);
    }
    // Only what a test sets explicitly configures the SDK. `requests` (the OTLP/HTTP exporter's
    // client) lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the CA file the exporter was
    // given, so a machine-wide bundle would hide OTEL_EXPORTER_OTLP_CERTIFICATE.
    for var in ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(var);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

static PYTHON_DEPS: Mutex<bool> = Mutex::new(false);

/// Makes sure the pinned OpenTelemetry Python packages import, installing `requirements.txt` with pip if not.
pub fn ensure_python_otel() {
    let mut ready = PYTHON_DEPS.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return;
    }
    let check = "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, \
                 opentelemetry.exporter.otlp.proto.http.trace_exporter";
    let ok = run_bounded(python().args(["-c", check]), Duration::from_secs(60))
        .status
        .success();
    if !ok {
        let req = interop_dir().join("requirements.txt");
        let out = run_bounded(
            python()
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(&req),
            Duration::from_secs(480),
        );
        assert!(
            out.status.success(),
            "pip install -r {} failed ({}):\n{}",
            req.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_bounded(python().args(["-c", check]), Duration::from_secs(60));
        assert!(
            out.status.success(),
            "OpenTelemetry Python still not importable:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *ready = true;
}

/// Runs the Python SDK driver (off the async runtime) and returns what it says it produced; panics if it failed.
pub async fn run_python_sender(args: PythonArgs) -> ExpectedRun {
    let out = tokio::task::spawn_blocking(move || {
        ensure_python_otel();
        let script = interop_dir().join("send_traces.py");
        let mut cmd = python();
        cmd.arg(&script)
            .arg("--grpc")
            .arg(args.grpc.to_string())
            .arg("--http")
            .arg(&args.http_url)
            .arg("--tenant")
            .arg(&args.tenant)
            .arg("--traces")
            .arg(args.traces.to_string())
            .arg("--compression")
            .arg(args.compression)
            .arg("--timeout")
            .arg("10");
        if args.error {
            cmd.arg("--error");
        }
        if let Some(ca) = &args.tls_ca_file {
            cmd.arg("--tls").env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca);
        }
        if let Some(headers) = &args.headers {
            cmd.env("OTEL_EXPORTER_OTLP_HEADERS", headers);
        }
        run_bounded(&mut cmd, Duration::from_secs(90))
    })
    .await
    .expect("python sender task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "send_traces.py failed ({}):\nstderr:\n{stderr}\nstdout:\n{stdout}",
        out.status
    );
    parse_python_output(&stdout)
        .unwrap_or_else(|e| panic!("bad send_traces.py output ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

/// Parses the JSON document printed by `send_traces.py`.
pub fn parse_python_output(stdout: &str) -> Result<ExpectedRun, String> {
    let doc: Value = serde_json::from_str(stdout.trim()).map_err(|e| e.to_string())?;
    let traces = doc["traces"].as_array().ok_or("no `traces` array")?;
    let mut run = ExpectedRun {
        resource: doc["resource"]
            .as_object()
            .cloned()
            .ok_or("no `resource` object")?,
        trace_count: traces.len(),
        spans: Vec::new(),
    };
    for t in traces {
        let trace_id = t["trace_id"]
            .as_str()
            .ok_or("trace without trace_id")?
            .to_string();
        let scope = t["scope"].as_str().unwrap_or("").to_string();
        for s in t["spans"].as_array().ok_or("trace without spans")? {
            run.spans.push(ExpectedSpan {
                trace_id: trace_id.clone(),
                span_id: s["span_id"]
                    .as_str()
                    .ok_or("span without span_id")?
                    .to_string(),
                parent_span_id: s["parent_span_id"].as_str().unwrap_or("").to_string(),
                name: s["name"].as_str().unwrap_or("").to_string(),
                scope: scope.clone(),
                error: s["status"].as_str() == Some("ERROR"),
                attributes: s["attributes"].as_object().cloned().unwrap_or_default(),
            });
        }
    }
    Ok(run)
}

/// Whether the OTLP attribute `key` in `attrs` equals the JSON value `want`.
pub fn attr_matches(attrs: &[KeyValue], key: &str, want: &Value) -> bool {
    match (attr(attrs, key), want) {
        (Some(any_value::Value::StringValue(s)), Value::String(w)) => s == w,
        (Some(any_value::Value::IntValue(i)), Value::Number(n)) => n.as_i64() == Some(*i),
        (Some(any_value::Value::DoubleValue(d)), Value::Number(n)) => n.as_f64() == Some(*d),
        (Some(any_value::Value::BoolValue(b)), Value::Bool(w)) => b == w,
        _ => false,
    }
}

/// Waits until every expected span reached `backend`, then asserts each arrived exactly once with
/// its trace id, parent, name, status, attributes, scope and resource intact; `extra` runs on each.
pub async fn assert_spans_arrived(
    backend: &RecordingBackend,
    expected: &ExpectedRun,
    timeout: Duration,
    extra: impl Fn(&RecordedSpan),
) {
    assert!(!expected.spans.is_empty(), "the SDK run produced no spans");
    let deadline = tokio::time::Instant::now() + timeout;
    let by_id = loop {
        let mut by_id: HashMap<(String, String), Vec<RecordedSpan>> = HashMap::new();
        for s in backend.spans() {
            by_id
                .entry((s.trace_id_hex(), s.span_id_hex()))
                .or_default()
                .push(s);
        }
        let missing: Vec<&ExpectedSpan> = expected
            .spans
            .iter()
            .filter(|e| !by_id.contains_key(&(e.trace_id.clone(), e.span_id.clone())))
            .collect();
        if missing.is_empty() {
            break by_id;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{} of {} SDK spans never reached the backend within {timeout:?} (backend has {} spans in {} requests); first missing: {:?}",
                missing.len(),
                expected.spans.len(),
                backend.span_count(),
                backend.request_count(),
                missing[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for e in &expected.spans {
        let got = &by_id[&(e.trace_id.clone(), e.span_id.clone())];
        assert_eq!(
            got.len(),
            1,
            "span {} of trace {} arrived {} times",
            e.span_id,
            e.trace_id,
            got.len()
        );
        let g = &got[0];
        assert_eq!(
            g.parent_id_hex(),
            e.parent_span_id,
            "parent of span {} ({})",
            e.span_id,
            e.name
        );
        assert_eq!(g.span.name, e.name, "name of span {}", e.span_id);
        let code = g.span.status.as_ref().map(|s| s.code).unwrap_or(0);
        assert_eq!(
            code == 2,
            e.error,
            "status of span {} ({}): code {code}",
            e.span_id,
            e.name
        );
        assert_eq!(
            g.scope_name(),
            e.scope,
            "scope of span {} ({})",
            e.span_id,
            e.name
        );
        for (k, v) in &e.attributes {
            assert!(
                attr_matches(&g.span.attributes, k, v),
                "span {} ({}): attribute {k} should be {v}, got {:?}",
                e.span_id,
                e.name,
                attr(&g.span.attributes, k)
            );
        }
        for (k, v) in &expected.resource {
            assert!(
                attr_matches(g.resource_attrs(), k, v),
                "span {} ({}): resource attribute {k} should be {v}, got {:?}",
                e.span_id,
                e.name,
                attr(g.resource_attrs(), k)
            );
        }
        extra(g);
    }
}

/// Every span must carry the keep-all rule's annotations, exactly once each.
pub fn assert_keep_all_annotations(s: &RecordedSpan) {
    assert_eq!(
        s.attr_i64("SampleRate"),
        Some(1),
        "SampleRate of span {} ({})",
        s.span_id_hex(),
        s.span.name
    );
    assert_eq!(
        s.attr_count("SampleRate"),
        1,
        "SampleRate appears once on span {}",
        s.span_id_hex()
    );
    assert_eq!(
        s.attr_str("tailsift.rule"),
        Some("all"),
        "tailsift.rule of span {} ({})",
        s.span_id_hex(),
        s.span.name
    );
}
