//! Logging set-up shared by the binaries (api, streamer, collector): logs go to stderr,
//! filtered by `RUST_LOG` (default `info`), as human-readable lines or as one JSON object per
//! line for log pipelines (`--log-format json`). Colour codes only when stderr is a terminal:
//! a pod's log or a log file never holds escape sequences.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-28T12:00:00Z  INFO target: message key=value`.
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":…,…},"target":…}`.
    Json,
}

/// The logging flags every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log lines as `text` (colours only on a terminal) or `json` (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber: stderr, `RUST_LOG` (default `info`), this format.
    /// Also takes the `log` crate's records (librdkafka's messages come that way).
    pub fn init(&self) {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }
}
