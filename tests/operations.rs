//! Running tailsift in a container: config keys from `TAILSIFT_<SECTION>__<KEY>` variables,
//! `tailsift check` saying which keys came from there, `--log-format json`, and `--version`
//! naming the git revision.

mod support;

use std::time::Duration;

use support::{http_get, run_tailsift_with_env, write_file, TailsiftProcess, KEEP_ALL_RULES};

const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// A config with loopback listeners and rules that keep everything, in a fresh tempdir.
fn node_config(dir: &std::path::Path) -> String {
    let rules = write_file(dir, "rules.toml", KEEP_ALL_RULES);
    format!(
        "[receive]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n[rules]\nfile = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        rules.display()
    )
}

#[tokio::test]
async fn check_names_the_keys_set_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(dir.path(), "tailsift.toml", &node_config(dir.path()));
    let config = config.to_str().expect("utf-8 path");
    let out = run_tailsift_with_env(
        &["check", "--config", config],
        &[
            ("TAILSIFT_BUFFER__MAX_MEMORY", "2GiB"),
            ("TAILSIFT_EXPORT__ENDPOINT", "http://127.0.0.1:4317"),
        ],
        CLI_TIMEOUT,
    )
    .await;
    assert!(out.status.success(), "stdout: {}", out.stdout);
    assert!(
        out.stdout
            .contains("from the environment: buffer.max_memory (TAILSIFT_BUFFER__MAX_MEMORY)"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("export.endpoint (TAILSIFT_EXPORT__ENDPOINT)"));
    assert!(
        !out.stdout.contains("2GiB"),
        "values are not printed (they may be secrets)"
    );

    let bad = run_tailsift_with_env(
        &["check", "--config", config],
        &[("TAILSIFT_BUFFER__MAX_MEMROY", "2GiB")],
        CLI_TIMEOUT,
    )
    .await;
    assert!(!bad.status.success());
    assert!(
        bad.stdout.contains("max_memroy") && bad.stdout.contains("TAILSIFT_BUFFER__MAX_MEMROY"),
        "{}",
        bad.stdout
    );
}

#[tokio::test]
async fn an_environment_variable_changes_a_running_nodes_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = node_config(dir.path());
    write_file(dir.path(), "token", "t0ken\n");
    // A boolean and a path, typed as the keys want them: reads now need the token.
    let node = TailsiftProcess::start_in_dir(
        dir,
        &config,
        &[],
        &[
            ("TAILSIFT_ADMIN__TOKEN_FILE", "token"),
            ("TAILSIFT_ADMIN__REQUIRE_TOKEN_FOR_READS", "true"),
        ],
    )
    .await;
    assert_eq!(http_get(node.admin, "/api/v1/rules").await.status, 401);
    assert!(node.log().contains("admin.require_token_for_reads"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_name_the_listeners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = node_config(dir.path());
    let node = TailsiftProcess::start_in_dir(dir, &config, &["--log-format", "json"], &[]).await;
    let log = node.log();
    let mut listening = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        let message = v["message"].as_str().unwrap_or_default();
        if message.starts_with("tailsift listening") {
            listening = Some(message.to_string());
        }
    }
    let listening = listening.expect("a JSON line with the listen message");
    assert!(
        listening.contains(&format!("admin={}", node.admin)),
        "{listening}"
    );
}

#[tokio::test]
async fn version_names_the_package_version_and_the_git_revision() {
    let out = run_tailsift_with_env(&["--version"], &[], CLI_TIMEOUT).await;
    assert!(out.status.success());
    let line = out.stdout.trim();
    let version = concat!("tailsift ", env!("CARGO_PKG_VERSION"), " (");
    let rev = line
        .strip_prefix(version)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version output {line:?}"));
    assert!(
        rev == "unknown" || (rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit())),
        "revision {rev:?}"
    );
}

#[tokio::test]
async fn with_json_logs_a_start_up_failure_is_a_json_line_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(dir.path(), "bad.toml", "[buffer]\nmax_memory = \"1B\"\n");
    let config = config.to_str().expect("utf-8 path");
    let out = run_tailsift_with_env(
        &["run", "--config", config, "--log-format", "json"],
        &[],
        CLI_TIMEOUT,
    )
    .await;
    assert!(!out.status.success());
    let line: serde_json::Value = serde_json::from_str(out.stderr.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {}", out.stderr));
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("buffer.max_memory")),
        "{line}"
    );
}
