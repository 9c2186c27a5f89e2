//! Every error the API returns, mapped to a status code in one place.
//!
//! Body: `{"error": {"code": "...", "message": "...", "parameter": "..."?}}`. A 5xx logs its
//! cause and answers a generic message: internal details never reach clients.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backend::BackendError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query or path parameter is invalid (400).
    #[error("{parameter}: {message}")]
    BadParameter {
        /// The parameter's name.
        parameter: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such GPU (404).
    #[error("unknown GPU {0}")]
    UnknownGpu(String),
    /// The backend is down (503).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The request took longer than `--request-timeout` (503).
    #[error("request timed out")]
    Timeout,
}

impl ApiError {
    /// A 400 for `parameter`.
    pub fn bad(parameter: &str, message: impl Into<String>) -> Self {
        ApiError::BadParameter {
            parameter: parameter.to_string(),
            message: message.into(),
        }
    }
}

/// The error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code: `invalid_parameter`, `not_found`, `unauthorized`,
    /// `unavailable`, `timeout`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The offending parameter, for `invalid_parameter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, parameter) = match &self {
            ApiError::BadParameter { parameter, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                Some(parameter.clone()),
            ),
            ApiError::UnknownGpu(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Backend(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout", None),
        };
        let message = if matches!(self, ApiError::Timeout) {
            tracing::warn!("request timed out");
            "the request took too long; retry later or ask for less".to_string()
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "telemetry backend unavailable; retry later".to_string()
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                parameter,
            },
        };
        (status, Json(body)).into_response()
    }
}
