//! The admin API's bearer token, against the real binary: changes need it, reads need it only
//! with `admin.require_token_for_reads`, probes and `/metrics` never do, the token file is
//! re-read on SIGHUP, and the CLI sends the token from `--token-file` or
//! `TAILSIFT_ADMIN_TOKEN`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use support::client::try_http;
use support::{run_tailsift_with_env, write_file, TailsiftProcess, KEEP_ALL_RULES};

const TOKEN: &str = "correct-horse-battery-staple";
const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// A node with loopback listeners, rules that keep everything, export to a file, and `admin`
/// lines added to its `[admin]` section. The token file (holding [`TOKEN`]) is `token` in its
/// directory.
async fn start(admin: &str, env: &[(&str, &str)]) -> TailsiftProcess {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write_file(dir.path(), "rules.toml", KEEP_ALL_RULES);
    write_file(dir.path(), "token", &format!("{TOKEN}\n"));
    let config = format!(
        "[receive]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n[rules]\nfile = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n",
        rules.display()
    );
    TailsiftProcess::start_in_dir(dir, &config, &[], env).await
}

/// The status of one admin request, with `token` as a bearer token when given.
async fn status(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let body = if method == "PUT" {
        Bytes::from_static(b"{\"keep_all\": true}")
    } else {
        Bytes::new()
    };
    let reply = try_http(method, admin, path, &headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    if reply.status == 401 {
        let json: serde_json::Value =
            serde_json::from_slice(&reply.body).expect("a 401 carries a JSON body");
        assert!(json["error"].is_string(), "401 body: {json}");
        assert!(
            !String::from_utf8_lossy(&reply.body).contains(TOKEN),
            "the token never appears in an answer"
        );
    }
    reply.status.as_u16()
}

#[tokio::test]
async fn changes_need_the_token_and_reads_stay_open() {
    let node = start("token_file = \"token\"", &[]).await;
    let a = node.admin;
    for (method, path) in [
        ("POST", "/api/v1/rules/reload"),
        ("PUT", "/api/v1/tenants/acme/tag"),
        ("DELETE", "/api/v1/tenants/acme/tag"),
    ] {
        assert_eq!(status(a, method, path, None).await, 401, "{method} {path}");
        assert_eq!(
            status(a, method, path, Some("wrong")).await,
            401,
            "{method} {path}"
        );
        assert_eq!(
            status(a, method, path, Some(TOKEN)).await,
            200,
            "{method} {path}"
        );
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/rules",
        "/api/v1/tenant-tags",
        "/api/v1/tenants",
        "/",
    ] {
        assert_eq!(status(a, "GET", path, None).await, 200, "GET {path}");
    }
    assert!(!node.log().contains(TOKEN), "the token is never logged");
}

#[tokio::test]
async fn with_require_token_for_reads_only_probes_metrics_and_the_page_stay_open() {
    let node = start(
        "token_file = \"token\"\nrequire_token_for_reads = true",
        &[],
    )
    .await;
    let a = node.admin;
    for path in ["/api/v1/rules", "/api/v1/tenants", "/api/v1/tenant-tags"] {
        assert_eq!(status(a, "GET", path, None).await, 401, "GET {path}");
        assert_eq!(status(a, "GET", path, Some(TOKEN)).await, 200, "GET {path}");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        assert_eq!(status(a, "GET", path, None).await, 200, "GET {path}");
    }
}

#[tokio::test]
async fn the_token_can_come_from_the_environment() {
    let node = start("", &[("TAILSIFT_ADMIN_TOKEN", TOKEN)]).await;
    let reload = "/api/v1/rules/reload";
    assert_eq!(status(node.admin, "POST", reload, None).await, 401);
    assert_eq!(status(node.admin, "POST", reload, Some(TOKEN)).await, 200);
}

#[tokio::test]
async fn a_rotated_token_file_takes_effect_on_sighup() {
    let node = start("token_file = \"token\"", &[]).await;
    write_file(node.dir(), "token", "the-new-token\n");
    node.sighup();
    node.wait_for_log("admin token reloaded", Duration::from_secs(10))
        .await;
    let reload = "/api/v1/rules/reload";
    assert_eq!(status(node.admin, "POST", reload, Some(TOKEN)).await, 401);
    assert_eq!(
        status(node.admin, "POST", reload, Some("the-new-token")).await,
        200
    );
}

#[tokio::test]
async fn without_a_token_every_endpoint_is_open_as_before() {
    let node = start("", &[("TAILSIFT_ADMIN_TOKEN", "")]).await;
    assert_eq!(
        status(node.admin, "POST", "/api/v1/rules/reload", None).await,
        200
    );
}

#[tokio::test]
async fn the_cli_sends_the_token_from_token_file_or_the_environment() {
    let node = start(
        "token_file = \"token\"\nrequire_token_for_reads = true",
        &[],
    )
    .await;
    let admin = format!("http://{}", node.admin);
    let token_file = node.dir().join("token");
    let token_file = token_file.to_str().expect("utf-8 path");
    let no_env = [("TAILSIFT_ADMIN_TOKEN", "")];

    let refused = run_tailsift_with_env(
        &["tenants", "tag", "acme", "--admin", &admin],
        &no_env,
        CLI_TIMEOUT,
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        refused
            .stderr
            .contains("the admin API needs a token: --token-file or TAILSIFT_ADMIN_TOKEN"),
        "stderr: {}",
        refused.stderr
    );

    let tagged = run_tailsift_with_env(
        &[
            "tenants",
            "tag",
            "acme",
            "--admin",
            &admin,
            "--token-file",
            token_file,
        ],
        &no_env,
        CLI_TIMEOUT,
    )
    .await;
    assert!(tagged.status.success(), "stderr: {}", tagged.stderr);
    assert!(tagged.stdout.contains("tagged acme"), "{}", tagged.stdout);

    let with_env = [("TAILSIFT_ADMIN_TOKEN", TOKEN)];
    let listed = run_tailsift_with_env(
        &["tenants", "tags", "--admin", &admin],
        &with_env,
        CLI_TIMEOUT,
    )
    .await;
    assert!(listed.status.success(), "stderr: {}", listed.stderr);
    assert!(listed.stdout.contains("acme"), "{}", listed.stdout);

    let reloaded = run_tailsift_with_env(
        &["rules", "reload", "--admin", &admin],
        &with_env,
        CLI_TIMEOUT,
    )
    .await;
    assert!(reloaded.status.success(), "stderr: {}", reloaded.stderr);
    assert!(reloaded.stdout.contains("rules reloaded"));

    let stats = run_tailsift_with_env(
        &["stats", "--admin", &admin, "--token-file", token_file],
        &no_env,
        CLI_TIMEOUT,
    )
    .await;
    assert!(stats.status.success(), "stderr: {}", stats.stderr);
    let stats = run_tailsift_with_env(&["stats", "--admin", &admin], &no_env, CLI_TIMEOUT).await;
    assert!(
        stats.stderr.contains("the admin API needs a token"),
        "{}",
        stats.stderr
    );

    let cluster =
        run_tailsift_with_env(&["cluster", "--admin", &admin], &with_env, CLI_TIMEOUT).await;
    assert!(cluster.status.success(), "stderr: {}", cluster.stderr);

    let wrong = run_tailsift_with_env(
        &["rules", "reload", "--admin", &admin],
        &[("TAILSIFT_ADMIN_TOKEN", "wrong")],
        CLI_TIMEOUT,
    )
    .await;
    assert!(!wrong.status.success());
    assert!(
        wrong.stderr.contains("refused the token"),
        "{}",
        wrong.stderr
    );
}

/// Starts a static cluster, node `i` reading its admin token from `tokens[i]`.
async fn cluster_with_tokens(
    backend: &support::RecordingBackend,
    dir: &std::path::Path,
    tokens: &[&str],
) -> Vec<TailsiftProcess> {
    use support::cluster::{free_ports, node_config, static_section};
    let rules = write_file(dir, "rules.toml", KEEP_ALL_RULES);
    let ports = free_ports(tokens.len());
    let mut nodes = Vec::new();
    for (i, (port, token)) in ports.iter().zip(tokens).enumerate() {
        let file = write_file(dir, &format!("token-{i}"), token);
        let config = node_config(backend.grpc_addr(), &rules, &static_section(*port, &ports))
            .replace(
                "[admin]\n",
                &format!("[admin]\ntoken_file = \"{}\"\n", file.display()),
            );
        nodes.push(TailsiftProcess::start(&config).await);
    }
    nodes
}

/// The `nodes` statuses of a cluster-scoped answer, this node first.
async fn fanned_out(admin: SocketAddr, method: &str, path: &str, body: &str) -> Vec<u64> {
    let bearer = format!("Bearer {TOKEN}");
    let reply = try_http(
        method,
        admin,
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", bearer.as_str()),
        ],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON answer");
    json["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {json}"))
        .iter()
        .map(|n| n["status"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_nodes_share_a_token_still_acts_as_one() {
    let backend = support::RecordingBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster_with_tokens(&backend, dir.path(), &[TOKEN, TOKEN]).await;
    let tag = fanned_out(nodes[0].admin, "PUT", "/api/v1/tenants/acme/tag", "{}").await;
    assert_eq!(tag, [200, 200], "the tag reached every member");
    let reload = fanned_out(
        nodes[0].admin,
        "POST",
        "/api/v1/rules/reload?scope=cluster",
        "",
    )
    .await;
    assert_eq!(reload, [200, 200], "every member reloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_token_refuses_what_a_node_forwards() {
    let backend = support::RecordingBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = cluster_with_tokens(&backend, dir.path(), &[TOKEN, "another-token"]).await;
    let tag = fanned_out(nodes[0].admin, "PUT", "/api/v1/tenants/acme/tag", "{}").await;
    assert_eq!(tag, [200, 401], "the member with another token says so");
}
