//! `tailsift stats`: per-tenant keep rates from a running node's admin API, as a table or as
//! the API's JSON.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long to wait for the admin API.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `tailsift stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Admin API base URL of the node to ask.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub admin: String,
    /// Window: 1m, 5m, 1h, or all (since start).
    #[arg(long, default_value = "5m")]
    pub window: String,
    /// Show one tenant in detail (per-rule breakdown and drops by reason).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Cluster totals: the node asks every member and adds their counts (the tenant list
    /// only; on a node without `[cluster]` the same as its own counts).
    #[arg(long, conflicts_with = "tenant")]
    pub cluster: bool,
    /// A file holding the admin token (else `TAILSIFT_ADMIN_TOKEN`), for nodes with
    /// `admin.require_token_for_reads`.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

/// Runs the command; prints to stdout, errors to stderr.
pub fn run(args: StatsArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = args.admin.trim_end_matches('/');
    let url = match &args.tenant {
        Some(t) => format!(
            "{base}/api/v1/tenants/{}?window={}",
            encode_path_segment(t),
            args.window
        ),
        None => format!(
            "{base}/api/v1/tenants?window={}&sort=volume{}",
            args.window,
            if args.cluster { "&scope=cluster" } else { "" }
        ),
    };
    let token = match tailsift::admin::client::cli_token(args.token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let authorization = token.as_deref().map(tailsift::admin::client::bearer);
    let (status, body) = match runtime.block_on(get(&url, authorization.as_deref())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach the admin API at {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if status == 401 {
        eprintln!("error: {}", crate::unauthorized_message(token.is_some()));
        return ExitCode::FAILURE;
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {url} answered {status} with something that is not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !(200..300).contains(&status) {
        let why = value["error"].as_str().unwrap_or("(no message)");
        eprintln!("error: {url} answered {status}: {why}");
        return ExitCode::FAILURE;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else if args.tenant.is_some() {
        print!("{}", tenant_detail(&value));
    } else {
        print!("{}", tenant_table(&value));
    }
    ExitCode::SUCCESS
}

async fn get(url: &str, authorization: Option<&str>) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("the admin URL must start with http://".into());
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = http::Request::get(uri);
    if let Some(value) = authorization {
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

/// Percent-encodes everything but unreserved characters.
fn encode_path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn num(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// Lays out rows (the first is the header) with columns padded to their widest cell: columns
/// of numbers right-aligned, the rest left-aligned.
fn layout(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let numeric = |c: usize| {
        c > 0
            && rows.iter().skip(1).filter_map(|r| r.get(c)).all(|cell| {
                cell.chars()
                    .all(|ch| ch.is_ascii_digit() || ".%-".contains(ch))
            })
    };
    let columns: Vec<(usize, bool)> = (0..cols).map(|c| (width(c), numeric(c))).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let (w, right) = columns[c];
            let pad = " ".repeat(w - cell.chars().count());
            if right {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn tenant_table(v: &Value) -> String {
    let mut rows = vec![[
        "TENANT",
        "TRACES",
        "KEPT",
        "KEEP RATE",
        "SPANS",
        "KEPT",
        "KEEP RATE",
        "EXPORTED",
        "TOP RULE",
    ]
    .map(String::from)
    .to_vec()];
    let empty = Vec::new();
    let tenants = v["tenants"].as_array().unwrap_or(&empty);
    for t in tenants {
        let top = t["top_rules"]
            .as_array()
            .and_then(|r| r.first())
            .map(|r| {
                format!(
                    "{} ({})",
                    r["rule"].as_str().unwrap_or("?"),
                    num(&r["traces_decided"])
                )
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            t["tenant"].as_str().unwrap_or("?").to_string(),
            num(&t["traces_received"]),
            num(&t["traces_kept"]),
            pct(&t["trace_keep_rate"]),
            num(&t["spans_received"]),
            num(&t["spans_kept"]),
            pct(&t["span_keep_rate"]),
            num(&t["spans_exported"]),
            top,
        ]);
    }
    let mut out = format!(
        "window {}: {} tenant(s)\n",
        v["window"].as_str().unwrap_or("?"),
        tenants.len()
    );
    if let Some(nodes) = v["nodes"].as_array() {
        let answered = nodes.iter().filter(|n| n["answered"] == true).count();
        out.push_str(&format!(
            "cluster totals: {answered} of {} node(s) answered\n",
            nodes.len()
        ));
        for n in nodes.iter().filter(|n| n["answered"] != true) {
            out.push_str(&format!(
                "  missing {}: {}\n",
                n["address"].as_str().unwrap_or("?"),
                n["error"].as_str().unwrap_or("no answer")
            ));
        }
    }
    out.push_str(&layout(&rows));
    out
}

fn tenant_detail(v: &Value) -> String {
    let mut out = format!(
        "tenant {} (window {})\n",
        v["tenant"].as_str().unwrap_or("?"),
        v["window"].as_str().unwrap_or("?")
    );
    let rows = vec![
        vec![
            "".into(),
            "RECEIVED".into(),
            "KEPT".into(),
            "DROPPED".into(),
            "KEEP RATE".into(),
        ],
        vec![
            "traces".into(),
            num(&v["traces_received"]),
            num(&v["traces_kept"]),
            num(&v["traces_dropped"]),
            pct(&v["trace_keep_rate"]),
        ],
        vec![
            "spans".into(),
            num(&v["spans_received"]),
            num(&v["spans_kept"]),
            num(&v["spans_dropped"]),
            pct(&v["span_keep_rate"]),
        ],
    ];
    out.push_str(&layout(&rows));
    out.push_str(&format!(
        "spans exported {}, late spans {}\n\n",
        num(&v["spans_exported"]),
        num(&v["late_spans"])
    ));
    let mut rules = vec![["RULE", "DECIDED", "KEPT", "KEEP RATE"]
        .map(String::from)
        .to_vec()];
    for r in v["rules"].as_array().unwrap_or(&Vec::new()) {
        rules.push(vec![
            r["rule"].as_str().unwrap_or("?").to_string(),
            num(&r["traces_decided"]),
            num(&r["traces_kept"]),
            pct(&r["keep_rate"]),
        ]);
    }
    out.push_str(&layout(&rules));
    out.push('\n');
    let mut drops = vec![["DROP REASON", "SPANS", "TRACES"]
        .map(String::from)
        .to_vec()];
    if let Some(spans) = v["spans_dropped_by_reason"].as_object() {
        for (reason, n) in spans {
            drops.push(vec![
                reason.clone(),
                num(n),
                num(&v["traces_dropped_by_reason"][reason]),
            ]);
        }
    }
    out.push_str(&layout(&drops));
    out
}
