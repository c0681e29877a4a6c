//! The `tailsift` command: CLI → config → app → run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod stats_cmd;
use tailsift::config::Config;

/// A tail-sampling OTLP trace proxy.
#[derive(Parser)]
#[command(name = "tailsift", version, about)]
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
    },
    /// Validate a config file and its rules file with the same code start-up uses.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print per-tenant keep rates of a running node (from its admin API).
    Stats(stats_cmd::StatsArgs),
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, tailsift::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let config = match load_config(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
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
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => check(config.as_ref()),
        Command::Stats(args) => stats_cmd::run(args),
    }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
