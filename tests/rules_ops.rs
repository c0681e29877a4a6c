//! Rules operations through the real binary: `rules test`, runtime tenant tags (CLI and admin
//! API, across a restart), reload by signal / file watch / API, and shadow rules on real
//! traffic. Self-contained: each test starts `tailsift run` on loopback ports chosen by the OS.
// Synchronous CLI tests wait with thread sleeps between child processes.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tailsift");
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/traces.json");
const DEFAULT_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.toml");

/// A `tailsift run` child process, stopped with SIGTERM (killed as a fallback) on drop.
struct Node {
    child: Child,
    admin: SocketAddr,
    http: SocketAddr,
}

impl Node {
    fn start(config: &Path) -> Node {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tailsift");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the child never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tailsift did not report its addresses");
            };
            if let Some(rest) = line.split("tailsift listening ").nth(1) {
                let addr = |key: &str| -> SocketAddr {
                    let v = rest
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .expect("address in log line");
                    strip_ansi(v).parse().expect("socket address")
                };
                return Node {
                    admin: addr("admin="),
                    http: addr("http="),
                    child,
                };
            }
        }
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Graceful stop; waits for the process to exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tailsift did not stop on SIGTERM");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One HTTP/1.1 request; returns status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, "application/json", "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON answer")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tailsift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run tailsift");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a config for loopback ephemeral ports with all state in `dir`.
fn write_config(dir: &Path, rules: &Path, extra_rules_keys: &str) -> PathBuf {
    let config = dir.join("tailsift.toml");
    let text = format!(
        r#"[receive]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[buffer]
root_grace = "100ms"
trace_timeout = "1s"
shards = 2
[rules]
file = {rules:?}
tags_file = {tags:?}
{extra_rules_keys}
[export]
path = {kept:?}
[admin]
listen = "127.0.0.1:0"
[shutdown]
timeout = "5s"
"#,
        rules = rules.display().to_string(),
        tags = dir.join("state/tags.json").display().to_string(),
        kept = dir.join("kept.jsonl").display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn rules_test_prints_the_deciding_rule_rate_and_why_earlier_rules_missed() {
    let (code, out, _) = tailsift(&[
        "rules",
        "test",
        "--rules",
        DEFAULT_RULES,
        "--trace",
        FIXTURE,
    ]);
    assert_eq!(code, 0, "{out}");
    let expected = [
        "trace 0af7651916cd43dd8448eb211c80319c (tenant \"default\", 2 spans)",
        "  matched \"errors\": keep all (sample_rate = 1)",
        "  => keep (rule \"errors\", sample_rate = 1)",
        "  skipped \"tagged-tenants\": `tenant in [\"acme\", \"globex\"]` is false (tenant is \"default\")",
        "  => drop (rule \"health-checks\")",
        "  matched \"slow\": keep 1 in 2 (sample_rate = 2)",
        "  => keep (rule \"slow\", sample_rate = 2)",
        "  => drop: not among the 1 in 10 kept (rule \"rest\"; the trace id decides)",
        "trace 11111111111111111111111111111111 (tenant \"acme\", 1 span)",
        "  => keep (rule \"tagged-tenants\", sample_rate = 1)",
    ];
    for line in expected {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn rules_test_with_an_invalid_rules_file_exits_1_with_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("bad.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"r\"\nif = 'spans.status = \"error\"'\nsample_rate = 1\n",
    )
    .unwrap();
    let (code, out, _) = tailsift(&[
        "rules",
        "test",
        "--rules",
        rules.to_str().unwrap(),
        "--trace",
        FIXTURE,
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("bad.toml:3:"), "{out}");
    assert!(out.contains("unknown field `spans.status`"), "{out}");
    let (code, out, _) = tailsift(&[
        "rules",
        "test",
        "--rules",
        DEFAULT_RULES,
        "--trace",
        DEFAULT_RULES,
    ]);
    assert_eq!(code, 1, "a trace file that is not OTLP/JSON fails: {out}");
}

#[test]
fn tenant_tag_set_from_the_cli_keeps_the_tenant_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nname = \"none\"\ndrop = true\n").unwrap();
    let config = write_config(dir.path(), &rules, "");
    let node = Node::start(&config);
    let admin = node.admin_url();

    let (code, out, err) = tailsift(&["tenants", "--admin", &admin, "tag", "acme", "--for", "2h"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("tagged acme: keeping all its traces for 1h59m")
            || out.contains("for 2h0m0s"),
        "{out}"
    );
    let (code, out, _) = tailsift(&["tenants", "tag", "globex", "--admin", &admin]);
    assert_eq!(code, 0);
    assert!(out.contains("until untagged"), "{out}");

    // The next decision follows the tag: acme's trace is kept, the rest dropped by the rules.
    let body = std::fs::read_to_string(FIXTURE).unwrap();
    let (status, answer) = http(node.http, "POST", "/v1/traces", "application/json", &body);
    assert_eq!(status, 200, "{answer}");
    wait_for("the traces to be decided", || {
        let metrics = http(node.admin, "GET", "/metrics", "text/plain", "").1;
        metrics.contains("tailsift_tenant_tags 2")
            && std::fs::read_to_string(dir.path().join("kept.jsonl"))
                .is_ok_and(|k| k.contains("tenant-tag"))
    });
    let kept = std::fs::read_to_string(dir.path().join("kept.jsonl")).unwrap();
    assert!(kept.contains("11111111111111111111111111111111"), "{kept}");
    assert!(!kept.contains("0af7651916cd43dd8448eb211c80319c"), "{kept}");
    node.stop();

    // A restart reads the state file.
    let node = Node::start(&config);
    let admin = node.admin_url();
    let (code, out, _) = tailsift(&["tenants", "tags", "--admin", &admin]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("acme\tkeep_all\texpires in 1h")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "globex\tkeep_all\tno expiry"),
        "{out}"
    );
    let (code, out, _) = tailsift(&["tenants", "untag", "acme", "--admin", &admin]);
    assert_eq!((code, out.trim()), (0, "untagged acme"));
    let tags = get_json(node.admin, "/api/v1/tenant-tags");
    assert_eq!(tags["tags"].as_array().map(Vec::len), Some(1), "{tags}");
    assert_eq!(tags["tags"][0]["tenant"], "globex");
    // Bad input is refused with the reason.
    let (status, body) = http(
        node.admin,
        "PUT",
        "/api/v1/tenants/acme/tag",
        "application/json",
        r#"{"for": "soon"}"#,
    );
    assert_eq!(status, 422, "{body}");
    node.stop();
}

#[test]
fn tenants_cli_without_a_node_fails_with_a_clear_error() {
    let (code, _, err) = tailsift(&["tenants", "tags", "--admin", "http://127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[test]
fn reload_by_signal_file_watch_and_api_take_the_same_path_and_broken_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nname = \"first\"\nsample_rate = 1\n").unwrap();
    let config = write_config(dir.path(), &rules, "");
    let node = Node::start(&config);

    // A broken file, then SIGHUP: old rules stay, the error names file and line.
    std::fs::write(
        dir.path().join("broken.toml"),
        "[[rule]]\nname = \"x\"\nsample_rate = 0\n",
    )
    .unwrap();
    std::fs::rename(dir.path().join("broken.toml"), &rules).unwrap();
    node.signal("-HUP");
    wait_for("the failed reload", || {
        get_json(node.admin, "/api/v1/rules")["failing"] == true
    });
    let view = get_json(node.admin, "/api/v1/rules");
    assert_eq!(view["rules"][0]["name"], "first", "{view}");
    let err = &view["last_error"];
    assert_eq!(err["file"], rules.display().to_string());
    assert_eq!(err["line"], 3);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("sample_rate must be at least 1"),
        "{err}"
    );
    let metrics = http(node.admin, "GET", "/metrics", "text/plain", "").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tailsift_rules_reload_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A fixed file written via rename is picked up by the watcher.
    std::fs::write(
        dir.path().join("new.toml"),
        "[[rule]]\nname = \"second\"\ndrop = true\n",
    )
    .unwrap();
    std::fs::rename(dir.path().join("new.toml"), &rules).unwrap();
    let start = Instant::now();
    wait_for("the watcher reload", || {
        get_json(node.admin, "/api/v1/rules")["rules"][0]["name"] == "second"
    });
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let view = get_json(node.admin, "/api/v1/rules");
    assert_eq!(view["last_trigger"], "file_watch");
    assert_eq!(view["failing"], false);

    // The API reloads through the same path.
    let (status, body) = http(
        node.admin,
        "POST",
        "/api/v1/rules/reload",
        "application/json",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let view = get_json(node.admin, "/api/v1/rules");
    assert_eq!(view["last_trigger"], "api");
    assert_eq!(view["reloads"], 2);
    assert_eq!(view["failures"], 1);
    node.stop();
}

#[test]
fn rule_hits_and_shadow_keep_rates_are_reported_per_tenant_on_real_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("candidate.toml");
    std::fs::write(&shadow, "[[rule]]\nname = \"only-errors\"\nif = 'span.status = \"error\"'\nsample_rate = 1\n\n[[rule]]\nname = \"rest\"\ndrop = true\n").unwrap();
    let config = write_config(
        dir.path(),
        Path::new(DEFAULT_RULES),
        &format!("shadow_file = {:?}", shadow.display().to_string()),
    );
    let node = Node::start(&config);
    let body = std::fs::read_to_string(FIXTURE).unwrap();
    let (status, answer) = http(node.http, "POST", "/v1/traces", "application/json", &body);
    assert_eq!(status, 200, "{answer}");
    wait_for("five shadow decisions", || {
        let report = get_json(node.admin, "/api/v1/rules/shadow");
        let decided: u64 = report["tenants"].as_array().map_or(0, |ts| {
            ts.iter().map(|t| t["decided"].as_u64().unwrap_or(0)).sum()
        });
        decided == 5
    });
    let report = get_json(node.admin, "/api/v1/rules/shadow");
    let tenant = |name: &str| {
        report["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["tenant"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    // Live (default rules): acme kept by tagged-tenants; shadow drops it.
    let acme = tenant("acme");
    assert_eq!(
        (
            acme["decided"].as_u64(),
            acme["kept_live"].as_u64(),
            acme["kept_shadow"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(acme["shadow_keep_rate"], 0.0);
    // default: live keeps errors + slow (2 of 4), shadow keeps only errors (1 of 4).
    let default = tenant("default");
    assert_eq!(
        (
            default["decided"].as_u64(),
            default["kept_live"].as_u64(),
            default["kept_shadow"].as_u64()
        ),
        (Some(4), Some(2), Some(1))
    );
    assert_eq!(default["live_keep_rate"], 0.5);
    assert_eq!(default["shadow_keep_rate"], 0.25);

    // The live rules counted one hit each.
    let view = get_json(node.admin, "/api/v1/rules");
    let hits: Vec<(String, u64)> = view["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["hits"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> =
        ["errors", "tagged-tenants", "health-checks", "slow", "rest"]
            .iter()
            .map(|n| (n.to_string(), 1))
            .collect();
    assert_eq!(hits, expected);
    assert_eq!(view["shadow"]["source"], shadow.display().to_string());
    node.stop();
}

/// One small trace with a fresh trace id (`n` in its low bytes).
fn one_trace(n: u64) -> String {
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"load"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"{:032x}","spanId":"0000000000000001","name":"GET /","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000"}}]}}]}}]}}"#,
        (0xabcd_u128 << 64) | u128::from(n)
    )
}

