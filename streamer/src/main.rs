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
    let Some(listener) = listen(cfg.grpc_addr, "grpc").await else {
        return std::process::ExitCode::FAILURE;
    };
    let metrics_listener = match cfg.metrics_addr {
        None => None,
        Some(addr) => match listen(addr, "metrics").await {
            Some(l) => Some(l),
            None => return std::process::ExitCode::FAILURE,
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

/// Binds `addr` and says so on stdout (`streamer <what> listening on <addr>`: scripts and
/// tests start it on port 0), or says on stderr why it cannot.
async fn listen(addr: std::net::SocketAddr, what: &str) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            if let Ok(a) = l.local_addr() {
                let _ = writeln!(std::io::stdout(), "streamer {what} listening on {a}");
            }
            Some(l)
        }
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "streamer: cannot listen on {addr}: {error}"
            );
            None
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
