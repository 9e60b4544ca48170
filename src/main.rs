//! The `keygate` binary: parses the command line and runs it.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc: per-thread free lists suit the worker-per-core design better
/// than glibc's arenas (fewer locks, less fragmentation under churn).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = keygate::cli::Cli::parse();
    if matches!(cli.command, Some(keygate::cli::Command::Demo)) {
        // Before any thread exists: the environment is the process's own.
        keygate::cli::prepare_demo_admin_token(&cli.config);
    }
    let serving = matches!(cli.command, None | Some(keygate::cli::Command::Serve) | Some(keygate::cli::Command::Demo));
    let default_level = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match keygate::config::LogFormat::early(&cli.config) {
        keygate::config::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Every field at the top level: `{"timestamp":..,"level":..,"target":..,"method":..}`.
        keygate::config::LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    // The data plane runs on worker threads of its own (see `server.workers`);
    // this runtime accepts connections, serves the admin listener and runs
    // the background tasks, for which two threads are plenty.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(keygate::cli::run(cli))
}