#[test]
fn rewriting_the_rules_file_under_load_switches_decisions_within_two_seconds_without_failing_a_request(
) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nname = \"keep-all\"\nsample_rate = 1\n").unwrap();
    let config = write_config(dir.path(), &rules, "");
    let node = Node::start(&config);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let http_addr = node.http;
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                let (status, body) = http(
                    http_addr,
                    "POST",
                    "/v1/traces",
                    "application/json",
                    &one_trace(sent),
                );
                if status != 200 {
                    failed.push((status, body));
                }
            }
            (sent, failed)
        })
    };
    let hits = |name: &str| -> u64 {
        let view = get_json(node.admin, "/api/v1/rules");
        view["rules"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == name))
            .and_then(|r| r["hits"].as_u64())
            .unwrap_or(0)
    };
    wait_for("decisions under the first rules", || hits("keep-all") > 0);
    std::fs::write(
        dir.path().join("next.toml"),
        "[[rule]]\nname = \"drop-all\"\ndrop = true\n",
    )
    .unwrap();
    std::fs::rename(dir.path().join("next.toml"), &rules).unwrap();
    let start = Instant::now();
    wait_for("decisions under the rewritten rules", || {
        hits("drop-all") > 0
    });
    let switched = start.elapsed();
    // Keep the load on a little after the switch.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.join().unwrap();
    assert!(
        switched < Duration::from_secs(2),
        "decisions switched after {switched:?}"
    );
    assert!(sent > 10, "only {sent} requests sent");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failed.len(),
        failed.first()
    );
    node.stop();
}
