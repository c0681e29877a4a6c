//! The completeness check: rebuilds the generator's round from its report, works out which
//! traces were fully acknowledged, and compares with what the sink counted per trace.
//!
//! Fails when a trace that must be kept (an error trace or a tagged tenant's trace, or every
//! trace with `--expect all`) is missing or incomplete, when any acknowledged trace arrived in
//! part or with extra spans, when the sink saw spans that are not the generator's, or, given
//! the proxy's `/metrics`, when delivered + counted drops differs from what was acknowledged.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::util::base64_decode;
use crate::workload::{round3, tenant_name, Params, Round};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// Error traces and tagged tenants' traces must arrive whole (the realistic rules).
    MustKeep,
    /// Every acknowledged trace must arrive whole (keep-all rules, pass-through proxies).
    All,
}

pub struct CheckArgs {
    pub gen_report: PathBuf,
    pub sink_report: PathBuf,
    pub expect: Expect,
    pub proxy_metrics: Option<PathBuf>,
    pub json_out: Option<PathBuf>,
}

fn read_json(path: &PathBuf) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Sums a Prometheus counter/gauge over all its label sets.
fn prom_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

#[derive(Default)]
struct TenantRow {
    acked_spans: u64,
    acked_traces: u64,
    kept_traces: u64,
}

