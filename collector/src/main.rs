use clap::Parser;
use collector::config::CollectorConfig;
use std::io::Write as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = CollectorConfig::parse();
    cfg.log.init();
    match collector::run(cfg, shutdown_signal()).await {
        Ok(summary) => {
            // A plain line on stderr, with the logs: stdout is the data (`--output json`
            // writes JSON lines there, and a consumer parses every line).
            let _ = writeln!(std::io::stderr(), "collector stopped: {summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            // One line, no backtrace: it names what is missing and where it looked.
            let _ = writeln!(std::io::stderr(), "collector: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
