//! `tailsift-loadgen`: a reproducible OTLP workload (`gen`: traces, logs held with their
//! traces or without trace ids, metrics), a counting OTLP/gRPC sink for all three signals
//! (`sink`) and a zero-loss / completeness checker for traces (`check`) for benchmarking
//! tailsift against other proxies. See `scripts/bench.sh`, `scripts/bench-signals.sh` and
//! `BENCHMARKS.md` in the repository root.

mod check;
mod gen;
mod grpc;
mod ids;
mod logs;
mod metrics;
mod sink;
mod util;
mod wire;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tailsift-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Counting OTLP/gRPC sink: prints `sink listening ADDR`, writes a JSON report on
    /// SIGTERM/SIGINT or after --duration.
    Sink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Where to write the JSON report (default: nowhere, only the summary on stderr).
        #[arg(long)]
        report_file: Option<PathBuf>,
        /// Stop by itself after this long (e.g. 30s).
        #[arg(long, value_parser = util::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Print the running span count to stderr every second.
        #[arg(long)]
        progress: bool,
    },
    /// Generate the workload against an OTLP endpoint and write a JSON summary.
    Gen {
        /// host:port of the OTLP/gRPC (or, with --http, OTLP/HTTP) receiver; several,
        /// comma-separated, spread the connections over them (a cluster behind a balancer).
        #[arg(long)]
        target: String,
        /// Offered load; 0 = as fast as the target acknowledges. Spans/s for traces and for
        /// logs with their traces (log records come on top, one per span), log records/s
        /// with --untraced-logs, data points/s for metrics.
        #[arg(long, visible_alias = "rate", default_value_t = 100_000)]
        spans_per_sec: u64,
        /// What to send: traces; logs (the traces plus one log record per span carrying its
        /// trace and span id, on LogsService/Export after each trace request); metrics.
        #[arg(long, value_enum, default_value = "traces")]
        signal: grpc::Signal,
        /// With --signal logs: send only log records without trace ids (no traces).
        #[arg(long)]
        untraced_logs: bool,
        /// With --signal metrics: data points per request.
        #[arg(long, default_value_t = 500)]
        metric_points_per_request: u32,
        /// With --signal metrics: resources (processes of a tenant) per request.
        #[arg(long, default_value_t = 5)]
        metric_resources: u32,
        /// With --signal metrics: distinct requests in a round (sent over and over).
        #[arg(long, default_value_t = 64)]
        metric_requests: u32,
        #[arg(long, default_value = "10s", value_parser = util::parse_duration)]
        duration: std::time::Duration,
        /// Requests in flight (one connection each).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Send OTLP/HTTP protobuf (POST /v1/traces) instead of OTLP/gRPC.
        #[arg(long)]
        http: bool,
        /// Per-request deadline.
        #[arg(long, default_value = "10s", value_parser = util::parse_duration)]
        timeout: std::time::Duration,
        #[arg(long, default_value_t = 20)]
        tenants: u32,
        /// Traces per pre-encoded round (the shapes repeat with fresh ids after this many).
        #[arg(long, default_value_t = 8192)]
        round_traces: u32,
        /// Spans per request (an SDK's batch); sparse services send smaller ones.
        #[arg(long, default_value_t = 512)]
        request_spans: u32,
        /// Zipf exponent of the tenant volumes (1.6 with 20 tenants: the largest ≈ 50%).
        #[arg(long, default_value_t = 1.6)]
        zipf_s: f64,
        /// Fraction of traces with one ERROR span.
        #[arg(long, default_value_t = 0.01)]
        error_fraction: f64,
        #[arg(long, default_value_t = 10.0)]
        mean_spans: f64,
        /// Where to write the JSON summary (default: stdout).
        #[arg(long)]
        report_file: Option<PathBuf>,
    },
    /// Check a run for completeness: must-keep traces whole, no partial or duplicated traces.
    Check {
        #[arg(long)]
        gen_report: PathBuf,
        #[arg(long)]
        sink_report: PathBuf,
        #[arg(long, value_enum, default_value = "must-keep")]
        expect: check::Expect,
        /// tailsift's `/metrics` text scraped after the run: checks delivered + dropped =
        /// acknowledged.
        #[arg(long)]
        proxy_metrics: Option<PathBuf>,
        /// Also write the result as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            gen_report,
            sink_report,
            expect,
            proxy_metrics,
            json_out,
        } => check::run(check::CheckArgs {
            gen_report,
            sink_report,
            expect,
            proxy_metrics,
            json_out,
        }),
        Command::Sink {
            listen,
            report_file,
            duration,
            progress,
        } => runtime().and_then(|rt| {
            rt.block_on(sink::run(sink::SinkArgs {
                listen,
                report_file,
                duration,
                progress,
            }))
            .map(|()| true)
        }),
        Command::Gen {
            target,
            spans_per_sec,
            duration,
            concurrency,
            seed,
            http,
            signal,
            untraced_logs,
            metric_points_per_request,
            metric_resources,
            metric_requests,
            timeout,
            tenants,
            round_traces,
            request_spans,
            zipf_s,
            error_fraction,
            mean_spans,
            report_file,
        } => runtime().and_then(|rt| {
            rt.block_on(gen::run(gen::GenArgs {
                target,
                spans_per_sec,
                duration,
                concurrency,
                http,
                timeout,
                report_file,
                signal,
                untraced_logs,
                metric_params: metrics::MetricParams {
                    seed,
                    tenants,
                    zipf_s,
                    requests: metric_requests,
                    points_per_request: metric_points_per_request,
                    resources_per_request: metric_resources,
                },
                params: workload::Params {
                    seed,
                    tenants,
                    round_traces,
                    request_spans,
                    zipf_s,
                    error_fraction,
                    mean_spans,
                },
            }))
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tailsift-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
