use clap::Parser;
use std::io::Write as _;
use streamer::config::StreamerConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = StreamerConfig::parse();
    cfg.log.init();
    // Secrets first: a missing or weak token stops here, before any socket or file is opened.
    let token = match streamer::load_token(&cfg).await {
        Ok(r) => r,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "streamer: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let store = match streamer::open_store(&cfg) {
        Ok(s) => std::sync::Arc::new(s),
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "streamer: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(cfg.grpc_addr).await {
        Ok(l) => l,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "streamer: cannot listen on {}: {error}",
                cfg.grpc_addr
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        // A plain line on stdout, for scripts and tests that start it on port 0.
        let _ = writeln!(std::io::stdout(), "streamer grpc listening on {addr}");
    }
    let metrics_listener = match cfg.metrics_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                if let Ok(a) = l.local_addr() {
                    let _ = writeln!(std::io::stdout(), "streamer metrics listening on {a}");
                }
                Some(l)
            }
            Err(error) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "streamer: cannot listen on {addr}: {error}"
                );
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    match streamer::run(
        cfg,
        token,
        store,
        listener,
        metrics_listener,
        shutdown_signal(),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "streamer: {error}");
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
