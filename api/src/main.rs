use api::config::ApiConfig;
use clap::Parser;
use std::io::Write as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut cfg = ApiConfig::parse();
    cfg.log.init();
    if let Some(api::config::ApiCommand::RotateSecrets(args)) = cfg.command.take() {
        return match common_auth::rotate::run(&args, &mut std::io::stdout()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "api rotate-secrets: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // Secrets first: a missing or weak one stops here, before any socket or file is opened.
    let secrets = match api::load_secrets(&cfg).await {
        Ok(s) => s,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "api: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "api: cannot listen on {}: {error}",
                cfg.listen
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match api::run(cfg, secrets, listener, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "api: {error}");
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
