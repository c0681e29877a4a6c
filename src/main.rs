//! The `tailsift` command: CLI → config → app → run until a signal.

/// `--features jemalloc`: jemalloc instead of glibc malloc, to measure the allocator's share.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod stats_cmd;
use tailsift::config::Config;

/// The version `--version` prints: the package version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TAILSIFT_GIT_REV"),
    ")"
);

/// A tail-sampling OTLP trace proxy.
#[derive(Parser)]
#[command(name = "tailsift", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (defaults: OTLP on :4317/:4318, admin on 127.0.0.1:8080, kept traces to a file).
    Run {
        /// Config file (TOML); without it every key takes its documented default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log lines as text for people or as one JSON object per line for log collectors.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config file and its rules file with the same code start-up uses.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print per-tenant keep rates of a running node (from its admin API).
    Stats(stats_cmd::StatsArgs),
    /// Work with rules files: test them offline, reload them on a running node.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The cluster as a running node sees it: members, shares, forward queues, each member's rules.
    Cluster {
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        admin: String,
        /// A file holding the admin token (else `TAILSIFT_ADMIN_TOKEN`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the raw JSON of `GET /api/v1/cluster` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Runtime tenant tags of a running node (through its admin API).
    Tenants {
        /// The node's admin API.
        #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
        admin: String,
        /// A file holding the admin token (else `TAILSIFT_ADMIN_TOKEN`).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: TenantsCommand,
    },
}

/// How `tailsift run` writes its log lines to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `tracing`'s human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Decide recorded traces (OTLP/JSON) with a rules file and explain each decision.
    Test {
        /// The rules file to test.
        #[arg(long)]
        rules: PathBuf,
        /// An OTLP/JSON ExportTraceServiceRequest holding one or more traces.
        #[arg(long)]
        trace: PathBuf,
        /// An OTLP/JSON ExportLogsServiceRequest: its records join the traces they name, for
        /// rules on `trace.error_log_count` and `log.*`.
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Config file, for how tenants are found (`[tenant]`); defaults otherwise.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make a running node re-read its rules file (`POST /api/v1/rules/reload`).
    Reload {
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        admin: String,
        /// A file holding the admin token (else `TAILSIFT_ADMIN_TOKEN`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// In a cluster, every member reloads its own file.
        #[arg(long)]
        cluster: bool,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Keep every trace of a tenant, above the rules file (optionally for a while); in a
    /// cluster the node applies it on every member.
    Tag {
        /// The tenant id.
        tenant: String,
        /// How long the tag lasts (`2h`, `30m`); without it, until untagged.
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// Remove a tenant's tag (in a cluster, on every member).
    Untag {
        /// The tenant id.
        tenant: String,
    },
    /// List the active tags.
    Tags,
}

/// The config file, or the defaults without one; `TAILSIFT_<SECTION>__<KEY>` overrides apply
/// to both.
fn load_config(path: Option<&PathBuf>) -> Result<Config, tailsift::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::parse("", Path::new("(no config file)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            let config = match load_config(config.as_ref()) {
                Ok(c) => c,
                Err(e) => return run_failed(log_format, &e.to_string()),
            };
            for o in &config.from_env {
                tracing::info!(key = %o.key, var = %o.var, "config key set from the environment");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(tailsift::app::run_until_signal(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => run_failed(log_format, &format!("{e:#}")),
            }
        }
        Command::Check { config } => check(config.as_ref()),
        Command::Cluster {
            admin,
            json,
            token_file,
        } => cluster(&admin, json, token_file.as_deref()),
        Command::Stats(args) => stats_cmd::run(args),
        Command::Rules {
            command:
                RulesCommand::Test {
                    rules,
                    trace,
                    logs,
                    config,
                },
        } => rules_test(&rules, &trace, logs.as_deref(), config.as_ref()),
        Command::Rules {
            command:
                RulesCommand::Reload {
                    admin,
                    token_file,
                    cluster,
                },
        } => rules_reload(&admin, token_file.as_deref(), cluster),
        Command::Tenants {
            admin,
            token_file,
            command,
        } => tenants(&admin, token_file.as_deref(), command),
    }
}

/// `tailsift rules test`: every trace's deciding rule, rate and keep/drop, and the misses.
fn rules_test(
    rules: &Path,
    trace: &Path,
    logs: Option<&Path>,
    config: Option<&PathBuf>,
) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let set = match tailsift::rules::RuleSet::load(rules) {
        Ok(set) => set,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in set.warnings() {
        println!("warning: {w}");
    }
    let body = match std::fs::read(trace) {
        Ok(b) => b,
        Err(e) => {
            println!("cannot read {}: {e}", trace.display());
            return ExitCode::FAILURE;
        }
    };
    let options = tailsift::otlp::ingest::IngestOptions {
        tenant_attribute: config.tenant.resource_attribute.clone(),
        default_tenant: tailsift::model::TenantId::new(&config.tenant.default),
        reserved_attributes: Vec::new(),
        limits: Default::default(),
    };
    let (mut records, rejected) = match tailsift::explain::records_from_json(&body, &options) {
        Ok(t) => t,
        Err(e) => {
            println!("{}: {e}", trace.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(logs) = logs {
        let read = std::fs::read(logs)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                tailsift::explain::log_records_from_json(&body, &options).map_err(|e| e.to_string())
            });
        match read {
            Ok((log_records, rejected)) => {
                if rejected > 0 {
                    println!(
                        "warning: {rejected} log record(s) in {} have invalid ids and were skipped",
                        logs.display()
                    );
                }
                // A record without trace id belongs to no trace the rules decide.
                records.extend(
                    log_records
                        .into_iter()
                        .filter(|r| r.index.trace_id != tailsift::model::TraceId::default()),
                );
            }
            Err(e) => {
                println!("{}: {e}", logs.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let traces = tailsift::explain::group(records);
    if rejected > 0 {
        println!(
            "warning: {rejected} span(s) in {} have invalid ids and were skipped",
            trace.display()
        );
    }
    if traces.is_empty() {
        println!("{}: no spans", trace.display());
        return ExitCode::FAILURE;
    }
    for report in tailsift::explain::explain_traces(&traces, &set) {
        println!("{report}");
    }
    ExitCode::SUCCESS
}

/// One admin API call from the CLI, with the token of `--token-file` or
/// `TAILSIFT_ADMIN_TOKEN`; a 401 says how to give one.
fn call_admin(
    admin: &str,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    token_file: Option<&Path>,
) -> Result<tailsift::admin::client::Answer, String> {
    use tailsift::admin::client;
    let token = client::cli_token(token_file).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let authorization = token.as_deref().map(client::bearer);
    let answer = runtime
        .block_on(client::request(
            admin,
            method,
            path,
            body,
            authorization.as_deref(),
        ))
        .map_err(|e| e.to_string())?;
    if answer.status == http::StatusCode::UNAUTHORIZED {
        return Err(unauthorized_message(token.is_some()));
    }
    Ok(answer)
}

/// What the CLI says when the admin API answers 401.
fn unauthorized_message(sent_token: bool) -> String {
    if sent_token {
        "the admin API refused the token (401): check --token-file or TAILSIFT_ADMIN_TOKEN".into()
    } else {
        tailsift::admin::auth::NEEDS_TOKEN.into()
    }
}

/// `tailsift rules reload`: the node (with `--cluster`, every member) re-reads its rules.
fn rules_reload(admin: &str, token_file: Option<&Path>, cluster: bool) -> ExitCode {
    let scope = if cluster { "cluster" } else { "local" };
    let path = format!("/api/v1/rules/reload?scope={scope}");
    let answer = match call_admin(admin, http::Method::POST, &path, None, token_file) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    for node in json["nodes"].as_array().into_iter().flatten() {
        if node["reloaded"] != true {
            eprintln!(
                "warning: member {} did not reload: {}",
                node["address"].as_str().unwrap_or("?"),
                node["error"].as_str().unwrap_or("no answer")
            );
        }
    }
    if json["reloaded"] == true {
        println!("rules reloaded");
        ExitCode::SUCCESS
    } else {
        let why = json["error"].as_str().unwrap_or(answer.body.trim());
        eprintln!("error: rules not reloaded: {why} ({})", answer.status);
        ExitCode::FAILURE
    }
}

/// `tailsift tenants ...`: one admin API call, its answer printed.
fn tenants(admin: &str, token_file: Option<&Path>, command: TenantsCommand) -> ExitCode {
    use http::Method;
    let (method, path, body) = match &command {
        TenantsCommand::Tag { tenant, duration } => {
            let mut body = serde_json::json!({ "keep_all": true });
            if let Some(d) = duration {
                body["for"] = serde_json::Value::from(d.as_str());
            }
            (
                Method::PUT,
                format!("/api/v1/tenants/{}/tag", encode_segment(tenant)),
                Some(body),
            )
        }
        TenantsCommand::Untag { tenant } => (
            Method::DELETE,
            format!("/api/v1/tenants/{}/tag", encode_segment(tenant)),
            None,
        ),
        TenantsCommand::Tags => (Method::GET, "/api/v1/tenant-tags".to_string(), None),
    };
    let answer = match call_admin(admin, method, &path, body.as_ref(), token_file) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    if !answer.status.is_success() {
        let why = json["error"].as_str().unwrap_or(answer.body.trim());
        eprintln!("error: {} ({})", why, answer.status);
        return ExitCode::FAILURE;
    }
    // In a cluster the answer lists every member; say which ones the change did not reach.
    for node in json["nodes"].as_array().into_iter().flatten() {
        if node["answered"] != true || node["status"] != 200 {
            eprintln!(
                "warning: member {} did not apply the change: {} (it catches up when it restarts)",
                node["address"].as_str().unwrap_or("?"),
                node["error"].as_str().unwrap_or("no answer")
            );
        }
    }
    match command {
        TenantsCommand::Tag { tenant, .. } => match json["expires_in_seconds"].as_u64() {
            Some(s) => println!(
                "tagged {tenant}: keeping all its traces for {}",
                human_seconds(s)
            ),
            None => println!("tagged {tenant}: keeping all its traces until untagged"),
        },
        TenantsCommand::Untag { tenant } => {
            if json["removed"].as_bool() == Some(true) {
                println!("untagged {tenant}");
            } else {
                println!("{tenant} was not tagged");
            }
        }
        TenantsCommand::Tags => {
            let tags = json["tags"].as_array().cloned().unwrap_or_default();
            if tags.is_empty() {
                println!("no tenant is tagged");
            }
            for t in tags {
                let tenant = t["tenant"].as_str().unwrap_or("?");
                match t["expires_in_seconds"].as_u64() {
                    Some(s) => println!("{tenant}\tkeep_all\texpires in {}", human_seconds(s)),
                    None => println!("{tenant}\tkeep_all\tno expiry"),
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Percent-encodes a tenant id for use as one URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2h0m5s`-style duration.
fn human_seconds(s: u64) -> String {
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m{sec}s"),
        _ => format!("{h}h{m}m{sec}s"),
    }
}

/// `tailsift cluster`: `GET /api/v1/cluster` of a running node, as a table.
fn cluster(admin: &str, raw: bool, token_file: Option<&Path>) -> ExitCode {
    let answer = match call_admin(
        admin,
        http::Method::GET,
        "/api/v1/cluster",
        None,
        token_file,
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !answer.status.is_success() {
        eprintln!("error: {} answered {}", admin, answer.status);
        return ExitCode::FAILURE;
    }
    if raw {
        println!("{}", answer.body.trim());
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    if v["membership"] == "single" {
        println!("single node (no [cluster] section): this node owns every trace");
        return ExitCode::SUCCESS;
    }
    let provider = &v["provider"];
    println!(
        "self {}   membership {} ({})   members {}   consistent {}",
        v["self"].as_str().unwrap_or("?"),
        v["membership"].as_str().unwrap_or("?"),
        if provider["healthy"].as_bool() == Some(true) {
            "healthy".to_string()
        } else {
            format!(
                "FAILING: {}",
                provider["last_error"].as_str().unwrap_or("?")
            )
        },
        v["members"].as_array().map_or(0, Vec::len),
        v["consistent"],
    );
    println!();
    println!(
        "{:<28} {:>7} {:>18} {:>9} {:<28}  note",
        "MEMBER", "SHARE", "RULES", "VERSION", "ADMIN"
    );
    for m in v["member_details"].as_array().into_iter().flatten() {
        let me = if m["is_self"] == true { " (self)" } else { "" };
        println!(
            "{:<28} {:>6.1}% {:>18} {:>9} {:<28}  {}{}",
            m["address"].as_str().unwrap_or("?"),
            m["share"].as_f64().unwrap_or(0.0) * 100.0,
            m["rules_hash"].as_str().unwrap_or("-"),
            m["version"].as_str().unwrap_or("-"),
            m["admin"].as_str().unwrap_or("-"),
            m["error"].as_str().unwrap_or(""),
            me
        );
    }
    println!();
    println!(
        "{:<28} {:>12} {:>10} {:>14} {:>9} {:>9} {:>10}",
        "FORWARD QUEUE", "BYTES", "SPANS", "FORWARDED", "FAILURES", "RETRIES", "REROUTED"
    );
    for q in v["forward_queues"].as_array().into_iter().flatten() {
        println!(
            "{:<28} {:>12} {:>10} {:>14} {:>9} {:>9} {:>10}",
            q["peer"].as_str().unwrap_or("?"),
            q["queue_bytes"],
            q["queued_spans"],
            q["forwarded_spans"],
            q["failures"],
            q["retries"],
            q["rerouted_spans"],
        );
    }
    ExitCode::SUCCESS
}

/// `tailsift check`: the start-up validation, printed.
fn check(path: Option<&PathBuf>) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The PEM files are read exactly as start-up reads them.
    if config.export.kind != tailsift::config::ExportKind::File && config.export.is_https() {
        if let Err(e) = tailsift::export::tls::client_config(&config.export) {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(tls) = &config.receive.tls {
        let stats = std::sync::Arc::new(tailsift::stats::Stats::default());
        if let Err(e) = tailsift::receive::tls::ServerTls::load(tls, stats) {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(tls) = config.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
        let stats = std::sync::Arc::new(tailsift::stats::Stats::default());
        if let Err(e) = tailsift::receive::tls::ServerTls::load(&tls.server_files(), stats) {
            println!("{e}");
            return ExitCode::FAILURE;
        }
        if let Err(e) = tailsift::cluster::peer::PeerClientTls::load(tls) {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(auth) = &config.auth {
        if let Err(e) = tailsift::receive::auth::ApiKeys::load(auth) {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    }
    for o in &config.from_env {
        println!("from the environment: {} ({})", o.key, o.var);
    }
    if let Err(e) = tailsift::admin::auth::AdminToken::load(
        &config.admin,
        std::env::var(tailsift::admin::auth::TOKEN_ENV).ok(),
    ) {
        println!("{e}");
        return ExitCode::FAILURE;
    }
    match tailsift::reload::load_rules(&config.rules.file) {
        Ok((rules, source)) => {
            for w in rules.warnings() {
                println!("warning: {w}");
            }
            println!("ok ({source})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports why `tailsift run` stops: `error: ...` on stderr, or a JSON log line with
/// `--log-format json` so a log collector sees it like every other line.
fn run_failed(format: LogFormat, why: &str) -> ExitCode {
    match format {
        LogFormat::Text => eprintln!("error: {why}"),
        LogFormat::Json => tracing::error!("{why}"),
    }
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(tailsift::telemetry::JsonLines)
            .init(),
    }
}
