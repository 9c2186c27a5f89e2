//! The api's counters. Names are constants here and nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Requests answered, by status class.
pub const REQUESTS: &str = "api_requests_total";
/// Failures, by `error_type` (`unauthorized`, `bad_request`, `not_found`, `unavailable`).
pub const ERRORS: &str = "api_errors_total";
/// The fingerprint of the service token it calls the streamer with (not the API key's: a
/// human-chosen key's hash on an open endpoint would let guesses be checked offline).
pub const SECRETS: &str = "api_secret_info";

/// Request counters, and the secrets in use.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    by_class: [AtomicU64; 5],
    unauthorized: AtomicU64,
    bad_request: AtomicU64,
    not_found: AtomicU64,
    unavailable: AtomicU64,
    tokens: Option<common_auth::KeyRing>,
}

impl ApiMetrics {
    /// Counters that also show the fingerprint of the token of `tokens` calls are made
    /// with.
    pub fn with_secrets(tokens: Option<common_auth::KeyRing>) -> Self {
        Self {
            tokens,
            ..Self::default()
        }
    }

    fn observe(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let e = match status {
            401 => &self.unauthorized,
            400 => &self.bad_request,
            404 => &self.not_found,
            503 => &self.unavailable,
            _ => return,
        };
        e.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = format!("# TYPE {REQUESTS} counter\n");
        for (i, c) in self.by_class.iter().enumerate() {
            s.push_str(&format!(
                "{REQUESTS}{{status=\"{}xx\"}} {}\n",
                i + 1,
                c.load(Ordering::Relaxed)
            ));
        }
        s.push_str(&format!("# TYPE {ERRORS} counter\n"));
        for (t, c) in [
            ("unauthorized", &self.unauthorized),
            ("bad_request", &self.bad_request),
            ("not_found", &self.not_found),
            ("unavailable", &self.unavailable),
        ] {
            s.push_str(&format!(
                "{ERRORS}{{error_type=\"{t}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        if let Some(t) = &self.tokens {
            s.push_str(&common_auth::fingerprint_metric(
                SECRETS,
                &[("service-token", t.signing())],
            ));
        }
        s
    }
}

/// Middleware counting every response by status.
pub async fn count(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    m.observe(resp.status().as_u16());
    resp
}