pub fn run(args: CheckArgs) -> Result<bool> {
    let gen = read_json(&args.gen_report)?;
    let sink = read_json(&args.sink_report)?;
    let params = Params::from_json(&gen["params"])?;
    let round = Round::build(&params, 0)?;
    let r_len = round.requests.len() as u64;
    let m = u64::from(params.round_traces);
    anyhow::ensure!(
        gen["workload"]["round_spans"].as_u64() == Some(round.round_spans()),
        "the rebuilt round differs from the generator's (different loadgen version?)"
    );
    let q_total = gen["requests_total"]
        .as_u64()
        .context("requests_total missing")?;
    let mut bad: HashSet<u64> = HashSet::new();
    for key in ["failed_requests", "skipped_requests"] {
        for q in gen[key].as_array().context("request list missing")? {
            bad.insert(q.as_u64().context("request index")?);
        }
    }
    let acked = |q: u64| q < q_total && !bad.contains(&q);

    let mut tenants: BTreeMap<u16, TenantRow> = BTreeMap::new();
    let mut acked_spans = 0u64;
    for q in 0..q_total {
        if acked(q) {
            for &(t, n) in &round.template(q).tenant_spans {
                tenants.entry(t).or_default().acked_spans += u64::from(n);
                acked_spans += u64::from(n);
            }
        }
    }

    let counts = base64_decode(
        sink["trace_spans_b64"]
            .as_str()
            .context("trace_spans_b64")?,
    )?;
    let rounds = q_total.div_ceil(r_len);
    let (mut whole, mut missing, mut partial, mut duplicated) = (0u64, 0u64, 0u64, 0u64);
    let (mut must_keep, mut must_keep_whole) = (0u64, 0u64);
    let (mut acked_traces, mut unacked_delivered) = (0u64, 0u64);
    let mut examples: Vec<String> = Vec::new();
    for g in 0..rounds * m {
        let pass = g / m;
        let shape = &round.traces[(g % m) as usize];
        let reqs = shape.requests.iter().map(|&k| pass * r_len + u64::from(k));
        let n_acked = reqs.clone().filter(|&q| acked(q)).count();
        let c = u32::from(counts.get(g as usize).copied().unwrap_or(0));
        if n_acked < shape.requests.len() {
            unacked_delivered += u64::from(c > 0);
            continue;
        }
        acked_traces += 1;
        let row = tenants.entry(shape.tenant).or_default();
        row.acked_traces += 1;
        let keep = args.expect == Expect::All || shape.error || round.is_tagged(shape.tenant);
        must_keep += u64::from(keep);
        if c == shape.spans {
            whole += 1;
            row.kept_traces += 1;
            must_keep_whole += u64::from(keep);
            continue;
        }
        let what = if c == 0 {
            missing += 1;
            if !keep {
                continue;
            }
            "missing"
        } else if c < shape.spans {
            partial += 1;
            "partial"
        } else {
            duplicated += 1;
            "duplicated"
        };
        if examples.len() < 10 {
            examples.push(format!(
                "trace #{g} ({}, {} spans{}): {what}, {c} spans delivered",
                tenant_name(shape.tenant),
                shape.spans,
                if shape.error { ", error" } else { "" }
            ));
        }
    }
    let beyond = counts
        .iter()
        .skip((rounds * m) as usize)
        .filter(|&&c| c > 0)
        .count();

    let delivered = sink["spans"].as_u64().unwrap_or(0);
    let foreign = sink["foreign_spans"].as_u64().unwrap_or(0);
    let mut failures: Vec<String> = Vec::new();
    if delivered == 0 {
        failures.push("the sink received no spans".into());
    }
    if must_keep_whole < must_keep {
        failures.push(format!(
            "{} of {must_keep} traces that must be kept did not arrive whole",
            must_keep - must_keep_whole
        ));
    }
    if partial > 0 {
        failures.push(format!("{partial} acknowledged traces arrived in part"));
    }
    if duplicated > 0 {
        failures.push(format!(
            "{duplicated} acknowledged traces arrived with extra (duplicate) spans"
        ));
    }
    if foreign > 0 || beyond > 0 {
        failures.push(format!(
            "{foreign} spans with unknown trace ids, {beyond} traces never sent"
        ));
    }

    let mut accounting = Value::Null;
    if let Some(path) = &args.proxy_metrics {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let received = prom_sum(&text, "tailsift_spans_received_total").unwrap_or(f64::NAN) as u64;
        let exported = prom_sum(&text, "tailsift_spans_exported_total").unwrap_or(f64::NAN) as u64;
        let dropped = prom_sum(&text, "tailsift_spans_dropped_total").unwrap_or(f64::NAN) as u64;
        let buffered = prom_sum(&text, "tailsift_buffered_spans").unwrap_or(f64::NAN) as u64;
        let balanced = delivered + dropped == acked_spans;
        if !balanced {
            failures.push(format!(
                "zero-loss accounting: delivered {delivered} + counted dropped {dropped} = {} != acknowledged {acked_spans}",
                delivered + dropped
            ));
        }
        accounting = json!({
            "proxy_received": received,
            "proxy_exported": exported,
            "proxy_dropped": dropped,
            "proxy_buffered_at_scrape": buffered,
            "delivered_plus_dropped": delivered + dropped,
            "acknowledged": acked_spans,
            "balanced": balanced,
        });
    }

    let sink_tenants = &sink["tenants"];
    let mut tenant_json = serde_json::Map::new();
    println!(
        "{:<10} {:>11} {:>11} {:>9} {:>10} {:>10} {:>9}",
        "tenant", "acked_spans", "deliv_spans", "kept_frac", "acked_trc", "whole_trc", "est/acked"
    );
    for (t, row) in &tenants {
        let name = tenant_name(*t);
        let st = &sink_tenants[&name];
        let spans = st["spans"].as_u64().unwrap_or(0);
        let est = st["sample_rate_sum"].as_u64().unwrap_or(0);
        let frac = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        println!(
            "{:<10} {:>11} {:>11} {:>9.4} {:>10} {:>10} {:>9.3}",
            name,
            row.acked_spans,
            spans,
            frac(spans, row.acked_spans),
            row.acked_traces,
            row.kept_traces,
            frac(est, row.acked_spans)
        );
        tenant_json.insert(
            name,
            json!({
                "acked_spans": row.acked_spans,
                "delivered_spans": spans,
                "kept_fraction": round3(frac(spans, row.acked_spans) * 10.0) / 10.0,
                "acked_traces": row.acked_traces,
                "whole_traces": row.kept_traces,
                "estimated_over_acked": round3(frac(est, row.acked_spans)),
            }),
        );
    }
    println!(
        "acknowledged {acked_spans} spans in {acked_traces} whole-acknowledged traces; delivered {delivered} spans"
    );
    println!(
        "must keep {must_keep} traces: {must_keep_whole} whole; all acknowledged traces: {whole} whole, {missing} dropped, {partial} partial, {duplicated} duplicated; {unacked_delivered} traces partly unacknowledged but delivered"
    );
    if !accounting.is_null() {
        println!("proxy accounting: {accounting}");
    }
    for e in &examples {
        println!("  e.g. {e}");
    }
    let mut warnings: Vec<String> = Vec::new();
    let unattributed = sink_tenants[""]["spans"].as_u64().unwrap_or(0);
    if unattributed > 0 {
        warnings.push(format!(
            "{unattributed} spans arrived without a tenant.id resource attribute (their resource was lost on the way)"
        ));
    }
    if let Some(n) = sink["gzip_requests"].as_u64().filter(|&n| n > 0) {
        warnings.push(format!("{n} requests reached the sink gzip-compressed"));
    }
    for w in &warnings {
        println!("WARNING: {w}");
    }
    let pass = failures.is_empty();
    for f in &failures {
        println!("CHECK FAILED: {f}");
    }
    if pass {
        println!("check passed");
    }
    if let Some(path) = &args.json_out {
        let out = json!({
            "pass": pass,
            "failures": failures,
            "warnings": warnings,
            "acked_spans": acked_spans,
            "delivered_spans": delivered,
            "acked_traces": acked_traces,
            "must_keep_traces": must_keep,
            "must_keep_whole": must_keep_whole,
            "whole_traces": whole,
            "dropped_traces": missing,
            "partial_traces": partial,
            "duplicated_traces": duplicated,
            "foreign_spans": foreign,
            "accounting": accounting,
            "tenants": tenant_json,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(pass)
}
