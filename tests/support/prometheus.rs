//! Parses Prometheus text exposition with the reference Python parser
//! (`prometheus_client.parser.text_string_to_metric_families`), so `/metrics` is checked by a
//! real parser rather than by string matching. Included with `#[path]` by the tests using it.

use std::io::Write;
use std::process::{Command, Stdio};

/// One parsed sample.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    /// Metric family name as the parser reports it (`_total` stripped for counters).
    pub family: String,
    /// Family type: counter, gauge, histogram, ...
    pub kind: String,
    /// Sample name (e.g. `..._total`, `..._bucket`).
    pub name: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "kind": fam.type, "name": s.name,
                    "labels": dict(s.labels), "value": s.value})
print(json.dumps(out))
"#;

fn python() -> Command {
    let mut cmd = Command::new("python3");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// True when `python3` can be run at all.
pub fn python_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Makes sure `prometheus_client` imports, installing the pinned version from
/// `tests/interop/requirements.txt` with pip if not.
fn ensure_prometheus_client() {
    let check = |_: ()| {
        Command::new("python3")
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if check(()) {
        return;
    }
    let req = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/requirements.txt"
    );
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "-r", req])
        .output()
        .expect("running pip");
    assert!(
        out.status.success() && check(()),
        "prometheus_client not importable and `pip install -r {req}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses `text`; panics with the parser's error if it is not valid exposition format.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    ensure_prometheus_client();
    let mut child = python()
        .args(["-c", PARSE])
        .spawn()
        .expect("spawning python3");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("writing metrics to python");
    let out = child.wait_with_output().expect("waiting for python3");
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics:\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output is JSON")
}
