//! API errors: one enum, one JSON shape (`{"error":{"code","message","field"}}`), internal
//! causes logged and not leaked.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::openapi::{ApiErrorBody, ApiErrorDetail};
use crate::auth::ApiAuthError;
use crate::engine::EngineError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `field` names the culprit when there is one.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// 401 / 403.
    #[error("authentication failed")]
    Auth(ApiAuthError),
    /// 404.
    #[error("{message}")]
    NotFound {
        /// Machine-readable code.
        code: &'static str,
        /// What is missing.
        message: String,
    },
    /// 413.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 422: well-formed, but in conflict with an earlier request.
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code.
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// 503: the engine cannot make the change durable now.
    #[error("engine unavailable")]
    Unavailable(#[from] EngineError),
}

impl ApiError {
    /// A 400 with a field.
    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A 400 without a field.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Maps a body extraction failure (size limit, read error) to an API error.
    pub fn from_body(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge(super::MAX_BODY_BYTES)
        } else {
            Self::bad_request("bad_body", rejection.body_text())
        }
    }
}

/// A whole-number query parameter within `1..=max`, `default` when absent; otherwise 400
/// `invalid_query` naming it.
pub fn bounded_param(
    field: &'static str,
    text: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match text {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::field("invalid_query", field, format!("1–{max}"))),
    }
}

impl From<ApiAuthError> for ApiError {
    fn from(e: ApiAuthError) -> Self {
        Self::Auth(e)
    }
}

impl IntoResponse for ApiAuthError {
    fn into_response(self) -> Response {
        ApiError::Auth(self).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field) = match self {
            Self::BadRequest {
                code,
                message,
                field,
            } => (StatusCode::BAD_REQUEST, code, message, field),
            Self::Auth(ApiAuthError::Unauthenticated(e)) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.to_string(),
                None,
            ),
            Self::Auth(ApiAuthError::Forbidden) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token may not use this route".to_owned(),
                None,
            ),
            Self::Auth(ApiAuthError::NoUser) => (
                StatusCode::FORBIDDEN,
                "no_user",
                "this route needs a token that names a user".to_owned(),
                None,
            ),
            Self::NotFound { code, message } => (StatusCode::NOT_FOUND, code, message, None),
            Self::Unprocessable { code, message } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, message, None)
            }
            Self::TooLarge(n) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body larger than {n} bytes"),
                None,
            ),
            Self::Unavailable(error) => {
                tracing::warn!(%error, "request failed: engine unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event store is unavailable; nothing was changed, retry later".to_owned(),
                    None,
                )
            }
        };
        let body = ApiErrorBody {
            error: ApiErrorDetail {
                code: code.to_owned(),
                message,
                field,
            },
        };
        (status, Json(body)).into_response()
    }
}
